"""Action-only GRPO: group-relative advantages, no critic (SimpleVLA-RL's default recipe).

Advantages come from ``n`` rollouts of the same initial state (``advantages.grpo``); the loss is
the token-level clipped surrogate on the action tokens only. No value loss is added.
"""

from __future__ import annotations

import torch

from lastr1.algos.base import AlgoConfig, NewTerms, OldTerms
from lastr1.algos.losses import action_token_loss, combine


class GrpoAction:
    name = "grpo_action"
    default_advantage = "grpo"
    uses_value = False
    trains_reasoning = False

    def loss(self, new: NewTerms, old: OldTerms, cfg: AlgoConfig) -> tuple[torch.Tensor, dict[str, float]]:
        l_action, metrics = action_token_loss(new, old, cfg)
        return combine(cfg.w_action * l_action.mean(), new, old, cfg, metrics, with_value=False)
