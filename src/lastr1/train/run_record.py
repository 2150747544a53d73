"""What a run directory says about its run, kept true: resume or start over, and the config record.

Why: ``config.yaml`` is how a run is reproduced and read later, so it must say what the optimizer
used. It is written only once a run has started (every setting checked, the policy and the
environment built), never by a command that then fails. Resuming with settings that differ from
the record is refused unless the user names them (``allow_changes=lr,algo.kl_coef``); allowed
changes are appended, old and new values, to ``config_history.jsonl`` beside it. Starting over in a
directory that holds checkpoints needs an explicit ``overwrite=true``: nothing is deleted otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from lastr1.config import to_dict
from lastr1.train.checkpoint import CheckpointManager

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "config_history.jsonl"
# fields a resume may change freely: where and how fast it runs, how far it goes, how often it
# evaluates or saves -- none changes what one training step does
FREE_TO_CHANGE = frozenset(
    {
        "out",
        "progress",
        "threads",
        "resume",
        "overwrite",
        "allow_changes",
        "iterations",
        "steps",
        "max_env_steps",
        "eval_every",
        "eval_videos",
        "eval_sampled",
        "eval_at_start",
        "checkpoint_every",
    }
)
# what ``overwrite=true`` removes: the run's own outputs, never anything else in the directory
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "evals", "final", "tb", HISTORY_FILE)


def resume_point(run_dir: Path, mgr: CheckpointManager, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from, or None to start fresh; refuses anything that would lose work.

    ``overwrite`` clears the previous run's outputs first. A stale ``latest`` falls back to the
    newest complete checkpoint (with a note); with none left it is an error, not a fresh start.
    """
    if overwrite:
        for name in RUN_OUTPUTS:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return None
    latest = mgr.latest()
    stale = mgr.stale_pointer()
    if latest is None and stale is None:
        return None
    where = latest.name if latest is not None else f"a stale pointer to {stale}"
    if not resume:
        raise ValueError(
            f"out={run_dir} already holds a run (checkpoints: {where}); resume=false would start over "
            "and overwrite it: pass overwrite=true to discard it, or choose a new out="
        )
    if latest is None:
        raise ValueError(
            f"{mgr.root / 'latest'} names {stale}, which does not exist, and no complete checkpoint is "
            "left; restore the checkpoint, or pass overwrite=true to start over"
        )
    if stale is not None:
        print(f"note: {mgr.root / 'latest'} names {stale}, which does not exist; resuming from {latest.name}")
    return latest


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _plain(cfg: Any) -> dict[str, Any]:
    """The config as ``config.yaml`` reads back (tuples as lists, the same float spelling)."""
    return yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _allowed(key: str, allow: list[str]) -> bool:
    """``allow_changes=algo`` allows every ``algo.*`` field."""
    return any(key == a or key.startswith(f"{a}.") for a in allow)


def config_changes(run_dir: Path, cfg: Any, allow: list[str]) -> dict[str, list[Any]]:
    """The resumed run's settings that differ from its ``config.yaml`` (``{field: [old, new]}``).

    Fields the record lacks (written before they existed) are not compared. Raises a one-line error
    listing the changed fields and the fix unless ``allow`` names each of them.
    """
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        saved = _flat(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError:
        raise ValueError(f"{path} is not valid YAML; restore it, or choose a new out=") from None
    new = _flat(_plain(cfg))
    known = set(new) | {k for k in saved if k.split(".")[0] in new}
    for a in allow:
        if not any(_allowed(k, [a]) for k in known):
            raise ValueError(f"allow_changes: {a!r} is not a field of this command")
    changes = {
        k: [saved[k], v]
        for k, v in new.items()
        if k in saved and saved[k] != v and k.split(".")[0] not in FREE_TO_CHANGE
    }
    refused = sorted(k for k in changes if not _allowed(k, allow))
    if refused:
        diff = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ValueError(
            f"resuming {run_dir} with changed settings ({diff}); the checkpoint was trained with the "
            f"values in {path}. Pass allow_changes={','.join(refused)} to resume with the new values "
            "(recorded in config_history.jsonl), or choose a new out="
        )
    return changes


def write_record(run_dir: Path, cfg: Any, changes: dict[str, list[Any]], step: int) -> None:
    """Write ``config.yaml`` (atomically) once the run has started; log allowed changes beside it."""
    if changes:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_at": step, "changes": changes}
        with (run_dir / HISTORY_FILE).open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"resuming with changed settings: {', '.join(sorted(changes))} (see {run_dir / HISTORY_FILE})")
    tmp = run_dir / f"{CONFIG_FILE}.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, run_dir / CONFIG_FILE)
