"""The backend's scripted experts as an :class:`~lastr1.rollout.collector.ActingPolicy`.

Why: the evaluator must be checkable without a learned policy. ``lastr1 eval --policy expert`` runs
the same protocol (initial states, settle steps, step budgets, success check, videos, workers) with
the privileged scripted experts, so a user can verify an install against known numbers and two runs
can be compared episode by episode. The experts run inside the env slots (see
``BatchedEnv.expert_actions``) because the LIBERO expert reads simulator internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lastr1.envs.base import Observation


@dataclass
class ScriptedOutput:
    """The part of a policy output the collector reads: one action per decision, no latents."""

    actions: torch.Tensor  # (B, 1, 7)
    latent_len: torch.Tensor  # (B,) zeros: experts do not reason in latents
    value: torch.Tensor | None = None

    @staticmethod
    def cat(rows: list[ScriptedOutput]) -> ScriptedOutput:
        return ScriptedOutput(
            actions=torch.cat([r.actions for r in rows]), latent_len=torch.cat([r.latent_len for r in rows])
        )


class ScriptedPolicy:
    """Closed loop, one env step per decision: asks each live slot's expert for its next action."""

    def __init__(self, env: object):
        if not hasattr(env, "expert_actions"):
            raise ValueError(f"{type(env).__name__} cannot run scripted experts (no expert_actions)")
        self.env = env

    def act(
        self, obs: Observation, mode: str = "greedy", generator: torch.Generator | None = None
    ) -> ScriptedOutput:
        if obs.slot is None:
            raise ValueError("ScriptedPolicy needs observations from a BatchedEnv (obs.slot is None)")
        actions = torch.as_tensor(self.env.expert_actions(obs.slot), dtype=torch.float32)  # type: ignore[attr-defined]
        return ScriptedOutput(actions=actions[:, None], latent_len=torch.zeros(len(obs), dtype=torch.long))
