"""The one vectorised environment interface every simulator backend implements.

Why one interface: the rollout collector, the evaluator and the demo writer must not know which
simulator they drive. Every backend therefore speaks batched numpy, gymnasium-style:

* ``reset(episodes)`` takes one :class:`EpisodeSpec` per environment slot -- which task, which
  named initial-state set (``train`` / ``eval``) and which index inside it -- so rollouts and
  evaluation are reproducible by construction and group rollouts (GRPO) can share a start.
* ``step(actions)`` takes a ``(N, 7)`` float array in ``[-1, 1]`` (delta end-effector xyz, delta
  rotation, gripper) and returns ``(obs, reward, terminated, truncated, info)`` with
  ``info["success"]`` a ``(N,)`` bool array.
* ``step_chunk(actions)`` takes ``(N, C, 7)`` and runs each slot's chunk open loop inside the slot
  (stopping at the episode's end), rendering only the observation after the chunk: one decision of
  a chunked policy is one call, and the ``C - 1`` frames nobody looks at are never drawn.

Observations are a :class:`Observation` of batched arrays (see its docstring). Slots that are done
keep returning their last observation until the next ``reset``; callers mask them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

ACTION_DIM = 7
InitSet = Literal["train", "eval"]
INIT_SETS: tuple[str, ...] = ("train", "eval")


@dataclass(frozen=True)
class TaskSpec:
    """A task a backend can run: identity, the English instruction, and its episode budget."""

    suite: str
    name: str
    instruction: str
    max_steps: int
    index: int = 0  # position inside its suite (LIBERO task id); 0 where meaningless


@dataclass(frozen=True)
class EpisodeSpec:
    """Which start an environment slot gets on reset.

    ``init_index`` indexes the named initial-state set of the task: the same
    ``(task, init_set, init_index)`` always yields the same initial state.
    """

    task: int  # index into the vector env's ``tasks`` list
    init_set: InitSet = "train"
    init_index: int = 0
    # this episode's step budget; None = the task's (evaluation) budget. RL rollouts on LIBERO use the
    # reference's longer rollout budgets while evaluation keeps the published ones.
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.init_set not in INIT_SETS:
            raise ValueError(
                f"EpisodeSpec.init_set={self.init_set!r} is not a known initial-state set; "
                f"use one of {INIT_SETS}"
            )
        if self.init_index < 0:
            raise ValueError(f"EpisodeSpec.init_index={self.init_index} must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"EpisodeSpec.max_steps={self.max_steps} must be >= 1 (or None for the task's)")


@dataclass
class Observation:
    """A batch of observations for N environment slots.

    * ``images``: uint8 ``(N, V, H, W, 3)``; view 0 is the agent (third-person) view, view 1 the
      wrist view when enabled. Images are upright (backends flip what their renderer gives).
    * ``proprio``: float32 ``(N, P)`` robot state (end-effector position, gripper, ...).
    * ``instruction``: N English strings.
    * ``privileged``: float32 ``(N, S)`` simulator state (object poses, goal) that a policy must
      not see; demos store it so latent targets and scripted experts can use it.
    * ``task``: int64 ``(N,)`` index into the vector env's task list.
    * ``slot``: int64 ``(N,)`` which env slot each row came from (kept through :meth:`select`, so a
      scripted policy can ask the right simulator); None for hand-made batches.
    """

    images: np.ndarray
    proprio: np.ndarray
    instruction: list[str]
    privileged: np.ndarray
    task: np.ndarray
    slot: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, index: np.ndarray | list[int]) -> Observation:
        """The sub-batch at ``index`` (used to drop finished slots)."""
        idx = np.asarray(index, dtype=np.int64)
        return Observation(
            images=self.images[idx],
            proprio=self.proprio[idx],
            instruction=[self.instruction[i] for i in idx.tolist()],
            privileged=self.privileged[idx],
            task=self.task[idx],
            slot=None if self.slot is None else self.slot[idx],
        )

    @staticmethod
    def stack(items: list[Observation]) -> Observation:
        """Concatenate observation batches along the slot axis."""
        return Observation(
            images=np.concatenate([o.images for o in items]),
            proprio=np.concatenate([o.proprio for o in items]),
            instruction=[s for o in items for s in o.instruction],
            privileged=np.concatenate([o.privileged for o in items]),
            task=np.concatenate([o.task for o in items]),
            slot=None if any(o.slot is None for o in items) else np.concatenate([o.slot for o in items]),  # type: ignore[misc]
        )


@dataclass
class StepResult:
    """What ``VectorEnv.step`` returns, one entry per slot."""

    obs: Observation
    reward: np.ndarray  # float32 (N,)
    terminated: np.ndarray  # bool (N,): success reached
    truncated: np.ndarray  # bool (N,): max steps reached without success
    info: dict[str, np.ndarray] = field(default_factory=dict)  # always has "success"


@dataclass
class ChunkResult(StepResult):
    """What ``VectorEnv.step_chunk`` returns: a :class:`StepResult` for the whole chunk.

    ``reward`` is summed over the chunk's executed steps; ``info`` adds ``"chunk_steps"`` (N,), the
    steps each slot executed in this chunk (0 for slots already done). ``frames[i]`` holds the agent
    view after every executed step of slot ``i`` for the first ``record`` slots (videos).
    """

    frames: list[list[np.ndarray]] = field(default_factory=list)


@runtime_checkable
class VectorEnv(Protocol):
    """The batched simulator interface (see module docstring)."""

    tasks: list[TaskSpec]
    num_envs: int
    image_size: int
    num_views: int

    def reset(self, episodes: list[EpisodeSpec]) -> Observation: ...

    def step(self, actions: np.ndarray) -> StepResult: ...

    def step_chunk(self, actions: np.ndarray, record: int = 0) -> ChunkResult: ...

    # split-phase step_chunk on a subset of slots, so the policy can decide for some slots while
    # others simulate (the collector's pipeline); results come back oldest send first
    def send_chunk(self, actions: np.ndarray, slots: Any = None, record: int = 0) -> None: ...

    def recv_chunk(self) -> ChunkResult: ...

    def num_init_states(self, task: int, init_set: InitSet) -> int: ...

    def close(self) -> None: ...


def check_actions(actions: np.ndarray, num_envs: int) -> np.ndarray:
    """Validate a batched action array and return it as float64 ``(N, 7)``."""
    arr = np.asarray(actions, dtype=np.float64)
    if arr.shape != (num_envs, ACTION_DIM):
        raise ValueError(
            f"actions must have shape ({num_envs}, {ACTION_DIM}) (one 7-dim action per env), got {arr.shape}"
        )
    return _finite_and_clipped(arr)


def check_action_chunks(actions: np.ndarray, num_envs: int) -> np.ndarray:
    """Validate a batched action-chunk array and return it as float64 ``(N, C, 7)``."""
    arr = np.asarray(actions, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] != num_envs or arr.shape[2] != ACTION_DIM or arr.shape[1] < 1:
        raise ValueError(
            f"action chunks must have shape ({num_envs}, C, {ACTION_DIM}) (C >= 1 actions per env), "
            f"got {arr.shape}"
        )
    return _finite_and_clipped(arr)


def _finite_and_clipped(arr: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(arr)):
        raise ValueError("actions contain NaN or inf; check the policy output")
    return np.clip(arr, -1.0, 1.0)


def check_episodes(episodes: list[EpisodeSpec], num_envs: int, num_tasks: int) -> None:
    """Validate a reset request: one spec per slot, task indices in range."""
    if len(episodes) != num_envs:
        raise ValueError(f"reset needs one EpisodeSpec per env: got {len(episodes)}, num_envs={num_envs}")
    for spec in episodes:
        if not 0 <= spec.task < num_tasks:
            raise ValueError(f"EpisodeSpec.task={spec.task} out of range: this env has {num_tasks} tasks")


@dataclass
class SingleObs:
    """One environment's observation; :class:`Observation` is a batch of these."""

    images: np.ndarray | None  # uint8 (V, H, W, 3), upright; None after a step(render=False)
    proprio: np.ndarray  # float32 (P,)
    privileged: np.ndarray  # float32 (S,), fixed S per backend (zero-padded)


@runtime_checkable
class SingleEnv(Protocol):
    """One simulator instance running one task; backends implement this, ``vector.py`` batches it.

    ``reset`` must be a pure function of ``(init_set, init_index)``: same arguments, same first
    observation, whatever happened before.
    """

    task: TaskSpec

    def reset(self, init_set: InitSet, init_index: int) -> SingleObs: ...

    def step(self, action: np.ndarray, render: bool = True) -> tuple[SingleObs, float, bool]:
        """Apply one 7-dim action in [-1, 1]; return (obs, reward, success).

        ``render=False`` lets the backend skip its cameras (``obs.images`` is then None): inside an
        open-loop action chunk nobody looks at the frames, and rendering is most of a step's cost.
        """
        ...

    def observe(self) -> SingleObs:
        """The current observation, rendered (after steps taken with ``render=False``)."""
        ...

    def num_init_states(self, init_set: InitSet) -> int: ...

    def close(self) -> None: ...
