"""Per-iteration RL diagnostics: numbers that say *why* the policy does or does not improve.

Success curves show that a run stalls, not why. The usual reasons each have a number here:

* the critic explains nothing (``explained_variance`` ≈ 0 or < 0): GAE advantages are noise;
* no decision carries signal (``zero_adv_frac``, ``zero_signal_frac`` ≈ 1): every group/task
  all failed or all succeeded, so group advantages are zero and a critic has nothing to rank;
* the update barely moves the policy, or moves it too far (KL to the behaviour policy, clip
  fractions per part) or drifts from the SFT start (KL to the anchor);
* one loss term drowns the others (``gradient_shares``: each term's gradient norm on each
  parameter group relative to the whole loss's);
* the advantages of a task point one way on average (``adv_mean/<task>``).

Everything is a small pure function on tensors, tested on hand-made inputs
(``tests/test_diagnostics.py``); :func:`iteration_diagnostics` is the one call the trainer makes
per iteration, on one minibatch, returning a flat ``{"diag/...": float}`` dict for
``MetricsLogger.log``. It reads the policy without changing it: no optimizer step, no ``.grad``
written (``torch.autograd.grad``), no global random numbers drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from lastr1.algos import AlgoConfig, NewTerms, OldTerms, gae, grpo
from lastr1.algos.lapo import latent_log_ratio
from lastr1.algos.losses import (
    action_token_loss,
    approx_kl_per_token,
    clipped_surrogate,
    stop_kl,
    token_kl,
    value_loss,
)
from lastr1.models.policy_io import PolicyBatch

if TYPE_CHECKING:
    from lastr1.models.policy import LastR1Policy
    from lastr1.rollout.collector import Rollout

ZERO_ADV_TOL = 1e-8  # |A| below this counts as "no signal"


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 − Var[R − V] / Var[R]`` over the valid steps: the share of the returns' variance the
    value head predicts (1 = perfect, 0 = no better than a constant, < 0 = worse than one).

    Returns ``nan`` when ``Var[R] = 0`` (e.g. every episode of the batch failed under a sparse
    reward): the ratio is undefined there, and 0 would read as "the critic is useless" when the
    batch simply has nothing to explain. Population variances (divide by the count).
    """
    m = mask.bool()
    r = returns[m].double()
    if r.numel() == 0:
        return float("nan")
    var_r = r.var(unbiased=False)
    if var_r <= 0:
        return float("nan")
    resid = r - values[m].double()
    return float(1.0 - resid.var(unbiased=False) / var_r)


def zero_adv_frac(adv: torch.Tensor, mask: torch.Tensor, tol: float = ZERO_ADV_TOL) -> float:
    """Fraction of valid decisions with ``|A| < tol``: decisions the policy gradient ignores.

    Pass the advantages *before* whitening: whitening subtracts a batch mean, so a decision with
    exactly no signal (a GRPO group whose rollouts all ended alike) gets a non-zero whitened
    advantage and would not be counted. With GAE, raw advantages are rarely exactly zero; see
    :func:`zero_signal_frac` for the GAE counterpart.
    """
    m = mask.bool()
    a = adv[m]
    return float((a.abs() < tol).float().mean()) if a.numel() else float("nan")


def zero_signal_frac(outcome: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor) -> float:
    """Fraction of valid decisions in episodes whose group had no outcome variation.

    ``outcome`` ``(N,)``: one number per episode; ``groups`` ``(N,)``: which episodes are compared.
    The trainer passes, for group advantages (GRPO), each episode's total reward and its
    initial-state group: a group whose totals are all equal gets zero advantage (a group of one
    too), exactly what :func:`lastr1.algos.grpo` does. For GAE, each episode's success and its
    task: a task whose rollouts this iteration all failed or all succeeded gives the critic no
    contrast to learn from and the policy nothing but the critic's errors.
    Decisions are counted (not episodes) because the loss averages over decisions.
    """
    m = mask.bool()
    per_episode = m.sum(1).to(torch.float64)
    total = per_episode.sum()
    if total == 0:
        return float("nan")
    flat = torch.zeros_like(per_episode)
    for g in torch.unique(groups):
        rows = groups == g
        o = outcome[rows]
        if bool((o == o[0]).all()):
            flat[rows] = per_episode[rows]
    return float(flat.sum() / total)


