"""LIBERO backend: the four LIBERO suites behind the :class:`~lastr1.envs.base.SingleEnv` protocol.

Each :class:`LiberoEnv` wraps one LIBERO ``OffScreenRenderEnv`` (robosuite, MuJoCo, OSC_POSE
controller, 20 Hz) built with ``hard_reset=False`` (reset ~0.15 s instead of ~2.5 s). Setup that
keeps LIBERO headless and offline lives in :mod:`lastr1.envs.libero_setup`.

Initial states (``reset(init_set, index)``):

* ``eval``: the benchmark's fixed 50 states per task (``get_task_init_states``), as in the paper.
* ``train``: fresh states, sampled by LIBERO's own placement samplers (seeded ``env.reset()``, arm
  joint noise 0.02 like the benchmark's) in a separate render-less env with ``hard_reset=True``:
  a *soft* reset places objects that sit on a fixture (a bowl on the stove or in the cabinet) at
  the fixture's offset added twice, ~1 m up, so they fall off the table. States are kept only if,
  for *every* eval state, some object is farther from its eval position than the task's margin
  (:meth:`LiberoEnv.train_eval_margin`) -- disjoint by construction. Generated lazily in chunks,
  cached under ``<cache_dir>/libero/init_states``.

Every reset first runs ``env.reset()`` under a seed derived from ``(task, set, index)`` (this also
places the fixtures, whose poses are not part of the MuJoCo state), then sets the state, then runs
:data:`SETTLE_STEPS` no-op steps as the reference evaluation does. So the same ``(task, set, index)``
gives the same first observation whatever ran before.

Observations: images upright (LIBERO renders upside down; we rotate 180°, like the reference),
agent view first, wrist view (``robot0_eye_in_hand``) second when ``cfg.wrist_view``; proprio =
end-effector position (3), orientation as axis-angle (3), gripper finger qpos (2); privileged: see
:meth:`LiberoEnv.privileged_layout`.

Rendering on demand: a frame costs ~90 ms per camera on CPU against ~35 ms of physics per step, and a
policy reads one frame per action chunk. robosuite's camera *observables* render on a timer inside
every step, and toggling them desynchronises that timer (a re-enabled camera returns a stale or
blank frame), so they stay disabled for good. :meth:`LiberoEnv.render` draws the cameras directly
with the simulator's own offscreen renderer, the exact call the observables make (same camera, size,
GL context and scene options; pixel-identical, ``tests/test_libero_env.py``), and only when asked:
on ``reset``, on ``step(render=True)`` and on :meth:`~LiberoEnv.observe` after unrendered steps, as
the Meta-World backend does. :meth:`~LiberoEnv.frame_snapshot` / :meth:`~LiberoEnv.render_snapshots`
draw a past frame later (``make-demos`` renders only the episodes it keeps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lastr1.envs.base import INIT_SETS, InitSet, SingleObs, TaskSpec
from lastr1.envs.config import EnvConfig
from lastr1.envs.libero_setup import ensure_libero, import_libero


@dataclass(frozen=True)
class SuiteLimits:
    """Episode budgets of one suite (reference values)."""

    eval_max_steps: int  # LIBERO's standard evaluation budget (becomes TaskSpec.max_steps)
    rollout_max_steps: int  # the reference RL run's rollout budget (a bit longer than eval)


# The per-suite constants, in one place. SETTLE_STEPS no-op steps follow every reset (objects drop
# into place); they are not counted in the episode's steps.
SUITE_LIMITS: dict[str, SuiteLimits] = {
    "libero_spatial": SuiteLimits(eval_max_steps=220, rollout_max_steps=240),
    "libero_object": SuiteLimits(eval_max_steps=280, rollout_max_steps=320),
    "libero_goal": SuiteLimits(eval_max_steps=300, rollout_max_steps=320),
    "libero_10": SuiteLimits(eval_max_steps=520, rollout_max_steps=576),
}
SUITES: tuple[str, ...] = tuple(SUITE_LIMITS)
SETTLE_STEPS = 10
SETTLE_ACTION = np.array([0.0] * 6 + [-1.0])  # hold still, gripper open

NUM_TRAIN_STATES = 500  # virtual size of the train set; states are generated on first use
TRAIN_CHUNK = 10  # train states generated (and cached) per file
# A train state's distance to every eval state (max over objects of the xyz offset) must exceed
# TRAIN_EVAL_MARGIN x the median nearest-neighbour distance among the task's eval states (and
# TRAIN_EVAL_MIN_DIST). Relative, because LIBERO's placement noise is task-dependent: ~3 mm between
# neighbouring eval states in libero_object, ~1 cm in libero_spatial.
TRAIN_EVAL_MARGIN = 0.5
TRAIN_EVAL_MIN_DIST = 0.001  # m
_MAX_SAMPLING_ATTEMPTS = 200
_ARM_INIT_NOISE = {"magnitude": 0.02, "type": "gaussian"}  # robosuite's "default", as in the benchmark
_CACHE_VERSION = "v2"  # v2: train states sampled with hard resets (v1 dropped fixture-placed objects)

# Privileged vector: MAX_OBJECTS object poses (pos xyz + quat xyzw) in the task's BDDL object order,
# then up to MAX_ARTICULATIONS fixture joint positions (drawers, knobs, doors); zero-padded.
MAX_OBJECTS = 8
MAX_ARTICULATIONS = 8
POSE_DIM = 7
PRIVILEGED_DIM = MAX_OBJECTS * POSE_DIM + MAX_ARTICULATIONS  # 64

# mjData fields the renderer reads for LIBERO's scenes (see LiberoEnv.frame_snapshot)
_POSE_FIELDS = (
    "xpos",
    "xmat",
    "xquat",
    "geom_xpos",
    "geom_xmat",
    "site_xpos",
    "site_xmat",
    "cam_xpos",
    "cam_xmat",
    "light_xpos",
    "light_xdir",
)

AGENT_VIEW = "agentview"
WRIST_VIEW = "robot0_eye_in_hand"


# -- task catalogue ---------------------------------------------------------------------------------
def _task_names(suite: str) -> list[str]:
    """Task names of a suite in benchmark order, read without importing LIBERO's heavy modules."""
    if suite not in SUITE_LIMITS:
        raise ValueError(f"env.suite={suite!r} is not a LIBERO suite; choose one of {list(SUITES)}")
    import importlib.util

    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("LIBERO is not installed: pip install --no-deps libero==0.1.1 (see README)")
    path = Path(next(iter(spec.submodule_search_locations))) / "libero/benchmark/libero_suite_task_map.py"
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # a plain dict literal, no imports
    return list(namespace["libero_task_map"][suite])


