"""Simulator backends behind one vectorised interface (see :mod:`lastr1.envs.base`)."""

from lastr1.envs.base import (
    ACTION_DIM,
    ChunkResult,
    EpisodeSpec,
    Observation,
    StepResult,
    TaskSpec,
    VectorEnv,
)
from lastr1.envs.config import EnvConfig
from lastr1.envs.suites import list_suites, list_tasks, make_env, resolve_suite, resolve_tasks

__all__ = [
    "ACTION_DIM",
    "ChunkResult",
    "EnvConfig",
    "EpisodeSpec",
    "Observation",
    "StepResult",
    "TaskSpec",
    "VectorEnv",
    "list_suites",
    "list_tasks",
    "make_env",
    "resolve_suite",
    "resolve_tasks",
]
