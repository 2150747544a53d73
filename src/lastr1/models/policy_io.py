"""Tensor dataclasses the policy exchanges with rollout, RL and SFT code.

Why dataclasses of tensors: a rollout buffer can store :class:`ActionOutput` as is, slice it with
``index`` and rebuild a :class:`PolicyBatch` for the update without knowing the model's internals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def _map(obj: T, fn: Callable[[torch.Tensor], torch.Tensor]) -> T:
    """Apply ``fn`` to every tensor field (recursing into nested dataclasses); keep other fields."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = fn(value)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = _map(value, fn)
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def _cat(items: list[T]) -> T:
    first = items[0]
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(first):  # type: ignore[arg-type]
        value = getattr(first, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = torch.cat([getattr(i, f.name) for i in items])
        elif dataclasses.is_dataclass(value):
            changes[f.name] = _cat([getattr(i, f.name) for i in items])
    return dataclasses.replace(first, **changes)  # type: ignore[type-var]


class _TensorData:
    """``to`` / ``index`` / ``detach`` / ``cat`` for tensor dataclasses (batch axis first)."""

    def to(self: T, device: torch.device | str) -> T:
        return _map(self, lambda t: t.to(device))

    def index(self: T, idx: torch.Tensor | slice | list[int]) -> T:
        if isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return _map(self, lambda t: t[idx.to(t.device) if isinstance(idx, torch.Tensor) else idx])

    def detach(self: T) -> T:
        return _map(self, lambda t: t.detach())

    @classmethod
    def cat(cls, items: list[Any]) -> Any:
        if not items:
            raise ValueError(f"{cls.__name__}.cat needs at least one item")
        return _cat(items)


@dataclass
class PolicyInputs(_TensorData):
    """Pre-processed observation: what the network reads (the instruction already tokenised)."""

    images: torch.Tensor  # uint8 (B, V, H, W, 3)
    proprio: torch.Tensor  # float32 (B, P); P = 0 when the policy ignores proprio
    instruction_ids: torch.Tensor  # long (B, T); padding where instruction_mask is False
    instruction_mask: torch.Tensor  # bool (B, T)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class ActionOutput(_TensorData):
    """Everything ``act`` decided, enough to recompute every log-prob later."""

    actions: torch.Tensor  # float (B, C, A) un-normalised
    action_tokens: torch.Tensor  # long (B, C*A)
    latents: torch.Tensor  # float (B, K, D): the fed-back inputs z_1..z_K
    latent_len: torch.Tensor  # long (B,)
    stop_index: torch.Tensor  # long (B,): chosen candidate
    latent_mask: torch.Tensor  # bool (B, K): slot k < latent_len
    logp_action: torch.Tensor  # float64 (B,): sum over action tokens (float64: see docs/policy.md)
    logp_tokens: torch.Tensor  # float (B, C*A)
    logp_stop: torch.Tensor  # float (B,); 0 when K = 0
    stop_logits: torch.Tensor  # float (B, num_candidates)
    value: torch.Tensor  # float (B,)
    candidate_values: torch.Tensor  # float (B, num_candidates): the value at every stop candidate
    action_temperature: torch.Tensor  # float (B,): temperature the tokens were drawn at (1 for greedy)
    stop_temperature: torch.Tensor  # float (B,)
    stop_chosen: torch.Tensor  # bool (B,): False where the stop was kept from an earlier decision
    inputs: PolicyInputs

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class PolicyBatch(_TensorData):
    """A stored decision to re-score: inputs + what was chosen + at which temperatures."""

    inputs: PolicyInputs
    latents: torch.Tensor  # (B, K, D)
    stop_index: torch.Tensor  # (B,)
    action_tokens: torch.Tensor  # (B, C*A)
    action_temperature: torch.Tensor  # (B,)
    stop_temperature: torch.Tensor  # (B,)

    @staticmethod
    def from_act(out: ActionOutput) -> PolicyBatch:
        """The batch that re-scores an ``act`` output (the observation tensors travel inside ``out``)."""
        return PolicyBatch(
            inputs=out.inputs,
            latents=out.latents,
            stop_index=out.stop_index,
            action_tokens=out.action_tokens,
            action_temperature=out.action_temperature,
            stop_temperature=out.stop_temperature,
        )

    def __len__(self) -> int:
        return int(self.action_tokens.shape[0])


@dataclass
class LogProbs(_TensorData):
    """Teacher-forced re-scoring of a :class:`PolicyBatch` (differentiable)."""

    logp_tokens: torch.Tensor  # (B, C*A)
    logp_action: torch.Tensor  # float64 (B,): summed in double so re-scoring matches act to ~1e-6
    logp_stop: torch.Tensor  # (B,); 0 when K = 0
    mu: torch.Tensor  # (B, K, D): hidden states at the positions that produced z_1..z_K
    latent_mask: torch.Tensor  # (B, K)
    value: torch.Tensor  # (B,)
    entropy: torch.Tensor  # (B,): mean per-token entropy of the tempered action distribution
    stop_logits: torch.Tensor  # (B, num_candidates)
    action_logp_all: torch.Tensor  # (B, C*A, num_bins): the tempered log-distribution of every token


@dataclass
class SFTOutputs(_TensorData):
    """What the warm-up losses need; logits are raw (temperature 1)."""

    action_logits: torch.Tensor  # (B, C*A, num_bins)
    latents: torch.Tensor  # (B, K, D): the model's latent predictions (mu)
    latent_pred: torch.Tensor | None  # (B, K, target_dim) via latent_proj, None when target_dim = 0
    latent_mask: torch.Tensor  # (B, K): slot k < latent_len
    stop_logits: torch.Tensor  # (B, num_candidates)
    value: torch.Tensor  # (B,)
