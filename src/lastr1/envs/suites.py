"""Registry of simulator backends and their suites.

Backends are imported lazily so ``lastr1 --help`` and the unit tests of other layers never pay for
MuJoCo, robosuite or LIBERO imports.
"""

from __future__ import annotations

import importlib
from typing import Any

from lastr1.envs.base import TaskSpec, VectorEnv
from lastr1.envs.config import EnvConfig

# backend name -> module implementing ``SUITES``, ``suite_tasks(suite)``, ``default_tasks(suite)``,
# ``make_single_env(task, cfg)`` and ``make_vector_env(cfg, tasks)``
BACKENDS: dict[str, str] = {
    "metaworld": "lastr1.envs.metaworld",
    "libero": "lastr1.envs.libero",
    "toy": "lastr1.envs.toy",
}


def _backend(name: str) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"env.backend={name!r} is unknown; choose one of {sorted(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def list_suites(backend: str) -> list[str]:
    """The suites a backend offers."""
    return list(_backend(backend).SUITES)


def list_tasks(backend: str, suite: str) -> list[TaskSpec]:
    """Every task of a suite, in the suite's canonical order."""
    module = _backend(backend)
    if suite not in module.SUITES:
        raise ValueError(f"env.suite={suite!r} is not a {backend} suite; choose one of {list(module.SUITES)}")
    return list(module.suite_tasks(suite))


def resolve_suite(cfg: EnvConfig) -> str:
    """``cfg.suite``, or the backend's first suite when left empty."""
    return cfg.suite or list_suites(cfg.backend)[0]


def resolve_tasks(cfg: EnvConfig) -> list[TaskSpec]:
    """The tasks named in ``cfg.tasks`` (names or integer ids), every task of the suite for ``["all"]``,
    or the backend's default set when empty (LIBERO: the suite's first task only)."""
    module = _backend(cfg.backend)
    suite = resolve_suite(cfg)
    available = list_tasks(cfg.backend, suite)
    by_name = {t.name: t for t in available}
    if [str(t).strip() for t in cfg.tasks] == ["all"]:  # every task of the suite (LIBERO: the protocol's 10)
        chosen: list[TaskSpec] = list(available)
        items: list[str] = []
    else:
        chosen = [] if cfg.tasks else list(module.default_tasks(suite))
        items = list(cfg.tasks)
    for item in items:
        key = str(item).strip()
        if key in by_name:
            chosen.append(by_name[key])
        elif key.isdigit() and int(key) < len(available):
            chosen.append(available[int(key)])
        else:
            names = ", ".join(t.name for t in available[:8])
            more = f", ... ({len(available)} in all; `lastr1 envs --backend {cfg.backend}` lists them)"
            raise ValueError(f"env.tasks: unknown task {key!r} in suite {suite!r}; known: {names}{more}")
    if cfg.max_steps is not None:  # one override for every task, e.g. short smoke tests
        chosen = [TaskSpec(t.suite, t.name, t.instruction, cfg.max_steps, t.index) for t in chosen]
    return chosen


def rollout_max_steps(cfg: EnvConfig, task: TaskSpec) -> int:
    """Step budget of an RL rollout of ``task``: ``env.max_steps`` when set, else the backend's rollout
    budget (LIBERO: the reference's 240/320/320/576), else the task's evaluation budget."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    hook = getattr(_backend(cfg.backend), "rollout_max_steps", None)
    return int(hook(task)) if hook is not None else task.max_steps


def make_env(cfg: EnvConfig) -> VectorEnv:
    """Build the vectorised environment a config describes."""
    tasks = resolve_tasks(cfg)
    return _backend(cfg.backend).make_vector_env(cfg, tasks)
