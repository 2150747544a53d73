"""What every RL algorithm sees: its config, the stored rollout batch, the recomputed policy terms.

Algorithms never touch the model or the environment: the trainer recomputes ``NewTerms`` with
``policy.log_probs`` on a minibatch of ``OldTerms`` and hands both to ``Algorithm.loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

# the stop options that only an algorithm training the stop (LAPO) uses; `lr` is everyone's
STOP_TRAINING_OPTIONS = ("kl_coef", "advantage", "context")


@dataclass
class StopConfig:
    """How RL trains the stop decision (``<latent_end>``): LAPO only, except ``lr``.

    One place for every setting of the stop's training, checked together here.
    """

    # learning rate of the stop head; 0 = the policy lr (the reference's single lr). Adam moves the
    # 129-parameter head ~lr per step whatever the loss weight, too little for the reasoning length
    # to move in a CPU budget (docs/rl.md); the demo preset uses 30x the policy lr
    lr: float = 0.0
    # KL(π_θ ‖ π_start) of the stop categorical (at the stop temperature) on decisions that chose
    # their stop; 0 = the reference. Holds a length where the outcome does not depend on it
    kl_coef: float = 0.0
    # experimental. The stop's advantage with GAE: "gae" = the decision's GAE advantage, whose
    # baseline is V at the chosen <latent_end> (the reference); "gae_expected" = that baseline
    # replaced by its expectation over the candidates; "return" = the discounted return minus that
    # expectation, no bootstrapping (advantages.stop_baseline_shift)
    advantage: Literal["gae", "gae_expected", "return"] = "gae"
    # experimental. Add the policy's zero-initialised per-candidate context readout to the stop
    # (PolicyConfig.stop_context) before RL, so tasks can get different reasoning lengths
    context: bool = False

    def __post_init__(self) -> None:
        if self.lr < 0:
            raise ValueError(f"algo.stop.lr={self.lr} must be >= 0 (0 = the policy lr)")
        if self.kl_coef < 0:
            raise ValueError(f"algo.stop.kl_coef={self.kl_coef} must be >= 0 (0 = no stop KL, the reference)")
        if self.advantage not in ("gae", "gae_expected", "return"):
            raise ValueError(f"algo.stop.advantage={self.advantage!r} must be gae, gae_expected or return")

    def options_in_use(self) -> list[tuple[str, str]]:
        """The LAPO-only options set here, each with the value that switches it off."""
        used = [
            (f"algo.stop.kl_coef={self.kl_coef}", "0", self.kl_coef > 0),
            (f"algo.stop.advantage={self.advantage}", "gae", self.advantage != "gae"),
            ("algo.stop.context=true", "false", self.context),
        ]
        return [(option, off) for option, off, on in used if on]


def without_stop_training(stop_section: dict) -> dict:
    """A config's ``algo.stop`` section for an algorithm that does not train the stop: the options
    only LAPO uses (:data:`STOP_TRAINING_OPTIONS`) dropped, the rest kept."""
    return {k: v for k, v in stop_section.items() if k not in STOP_TRAINING_OPTIONS}


@dataclass
class AlgoConfig:
    """RL objective settings; defaults are the LaST-R1 reference values (LASTR1_FACTS.md)."""

    name: Literal["lapo", "ppo_action", "grpo_action"] = "lapo"
    # "" = the algorithm's own default (lapo/ppo_action: gae, grpo_action: grpo).
    advantage: Literal["", "gae", "grpo"] = ""
    # the action ratio: "sequence" = one clipped ratio per decision from the summed log-prob of its
    # C·7 action tokens (the reference); "token" = one clipped ratio per token, averaged per decision
    action_ratio: Literal["sequence", "token"] = "sequence"
    gamma: float = 0.99
    lam: float = 0.95
    whiten_advantages: bool = True
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
    success_reward: float = 5.0
    stop: StopConfig = field(default_factory=StopConfig)

    def __post_init__(self) -> None:
        if not 0 < self.clip_low < 1 or self.clip_high <= 0:
            raise ValueError("algo.clip_low must be in (0, 1) and algo.clip_high > 0 (reference: 0.2 / 0.28)")
        if self.latent_sigma <= 0:
            raise ValueError(f"algo.latent_sigma={self.latent_sigma} must be > 0 (reference: 10)")
        if not 0 < self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("algo.gamma must be in (0, 1] and algo.lam in [0, 1]")
        if self.kl_coef < 0:
            raise ValueError(f"algo.kl_coef={self.kl_coef} must be >= 0 (0 = no KL, the reference)")
        for name in ("w_action", "w_end", "w_latent", "value_coef", "entropy_coef", "value_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"algo.{name}={getattr(self, name)} must be >= 0")
        if self.action_ratio not in ("sequence", "token"):
            raise ValueError(
                f"algo.action_ratio={self.action_ratio!r} must be 'sequence' (reference) or 'token'"
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
    # (B,) bool: decisions that chose their stop. None = all of them (DecodeConfig.stop_scope
    # "decision"); with "episode" only an episode's first decision does, the rest keep its length
    stop_mask: torch.Tensor | None = None
    # (B,) the stop term's advantages where they differ from the actions' (StopConfig.advantage
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
