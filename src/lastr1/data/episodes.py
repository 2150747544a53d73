"""The on-disk demo format: one directory per dataset, one compressed ``.npz`` per episode.

Layout (full description in ``docs/data_format.md``)::

    <root>/meta.json                  what the dataset is (backend, suite, tasks, image size, views, counts)
    <root>/dataset_statistics.json    per-dimension action (and proprio) statistics, see ``stats.py``
    <root>/episodes/000000.npz        one episode: arrays + its task / instruction / initial state
    <root>/videos/<task>.mp4          optional previews (not read back)

Why ``.npz``: numpy-only to read, no pickle (``allow_pickle=False``), zlib-compressed images, and one
file per episode so datasets are appended and inspected with ordinary tools. Step ``t`` pairs the
observation the action was chosen on with that action and the reward/success it earned; the
observation after the last action is not stored.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "lastr1-episodes"
FORMAT_VERSION = 1
META_FILE = "meta.json"
STATS_FILE = "dataset_statistics.json"
EPISODES_DIR = "episodes"
_ARRAY_FIELDS = ("images", "proprio", "actions", "privileged", "rewards", "success")
_TEXT_FIELDS = ("task", "instruction", "init_set")


@dataclass
class Episode:
    """One demonstration. ``T`` steps, ``V`` camera views (0 = agent view, 1 = wrist view)."""

    images: np.ndarray  # uint8 (T, V, H, W, 3), upright
    proprio: np.ndarray  # float32 (T, P)
    actions: np.ndarray  # float32 (T, 7) in [-1, 1]
    privileged: np.ndarray  # float32 (T, S) simulator state; never a policy input
    rewards: np.ndarray  # float32 (T,) reward earned by actions[t]
    success: np.ndarray  # bool (T,) task success after actions[t]
    task: str
    instruction: str
    init_set: str
    init_index: int

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def succeeded(self) -> bool:
        return bool(self.success.any())

    def validate(self) -> None:
        """Raise ValueError naming the first field whose shape or dtype breaks the format."""
        t = len(self)
        if t < 1:
            raise ValueError("episode has no steps (actions is empty)")
        expect = {
            "images": (np.uint8, 5),
            "proprio": (np.float32, 2),
            "actions": (np.float32, 2),
            "privileged": (np.float32, 2),
            "rewards": (np.float32, 1),
            "success": (np.bool_, 1),
        }
        for name, (dtype, ndim) in expect.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim:
                got = (
                    f"{arr.dtype} with {arr.ndim} dims" if isinstance(arr, np.ndarray) else type(arr).__name__
                )
                raise ValueError(f"episode.{name}: expected {np.dtype(dtype)} with {ndim} dims, got {got}")
            if arr.shape[0] != t:
                raise ValueError(f"episode.{name}: has {arr.shape[0]} steps but actions has {t}")
        if self.images.shape[-1] != 3:
            raise ValueError(f"episode.images: expected (T, V, H, W, 3), got {self.images.shape}")
        if self.actions.shape[1] != 7:
            raise ValueError(f"episode.actions: expected (T, 7), got {self.actions.shape}")
        if self.init_index < 0:
            raise ValueError(f"episode.init_index={self.init_index} must be >= 0")


def episode_path(root: str | Path, index: int) -> Path:
    return Path(root) / EPISODES_DIR / f"{index:06d}.npz"


def write_episode(root: str | Path, index: int, episode: Episode) -> Path:
    """Validate and write ``episode`` as ``<root>/episodes/<index:06d>.npz``; returns the path."""
    episode.validate()
    path = episode_path(root, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {name: getattr(episode, name) for name in _ARRAY_FIELDS}
    arrays.update({name: np.array(getattr(episode, name), dtype=np.str_) for name in _TEXT_FIELDS})
    arrays["init_index"] = np.array(episode.init_index, dtype=np.int64)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)  # never leave a half-written episode under its final name
    return path


def read_episode(path: str | Path) -> Episode:
    """Load one episode file (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"episode file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in (*_ARRAY_FIELDS, *_TEXT_FIELDS, "init_index") if k not in data.files]
            if missing:
                raise ValueError(f"episode file {path} lacks fields {missing}; was it written by lastr1?")
            fields: dict[str, Any] = {k: data[k] for k in _ARRAY_FIELDS}
            fields.update({k: str(data[k]) for k in _TEXT_FIELDS})
            fields["init_index"] = int(data["init_index"])
    except (OSError, EOFError, zipfile.BadZipFile) as exc:  # a truncated or damaged file
        raise ValueError(
            f"episode file {path} is not a readable .npz ({exc}); re-record or re-import the dataset"
        ) from None
    episode = Episode(**fields)
    episode.validate()
    return episode


def write_meta(root: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``meta.json``, stamping the format name and version."""
    path = Path(root) / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **meta}
    path.write_text(json.dumps(full, indent=2) + "\n")
    return path


def read_meta(root: str | Path) -> dict[str, Any]:
    """Read and check ``meta.json`` of a dataset directory."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset directory not found: {root} (create one with `lastr1 make-demos`)")
    if not root.is_dir():
        raise ValueError(f"dataset path {root} is a file; pass the dataset directory")
    path = root / META_FILE
    if not path.is_file():
        raise ValueError(
            f"{root} is not a lastr1 dataset: it has no {META_FILE} (make one with `lastr1 make-demos`)"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: 'format' must be {FORMAT_NAME!r}; this is not a lastr1 episode dataset")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version={version!r} is not supported (this lastr1 reads {FORMAT_VERSION}); "
            "re-create the dataset with this version's `lastr1 make-demos`"
        )
    if not isinstance(meta.get("episodes"), list):
        raise ValueError(f"{path}: 'episodes' must be a list of episode records")
    return meta


class Dataset(Sequence[Episode]):
    """A demo dataset on disk: indexable and iterable, episodes loaded lazily (images are large)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self._files = [self.root / rec["file"] for rec in self.meta["episodes"]]
        missing = [str(p) for p in self._files if not p.is_file()]
        if missing:
            raise ValueError(
                f"dataset {self.root}: {len(missing)} episode files listed in meta.json are missing, "
                f"e.g. {missing[0]}"
            )

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> Episode:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"episode index {index} out of range: dataset has {len(self)} episodes")
        return read_episode(self._files[index])

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    @property
    def tasks(self) -> list[dict[str, Any]]:
        """Task records (name, instruction, ...) in the order of ``meta.json``."""
        return list(self.meta.get("tasks", []))

    @property
    def stats(self) -> dict[str, dict[str, list[float]]]:
        """The validated contents of ``dataset_statistics.json``."""
        from lastr1.data.stats import load_statistics

        return load_statistics(self.root)

    def __repr__(self) -> str:
        return (
            f"Dataset({str(self.root)!r}, episodes={len(self)}, tasks={[t.get('name') for t in self.tasks]})"
        )


def load_dataset(root: str | Path) -> Dataset:
    """Open the dataset at ``root`` (checks ``meta.json`` and that every episode file exists)."""
    return Dataset(root)
