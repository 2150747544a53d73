"""Batched closed-loop rollouts: the collector and its padded trajectory batch."""

from lastr1.rollout.collector import Rollout, collect

__all__ = ["Rollout", "collect"]
