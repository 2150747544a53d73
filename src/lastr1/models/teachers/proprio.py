"""Proprioceptive teacher: the future robot state (optionally with simulator object state).

The cheapest physically grounded target: slot k of step t regresses onto the proprio (and, with
``include_privileged``, the objects' poses) at frame t + k·Δ. Raw units differ wildly across
dimensions (metres, radians, gripper width), so the features are standardised per dimension with
dataset mean/std — given in the config or computed — which keeps cosine/MSE alignment balanced.
"""

from __future__ import annotations

import numpy as np

from lastr1.models.teachers.base import RunningStats, TargetTransform, TeacherConfig


class ProprioTeacher:
    """Per-frame raw features = proprio ⊕ privileged; ``normalized`` applies dataset stats."""

    name = "proprio"

    def __init__(self, cfg: TeacherConfig, proprio_dim: int | None = None, privileged_dim: int | None = None):
        self.cfg = cfg
        self._dim = (
            None if proprio_dim is None else proprio_dim + (privileged_dim or 0) * cfg.include_privileged
        )
        self.transform: TargetTransform | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise ValueError(
                "ProprioTeacher.dim is unknown until it has seen an episode; pass proprio_dim (and "
                "privileged_dim) to the constructor or call encode_frames first"
            )
        return self._dim

    def encode_frames(
        self, images: np.ndarray | None, proprio: np.ndarray | None, privileged: np.ndarray | None
    ) -> np.ndarray:
        """Raw (T, P [+ S]) float32 features in physical units (the cached quantity)."""
        del images
        if proprio is None:
            raise ValueError("the proprio teacher needs the episode's proprio array (T, P); got None")
        parts = [_as_2d(proprio, "proprio")]
        if self.cfg.include_privileged:
            if privileged is None:
                raise ValueError(
                    "teacher include_privileged=True but the episode has no privileged state; "
                    "record it in the demos or set include_privileged=False"
                )
            priv = _as_2d(privileged, "privileged")
            if priv.shape[0] != parts[0].shape[0]:
                raise ValueError(f"privileged has {priv.shape[0]} frames but proprio has {parts[0].shape[0]}")
            parts.append(priv)
        feats = np.concatenate(parts, axis=1).astype(np.float32)
        if self._dim is not None and feats.shape[1] != self._dim:
            raise ValueError(f"proprio teacher expected {self._dim} dims per frame, got {feats.shape[1]}")
        self._dim = feats.shape[1]
        return feats

    def fit(
        self, proprios: list[np.ndarray], privileged: list[np.ndarray | None] | None = None
    ) -> TargetTransform:
        """Compute the per-dimension mean/std (and any reduction) over a whole dataset's episodes."""
        stats = RunningStats()
        privs = privileged if privileged is not None else [None] * len(proprios)
        for prop, priv in zip(proprios, privs, strict=True):
            stats.update(self.encode_frames(None, prop, priv))
        self.transform = TargetTransform.fit(self.cfg, stats)
        return self.transform

    def normalized(self, proprio: np.ndarray, privileged: np.ndarray | None = None) -> np.ndarray:
        """Standardised (and reduced) per-frame features with the fitted or given statistics."""
        if self.transform is None:
            if self.cfg.norm_mean is None and self.cfg.normalization != "none":
                raise ValueError(
                    "proprio teacher has no normalisation stats: call fit(...) on the dataset or set "
                    "norm_mean/norm_std in the TeacherConfig"
                )
            raw = self.encode_frames(None, proprio, privileged)
            stats = RunningStats()
            stats.update(raw)  # only its dim is used when stats are given and no top-k is asked
            if self.cfg.reduction == "topk":
                raise ValueError("reduction='topk' needs dataset statistics: call fit(...) first")
            self.transform = TargetTransform.fit(self.cfg, stats)
        return self.transform(self.encode_frames(None, proprio, privileged))


def _as_2d(arr: np.ndarray, field: str) -> np.ndarray:
    out = np.asarray(arr, dtype=np.float32)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise ValueError(f"{field} must be (T, D), got shape {out.shape}")
    return out
