"""Meta-World v3 behind the :class:`~lastr1.envs.base.SingleEnv` protocol.

Why this shape: Meta-World is our CPU-scale benchmark (fast physics, scripted experts), so one
module turns its 50 single-task environments into reproducible, rendered, language-labelled
episodes that the shared vector env (:mod:`lastr1.envs.vector`) batches.

Conventions (see ``docs/data_format.md`` for how they reach the demo files):

* **Action mapping.** Our actions are 7-dim in ``[-1, 1]``: ``[dx, dy, dz, droll, dpitch, dyaw,
  gripper]``. Meta-World's are 4-dim ``[dx, dy, dz, grip]`` with a fixed hand orientation, so we send
  ``[a[0], a[1], a[2], a[6]]`` and ignore the rotation dims 3..5. One unit of xyz moves the hand's
  mocap target by 1 cm per step; ``gripper = +1`` closes and ``-1`` opens (LIBERO's sign too).
* **Observations.** ``images``: the agent view (:data:`AGENT_CAMERA`, our own free camera framing
  the workspace), plus Meta-World's wrist camera :data:`WRIST_CAMERA` when ``cfg.wrist_view``. All
  upright (Meta-World's fixed scene cameras are mounted upside down; we rotate them by 180 degrees;
  the wrist view shows the workspace ahead of the gripper at the top).
  ``proprio``: hand xyz + gripper opening in [0, 1] (4 floats). ``privileged``: Meta-World's full
  39-dim state with the goal visible (the multi-task "MT" convention the scripted experts read).
* **Reward.** Binary: 1.0 on the step where ``info["success"]`` first becomes true, else 0.0.
* **Initial states.** A state is Meta-World's random object/goal placement (its ``rand_vec``), drawn
  by the env's own sampler from a seed derived from ``(task, set, index)``, so ``reset`` is a pure
  function of its arguments. ``train`` and ``eval`` use disjoint seed streams, and a ``train`` state
  whose placement lies within :data:`MIN_TRAIN_EVAL_DISTANCE` of any ``eval`` state is skipped (the
  next seed of the same index is used), so the two sets are disjoint by construction.
  ``cfg.placement_scale < 1`` shrinks every placement range about its centre (same seeds; see
  :func:`_seeded_reset`).
"""

from __future__ import annotations

import atexit
import os
import pickle
import weakref
import zlib
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

# Headless CPU rendering: must be decided before mujoco is imported anywhere.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np

from lastr1.envs.base import ACTION_DIM, InitSet, SingleObs, TaskSpec
from lastr1.envs.config import EnvConfig
from lastr1.envs.vector import BatchedEnv, build_vector_env

SUITES = ("metaworld",)

# Our English instruction for every Meta-World v3 task (the package ships names only).
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "pick up the basketball and dunk it into the hoop",
    "bin-picking-v3": "pick up the cube and place it in the other bin",
    "box-close-v3": "pick up the lid and put it on the box",
    "button-press-topdown-v3": "press the button down from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall down from the top",
    "button-press-v3": "push the button in from the front",
    "button-press-wall-v3": "push the button behind the wall in from the front",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out from under the coffee machine to the goal",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial a quarter turn",
    "disassemble-v3": "pick the nut up off the peg",
    "door-close-v3": "push the door closed",
    "door-lock-v3": "turn the door lock down to lock the door",
    "door-open-v3": "pull the door open",
    "door-unlock-v3": "turn the door lock to unlock the door",
    "hand-insert-v3": "move the gripper down into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "turn the faucet handle to open the faucet",
    "faucet-close-v3": "turn the faucet handle to close the faucet",
    "hammer-v3": "pick up the hammer and hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the puck out of the hole and lift it to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the goal",
    "peg-insert-side-v3": "pick up the peg and insert it sideways into the hole",
    "peg-unplug-side-v3": "pull the peg sideways out of the hole",
    "soccer-v3": "push the soccer ball into the goal",
    "stick-push-v3": "grab the stick and use it to push the bottle to the goal",
    "stick-pull-v3": "grab the stick and use it to pull the bottle to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck backwards to the goal",
    "reach-v3": "move the gripper to the goal",
    "reach-wall-v3": "reach over the wall and move the gripper to the goal",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the edge of the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

