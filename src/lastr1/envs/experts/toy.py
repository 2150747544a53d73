"""Scripted expert of the toy reach backend: head straight for the named target."""

from __future__ import annotations

import numpy as np

from lastr1.envs.base import SingleObs, TaskSpec
from lastr1.envs.toy import ToyReachEnv


class ToyExpert:
    def __init__(self, env: ToyReachEnv):
        self.env = env

    def reset(self) -> None:
        pass

    def act(self, obs: SingleObs) -> np.ndarray:
        return self.env.expert_action().astype(np.float32)


def make_expert(task: TaskSpec, env: ToyReachEnv) -> ToyExpert:
    if not isinstance(env, ToyReachEnv):
        raise ValueError(f"the toy expert needs a ToyReachEnv, got {type(env).__name__}")
    return ToyExpert(env)
