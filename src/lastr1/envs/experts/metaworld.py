"""Meta-World's shipped scripted policies (``metaworld.policies``) as lastr1 experts.

They read the 39-dim goal-visible state, which our Meta-World env exposes as ``privileged``, and
return Meta-World's 4-dim ``[dx, dy, dz, grip]``; we place it in our 7-dim layout
``[dx, dy, dz, 0, 0, 0, grip]`` (the inverse of the env's action mapping) and clip to ``[-1, 1]``
(the policies' P-controllers can exceed it; Meta-World clips the same way).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from lastr1.envs.base import ACTION_DIM, SingleEnv, SingleObs, TaskSpec

PRIVILEGED_DIM = 39


def expert_names() -> list[str]:
    """Task names with a shipped scripted policy (all 50 v3 tasks in metaworld 3.1.1)."""
    from metaworld.policies import ENV_POLICY_MAP

    return list(ENV_POLICY_MAP)


def to_lastr1_action(mw_action: np.ndarray) -> np.ndarray:
    """Meta-World ``[dx, dy, dz, grip]`` -> our 7-dim action (rotation dims zero), clipped."""
    mw = np.clip(np.asarray(mw_action, dtype=np.float64).reshape(4), -1.0, 1.0)
    out = np.zeros(ACTION_DIM, dtype=np.float32)
    out[:3] = mw[:3]
    out[6] = mw[3]
    return out


class MetaWorldExpert:
    """Stateless wrapper around one ``metaworld.policies`` policy."""

    def __init__(self, task_name: str):
        from metaworld.policies import ENV_POLICY_MAP

        if task_name not in ENV_POLICY_MAP:
            raise ValueError(
                f"no Meta-World scripted policy for task {task_name!r}; known: {', '.join(ENV_POLICY_MAP)}"
            )
        self.task_name = task_name
        self._policy: Any = ENV_POLICY_MAP[task_name]()

    def reset(self) -> None:
        """Meta-World's policies keep no episode state."""

    def act(self, obs: SingleObs) -> np.ndarray:
        state = np.asarray(obs.privileged, dtype=np.float64)
        if state.shape != (PRIVILEGED_DIM,):
            raise ValueError(
                f"the Meta-World expert needs the {PRIVILEGED_DIM}-dim privileged state, got {state.shape}"
            )
        with warnings.catch_warnings():
            # move() warns whenever its P-gain saturates; that is expected and clipped below.
            warnings.simplefilter("ignore", UserWarning)
            mw_action = self._policy.get_action(state)
        return to_lastr1_action(mw_action)


def make_expert(task: TaskSpec, env: SingleEnv | None = None) -> MetaWorldExpert:
    """The backend hook :func:`lastr1.envs.experts.make_expert` calls."""
    return MetaWorldExpert(task.name)
