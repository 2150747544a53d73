"""Crash-safe checkpoints: a kill at any moment leaves the last complete checkpoint loadable.

Each checkpoint is a directory ``step-XXXXXXXX/`` written in full under a temporary name and then
renamed (atomic on POSIX); a ``latest`` file, itself replaced atomically, names the newest one.
Only the ``keep`` newest are kept. Resuming reads ``latest``; a half-written ``.tmp`` directory
from a killed run is ignored and cleaned up.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


class CheckpointManager:
    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = max(1, keep)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if path.is_dir() else None

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp_dir)`` to fill a fresh directory, then publish it as checkpoint ``step``."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:08d}"
        final = self.root / name
        tmp = self.root / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = self.root / "latest.tmp"
        pointer_tmp.write_text(name)
        os.replace(pointer_tmp, self.root / "latest")
        self._prune(final)
        return final

    def _prune(self, newest: Path) -> None:
        for stale in self.root.glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        done = sorted(p for p in self.root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[: -self.keep]:
            if old != newest:
                shutil.rmtree(old, ignore_errors=True)
