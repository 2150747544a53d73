"""RL objectives behind one registry: ``lapo``, ``ppo_action``, ``grpo_action``."""

from lastr1.algos.advantages import discounted_returns, gae, grpo, stop_baseline_shift, whiten, whitening
from lastr1.algos.base import AlgoConfig, Algorithm, NewTerms, OldTerms, StopConfig
from lastr1.algos.registry import ALGORITHMS, get_algorithm, register_algorithm

__all__ = [
    "ALGORITHMS",
    "AlgoConfig",
    "Algorithm",
    "NewTerms",
    "OldTerms",
    "StopConfig",
    "discounted_returns",
    "gae",
    "get_algorithm",
    "grpo",
    "register_algorithm",
    "stop_baseline_shift",
    "whiten",
    "whitening",
]
