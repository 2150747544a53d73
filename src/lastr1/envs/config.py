"""The environment config shared by every command that builds a simulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# CLI short flags of every command with an ``env: EnvConfig`` field (``--env libero --tasks a,b``)
ENV_ALIASES = {"env": "env.backend", "suite": "env.suite", "tasks": "env.tasks"}


@dataclass
class EnvConfig:
    """Which simulator, which tasks, and how to render and vectorise them."""

    backend: Literal["metaworld", "libero", "toy"] = "metaworld"
    # LIBERO: libero_spatial | libero_object | libero_goal | libero_10; Meta-World: "metaworld"; toy: "toy".
    # Empty picks the backend's first suite.
    suite: str = ""
    # Task names inside the suite (Meta-World: "pick-place-v3", ...; LIBERO: task names or ids).
    # Empty means the backend's default set.
    tasks: list[str] = field(default_factory=list)
    num_envs: int = 2
    image_size: int = 64
    wrist_view: bool = False
    # None uses the backend's per-suite default (LIBERO eval: 220/280/300/520).
    max_steps: int | None = None
    # "sync": all envs stepped in this process; "async": one subprocess per env (spawn).
    vector: Literal["sync", "async"] = "sync"
    # async only: subprocesses to spread the slots over (contiguous blocks); 0 = one per slot.
    # Fewer workers than cores leaves cores for the policy (see `collect(pipeline=...)`).
    workers: int = 0
    # Kept so saved configs load; must stay 0. Initial states are fixed by (task, init_set, index) so
    # that every run and evaluator sees the same starts; randomness belongs to each command's `seed`.
    seed: int = 0
    # Meta-World only: shrink every placement range (objects, goals) about its centre by this factor;
    # 1 = the benchmark's ranges. Small values give LIBERO-like layout jitter around one layout,
    # the regime where a one-demo warm-up partly works and RL has something to sharpen.
    placement_scale: float = 1.0
    # Where backends may write (generated train initial states, LIBERO config); never elsewhere.
    cache_dir: str = ".cache/lastr1"

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise ValueError(f"env.num_envs={self.num_envs} must be >= 1")
        if not 0 <= self.workers <= self.num_envs:
            raise ValueError(
                f"env.workers={self.workers} must be in [0, env.num_envs={self.num_envs}] (0 = one per env)"
            )
        if self.workers and self.vector != "async":
            raise ValueError(
                f"env.workers={self.workers} applies to env.vector=async only (it is {self.vector!r})"
            )
        if self.seed != 0:
            raise ValueError(
                f"env.seed={self.seed} is not used: initial states are fixed by (task, init_set, index) "
                "so runs compare; leave it at 0 and set the command's own seed instead (`lastr1 rl seed=1`, "
                "`lastr1 sft seed=1`, `lastr1 eval seed=1`)"
            )
        if not 16 <= self.image_size <= 512:
            raise ValueError(f"env.image_size={self.image_size} must be in [16, 512] pixels")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"env.max_steps={self.max_steps} must be >= 1 (or null for the default)")
        if not 0.0 < self.placement_scale <= 1.0:
            raise ValueError(
                f"env.placement_scale={self.placement_scale} must be in (0, 1] (1 = the benchmark's ranges)"
            )
        if self.placement_scale != 1.0 and self.backend != "metaworld":
            raise ValueError(
                f"env.placement_scale={self.placement_scale} applies to Meta-World only; "
                f"{self.backend} has fixed initial states (leave it at 1)"
            )
