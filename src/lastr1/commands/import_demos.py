"""``lastr1 import-demos``: LIBERO's published demonstrations → a ``lastr1-episodes`` dataset.

Reads LIBERO's HDF5 files (``format=libero_hdf5``, one ``<task>_demo.hdf5`` per task) or a LeRobot
v2.x dataset (``format=lerobot``) from local disk -- nothing is downloaded -- picks
``episodes_per_task`` demos per task (the first ones or the shortest), and writes episodes,
``meta.json`` and ``dataset_statistics.json`` so ``lastr1 sft data=<out>`` trains on them unchanged.
Mapping and orientation notes: ``docs/data_format.md``. Example::

    lastr1 import-demos --format libero_hdf5 --path LIBERO/datasets/libero_spatial \\
        --suite libero_spatial --episodes-per-task 1 --out runs/libero_demos
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from lastr1.commands.make_demos import _prepare_out
from lastr1.data.episodes import write_episode, write_meta
from lastr1.data.importers import DemoSource, SourceDemo, keep_mask, to_episode
from lastr1.data.stats import statistics_from_arrays, write_statistics

# --format, --path, --suite, --episodes-per-task are the field names themselves (the CLI turns
# dashes into underscores); these are shorter spellings.
ALIASES = {"episodes": "episodes_per_task", "size": "image_size", "wrist": "wrist_view"}
LIBERO_PROPRIO_DIM = 8  # what lastr1's LIBERO env observes (eef pos, axis-angle, finger qpos)


@dataclass
class Config:
    """Where the published demos are, which to keep, and where to write the dataset."""

    format: Literal["libero_hdf5", "lerobot"] = "libero_hdf5"
    path: str = ""  # local folder of *_demo.hdf5 files (or one file), or a LeRobot dataset folder
    suite: str | None = None  # LIBERO suite; None infers each task's suite from its name/instruction
    tasks: list[str] = field(default_factory=list)  # task names to import; empty = every task found
    episodes_per_task: int = 1
    select: Literal["first", "shortest"] = "first"
    image_size: int = 128
    wrist_view: bool = False  # also store the wrist camera as view 1
    flip_images: bool | None = None  # rotate 180°; None = the format's default (HDF5 yes, LeRobot no)
    skip_noops: bool = False  # drop steps that neither move nor change the gripper
    # LeRobot column names (the defaults are those of LeRobot's LIBERO conversions)
    image_key: str = "image"
    wrist_key: str = "wrist_image"
    state_key: str = "state"
    action_key: str = "actions"
    out: str = "runs/libero_demos"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.suite is not None and not self.suite.strip():
            self.suite = None
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task={self.episodes_per_task} must be >= 1")
        if self.image_size < 8:
            raise ValueError(f"image_size={self.image_size} must be >= 8")
        if not self.out.strip():
            raise ValueError("out is empty; give the dataset directory to write, e.g. out=runs/libero_demos")


def open_source(cfg: Config) -> DemoSource:
    """The reader for ``cfg.format`` over ``cfg.path``."""
    if not cfg.path.strip():
        raise ValueError(
            "path is empty; give the local folder with LIBERO's *_demo.hdf5 files (format=libero_hdf5) "
            "or a LeRobot v2.x dataset folder (format=lerobot)"
        )
    path = Path(cfg.path).expanduser()
    if cfg.format == "libero_hdf5":
        from lastr1.data.importers.libero_hdf5 import LiberoHdf5Source

        return LiberoHdf5Source(path, cfg.suite, wrist_view=cfg.wrist_view)
    from lastr1.data.importers.lerobot import LeRobotSource

    return LeRobotSource(
        path,
        cfg.suite,
        wrist_view=cfg.wrist_view,
        image_key=cfg.image_key,
        wrist_key=cfg.wrist_key,
        state_key=cfg.state_key,
        action_key=cfg.action_key,
    )


def select_demos(
    source: DemoSource, demos: list[SourceDemo], cfg: Config
) -> tuple[dict[str, list[SourceDemo]], dict[str, int]]:
    """Per task (suite order), the demos to import, and how many each task offered."""
    from lastr1.envs.libero import SUITES

    by_task: dict[str, list[SourceDemo]] = defaultdict(list)
    for demo in demos:
        by_task[demo.task.name].append(demo)
    if cfg.tasks:
        unknown = [t for t in cfg.tasks if t not in by_task]
        if unknown:
            raise ValueError(f"tasks: {unknown} not found in path={cfg.path!r}; it has {sorted(by_task)}")
        by_task = {t: by_task[t] for t in cfg.tasks}
    if not by_task:
        raise ValueError(f"path={cfg.path!r}: no demos found (suite={cfg.suite!r}, format={cfg.format!r})")

    def task_order(name: str) -> tuple[int, int, str]:
        task = by_task[name][0].task
        return (SUITES.index(task.suite) if task.suite in SUITES else len(SUITES), task.index, name)

    def length(demo: SourceDemo) -> int:
        return int(keep_mask(source.actions(demo)).sum()) if cfg.skip_noops else demo.length

    chosen: dict[str, list[SourceDemo]] = {}
    for name in sorted(by_task, key=task_order):
        ranked = sorted(by_task[name], key=lambda d: d.index)
        if cfg.select == "shortest":
            ranked = sorted(ranked, key=length)  # stable: ties keep the lower demo number
        chosen[name] = ranked[: cfg.episodes_per_task]
    return chosen, {name: len(by_task[name]) for name in chosen}


def run(cfg: Config) -> int:
    from tqdm import tqdm

    from lastr1.envs.libero import PRIVILEGED_DIM

    start = time.time()
    source = open_source(cfg)
    chosen, available = select_demos(source, source.demos(), cfg)
    flip = source.default_flip if cfg.flip_images is None else cfg.flip_images
    out = Path(cfg.out)
    _prepare_out(out, cfg.overwrite)

    records: list[dict[str, object]] = []
    arrays: dict[str, list[np.ndarray]] = {"action": [], "proprio": []}
    dropped = 0
    total = sum(len(d) for d in chosen.values())
    with tqdm(total=total, desc="import", unit="ep", file=sys.stderr) as bar:
        for name, demos in chosen.items():
            for demo in demos:
                bar.set_postfix(task=name[:40], demo=demo.index)
                episode = to_episode(
                    source.load(demo),
                    demo,
                    image_size=cfg.image_size,
                    flip=flip,
                    skip_noops=cfg.skip_noops,
                    privileged_dim=PRIVILEGED_DIM,
                )
                if arrays["proprio"] and episode.proprio.shape[1] != arrays["proprio"][0].shape[1]:
                    raise ValueError(
                        f"{demo.origin}: proprio has {episode.proprio.shape[1]} dims but earlier demos "
                        f"have {arrays['proprio'][0].shape[1]}"
                    )
                rel = Path(write_episode(out, len(records), episode)).relative_to(out)
                records.append(
                    {
                        "file": rel.as_posix(),
                        "task": name,
                        "length": len(episode),
                        "init_set": episode.init_set,
                        "init_index": episode.init_index,
                        "source": demo.origin,
                        "source_length": demo.length,
                    }
                )
                dropped += demo.length - len(episode)
                arrays["action"].append(episode.actions)
                arrays["proprio"].append(episode.proprio)
                bar.update(1)

    tasks = [demos[0].task for demos in chosen.values()]
    suites = sorted({t.suite for t in tasks})
    proprio_dim = int(arrays["proprio"][0].shape[1])
    write_meta(
        out,
        {
            "backend": "libero",
            "suite": suites[0] if len(suites) == 1 else "mixed",
            "tasks": [asdict(t) for t in tasks],
            "image_size": cfg.image_size,
            "views": ["agent", "wrist"] if cfg.wrist_view else ["agent"],
            "action_dim": 7,
            "proprio_dim": proprio_dim,
            "privileged_dim": PRIVILEGED_DIM,
            "privileged": "unavailable (imported)",
            "num_episodes": len(records),
            "per_task": {n: {"episodes": len(d), "available": available[n]} for n, d in chosen.items()},
            "init_set": "train",
            "source": f"LIBERO published demos ({cfg.format}) imported by lastr1 import-demos",
            "import": {
                "format": cfg.format,
                "path": str(Path(cfg.path).expanduser().resolve()),
                "select": cfg.select,
                "flip_images": flip,
                "skip_noops": cfg.skip_noops,
                "noop_steps_dropped": dropped,
            },
            "episodes": records,
        },
    )
    write_statistics(out, statistics_from_arrays(arrays))
    return _summary(cfg, chosen, available, source.notes, proprio_dim, arrays, time.time() - start)


def _summary(
    cfg: Config,
    chosen: dict[str, list[SourceDemo]],
    available: dict[str, int],
    notes: list[str],
    proprio_dim: int,
    arrays: dict[str, list[np.ndarray]],
    seconds: float,
) -> int:
    """Print what was imported per task; 1 when some task had fewer demos than asked for."""
    lengths = iter(len(a) for a in arrays["action"])
    for name, demos in chosen.items():
        picked = ", ".join(f"#{d.index} ({next(lengths)} steps)" for d in demos)
        print(f"{name}: {len(demos)}/{cfg.episodes_per_task} of {available[name]} demos: {picked}")
    print(f"wrote {len(arrays['action'])} episodes ({len(chosen)} tasks) to {cfg.out} in {seconds:.0f} s")
    warn = list(notes)
    if proprio_dim != LIBERO_PROPRIO_DIM:
        warn.append(
            f"proprio has {proprio_dim} dims but lastr1's LIBERO env observes {LIBERO_PROPRIO_DIM}; "
            "check state_key"
        )
    if max(float(np.abs(a).max()) for a in arrays["action"]) > 1.0 + 1e-6:
        warn.append("some actions lie outside [-1, 1]; the env clips them")
    short = [n for n, d in chosen.items() if len(d) < cfg.episodes_per_task]
    if short:
        warn.append(f"fewer than episodes_per_task={cfg.episodes_per_task} demos for {short}")
    for line in warn:
        print(f"import-demos: {line}", file=sys.stderr)
    return 1 if short else 0
