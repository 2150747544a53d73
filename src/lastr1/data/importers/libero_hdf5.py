"""LIBERO's published HDF5 demos: one ``<task_name>_demo.hdf5`` per task, ``data/demo_<i>/`` each.

Why a dedicated reader: the files name the task only through the file name, render images upside
down (flipped here by default), and keep proprio in three arrays (``obs/ee_pos``, ``obs/ee_ori``
axis-angle, ``obs/gripper_states``) that our LIBERO env concatenates into one 8-dim vector.
``states``, ``rewards`` and ``dones`` are not read: published demos are successful by construction.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from lastr1.data.importers import RawDemo, SourceDemo, libero_tasks, normalise_instruction, unknown_task
from lastr1.envs.base import TaskSpec

FILE_SUFFIX = "_demo.hdf5"
AGENT_KEY = "obs/agentview_rgb"
WRIST_KEY = "obs/eye_in_hand_rgb"
PROPRIO_KEYS = ("obs/ee_pos", "obs/ee_ori", "obs/gripper_states")
_DEMO = re.compile(r"^demo_(\d+)$")


def find_files(path: Path) -> list[Path]:
    """``path`` itself when it is a file, else every ``*_demo.hdf5`` below it (sorted)."""
    if not path.exists():
        raise FileNotFoundError(f"path={str(path)!r} does not exist; pass LIBERO's demo folder or one file")
    if path.is_file():
        if not path.name.endswith(FILE_SUFFIX):
            raise ValueError(f"path={str(path)!r}: expected a LIBERO file named <task_name>{FILE_SUFFIX}")
        return [path]
    files = sorted(path.rglob(f"*{FILE_SUFFIX}"))
    if not files:
        hint = " (it looks like a LeRobot dataset: use format=lerobot)" if (path / "meta").is_dir() else ""
        raise ValueError(f"path={str(path)!r} holds no *{FILE_SUFFIX} files{hint}")
    return files


def _attr_json(attrs: Any, key: str) -> dict[str, Any]:
    raw = attrs.get(key)
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        value = json.loads(str(raw))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class LiberoHdf5Source:
    """Demos of every ``*_demo.hdf5`` under ``path``, tasks checked against ``suite`` (or inferred)."""

    default_flip = True  # LIBERO stores its renderer's upside-down images

    def __init__(self, path: str | Path, suite: str | None, *, wrist_view: bool):
        self.files = find_files(Path(path))
        self.suite = suite
        self.wrist_view = wrist_view
        self.notes: list[str] = []
        self._tasks = {t.name: t for t in libero_tasks(suite)}

    def _task(self, file: Path, data: Any) -> TaskSpec:
        name = file.name[: -len(FILE_SUFFIX)]
        task = self._tasks.get(name)
        if task is None and self.suite is not None:
            raise ValueError(
                f"{file.name}: task {name!r} is not in LIBERO suite {self.suite!r}; "
                "pass the suite the files come from (`lastr1 envs --env libero` lists them) "
                "or leave suite out to infer it"
            )
        instruction = _attr_json(data.attrs, "problem_info").get("language_instruction")
        if task is None:
            from lastr1.envs.libero import _instruction

            return unknown_task(
                name,
                str(instruction or _instruction(name)),
                f"{file.name}: no LIBERO suite has task {name!r}",
            )
        if instruction:  # the file's own words win over the name-derived ones
            if normalise_instruction(str(instruction)) != normalise_instruction(task.instruction):
                self.notes.append(
                    f"{name}: the file's instruction {instruction!r} differs from the one the LIBERO env "
                    f"gives ({task.instruction!r}); the file's is stored"
                )
            task = TaskSpec(task.suite, task.name, str(instruction).strip(), task.max_steps, task.index)
        return task

    def demos(self) -> list[SourceDemo]:
        import h5py

        out: list[SourceDemo] = []
        for file in self.files:
            try:
                handle = h5py.File(file, "r")
            except OSError as exc:
                raise ValueError(f"{file}: not a readable HDF5 file ({exc})") from None
            with handle:
                data = handle.get("data")
                if data is None:
                    raise ValueError(f"{file}: no 'data' group; is this one of LIBERO's demo files?")
                task = self._task(file, data)
                numbered = sorted((int(m.group(1)), k) for k in data if (m := _DEMO.match(k)))
                for number, key in numbered:
                    if "actions" not in data[key]:
                        raise ValueError(f"{file}: data/{key} has no 'actions'")
                    length = int(data[key]["actions"].shape[0])
                    out.append(SourceDemo(task, number, length, file, f"data/{key}"))
        return out

    def actions(self, demo: SourceDemo) -> np.ndarray:
        import h5py

        with h5py.File(demo.file, "r") as handle:
            return np.asarray(handle[demo.key]["actions"][()], dtype=np.float64)

    def load(self, demo: SourceDemo) -> RawDemo:
        import h5py

        with h5py.File(demo.file, "r") as handle:
            group = handle[demo.key]

            def read(key: str) -> np.ndarray:
                if key not in group:
                    raise ValueError(f"{demo.origin}: missing {key!r} (needed for the import)")
                return np.asarray(group[key][()])

            parts = [read(k) for k in PROPRIO_KEYS]
            if len({len(p) for p in parts}) != 1:
                raise ValueError(f"{demo.origin}: {list(PROPRIO_KEYS)} have different numbers of steps")
            proprio = np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)
            return RawDemo(
                agent=read(AGENT_KEY),
                wrist=read(WRIST_KEY) if self.wrist_view else None,
                proprio=proprio,
                actions=read("actions"),
            )
