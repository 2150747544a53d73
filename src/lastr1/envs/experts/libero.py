"""A scripted pick-and-place expert for LIBERO, driven by privileged simulator state.

Why: LaST-R1's warm-up needs one demonstration per task; users without LIBERO's human demos can
generate them with this expert instead. It reads the object geometry from the simulator (collision
geoms of the object to pick, the goal site or object to place on) and drives the suite's own OSC_POSE
controller with the same 7-dim delta actions a policy emits, so its trajectories are valid demos.

Strategy (top-down grasp, a finite-state machine, re-planned from the simulator every step):

1. ``approach``: travel above every object, then hover above the grasp point, gripper open, the
   hand yawed so the fingers close across the object's narrowest horizontal width (objects narrower
   than the finger span, grasped at most :data:`GRASP_DEPTH` below their top) or across the rim
   (wide objects such as bowls: of 16 rim points, the one nearest the robot whose finger and palm
   footprints are clear of other geometry -- drawer walls, cabinet tops, other objects);
2. ``descend`` to the grasp height, ``close`` the gripper, ``lift`` above the place target;
3. ``transport`` the object's centre over the target, ``lower``, ``release``, ``retreat``.

If the object did not come up with the hand the expert goes back to ``approach`` (two retries).
Supported tasks: those whose BDDL goal is a single ``(on|in, movable object, target)`` predicate --
every libero_object and libero_spatial task and the single pick-and-place goals of libero_goal and
libero_10 (see :func:`supports`); measured success per task is in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lastr1.envs.base import SingleEnv, SingleObs, TaskSpec
from lastr1.envs.experts.libero_geometry import Obstacles, axis_angle, narrowest_axis, object_points

POS_SCALE = 0.05  # m of OSC goal offset per unit action (robosuite OSC_POSE output_max)
ROT_SCALE = 0.5  # rad per unit action
FINGER_SPAN = 0.075  # objects narrower than this (m) are grasped across their body
HOVER = 0.08  # m above the grasp point before descending
CLEARANCE = 0.05  # m between the carried object's bottom and the target's top while moving
LIFT_MIN = 0.1  # m the hand rises above the grasp at least, so the object clears its neighbours
# Narrow objects are grasped at mid-height, clamped to GRASP_MIN_HEIGHT..GRASP_MAX_HEIGHT above their
# bottom (fingertips off the table; deep enough to hold a tall box by its middle)...
GRASP_MIN_HEIGHT = 0.012
GRASP_MAX_HEIGHT = 0.06
# ...but at most GRASP_DEPTH below their top: the fingertips reach ~3.5 cm below the palm, so a
# deeper grasp on a standing bottle would push the palm onto its cap.
GRASP_DEPTH = 0.035
DROP_ON = 0.01  # m above an ``on`` target's top at which the object is let go
DROP_IN = 0.04  # m above a container region's floor at which the object is let go (it then settles)
RETREAT_RISE = 0.05  # m above the carry height the open hand backs off to
# Speed limits (fraction of a full action): travel fast; descend onto a grasp slowly so the fingers
# do not shove the object; while closing, hold the hand on the grasp point gently.
SPEED_FAST = 1.0
SPEED_CAREFUL = 0.5
SPEED_HOLD = 0.3
# While still far (xy) from the grasp, the hand stays this high above the tallest object, so it
# never sweeps into a standing bottle on its way (a knocked-over bottle no longer fits the basket).
OBSTACLE_CLEARANCE = 0.04
APPROACH_XY_TOL = 0.02  # m: within this the hand may go down to the hover height
# Rim grasps (bowls): the grasp point sits RIM_BELOW_TOP below the rim and an inset inside its edge;
# the smallest inset holds best, larger ones move the outer finger off a wall the bowl stands against
# (a bowl in a drawer leaves ~2.5 cm between its rim and the drawer wall).
RIM_INSETS = (0.012, 0.024, 0.036)
RIM_BELOW_TOP = 0.02
# A flat object (a plate) is pinched higher, its fingertips just above what lies under the outer
# finger (the table), but at least RIM_MIN_PINCH below its top.
RIM_MIN_PINCH = 0.006
RIM_CANDIDATES = 16  # rim points tried around the object, per inset
RIM_REPLAN_MOVE = 0.003  # m the object must move before an unfrozen rim choice is re-made
# Gripper footprint (Panda hand, fingers open, measured from its collision geoms in the eef frame)
# used to test a rim grasp for collisions: an open finger spans FINGER_INNER..FINGER_OUTER from the
# eef site along the closing axis, FINGER_HALF_WIDTH across, and reaches TIP_BELOW_EEF below the
# site; the palm spans PALM_HALF_LENGTH along that axis, PALM_HALF_WIDTH across, and its bottom is
# PALM_ABOVE_EEF above the site (its mesh's bounding box says 2.4 cm, the mesh is higher at the ends).
FINGER_INNER = 0.033
FINGER_OUTER = 0.069
FINGER_HALF_WIDTH = 0.011
TIP_BELOW_EEF = 0.01
PALM_HALF_LENGTH = 0.1
PALM_HALF_WIDTH = 0.032
PALM_ABOVE_EEF = 0.03
CLOSE_STEPS = 12  # the Panda fingers close fully in ~10 control steps
RELEASE_STEPS = 10
MAX_RETRIES = 2
# Per-phase step limits: a phase that cannot converge (blocked by contact) moves on instead of
# burning the episode budget; each is ~2x what the phase takes when it works.
TIMEOUT = {"approach": 80, "descend": 40, "lift": 60, "transport": 100, "lower": 40}
# Position error (m) at which a move phase is done: tight where the fingers must land on a grasp
# point or the object over its target (LIBERO's ``on`` wants the centres within 3 cm), looser for
# heights, where a few mm do not matter.
SETTLED = {"approach": 0.01, "descend": 0.008, "lift": 0.015, "transport": 0.008, "lower": 0.01}
SETTLED_ROT = 0.08  # rad: orientation error at which the approach counts as done
SLIP = 0.03  # m the object may lag below where the grasp should have carried it before a retry
# A downward move (descend, lower) that advanced less than STALL_DZ per step for STALL_STEPS steps is
# resting on something (a fingertip on a rim, a tilted bowl on the plate): stop pushing and go on.
STALL_DZ = 0.001
STALL_STEPS = 3


@dataclass
class _Grasp:
    pos: np.ndarray  # eef target (world) at the grasp
    axis: np.ndarray  # horizontal unit vector the fingers close along


def supports(goal_state: list[list[str]]) -> bool:
    """Whether a task's BDDL goal is one pick-and-place predicate this expert can script."""
    return len(goal_state) == 1 and goal_state[0][0].lower() in ("on", "in") and len(goal_state[0]) == 3


