"""The metadata frame a client receives on connect: what the checkpoint expects and returns.

Why: robot-side code should check its camera size, state width and chunk length against the
server before the first request, and show the operator which instructions the policy was trained
on (an unseen instruction is hashed into words the policy never saw together). The instruction set
is not stored beside the weights, so it is read from the run that wrote the checkpoint: the run's
``config.yaml`` names its dataset (``data:``, whose ``meta.json`` lists the tasks) or, for an RL run,
the checkpoint it started from (followed a few levels up).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

import lastr1
from lastr1.models.policy import LastR1Policy
from lastr1.serve.validate import PROMPT_KEY, STATE_KEY, ObservationSpec

PROTOCOL = "openpi-websocket/msgpack-numpy"


def observation_spec(policy: LastR1Policy) -> ObservationSpec:
    """What a request must carry for this policy."""
    cfg = policy.config
    return ObservationSpec(
        image_size=cfg.image_size,
        num_views=cfg.num_views,
        state_dim=cfg.proprio_dim if cfg.use_proprio else 0,
        num_stop_candidates=policy.layout.num_candidates,
    )


def _run_config(checkpoint: Path) -> tuple[Path, dict[str, Any]] | None:
    """The ``config.yaml`` of the run that holds ``checkpoint`` (``run/final``, ``run/checkpoints/step-N``)."""
    for parent in list(checkpoint.resolve().parents)[:3]:
        path = parent / "config.yaml"
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                return None
            return (parent, data) if isinstance(data, dict) else None
    return None


def trained_instructions(checkpoint: str | Path, depth: int = 3) -> list[str]:
    """The instructions of the dataset the checkpoint's lineage was trained on ([] when unknown)."""
    found = _run_config(Path(checkpoint))
    if found is None or depth <= 0:
        return []
    _, cfg = found
    data = cfg.get("data")
    if isinstance(data, str) and data:
        from lastr1.data.episodes import read_meta

        try:
            meta = read_meta(data)
        except (OSError, ValueError):
            return []
        return list(dict.fromkeys(str(t.get("instruction", "")) for t in meta.get("tasks", []) if t))
    parent = cfg.get("checkpoint")
    if isinstance(parent, str) and parent and Path(parent).is_dir():
        return trained_instructions(parent, depth - 1)
    return []


def build_metadata(
    policy: LastR1Policy,
    *,
    checkpoint: str,
    mode: str,
    instructions: list[str],
    action_low: list[float] | None,
    action_high: list[float] | None,
    max_translation: float,
    max_frame_bytes: int,
    max_batch: int,
) -> dict[str, Any]:
    """The metadata frame (plain msgpack types only, so any client can read it)."""
    cfg = policy.config
    spec = observation_spec(policy)
    return {
        "server": "lastr1",
        "version": getattr(lastr1, "__version__", "0"),
        "protocol": PROTOCOL,
        "checkpoint": str(checkpoint),
        "image_keys": spec.image_keys,
        "image_size": [cfg.image_size, cfg.image_size, 3],
        "state_key": STATE_KEY if spec.state_dim else None,
        "state_dim": spec.state_dim,
        "prompt_key": PROMPT_KEY,
        "required_keys": spec.required_keys,
        "action_dim": cfg.action_dim,
        "action_horizon": cfg.chunk,
        "instructions": list(instructions),
        "mode": mode,
        "decode": dataclasses.asdict(policy.decode),
        "action_filter": {
            "enabled": action_low is not None,
            "low": action_low,
            "high": action_high,
            "max_translation": max_translation,
        },
        "max_frame_bytes": max_frame_bytes,
        "max_batch": max_batch,
    }
