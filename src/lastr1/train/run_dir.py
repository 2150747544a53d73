"""One process per run directory: a writable ``out`` held under an exclusive lock.

Why ``fcntl.flock`` on ``<out>/.lock``: the kernel drops the lock when its holder exits, however
it exits (``kill -9`` included), so a lock left by a dead process is never stale -- the file stays,
the lock does not. The holder's pid is written into the file only so a refusal can name it. Two
``lastr1 rl`` into the same ``out`` would otherwise both run and interleave ``metrics.jsonl``.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".lock"


class RunDirBusy(ValueError):
    """Another live process holds the run directory."""


def writable_dir(path: str | Path) -> bool:
    """Whether a file can be created in the existing directory ``path`` (a real probe: root ignores
    permission bits, read-only mounts and full disks do not)."""
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            return True
    except OSError:
        return False


def make_run_dir(path: str | Path, field: str = "out") -> Path:
    """Create ``path`` if needed and check it is a writable directory, else a one-line error
    naming ``field`` and the fix (before any work is spent)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{field}={out} is an existing file, not a directory; choose another {field}=")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"{field}={out}: cannot create the directory ({exc.strerror}); choose a writable {field}="
        ) from None
    if not writable_dir(out):
        raise ValueError(f"{field}={out} is not writable; fix its permissions or choose another {field}=")
    return out


class RunLock:
    """``with RunLock(out):`` -- refuses (``RunDirBusy``) while another live process holds ``out``."""

    def __init__(self, run_dir: str | Path, field: str = "out"):
        self.dir = Path(run_dir)
        self.field = field
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        make_run_dir(self.dir, self.field)
        path = self.dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(
                f"{self.field}={self.dir} is in use by another lastr1 process (pid {holder}); "
                f"wait for it to finish or choose another {self.field}="
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