class PickPlaceExpert:
    """Scripted expert for one single-predicate pick-and-place LIBERO task (see module docstring).

    Usage: ``expert.reset()`` after each ``env.reset(...)``, then ``env.step(expert.act(env))``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.phase = "approach"
        self.counter = 0
        self.stalled = 0  # consecutive steps a downward move did not advance
        self.last_z = np.inf
        self.retries = 0
        self.grasp: _Grasp | None = None
        self.rim: tuple[np.ndarray, float, float] | None = None  # rim side, inset, depth below top
        self.rim_frozen = False  # True once the hand hovers above the rim point (until a retry)
        self.rim_seen_at = np.full(3, np.inf)  # object centre + top when the rim side was chosen
        self.offset = np.zeros(3)  # object position minus eef position while held
        self.bottom_below_eef = 0.0  # eef z minus the held object's bottom z

    # -- simulator queries --------------------------------------------------------------------------
    @staticmethod
    def _goal(inner: Any) -> tuple[str, str, str]:
        goal = inner.parsed_problem["goal_state"]
        if not supports(goal):
            raise ValueError(f"PickPlaceExpert supports one on/in goal predicate, this task has {goal}")
        pred, obj, target = goal[0]
        return pred.lower(), obj, target

    @staticmethod
    def _eef(inner: Any) -> tuple[np.ndarray, np.ndarray]:
        sid = inner.robots[0].eef_site_id
        return inner.sim.data.site_xpos[sid].copy(), inner.sim.data.site_xmat[sid].reshape(3, 3).copy()

    @staticmethod
    def _target(inner: Any, target: str) -> tuple[np.ndarray, float]:
        """xy centre and top height of the place target (a region site or an object)."""
        if target in inner.object_sites_dict:
            sid = inner.sim.model.site_name2id(target)
            pos = inner.sim.data.site_xpos[sid]
            half_z = inner.sim.model.site_size[sid][2]
            parent = inner.object_sites_dict[target].parent_name
            if parent in inner.obj_body_id:  # a container's region: clear the container's walls
                top = float(object_points(inner.sim, inner.obj_body_id[parent])[:, 2].max())
            else:
                top = float(pos[2] + half_z)
            return pos[:2].copy(), top
        pts = object_points(inner.sim, inner.obj_body_id[target])
        return inner.sim.data.body_xpos[inner.obj_body_id[target]][:2].copy(), float(pts[:, 2].max())

    @staticmethod
    def _tallest_top(inner: Any) -> float:
        """Height of the highest movable object's top (m)."""
        return max(float(object_points(inner.sim, b)[:, 2].max()) for b in inner.obj_body_id.values())

    def _plan_grasp(self, inner: Any, obj: str) -> _Grasp:
        body = inner.obj_body_id[obj]
        pts = object_points(inner.sim, body)
        bottom, top = pts[:, 2].min(), pts[:, 2].max()
        axis, width, centre = narrowest_axis(pts)
        if width <= FINGER_SPAN:  # across the body, mid-height but not deeper than GRASP_DEPTH
            mid = np.clip(0.5 * (top - bottom), GRASP_MIN_HEIGHT, GRASP_MAX_HEIGHT)
            z = max(bottom + mid, top - GRASP_DEPTH)
            return _Grasp(np.array([centre[0], centre[1], z]), axis)
        # Wide object (bowl, plate): straddle the rim. The side is re-chosen while the object still
        # moves (it may be settling after a failed grasp) and frozen once the hand is above it.
        radius = 0.5 * width
        seen = np.array([*centre, top])
        if self.rim is None or (
            not self.rim_frozen and np.abs(seen - self.rim_seen_at).max() > RIM_REPLAN_MOVE
        ):
            self.rim = self._choose_rim_side(inner, body, centre, radius, top)
            self.rim_seen_at = seen
        rim_dir, inset, depth = self.rim
        point = centre + rim_dir * (radius - inset)
        return _Grasp(np.array([point[0], point[1], top - depth]), np.array([*rim_dir, 0.0]))

    @staticmethod
    def _choose_rim_side(
        inner: Any, body: int, centre: np.ndarray, radius: float, top: float
    ) -> tuple[np.ndarray, float, float]:
        """Rim side (xy unit vector), inset and grasp depth below the top.

        The smallest inset whose finger and palm footprints are clear, nearest the robot base (reach)
        among its sides; the least obstructed candidate when none is clear.
        """
        robot = inner.robots[0]
        root = inner.sim.model.body_name2id(robot.robot_model.root_body)
        base = inner.sim.data.body_xpos[root][:2]
        obstacles = Obstacles(inner.sim, {int(inner.sim.model._model.body_rootid[root]), body})
        best: tuple[tuple[bool, float, float], tuple[np.ndarray, float, float]] | None = None
        for inset in RIM_INSETS:
            for theta in np.linspace(0.0, 2 * np.pi, RIM_CANDIDATES, endpoint=False):
                d = np.array([np.cos(theta), np.sin(theta)])
                point = centre + d * (radius - inset)
                outer = point + d * 0.5 * (FINGER_INNER + FINGER_OUTER)
                half_along = 0.5 * (FINGER_OUTER - FINGER_INNER)
                h_finger = obstacles.top_in(outer, d, half_along, FINGER_HALF_WIDTH)
                h_palm = obstacles.top_in(point, d, PALM_HALF_LENGTH, PALM_HALF_WIDTH)
                z = max(top - RIM_BELOW_TOP, h_finger + TIP_BELOW_EEF)
                clearance = min(top - RIM_MIN_PINCH - z, z + PALM_ABOVE_EEF - h_palm)
                if clearance >= 0.0:
                    key = (True, -inset, -float(np.linalg.norm(point - base)))
                else:
                    key = (False, float(clearance), 0.0)
                if best is None or key > best[0]:
                    best = (key, (d, inset, top - z))
        assert best is not None
        return best[1]

    # -- control ------------------------------------------------------------------------------------
    @staticmethod
    def _orientation_target(rot: np.ndarray, axis: np.ndarray) -> np.ndarray:
        """Top-down hand whose closing axis (column 0) is ``±axis``, whichever turns the hand less."""
        x = axis if axis @ rot[:, 0] >= 0 else -axis
        z = np.array([0.0, 0.0, -1.0])
        return np.stack([x, np.cross(z, x), z], axis=1)

    @staticmethod
    def _move(pos: np.ndarray, rot: np.ndarray, target: np.ndarray, rot_target: np.ndarray, speed: float):
        action = np.zeros(7)
        action[:3] = np.clip((target - pos) / POS_SCALE, -speed, speed)
        action[3:6] = np.clip(axis_angle(rot_target @ rot.T) / ROT_SCALE, -1.0, 1.0)
        return action

    def act(self, env: Any) -> np.ndarray:
        """The next 7-dim action for the LIBERO :class:`~lastr1.envs.libero.LiberoEnv` ``env``."""
        inner = env.sim_env
        pred, obj, target = self._goal(inner)
        pos, rot = self._eef(inner)
        obj_pos = inner.sim.data.body_xpos[inner.obj_body_id[obj]].copy()
        if self.phase in ("approach", "descend"):
            near = self.grasp is not None and np.linalg.norm(self.grasp.pos[:2] - pos[:2]) < APPROACH_XY_TOL
            self.rim_frozen = self.rim_frozen or near
            self.grasp = self._plan_grasp(inner, obj)
        elif self.phase in ("transport", "lower"):  # follow the object as it actually sits in the hand
            self.offset = obj_pos - pos
        grasp = self.grasp
        assert grasp is not None or self.phase == "retreat"
        rot_t = self._orientation_target(rot, grasp.axis) if grasp is not None else rot
        target_xy, target_top = self._target(inner, target)
        carry_z = target_top + CLEARANCE + self.bottom_below_eef
        self.counter += 1
        timed_out = self.counter > TIMEOUT.get(self.phase, self.counter)
        tol = SETTLED.get(self.phase, 0.0)
        self.stalled = self.stalled + 1 if self.last_z - pos[2] < STALL_DZ else 0
        self.last_z = pos[2]
        stalled = self.stalled >= STALL_STEPS

        if self.phase == "approach":
            goal = grasp.pos + np.array([0.0, 0.0, HOVER])
            if np.linalg.norm(goal[:2] - pos[:2]) > APPROACH_XY_TOL:
                goal[2] = max(goal[2], self._tallest_top(inner) + OBSTACLE_CLEARANCE)
            act = self._move(pos, rot, goal, rot_t, SPEED_FAST)
            ori_err = np.linalg.norm(axis_angle(rot_t @ rot.T))
            if (np.linalg.norm(goal - pos) < tol and ori_err < SETTLED_ROT) or timed_out:
                self._enter("descend")
            act[6] = -1.0
        elif self.phase == "descend":
            act = self._move(pos, rot, grasp.pos, rot_t, SPEED_CAREFUL)
            if np.linalg.norm(grasp.pos - pos) < tol or stalled or timed_out:
                self._enter("close")
            act[6] = -1.0
        elif self.phase == "close":
            act = self._move(pos, rot, grasp.pos, rot_t, SPEED_HOLD)
            act[6] = 1.0
            if self.counter >= CLOSE_STEPS:
                pts = object_points(inner.sim, inner.obj_body_id[obj])
                self.offset = obj_pos - pos
                self.bottom_below_eef = float(pos[2] - pts[:, 2].min())
                self._enter("lift")
        elif self.phase == "lift":
            goal = np.array([pos[0], pos[1], max(carry_z, grasp.pos[2] + LIFT_MIN)])
            act = self._move(pos, rot, goal, rot_t, SPEED_FAST)
            act[6] = 1.0
            if obj_pos[2] - (pos + self.offset)[2] < -SLIP:  # the object stayed behind: retry
                self._retry()
            elif abs(goal[2] - pos[2]) < tol or timed_out:
                self._enter("transport")
        elif self.phase == "transport":
            goal = np.array([*(target_xy - self.offset[:2]), max(carry_z, pos[2])])
            act = self._move(pos, rot, goal, rot_t, SPEED_FAST)
            act[6] = 1.0
            if np.linalg.norm(goal[:2] - pos[:2]) < tol or timed_out:
                self._enter("lower")
        elif self.phase == "lower":
            release_bottom = (
                target_top + DROP_ON if pred == "on" else self._region_floor(inner, target) + DROP_IN
            )
            goal = np.array([*(target_xy - self.offset[:2]), release_bottom + self.bottom_below_eef])
            act = self._move(pos, rot, goal, rot_t, SPEED_FAST)
            act[6] = 1.0
            if abs(goal[2] - pos[2]) < tol or stalled or timed_out:
                self._enter("release")
        elif self.phase == "release":
            act = np.zeros(7)
            act[6] = -1.0
            if self.counter >= RELEASE_STEPS:
                self._enter("retreat")
        else:  # retreat
            act = self._move(pos, rot, np.array([pos[0], pos[1], carry_z + RETREAT_RISE]), rot, SPEED_CAREFUL)
            act[6] = -1.0
        return np.clip(act, -1.0, 1.0)

    @staticmethod
    def _region_floor(inner: Any, region: str) -> float:
        """Bottom height of a container region's site box."""
        sid = inner.sim.model.site_name2id(region)
        return float(inner.sim.data.site_xpos[sid][2] - inner.sim.model.site_size[sid][2])

    def _enter(self, phase: str) -> None:
        self.phase, self.counter, self.stalled = phase, 0, 0

    def _retry(self) -> None:
        if self.retries < MAX_RETRIES:
            self.retries += 1
            self.rim_frozen = False
            self._enter("approach")
        else:
            self._enter("retreat")


