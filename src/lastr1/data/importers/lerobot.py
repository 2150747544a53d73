"""LeRobot-format datasets, codebase v2.x (one parquet file per episode), e.g. LeRobot's LIBERO sets.

Why a dedicated reader: LeRobot names tasks by their instruction strings (mapped back to LIBERO task
names here), stores ``image`` features as encoded PNG/JPEG bytes inside the parquet rows and
``video`` features as one mp4 per episode and camera. LeRobot's LIBERO conversions already store
upright images (no flip by default) and an 8-dim ``state`` laid out like our LIBERO proprio. v3.0
packs many episodes per file and is rejected with a clear error.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lastr1.data.importers import (
    RawDemo,
    SourceDemo,
    libero_tasks,
    normalise_instruction,
    slugify,
    unknown_task,
)
from lastr1.envs.base import TaskSpec

INFO_FILE = "meta/info.json"
TASKS_FILE = "meta/tasks.jsonl"
EPISODES_FILE = "meta/episodes.jsonl"
DEFAULT_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
DEFAULT_CHUNKS_SIZE = 1000


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ValueError(f"{path} is missing; a LeRobot v2.x dataset lists its tasks and episodes there")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_info(root: Path) -> dict[str, Any]:
    """``meta/info.json``, checked to be a v2.x dataset."""
    if not root.exists():
        raise FileNotFoundError(f"path={str(root)!r} does not exist; pass the LeRobot dataset's folder")
    path = root / INFO_FILE
    if not path.is_file():
        hint = " (it holds HDF5 files: use format=libero_hdf5)" if any(root.rglob("*.hdf5")) else ""
        raise ValueError(f"path={str(root)!r} has no {INFO_FILE}: not a LeRobot dataset{hint}")
    info = json.loads(path.read_text())
    version = str(info.get("codebase_version", "unknown"))
    if not version.startswith("v2"):
        raise ValueError(
            f"{path}: codebase_version={version!r} is not supported; only LeRobot v2.x datasets "
            "(v2.0, v2.1: one parquet file per episode) can be imported; use a v2.x revision"
        )
    return info


class LeRobotSource:
    """Episodes of a LeRobot v2.x dataset whose instructions map to LIBERO tasks."""

    default_flip = False  # LeRobot's LIBERO conversions store upright images

    def __init__(
        self,
        path: str | Path,
        suite: str | None,
        *,
        wrist_view: bool,
        image_key: str = "image",
        wrist_key: str = "wrist_image",
        state_key: str = "state",
        action_key: str = "actions",
    ):
        self.root = Path(path)
        self.info = read_info(self.root)
        self.features: dict[str, Any] = self.info.get("features", {})
        self.keys = {"image_key": image_key, "state_key": state_key, "action_key": action_key}
        if wrist_view:
            self.keys["wrist_key"] = wrist_key
        for field, key in self.keys.items():
            if key not in self.features:
                raise ValueError(
                    f"{field}={key!r} is not a feature of {self.root}; its features are "
                    f"{sorted(self.features)}: set {field} to one of them"
                )
        self.suite = suite
        self.notes: list[str] = []
        self._tasks = self._map_tasks(libero_tasks(None))

    def _map_tasks(self, catalogue: list[TaskSpec]) -> dict[str, TaskSpec | None]:
        """Instruction string → LIBERO task (None: a task of another suite, skipped)."""
        by_text = {normalise_instruction(t.instruction): t for t in catalogue}
        mapping: dict[str, TaskSpec | None] = {}
        for rec in _read_jsonl(self.root / TASKS_FILE):
            text = str(rec["task"])
            task = by_text.get(normalise_instruction(text))
            if task is None:
                task = unknown_task(slugify(text), text, f"instruction {text!r} matches no LIBERO task")
            elif self.suite is not None and task.suite != self.suite:
                task = None
            mapping[text] = task
        return mapping

    def demos(self) -> list[SourceDemo]:
        chunks = int(self.info.get("chunks_size") or DEFAULT_CHUNKS_SIZE)
        template = str(self.info.get("data_path") or DEFAULT_DATA_PATH)
        out: list[SourceDemo] = []
        skipped: Counter[str] = Counter()
        for rec in sorted(_read_jsonl(self.root / EPISODES_FILE), key=lambda r: int(r["episode_index"])):
            index = int(rec["episode_index"])
            texts = rec.get("tasks") or []
            if not texts or texts[0] not in self._tasks:
                raise ValueError(f"{EPISODES_FILE}: episode {index} names no task listed in {TASKS_FILE}")
            task = self._tasks[texts[0]]
            if task is None:
                skipped[texts[0]] += 1
                continue
            file = self.root / template.format(episode_chunk=index // chunks, episode_index=index)
            out.append(SourceDemo(task, index, int(rec["length"]), file, str(index)))
        if skipped:
            self.notes.append(
                f"skipped {sum(skipped.values())} episodes of {len(skipped)} tasks outside suite {self.suite!r}"
            )
        return out

    def _table(self, demo: SourceDemo, columns: list[str]) -> Any:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("format=lerobot needs pyarrow: pip install pyarrow") from None
        if not demo.file.is_file():
            raise FileNotFoundError(f"episode {demo.key}: parquet file {demo.file} is missing")
        return pq.read_table(demo.file, columns=columns)

    def actions(self, demo: SourceDemo) -> np.ndarray:
        key = self.keys["action_key"]
        return np.asarray(self._table(demo, [key]).column(key).to_pylist(), dtype=np.float64)

    def load(self, demo: SourceDemo) -> RawDemo:
        image_cols = [self.keys["image_key"]] + ([self.keys["wrist_key"]] if "wrist_key" in self.keys else [])
        stored = [k for k in image_cols if self.features[k].get("dtype") != "video"]
        table = self._table(demo, [self.keys["state_key"], self.keys["action_key"], *stored])
        views = [self._images(demo, table, key) for key in image_cols]
        return RawDemo(
            agent=views[0],
            wrist=views[1] if len(views) > 1 else None,
            proprio=np.asarray(table.column(self.keys["state_key"]).to_pylist(), dtype=np.float64),
            actions=np.asarray(table.column(self.keys["action_key"]).to_pylist(), dtype=np.float64),
        )

    def _images(self, demo: SourceDemo, table: Any, key: str) -> np.ndarray:
        dtype = self.features[key].get("dtype")
        if dtype == "video":
            return self._video(demo, key, table.num_rows)
        if dtype != "image":
            raise ValueError(f"feature {key!r} has dtype {dtype!r}; only 'image' and 'video' can be imported")
        from PIL import Image

        frames = []
        for cell in table.column(key).to_pylist():
            data, rel = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
            if not data and not rel:
                raise ValueError(f"episode {demo.key}: feature {key!r} has a row with neither bytes nor path")
            with Image.open(io.BytesIO(data) if data else self.root / str(rel)) as img:
                frames.append(np.asarray(img.convert("RGB")))
        return np.stack(frames)

    def _video(self, demo: SourceDemo, key: str, steps: int) -> np.ndarray:
        import imageio.v2 as imageio

        template = self.info.get("video_path")
        if not template:
            raise ValueError(f"feature {key!r} is a video but {INFO_FILE} has no video_path")
        chunks = int(self.info.get("chunks_size") or DEFAULT_CHUNKS_SIZE)
        index = int(demo.key)
        path = self.root / str(template).format(
            episode_chunk=index // chunks, video_key=key, episode_index=index
        )
        if not path.is_file():
            raise FileNotFoundError(f"episode {index}: video {path} is missing")
        with imageio.get_reader(path, format="ffmpeg") as reader:  # type: ignore[arg-type]
            frames = [np.asarray(frame) for _, frame in zip(range(steps), reader, strict=False)]
        if len(frames) < steps:
            raise ValueError(f"{path}: {len(frames)} frames for an episode of {steps} steps")
        return np.stack(frames)
