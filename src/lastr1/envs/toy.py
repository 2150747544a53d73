"""A pure-numpy toy backend: reach the target whose colour the instruction names.

Why it exists: unit and integration tests of the vector env, rollout collector and RL loop need an
environment that is instant, deterministic and GL-free, yet still needs vision *and* language (two
coloured targets, the instruction picks one). It implements the same ``SingleEnv`` protocol as the
simulator backends, so everything tested on it runs unchanged on Meta-World and LIBERO.
"""

from __future__ import annotations

import numpy as np

from lastr1.envs.base import InitSet, SingleObs, TaskSpec
from lastr1.envs.config import EnvConfig
from lastr1.envs.vector import BatchedEnv, build_vector_env

SUITES = ("toy",)
_COLOURS = {"red": (230, 40, 40), "blue": (40, 80, 230)}
_TASKS = [
    TaskSpec("toy", f"reach-{name}", f"move the gripper to the {name} target", max_steps=25, index=i)
    for i, name in enumerate(_COLOURS)
]
_NUM_EVAL = 50
_NUM_TRAIN = 10_000
_SUCCESS_RADIUS = 0.12
_STEP = 0.1


def suite_tasks(suite: str) -> list[TaskSpec]:
    return list(_TASKS)


def default_tasks(suite: str) -> list[TaskSpec]:
    return list(_TASKS)


class ToyReachEnv:
    """Agent at ``p`` in [-1, 1]^2 moves by ``0.1 * action[:2]``; success within 0.12 of its target."""

    def __init__(self, task: TaskSpec, cfg: EnvConfig):
        self.task = task
        self.size = cfg.image_size
        self.views = 2 if cfg.wrist_view else 1
        self._target_name = task.name.removeprefix("reach-")
        self._pos = np.zeros(2)
        self._targets: dict[str, np.ndarray] = {}
        self._succeeded = False

    def num_init_states(self, init_set: InitSet) -> int:
        return _NUM_EVAL if init_set == "eval" else _NUM_TRAIN

    def _init_state(self, init_set: InitSet, index: int) -> np.ndarray:
        if index >= self.num_init_states(init_set):
            raise ValueError(
                f"init_index={index} out of range for the {init_set!r} set ({self.num_init_states(init_set)} states)"
            )
        # Disjoint seed streams per set: eval uses even seeds, train odd ones (tested disjoint).
        seed = 2 * index + (0 if init_set == "eval" else 1)
        return np.random.default_rng([self.task.index, seed]).uniform(-0.8, 0.8, size=6)

    def reset(self, init_set: InitSet, init_index: int) -> SingleObs:
        state = self._init_state(init_set, init_index)
        self._pos = state[:2].copy()
        self._targets = {"red": state[2:4], "blue": state[4:6]}
        self._succeeded = False
        return self._obs()

    def step(self, action: np.ndarray, render: bool = True) -> tuple[SingleObs, float, bool]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._pos = np.clip(self._pos + _STEP * a[:2], -1.0, 1.0)
        success = bool(np.linalg.norm(self._pos - self._targets[self._target_name]) < _SUCCESS_RADIUS)
        reward = 1.0 if success and not self._succeeded else 0.0
        self._succeeded |= success
        return self._obs(render), reward, success

    def observe(self) -> SingleObs:
        return self._obs()

    def expert_action(self) -> np.ndarray:
        """A scripted expert: head straight for the right target (used for demos and tests)."""
        delta = (self._targets[self._target_name] - self._pos) / _STEP
        action = np.zeros(7)
        action[:2] = np.clip(delta, -1.0, 1.0)
        return action

    def _pixel(self, p: np.ndarray) -> tuple[int, int]:
        col = round((p[0] + 1) / 2 * (self.size - 1))
        row = round((1 - (p[1] + 1) / 2) * (self.size - 1))
        return row, col

    def _obs(self, render: bool = True) -> SingleObs:
        privileged = np.concatenate([self._pos, self._targets["red"], self._targets["blue"]]).astype(
            np.float32
        )
        obs = SingleObs(images=None, proprio=self._pos.astype(np.float32), privileged=privileged)
        if render:
            obs.images = self._draw()
        return obs

    def _draw(self) -> np.ndarray:
        img = np.full((self.size, self.size, 3), 245, dtype=np.uint8)
        r = max(1, self.size // 16)
        for name, rgb in _COLOURS.items():
            y, x = self._pixel(self._targets[name])
            img[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = rgb
        y, x = self._pixel(self._pos)
        img[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = (20, 20, 20)
        return np.stack([img] * self.views)

    def close(self) -> None:
        pass


def make_single_env(task: TaskSpec, cfg: EnvConfig) -> ToyReachEnv:
    return ToyReachEnv(task, cfg)


def make_vector_env(cfg: EnvConfig, tasks: list[TaskSpec]) -> BatchedEnv:
    return build_vector_env(cfg, tasks, make_single_env, max_cached_per_slot=len(tasks))