def advantage_stats(
    adv: torch.Tensor,
    mask: torch.Tensor,
    task: torch.Tensor,
    task_names: Sequence[str],
    *,
    raw: torch.Tensor | None = None,
    tol: float = ZERO_ADV_TOL,
) -> dict[str, float]:
    """Per task, the mean / std / mean |A| of ``adv`` over its valid decisions, and ``zero_adv_frac``.

    ``adv`` ``(N, T)``: the advantages the loss uses (after whitening), so ``adv_mean/<task>``
    shows the direction the update pushes a task on average (a task that always fails getting a
    negative mean flattens its policy, see :func:`lastr1.algos.whiten`). ``raw``: the advantages
    before whitening, for ``zero_adv_frac`` (see :func:`zero_adv_frac` why); None = ``adv``.
    Tasks without a valid decision this iteration get no keys. Population std.
    """
    m = mask.bool()
    out: dict[str, float] = {}
    for t, name in enumerate(task_names):
        a = adv[(task == t)[:, None] & m].double()
        if a.numel() == 0:
            continue
        out[f"adv_mean/{name}"] = float(a.mean())
        out[f"adv_std/{name}"] = float(a.std(unbiased=False))
        out[f"adv_abs_mean/{name}"] = float(a.abs().mean())
    out["zero_adv_frac"] = zero_adv_frac(adv if raw is None else raw, mask, tol)
    return out


def kl_to_reference(logp_all: torch.Tensor, ref_logp_all: torch.Tensor) -> float:
    """Mean per-token exact ``KL(π ‖ π_ref)`` of the action-token distributions ``(B, T, bins)``:
    how far the policy has drifted from the reference (the SFT start), whatever ``algo.kl_coef``."""
    return float(token_kl(logp_all.detach(), ref_logp_all.detach()).mean())


def raw_advantages(roll: Rollout, advantage_kind: str, cfg: AlgoConfig) -> torch.Tensor:
    """``(N, T)`` advantages of ``roll`` before whitening, recomputed as the trainer computes them
    (GAE from the acting-time values, or group-relative), for :func:`zero_adv_frac`."""
    if advantage_kind == "gae":
        return gae(roll.rewards, roll.values, roll.mask, cfg.gamma, cfg.lam)[0]
    return grpo(roll.rewards, roll.mask, roll.group)


def _lapo_terms(new: NewTerms, old: OldTerms, cfg: AlgoConfig) -> dict[str, torch.Tensor]:
    """LAPO's policy part split as :meth:`lastr1.algos.lapo.Lapo.loss` builds it:
    ``w_a·(n·L_a + w_e·L_e)/(n + w_e)`` is cut into its action and stop shares."""
    l_action, _ = action_token_loss(new, old, cfg)
    has_latents = old.latent_mask.numel() > 0 and bool(old.latent_mask.any())
    if not has_latents:  # LAPO without latents is action PPO
        return {"action": cfg.w_action * l_action.mean()}
    n = float(old.logp_action_tokens.shape[1])
    stop_adv = old.advantages if old.stop_advantages is None else old.stop_advantages
    l_end, _ = clipped_surrogate(new.logp_stop - old.logp_stop, stop_adv, cfg.clip_low, cfg.clip_high)
    w_end = cfg.w_end if old.stop_mask is None else cfg.w_end * old.stop_mask.to(l_end.dtype)
    z_log_ratio = latent_log_ratio(old.latents, new.latent_mu, old.latent_mask, cfg.latent_sigma)
    l_latent, _ = clipped_surrogate(z_log_ratio, old.advantages, cfg.clip_low, cfg.clip_high)
    return {
        "action": cfg.w_action * (n * l_action / (n + w_end)).mean(),
        "stop": cfg.w_action * (w_end * l_end / (n + w_end)).mean(),
        "latent": cfg.w_latent * l_latent.mean(),
    }


def _action_terms(new: NewTerms, old: OldTerms, cfg: AlgoConfig) -> dict[str, torch.Tensor]:
    l_action, _ = action_token_loss(new, old, cfg)
    return {"action": cfg.w_action * l_action.mean()}


# name -> (policy-term split, whether a value loss is added): mirrors the registered algorithms;
# a new algorithm adds its split here (tests/test_diagnostics.py checks the terms sum to its loss)
_SPLITS: dict[str, tuple[Callable[[NewTerms, OldTerms, AlgoConfig], dict[str, torch.Tensor]], bool]] = {
    "lapo": (_lapo_terms, True),
    "ppo_action": (_action_terms, True),
    "grpo_action": (_action_terms, False),
}


