"""Load any saved policy folder as the class that wrote it (``family`` in its ``config.json``).

Why one loader: evaluation, serving and the benchmarks should not care which family a checkpoint
is; the family is recorded beside the weights, so the folder says how to rebuild itself.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from lastr1.models.decode import DecodeConfig

FAMILIES = ("lastr1", "last0")


def saved_family(directory: str | Path) -> str:
    """The ``family`` recorded in a policy folder's ``config.json`` (folders written before the field
    existed are LaST-R1); a missing or unreadable folder is left to the class's loader to report."""
    path = Path(directory) / "config.json"
    try:
        family = json.loads(path.read_text()).get("family", "lastr1")
    except (OSError, ValueError, AttributeError):
        return "lastr1"
    if family not in FAMILIES:
        raise ValueError(f"{path}: family={family!r} is unknown; expected one of {list(FAMILIES)}")
    return family


def load_policy(
    directory: str | Path, device: Any = "cpu", decode: DecodeConfig | None = None, **options: Any
) -> Any:
    """The policy saved in ``directory``: a ``LastR1Policy`` or a ``Last0Policy``. ``options`` go to
    that class's ``from_pretrained`` (LaST-R1: ``stop_context``, ``backbone_run``; LaST0:
    ``reason_every``); one that does not apply to the folder's family is a one-line error."""
    family = saved_family(directory)
    if family == "last0":
        from lastr1.models.last0.policy import Last0Policy as cls
    else:
        from lastr1.models.policy import LastR1Policy as cls  # type: ignore[assignment]
    accepted = set(inspect.signature(cls.from_pretrained).parameters)
    wrong = sorted(set(options) - accepted)
    if wrong:
        raise ValueError(
            f"{directory} holds a policy.family={family} policy; the options {wrong} do not apply to it"
        )
    return cls.from_pretrained(directory, device=device, decode=decode, **options)
