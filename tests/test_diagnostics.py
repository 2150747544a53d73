"""RL diagnostics on hand-made tensors with known answers, the algorithms' per-part metrics, one
iteration's diagnostics on a real (tiny) policy, and the report's diagnostics figure."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import lastr1.train.rl as rl
from conftest import TINY_POLICY, random_terms
from lastr1.algos import AlgoConfig, NewTerms, OldTerms, StopConfig, get_algorithm
from lastr1.envs import EnvConfig, EpisodeSpec, make_env
from lastr1.eval.report import plot_diagnostics, write_run_report
from lastr1.models.policy import LastR1Policy, PolicyConfig
from lastr1.rollout.collector import collect
from lastr1.train.diagnostics import (
    advantage_stats,
    explained_variance,
    gradient_shares,
    iteration_diagnostics,
    kl_to_reference,
    loss_terms,
    zero_adv_frac,
    zero_signal_frac,
)

# ---------------------------------------------------------------- pure functions, by hand


def test_explained_variance_by_hand_ignores_padding():
    r = torch.tensor([[1.0, 2.0, 100.0], [3.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    v = torch.tensor([[1.0, 2.0, -50.0], [4.0, 9.0, 9.0]])
    # valid R = 1, 2, 3 (Var 2/3); R − V = 0, 0, −1 (Var 2/9): 1 − (2/9)/(2/3) = 2/3
    assert explained_variance(v, r, m) == pytest.approx(2 / 3)
    assert explained_variance(r, r, m) == pytest.approx(1.0)  # a perfect critic
    assert explained_variance(torch.zeros_like(r), r, m) == pytest.approx(0.0)  # a constant-zero one
    # returns without variance (all failed, sparse reward): undefined, not a misleading 0
    assert math.isnan(explained_variance(v, torch.ones_like(r), m))
    assert math.isnan(explained_variance(v, r, torch.zeros_like(m)))


def test_zero_adv_frac_and_advantage_stats_per_task():
    adv = torch.tensor([[1.0, -1.0, 7.0], [0.0, 0.0, 0.0], [2.0, 4.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, True, True], [True, True, False]])
    task = torch.tensor([0, 1, 0])
    assert zero_adv_frac(adv, m) == pytest.approx(3 / 7)  # the 3 valid zeros of episode 1; pads ignored
    stats = advantage_stats(adv, m, task, ["reach", "push", "never_run"])
    a = torch.tensor([1.0, -1.0, 2.0, 4.0], dtype=torch.float64)  # task 0's valid advantages
    assert stats["adv_mean/reach"] == pytest.approx(1.5)
    assert stats["adv_std/reach"] == pytest.approx(float(a.std(unbiased=False)))
    assert stats["adv_abs_mean/reach"] == pytest.approx(2.0)
    assert stats["adv_mean/push"] == 0.0 and stats["adv_std/push"] == 0.0
    assert "adv_mean/never_run" not in stats  # no decision this iteration: no key
    assert stats["zero_adv_frac"] == pytest.approx(3 / 7)
    # whitened advantages are non-zero where the raw ones were: zero_adv_frac reads the raw ones
    whitened = adv + 0.1
    assert advantage_stats(whitened, m, task, ["reach", "push"])["zero_adv_frac"] == 0.0
    assert advantage_stats(whitened, m, task, ["reach", "push"], raw=adv)["zero_adv_frac"] == pytest.approx(
        3 / 7
    )


def test_zero_signal_frac_counts_decisions_of_groups_without_contrast():
    m = torch.tensor(
        [
            [True, True, True],
            [True, False, False],
            [True, True, False],
            [True, True, True],
            [True, False, False],
        ]
    )
    # group 0: outcomes 5, 5 (no contrast, 4 decisions); group 1: 0, 5 (contrast); group 2: alone (1)
    outcome = torch.tensor([5.0, 5.0, 0.0, 5.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2])
    assert zero_signal_frac(outcome, m, groups) == pytest.approx((4 + 1) / 10)
    assert zero_signal_frac(torch.arange(5.0), m, torch.zeros(5, dtype=torch.long)) == 0.0
    assert math.isnan(zero_signal_frac(outcome, torch.zeros_like(m), groups))


def test_kl_to_reference_by_hand():
    p = torch.tensor([0.5, 0.5]).log().expand(3, 4, 2)
    q = torch.tensor([0.25, 0.75]).log().expand(3, 4, 2)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_to_reference(p, q) == pytest.approx(expected, rel=1e-6)
    assert kl_to_reference(p, p) == 0.0


def test_gradient_shares_by_hand():
    w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    u = torch.nn.Parameter(torch.tensor([2.0]))
    idle = torch.nn.Parameter(torch.tensor([0.5]))
    frozen = torch.nn.Parameter(torch.tensor([1.0]), requires_grad=False)
    terms = {"a": 3 * w[0], "b": 4 * w[1] + u[0] ** 2, "c": -2 * u[0] * 0 + w.sum() * 0}
    shares = gradient_shares(terms, {"main": [w, frozen], "head": [u], "idle": [idle], "empty": []})
    # main: ∇a = (3, 0), ∇b = (0, 4), total (3, 4) of norm 5
    assert shares["a/main"] == pytest.approx(0.6) and shares["b/main"] == pytest.approx(0.8)
    assert shares["c/main"] == 0.0
    # head: only b reaches u (∇ = 2u = 4): share 1
    assert shares["b/head"] == pytest.approx(1.0) and shares["a/head"] == 0.0
    assert shares["total/main"] == pytest.approx(5.0) and shares["total/head"] == pytest.approx(4.0)
    assert shares["total/idle"] == 0.0  # no term reaches it: its shares are undefined, no keys
    assert not any(k.endswith("/idle") and not k.startswith("total/") for k in shares)
    assert not any(k.endswith("/empty") for k in shares)
    assert w.grad is None and u.grad is None  # .grad untouched
    # opposed terms: the total is smaller than either, shares above 1
    opposed = gradient_shares({"up": 2 * w.sum(), "down": -w.sum()}, {"main": [w]})
    assert opposed == pytest.approx({"up/main": 2.0, "down/main": 1.0, "total/main": math.sqrt(2)})


# ---------------------------------------------------------------- loss terms and algorithm metrics


def _terms(b=5, t=4, k=3, d=6, seed=0, kl=False):
    return random_terms(b, t, k, d, seed, torch.float32, kl)


@pytest.mark.parametrize("algo", ["lapo", "ppo_action", "grpo_action"])
@pytest.mark.parametrize("variant", ["reference", "all_terms", "no_latents"])
def test_loss_terms_sum_to_the_algorithms_loss(algo, variant):
    if variant == "all_terms":  # every optional term on, stop_scope "episode", the stop's own advantages
        cfg = AlgoConfig(
            entropy_coef=0.01, kl_coef=0.1, stop=StopConfig(kl_coef=0.3), action_ratio="token", w_latent=0.5
        )
        new, old = _terms(kl=True)
        old.stop_mask = torch.tensor([True, False, False, True, False])
        old.stop_advantages = old.advantages + 0.3
    else:
        cfg = AlgoConfig()
        new, old = _terms()
    if variant == "no_latents":
        old.latent_mask = torch.zeros_like(old.latent_mask)
    loss, _ = get_algorithm(algo).loss(new, old, cfg)
    terms = loss_terms(algo, new, old, cfg)
    assert sum(terms.values()).item() == pytest.approx(loss.item(), abs=1e-6)
    expected = {"action"}
    expected |= {"stop", "latent"} if algo == "lapo" and variant != "no_latents" else set()
    expected |= {"value"} if algo != "grpo_action" else set()
    expected |= {"entropy", "kl", "stop_kl"} if variant == "all_terms" else set()
    assert set(terms) == expected
    with pytest.raises(ValueError, match="no term split"):
        loss_terms("unknown", new, old, cfg)


def test_algorithm_metrics_name_every_part():
    cfg = AlgoConfig(action_ratio="token")
    new, old = _terms()
    _, m = get_algorithm("lapo").loss(new, old, cfg)
    assert m["clip_frac_action"] == m["clip_frac"] and m["clip_frac_stop"] == m["stop_clip_frac"]
    assert 0.0 <= m["clip_frac_latent"] <= 1.0
    assert m["approx_kl_behaviour"] == pytest.approx(m["approx_kl"], rel=1e-5)  # token ratio: the same
    for name in ("ppo_action", "grpo_action"):
        _, m = get_algorithm(name).loss(new, old, cfg)
        assert m["clip_frac_action"] == m["clip_frac"] and "approx_kl_behaviour" in m
        assert "clip_frac_latent" not in m  # no latent term


def test_latent_clip_fraction_and_per_token_kl_by_hand():
    # decision 0: A < 0 and r_z = exp(−2) < 1 − 0.2: the clipped branch is active; decision 1: A > 0,
    # r_z ≤ 1 never clips from below for a positive advantage
    z = torch.zeros(2, 1, 1)
    mu = torch.tensor([[[2.0]], [[2.0]]], requires_grad=True)
    mask = torch.ones(2, 1, dtype=torch.bool)
    lp_old = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    lp_new = torch.log(torch.tensor([[0.25, 0.5], [0.5, 1.0]])).requires_grad_()
    old = OldTerms(torch.tensor([-1.0, 1.0]), torch.zeros(2), torch.zeros(2), lp_old, torch.zeros(2), z, mask)
    new = NewTerms(lp_new, torch.zeros(2), mu, torch.zeros(2), torch.zeros(2))
    cfg = AlgoConfig(latent_sigma=1.0, action_ratio="sequence")
    _, m = get_algorithm("lapo").loss(new, old, cfg)
    assert m["clip_frac_latent"] == pytest.approx(0.5)
    # per-token k3: ratios 0.5, 1, 1, 2 -> (r − 1) − log r = 0.5 − ln 2 ... averaged over 4 tokens
    per_token = [(r - 1) - math.log(r) for r in (0.5, 1.0, 1.0, 2.0)]
    assert m["approx_kl_behaviour"] == pytest.approx(sum(per_token) / 4, rel=1e-5)
    # the sequence ratio's approx_kl is over the chunk's summed log-ratio (0.5 and 2): a different number
    assert m["approx_kl"] == pytest.approx(((0.5 - 1) - math.log(0.5) + (2 - 1) - math.log(2)) / 2, rel=1e-5)


# ---------------------------------------------------------------- one iteration on a real policy


@pytest.fixture(scope="module")
def rollout_and_policy():
    torch.manual_seed(0)
    policy = LastR1Policy(PolicyConfig(**TINY_POLICY, image_size=32, proprio_dim=2)).eval()
    specs = [EpisodeSpec(i % 2, "train", i, max_steps=24) for i in range(4)]
    with make_env(EnvConfig(backend="toy", image_size=32, num_envs=4)) as env:
        names = [t.name for t in env.tasks]
        roll = collect(env, policy, specs, generator=torch.Generator().manual_seed(0), group=[0, 0, 1, 1])
    return policy, roll, names


@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_iteration_diagnostics_on_a_rollout(rollout_and_policy, advantage):
    """What the trainer's hook calls: finite ``diag/`` numbers, the policy untouched."""
    policy, roll, names = rollout_and_policy
    algo = "lapo" if advantage == "gae" else "grpo_action"
    cfg = rl.RLConfig(
        env=EnvConfig(backend="toy", image_size=32, num_envs=4),
        algo=AlgoConfig(
            name=algo,
            entropy_coef=0.01,  # a term with a gradient even where every advantage is zero
            kl_coef=0.05,
            stop=StopConfig(kl_coef=0.1) if algo == "lapo" else StopConfig(),
        ),
        rollouts_per_iter=4,
        group_size=2,
    )
    adv, ret, stop_adv = rl._advantages(cfg, cfg.advantage_kind, roll)
    old = rl.old_terms(roll, adv, ret, stop_adv)
    anchor = copy.deepcopy(policy).requires_grad_(False)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    rng = torch.get_rng_state()
    diag = iteration_diagnostics(
        policy, roll, old, cfg.algo, advantage_kind=cfg.advantage_kind, task_names=names, anchor=anchor,
        batch_size=8, seed=1,
    )  # fmt: skip
    assert all(k.startswith("diag/") and math.isfinite(v) for k, v in diag.items())
    assert diag["diag/kl_sft"] == pytest.approx(0.0, abs=1e-6)  # the policy is its own anchor
    assert diag["diag/kl_behaviour"] == pytest.approx(0.0, abs=1e-5)  # and collected the rollout
    assert 0.0 <= diag["diag/zero_adv_frac"] <= 1.0 and 0.0 <= diag["diag/zero_signal_frac"] <= 1.0
    assert diag["diag/entropy"] > 0
    assert any(k.startswith("diag/adv_mean/") for k in diag)
    assert ("diag/explained_variance" in diag) == (advantage == "gae")  # GAE returns vary with V
    policy_terms = {
        k.split("/")[2] for k in diag if k.startswith("diag/grad_share/") and k.endswith("/policy")
    }
    assert diag["diag/grad_norm/policy"] > 0
    if algo == "lapo":
        assert policy_terms == {"action", "stop", "latent", "value", "entropy", "kl", "stop_kl"}
        assert "diag/grad_share/stop/stop" in diag  # the stop term reaches the stop head
    else:
        assert policy_terms == {"action", "entropy", "kl"}
        assert diag["diag/grad_norm/value"] == 0.0  # no critic loss: a zero norm, and no shares
        assert not any(k.startswith("diag/grad_share/") and k.endswith("/value") for k in diag)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert all(p.grad is None for p in policy.parameters())
    assert torch.equal(rng, torch.get_rng_state())  # the run's random stream is not consumed
    # a drifted policy: the KL to the anchor grows
    with torch.no_grad():
        drifted = copy.deepcopy(policy)
        drifted.action_head.weight.add_(0.5 * torch.randn_like(drifted.action_head.weight))
    later = iteration_diagnostics(
        drifted, roll, old, cfg.algo, advantage_kind=cfg.advantage_kind, task_names=names, anchor=anchor,
        batch_size=8, seed=1,
    )  # fmt: skip
    assert later["diag/kl_sft"] > 1e-3 and later["diag/kl_behaviour"] > 1e-3
    cheap = iteration_diagnostics(
        drifted, roll, old, cfg.algo, advantage_kind=cfg.advantage_kind, task_names=names, anchor=anchor,
        batch_size=8, seed=1, grad_shares=False,
    )  # fmt: skip
    assert cheap == {k: v for k, v in later.items() if not k.startswith("diag/grad_")}


