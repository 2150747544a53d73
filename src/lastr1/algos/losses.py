"""The shared pieces of every clipped policy-gradient objective.

PPO's clipped surrogate, per element: ``max(-A·r, -A·clip(r, 1-ε_low, 1+ε_high))`` with the
asymmetric clip of DAPO / the LaST-R1 reference (0.2 / 0.28).
"""

from __future__ import annotations

import torch

from lastr1.algos.base import AlgoConfig, NewTerms, OldTerms


def clipped_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise clipped surrogate loss and a bool tensor of where clipping was active."""
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def action_token_loss(new: NewTerms, old: OldTerms, cfg: AlgoConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level surrogate on the action tokens, averaged per decision -> ``(B,)``."""
    log_ratio = new.logp_action_tokens - old.logp_action_tokens
    per_token, clipped = clipped_surrogate(log_ratio, old.advantages[:, None], cfg.clip_low, cfg.clip_high)
    with torch.no_grad():
        ratio = torch.exp(log_ratio)
        metrics = {
            "clip_frac": float(clipped.float().mean()),
            "approx_kl": float(((ratio - 1) - log_ratio).mean()),
            "ratio_max": float(ratio.max()),
        }
    return per_token.mean(dim=1), metrics


def token_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ p_ref) = Σ_k p_k (log p_k − log p_ref,k)`` per token, averaged over tokens -> ``(B,)``.

    Exact over the bins (no sampled estimator), so its gradient pulls every bin toward the anchor.
    """
    return (logp.exp() * (logp - logp_ref)).sum(-1).mean(-1)


def combine(
    policy: torch.Tensor,
    new: NewTerms,
    old: OldTerms,
    cfg: AlgoConfig,
    metrics: dict[str, float],
    *,
    with_value: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``policy (+ c_v · value loss) − c_H · entropy (+ β · KL to the start)`` and the metrics."""
    entropy = new.entropy.mean()
    total = policy - cfg.entropy_coef * entropy
    if cfg.kl_coef > 0:
        if new.kl_ref is None:
            raise ValueError("algo.kl_coef > 0 needs NewTerms.kl_ref (the trainer computes it)")
        kl = new.kl_ref.mean()
        total = total + cfg.kl_coef * kl
        metrics["kl_ref"] = kl.item()
    if with_value:
        v_loss = value_loss(new, old, cfg)
        total = total + cfg.value_coef * v_loss
        metrics["value_loss"] = v_loss.item()
    metrics.update(policy_loss=policy.item(), entropy=entropy.item(), loss=total.item())
    return total, metrics


def value_loss(new: NewTerms, old: OldTerms, cfg: AlgoConfig) -> torch.Tensor:
    """Clipped value loss ``0.5 · max((v − R)², (v_clip − R)²)``, averaged."""
    v_clip = old.values + torch.clamp(new.values - old.values, -cfg.value_clip, cfg.value_clip)
    return 0.5 * torch.maximum((new.values - old.returns) ** 2, (v_clip - old.returns) ** 2).mean()
