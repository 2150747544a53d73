"""Crash-safe checkpoints: a kill at any moment leaves the last complete checkpoint loadable.

Each checkpoint is a directory ``step-XXXXXXXX/`` written in full under a temporary name and then
renamed (atomic on POSIX); a ``latest`` file, itself replaced atomically, names the newest one.
Only the ``keep`` newest are kept. Resuming reads ``latest``; when it names a checkpoint that is
not there (a stale pointer: a copied or hand-edited run), the newest complete ``step-*`` directory
is used instead, so a bad pointer never makes a run start over. A half-written ``.tmp`` directory
from a killed run is ignored and cleaned up. Callers check the weights are finite before saving
(:func:`all_finite`), so a kept checkpoint is always one training can resume from.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class CheckpointManager:
    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = max(1, keep)

    def complete(self) -> list[Path]:
        """Every complete checkpoint directory, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))

    def pointer(self) -> str | None:
        """The name ``latest`` holds, or None without a pointer."""
        path = self.root / "latest"
        return path.read_text().strip() if path.is_file() else None

    def stale_pointer(self) -> str | None:
        """The name ``latest`` holds when no such checkpoint exists, else None."""
        name = self.pointer()
        return name if name is not None and not (self.root / name).is_dir() else None

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the one ``latest`` names, else the newest ``step-*``."""
        name = self.pointer()
        if name and (self.root / name).is_dir() and not name.endswith(".tmp"):
            return self.root / name
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp_dir)`` to fill a fresh directory, then publish it as checkpoint ``step``."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:08d}"
        final = self.root / name
        tmp = self.root / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            write(tmp)
        except OSError:  # a full disk: leave no half checkpoint behind, keep the previous ones
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
        for old in self.complete()[: -self.keep]:
            if old != newest:
                shutil.rmtree(old, ignore_errors=True)


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (checked before any checkpoint is written)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def load_state(path: Path) -> Any:
    """``torch.load`` of a checkpoint file, with a damaged file as a one-line error naming it."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint file {path} is missing; the checkpoint is incomplete") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(
            f"checkpoint file {path} is damaged ({str(exc).splitlines()[0][:80]}); delete {path.parent} "
            "to resume from the checkpoint before it, or pass overwrite=true to start over"
        ) from None
