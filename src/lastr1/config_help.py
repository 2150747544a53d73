"""``lastr1 <command> --help``: every config field with its type, default and meaning.

Why read the meaning from the dataclass's source comments: the comment beside a field is where its
meaning is already written (and reviewed); a second copy for the help text would drift.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from typing import Any, get_args, get_type_hints

_FIELD = re.compile(r"^\s*(\w+)\s*:\s*[^=#]+(?:=[^#]*)?(?:#\s*(.*))?$")


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment: the comment lines just above it plus its inline comment, joined."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        m = _FIELD.match(line)
        if m and m.group(1) in names and m.group(1) not in out:
            parts = [*above, (m.group(2) or "").strip()]
            out[m.group(1)] = " ".join(p for p in parts if p)
        above = []
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def _type_text(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if isinstance(tp, type) else None
    return text or str(tp).replace("typing.", "")


def _dataclass_in(tp: Any) -> type | None:
    """``tp`` itself, or the dataclass inside ``X | None``."""
    if dataclasses.is_dataclass(tp):
        return tp
    inner = [a for a in get_args(tp) if a is not type(None)]
    return inner[0] if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) else None


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(dotted name, type, default, meaning)`` for every leaf field, nested dataclasses expanded."""
    hints = get_type_hints(cls)
    docs = field_comments(cls)
    rows: list[tuple[str, str, str, str]] = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        nested = _dataclass_in(tp)
        if nested is not None:
            if nested is not tp:  # optional group: say what leaving it out means
                rows.append((name, f"{nested.__name__} | None", repr(_default(f)), docs.get(f.name, "")))
            rows += describe(nested, f"{name}.")
            continue
        default = _default(f)
        if isinstance(default, tuple):
            default = list(default)
        rows.append((name, _type_text(tp), repr(default), docs.get(f.name, "")))
    return rows


def help_text(cls: type, width: int = 100) -> str:
    """A listing of :func:`describe` for the terminal: name, type and default, then the meaning."""
    lines = []
    for name, tp, default, doc in describe(cls):
        lines.append(f"  {name}: {tp} = {default}")
        if doc:
            lines += textwrap.wrap(doc, width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)
