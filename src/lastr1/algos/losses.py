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
    """The clipped surrogate of the action tokens per decision -> ``(B,)``.

    ``cfg.action_ratio="sequence"`` (the reference): one ratio per decision from the summed
    log-prob of its C·7 tokens, so the whole chunk is clipped together. ``"token"``: one ratio per
    token, each clipped alone, averaged per decision; a token whose ratio is clipped stops getting
    gradient while the chunk's other tokens keep theirs.
    """
    log_ratio = new.logp_action_tokens - old.logp_action_tokens
    if cfg.action_ratio == "sequence":
        log_ratio = log_ratio.sum(dim=1)
        loss, clipped = clipped_surrogate(log_ratio, old.advantages, cfg.clip_low, cfg.clip_high)
    else:
        per_token, clipped = clipped_surrogate(
            log_ratio, old.advantages[:, None], cfg.clip_low, cfg.clip_high
        )
        loss = per_token.mean(dim=1)
    with torch.no_grad():
        ratio = torch.exp(log_ratio)
        clip_frac = float(clipped.float().mean())
        metrics = {
            "clip_frac": clip_frac,
            "clip_frac_action": clip_frac,  # the per-part name (diagnostics), same number
            "approx_kl": float(((ratio - 1) - log_ratio).mean()),
            "approx_kl_behaviour": approx_kl_per_token(new.logp_action_tokens, old.logp_action_tokens),
            "ratio_max": float(ratio.max()),
        }
    return loss, metrics


def approx_kl_per_token(logp_new: torch.Tensor, logp_old: torch.Tensor) -> float:
    """``E[(r − 1) − log r]`` over every action token, ``r = π_new / π_old`` of the sampled token.

    The k3 estimator of ``KL(π_old ‖ π_new)`` per token, on samples from the behaviour policy.
    Why per token whatever ``action_ratio`` is: ``approx_kl`` follows the ratio the loss clips,
    which with ``"sequence"`` is the whole chunk's (C·7 tokens summed), so its scale changes with
    the chunk size; the per-token number compares across runs and settings.
    """
    log_ratio = (logp_new - logp_old).detach()
    return float((torch.expm1(log_ratio) - log_ratio).mean())


def token_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ p_ref) = Σ_k p_k (log p_k − log p_ref,k)`` per token, averaged over tokens -> ``(B,)``.

    Exact over the bins (no sampled estimator), so its gradient pulls every bin toward the anchor.
    """
    return (logp.exp() * (logp - logp_ref)).sum(-1).mean(-1)


def stop_kl(
    logits: torch.Tensor, logits_ref: torch.Tensor, temperature: torch.Tensor | float
) -> torch.Tensor:
    """``KL(π ‖ π_ref)`` of the stop categorical over the candidates, per decision -> ``(B,)``.

    Both sides at the temperature the stop is sampled from (``temperature``: a scalar or ``(B,)``),
    so the anchor holds the distribution RL actually draws lengths from.
    """
    t = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    t = t[:, None] if t.ndim == 1 else t
    logp = torch.log_softmax(logits / t, dim=-1)
    logp_ref = torch.log_softmax(logits_ref / t, dim=-1)
    return token_kl(logp[:, None], logp_ref[:, None])


def combine(
    policy: torch.Tensor,
    new: NewTerms,
    old: OldTerms,
    cfg: AlgoConfig,
    metrics: dict[str, float],
    *,
    with_value: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``policy (+ c_v · value loss) − c_H · entropy (+ β · KL to the start + β_e · stop KL)`` and
    the metrics. The stop KL averages over the decisions that chose their stop (``old.stop_mask``)."""
    entropy = new.entropy.mean()
    total = policy - cfg.entropy_coef * entropy
    if cfg.kl_coef > 0:
        if new.kl_ref is None:
            raise ValueError("algo.kl_coef > 0 needs NewTerms.kl_ref (the trainer computes it)")
        kl = new.kl_ref.mean()
        total = total + cfg.kl_coef * kl
        metrics["kl_ref"] = kl.item()
    if cfg.stop.kl_coef > 0:
        if new.stop_kl_ref is None:
            raise ValueError("algo.stop.kl_coef > 0 needs NewTerms.stop_kl_ref (the trainer computes it)")
        chose = new.stop_kl_ref if old.stop_mask is None else new.stop_kl_ref[old.stop_mask]
        # a minibatch without a stop choice (stop_scope "episode") adds zero, still in the graph
        stop_kl = chose.mean() if chose.numel() else new.stop_kl_ref.sum() * 0.0
        total = total + cfg.stop.kl_coef * stop_kl
        metrics["stop_kl_ref"] = stop_kl.item()
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
