"""The shared vector env (sync and spawn-subprocess) on the GL-free toy backend."""

from __future__ import annotations

import numpy as np
import pytest

from lastr1.envs import EnvConfig, EpisodeSpec, make_env, resolve_tasks


def _env(**kw):
    return make_env(EnvConfig(backend="toy", image_size=32, **kw))


def _rollout(env, episodes, steps=8):
    obs = env.reset(episodes)
    rng = np.random.default_rng(0)
    rewards, images = [], [obs.images]
    for _ in range(steps):
        res = env.step(rng.uniform(-1, 1, size=(env.num_envs, 7)))
        rewards.append(res.reward)
        images.append(res.obs.images)
    return np.stack(rewards), np.stack(images)


def test_shapes_and_dtypes():
    with _env(num_envs=3, wrist_view=True) as env:
        obs = env.reset([EpisodeSpec(task=i % 2) for i in range(3)])
        assert obs.images.shape == (3, 2, 32, 32, 3) and obs.images.dtype == np.uint8
        assert obs.proprio.dtype == np.float32 and obs.proprio.shape[0] == 3
        assert obs.instruction[1] == "move the gripper to the blue target"
        assert obs.task.tolist() == [0, 1, 0]
        res = env.step(np.zeros((3, 7)))
        assert res.reward.shape == (3,) and res.info["success"].dtype == bool


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_same_spec_same_trajectory(vector):
    specs = [EpisodeSpec(task=0, init_set="eval", init_index=3), EpisodeSpec(task=1, init_index=5)]
    with _env(num_envs=2, vector=vector) as env:
        r1, i1 = _rollout(env, specs)
        r2, i2 = _rollout(env, specs)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(r1, r2)


def test_async_matches_sync():
    specs = [EpisodeSpec(task=1, init_index=2), EpisodeSpec(task=0, init_set="eval", init_index=0)]
    with _env(num_envs=2, vector="sync") as env:
        sync = _rollout(env, specs)
    with _env(num_envs=2, vector="async") as env:
        asyn = _rollout(env, specs)
    np.testing.assert_array_equal(sync[1], asyn[1])


def test_train_and_eval_sets_disjoint():
    with _env(num_envs=1) as env:
        first = lambda s, i: env.reset([EpisodeSpec(0, s, i)]).privileged[0].copy()  # noqa: E731
        evals = {first("eval", i).tobytes() for i in range(env.num_init_states(0, "eval"))}
        trains = {first("train", i).tobytes() for i in range(200)}
    assert len(evals) == 50 and not evals & trains


def test_episode_ends_on_success_and_stays_done():
    with _env(num_envs=1) as env:
        env.reset([EpisodeSpec(0, "eval", 0)])
        slot = env._slots[0].current
        total = 0.0
        for _ in range(25):
            res = env.step(slot.expert_action()[None])
            total += float(res.reward[0])
            if res.terminated[0]:
                break
        assert res.terminated[0] and res.info["success"][0] and total == 1.0
        after = env.step(np.ones((1, 7)))
        assert after.reward[0] == 0.0 and not after.info["active"][0] and after.terminated[0]


def test_truncation_at_max_steps():
    with make_env(EnvConfig(backend="toy", image_size=16, num_envs=1, max_steps=3)) as env:
        env.reset([EpisodeSpec(0)])
        flags = [bool(env.step(np.zeros((1, 7))).truncated[0]) for _ in range(3)]
    assert flags == [False, False, True]


def test_bad_inputs_are_clear():
    with _env(num_envs=2) as env:
        with pytest.raises(ValueError, match="one EpisodeSpec per env"):
            env.reset([EpisodeSpec(0)])
        with pytest.raises(ValueError, match="EpisodeSpec.task=5 out of range"):
            env.reset([EpisodeSpec(5), EpisodeSpec(0)])
        env.reset([EpisodeSpec(0), EpisodeSpec(1)])
        with pytest.raises(ValueError, match=r"shape \(2, 7\)"):
            env.step(np.zeros((2, 4)))
        with pytest.raises(ValueError, match="NaN"):
            env.step(np.full((2, 7), np.nan))
    with pytest.raises(ValueError, match="init_set='test'"):
        EpisodeSpec(0, "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown task 'reach-green'"):
        resolve_tasks(EnvConfig(backend="toy", tasks=["reach-green"]))