def has_loss_terms(algo_name: str) -> bool:
    """Whether :func:`loss_terms` knows how to split ``algo_name``'s loss."""
    return algo_name in _SPLITS


def loss_terms(algo_name: str, new: NewTerms, old: OldTerms, cfg: AlgoConfig) -> dict[str, torch.Tensor]:
    """The algorithm's loss as its weighted terms, each a differentiable scalar; they sum to
    ``get_algorithm(algo_name).loss(new, old, cfg)[0]`` (to float rounding).

    Keys: ``action``, ``stop``, ``latent`` (LAPO with latents), ``value`` (critic algorithms),
    ``entropy`` (``−c_H·H``, when ``entropy_coef > 0``), ``kl`` / ``stop_kl`` (when their
    coefficients are > 0). Recomputed from the same helpers the algorithms use rather than
    returned by them, so the trainer's ``loss`` signature and values stay exactly as they are.
    """
    if algo_name not in _SPLITS:
        raise ValueError(f"loss_terms: no term split for algorithm {algo_name!r}; known: {sorted(_SPLITS)}")
    split, with_value = _SPLITS[algo_name]
    terms = split(new, old, cfg)
    if cfg.entropy_coef > 0:
        terms["entropy"] = -cfg.entropy_coef * new.entropy.mean()
    if cfg.kl_coef > 0:
        if new.kl_ref is None:
            raise ValueError("algo.kl_coef > 0 needs NewTerms.kl_ref")
        terms["kl"] = cfg.kl_coef * new.kl_ref.mean()
    if cfg.stop.kl_coef > 0:
        if new.stop_kl_ref is None:
            raise ValueError("algo.stop.kl_coef > 0 needs NewTerms.stop_kl_ref")
        chose = new.stop_kl_ref if old.stop_mask is None else new.stop_kl_ref[old.stop_mask]
        terms["stop_kl"] = cfg.stop.kl_coef * (chose.mean() if chose.numel() else new.stop_kl_ref.sum() * 0.0)
    if with_value:
        terms["value"] = cfg.value_coef * value_loss(new, old, cfg)
    return terms


def gradient_shares(
    terms: dict[str, torch.Tensor], groups: dict[str, list[torch.nn.Parameter]]
) -> dict[str, float]:
    """``‖∇_G term‖ / ‖∇_G Σ terms‖`` for every term and parameter group G -> ``{"term/G": share}``.

    Says which term drives each group's update: a share near 1 for one term and near 0 for the
    others means the others barely move that group. Shares need not sum to 1 (terms can point in
    different directions; two opposed terms can each exceed 1). The total gradient is the sum of
    the terms' (the loss is their sum), so one backward per term suffices; ``.grad`` is not
    touched. ``total/G`` is the norm of the whole loss's gradient on G; where it is zero (the value
    head under a critic-free loss, a GRPO minibatch without signal) G gets no share keys: they are
    undefined. One backward pass per term: call it on one minibatch.
    """
    trainable = {g: [p for p in params if p.requires_grad] for g, params in groups.items()}
    names = [g for g, params in trainable.items() if params]
    params = [p for g in names for p in trainable[g]]
    per_term: dict[str, list[torch.Tensor]] = {}
    for term, value in terms.items():
        if not value.requires_grad:
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        per_term[term] = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    out: dict[str, float] = {}
    start = 0
    for g in names:
        stop = start + len(trainable[g])
        flat = {
            t: torch.cat([x.flatten() for x in grads[start:stop]]).double() for t, grads in per_term.items()
        }
        start = stop
        if not flat:
            continue
        total = torch.stack(list(flat.values())).sum(0).norm()
        out[f"total/{g}"] = float(total)
        if total <= 0:
            continue
        for t, v in flat.items():
            out[f"{t}/{g}"] = float(v.norm() / total)
    return out


def _padded(roll: Rollout, flat: torch.Tensor) -> torch.Tensor:
    """A flat per-decision tensor back in the rollout's ``(N, T)`` layout (zero on padding)."""
    out = torch.zeros(roll.mask.shape, dtype=flat.dtype)
    out[roll.mask] = flat[roll.index[roll.mask]]
    return out


