"""Importers: other projects' LIBERO demonstrations → ``lastr1-episodes`` (``docs/data_format.md``).

Each source format lives in its own module (:mod:`.libero_hdf5`, :mod:`.lerobot`) and implements
:class:`DemoSource`: list the demos cheaply (no images read), read one demo's actions, load one demo's
arrays. What both share lives here so they treat images, no-op steps and task names the same way:

* images become upright ``(T, V, H, W, 3)`` uint8 at the requested size (LIBERO renders upside
  down; our env rotates 180°, so an import must too when its source did not);
* proprio is LIBERO's 8 dims, ``[eef pos (3), eef axis-angle (3), gripper finger qpos (2)]``;
* privileged state is unknown without a simulator, so it is stored as zeros of
  ``lastr1.envs.libero.PRIVILEGED_DIM`` (``meta.json`` says so);
* published demos are successful: success (and reward 1.0) only at the last step.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lastr1.data.episodes import Episode
from lastr1.envs.base import TaskSpec

# A step is a no-op when the L2 norm of its xyz + rotation command is below this and its gripper
# command equals the previous step's (LIBERO's original demos hold still for a few steps at times).
NOOP_THRESHOLD = 1e-4
# Suite recorded for a task that none of the four LIBERO suites knows (e.g. a libero_90 file).
UNKNOWN_SUITE = "unknown"


@dataclass(frozen=True)
class SourceDemo:
    """One demonstration a source offers; listing it reads no images."""

    task: TaskSpec
    index: int  # demo number inside the source; becomes the episode's ``init_index``
    length: int  # recorded steps (before any no-op removal)
    file: Path  # where its arrays live
    key: str  # where inside ``file`` (HDF5 group) or the episode index (LeRobot)

    @property
    def origin(self) -> str:
        """Human-readable locator written to ``meta.json``."""
        return f"{self.file.name}:{self.key}"


@dataclass
class RawDemo:
    """A demo's arrays as the source stores them (images not yet flipped or resized)."""

    agent: np.ndarray  # uint8 (T, H, W, 3)
    wrist: np.ndarray | None  # uint8 (T, H, W, 3) or None when not asked for
    proprio: np.ndarray  # (T, P)
    actions: np.ndarray  # (T, 7)


class DemoSource(Protocol):
    """What the ``import-demos`` command needs from a format."""

    default_flip: bool  # whether the format stores LIBERO's upside-down renders
    notes: list[str]  # what the listing skipped, for the command's summary

    def demos(self) -> list[SourceDemo]: ...

    def actions(self, demo: SourceDemo) -> np.ndarray: ...

    def load(self, demo: SourceDemo) -> RawDemo: ...


# -- LIBERO task catalogue --------------------------------------------------------------------------
def libero_tasks(suite: str | None) -> list[TaskSpec]:
    """Tasks of ``suite``, or of all four LIBERO suites when ``suite`` is None."""
    from lastr1.envs.libero import SUITES, suite_tasks

    if suite is not None and suite not in SUITES:
        raise ValueError(
            f"suite={suite!r} is not a LIBERO suite; choose one of {list(SUITES)} or leave it out"
        )
    try:
        return [t for s in ([suite] if suite else SUITES) for t in suite_tasks(s)]
    except RuntimeError as exc:  # LIBERO's task map ships with the libero package
        raise ValueError(f"cannot check LIBERO task names: {exc}") from None


def unknown_task(name: str, instruction: str, why: str) -> TaskSpec:
    """A task outside the LIBERO suites: kept under its own name, with a warning saying so."""
    warnings.warn(f"{why}; keeping it as task {name!r} (suite {UNKNOWN_SUITE!r})", stacklevel=2)
    return TaskSpec(UNKNOWN_SUITE, name, instruction, 0, 0)


def normalise_instruction(text: str) -> str:
    return " ".join(text.lower().split())


def slugify(text: str) -> str:
    """A task name made from an instruction: lower case, words joined by underscores."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "task"


# -- arrays -----------------------------------------------------------------------------------------
def keep_mask(actions: np.ndarray) -> np.ndarray:
    """True for the steps to keep when no-ops are dropped (see :data:`NOOP_THRESHOLD`).

    The first step has no predecessor, so only its motion counts; the last step is always kept
    because it carries the success.
    """
    a = np.asarray(actions, dtype=np.float64)
    still = np.linalg.norm(a[:, :6], axis=1) < NOOP_THRESHOLD
    prev_grip = np.concatenate([a[:1, 6], a[:-1, 6]])
    same_grip = np.abs(a[:, 6] - prev_grip) < NOOP_THRESHOLD
    keep = ~(still & same_grip)
    keep[-1] = True
    return keep


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 → ``(T, size, size, 3)``: PIL bilinear (antialiased) when available,
    else a block mean for integer factors and nearest neighbour otherwise."""
    t, h, w, _ = images.shape
    if (h, w) == (size, size):
        return images
    try:
        from PIL import Image
    except ImportError:
        if h % size == 0 and w % size == 0:
            blocks = images.reshape(t, size, h // size, size, w // size, 3).astype(np.float32)
            return blocks.mean(axis=(2, 4)).round().astype(np.uint8)
        rows = (np.arange(size) * h) // size
        cols = (np.arange(size) * w) // size
        return images[:, rows][:, :, cols]
    resample = Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), resample)) for f in images])


def to_episode(
    raw: RawDemo, demo: SourceDemo, *, image_size: int, flip: bool, skip_noops: bool, privileged_dim: int
) -> Episode:
    """Build a validated-shape :class:`Episode` from a source demo."""
    t = raw.actions.shape[0]
    for name, arr in (("agent images", raw.agent), ("proprio", raw.proprio), ("wrist images", raw.wrist)):
        if arr is not None and arr.shape[0] != t:
            raise ValueError(f"{demo.origin}: {name} have {arr.shape[0]} steps but actions have {t}")
    if raw.actions.ndim != 2 or raw.actions.shape[1] != 7:
        raise ValueError(f"{demo.origin}: actions must be (T, 7), got {raw.actions.shape}")
    keep = keep_mask(raw.actions) if skip_noops else np.ones(t, dtype=bool)
    views = [raw.agent] + ([raw.wrist] if raw.wrist is not None else [])
    frames = []
    for view in views:
        view = np.asarray(view, dtype=np.uint8)[keep]
        if flip:
            view = view[:, ::-1, ::-1]
        frames.append(resize_images(np.ascontiguousarray(view), image_size))
    n = int(keep.sum())
    success = np.zeros(n, dtype=bool)
    success[-1] = True
    return Episode(
        images=np.stack(frames, axis=1),
        proprio=np.asarray(raw.proprio, dtype=np.float32)[keep],
        actions=np.asarray(raw.actions, dtype=np.float32)[keep],
        privileged=np.zeros((n, privileged_dim), dtype=np.float32),
        rewards=success.astype(np.float32),
        success=success,
        task=demo.task.name,
        instruction=demo.task.instruction,
        init_set="train",
        init_index=demo.index,
    )