def test_async_worker_error_is_reported():
    with (
        _env(num_envs=1, vector="async") as env,
        pytest.raises(RuntimeError, match="init_index=999999 out of"),
    ):
        env.reset([EpisodeSpec(0, "eval", 999_999)])


def test_episode_step_budget_overrides_the_task_budget():
    """EpisodeSpec.max_steps (RL rollouts' longer budget) applies to its slot only."""
    with make_env(EnvConfig(backend="toy", image_size=16, num_envs=2, max_steps=5)) as env:
        env.reset([EpisodeSpec(0, max_steps=2), EpisodeSpec(0)])
        truncated = [env.step(np.zeros((2, 7))).truncated.tolist() for _ in range(5)]
    assert [t[0] for t in truncated] == [False, True, True, True, True]  # done slots stay done
    assert [t[1] for t in truncated] == [False, False, False, False, True]
    with pytest.raises(ValueError, match="max_steps=0"):
        EpisodeSpec(0, max_steps=0)


def _step_by_step(env, specs, chunks):
    """Reference for step_chunk: the same chunks through single steps, stopping at episode ends."""
    env.reset(specs)
    out = []
    for chunk in chunks:
        reward = np.zeros(env.num_envs)
        taken = np.zeros(env.num_envs, dtype=np.int64)
        for c in range(chunk.shape[1]):
            res = env.step(chunk[:, c])
            reward += res.reward
            taken += res.info["active"]
            if (res.terminated | res.truncated).all():
                break
        out.append((res.obs.images, res.obs.proprio, reward, taken, res.terminated, res.truncated))
    return out


@pytest.mark.parametrize("vector", ["sync", "async"])
def test_step_chunk_equals_stepping_one_action_at_a_time(vector):
    # slot 0 heads for its target and succeeds inside a chunk; slot 1 hits max_steps inside one
    specs = [EpisodeSpec(task=0, init_index=4), EpisodeSpec(task=1, init_index=7, max_steps=11)]
    rng = np.random.default_rng(3)
    chunks = [rng.uniform(-1, 1, size=(2, 4, 7)) for _ in range(6)]
    with _env(num_envs=2, vector=vector) as env:
        start = env.reset(specs).privileged[0]  # [agent xy, target-0 xy, ...]
        for ch in chunks:
            ch[0, :, :2] = np.clip((start[2:4] - start[:2]) / 0.1 / 5, -1, 1)
        expected = _step_by_step(env, specs, chunks)
        env.reset(specs)
        for chunk, (images, proprio, reward, taken, term, trunc) in zip(chunks, expected, strict=True):
            res = env.step_chunk(chunk)
            np.testing.assert_array_equal(res.obs.images, images)
            np.testing.assert_array_equal(res.obs.proprio, proprio)
            np.testing.assert_array_equal(res.reward, reward)
            np.testing.assert_array_equal(res.info["chunk_steps"], taken)
            np.testing.assert_array_equal(res.terminated, term)
            np.testing.assert_array_equal(res.truncated, trunc)
    steps_0 = sum(int(e[3][0]) for e in expected)
    assert expected[-1][4][0] and steps_0 % 4 != 0, "slot 0 must succeed inside a chunk"
    assert expected[-1][5][1] and sum(int(e[3][1]) for e in expected) == 11, "slot 1 truncates at 11"


def test_step_chunk_records_every_frame_of_the_first_slots():
    specs = [EpisodeSpec(task=0, init_index=1), EpisodeSpec(task=1, init_index=2, max_steps=6)]
    chunk = np.random.default_rng(0).uniform(-1, 1, size=(2, 4, 7))
    with _env(num_envs=2) as env:
        env.reset(specs)
        singles = [env.step(chunk[:, c]).obs.images[:, 0] for c in range(4)]
        env.reset(specs)
        res = env.step_chunk(chunk, record=1)
        assert len(res.frames) == 1 and len(res.frames[0]) == 4
        for c in range(4):
            np.testing.assert_array_equal(res.frames[0][c], singles[c][0])
        res = env.step_chunk(chunk, record=2)  # slot 1 has 2 steps of budget left
        assert [len(f) for f in res.frames] == [4, 2]


