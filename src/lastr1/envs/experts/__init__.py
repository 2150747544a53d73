"""Scripted expert policies that produce one-shot demos from privileged simulator state.

Each backend with experts has a module ``lastr1.envs.experts.<backend>`` defining
``make_expert(task: TaskSpec, env: SingleEnv) -> ScriptedExpert``. The env is passed so an expert
that needs more than ``SingleObs.privileged`` (e.g. LIBERO object frames) can read its simulator;
the Meta-World experts only use the privileged state. Modules are imported lazily because each
pulls in its simulator stack.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from lastr1.envs.base import SingleEnv, SingleObs, TaskSpec


@runtime_checkable
class ScriptedExpert(Protocol):
    """A closed-loop controller for one task."""

    def reset(self) -> None:
        """Forget any per-episode state (call after every env reset)."""
        ...

    def act(self, obs: SingleObs) -> np.ndarray:
        """The next 7-dim action in ``[-1, 1]`` (float32) for this observation."""
        ...


def has_experts(backend: str) -> bool:
    """Whether ``lastr1.envs.experts.<backend>`` exists (without importing it)."""
    return importlib.util.find_spec(f"lastr1.envs.experts.{backend}") is not None


def expert_factory(backend: str) -> Callable[[TaskSpec, SingleEnv], ScriptedExpert]:
    """The backend's ``make_expert`` hook; ValueError when the backend has none."""
    if not has_experts(backend):
        raise ValueError(
            f"env.backend={backend!r} has no scripted experts (no lastr1.envs.experts.{backend})"
        )
    module = importlib.import_module(f"lastr1.envs.experts.{backend}")
    factory = getattr(module, "make_expert", None)
    if factory is None:
        raise ValueError(
            f"lastr1.envs.experts.{backend} does not define make_expert(task, env) yet, "
            f"so {backend} scripted demos are not available"
        )
    return factory


def make_expert(backend: str, task: TaskSpec, env: SingleEnv) -> ScriptedExpert:
    """The scripted expert of ``task`` on ``backend``."""
    return expert_factory(backend)(task, env)
