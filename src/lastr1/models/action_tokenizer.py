"""Continuous actions <-> discrete tokens, the LaST-R1 / OpenVLA way.

Why a tokenizer at all: the policy predicts one categorical over ``num_bins`` per action dimension
and chunk step, which gives exact log-probabilities for PPO-style RL (LAPO) and cheap sampling at a
temperature. Each masked dimension is first normalised with the training set's 1st/99th
percentiles, ``a_n = clip(2 (a - q01) / (q99 - q01) - 1, -1, 1)``; unmasked dimensions (the gripper by
default) are only clipped to ``[-1, 1]``. ``[-1, 1]`` is cut into ``num_bins`` equal bins and a token
decodes to its bin centre, so the round-trip error in normalised space is at most half a bin width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

STAT_KEYS = ("q01", "q99")
# Below this percentile spread a dimension counts as constant: it normalises to 0 and decodes to q01.
_MIN_SPREAD = 1e-8


def identity_action_stats(action_dim: int = 7) -> dict[str, Any]:
    """Statistics that make normalisation the identity on ``[-1, 1]`` (for envs already in that range)."""
    ones = [1.0] * action_dim
    zeros = [0.0] * action_dim
    minus = [-1.0] * action_dim
    return {"action": {"mean": zeros, "std": ones, "min": minus, "max": ones, "q01": minus, "q99": ones}}


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


class ActionTokenizer:
    """Per-dimension normalisation + uniform binning of action chunks.

    ``stats`` is the dict loaded from ``dataset_statistics.json``: ``{"action": {"q01": [...], "q99":
    [...], ...}}`` (the inner dict alone is accepted too). Tokens are laid out time-major: token
    ``c * action_dim + d`` is chunk step ``c``, dimension ``d``.
    """

    def __init__(
        self,
        stats: dict[str, Any],
        num_bins: int = 256,
        chunk: int = 8,
        normalize_mask: Sequence[bool] | None = None,
        binarize_gripper: bool = True,
        gripper_dim: int = -1,
        gripper_threshold: float = 0.0,
    ) -> None:
        action_stats = stats.get("action", stats) if isinstance(stats, dict) else None
        if not isinstance(action_stats, dict) or any(k not in action_stats for k in STAT_KEYS):
            raise ValueError(
                "ActionTokenizer stats must be {'action': {'q01': [...], 'q99': [...], ...}} as written in "
                f"dataset_statistics.json; got keys {sorted(action_stats or stats)}"
            )
        q01 = torch.as_tensor(action_stats["q01"], dtype=torch.float64).flatten()
        q99 = torch.as_tensor(action_stats["q99"], dtype=torch.float64).flatten()
        if q01.shape != q99.shape or q01.numel() == 0:
            raise ValueError(
                f"action stats q01 and q99 must be equal-length non-empty lists, got {q01.numel()} and "
                f"{q99.numel()} entries"
            )
        if not (torch.isfinite(q01).all() and torch.isfinite(q99).all()):
            raise ValueError("action stats q01/q99 contain NaN or inf; recompute dataset_statistics.json")
        if num_bins < 2:
            raise ValueError(f"num_bins={num_bins} must be >= 2")
        if chunk < 1:
            raise ValueError(f"chunk={chunk} must be >= 1")
        self.action_dim = int(q01.numel())
        self.num_bins = int(num_bins)
        self.chunk = int(chunk)
        self.binarize_gripper = bool(binarize_gripper)
        self.gripper_dim = gripper_dim % self.action_dim
        self.gripper_threshold = float(gripper_threshold)
        if normalize_mask is None:
            mask = [True] * self.action_dim
            mask[self.gripper_dim] = False
        else:
            mask = [bool(m) for m in normalize_mask]
            if len(mask) != self.action_dim:
                raise ValueError(
                    f"normalize_mask has {len(mask)} entries but the action stats have {self.action_dim} dims"
                )
        self.stats = {
            k: [float(v) for v in _as_tensor(action_stats[k]).flatten().tolist()] for k in action_stats
        }
        self.mask = torch.tensor(mask, dtype=torch.bool)
        self.q01 = q01.float()
        self.q99 = q99.float()
        spread = q99 - q01
        self._constant = spread.abs() < _MIN_SPREAD
        self._spread = torch.where(self._constant, torch.ones_like(spread), spread).float()
        self.bin_width = 2.0 / self.num_bins
        self.bin_centers = -1.0 + self.bin_width * (torch.arange(self.num_bins, dtype=torch.float32) + 0.5)

    @property
    def num_tokens(self) -> int:
        """Tokens per action chunk (``chunk * action_dim``)."""
        return self.chunk * self.action_dim

    def _check(self, actions: torch.Tensor) -> None:
        if actions.ndim < 1 or actions.shape[-1] != self.action_dim:
            raise ValueError(
                f"actions must end in the action dimension {self.action_dim}, got shape {tuple(actions.shape)}"
            )

    def normalize(self, actions: Any) -> torch.Tensor:
        """Raw actions ``(..., action_dim)`` -> normalised and clipped to ``[-1, 1]``."""
        a = _as_tensor(actions).float()
        self._check(a)
        dev = a.device
        q01, spread, mask = self.q01.to(dev), self._spread.to(dev), self.mask.to(dev)
        normed = 2.0 * (a - q01) / spread - 1.0
        normed = torch.where(self._constant.to(dev), torch.zeros_like(normed), normed)
        return torch.where(mask, normed, a).clamp(-1.0, 1.0)

    def unnormalize(self, normed: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize` inside the clip range; binarises the gripper if configured."""
        self._check(normed)
        dev = normed.device
        q01, spread, mask = self.q01.to(dev), self._spread.to(dev), self.mask.to(dev)
        raw = (normed + 1.0) * 0.5 * spread + q01
        raw = torch.where(self._constant.to(dev), q01.expand_as(raw), raw)
        out = torch.where(mask, raw, normed)
        if self.binarize_gripper:
            g = out[..., self.gripper_dim]
            out = out.clone()
            out[..., self.gripper_dim] = torch.where(g > self.gripper_threshold, 1.0, -1.0)
        return out

    def encode(self, actions: Any) -> torch.Tensor:
        """``(B, chunk, action_dim)`` raw actions -> ``(B, chunk * action_dim)`` long tokens in ``[0, num_bins)``."""
        a = _as_tensor(actions)
        if a.ndim != 3 or a.shape[1:] != (self.chunk, self.action_dim):
            raise ValueError(
                f"encode expects actions of shape (B, {self.chunk}, {self.action_dim}), got {tuple(a.shape)}"
            )
        normed = self.normalize(a)
        idx = torch.floor((normed + 1.0) / self.bin_width).long().clamp(0, self.num_bins - 1)
        return idx.reshape(a.shape[0], self.num_tokens)

    def decode(self, tokens: Any) -> torch.Tensor:
        """``(B, chunk * action_dim)`` tokens -> ``(B, chunk, action_dim)`` float raw actions (bin centres)."""
        t = _as_tensor(tokens).long()
        if t.ndim != 2 or t.shape[1] != self.num_tokens:
            raise ValueError(f"decode expects tokens of shape (B, {self.num_tokens}), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_bins):
            raise ValueError(
                f"tokens must lie in [0, {self.num_bins}), got range [{int(t.min())}, {int(t.max())}]"
            )
        normed = self.bin_centers.to(t.device)[t].reshape(t.shape[0], self.chunk, self.action_dim)
        return self.unnormalize(normed)

    def decode_normalized(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens -> bin centres in normalised space ``(B, chunk, action_dim)`` (no un-normalisation)."""
        t = tokens.long()
        return self.bin_centers.to(t.device)[t].reshape(t.shape[0], self.chunk, self.action_dim)

    def state_dict(self) -> dict[str, Any]:
        """What :func:`json.dump` needs to rebuild the statistics (``dataset_statistics.json`` format)."""
        return {"action": dict(self.stats)}
