"""Advantage math on hand-made trajectories and clipped-loss gradients against a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import random_terms
from lastr1.algos import AlgoConfig, NewTerms, OldTerms, StopConfig, gae, get_algorithm, grpo, whiten
from lastr1.algos.lapo import latent_log_ratio


def test_gae_by_hand_two_steps():
    # One trajectory of 2 valid decisions + 1 pad; reward 5 on the last valid decision.
    r = torch.tensor([[0.0, 5.0, 9.0]])
    v = torch.tensor([[1.0, 2.0, 7.0]])
    m = torch.tensor([[True, True, False]])
    g, lam = 0.9, 0.5
    adv, ret = gae(r, v, m, gamma=g, lam=lam)
    d1 = 5.0 - 2.0  # terminal: no bootstrap from the pad's value 7
    d0 = 0.0 + g * 2.0 - 1.0
    assert adv[0, 1].item() == pytest.approx(d1)
    assert adv[0, 0].item() == pytest.approx(d0 + g * lam * d1)
    assert adv[0, 2].item() == 0.0 and ret[0, 2].item() == 0.0  # padding leaks nothing
    assert ret[0, 0].item() == pytest.approx(adv[0, 0].item() + 1.0)


def test_gae_lambda_one_is_discounted_return_minus_value():
    torch.manual_seed(0)
    r, v = torch.randn(3, 6), torch.randn(3, 6)
    m = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5], dtype=torch.bool)
    adv, _ = gae(r, v, m, gamma=0.97, lam=1.0)
    for i in range(3):
        n = int(m[i].sum())
        for t in range(n):
            ret = sum(0.97 ** (k - t) * r[i, k].item() for k in range(t, n))
            assert adv[i, t].item() == pytest.approx(ret - v[i, t].item(), abs=1e-5)


def test_grpo_groups_by_hand():
    # Group 0: returns 5, 0, 5, 0 -> ±1; group 1: all succeed -> no signal.
    r = torch.zeros(6, 3)
    r[0, 2] = r[2, 1] = r[4, 0] = r[5, 2] = 5.0
    m = torch.ones(6, 3, dtype=torch.bool)
    m[2, 2] = False
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = grpo(r, m, group)
    assert adv[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert adv[1, 0].item() == pytest.approx(-1.0, abs=1e-5)
    assert adv[2, 2].item() == 0.0  # padding
    assert torch.all(adv[4:] == 0)


def test_whiten_ignores_padding():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    m = torch.tensor([[True, True, False]])
    w = whiten(x, m)
    assert w[0, :2].tolist() == pytest.approx([-1.0, 1.0], abs=1e-4) and w[0, 2].item() == 0.0


def test_whiten_per_task_centres_each_task():
    """A task that always fails (or always succeeds) gets ~zero advantages, not a batch-wide sign."""
    x = torch.tensor([[-2.0, -2.0], [-2.0, -2.0], [1.0, 3.0], [3.0, 1.0]])
    m = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    task = torch.tensor([0, 0, 1, 1])
    w = whiten(x, m, task)
    assert w[:2][m[:2]].abs().max().item() < 1e-6 and w[1, 1].item() == 0.0
    assert w[2:].flatten().tolist() == pytest.approx(
        [-1.3229, 1.3229, 1.3229, -1.3229], abs=1e-3
    )  # std over all 7 valid
    batch = whiten(x, m)  # batch-wide: the failing task's decisions are all pushed down
    assert (batch[:2][m[:2]] < 0).all()


def _terms(b=5, t=4, k=3, d=6, seed=0, dtype=torch.float64):
    return random_terms(b, t, k, d, seed, dtype)


def _reference_lapo(new: NewTerms, old: OldTerms, cfg: AlgoConfig) -> torch.Tensor:
    """Element-by-element float64 transcription of the LAPO formula (no vectorisation)."""

    def surr(r, a):
        lo, hi = 1 - cfg.clip_low, 1 + cfg.clip_high
        return torch.maximum(-a * r, -a * torch.clamp(r, lo, hi))

    b, n = old.logp_action_tokens.shape
    total = 0.0
    for i in range(b):
        a = old.advantages[i]
        if cfg.action_ratio == "sequence":  # one ratio for the decision's whole chunk
            la = surr(
                torch.exp(sum(new.logp_action_tokens[i, j] - old.logp_action_tokens[i, j] for j in range(n))),
                a,
            )
        else:
            la = (
                sum(
                    surr(torch.exp(new.logp_action_tokens[i, j] - old.logp_action_tokens[i, j]), a)
                    for j in range(n)
                )
                / n
            )
        le = surr(torch.exp(new.logp_stop[i] - old.logp_stop[i]), a)
        w_end = cfg.w_end if old.stop_mask is None or old.stop_mask[i] else 0.0  # kept stop: no term
        sq = sum(
            ((old.latents[i, k] - new.latent_mu[i, k]) ** 2).sum()
            for k in range(old.latents.shape[1])
            if old.latent_mask[i, k]
        )
        lz = surr(torch.exp(-sq / (2 * cfg.latent_sigma**2)), a)
        pol = cfg.w_action * (n * la + w_end * le) / (n + w_end) + cfg.w_latent * lz
        vc = old.values[i] + torch.clamp(new.values[i] - old.values[i], -cfg.value_clip, cfg.value_clip)
        vl = 0.5 * torch.maximum((new.values[i] - old.returns[i]) ** 2, (vc - old.returns[i]) ** 2)
        total = total + (pol + cfg.value_coef * vl - cfg.entropy_coef * new.entropy[i]) / b
    return total


@pytest.mark.parametrize("action_ratio", ["sequence", "token"])
@pytest.mark.parametrize("stop_mask", [None, [True, False, False, True, False]])
@pytest.mark.parametrize("sigma", [10.0, 2.0])
def test_lapo_loss_and_gradients_match_float64_reference(sigma, stop_mask, action_ratio):
    cfg = AlgoConfig(latent_sigma=sigma, entropy_coef=0.01, action_ratio=action_ratio)
    new64, old64 = _terms()
    if stop_mask is not None:  # stop_scope "episode": only the first decisions chose their stop
        old64.stop_mask = torch.tensor(stop_mask)
    ref = _reference_lapo(new64, old64, cfg)
    ref_grads = torch.autograd.grad(
        ref, [new64.logp_action_tokens, new64.logp_stop, new64.latent_mu, new64.values]
    )

    def to32(x):
        return None if x is None else x.detach().float().requires_grad_(x.requires_grad)

    new32 = NewTerms(*(to32(getattr(new64, f)) for f in NewTerms.__dataclass_fields__))

    def old32(x):
        return x.float() if x is not None and x.is_floating_point() else x

    old32 = OldTerms(*(old32(getattr(old64, f)) for f in OldTerms.__dataclass_fields__))
    loss, metrics = get_algorithm("lapo").loss(new32, old32, cfg)
    grads = torch.autograd.grad(
        loss, [new32.logp_action_tokens, new32.logp_stop, new32.latent_mu, new32.values]
    )
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-6)
    assert 0.0 <= metrics["clip_frac"] <= 1.0 and metrics["latent_ratio"] <= 1.0
    if stop_mask is not None:  # decisions that kept an earlier stop get no stop gradient
        kept = ~torch.tensor(stop_mask)
        assert torch.all(grads[1][kept] == 0) and torch.any(grads[1][~kept] != 0)  # (clipped ones are 0)


def test_latent_ratio_at_most_one_and_pulls_toward_stored_latent_for_positive_advantage():
    z = torch.zeros(1, 2, 3)
    mu = torch.ones(1, 2, 3, requires_grad=True)
    mask = torch.tensor([[True, False]])
    lr = latent_log_ratio(z, mu, mask, sigma=1.0)
    assert lr.item() == pytest.approx(-1.5)  # only the first slot counts: 3 * 1^2 / 2
    cfg = AlgoConfig()
    new = NewTerms(torch.zeros(1, 2), torch.zeros(1), mu, torch.zeros(1), torch.zeros(1))
    old = OldTerms(torch.ones(1), torch.zeros(1), torch.zeros(1), torch.zeros(1, 2), torch.zeros(1), z, mask)
    loss, _ = get_algorithm("lapo").loss(new, old, cfg)
    (g,) = torch.autograd.grad(loss, [mu])
    assert torch.all(g[0, 0] > 0)  # descending the loss moves mu toward z = 0
    assert torch.all(g[0, 1] == 0)  # masked slot gets no gradient


def test_action_only_algorithms_ignore_reasoning_terms():
    cfg = AlgoConfig()
    new, old = _terms(dtype=torch.float32)
    for name in ("ppo_action", "grpo_action"):
        loss, _ = get_algorithm(name).loss(new, old, cfg)
        grads = torch.autograd.grad(loss, [new.logp_stop, new.latent_mu], allow_unused=True)
        assert all(g is None or torch.all(g == 0) for g in grads)
    assert not get_algorithm("grpo_action").uses_value and get_algorithm("lapo").trains_reasoning


def test_clip_blocks_gradient_beyond_the_trust_region():
    cfg = AlgoConfig()
    new = NewTerms(
        torch.full((1, 1), math.log(2.0), requires_grad=True),
        torch.zeros(1),
        torch.zeros(1, 0, 1),
        torch.zeros(1),
        torch.zeros(1),
    )
    old = OldTerms(
        torch.ones(1),
        torch.zeros(1),
        torch.zeros(1),
        torch.zeros(1, 1),
        torch.zeros(1),
        torch.zeros(1, 0, 1),
        torch.zeros(1, 0, dtype=torch.bool),
    )
    loss, m = get_algorithm("ppo_action").loss(new, old, cfg)
    (g,) = torch.autograd.grad(loss, [new.logp_action_tokens])
    assert g.abs().sum().item() == 0.0 and m["clip_frac"] == 1.0


def test_unknown_algorithm_and_bad_config():
    with pytest.raises(ValueError, match="algo.name='sac' is unknown"):
        get_algorithm("sac")
    with pytest.raises(ValueError, match="latent_sigma"):
        AlgoConfig(latent_sigma=0)


def test_token_kl_matches_float64_and_pulls_toward_the_anchor():
    from lastr1.algos.losses import token_kl

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    ref_logits = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    logp, logp_ref = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    by_hand = torch.stack(
        [
            torch.stack(
                [
                    sum(logp[b, t].exp()[k] * (logp[b, t, k] - logp_ref[b, t, k]) for k in range(7))
                    for t in range(5)
                ]
            ).mean()
            for b in range(3)
        ]
    )
    kl = token_kl(logp, logp_ref)
    torch.testing.assert_close(kl, by_hand)
    assert (kl > 0).all()
    assert token_kl(logp_ref, logp_ref).abs().max() < 1e-12  # zero at the anchor
    # a gradient step on the KL moves the distribution toward the anchor
    (grad,) = torch.autograd.grad(kl.sum(), logits)
    stepped = token_kl(torch.log_softmax(logits - 0.1 * grad, -1), logp_ref)
    assert (stepped < kl).all()


def test_kl_coef_adds_the_anchor_term_and_needs_it():
    cfg = AlgoConfig(kl_coef=0.5)
    new, old = _terms()
    with pytest.raises(ValueError, match="kl_ref"):
        get_algorithm("ppo_action").loss(new, old, cfg)
    new.kl_ref = torch.full_like(new.values, 0.2)
    with_kl, metrics = get_algorithm("ppo_action").loss(new, old, cfg)
    without, _ = get_algorithm("ppo_action").loss(new, old, AlgoConfig())
    assert with_kl.item() == pytest.approx(without.item() + 0.5 * 0.2)
    assert metrics["kl_ref"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="kl_coef"):
        AlgoConfig(kl_coef=-1.0)


def test_stop_kl_matches_float64_at_the_sampling_temperature():
    from lastr1.algos.losses import stop_kl

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ref_logits = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    temps = torch.tensor([1.0, 1.6, 1.6, 0.5], dtype=torch.float64)
    by_hand = []
    for b in range(4):
        p = [math.exp(x) for x in (logits[b] / temps[b]).tolist()]
        q = [math.exp(x) for x in (ref_logits[b] / temps[b]).tolist()]
        p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
        by_hand.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    kl = stop_kl(logits, ref_logits, temps)
    assert kl.tolist() == pytest.approx(by_hand, rel=1e-9)
    assert stop_kl(logits, ref_logits, 1.6)[1].item() == pytest.approx(by_hand[1], rel=1e-9)  # scalar T
    assert stop_kl(ref_logits, ref_logits, temps).abs().max() < 1e-12  # zero at the anchor
    # a gradient step on the KL moves the stop distribution toward the anchor's
    (grad,) = torch.autograd.grad(kl.sum(), logits)
    assert (stop_kl(logits - 0.1 * grad, ref_logits, temps) < kl).all()


def test_stop_kl_coef_adds_the_mean_over_decisions_that_chose_their_stop():
    cfg = AlgoConfig(stop=StopConfig(kl_coef=0.25))
    new, old = _terms()
    with pytest.raises(ValueError, match="stop_kl_ref"):
        get_algorithm("lapo").loss(new, old, cfg)
    b = new.values.shape[0]
    new.stop_kl_ref = torch.arange(b, dtype=new.values.dtype) + 1.0
    without, _ = get_algorithm("lapo").loss(new, old, AlgoConfig())
    with_kl, metrics = get_algorithm("lapo").loss(new, old, cfg)
    assert with_kl.item() == pytest.approx(without.item() + 0.25 * new.stop_kl_ref.mean().item())
    # stop_scope "episode": only the decisions that chose their stop carry the KL
    old.stop_mask = torch.zeros(b, dtype=torch.bool)
    old.stop_mask[0] = True
    without, _ = get_algorithm("lapo").loss(new, old, AlgoConfig())
    with_kl, metrics = get_algorithm("lapo").loss(new, old, cfg)
    assert with_kl.item() == pytest.approx(without.item() + 0.25 * 1.0)
    assert metrics["stop_kl_ref"] == pytest.approx(1.0)
    old.stop_mask[:] = False  # a minibatch with no stop choice adds nothing
    with_kl, _ = get_algorithm("lapo").loss(new, old, cfg)
    without, _ = get_algorithm("lapo").loss(new, old, AlgoConfig())
    assert with_kl.item() == pytest.approx(without.item())
    with pytest.raises(ValueError, match="stop.kl_coef"):
        StopConfig(kl_coef=-0.1)


def test_whitening_is_the_affine_map_whiten_applies():
    from lastr1.algos import whitening

    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, generator=g)
    m = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    for groups in (None, torch.tensor([0, 1, 0, 1])):
        mean, scale = whitening(x, m, groups)
        assert torch.equal(whiten(x, m, groups), (x - mean) * scale * m)


def test_an_expected_stop_baseline_gives_the_stop_the_value_of_its_length():
    """One-decision episodes from one state; reasoning length 2 succeeds with p 0.8, length 8 with
    p 0.2, and the critic is exact, V(s, ℓ) = 5·p(ℓ). GAE's baseline V(s, ℓ) knows the chosen length,
    so the stop's mean advantage per length is zero ("gae", the reference); against the expectation
    over the sampling distribution ("gae_expected") it is Q(s, ℓ) − V̄(s): +1.5 for 2 and −1.5 for 8."""
    from lastr1.algos import stop_baseline_shift

    q = torch.tensor([4.0, 1.0])  # 5 · p(ℓ) for ℓ = 2, 8
    probs = torch.tensor([0.5, 0.5])
    # 10 episodes per length, successes in proportion to p: 8 / 10 and 2 / 10
    length = torch.tensor([0] * 10 + [1] * 10)
    success = torch.tensor([1.0] * 8 + [0.0] * 2 + [1.0] * 2 + [0.0] * 8)
    rewards, values = (5 * success)[:, None], q[length][:, None]
    mask = torch.ones(20, 1, dtype=torch.bool)
    adv, _ = gae(rewards, values, mask)
    shift = stop_baseline_shift(values[:, 0], q.expand(20, 2), probs.expand(20, 2))
    stop_adv = adv[:, 0] + shift
    for j, expected in ((0, 1.5), (1, -1.5)):
        assert adv[length == j, 0].mean().item() == pytest.approx(0.0, abs=1e-6)  # "chosen": no signal
        assert stop_adv[length == j].mean().item() == pytest.approx(expected)


def test_lapo_scores_the_stop_with_its_own_advantages():
    """``OldTerms.stop_advantages`` replaces the advantages in the stop term only: the float64
    reference with the stop's advantages swapped in, and the same action and latent gradients."""
    cfg = AlgoConfig()
    new, old = _terms()
    loss_same, _ = get_algorithm("lapo").loss(new, old, cfg)
    old.stop_advantages = old.advantages.clone()
    torch.testing.assert_close(get_algorithm("lapo").loss(new, old, cfg)[0], loss_same)
    old.stop_advantages = -2.0 * old.advantages
    loss, _ = get_algorithm("lapo").loss(new, old, cfg)
    swapped = OldTerms(**{**old.__dict__, "advantages": old.stop_advantages, "stop_advantages": None})
    ref_stop = _reference_lapo(new, swapped, cfg)
    ref_rest = _reference_lapo(new, OldTerms(**{**old.__dict__, "stop_advantages": None}), cfg)
    g_stop = torch.autograd.grad(loss, new.logp_stop, retain_graph=True)[0]
    torch.testing.assert_close(g_stop, torch.autograd.grad(ref_stop, new.logp_stop)[0])
    g_act = torch.autograd.grad(loss, new.logp_action_tokens)[0]
    torch.testing.assert_close(g_act, torch.autograd.grad(ref_rest, new.logp_action_tokens)[0])


def test_sequence_ratio_clips_the_whole_chunk_together():
    """action_ratio="sequence" (the reference): once the chunk's summed log-ratio leaves the clip range
    in the advantage's direction, no action token gets gradient; "token" clips each token alone."""
    new, old = _terms()
    old.advantages = torch.ones_like(old.advantages)
    with torch.no_grad():  # every token's ratio slightly up: each alone inside the clip, the product far out
        new.logp_action_tokens.copy_(old.logp_action_tokens + 0.1)
    for ratio, expect_grad in (("sequence", False), ("token", True)):
        loss, metrics = get_algorithm("ppo_action").loss(
            new, old, AlgoConfig(action_ratio=ratio, value_coef=0.0)
        )
        (grad,) = torch.autograd.grad(loss, new.logp_action_tokens)
        assert bool(grad.abs().sum() > 0) == expect_grad, ratio
        assert metrics["clip_frac"] == (1.0 if ratio == "sequence" else 0.0)
