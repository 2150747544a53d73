"""Simulator geometry queries the scripted LIBERO expert plans with (MuJoCo model + data).

Why a module of its own: the expert's state machine (:mod:`lastr1.envs.experts.libero`) should read
as a controller; how an object's extent or the free height next to it is measured lives here.
Everything works on robosuite's ``sim`` wrapper (``inner.sim``) of a LIBERO env.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

_BOX_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
AXIS_STEP_DEG = 5.0  # resolution of the narrowest-width search; 5° costs < 0.2 % of width on a box


def _collides(m: Any) -> np.ndarray:
    """Mask of the geoms that take part in contacts (visual-only geoms have contype = conaffinity = 0)."""
    return (m.geom_contype != 0) | (m.geom_conaffinity != 0)


def object_points(sim: Any, body: int) -> np.ndarray:
    """World-frame corners of the collision geoms' bounding boxes of the object rooted at ``body``."""
    m, d = sim.model._model, sim.data._data
    geoms = np.flatnonzero((m.body_rootid[m.geom_bodyid] == body) & _collides(m))
    if not len(geoms):
        raise RuntimeError(f"body {body} has no collision geometry to plan a grasp on")
    local = m.geom_aabb[geoms, None, :3] + _BOX_SIGNS[None] * m.geom_aabb[geoms, None, 3:]  # (g, 8, 3)
    world = d.geom_xpos[geoms, None] + np.einsum("gij,gkj->gki", d.geom_xmat[geoms].reshape(-1, 3, 3), local)
    return world.reshape(-1, 3)


def narrowest_axis(points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Horizontal direction of least width, that width, and the xy centre of the oriented extent."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for theta in np.deg2rad(np.arange(0.0, 180.0, AXIS_STEP_DEG)):
        d = np.array([np.cos(theta), np.sin(theta)])
        n = np.array([-d[1], d[0]])
        pd, pn = points[:, :2] @ d, points[:, :2] @ n
        width = pd.max() - pd.min()
        if best is None or width < best[0]:
            centre = d * (pd.max() + pd.min()) / 2 + n * (pn.max() + pn.min()) / 2
            best = (width, d, centre)
    assert best is not None
    return np.array([*best[1], 0.0]), float(best[0]), best[2]


def axis_angle(rot: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of a 3x3 rotation matrix."""
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rot.reshape(-1))
    vel = np.zeros(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


class Obstacles:
    """The collision geoms around a grasp, frozen at one instant, as oriented bounding boxes.

    :meth:`top_in` answers "how high does anything reach inside this column" for a horizontal
    rectangle (a finger's or the palm's footprint). Each geom counts as its oriented bounding box:
    exact for the boxes LIBERO's fixtures are built from (a sampled ray cast misses 4 mm drawer
    walls; a world-aligned box inflates a rotated cabinet's walls), conservative for meshes.
    """

    def __init__(self, sim: Any, exclude_roots: set[int]):
        m, d = sim.model._model, sim.data._data
        keep = _collides(m) & (m.geom_type != mujoco.mjtGeom.mjGEOM_PLANE)  # the floor plane is infinite
        keep &= ~np.isin(m.body_rootid[m.geom_bodyid], list(exclude_roots))
        geoms = np.flatnonzero(keep)
        mats = d.geom_xmat[geoms].reshape(-1, 3, 3)
        local = m.geom_aabb[geoms, None, :3] + _BOX_SIGNS[None] * m.geom_aabb[geoms, None, 3:]
        corners = d.geom_xpos[geoms, None] + np.einsum("gij,gkj->gki", mats, local)  # (g, 8, 3)
        self.corners_xy = corners[..., :2]
        self.tops = corners[..., 2].max(axis=1)
        # normals of each box's projected edges: the box's separating-axis candidates in the plane
        box_axes = mats[:, :2, :].transpose(0, 2, 1)  # (g, 3, 2): each local axis projected on xy
        normals = np.stack([-box_axes[..., 1], box_axes[..., 0]], axis=-1)
        lengths = np.linalg.norm(normals, axis=-1, keepdims=True)
        self.normals = np.where(lengths > 1e-9, normals / np.maximum(lengths, 1e-9), np.array([1.0, 0.0]))

    def top_in(self, centre: np.ndarray, axis: np.ndarray, half_along: float, half_across: float) -> float:
        """Highest top of the boxes overlapping the rectangle centred at ``centre`` (xy), ``half_along``
        along the unit ``axis`` and ``half_across`` across it; ``-inf`` when none does."""
        normal = np.array([-axis[1], axis[0]])
        rect = np.array(
            [centre + axis * a * half_along + normal * b * half_across for a in (-1, 1) for b in (-1, 1)]
        )
        shared = np.broadcast_to(np.stack([axis, normal]), (len(self.tops), 2, 2))
        axes = np.concatenate([shared, self.normals], axis=1)  # (g, 5, 2)
        proj_box = np.einsum("gkd,gad->gak", self.corners_xy, axes)
        proj_rect = np.einsum("rd,gad->gar", rect, axes)
        separated = (proj_box.max(-1) < proj_rect.min(-1)) | (proj_rect.max(-1) < proj_box.min(-1))
        tops = self.tops[~separated.any(axis=1)]
        return float(tops.max()) if len(tops) else -np.inf
