"""The length-sensitivity diagnostic reads what ``act`` would do at each reasoning length."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import TINY_POLICY
from lastr1.envs import EnvConfig, EpisodeSpec, make_env
from lastr1.eval.length_sensitivity import _same_task_partner, length_sensitivity
from lastr1.models.policy import LastR1Policy, PolicyConfig
from lastr1.rollout.collector import collect


@pytest.fixture(scope="module")
def rollout_and_policy():
    torch.manual_seed(0)
    policy = LastR1Policy(PolicyConfig(**TINY_POLICY, image_size=32, proprio_dim=2)).eval()
    with (
        torch.no_grad()
    ):  # a random head gives near-uniform tokens; sharpen it so every KL is well above rounding
        policy.action_head.weight.mul_(200.0)
    specs = [EpisodeSpec(0, "eval", 0), EpisodeSpec(1, "eval", 0), EpisodeSpec(1, "eval", 1)]
    env_cfg = EnvConfig(backend="toy", image_size=32, num_envs=3, max_steps=24)
    with make_env(env_cfg) as env:
        roll = collect(env, policy, specs, mode="greedy")
    return roll, policy


def test_flips_match_greedy_act_at_each_forced_length(rollout_and_policy):
    roll, policy = rollout_and_policy
    rows = length_sensitivity(policy, roll, num_tasks=2)
    lengths = policy.layout.candidate_lengths()
    longest = lengths[-1]
    task_of = roll.flat(roll.task[:, None].expand_as(roll.mask))
    greedy = {}
    for length in lengths:  # the independent path: act itself, greedy, with the length forced
        probe = dataclasses.replace(policy.decode, force_latent_len=length)
        greedy[length] = policy.act(roll.out.inputs, mode="greedy", decode=probe).action_tokens
    for t, row in enumerate(rows):
        sel = task_of == t
        assert row["decisions"] == int(sel.sum()) > 0
        assert row["kl"][longest] == pytest.approx(0.0, abs=1e-6)
        assert row["flip"][longest] == 0.0
        for length in lengths[:-1]:
            expected = (greedy[length][sel] != greedy[longest][sel]).float().mean().item()
            assert row["flip"][length] == pytest.approx(expected, abs=1e-6)
            assert row["kl"][length] > 1e-4  # a random policy's actions do read its latents
    # the yardstick pairs each decision with the next one of its episode
    per_episode = roll.mask.sum(1)
    assert sum(r["state_pairs"] for r in rows) == int((per_episode - 1).clamp(min=0).sum())
    assert all(r["state_kl"] > 0 for r in rows)


def test_swap_kl_reads_another_decisions_latents(rollout_and_policy):
    roll, policy = rollout_and_policy
    task_of = roll.flat(roll.task[:, None].expand_as(roll.mask))
    base = length_sensitivity(policy, roll, num_tasks=2)
    # make task 1's stored latents differ strongly between its decisions; task 0's stay as they were
    gen = torch.Generator().manual_seed(0)
    out = dataclasses.replace(roll.out, latents=roll.out.latents.clone())
    rows = task_of == 1
    out.latents[rows] += 5.0 * torch.randn(out.latents[rows].shape, generator=gen)
    moved = length_sensitivity(policy, dataclasses.replace(roll, out=out), num_tasks=2)
    assert moved[0]["swap_kl"] == pytest.approx(base[0]["swap_kl"], rel=1e-6)
    assert moved[1]["swap_kl"] > 100 * max(base[1]["swap_kl"], 1e-6)


def test_latent_swap_partner_is_the_next_decision_of_the_same_task():
    task_of = torch.tensor([0, 1, 0, 1, 1, 2])
    assert _same_task_partner(task_of).tolist() == [2, 3, 0, 4, 1, 5]


def test_refuses_a_policy_without_latents(rollout_and_policy):
    roll, _ = rollout_and_policy
    no_latents = LastR1Policy(PolicyConfig(**{**TINY_POLICY, "k_max": 0}, image_size=32, proprio_dim=2))
    with pytest.raises(ValueError, match="k_max > 0"):
        length_sensitivity(no_latents, roll, num_tasks=2)
