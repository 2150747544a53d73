"""The environment config shared by every command that builds a simulator."""

from __future__ import annotations

import re
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
    # Task names inside the suite (Meta-World: "pick-place-v3", ...; LIBERO: task names or ids);
    # "all": every task of the suite. Empty means the backend's default set (LIBERO: the first task;
    # `lastr1 eval` on LIBERO: the whole suite, the benchmark protocol).
    tasks: list[str] = field(default_factory=list)
    num_envs: int = 2
    image_size: int = 64
    wrist_view: bool = False
    # None uses the backend's per-suite default (LIBERO eval: 220/280/300/520).
    max_steps: int | None = None
    # "sync": all envs stepped in this process; "async": one subprocess per env (spawn);
    # "ray": Ray actors on this machine or a cluster, replaced when they die or stall (docs/scaling.md).
    vector: Literal["sync", "async", "ray"] = "sync"
    # async only: subprocesses to spread the slots over (contiguous blocks); 0 = one per slot.
    # Fewer workers than cores leaves cores for the policy (see `collect(pipeline=...)`).
    workers: int = 0
    # ray only: Ray actors (env workers); num_envs must equal ray_workers * envs_per_worker.
    # 0 = num_envs / envs_per_worker.
    ray_workers: int = 0
    # ray only: env slots per actor (contiguous blocks), stepped in turn inside the actor.
    envs_per_worker: int = 1
    # ray only: "" starts a private local Ray instance (no dashboard) and stops it on close;
    # "auto" or HOST:PORT (e.g. the head's 10.0.0.1:6379) joins a running cluster.
    ray_address: str = ""
    # ray only: seconds a call to an actor (reset, one action chunk) may take before the actor counts as
    # stalled and is killed and replaced; its in-flight episodes are discarded.
    ray_timeout_s: float = 120.0
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
        self._check_ray()
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

    def _check_ray(self) -> None:
        """The ``ray_*`` fields: only with ``vector=ray``, and a layout that covers every slot."""
        changed = [
            f"env.{name}={getattr(self, name)!r}"
            for name, default in RAY_DEFAULTS.items()
            if getattr(self, name) != default
        ]
        if self.vector != "ray":
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} apply to env.vector=ray only (it is {self.vector!r}); "
                    "set env.vector=ray or leave them at their defaults"
                )
            return
        if self.ray_workers < 0:
            raise ValueError(
                f"env.ray_workers={self.ray_workers} must be >= 0 (0 = num_envs / envs_per_worker)"
            )
        if self.envs_per_worker < 1:
            raise ValueError(f"env.envs_per_worker={self.envs_per_worker} must be >= 1")
        per = self.envs_per_worker
        if self.ray_workers == 0 and self.num_envs % per:
            lower = max(per, self.num_envs - self.num_envs % per)
            raise ValueError(
                f"env.num_envs={self.num_envs} is not a multiple of env.envs_per_worker={per}; set "
                f"env.num_envs={lower} or {lower + per}, or env.envs_per_worker to a divisor of it"
            )
        if self.ray_workers and self.ray_workers * per != self.num_envs:
            raise ValueError(
                f"env.num_envs={self.num_envs} must equal env.ray_workers * env.envs_per_worker "
                f"({self.ray_workers} * {per} = {self.ray_workers * per}) with env.vector=ray; set "
                f"env.num_envs={self.ray_workers * per}, or env.ray_workers=0 to derive it from num_envs"
            )
        if not self.ray_timeout_s > 0:
            raise ValueError(f"env.ray_timeout_s={self.ray_timeout_s} must be > 0 seconds")
        if self.ray_address and not _RAY_ADDRESS.fullmatch(self.ray_address):
            raise ValueError(
                f"env.ray_address={self.ray_address!r} is not '', 'auto' or HOST:PORT; use '' for a local "
                "instance, 'auto' for the cluster `ray start` runs here, or the head's address (10.0.0.1:6379)"
            )

    @property
    def ray_actors(self) -> int:
        """How many Ray actors ``vector=ray`` starts (``ray_workers``, or derived from ``num_envs``)."""
        return self.ray_workers or self.num_envs // self.envs_per_worker


# the ray_* fields' defaults: any other value needs vector=ray
RAY_DEFAULTS: dict[str, object] = {
    "ray_workers": 0,
    "envs_per_worker": 1,
    "ray_address": "",
    "ray_timeout_s": 120.0,
}
_RAY_ADDRESS = re.compile(r"auto|[A-Za-z0-9_.\-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}")