# The scripted experts solved 50/50 train states of each of these in this env (measured; expert
# steps to success: median 47 / 66 / 88 / 78). Each is a short, single-stage motion whose target is
# visible in the agent view, so a small policy can learn it from one demo plus RL on CPU.
DEFAULT_TASKS: tuple[str, ...] = ("reach-v3", "button-press-topdown-v3", "drawer-open-v3", "drawer-close-v3")

# Our episode budget: experts finish every default task in < 100 steps (medians 50-90); 200 leaves a
# learned policy twice that. Meta-World's own horizon (500) is one `env.max_steps=500` away.
MAX_STEPS = 200
NUM_EVAL_STATES = 50
NUM_TRAIN_STATES = 100_000  # generated on demand; the number only bounds the index
# A train placement closer than this (max-norm over the rand_vec, metres) to an eval one is skipped.
MIN_TRAIN_EVAL_DISTANCE = 1e-3
_SET_STREAM = {"train": 0, "eval": 1}


@dataclass(frozen=True)
class FreeCamera:
    """A camera defined by what it looks at (MuJoCo ``mjCAMERA_FREE``), not by the model XML."""

    lookat: tuple[float, float, float]
    distance: float
    azimuth: float  # degrees
    elevation: float  # degrees, negative looks down


# Meta-World's fixed cameras show the whole table, leaving the objects a few pixels wide at 64 px;
# "workspace" frames the reachable area (objects, goals, hand) from the front-right instead.
# Any Meta-World camera name works here too ("corner", "corner2", "corner3", "corner4", "topview").
CAMERAS: dict[str, FreeCamera] = {
    "workspace": FreeCamera(lookat=(0.0, 0.7, 0.12), distance=1.0, azimuth=135.0, elevation=-30.0),
}
AGENT_CAMERA = "workspace"
WRIST_CAMERA = "gripperPOV"
# Meta-World's fixed scene cameras are mounted upside down: a 180-degree rotation makes them upright.
# The wrist camera is left as rendered: the workspace ahead of the gripper (+y) is at the top.
_ROTATE_180 = frozenset({"corner", "corner2", "corner3", "corner4"})
# CPU (llvmpipe) rendering: shadows, multisampling and the table's reflection pass cost 2-5x per
# frame for little visible information (reflection off: 13.5 -> 8.3 ms at 64 px, measured).
SHADOW_SIZE = 0
OFFSCREEN_SAMPLES = 0
REFLECTIONS = False

_LIVE_ENVS: weakref.WeakSet[MetaWorldEnv] = weakref.WeakSet()


def _close_live_envs() -> None:
    for env in list(_LIVE_ENVS):
        env.close()


@lru_cache(maxsize=1)
def _register_exit_hook() -> None:
    """Free GL contexts at exit before mujoco's own atexit hook terminates EGL (hooks run LIFO, so
    this must be registered after mujoco's EGL module was imported); else EGL errors spam stderr."""
    atexit.register(_close_live_envs)


def suite_tasks(suite: str) -> list[TaskSpec]:
    """All 50 Meta-World v3 tasks of the installed package, in its canonical order."""
    _check_suite(suite)
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    names = list(ALL_V3_ENVIRONMENTS)
    missing = [n for n in names if n not in INSTRUCTIONS]
    if missing:
        raise RuntimeError(f"metaworld ships tasks without an instruction in lastr1: {missing}")
    return [TaskSpec("metaworld", n, INSTRUCTIONS[n], MAX_STEPS, index=i) for i, n in enumerate(names)]


def default_tasks(suite: str) -> list[TaskSpec]:
    """The small CPU-demo set :data:`DEFAULT_TASKS`."""
    by_name = {t.name: t for t in suite_tasks(suite)}
    return [by_name[n] for n in DEFAULT_TASKS]


def _check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise ValueError(f"env.suite={suite!r} is not a Meta-World suite; use one of {list(SUITES)}")


def make_single_env(task: TaskSpec, cfg: EnvConfig) -> MetaWorldEnv:
    """The picklable factory the vector env calls (once per slot and task)."""
    return MetaWorldEnv(task, cfg)


def make_vector_env(cfg: EnvConfig, tasks: list[TaskSpec]) -> BatchedEnv:
    """Batch ``cfg.num_envs`` slots; each keeps one env per task (Meta-World envs are small)."""
    return build_vector_env(cfg, tasks, make_single_env, max_cached_per_slot=len(tasks))


