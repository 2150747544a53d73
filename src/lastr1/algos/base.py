"""What every RL algorithm sees: its config, the stored rollout batch, the recomputed policy terms.

Algorithms never touch the model or the environment: the trainer recomputes ``NewTerms`` with
``policy.log_probs`` on a minibatch of ``OldTerms`` and hands both to ``Algorithm.loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch


@dataclass
class AlgoConfig:
    """RL objective settings; defaults are the LaST-R1 reference values (LASTR1_FACTS.md)."""

    name: Literal["lapo", "ppo_action", "grpo_action"] = "lapo"
    # "" = the algorithm's own default (lapo/ppo_action: gae, grpo_action: grpo).
    advantage: Literal["", "gae", "grpo"] = ""
    gamma: float = 0.99
    lam: float = 0.95
    whiten_advantages: bool = True
    # remove the advantage mean per task instead of per batch (see advantages.whiten); off = reference
    whiten_per_task: bool = False
    # the stop's advantage (LAPO, with GAE): "gae" = the decision's GAE advantage, whose baseline is
    # V at the chosen <latent_end> and so depends on the stop (the reference); "gae_expected" = GAE
    # with that baseline replaced by its expectation over the stop candidates; "return" = the
    # discounted return minus that expectation, no bootstrapping (advantages.stop_baseline_shift;
    # docs/rl.md, "per-task reasoning lengths in real RL")
    stop_advantage: Literal["gae", "gae_expected", "return"] = "gae"
    clip_low: float = 0.2
    clip_high: float = 0.28
    latent_sigma: float = 10.0
    w_action: float = 1.0
    w_end: float = 1.0
    w_latent: float = 0.1
    value_coef: float = 1.0
    value_clip: float = 0.5
    entropy_coef: float = 0.0
    # KL(π_θ ‖ π_start) per action token, π_start the checkpoint RL started from; 0 = the reference
    # (no KL). An anchor where the policy gradient carries little signal (docs/rl.md)
    kl_coef: float = 0.0
    # KL(π_θ ‖ π_start) of the stop categorical (at the stop temperature), on decisions that chose
    # their stop; LAPO only; 0 = the reference. Holds a task's reasoning length where its outcome does
    # not depend on it, so the length moves only where reward says so (docs/rl.md)
    stop_kl_coef: float = 0.0
    success_reward: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.clip_low < 1 or self.clip_high <= 0:
            raise ValueError("algo.clip_low must be in (0, 1) and algo.clip_high > 0 (reference: 0.2 / 0.28)")
        if self.latent_sigma <= 0:
            raise ValueError(f"algo.latent_sigma={self.latent_sigma} must be > 0 (reference: 10)")
        if not 0 < self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("algo.gamma must be in (0, 1] and algo.lam in [0, 1]")
        if self.kl_coef < 0:
            raise ValueError(f"algo.kl_coef={self.kl_coef} must be >= 0 (0 = no KL, the reference)")
        if self.stop_kl_coef < 0:
            raise ValueError(
                f"algo.stop_kl_coef={self.stop_kl_coef} must be >= 0 (0 = no stop KL, the reference)"
            )


@dataclass
class OldTerms:
    """Per-decision values recorded at rollout time (a flat minibatch of B valid decisions)."""

    advantages: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,)
    values: torch.Tensor  # (B,)
    logp_action_tokens: torch.Tensor  # (B, T) per action token
    logp_stop: torch.Tensor  # (B,) chosen stop candidate; zeros when the policy has no latents
    latents: torch.Tensor  # (B, K, D) latents fed back during the rollout
    latent_mask: torch.Tensor  # (B, K) bool, valid slots (the chosen reasoning length)
    # (B,) bool: decisions that chose their stop. None = all of them (PolicyConfig.stop_scope
    # "decision"); with "episode" only an episode's first decision does, the rest keep its length
    stop_mask: torch.Tensor | None = None
    # (B,) the stop term's advantages where they differ from the actions' (AlgoConfig.stop_advantage
    # other than "gae"); None = ``advantages``
    stop_advantages: torch.Tensor | None = None

    def index(self, idx: torch.Tensor) -> OldTerms:
        """The minibatch of decisions at ``idx``."""
        fields = {k: getattr(self, k) for k in OldTerms.__dataclass_fields__}
        return OldTerms(**{k: None if v is None else v[idx] for k, v in fields.items()})


@dataclass
class NewTerms:
    """The same quantities recomputed by the current policy, teacher-forced on the stored prefix."""

    logp_action_tokens: torch.Tensor  # (B, T)
    logp_stop: torch.Tensor  # (B,)
    latent_mu: torch.Tensor  # (B, K, D)
    values: torch.Tensor  # (B,)
    entropy: torch.Tensor  # (B,) mean per-token action entropy
    kl_ref: torch.Tensor | None = None  # (B,) mean per-token KL to the starting policy (kl_coef > 0)
    stop_kl_ref: torch.Tensor | None = None  # (B,) stop KL to the starting policy (stop_kl_coef > 0)


class Algorithm(Protocol):
    """A registered RL objective."""

    name: str
    default_advantage: str
    uses_value: bool
    trains_reasoning: bool  # whether latents and the stop decision receive policy gradients

    def loss(
        self, new: NewTerms, old: OldTerms, cfg: AlgoConfig
    ) -> tuple[torch.Tensor, dict[str, float]]: ...
