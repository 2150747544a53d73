"""``lastr1 envs``: list simulator backends, their suites and tasks."""

from __future__ import annotations

from dataclasses import dataclass

from lastr1.envs.suites import BACKENDS, list_suites, list_tasks

ALIASES = {"env": "backend"}


@dataclass
class Config:
    """Which backend(s) and suite to list; empty lists everything that imports."""

    backend: str = ""
    suite: str = ""


def run(cfg: Config) -> int:
    if cfg.backend and cfg.backend not in BACKENDS:
        raise ValueError(f"backend={cfg.backend!r} is unknown; choose one of {sorted(BACKENDS)}")
    backends = [cfg.backend] if cfg.backend else list(BACKENDS)
    for backend in backends:
        try:
            suites = list_suites(backend)
        except ImportError as exc:  # a simulator stack not installed: say so, keep listing
            print(f"{backend}: not available ({exc})")
            continue
        if cfg.suite:
            if cfg.suite not in suites:
                if cfg.backend:
                    raise ValueError(f"suite={cfg.suite!r} is not a {backend} suite; choose one of {suites}")
                continue
            suites = [cfg.suite]
        for suite in suites:
            tasks = list_tasks(backend, suite)
            print(f"{backend} / {suite}: {len(tasks)} tasks")
            for i, task in enumerate(tasks):
                print(f"  {i:3d}  {task.name:<48s} max_steps={task.max_steps:<4d} {task.instruction}")
    return 0
