"""``python -m lastr1 ...``: the ``lastr1`` command, also as ``torchrun --nproc-per-node N -m lastr1 rl ...``
(torchrun runs a module, not a console script)."""

from __future__ import annotations

from lastr1.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