def iteration_diagnostics(
    policy: LastR1Policy,
    roll: Rollout,
    old: OldTerms,
    cfg: AlgoConfig,
    *,
    advantage_kind: str,
    task_names: Sequence[str],
    anchor: LastR1Policy | None = None,
    detach_value: bool = False,
    raw_adv: torch.Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
    grad_shares: bool = True,
) -> dict[str, float]:
    """All diagnostics of one iteration as ``{"diag/<name>": float}``, for ``MetricsLogger.log``.

    The trainer calls it right after the update, on the rollout and :class:`OldTerms` the update
    used (``old``: flat, whitened advantages). The rollout numbers describe the data; the
    re-scored ones describe the *updated* policy, the one checkpointed for this iteration: its KL
    to the behaviour policy (how far this update moved it), to the SFT start (``anchor``), and the
    gradient the loss still has there. Why after and not before: before the update every ratio is
    1 and, with ``decode.latent_noise_std = 0``, the stored latents equal ``μ``, so the latent
    term's gradient is exactly zero (docs/rl.md); after it, clipping and the latent term show up
    as the later minibatches saw them.

    ``raw_adv``: the ``(N, T)`` advantages before whitening (None = :func:`raw_advantages`).
    ``batch_size`` decisions, drawn with a private generator seeded by ``seed`` (the run's random
    stream is not touched), are re-scored once: one forward, and one backward per loss term when
    ``grad_shares`` (the costly part, about one minibatch update). Undefined numbers (``nan``: no
    return variance, a group without gradient) are left out rather than logged.

    Keys: ``explained_variance`` (GAE only), ``zero_adv_frac``, ``zero_signal_frac``,
    ``adv_mean|adv_std|adv_abs_mean/<task>``, ``kl_behaviour``, ``kl_sft`` (with an anchor),
    ``entropy``, ``grad_share/<term>/<group>`` and ``grad_norm/<group>`` (the whole loss's gradient
    norm, before clipping; groups ``policy``/``value``/``stop``).
    """
    out: dict[str, float] = {}
    if advantage_kind == "gae":
        out["explained_variance"] = explained_variance(roll.values, _padded(roll, old.returns), roll.mask)
    raw = raw_advantages(roll, advantage_kind, cfg) if raw_adv is None else raw_adv
    out.update(advantage_stats(_padded(roll, old.advantages), roll.mask, roll.task, task_names, raw=raw))
    if advantage_kind == "gae":
        out["zero_signal_frac"] = zero_signal_frac(roll.success.float(), roll.mask, roll.task)
    else:
        totals = (roll.rewards * roll.mask.to(roll.rewards.dtype)).sum(1)
        out["zero_signal_frac"] = zero_signal_frac(totals, roll.mask, roll.group)

    n = old.advantages.shape[0]
    if n:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=gen)[:batch_size]
        batch = PolicyBatch.from_act(roll.out.index(idx))
        mb = old.index(idx)
        lp = policy.log_probs(batch, detach_value=detach_value)
        kl_ref = stop_kl_ref = None
        if anchor is not None:
            with torch.no_grad():
                ref = anchor.log_probs(batch)
            out["kl_sft"] = kl_to_reference(lp.action_logp_all, ref.action_logp_all)
            kl_ref = token_kl(lp.action_logp_all, ref.action_logp_all)
            stop_kl_ref = stop_kl(lp.stop_logits, ref.stop_logits, batch.stop_temperature)
        out["entropy"] = float(lp.entropy.detach().mean())
        out["kl_behaviour"] = approx_kl_per_token(lp.logp_tokens, mb.logp_action_tokens)
        needs_anchor = cfg.kl_coef > 0 or cfg.stop.kl_coef > 0
        if grad_shares and has_loss_terms(cfg.name) and (anchor is not None or not needs_anchor):
            new = NewTerms(lp.logp_tokens, lp.logp_stop, lp.mu, lp.value, lp.entropy, kl_ref, stop_kl_ref)
            terms = loss_terms(cfg.name, new, mb, cfg)
            shares = gradient_shares(terms, policy.parameter_groups())
            for key, v in shares.items():
                term, group = key.split("/", 1)
                out[f"grad_norm/{group}" if term == "total" else f"grad_share/{key}"] = v
    return {f"diag/{k}": v for k, v in out.items() if math.isfinite(v)}
