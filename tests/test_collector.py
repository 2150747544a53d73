"""The rollout collector on the toy env: what it stores per decision, when episodes end, group starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pytest
import torch

import lastr1.eval.evaluate as evaluate_mod
import lastr1.train.rl as rl
from conftest import TINY_POLICY
from lastr1.algos import AlgoConfig, discounted_returns, gae, whitening
from lastr1.envs import EnvConfig, EpisodeSpec, make_env
from lastr1.models.decode import DecodeConfig
from lastr1.models.policy import LastR1Policy, PolicyConfig
from lastr1.models.policy_io import PolicyBatch
from lastr1.rollout.collector import collect, merge_rollouts
from lastr1.train.rl import RLConfig

CHUNK = 8  # PolicyConfig default


def _env(num_envs: int = 2, max_steps: int | None = None):
    return make_env(EnvConfig(backend="toy", image_size=32, num_envs=num_envs, max_steps=max_steps))


@pytest.fixture(scope="module")
def policy() -> LastR1Policy:
    torch.manual_seed(0)
    return LastR1Policy(PolicyConfig(**TINY_POLICY, image_size=32, proprio_dim=2)).eval()


def test_collect_stores_every_decision(policy):
    k, d, n_tok = TINY_POLICY["k_max"], TINY_POLICY["d_model"], CHUNK * 7
    specs = [EpisodeSpec(0, "train", 3), EpisodeSpec(1, "train", 4), EpisodeSpec(1, "eval", 0)]
    with _env(num_envs=3, max_steps=20) as env:
        first_obs = env.reset(specs)
        roll = collect(env, policy, specs, generator=torch.Generator().manual_seed(0), success_reward=5.0)
    n_dec = roll.num_decisions
    t_max = roll.mask.shape[1]
    out = roll.out
    assert len(out) == n_dec and t_max == math.ceil(20 / CHUNK)

    # per decision: latents, stop, action tokens, old log-probs, value
    assert out.latents.shape == (n_dec, k, d) and out.latents.dtype == torch.float32
    assert out.latent_mask.shape == (n_dec, k) and out.latent_mask.dtype == torch.bool
    assert out.stop_index.dtype == torch.long and set(out.stop_index.tolist()) <= {0, 1}
    assert torch.equal(out.latent_len, 2 * (out.stop_index + 1))  # candidates {2, 4}
    assert torch.equal(out.latent_mask.sum(1), out.latent_len)
    assert out.action_tokens.shape == (n_dec, n_tok) and out.action_tokens.dtype == torch.long
    assert out.action_tokens.min() >= 0 and out.action_tokens.max() < 256
    assert out.actions.shape == (n_dec, CHUNK, 7) and out.actions.dtype == torch.float32
    assert out.logp_tokens.shape == (n_dec, n_tok) and out.logp_tokens.dtype == torch.float32
    assert out.logp_stop.shape == (n_dec,) and out.logp_stop.dtype == torch.float32
    assert (out.logp_tokens <= 0).all() and (out.logp_stop <= 0).all()
    assert out.value.shape == (n_dec,) and out.value.dtype == torch.float32
    assert out.inputs.images.shape == (n_dec, 1, 32, 32, 3) and out.inputs.images.dtype == torch.uint8

    # per episode, padded to T decisions: reward, value, length, done (= mask ends)
    assert roll.index.shape == roll.mask.shape == roll.rewards.shape == (3, t_max)
    assert roll.index.dtype == torch.long and roll.mask.dtype == torch.bool
    assert roll.rewards.dtype == roll.values.dtype == torch.float32
    assert roll.latent_len.dtype == torch.long and roll.success.dtype == torch.bool
    assert roll.env_steps.dtype == torch.int64 and roll.task.tolist() == [0, 1, 1]
    assert sorted(roll.index[roll.mask].tolist()) == list(range(n_dec))  # a bijection onto the flat rows
    assert (roll.index[~roll.mask] == -1).all() and (roll.rewards[~roll.mask] == 0).all()
    for i in range(3):  # valid decisions are a prefix: the episode is done after its last one
        m = int(roll.mask[i].sum())
        assert roll.mask[i, :m].all() and not roll.mask[i, m:].any()
        assert m == math.ceil(int(roll.env_steps[i]) / CHUNK)
    assert torch.equal(roll.flat(roll.values), out.value)  # value at acting time, same decision
    assert torch.equal(roll.flat(roll.latent_len), out.latent_len)
    # each episode's first decision saw its own reset observation
    first = roll.index[:, 0]
    np.testing.assert_array_equal(out.inputs.images[first].numpy(), first_obs.images)

    # the stored decisions re-score to the stored old log-probs (ratio 1 on-policy)
    lp = policy.log_probs(PolicyBatch.from_act(out))
    torch.testing.assert_close(lp.logp_tokens, out.logp_tokens, atol=1e-4, rtol=0)
    torch.testing.assert_close(lp.logp_stop, out.logp_stop, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp.value, out.value, atol=1e-5, rtol=0)


@dataclass
class _Out:
    """The least an acting policy must return: actions, value, latent length, and ``cat``."""

    actions: torch.Tensor
    value: torch.Tensor
    latent_len: torch.Tensor

    @classmethod
    def cat(cls, items):
        return cls(*(torch.cat([getattr(i, f.name) for i in items]) for f in fields(cls)))


class _Scripted:
    """Heads straight for the named target on task 0 (reach-red); stands still on task 1."""

    def __init__(self):
        self.batch_sizes: list[int] = []

    def act(self, obs, mode="sample", generator=None):
        b = len(obs)
        self.batch_sizes.append(b)
        actions = np.zeros((b, CHUNK, 7), dtype=np.float32)
        for j in range(b):
            if obs.task[j] == 0:
                d = obs.privileged[j, 2:4] - obs.privileged[j, 0:2]
                actions[j, :, :2] = d / max(np.linalg.norm(d), 1e-6)  # 0.1 per step along the line
        return _Out(torch.from_numpy(actions), torch.arange(b, dtype=torch.float32), torch.full((b,), 2))


def test_episode_stop_scope_keeps_the_first_decisions_length(policy):

    per_episode = LastR1Policy(policy.config, decode=DecodeConfig(stop_scope="episode")).eval()
    per_episode.load_state_dict(policy.state_dict())
    specs = [EpisodeSpec(i % 2, "train", i) for i in range(6)]
    with _env(num_envs=6, max_steps=30) as env:
        roll = collect(env, per_episode, specs, generator=torch.Generator().manual_seed(1))
        free = collect(env, policy, specs, generator=torch.Generator().manual_seed(1))
    out = roll.out
    firsts = roll.index[:, 0]
    assert out.stop_chosen[firsts].all() and int(out.stop_chosen.sum()) == len(specs)  # one choice each
    for i in range(len(specs)):
        rows = roll.index[i][roll.mask[i]]
        assert (out.latent_len[rows] == out.latent_len[rows[0]]).all()
        assert (roll.latent_len[i][roll.mask[i]] == out.latent_len[rows[0]]).all()
    # the kept decisions' stop log-prob is still their own categorical's at the kept candidate
    lp = per_episode.log_probs(PolicyBatch.from_act(out))
    assert (lp.logp_stop - out.logp_stop).abs().max() <= 1e-5
    # per episode, the mean length is the one the episode chose
    assert torch.equal(roll.episode_latent_len(), out.latent_len[firsts].float())
    # the sampled lengths differ between episodes, and per decision without the episode scope
    assert len(set(out.latent_len[firsts].tolist())) > 1
    assert free.out.stop_chosen.all()
    changes = [
        len(set(free.out.latent_len[free.index[i][free.mask[i]]].tolist())) > 1 for i in range(len(specs))
    ]
    assert any(changes)
    # through old_terms: the stop term's mask
    adv = torch.zeros_like(roll.rewards)
    terms = rl.old_terms(roll, adv, adv)
    assert terms.stop_mask is not None and torch.equal(terms.stop_mask, out.stop_chosen)
    assert (
        rl.old_terms(free, torch.zeros_like(free.rewards), torch.zeros_like(free.rewards)).stop_mask is None
    )


def test_episode_latent_len_weighs_every_episode_once():
    from lastr1.rollout.collector import Rollout

    # a 1-decision success at length 2 and a 3-decision failure at length 8, plus an empty row
    mask = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    lat = torch.tensor([[2, 0, 0], [8, 8, 8], [0, 0, 0]])
    zeros = torch.zeros(3, 3)
    roll = Rollout(
        out=None,
        index=torch.where(mask, torch.arange(9).view(3, 3), -1),
        mask=mask,
        rewards=zeros,
        values=zeros,
        success=torch.tensor([True, False, False]),
        env_steps=torch.tensor([8, 24, 0]),
        task=torch.zeros(3, dtype=torch.long),
        group=torch.arange(3),
        latent_len=lat,
    )
    assert roll.episode_latent_len().tolist() == [2.0, 8.0, 0.0]
    assert float(lat[mask].float().mean()) == 6.5  # per decision: the failure's length dominates


def test_episodes_end_at_success_or_max_steps():
    max_steps = 30
    specs = [EpisodeSpec(0, "train", i) for i in range(2)] + [EpisodeSpec(1, "train", i) for i in range(2)]
    pol = _Scripted()
    with _env(num_envs=4, max_steps=max_steps) as env:
        roll = collect(env, pol, specs, success_reward=3.0)
        res = env.step(np.zeros((4, 7)))  # finished slots are not stepped again
        assert not res.info["active"].any()
    assert roll.success.tolist() == [True, True, False, False]
    for i in range(4):
        m = int(roll.mask[i].sum())
        steps = int(roll.env_steps[i])
        rewards = roll.rewards[i, :m].tolist()
        if roll.success[i]:  # stopped at the success step, rewarded once at the last decision
            assert steps < max_steps and rewards == [0.0] * (m - 1) + [3.0]
        else:  # ran out the clock, no reward
            assert steps == max_steps and rewards == [0.0] * m
        assert m == math.ceil(steps / CHUNK)
    # finished slots leave the policy batch: one row per live episode per decision
    live = [int((roll.mask[:, t]).sum()) for t in range(roll.mask.shape[1])]
    assert pol.batch_sizes == live and live[0] == 4 and live[-1] == 2
    assert roll.num_decisions == sum(live)


def test_group_rollouts_share_a_train_start(policy):
    cfg = rl.RLConfig(
        env=EnvConfig(backend="toy", image_size=32, num_envs=4, max_steps=8),
        algo=AlgoConfig(name="grpo_action"),
        rollouts_per_iter=8,
        group_size=4,
    )
    with make_env(cfg.env) as env:
        specs, groups = rl._train_episodes(cfg, env, iteration=1)
        assert groups == [0, 0, 0, 0, 1, 1, 1, 1]
        assert all(s.init_set == "train" for s in specs)
        assert len(set(specs[:4])) == 1 and len(set(specs[4:])) == 1 and specs[0] != specs[4]
        assert [s.task for s in specs] == [0] * 4 + [1] * 4  # tasks round-robin over groups
        again, _ = rl._train_episodes(cfg, env, iteration=1)
        other, _ = rl._train_episodes(cfg, env, iteration=2)
        assert again == specs and other != specs  # reproducible per iteration, new starts each iteration
        gen = torch.Generator().manual_seed(0)
        roll = collect(env, policy, specs[:4], generator=gen, group=groups[:4])
        roll2 = collect(env, policy, specs[4:], generator=gen, group=groups[4:])
    merged = merge_rollouts([roll, roll2])
    assert merged.group.tolist() == groups
    images = merged.out.inputs.images[merged.index[:, 0]]
    for i in range(1, 4):  # same group: the same first observation
        assert torch.equal(images[i], images[0]) and torch.equal(images[4 + i], images[4])
    assert not torch.equal(images[0], images[4])
    # the group members still act independently (sampled), so their action tokens differ
    tokens = merged.out.action_tokens[merged.index[:4, 0]]
    assert len({tuple(t.tolist()) for t in tokens}) > 1
    # merging keeps each decision's row aligned with its episode
    assert torch.equal(merged.flat(merged.values), merged.out.value)
    assert torch.equal(merged.flat(merged.latent_len), merged.out.latent_len)
    assert merged.num_decisions == roll.num_decisions + roll2.num_decisions


def test_default_groups_follow_distinct_starts(policy):
    specs = [EpisodeSpec(0, "train", 5), EpisodeSpec(1, "train", 5), EpisodeSpec(0, "train", 5)]
    with _env(num_envs=3, max_steps=8) as env:
        roll = collect(env, policy, specs, generator=torch.Generator().manual_seed(0))
    assert roll.group.tolist() == [0, 1, 0]


def test_rl_rollouts_use_only_train_starts(toy_sft_checkpoint, tmp_path, monkeypatch):
    seen: dict[str, list[str]] = {"rl": [], "eval": []}

    def spy(where, real):
        def wrapped(env, policy, episodes, **kw):
            seen[where] += [f"{kw.get('mode', 'sample')}:{e.init_set}" for e in episodes]
            return real(env, policy, episodes, **kw)

        return wrapped

    monkeypatch.setattr(rl, "collect", spy("rl", rl.collect))
    monkeypatch.setattr(evaluate_mod, "collect", spy("eval", evaluate_mod.collect))
    cfg = rl.RLConfig(
        env=EnvConfig(backend="toy", image_size=32, num_envs=2, max_steps=8),
        checkpoint=str(toy_sft_checkpoint),
        out=str(tmp_path / "rl"),
        iterations=2,
        rollouts_per_iter=4,
        minibatches=2,
        eval_episodes_per_task=1,
        progress=False,
    )
    rl.train_rl(cfg)
    assert seen["rl"] == ["sample:train"] * 8  # 2 iterations x 4 rollouts
    assert set(seen["eval"]) == {"greedy:eval"} and len(seen["eval"]) == 2 * 2  # before + at the end


def _episode_tokens(roll, i: int) -> torch.Tensor:
    return roll.out.action_tokens[roll.index[i][roll.mask[i]]]


def _toy(num_envs: int, **kw):
    return make_env(EnvConfig(backend="toy", image_size=32, num_envs=num_envs, **kw))


def test_pipelined_groups_collect_what_each_group_collects_alone(policy):
    """pipeline=2: the policy decides for one group while the other's chunk runs. Greedy, each
    group's episodes are exactly those of collecting that group on its own (same batches)."""
    specs = [EpisodeSpec(i % 2, "train", i, max_steps=m) for i, m in enumerate([8, 17, 40, 25, 33])]
    with _toy(5) as env:
        piped = collect(env, policy, specs, mode="greedy", pipeline=2, record_frames=4)
    alone = []
    for part in (specs[:3], specs[3:]):  # np.array_split's groups
        with _toy(len(part)) as env:
            alone.append(collect(env, policy, part, mode="greedy", record_frames=4))
    pairs = [(alone[0], i) for i in range(3)] + [(alone[1], i) for i in range(2)]
    for slot, (ref, i) in enumerate(pairs):
        assert torch.equal(_episode_tokens(piped, slot), _episode_tokens(ref, i))
        assert piped.env_steps[slot] == ref.env_steps[i] and piped.success[slot] == ref.success[i]
        assert torch.equal(piped.latent_len[slot][piped.mask[slot]], ref.latent_len[i][ref.mask[i]])
        assert torch.equal(piped.rewards[slot][piped.mask[slot]], ref.rewards[i][ref.mask[i]])
        if slot < 4:
            frames = alone[0].frames[i] if slot < 3 else alone[1].frames[i]
            assert len(piped.frames[slot]) == len(frames) == piped.env_steps[slot] + 1
    assert sorted(piped.env_steps.tolist()) == [8, 17, 25, 33, 40]  # groups end at different times
    assert piped.num_decisions == sum(r.num_decisions for r in alone)
    # flat rows are consistent: every valid (n, t) points at a distinct row of ``out``
    rows = piped.index[piped.mask]
    assert sorted(rows.tolist()) == list(range(piped.num_decisions))


