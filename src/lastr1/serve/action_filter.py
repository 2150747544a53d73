"""The action filter between the policy and the robot: finite, in the dataset's range, bounded steps.

Why on by default: the action tokenizer already decodes inside the training data's q01/q99 range, so
for a healthy checkpoint the filter changes nothing (greedy actions through the server equal
``act()``'s, tested) -- it is the last line against a damaged checkpoint, a stats file that does not
match the weights, or a future decoder that can extrapolate. Per dimension the allowed range is the
hull of the dataset's ``min``/``max`` and ``q01``/``q99`` (``dataset_statistics.json``); dimensions
the tokenizer does not normalise (the gripper) are kept in ``[-1, 1]``. ``max_translation`` (off by
default) additionally scales each step's translation part (dims 0-2: delta end-effector xyz in the
robot's units) down to at most that Euclidean norm -- a speed limit for a first run on hardware.
Non-finite actions are never sent: the request gets an error reply instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lastr1.models.action_tokenizer import ActionTokenizer

TRANSLATION_DIMS = (0, 1, 2)


class UnsafeActionError(RuntimeError):
    """The policy produced actions that cannot be made safe (NaN or inf)."""


@dataclass(frozen=True)
class FilterReport:
    """What the filter changed in one chunk (sent back in the reply as plain integers)."""

    clipped: int  # action values moved into the allowed range
    limited: int  # steps whose translation was scaled down


class ActionFilter:
    """Clip to ``[low, high]`` per dimension and optionally bound each step's translation norm."""

    def __init__(self, low: np.ndarray, high: np.ndarray, max_translation: float = 0.0) -> None:
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if low.shape != high.shape or low.ndim != 1 or not np.all(low <= high):
            raise ValueError("action filter: low and high must be equal-length vectors with low <= high")
        if not np.all(np.isfinite(low)) or not np.all(np.isfinite(high)):
            raise ValueError("action filter: the action range must be finite; check dataset_statistics.json")
        if max_translation < 0:
            raise ValueError(f"max_translation={max_translation} must be >= 0 (0 = no limit)")
        self.low, self.high, self.max_translation = low, high, float(max_translation)

    @classmethod
    def from_tokenizer(cls, tokenizer: ActionTokenizer, max_translation: float = 0.0) -> ActionFilter:
        """The range a checkpoint was trained on (see module docstring)."""
        stats = tokenizer.stats
        lo = tokenizer.q01.double().numpy().copy()
        hi = tokenizer.q99.double().numpy().copy()
        if "min" in stats and "max" in stats and len(stats["min"]) == len(lo) == len(stats["max"]):
            lo = np.minimum(lo, np.asarray(stats["min"], dtype=np.float64))
            hi = np.maximum(hi, np.asarray(stats["max"], dtype=np.float64))
        raw = ~tokenizer.mask.numpy()  # dims decoded in [-1, 1] without un-normalisation
        lo[raw], hi[raw] = np.minimum(lo[raw], -1.0), np.maximum(hi[raw], 1.0)
        # the policy decodes in float32: a bound's float32 rounding must not count as out of range
        lo = np.minimum(lo, lo.astype(np.float32).astype(np.float64))
        hi = np.maximum(hi, hi.astype(np.float32).astype(np.float64))
        return cls(lo, hi, max_translation)

    def __call__(self, actions: np.ndarray) -> tuple[np.ndarray, FilterReport]:
        """Filter a ``(chunk, action_dim)`` array; raise :class:`UnsafeActionError` on NaN/inf."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != len(self.low):
            raise ValueError(f"action filter expects (chunk, {len(self.low)}) actions, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise UnsafeActionError("the policy produced NaN or inf actions; nothing was sent to the robot")
        out = np.clip(a, self.low, self.high)
        clipped = int(np.count_nonzero(out != a))
        limited = 0
        if self.max_translation > 0 and a.shape[1] >= len(TRANSLATION_DIMS):
            xyz = out[:, TRANSLATION_DIMS]
            norm = np.linalg.norm(xyz, axis=1)
            over = norm > self.max_translation
            if over.any():
                out[np.ix_(over, TRANSLATION_DIMS)] = xyz[over] * (self.max_translation / norm[over])[:, None]
                limited = int(over.sum())
        return out, FilterReport(clipped, limited)