def _state_seed(task: str, init_set: str, index: int, attempt: int) -> int:
    """Seed of one candidate placement; the set is part of the entropy, so streams never overlap."""
    entropy = [zlib.crc32(task.encode()), _SET_STREAM[init_set], index, attempt]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class MetaWorldEnv:
    """One Meta-World task with offscreen rendering (see the module docstring for conventions)."""

    def __init__(self, task: TaskSpec, cfg: EnvConfig):
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task.name not in ALL_V3_ENVIRONMENTS:
            known = ", ".join(list(ALL_V3_ENVIRONMENTS)[:6])
            raise ValueError(
                f"env.tasks: {task.name!r} is not a Meta-World v3 task; known: {known}, ... "
                "(`lastr1 envs --backend metaworld` lists all 50)"
            )
        self.task = task
        self.placement_scale = cfg.placement_scale
        self.image_size = cfg.image_size
        self.cameras = [AGENT_CAMERA, WRIST_CAMERA] if cfg.wrist_view else [AGENT_CAMERA]
        self._env: Any = _raw_env(task.name)
        # Our vector env owns the horizon; Meta-World would raise after its own 500 steps.
        self._env.max_path_length = 10**9
        model = self._env.model
        model.vis.quality.shadowsize = SHADOW_SIZE
        model.vis.quality.offsamples = OFFSCREEN_SAMPLES
        try:
            self._renderer: Any = mujoco.Renderer(model, height=self.image_size, width=self.image_size)
        except mujoco.FatalError as exc:
            raise RuntimeError(
                f"MuJoCo could not create an offscreen GL context ({exc}); set MUJOCO_GL=egl and "
                "PYOPENGL_PLATFORM=egl before anything imports mujoco"
            ) from None
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = SHADOW_SIZE > 0
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = REFLECTIONS
        _register_exit_hook()
        self._free_cameras: dict[str, Any] = {}
        self._succeeded = False
        self._was_reset = False
        self._state = np.zeros(0)  # Meta-World's last state vector, for observe()
        self._closed = False
        _LIVE_ENVS.add(self)

    # -- initial states ---------------------------------------------------------------------------
    def num_init_states(self, init_set: InitSet) -> int:
        if init_set not in _SET_STREAM:
            raise ValueError(f"init_set={init_set!r} is not a known initial-state set; use 'train' or 'eval'")
        return NUM_EVAL_STATES if init_set == "eval" else NUM_TRAIN_STATES

    def _sample_reset(self, init_set: str, index: int, attempt: int) -> np.ndarray:
        return _seeded_reset(self._env, self.task.name, init_set, index, attempt, self.placement_scale)

    def rand_vec(self) -> np.ndarray:
        """The current placement vector (objects and goal) Meta-World drew at the last reset."""
        return np.asarray(self._env._last_rand_vec, dtype=np.float64).copy()

    def reset(self, init_set: InitSet, init_index: int) -> SingleObs:
        n = self.num_init_states(init_set)
        if not 0 <= init_index < n:
            raise ValueError(f"init_index={init_index} out of range for the {init_set!r} set ({n} states)")
        if init_set == "eval":
            obs = self._sample_reset("eval", init_index, 0)
        else:
            eval_vecs = _eval_rand_vecs(self.task.name, self.placement_scale)
            for attempt in range(1000):
                obs = self._sample_reset("train", init_index, attempt)
                gap = np.abs(eval_vecs - self.rand_vec()).max(axis=1).min()
                if gap >= MIN_TRAIN_EVAL_DISTANCE:
                    break
            else:  # pragma: no cover - would need 1000 consecutive near-collisions
                raise RuntimeError(f"{self.task.name}: no train state disjoint from eval at {init_index}")
        self._succeeded = False
        self._was_reset = True
        self._state = obs
        return self._observe(obs)

    # -- stepping ---------------------------------------------------------------------------------
    def step(self, action: np.ndarray, render: bool = True) -> tuple[SingleObs, float, bool]:
        if not self._was_reset:
            raise RuntimeError("step() before reset(): call reset(init_set, init_index) first")
        act = np.asarray(action, dtype=np.float64)
        if act.shape != (ACTION_DIM,):
            raise ValueError(
                f"action must have shape ({ACTION_DIM},) (xyz, rotation, gripper), got {act.shape}"
            )
        if not np.all(np.isfinite(act)):
            raise ValueError("action contains NaN or inf; check the policy output")
        act = np.clip(act, -1.0, 1.0)
        mw_action = np.array([act[0], act[1], act[2], act[6]], dtype=np.float32)
        obs, _, _, _, info = self._env.step(mw_action)
        success = bool(info["success"])
        reward = 1.0 if success and not self._succeeded else 0.0
        self._succeeded |= success
        self._state = obs
        return (self._observe(obs) if render else self._unrendered(obs)), reward, success

    def observe(self) -> SingleObs:
        if not self._was_reset:
            raise RuntimeError("observe() before reset(): call reset(init_set, init_index) first")
        return self._observe(self._state)

    # -- observation ------------------------------------------------------------------------------
    def render(self, camera: str) -> np.ndarray:
        """One upright uint8 ``(H, W, 3)`` frame from a camera of :data:`CAMERAS` or of Meta-World."""
        self._renderer.update_scene(self._env.data, camera=self._camera(camera))
        img = self._renderer.render()
        return np.ascontiguousarray(img[::-1, ::-1]) if camera in _ROTATE_180 else img

    def _camera(self, name: str) -> Any:
        if name not in CAMERAS:
            return name
        if name not in self._free_cameras:
            import mujoco

            spec, cam = CAMERAS[name], mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            cam.lookat[:] = spec.lookat
            cam.distance, cam.azimuth, cam.elevation = spec.distance, spec.azimuth, spec.elevation
            self._free_cameras[name] = cam
        return self._free_cameras[name]

    def _observe(self, state: np.ndarray) -> SingleObs:
        obs = self._unrendered(state)
        obs.images = np.stack([self.render(cam) for cam in self.cameras])
        return obs

    @staticmethod
    def _unrendered(state: np.ndarray) -> SingleObs:
        """The observation without images: rendering is ~97 % of a step's cost at 64 px."""
        state = np.asarray(state, dtype=np.float32)
        return SingleObs(images=None, proprio=state[:4].copy(), privileged=state)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._renderer.close()
        self._env.close()
        _LIVE_ENVS.discard(self)


