"""The Meta-World backend: shapes, action mapping, reward, determinism and initial-state sets."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np
import pytest

pytest.importorskip("metaworld")

from lastr1.envs import EnvConfig, EpisodeSpec, make_env, resolve_tasks
from lastr1.envs import metaworld as mw
from lastr1.envs.base import SingleEnv, TaskSpec
from lastr1.envs.experts import make_expert

SIZE = 32


def _task(name: str) -> TaskSpec:
    return next(t for t in mw.suite_tasks("metaworld") if t.name == name)


@pytest.fixture(scope="module")
def reach():
    env = mw.make_single_env(_task("reach-v3"), EnvConfig(image_size=SIZE, wrist_view=True))
    yield env
    env.close()


def _rollout(env, init_set, index, actions):
    first = env.reset(init_set, index)
    rewards, states = [], []
    for a in actions:
        obs, reward, _ = env.step(a)
        rewards.append(reward)
        states.append(obs.privileged)
    return first, np.array(rewards), np.stack(states)


def test_suite_has_every_task_with_an_instruction():
    tasks = mw.suite_tasks("metaworld")
    assert len(tasks) == 50 and len({t.name for t in tasks}) == 50
    assert all(t.instruction and t.instruction == mw.INSTRUCTIONS[t.name] for t in tasks)
    assert [t.index for t in tasks] == list(range(50))
    assert [t.name for t in mw.default_tasks("metaworld")] == list(mw.DEFAULT_TASKS)
    with pytest.raises(ValueError, match="suite"):
        mw.suite_tasks("libero_spatial")


def test_observation_shapes_and_dtypes(reach):
    assert isinstance(reach, SingleEnv)
    obs = reach.reset("train", 0)
    assert obs.images.shape == (2, SIZE, SIZE, 3) and obs.images.dtype == np.uint8
    assert obs.images.std() > 5  # a rendered scene, not a blank buffer
    assert obs.proprio.shape == (4,) and obs.proprio.dtype == np.float32
    assert obs.privileged.shape == (39,) and obs.privileged.dtype == np.float32
    np.testing.assert_array_equal(obs.proprio, obs.privileged[:4])
    assert np.abs(obs.privileged[-3:]).sum() > 0  # goal is visible in the privileged state
    assert reach.num_init_states("eval") == 50 and reach.num_init_states("train") >= 1000


def test_action_mapping_moves_hand_and_ignores_rotation(reach):
    reach.reset("eval", 0)
    start = reach.step(np.zeros(7))[0].proprio.copy()
    moved = start
    for _ in range(10):
        moved = reach.step(np.array([1.0, 0, 0, 0, 0, 0, 0]))[0].proprio
    assert moved[0] - start[0] > 0.03 and abs(moved[1] - start[1]) < 0.01  # +x only
    _, _, states_a = _rollout(reach, "eval", 0, [np.array([0, 0.5, 0, 0, 0, 0, -1.0])] * 5)
    _, _, states_b = _rollout(reach, "eval", 0, [np.array([0, 0.5, 0, 0.9, -0.9, 0.9, -1.0])] * 5)
    np.testing.assert_array_equal(states_a, states_b)  # rotation dims 3..5 have no effect
    _, _, closed = _rollout(reach, "eval", 0, [np.array([0, 0, 0, 0, 0, 0, 1.0])] * 10)
    assert closed[-1, 3] < states_a[-1, 3] - 0.2  # gripper +1 closes (opening shrinks)


def test_same_start_same_trajectory(reach):
    actions = np.random.default_rng(0).uniform(-1, 1, size=(12, 7))
    first_a, rew_a, states_a = _rollout(reach, "train", 3, actions)
    _rollout(reach, "eval", 7, actions[::-1])  # something else in between
    first_b, rew_b, states_b = _rollout(reach, "train", 3, actions)
    np.testing.assert_array_equal(first_a.images, first_b.images)
    np.testing.assert_array_equal(first_a.privileged, first_b.privileged)
    np.testing.assert_array_equal(rew_a, rew_b)
    np.testing.assert_array_equal(states_a, states_b)
    other = mw.make_single_env(_task("reach-v3"), EnvConfig(image_size=SIZE, wrist_view=True))
    try:  # a fresh simulator gives the same start too
        np.testing.assert_array_equal(other.reset("train", 3).images, first_a.images)
    finally:
        other.close()
    assert not np.array_equal(reach.reset("train", 4).privileged, first_a.privileged)
    assert not np.array_equal(reach.reset("eval", 3).privileged, first_a.privileged)


def test_unrendered_steps_keep_the_simulation_and_observe_renders_it(reach):
    actions = np.random.default_rng(1).uniform(-1, 1, size=(6, 7))
    reach.reset("train", 2)
    rendered = [reach.step(a) for a in actions]
    reach.reset("train", 2)
    skipped = [reach.step(a, render=False) for a in actions]
    assert all(obs.images is None for obs, _, _ in skipped)
    for (a, ra, sa), (b, rb, sb) in zip(rendered, skipped, strict=True):
        np.testing.assert_array_equal(a.privileged, b.privileged)
        np.testing.assert_array_equal(a.proprio, b.proprio)
        assert (ra, sa) == (rb, sb)
    np.testing.assert_array_equal(reach.observe().images, rendered[-1][0].images)


def test_train_and_eval_sets_are_disjoint(reach, monkeypatch):
    eval_vecs = []
    for i in range(reach.num_init_states("eval")):
        reach.reset("eval", i)
        eval_vecs.append(reach.rand_vec())
    eval_vecs = np.stack(eval_vecs)
    np.testing.assert_array_equal(eval_vecs, mw._eval_rand_vecs("reach-v3"))
    for i in range(20):
        reach.reset("train", i)
        gap = np.abs(eval_vecs - reach.rand_vec()).max(axis=1).min()
        assert gap >= mw.MIN_TRAIN_EVAL_DISTANCE
    # The guarantee is by construction: a train state equal to an eval state is skipped.
    reach.reset("train", 0)
    train0 = reach.rand_vec()
    monkeypatch.setattr(
        mw, "_eval_rand_vecs", lambda name, scale=1.0: np.concatenate([eval_vecs, train0[None]])
    )
    reach.reset("train", 0)
    assert np.abs(reach.rand_vec() - train0).max() > mw.MIN_TRAIN_EVAL_DISTANCE


def test_placement_scale_shrinks_every_range_about_its_centre():
    """Scale 0.3 keeps each draw inside the shrunk box, keeps reach's own rejection rule (goal 15 cm
    from the puck) and keeps train and eval disjoint; scale 1 is the benchmark's placement."""
    small = mw.make_single_env(_task("reach-v3"), EnvConfig(image_size=SIZE, placement_scale=0.3))
    full = mw.make_single_env(_task("reach-v3"), EnvConfig(image_size=SIZE))
    try:
        space = small._env._random_reset_space
        low, high = np.asarray(space.low), np.asarray(space.high)
        centre, half = (low + high) / 2, (high - low) / 2
        eval_vecs = mw._eval_rand_vecs("reach-v3", 0.3)
        vecs = []
        for i in range(30):
            small.reset("train", i)
            vec = small.rand_vec()
            vecs.append(vec)
            assert np.all(np.abs(vec - centre) <= 0.3 * half + 1e-9)
            assert np.linalg.norm(vec[:2] - vec[3:5]) >= 0.15
            assert np.abs(eval_vecs - vec).max(axis=1).min() >= mw.MIN_TRAIN_EVAL_DISTANCE
            np.testing.assert_allclose(small._env._target_pos, vec[3:])  # the goal really moved there
        spread = np.ptp(np.stack(vecs), axis=0)
        assert np.all(spread[half > 0] > 0.1 * half[half > 0])  # still random, not collapsed
        full.reset("train", 0)
        assert np.any(np.abs(full.rand_vec() - centre) > 0.3 * half)  # the full box is used at 1
    finally:
        small.close()
        full.close()
    with pytest.raises(ValueError, match="placement_scale"):
        EnvConfig(placement_scale=0.0)
    with pytest.raises(ValueError, match="Meta-World only"):
        EnvConfig(backend="toy", placement_scale=0.5)


