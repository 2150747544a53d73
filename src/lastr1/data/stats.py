"""Per-dimension dataset statistics (``dataset_statistics.json``).

Why: the action tokenizer normalises each action dimension with the training set's q01/q99
(``LASTR1_FACTS.md``), and policies may standardise proprio. The file is keyed by field so more
fields can be added without breaking readers::

    {"action":  {"mean": [...7], "std": [...], "min": [...], "max": [...], "q01": [...], "q99": [...]},
     "proprio": {...same keys, P values...},
     "num_transitions": N, "num_episodes": E}

``std`` is the population standard deviation (ddof=0); quantiles use numpy's default linear method.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lastr1.data.episodes import STATS_FILE, Episode

STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")
REQUIRED_FIELDS = ("action",)
# Statistic name -> the Episode attribute it summarises.
FIELD_SOURCES = {"action": "actions", "proprio": "proprio"}


def array_statistics(values: np.ndarray) -> dict[str, list[float]]:
    """Statistics over axis 0 of a ``(N, D)`` array, as JSON-ready lists."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"statistics need a non-empty (N, D) array, got shape {arr.shape}")
    stats = {
        "mean": arr.mean(axis=0),
        "std": arr.std(axis=0),
        "min": arr.min(axis=0),
        "max": arr.max(axis=0),
        "q01": np.quantile(arr, 0.01, axis=0),
        "q99": np.quantile(arr, 0.99, axis=0),
    }
    return {k: [float(x) for x in v] for k, v in stats.items()}


def compute_statistics(episodes: Iterable[Episode]) -> dict[str, Any]:
    """Statistics of every field in :data:`FIELD_SOURCES` over all steps of ``episodes``."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in FIELD_SOURCES}
    for ep in episodes:
        for name, attr in FIELD_SOURCES.items():
            chunks[name].append(np.asarray(getattr(ep, attr)))
    return statistics_from_arrays(chunks)


def statistics_from_arrays(chunks: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """Statistics from per-episode ``(T, D)`` arrays keyed by field (e.g. ``{"action": [...]}``);
    lets writers summarise a dataset without keeping its images in memory."""
    if "action" not in chunks or not chunks["action"]:
        raise ValueError("cannot compute dataset statistics of zero episodes")
    counts = {name: len(parts) for name, parts in chunks.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"statistics fields cover different numbers of episodes: {counts}")
    out: dict[str, Any] = {name: array_statistics(np.concatenate(parts)) for name, parts in chunks.items()}
    out["num_transitions"] = int(sum(len(a) for a in chunks["action"]))
    out["num_episodes"] = len(chunks["action"])
    return out


def write_statistics(root: str | Path, stats: dict[str, Any]) -> Path:
    path = Path(root) / STATS_FILE
    _validate(stats, path)
    path.write_text(json.dumps(stats, indent=2) + "\n")
    return path


def load_statistics(root: str | Path) -> dict[str, Any]:
    """Read ``<root>/dataset_statistics.json`` (or the file itself) and validate it."""
    path = Path(root)
    if path.is_dir():
        path = path / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"dataset statistics not found: {path} (written by `lastr1 make-demos`)")
    try:
        stats = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    _validate(stats, path)
    return stats


def _validate(stats: Any, path: Path) -> None:
    if not isinstance(stats, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by field ('action', ...)")
    for name in REQUIRED_FIELDS:
        if name not in stats:
            raise ValueError(f"{path}: missing the {name!r} statistics")
    for name, block in stats.items():
        if name in ("num_transitions", "num_episodes"):
            continue
        if not isinstance(block, dict):
            raise ValueError(f"{path}: {name!r} must map statistic names to lists")
        missing = [k for k in STAT_KEYS if k not in block]
        if missing:
            raise ValueError(f"{path}: {name!r} lacks statistics {missing}")
        dims = {len(block[k]) for k in STAT_KEYS}
        if len(dims) != 1:
            raise ValueError(f"{path}: {name!r} statistics have different lengths {sorted(dims)}")
        values = np.array([block[k] for k in STAT_KEYS], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{path}: {name!r} statistics contain NaN or inf")
        lo, hi = np.array(block["min"]), np.array(block["max"])
        q01, q99 = np.array(block["q01"]), np.array(block["q99"])
        if np.any(lo > q01 + 1e-9) or np.any(q01 > q99 + 1e-9) or np.any(q99 > hi + 1e-9):
            raise ValueError(f"{path}: {name!r} statistics violate min <= q01 <= q99 <= max")
        if np.any(np.array(block["std"]) < 0):
            raise ValueError(f"{path}: {name!r} std must be >= 0")
