"""Advantage estimators over padded decision sequences.

Trajectories are stored as ``(N, T)`` arrays of decisions (one decision = one action chunk) with a
``mask`` marking valid steps. Everything after an episode's last valid decision is padding and must
not leak into the estimate: the reference implementation bootstraps through padding, we cut it.
An episode that ended (success or time limit) is treated as terminal: no bootstrap from its last
state (matching the reference, which also treats the time limit as the end).
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 0.99, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation per trajectory.

    Args:
        rewards, values: ``(N, T)`` float; mask: ``(N, T)`` bool/float, valid decisions are a prefix.
    Returns:
        ``(advantages, returns)`` both ``(N, T)``, zero on padding; ``returns = advantages + values``.
    """
    m = mask.to(rewards.dtype)
    n, t = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(n, dtype=rewards.dtype, device=rewards.device)
    for i in reversed(range(t)):
        next_valid = m[:, i + 1] if i + 1 < t else torch.zeros_like(last)
        next_value = values[:, i + 1] * next_valid if i + 1 < t else torch.zeros_like(last)
        delta = rewards[:, i] + gamma * next_value - values[:, i]
        last = (delta + gamma * lam * next_valid * last) * m[:, i]
        adv[:, i] = last
    returns = (adv + values) * m
    return adv, returns


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Per-step discounted return-to-go on valid steps (zero on padding)."""
    m = mask.to(rewards.dtype)
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for i in reversed(range(rewards.shape[1])):
        running = (rewards[:, i] + gamma * running) * m[:, i]
        out[:, i] = running
    return out


def grpo(rewards: torch.Tensor, mask: torch.Tensor, group: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages: each trajectory's total reward normalised within its group.

    ``group`` is ``(N,)`` int: trajectories started from the same initial state share an id. The
    trajectory's advantage is broadcast to all its valid decisions. A group whose returns are all
    equal (all succeed or all fail) carries no signal and gets zero advantage.
    """
    m = mask.to(rewards.dtype)
    total = (rewards * m).sum(dim=1)
    adv = torch.zeros_like(total)
    for g in torch.unique(group):
        idx = group == g
        r = total[idx]
        if r.numel() < 2:
            continue
        adv[idx] = (r - r.mean()) / (r.std(unbiased=False) + eps)
    return adv[:, None] * m


def whitening(
    x: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor | None = None, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map of :func:`whiten`: ``whiten(x) = (x − mean) · scale`` on valid entries, with
    ``mean`` per entry (batch-wide, or per group) and ``scale`` one number. Applying the same map to a
    second advantage (the stop's, :func:`stop_baseline_shift`) keeps the two on one scale."""
    m = mask.to(x.dtype)
    count = m.sum().clamp_min(1.0)
    if groups is None:
        mean = (x * m).sum() / count
    else:
        mean = torch.zeros_like(x)
        for g in torch.unique(groups):
            rows = groups == g
            mean[rows] = (x[rows] * m[rows]).sum() / m[rows].sum().clamp_min(1.0)
    var = (((x - mean) * m) ** 2).sum() / count
    return mean, torch.rsqrt(var + eps)


def whiten(
    x: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise to zero mean / unit std over the valid entries; padding stays zero.

    With ``groups`` (``(N,)`` int, e.g. the task of each trajectory) the mean is removed per group and
    the std is taken over the whole centred batch. Why: a young critic cannot yet tell a hopeless task
    from a solved one, and one batch-wide mean then hands every decision of a task that always fails
    a negative advantage (pushing its sampled actions down, flattening the policy) and every decision
    of a task that always succeeds a positive one. Per-group centring makes such tasks contribute ~0.
    """
    mean, scale = whitening(x, mask, groups, eps)
    return (x - mean) * scale * mask.to(x.dtype)


def stop_baseline_shift(
    chosen_value: torch.Tensor, candidate_values: torch.Tensor, stop_probs: torch.Tensor
) -> torch.Tensor:
    """``V(s, ℓ) − Σ_ℓ' π_old(ℓ'|s) V(s, ℓ')`` per decision: add it to a decision's GAE advantage to
    get its stop's advantage against a baseline that does not depend on the stop.

    Why: the value head reads the hidden state at the *chosen* ``<latent_end>``, so GAE's baseline
    ``V(s, ℓ)`` already knows the reasoning length ℓ the stop picked. For the action tokens that is
    right (ℓ is fixed before them), but for the stop it is an action-dependent baseline:
    ``E[A | ℓ] = Q(s, ℓ) − V(s, ℓ)``, zero for an exact critic whatever the lengths are worth, and the
    critic's errors across ℓ become a drift shared by every task (docs/rl.md). Replacing ``V(s, ℓ)`` by
    its expectation under the sampling distribution gives ``E[A | ℓ] = Q(s, ℓ) − V̄(s)``.
    """
    return chosen_value - (stop_probs * candidate_values).sum(-1)
