"""LaST0's token layout and its joint attention mask.

Layout (absolute positions, the same for every sample)::

    reasoning expert (slow)                                      | acting expert (fast)
    [images V·g²][instruction T][proprio][<latent_start>][z_1..z_K] | [fast images][state][time][a_1..a_C]
    0 .................................................... n_reason-1 | n_reason ............... total-1

Latents are interleaved per keyframe: ``z`` for keyframe h is ``[camera 0, .., camera V-1, state]``.
Without the reasoning expert (the ablation) the reasoning part is empty and the acting part also
carries the instruction tokens (after the fast image tokens), so the policy still knows its task.

Mask: a reasoning query sees earlier valid reasoning keys and never an acting key; an acting query
sees every valid reasoning key and the acting keys up to itself (``causal``: the reference's ordinary
causal mask over the whole sequence) or all of them (``bidirectional``). Every token sees itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Last0Layout:
    """Where each segment lives."""

    n_obs: int  # reasoning observation tokens (images, instruction, proprio); 0 without reasoning
    n_latents: int  # K
    n_context: int  # acting tokens before the timestep token (fast images, instruction, state)
    chunk: int  # action tokens, one per chunk step
    causal_acting: bool = True

    @property
    def n_prefix(self) -> int:
        """Reasoning tokens fed in one call: the observation plus ``<latent_start>`` when K > 0."""
        return self.n_obs + (1 if self.n_latents else 0)

    @property
    def n_reason(self) -> int:
        return self.n_prefix + self.n_latents

    @property
    def n_act(self) -> int:
        return self.n_context + 1 + self.chunk

    @property
    def total(self) -> int:
        return self.n_reason + self.n_act

    @property
    def num_candidates(self) -> int:
        """No stop decision: LaST0 always thinks its K latents (the server and collector read this)."""
        return 0

    def acting_positions(self, device: torch.device | None = None) -> torch.Tensor:
        return torch.arange(self.n_reason, self.total, device=device)


def joint_mask(layout: Last0Layout, q_pos: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``(B, len(q_pos), K)`` for queries at ``q_pos`` over keys at ``0 .. K-1`` where
    ``key_valid`` ``(B, K)`` marks real (non-padding) keys."""
    dev = key_valid.device
    k_len = key_valid.shape[1]
    kpos = torch.arange(k_len, device=dev)
    q = q_pos.to(dev)
    causal = kpos[None, :] <= q[:, None]
    key_reason = kpos < layout.n_reason
    acting_keys = causal if layout.causal_acting else torch.ones_like(causal)
    # reasoning queries: causal, so never an acting key (acting positions come after all reasoning ones)
    acting_rows = key_reason[None, :] | acting_keys
    allowed = torch.where((q < layout.n_reason)[:, None], causal, acting_rows)
    mask = allowed[None] & key_valid[:, None, :]
    return mask | (kpos[None, :] == q[:, None])[None]
