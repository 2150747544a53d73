"""Registry of RL algorithms by name (RLinf-style): ``get_algorithm("lapo")``."""

from __future__ import annotations

from collections.abc import Callable

from lastr1.algos.base import Algorithm
from lastr1.algos.grpo_action import GrpoAction
from lastr1.algos.lapo import Lapo
from lastr1.algos.ppo_action import PpoAction

ALGORITHMS: dict[str, Callable[[], Algorithm]] = {}


def register_algorithm(name: str, factory: Callable[[], Algorithm]) -> None:
    """Add an algorithm; names are unique."""
    if name in ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is already registered")
    ALGORITHMS[name] = factory


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"algo.name={name!r} is unknown; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]()


register_algorithm("lapo", Lapo)
register_algorithm("ppo_action", PpoAction)
register_algorithm("grpo_action", GrpoAction)
