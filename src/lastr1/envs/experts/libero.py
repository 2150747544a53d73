"""A scripted pick-and-place expert for LIBERO, driven by privileged simulator state.

Why: LaST-R1's warm-up needs one demonstration per task; users without LIBERO's human demos can
generate them with this expert instead. It reads the object geometry from the simulator (collision
geoms of the object to pick, the goal site or object to place on) and drives the suite's own OSC_POSE
controller with the same 7-dim delta actions a policy emits, so its trajectories are valid demos.

Strategy (top-down grasp, a finite-state machine, re-planned from the simulator every step):

1. ``approach``: hover above the grasp point, gripper open, yaw the hand so the fingers close
   across the object's narrowest horizontal width (objects narrower than the finger span) or
   across the rim (wide objects such as bowls: the fingers straddle the rim wall nearest free space);
2. ``descend`` to the grasp height, ``close`` the gripper, ``lift`` above the place target;
3. ``transport`` over the target keeping the grasp offset, ``lower``, ``release``, ``retreat``.

If the object did not come up with the hand the expert goes back to ``approach`` (two retries).
Supported tasks: those whose BDDL goal is a single ``(on|in, movable object, target)`` predicate --
every libero_object and libero_spatial task and the single pick-and-place goals of libero_goal (see
:func:`supports`). Success rates measured so far are in the module's tests and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

POS_SCALE = 0.05  # m of OSC goal offset per unit action (robosuite OSC_POSE output_max)
ROT_SCALE = 0.5  # rad per unit action
FINGER_SPAN = 0.075  # objects narrower than this (m) are grasped across their body
HOVER = 0.08  # m above the grasp point before descending
CLEARANCE = 0.05  # m between the carried object's bottom and the target's top while moving
CLOSE_STEPS = 12
RELEASE_STEPS = 10
MAX_RETRIES = 2


@dataclass
class _Grasp:
    pos: np.ndarray  # eef target (world) at the grasp
    axis: np.ndarray  # horizontal unit vector the fingers close along


def supports(goal_state: list[list[str]]) -> bool:
    """Whether a task's BDDL goal is one pick-and-place predicate this expert can script."""
    return len(goal_state) == 1 and goal_state[0][0].lower() in ("on", "in") and len(goal_state[0]) == 3


def _object_points(inner: Any, body: int) -> np.ndarray:
    """World-frame corners of the collision geoms' bounding boxes of the object rooted at ``body``."""
    m, d = inner.sim.model._model, inner.sim.data._data
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    pts = []
    for g in range(m.ngeom):
        if m.body_rootid[m.geom_bodyid[g]] != body or (m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0):
            continue
        local = m.geom_aabb[g, :3] + signs * m.geom_aabb[g, 3:]
        pts.append(d.geom_xpos[g] + local @ d.geom_xmat[g].reshape(3, 3).T)
    if not pts:
        raise RuntimeError(f"body {body} has no collision geometry to plan a grasp on")
    return np.concatenate(pts)


