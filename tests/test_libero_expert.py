"""The scripted LIBERO expert behind ``make_expert``: which tasks it takes, that it solves one, the
collision geometry it plans with, and ``lastr1 make-demos --env libero`` end to end.

One libero_object env (rendering off: the expert reads the simulator) is shared; make-demos builds
its own at 32 px. About a minute on a 2-core CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np
import pytest

from lastr1.envs.config import EnvConfig

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="LIBERO stack not installed"),
    pytest.mark.libero,
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("libero_cache"))


@pytest.fixture(scope="module")
def env(cache_dir: str):
    """libero_object task 0 (alphabet soup into the basket), cameras off."""
    from lastr1.envs import libero as L

    cfg = EnvConfig(backend="libero", suite="libero_object", image_size=32, cache_dir=cache_dir)
    single = L.make_single_env(L.suite_tasks("libero_object")[0], cfg)
    single.set_rendering(False)
    yield single
    single.close()


def test_hook_refuses_goals_it_cannot_script(cache_dir: str) -> None:
    from lastr1.envs.experts import libero as X
    from lastr1.envs.libero import suite_tasks

    goal_tasks = suite_tasks("libero_goal")
    drawer, bowl_on_plate = goal_tasks[0], goal_tasks[8]
    assert X.bddl_goal(drawer, cache_dir) == [["open", "wooden_cabinet_1_middle_region"]]
    assert X.supports(X.bddl_goal(bowl_on_plate, cache_dir))
    two_goals = suite_tasks("libero_10")[0]  # both soup and sauce into the basket
    assert len(X.bddl_goal(two_goals, cache_dir)) == 2 and not X.supports(X.bddl_goal(two_goals, cache_dir))
    # the hook reads the goal from the env's simulator; an env that carries this BDDL goal is enough
    stub = SimpleNamespace(
        sim_env=SimpleNamespace(parsed_problem={"goal_state": X.bddl_goal(drawer, cache_dir)})
    )
    with pytest.raises(ValueError, match=r"open_the_middle_drawer_of_the_cabinet.*not one \(on\|in"):
        X.make_expert(drawer, stub)
    with pytest.raises(ValueError, match="needs a LiberoEnv"):
        X.make_expert(drawer, SimpleNamespace())


def test_expert_solves_a_libero_object_task(env) -> None:
    from lastr1.envs.experts import ScriptedExpert, make_expert

    expert = make_expert("libero", env.task, env)  # through the generic backend hook
    assert isinstance(expert, ScriptedExpert)
    obs = env.reset("eval", 0)
    assert obs.images.shape == (1, 32, 32, 3) and not obs.images.any()  # rendering off: black frames
    expert.reset()
    steps = 0
    while steps < env.task.max_steps:
        action = expert.act(obs)
        assert action.shape == (7,) and action.dtype == np.float32 and np.abs(action).max() <= 1.0
        obs, reward, success = env.step(action)
        steps += 1
        if success:
            break
    assert success, f"expert failed {env.task.name} from eval state 0 (phase {expert.expert.phase})"
    assert reward == 1.0 and steps < env.task.max_steps
    inner = env.sim_env  # the object really lies in the basket's region, not just a flag
    soup = inner.sim.data.body_xpos[inner.obj_body_id["alphabet_soup_1"]]
    basket = inner.sim.data.body_xpos[inner.obj_body_id["basket_1"]]
    assert np.linalg.norm(soup[:2] - basket[:2]) < 0.07


def test_obstacle_columns_see_objects_and_honour_exclusions(env) -> None:
    from lastr1.envs.experts.libero_geometry import Obstacles, object_points

    env.reset("eval", 0)
    inner = env.sim_env
    soup = inner.obj_body_id["alphabet_soup_1"]
    pts = object_points(inner.sim, soup)
    lo, hi = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)  # the can's own xy footprint
    centre, half, axis = (lo + hi) / 2, (hi - lo) / 2, np.array([1.0, 0.0])
    robot = int(inner.sim.model._model.body_rootid[inner.sim.model.body_name2id("robot0_base")])
    with_soup = Obstacles(inner.sim, {robot}).top_in(centre, axis, *half)
    without = Obstacles(inner.sim, {robot, soup}).top_in(centre, axis, *half)
    assert with_soup == pytest.approx(pts[:, 2].max(), abs=1e-6)
    assert without <= pts[:, 2].min() + 1e-3  # only the floor under it
    far_away = Obstacles(inner.sim, {robot}).top_in(np.array([5.0, 5.0]), axis, 0.01, 0.01)
    assert far_away == -np.inf


def test_make_demos_writes_a_libero_episode(tmp_path: Path, cache_dir: str) -> None:
    from lastr1.commands import make_demos
    from lastr1.config import load_config
    from lastr1.data import load_dataset

    out = tmp_path / "demos"
    args = [
        "env.backend=libero",
        "env.suite=libero_object",
        "env.tasks=0",
        "env.image_size=32",
        f"env.cache_dir={cache_dir}",
        f"out={out}",
    ]
    assert make_demos.run(load_config(make_demos.Config, None, args)) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backend"] == "libero" and meta["suite"] == "libero_object" and meta["num_episodes"] == 1
    (episode,) = load_dataset(out)
    assert (
        episode.task == "pick_up_the_alphabet_soup_and_place_it_in_the_basket" and episode.init_set == "train"
    )
    assert episode.images.shape == (len(episode), 1, 32, 32, 3) and episode.images[0].any()  # rendered
    assert episode.success[-1] and not episode.success[:-1].any() and episode.rewards.sum() == 1.0
    assert (out / "videos" / f"{episode.task}.mp4").stat().st_size > 0