def _instruction(name: str) -> str:
    """The language instruction LIBERO derives from a task name (libero_10 names carry a scene prefix)."""
    return re.sub(r"^[A-Z_]*SCENE\d+_", "", name).replace("_", " ")


def suite_tasks(suite: str) -> list[TaskSpec]:
    """All tasks of a suite, benchmark order, with the suite's evaluation step budget."""
    limit = SUITE_LIMITS[suite].eval_max_steps if suite in SUITE_LIMITS else 0
    return [TaskSpec(suite, n, _instruction(n), limit, i) for i, n in enumerate(_task_names(suite))]


def rollout_max_steps(task: TaskSpec) -> int:
    """The reference RL run's rollout budget of the task's suite (evaluation keeps ``task.max_steps``)."""
    return SUITE_LIMITS[task.suite].rollout_max_steps


def default_tasks(suite: str) -> list[TaskSpec]:
    """The suite's first task: one LIBERO env is ~2 GB and ~10 steps/s on a CPU."""
    return suite_tasks(suite)[:1]


def make_single_env(task: TaskSpec, cfg: EnvConfig) -> LiberoEnv:
    """Module-level (picklable) factory used by the vector env."""
    return LiberoEnv(task, cfg)


def make_vector_env(cfg: EnvConfig, tasks: list[TaskSpec]) -> Any:
    """Batch ``cfg.num_envs`` slots; each keeps a single LIBERO env (they are heavy)."""
    from lastr1.envs.vector import build_vector_env

    return build_vector_env(cfg, tasks, make_single_env, max_cached_per_slot=1)