# ---------------------------------------------------------------- the report's figure


def _eval(rate: float) -> dict:
    task = {"success_rate": rate, "ci95": [0.0, 1.0], "mean_latent_len": 2.0, "episodes": 4}
    return {"per_task": {"reach": task}, **task}


def _run(run: Path, diag: bool) -> Path:
    run.mkdir(parents=True)
    rows = [{"step": 0, "env_steps": 0, "eval_success": 0.5}]
    for i in range(1, 4):
        row = {"step": i, "env_steps": 100 * i, "train_success": 0.5, "loss": 1.0, "sec_collect": 1.0}
        row.update(clip_frac=0.1, approx_kl=0.01, entropy=3.0, stop_clip_frac=0.2)
        if diag:
            row.update(
                {
                    "clip_frac_action": 0.1,
                    "clip_frac_stop": 0.2,
                    "clip_frac_latent": 0.05,
                    "approx_kl_behaviour": 0.01,
                    "diag/explained_variance": 0.1 * i if i > 1 else "nan",  # the logger's non-finite
                    "diag/kl_sft": 0.001 * i,
                    "diag/kl_behaviour": 0.002,
                    "diag/entropy": 2.9,
                    "diag/zero_adv_frac": 0.0,
                    "diag/zero_signal_frac": 0.5,
                    "diag/adv_mean/reach": 0.2,
                    "diag/grad_share/action/policy": 0.9,
                    "diag/grad_share/value/policy": 0.4,
                    "diag/grad_share/stop/stop": 1.0,
                }
            )
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_report_links_the_diagnostics_figure_only_when_the_run_logged_them(tmp_path: Path) -> None:
    run = _run(tmp_path / "new", diag=True)
    png = plot_diagnostics(run, tmp_path / "d.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = write_run_report(run, _eval(0.25), _eval(0.75), {}, "lapo", rl=run).read_text()
    assert "## Diagnostics" in report and "![diagnostics](diagnostics.png)" in report
    assert (run / "diagnostics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    old = _run(tmp_path / "old", diag=False)  # a run from before the diagnostics
    assert plot_diagnostics(old, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    report = write_run_report(old, _eval(0.25), _eval(0.75), {}, "lapo", rl=old).read_text()
    assert "Diagnostics" not in report and "diagnostics.png" not in report
    assert not (old / "diagnostics.png").exists()