def _raw_env(task_name: str) -> Any:
    """A physics-only Meta-World env with the goal in its observation (the MT setting).

    ``set_task`` is Meta-World's public way to switch observability; the placement it carries is
    replaced at every reset by :func:`_seeded_reset`.
    """
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS
    from metaworld.types import Task

    cls = ALL_V3_ENVIRONMENTS[task_name]
    env: Any = cls()
    kwargs = {k: v for k, v in ML1_ARGS_KWARGS[task_name]["kwargs"].items() if k != "task_id"}
    kwargs.update(rand_vec=env._random_reset_space.low.copy(), env_cls=cls, partially_observable=False)
    env.set_task(Task(env_name=task_name, data=pickle.dumps(kwargs)))
    return env


def _seeded_reset(
    env: Any, task_name: str, init_set: str, index: int, attempt: int, scale: float = 1.0
) -> np.ndarray:
    """Reset with Meta-World's own sampler (it enforces each task's placement constraints) seeded
    for one candidate; ``mj_resetData`` inside makes the result independent of the past.

    ``scale < 1`` shrinks each draw toward the centre of the placement box. It wraps the sampler
    rather than editing the result, so a task's rejection loop (reach: goal 15 cm from the puck)
    still redraws until its constraint holds.
    """
    env.seed(_state_seed(task_name, init_set, index, attempt))
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    if scale != 1.0:
        _shrink_sampler(env, scale)
    elif "_get_state_rand_vec" in vars(env):
        del env._get_state_rand_vec  # back to the class's sampler
    obs, _ = env.reset()
    return obs


def _shrink_sampler(env: Any, scale: float) -> None:
    space = env._random_reset_space
    centre = (np.asarray(space.low, dtype=np.float64) + np.asarray(space.high, dtype=np.float64)) / 2
    draw = type(env)._get_state_rand_vec.__get__(env)

    def shrunk() -> np.ndarray:
        vec = centre + scale * (np.asarray(draw(), dtype=np.float64) - centre)
        env._last_rand_vec = vec
        return vec

    env._get_state_rand_vec = shrunk


@cache
def _eval_rand_vecs(task_name: str, scale: float = 1.0) -> np.ndarray:
    """The eval placements of a task (computed once per process, physics only, ~1 s)."""
    env = _raw_env(task_name)
    vecs = []
    for i in range(NUM_EVAL_STATES):
        _seeded_reset(env, task_name, "eval", i, 0, scale)
        vecs.append(np.asarray(env._last_rand_vec, dtype=np.float64).copy())
    env.close()
    return np.stack(vecs)
