"""The length-sensitivity diagnostic reads what ``act`` would do at each reasoning length."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import TINY_POLICY
from lastr1.envs import EnvConfig, EpisodeSpec, make_env
from lastr1.eval.length_sensitivity import length_sensitivity
from lastr1.models.policy import LastR1Policy, PolicyConfig
from lastr1.rollout.collector import collect


@pytest.fixture(scope="module")
def rollout_and_policy():
    torch.manual_seed(0)
    policy = LastR1Policy(PolicyConfig(**TINY_POLICY, image_size=32, proprio_dim=2)).eval()
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
    base = policy.config
    try:  # the independent path: act itself, greedy, with the length forced
        for length in lengths:
            policy.config = dataclasses.replace(base, force_latent_len=length)
            greedy[length] = policy.act(roll.out.inputs, mode="greedy").action_tokens
    finally:
        policy.config = base
    for t, row in enumerate(rows):
        sel = task_of == t
        assert row["decisions"] == int(sel.sum()) > 0
        assert row["kl"][longest] == pytest.approx(0.0, abs=1e-6)
        assert row["flip"][longest] == 0.0
        for length in lengths[:-1]:
            expected = (greedy[length][sel] != greedy[longest][sel]).float().mean().item()
            assert row["flip"][length] == pytest.approx(expected, abs=1e-6)
            assert row["kl"][length] > 0  # a random policy's actions do read its latents
    # the yardstick pairs each decision with the next one of its episode
    per_episode = roll.mask.sum(1)
    assert sum(r["state_pairs"] for r in rows) == int((per_episode - 1).clamp(min=0).sum())
    assert all(r["state_kl"] > 0 for r in rows)


def test_refuses_a_policy_without_latents(rollout_and_policy):
    roll, _ = rollout_and_policy
    no_latents = LastR1Policy(PolicyConfig(**{**TINY_POLICY, "k_max": 0}, image_size=32, proprio_dim=2))
    with pytest.raises(ValueError, match="k_max > 0"):
        length_sensitivity(no_latents, roll, num_tasks=2)