# -- the backend hook -------------------------------------------------------------------------------
SUPPORTED_GOALS = "one (on|in, movable object, target) goal predicate"


def bddl_goal(task: TaskSpec, cache_dir: str = ".cache/lastr1") -> list[list[str]]:
    """A task's BDDL goal, parsed from its file without building a simulator (~10 s saved)."""
    from lastr1.envs.libero_setup import ensure_libero, import_libero

    ensure_libero(cache_dir)
    bddl = Path(import_libero()["get_libero_path"]("bddl_files")) / task.suite / f"{task.name}.bddl"
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    return robosuite_parse_problem(str(bddl))["goal_state"]


class LiberoExpert:
    """:class:`PickPlaceExpert` bound to its env, speaking the :class:`ScriptedExpert` protocol.

    Why an adapter: the protocol's ``act(obs)`` gets a :class:`SingleObs`, but the expert plans from
    simulator state (geoms, sites) that the observation does not carry, so it reads the bound env.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.expert = PickPlaceExpert()

    def reset(self) -> None:
        self.expert.reset()

    def act(self, obs: SingleObs) -> np.ndarray:
        """The next action; ``obs`` is ignored (the bound env's simulator is the source of truth)."""
        return self.expert.act(self.env).astype(np.float32)


def make_expert(task: TaskSpec, env: SingleEnv) -> LiberoExpert:
    """The backend hook :func:`lastr1.envs.experts.make_expert` calls; ValueError if unsupported."""
    inner = getattr(env, "sim_env", None)
    if inner is None:
        raise ValueError(f"the LIBERO expert needs a LiberoEnv (with .sim_env), got {type(env).__name__}")
    goal = inner.parsed_problem["goal_state"]
    if not supports(goal):
        raise ValueError(
            f"no scripted LIBERO expert for {task.suite} task {task.name!r}: its goal {goal} is not "
            f"{SUPPORTED_GOALS}; supported: every libero_object and libero_spatial task and the "
            "single pick-and-place goals of libero_goal / libero_10"
        )
    return LiberoExpert(env)