def _narrowest_axis(points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Horizontal direction of least width, that width, and the xy centre of the oriented extent."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for theta in np.deg2rad(np.arange(0.0, 180.0, 5.0)):
        d = np.array([np.cos(theta), np.sin(theta)])
        n = np.array([-d[1], d[0]])
        pd, pn = points[:, :2] @ d, points[:, :2] @ n
        width = pd.max() - pd.min()
        if best is None or width < best[0]:
            centre = d * (pd.max() + pd.min()) / 2 + n * (pn.max() + pn.min()) / 2
            best = (width, d, centre)
    assert best is not None
    return np.array([*best[1], 0.0]), float(best[0]), best[2]


def _axis_angle(rot: np.ndarray) -> np.ndarray:
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rot.reshape(-1))
    vel = np.zeros(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


class PickPlaceExpert:
    """Scripted expert for one single-predicate pick-and-place LIBERO task (see module docstring).

    Usage: ``expert.reset()`` after each ``env.reset(...)``, then ``env.step(expert.act(env))``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.phase = "approach"
        self.counter = 0
        self.retries = 0
        self.grasp: _Grasp | None = None
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

    def _target(self, inner: Any, target: str) -> tuple[np.ndarray, float]:
        """xy centre and top height of the place target (a region site or an object)."""
        if target in inner.object_sites_dict:
            sid = inner.sim.model.site_name2id(target)
            pos = inner.sim.data.site_xpos[sid]
            half_z = inner.sim.model.site_size[sid][2]
            parent = inner.object_sites_dict[target].parent_name
            if parent in inner.obj_body_id:  # a container's region: clear the container's walls
                top = float(_object_points(inner, inner.obj_body_id[parent])[:, 2].max())
            else:
                top = float(pos[2] + half_z)
            return pos[:2].copy(), top
        pts = _object_points(inner, inner.obj_body_id[target])
        return inner.sim.data.body_xpos[inner.obj_body_id[target]][:2].copy(), float(pts[:, 2].max())

    def _plan_grasp(self, inner: Any, obj: str) -> _Grasp:
        body = inner.obj_body_id[obj]
        pts = _object_points(inner, body)
        bottom, top = pts[:, 2].min(), pts[:, 2].max()
        axis, width, centre = _narrowest_axis(pts)
        if width <= FINGER_SPAN:  # across the body, a bit below the top
            z = bottom + np.clip(0.5 * (top - bottom), 0.012, 0.06)
            return _Grasp(np.array([centre[0], centre[1], z]), axis)
        # Wide object (bowl, plate): straddle the rim on the side with the most free space.
        radius = 0.5 * width
        others = [
            _object_points(inner, b)[:, :2].mean(axis=0) for n, b in inner.obj_body_id.items() if b != body
        ]
        best, best_gap = None, -1.0
        for theta in np.deg2rad(np.arange(0.0, 360.0, 45.0)):
            d = np.array([np.cos(theta), np.sin(theta)])
            point = centre + d * (radius - 0.012)
            gap = min((np.linalg.norm(point - o) for o in others), default=1.0)
            if gap > best_gap:
                best, best_gap = d, gap
        assert best is not None
        point = centre + best * (radius - 0.012)
        return _Grasp(np.array([point[0], point[1], top - 0.02]), np.array([*best, 0.0]))

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
        action[3:6] = np.clip(_axis_angle(rot_target @ rot.T) / ROT_SCALE, -1.0, 1.0)
        return action

    def act(self, env: Any) -> np.ndarray:
        """The next 7-dim action for the LIBERO :class:`~lastr1.envs.libero.LiberoEnv` ``env``."""
        inner = env.sim_env
        pred, obj, target = self._goal(inner)
        pos, rot = self._eef(inner)
        obj_pos = inner.sim.data.body_xpos[inner.obj_body_id[obj]].copy()
        if self.phase in ("approach", "descend"):
            self.grasp = self._plan_grasp(inner, obj)
        assert self.grasp is not None or self.phase not in ("approach", "descend")
        grasp = self.grasp
        rot_t = self._orientation_target(rot, grasp.axis) if grasp is not None else rot
        target_xy, target_top = self._target(inner, target)
        carry_z = target_top + CLEARANCE + self.bottom_below_eef
        self.counter += 1

        if self.phase == "approach":
            goal = grasp.pos + np.array([0.0, 0.0, HOVER])
            act = self._move(pos, rot, goal, rot_t, 1.0)
            ori_err = np.linalg.norm(_axis_angle(rot_t @ rot.T))
            if (np.linalg.norm(goal - pos) < 0.01 and ori_err < 0.08) or self.counter > 80:
                self._enter("descend")
            act[6] = -1.0
        elif self.phase == "descend":
            act = self._move(pos, rot, grasp.pos, rot_t, 0.5)
            if np.linalg.norm(grasp.pos - pos) < 0.008 or self.counter > 40:
                self._enter("close")
            act[6] = -1.0
        elif self.phase == "close":
            act = self._move(pos, rot, grasp.pos, rot_t, 0.3)
            act[6] = 1.0
            if self.counter >= CLOSE_STEPS:
                pts = _object_points(inner, inner.obj_body_id[obj])
                self.offset = obj_pos - pos
                self.bottom_below_eef = float(pos[2] - pts[:, 2].min())
                self._enter("lift")
        elif self.phase == "lift":
            goal = np.array([pos[0], pos[1], max(carry_z, grasp.pos[2] + 0.1)])
            act = self._move(pos, rot, goal, rot_t, 1.0)
            act[6] = 1.0
            if obj_pos[2] - (pos + self.offset)[2] < -0.03:  # the object stayed behind: retry
                self._retry()
            elif abs(goal[2] - pos[2]) < 0.015 or self.counter > 60:
                self._enter("transport")
        elif self.phase == "transport":
            goal = np.array([*(target_xy - self.offset[:2]), max(carry_z, pos[2])])
            act = self._move(pos, rot, goal, rot_t, 1.0)
            act[6] = 1.0
            if np.linalg.norm(goal[:2] - pos[:2]) < 0.008 or self.counter > 100:
                self._enter("lower")
        elif self.phase == "lower":
            release_bottom = target_top + 0.01 if pred == "on" else self._in_release(inner, target)
            goal = np.array([*(target_xy - self.offset[:2]), release_bottom + self.bottom_below_eef])
            act = self._move(pos, rot, goal, rot_t, 0.5)
            act[6] = 1.0
            if abs(goal[2] - pos[2]) < 0.01 or self.counter > 40:
                self._enter("release")
        elif self.phase == "release":
            act = np.zeros(7)
            act[6] = -1.0
            if self.counter >= RELEASE_STEPS:
                self._enter("retreat")
        else:  # retreat
            act = self._move(pos, rot, np.array([pos[0], pos[1], carry_z + 0.05]), rot, 0.5)
            act[6] = -1.0
        return np.clip(act, -1.0, 1.0)

    @staticmethod
    def _in_release(inner: Any, region: str) -> float:
        """Height for the carried object's bottom when dropping it into a container region."""
        sid = inner.sim.model.site_name2id(region)
        return float(inner.sim.data.site_xpos[sid][2] - inner.sim.model.site_size[sid][2] + 0.04)

    def _enter(self, phase: str) -> None:
        self.phase, self.counter = phase, 0

    def _retry(self) -> None:
        if self.retries < MAX_RETRIES:
            self.retries += 1
            self._enter("approach")
        else:
            self._enter("retreat")