# -- helpers ----------------------------------------------------------------------------------------
def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle (axis * angle, angle in [0, 2π)) of a unit quaternion in robosuite's xyzw order."""
    x, y, z, w = (float(v) for v in quat_xyzw)
    w = min(max(w, -1.0), 1.0)
    den = math.sqrt(max(1.0 - w * w, 0.0))
    if den < 1e-8:
        return np.zeros(3)
    return np.array([x, y, z]) * (2.0 * math.acos(w) / den)


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """robosuite/LIBERO sample placements from the global numpy RNG: seed it, then restore it."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _reset_seed(suite: str, task_index: int, init_set: InitSet, index: int, attempt: int = 0) -> int:
    key = [SUITES.index(suite), task_index, INIT_SETS.index(init_set), index, attempt]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


# -- the environment --------------------------------------------------------------------------------
class LiberoEnv:
    """One LIBERO task in one simulator (see module docstring)."""

    def __init__(self, task: TaskSpec, cfg: EnvConfig):
        names = _task_names(task.suite)
        if task.name not in names:
            raise ValueError(
                f"task {task.name!r} is not in LIBERO suite {task.suite!r}; "
                f"`lastr1 envs --suite {task.suite}` lists its {len(names)} tasks"
            )
        self.task = task
        self.cfg = cfg
        self.task_index = names.index(task.name)
        self.cache_dir = Path(cfg.cache_dir)
        ensure_libero(cfg.cache_dir)
        lib = import_libero()
        with contextlib.redirect_stdout(io.StringIO()):
            bench = lib["benchmark"].get_benchmark(task.suite)()
        bddl = Path(lib["get_libero_path"]("bddl_files")) / task.suite / f"{task.name}.bddl"
        self._eval_states = np.asarray(bench.get_task_init_states(self.task_index), dtype=np.float64)
        self._cameras = [AGENT_VIEW] + ([WRIST_VIEW] if cfg.wrist_view else [])
        self._bddl = bddl
        self._env = lib["OffScreenRenderEnv"](
            bddl_file_name=str(bddl),
            camera_names=self._cameras,
            camera_heights=cfg.image_size,
            camera_widths=cfg.image_size,
            hard_reset=False,
            ignore_done=True,  # the vector env enforces max_steps
            initialization_noise=_ARM_INIT_NOISE,
        )
        inner = self._env.env
        model = inner.sim.model
        self.object_names: list[str] = list(inner.objects_dict)
        if len(self.object_names) > MAX_OBJECTS:
            raise RuntimeError(
                f"{task.name} has {len(self.object_names)} objects > MAX_OBJECTS={MAX_OBJECTS}"
            )
        self._object_bodies = [model.body_name2id(o.root_body) for o in inner.objects_dict.values()]
        self._object_qpos = [model.get_joint_qpos_addr(o.joints[-1])[0] for o in inner.objects_dict.values()]
        robot_joints = set(inner.robots[0].robot_joints) | set(inner.robots[0].gripper_joints)
        free_joints = {o.joints[-1] for o in inner.objects_dict.values()}
        self.articulation_names = [
            n for n in model.joint_names if n not in robot_joints and n not in free_joints
        ][:MAX_ARTICULATIONS]
        self._articulation_qpos = [
            int(np.atleast_1d(model.get_joint_qpos_addr(n))[0]) for n in self.articulation_names
        ]
        # Frames come from render(), never from the camera observables' timers (module docstring);
        # they stay defined (a test compares against them) but never sample.
        for cam in self._cameras:
            inner.modify_observable(f"{cam}_image", "enabled", False)
        from robosuite import macros
        from robosuite.utils.mjcf_utils import IMAGE_CONVENTION_MAPPING

        self._row_order = IMAGE_CONVENTION_MAPPING[macros.IMAGE_CONVENTION]  # as the observables flip rows
        self._frame_fields = list(_POSE_FIELDS)
        if model.ntendon:
            self._frame_fields += ["ten_wrapadr", "ten_wrapnum", "wrap_obj", "wrap_xpos"]
        if getattr(model, "nflex", 0):
            self._frame_fields += ["flexvert_xpos"]
        self._succeeded = False
        self._rendering = True
        self._last_obs: SingleObs | None = None
        self._train_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # -- protocol ---------------------------------------------------------------------------------
    def num_init_states(self, init_set: InitSet) -> int:
        return len(self._eval_states) if init_set == "eval" else NUM_TRAIN_STATES

    def reset(self, init_set: InitSet, init_index: int) -> SingleObs:
        state, seed = self.init_state(init_set, init_index)
        with _seeded_global_numpy(seed):
            self._env.reset()
        # robosuite keeps the gripper's smoothed command across soft resets; zero it so an episode
        # never depends on how the previous one ended
        for robot in self._env.env.robots:
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)
        self._env.set_init_state(state)
        for _ in range(SETTLE_STEPS):
            self._env.step(SETTLE_ACTION)
        self._succeeded = False
        self._last_obs = self._observe(self._env.env._get_observations(force_update=True), render=True)
        return self._last_obs

    def step(self, action: np.ndarray, render: bool = True) -> tuple[SingleObs, float, bool]:
        """One control step; with ``render=False`` the cameras are skipped (``obs.images`` is None,
        :meth:`observe` renders the current state later). Rendering never changes the simulation."""
        act = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if act.shape != (7,):
            raise ValueError(f"LIBERO action must have 7 values (xyz, rotation, gripper), got {act.shape}")
        raw, _, _, _ = self._env.step(act)
        success = bool(self._env.check_success())
        reward = 1.0 if success and not self._succeeded else 0.0
        self._succeeded |= success
        self._last_obs = self._observe(raw, render=render)
        return self._last_obs, reward, success

    def observe(self) -> SingleObs:
        """The current observation with its images, rendered now if the last step skipped them."""
        if self._last_obs is None:
            raise RuntimeError("observe() before reset(): call reset(init_set, init_index) first")
        if self._last_obs.images is None:
            self._last_obs = dataclasses.replace(self._last_obs, images=self._images())
        return self._last_obs

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._make_gl_current()  # robosuite frees the renderer's buffers in the current context
            self._env.close()
            self._env = None

    # -- initial states ---------------------------------------------------------------------------
    def init_state(self, init_set: InitSet, index: int) -> tuple[np.ndarray, int]:
        """The flattened MuJoCo state and the reset seed of ``(init_set, index)``."""
        if init_set not in INIT_SETS:
            raise ValueError(f"init_set={init_set!r} is unknown; use one of {INIT_SETS}")
        count = self.num_init_states(init_set)
        if not 0 <= index < count:
            raise ValueError(f"init_index={index} out of range for the {init_set!r} set of {count} states")
        if init_set == "eval":
            return self._eval_states[index], _reset_seed(self.task.suite, self.task_index, "eval", index)
        chunk = index // TRAIN_CHUNK
        if chunk not in self._train_cache:
            self._train_cache[chunk] = self._load_or_make_train_chunk(chunk)
        states, seeds = self._train_cache[chunk]
        return states[index % TRAIN_CHUNK], int(seeds[index % TRAIN_CHUNK])

    def eval_states(self) -> np.ndarray:
        """The benchmark's fixed initial states, (50, state_dim)."""
        return self._eval_states.copy()

    def object_positions(self, states: np.ndarray) -> np.ndarray:
        """Object xyz inside flattened states: (..., state_dim) -> (..., num_objects, 3)."""
        # Flattened MuJoCo state = [time, qpos, qvel]; each object's free joint starts with its xyz.
        idx = np.array([[1 + a + k for k in range(3)] for a in self._object_qpos])
        return np.asarray(states)[..., idx]

    def distance_to_eval(self, state: np.ndarray) -> float:
        """min over eval states of max over objects of the xyz distance (m)."""
        diff = self.object_positions(self._eval_states) - self.object_positions(state)[None]
        return float(np.linalg.norm(diff, axis=-1).max(axis=-1).min())

    def train_eval_margin(self) -> float:
        """The minimum distance (m) a train state keeps from every eval state (see module docstring)."""
        pos = self.object_positions(self._eval_states)
        dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1).max(axis=-1)
        np.fill_diagonal(dist, np.inf)
        return max(TRAIN_EVAL_MIN_DIST, TRAIN_EVAL_MARGIN * float(np.median(dist.min(axis=1))))

    def _train_path(self, chunk: int) -> Path:
        folder = self.cache_dir / "libero" / "init_states" / _CACHE_VERSION / self.task.suite / self.task.name
        return folder / f"train_{chunk:04d}.npz"

    def _load_or_make_train_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        path = self._train_path(chunk)
        dim = self._eval_states.shape[1]
        if path.is_file():
            with np.load(path) as data:
                states, seeds = data["states"], data["seeds"]
            if states.shape == (TRAIN_CHUNK, dim):
                return states, seeds
        states, seeds = self._sample_train_chunk(chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(self)}.tmp.npz")
        np.savez(tmp, states=states, seeds=seeds)
        tmp.replace(path)  # atomic: parallel workers write identical content
        return states, seeds

    def _sample_train_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample in a hard-resetting, render-less copy of the task (~0.5 s a reset): LIBERO's soft
        reset misplaces objects that sit on fixtures (see the module docstring)."""
        states, seeds = [], []
        margin = self.train_eval_margin()
        with contextlib.redirect_stdout(io.StringIO()):
            sampler = import_libero()["ControlEnv"](
                bddl_file_name=str(self._bddl),
                has_offscreen_renderer=False,
                use_camera_obs=False,
                hard_reset=True,
                ignore_done=True,
                initialization_noise=_ARM_INIT_NOISE,
            )
        try:
            for index in range(chunk * TRAIN_CHUNK, (chunk + 1) * TRAIN_CHUNK):
                for attempt in range(_MAX_SAMPLING_ATTEMPTS):
                    seed = _reset_seed(self.task.suite, self.task_index, "train", index, attempt)
                    with _seeded_global_numpy(seed):
                        sampler.reset()
                    state = sampler.get_sim_state().copy()
                    if self.distance_to_eval(state) > margin:
                        states.append(state)
                        seeds.append(seed)
                        break
                else:
                    raise RuntimeError(
                        f"could not sample a train state for {self.task.name} more than {margin:.4f} m "
                        f"from every eval state in {_MAX_SAMPLING_ATTEMPTS} tries"
                    )
        finally:
            sampler.close()
        return np.stack(states), np.array(seeds, dtype=np.int64)

    # -- observations -----------------------------------------------------------------------------
    def set_rendering(self, enabled: bool) -> None:
        """Turn the cameras on or off (off: ``images`` are black) for runs that only need success.

        Rendering costs ~90 ms a frame on CPU, over twice the physics of one step (~35 ms);
        scripted-expert success measurements read the simulator, not the pixels.
        """
        self._rendering = bool(enabled)

    def render(self) -> np.ndarray:
        """The cameras of :attr:`cameras` at the current state: uint8 ``(V, H, W, 3)``, upright.

        The same call robosuite's camera observables make (``sim.render`` on the named camera, at
        ``cfg.image_size``, in the simulator's offscreen GL context, rows in robosuite's image
        convention), then the 180° turn every LIBERO frame gets. It reads the simulation and
        never changes it.
        """
        size = self.cfg.image_size
        sim = self._env.env.sim
        self._make_gl_current()
        frames = [
            sim.render(camera_name=cam, width=size, height=size)[:: self._row_order] for cam in self._cameras
        ]
        return np.ascontiguousarray(np.stack(frames)[:, ::-1, ::-1])

    def _make_gl_current(self) -> None:
        """Make this env's GL context the current one. robosuite draws, and frees its buffers, in
        whichever context is current, and every env owns one: with two LIBERO envs in a process
        (sync vector slots, ``workers`` < slots, tests) the other's context is current after it was
        built (measured at 64 px: 240-2318 of 4096 pixels wrong), and closing it frees this one's
        buffers (near-black frames after)."""
        ctx = getattr(self._env.env.sim, "_render_context_offscreen", None)
        if ctx is not None:
            ctx.gl_ctx.make_current()

    @property
    def cameras(self) -> list[str]:
        """The MuJoCo camera names behind ``images``, in view order."""
        return list(self._cameras)

    def frame_snapshot(self) -> dict[str, np.ndarray]:
        """What :meth:`render_snapshots` needs to draw the current frame later, without rendering now.

        A frame shows the poses of the simulator's last kinematics pass, which inside ``step`` ran
        one 2 ms physics substep before the step's end; setting the MuJoCo state back and calling
        ``forward`` would draw the step's end instead (~150 of 4096 pixels differ at 64 px). So the
        snapshot copies the poses the renderer reads (bodies, geoms, sites, cameras, lights, tendon
        paths, flex vertices: ~35 KB for a libero_spatial scene), not the state.
        """
        data = self._env.env.sim.data._data
        return {name: getattr(data, name).copy() for name in self._frame_fields}

    def render_snapshots(self, snapshots: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Frames ``(T, V, H, W, 3)`` of :meth:`frame_snapshot` s taken in this episode, pixel-equal to
        rendering them at the time; the current poses are put back, and physics never reads them
        (every physics step recomputes them from the state first)."""
        data = self._env.env.sim.data._data
        current = self.frame_snapshot()
        frames = []
        try:
            for snap in snapshots:
                for name, value in snap.items():
                    getattr(data, name)[...] = value
                frames.append(self._images())
        finally:
            for name, value in current.items():
                getattr(data, name)[...] = value
        size = self.cfg.image_size
        return np.stack(frames) if frames else np.zeros((0, len(self._cameras), size, size, 3), np.uint8)

    def _images(self) -> np.ndarray:
        if self._rendering:
            return self.render()
        # cameras off: same shape and dtype, so consumers need not care that nothing was rendered
        size = self.cfg.image_size
        return np.zeros((len(self._cameras), size, size, 3), dtype=np.uint8)

    def _observe(self, raw: dict[str, np.ndarray], render: bool) -> SingleObs:
        proprio = np.concatenate(
            [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        ).astype(np.float32)
        images = self._images() if render else None
        return SingleObs(images=images, proprio=proprio, privileged=self.privileged())

    def privileged(self) -> np.ndarray:
        """Simulator state a policy must not see; layout in :meth:`privileged_layout`."""
        data = self._env.env.sim.data
        out = np.zeros(PRIVILEGED_DIM, dtype=np.float32)
        for k, body in enumerate(self._object_bodies):
            wxyz = data.body_xquat[body]
            out[k * POSE_DIM : k * POSE_DIM + 3] = data.body_xpos[body]
            out[k * POSE_DIM + 3 : (k + 1) * POSE_DIM] = (wxyz[1], wxyz[2], wxyz[3], wxyz[0])
        base = MAX_OBJECTS * POSE_DIM
        for j, addr in enumerate(self._articulation_qpos):
            out[base + j] = data.qpos[addr]
        return out

    def privileged_layout(self) -> list[str]:
        """Names of the privileged vector's entries (``pad`` where zero-padded)."""
        names = ["pad"] * PRIVILEGED_DIM
        for k, obj in enumerate(self.object_names):
            for j, part in enumerate(("x", "y", "z", "qx", "qy", "qz", "qw")):
                names[k * POSE_DIM + j] = f"{obj}.{part}"
        for j, joint in enumerate(self.articulation_names):
            names[MAX_OBJECTS * POSE_DIM + j] = joint
        return names

    @property
    def sim_env(self) -> Any:
        """The wrapped robosuite environment (scripted experts read the simulator through it)."""
        return self._env.env
