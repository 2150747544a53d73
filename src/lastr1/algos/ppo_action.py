"""Action-only PPO: the SimpleVLA-RL / VLA-RL style baseline in the same harness.

Only the action tokens get the clipped surrogate (token-level, asymmetric clip) plus the clipped
value loss; latents and the stop decision receive no policy gradient (they still move through the
shared backbone, exactly as a latent-reasoning policy fine-tuned by action-only PPO would).
"""

from __future__ import annotations

import torch

from lastr1.algos.base import AlgoConfig, NewTerms, OldTerms
from lastr1.algos.losses import action_token_loss, combine


class PpoAction:
    name = "ppo_action"
    default_advantage = "gae"
    uses_value = True
    trains_reasoning = False

    def loss(self, new: NewTerms, old: OldTerms, cfg: AlgoConfig) -> tuple[torch.Tensor, dict[str, float]]:
        l_action, metrics = action_token_loss(new, old, cfg)
        return combine(cfg.w_action * l_action.mean(), new, old, cfg, metrics, with_value=True)