def test_binary_success_reward_with_expert(reach):
    expert = make_expert("metaworld", _task("reach-v3"), reach)
    obs = reach.reset("eval", 0)
    rewards, successes = [], []
    for _ in range(150):
        obs, reward, success = reach.step(expert.act(obs))
        rewards.append(reward)
        successes.append(success)
        if len(successes) > 3 and all(successes[-4:]):
            break
    first = successes.index(True)
    assert rewards[first] == 1.0 and sum(rewards) == 1.0 and set(rewards) <= {0.0, 1.0}


def test_bad_inputs_give_clear_errors(reach):
    with pytest.raises(ValueError, match="nope-v3"):
        resolve_tasks(EnvConfig(tasks=["nope-v3"]))
    with pytest.raises(ValueError, match="not a Meta-World v3 task"):
        mw.make_single_env(TaskSpec("metaworld", "nope-v3", "x", 10), EnvConfig(image_size=SIZE))
    reach.reset("eval", 0)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        reach.step(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        reach.step(np.full(7, np.nan))
    with pytest.raises(ValueError, match="init_index=50"):
        reach.reset("eval", 50)
    fresh = mw.make_single_env(_task("reach-v3"), EnvConfig(image_size=SIZE))
    try:
        with pytest.raises(RuntimeError, match="reset"):
            fresh.step(np.zeros(7))
    finally:
        fresh.close()


def test_vector_env_sync():
    cfg = EnvConfig(backend="metaworld", tasks=["reach-v3"], num_envs=2, image_size=SIZE)
    with make_env(cfg) as env:
        obs = env.reset([EpisodeSpec(task=0, init_set="eval", init_index=1), EpisodeSpec(task=0)])
        assert obs.images.shape == (2, 1, SIZE, SIZE, 3)
        assert obs.instruction == [mw.INSTRUCTIONS["reach-v3"]] * 2
        res = env.step(np.zeros((2, 7)))
        assert res.obs.privileged.shape == (2, 39) and res.reward.dtype == np.float32
        assert env.num_init_states(0, "eval") == 50