def test_step_chunk_rejects_bad_shapes_with_the_expected_shape():
    with _env(num_envs=2) as env:
        env.reset([EpisodeSpec(task=0), EpisodeSpec(task=1)])
        with pytest.raises(ValueError, match=r"\(2, C, 7\)"):
            env.step_chunk(np.zeros((2, 7)))
        with pytest.raises(ValueError, match="NaN"):
            env.step_chunk(np.full((2, 3, 7), np.nan))


def _chunk_trajectory(env, specs, chunks, groups):
    """Step ``chunks`` through send_chunk/recv_chunk, one request per group of slots in flight at once."""
    env.reset(specs)
    out = []
    for chunk in chunks:
        live = [g for g in ([i for i in grp if not env.done[i]] for grp in groups) if g]
        if not live:
            break
        for g in live:
            env.send_chunk(chunk, slots=g)
        results = [env.recv_chunk() for _ in live]
        last = results[-1]
        reward = sum(r.reward for r in results)
        steps = sum(r.info["chunk_steps"] for r in results)
        out.append((last.obs.images, reward, steps, last.terminated, last.truncated))
    return out


@pytest.mark.parametrize(("vector", "workers"), [("sync", 0), ("async", 1), ("async", 2)])
def test_split_chunks_on_slot_groups_equal_step_chunk(vector, workers):
    """send_chunk on groups of slots, with several requests in flight (one worker may hold both
    groups), gives the trajectories of one step_chunk over all slots."""
    specs = [EpisodeSpec(task=i % 2, init_index=i, max_steps=9 + 3 * i) for i in range(3)]
    rng = np.random.default_rng(5)
    chunks = [rng.uniform(-1, 1, size=(3, 4, 7)) for _ in range(5)]
    with _env(num_envs=3) as env:
        expected = _chunk_trajectory(env, specs, chunks, [[0, 1, 2]])
    with _env(num_envs=3, vector=vector, workers=workers) as env:
        got = _chunk_trajectory(env, specs, chunks, [[2], [0, 1]])
    per_slot_steps = sum(e[2] for e in expected)
    assert len(set(per_slot_steps.tolist())) == 3 and (expected[-1][3] | expected[-1][4]).all()  # ends differ
    for exp, res in zip(expected, got, strict=True):
        for a, b in zip(exp, res, strict=True):
            np.testing.assert_array_equal(a, b)


def test_split_chunks_refuse_misuse_with_the_fix():
    with _env(num_envs=2) as env:
        env.reset([EpisodeSpec(task=0), EpisodeSpec(task=1)])
        with pytest.raises(RuntimeError, match="without a chunk in flight"):
            env.recv_chunk()
        env.send_chunk(np.zeros((2, 3, 7)), slots=[1])
        with pytest.raises(ValueError, match=r"slots \[1\].*already have a chunk in flight"):
            env.send_chunk(np.zeros((2, 3, 7)), slots=[0, 1])
        with pytest.raises(RuntimeError, match="recv_chunk"):
            env.step(np.zeros((2, 7)))
        with pytest.raises(RuntimeError, match="recv_chunk"):
            env.reset([EpisodeSpec(task=0), EpisodeSpec(task=1)])
        res = env.recv_chunk()
        assert res.info["active"].tolist() == [False, True] and res.info["chunk_steps"].tolist() == [0, 3]
    with pytest.raises(ValueError, match="env.workers=3 must be in"):
        EnvConfig(backend="toy", num_envs=2, vector="async", workers=3)
    with pytest.raises(ValueError, match="applies to env.vector=async"):
        EnvConfig(backend="toy", num_envs=2, workers=1)