def test_pipelined_collect_overlaps_async_workers_with_the_same_result(policy):
    """Sampling with one generator: the same pipeline gives the same rollout in-process and with
    one async worker holding every slot (where the chunks really run during the policy's turn)."""
    specs = [EpisodeSpec(i % 2, "train", i, max_steps=12 + 4 * i) for i in range(4)]
    rolls = []
    for kw in ({}, {"vector": "async", "workers": 1}):
        with _toy(4, **kw) as env:
            rolls.append(collect(env, policy, specs, pipeline=2, generator=torch.Generator().manual_seed(2)))
    a, b = rolls
    assert torch.equal(a.out.action_tokens, b.out.action_tokens) and torch.equal(a.index, b.index)
    assert torch.equal(a.out.stop_index, b.out.stop_index) and torch.equal(a.env_steps, b.env_steps)
    with _toy(4) as env, pytest.raises(ValueError, match="pipeline=5 must be in"):
        collect(env, policy, specs, pipeline=5)


def test_pipelined_collect_keeps_the_episode_stop(policy):

    per_episode = LastR1Policy(policy.config, decode=DecodeConfig(stop_scope="episode")).eval()
    per_episode.load_state_dict(policy.state_dict())
    specs = [EpisodeSpec(i % 2, "train", i, max_steps=30) for i in range(5)]
    with _toy(5) as env:
        roll = collect(env, per_episode, specs, pipeline=3, generator=torch.Generator().manual_seed(1))
    assert int(roll.out.stop_chosen.sum()) == len(specs) and roll.out.stop_chosen[roll.index[:, 0]].all()
    for i in range(len(specs)):
        lengths = roll.latent_len[i][roll.mask[i]]
        assert (lengths == lengths[0]).all()


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("kind", ["gae_expected", "return"])
def test_stop_advantages_use_a_baseline_that_does_not_depend_on_the_stop(policy, kind, whiten):
    """algo.stop.advantage: "gae_expected" is the decision's GAE advantage plus
    V(s, ℓ) − Σ π_old(ℓ'|s) V(s, ℓ'); "return" is the discounted return minus that expectation; both go
    through the actions' whitening map, and "gae" (the reference) gives the stop no advantages of its own."""
    specs = [EpisodeSpec(i % 2, "train", i) for i in range(4)]
    with _env(num_envs=4, max_steps=30) as env:
        roll = collect(env, policy, specs, generator=torch.Generator().manual_seed(2))
    cfg = RLConfig(env=EnvConfig(backend="toy", num_envs=4))
    cfg.algo.whiten_advantages = whiten
    adv, _, stop_adv = rl._advantages(cfg, "gae", roll)
    assert stop_adv is None  # the reference: the stop shares the actions' advantages
    cfg.algo.stop.advantage = kind
    adv2, _, stop_adv = rl._advantages(cfg, "gae", roll)
    assert torch.equal(adv, adv2)  # the actions' advantages do not change
    out = roll.out
    probs = torch.softmax(out.stop_logits / out.stop_temperature[:, None], -1)
    v_bar = (probs * out.candidate_values).sum(-1)
    raw, _ = gae(roll.rewards, roll.values, roll.mask)
    returns = discounted_returns(roll.rewards, roll.mask, cfg.algo.gamma)
    mean, scale = whitening(raw, roll.mask) if whiten else (0.0, 1.0)
    for i in range(len(specs)):
        rows = roll.index[i][roll.mask[i]]
        valid = roll.mask[i]
        if kind == "gae_expected":
            by_hand = raw[i][valid] + out.value[rows] - v_bar[rows]
        else:
            by_hand = returns[i][valid] - v_bar[rows]
        torch.testing.assert_close(stop_adv[i][valid], (by_hand - mean) * scale)
        assert (stop_adv[i][~valid] == 0).all()
    assert (out.value - v_bar).abs().max() > 0  # the critic's values differ across lengths
    terms = rl.old_terms(roll, adv, adv, stop_adv)
    torch.testing.assert_close(terms.stop_advantages, roll.flat(stop_adv))
    *_, stop_g = rl._advantages(cfg, "grpo", roll)  # no critic, no baseline to replace
    assert stop_g is None
