"""LaST0's own settings (``policy.family=last0``, read as ``policy.last0.*``).

Why a nested config and not a second top-level one: every command that builds or loads a policy
already carries a :class:`~lastr1.models.policy.PolicyConfig`; the shared fields there (width, depth,
heads, image grid, chunk, proprio) mean the same for both families, so a LaST0 policy is that config
with ``family=last0`` plus the few settings below. Defaults are the reference's where the facts
give them (``docs/last0.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Last0Config:
    """The dual system's settings; the architecture shared with LaST-R1 lives in PolicyConfig."""

    # false: the ablation without the slow system -- no reasoning expert, no observation prefix, no
    # latents; the acting expert alone reads the current frame, the state and the instruction
    reasoning: bool = True
    # H: future keyframes the latent thought covers; 0 = the reasoning expert reads the observation
    # but thinks no latents
    keyframes: int = 4
    # frames between keyframes (Δ): keyframe h of step t is frame t + h·Δ; 0 = chunk // keyframes, so
    # the last keyframe is where the next action chunk starts
    keyframe_stride: int = 0
    # per keyframe, one latent per camera aligned to a vision teacher's features of that camera
    vision_latents: bool = True
    # per keyframe, one latent aligned to the (standardised) future proprioceptive state
    state_latent: bool = True
    # κ: the reasoning expert runs at the first of every κ act() calls of an episode (one call = one
    # action chunk); its KV cache and latents are reused in between (reference test setting 1:4)
    reason_every: int = 4
    # SFT: per sample κ is drawn from these and the reasoning observation is s ~ U{0..κ-1} chunks
    # older than the acting one (reference: mixed κ in {2, 4, 8})
    train_reason_every: tuple[int, ...] = (2, 4, 8)
    euler_steps: int = 10  # Euler steps from t = 1 (noise) to t = 0 (action) per act()
    # the acting expert's view of the current frame: grid x grid tokens per camera; 0 = none
    fast_image_grid: int = 2
    # among the acting tokens: causal (the reference's ordinary causal mask) or bidirectional
    acting_attention: Literal["causal", "bidirectional"] = "causal"
    # start the acting expert as a copy of the reasoning expert's weights (a reference option)
    init_acting_from_reasoning: bool = False
    # width of each latent kind's alignment target (cameras in order, then the state); filled by SFT
    # from the teachers' features; empty = no alignment heads
    target_dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_reason_every", tuple(int(k) for k in self.train_reason_every))
        object.__setattr__(self, "target_dims", tuple(int(d) for d in self.target_dims))
        checks = [
            (self.keyframes >= 0, f"keyframes={self.keyframes} must be >= 0 (0 = no latents)"),
            (self.keyframe_stride >= 0, f"keyframe_stride={self.keyframe_stride} must be >= 0 (0 = auto)"),
            (
                self.keyframes == 0 or not self.reasoning or self.vision_latents or self.state_latent,
                "keyframes > 0 needs vision_latents or state_latent (or set keyframes=0)",
            ),
            (self.reason_every >= 1, f"reason_every={self.reason_every} must be >= 1"),
            (
                len(self.train_reason_every) > 0 and min(self.train_reason_every) >= 1,
                f"train_reason_every={list(self.train_reason_every)} must be a non-empty list of values >= 1",
            ),
            (self.euler_steps >= 1, f"euler_steps={self.euler_steps} must be >= 1"),
            (self.fast_image_grid >= 0, f"fast_image_grid={self.fast_image_grid} must be >= 0 (0 = none)"),
            (
                self.acting_attention in ("causal", "bidirectional"),
                f"acting_attention={self.acting_attention!r} must be 'causal' (reference) or 'bidirectional'",
            ),
            (min(self.target_dims, default=1) >= 1, f"target_dims={list(self.target_dims)} must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"last0.{msg}")

    def latent_kinds(self, num_views: int) -> int:
        """Latents per keyframe: one per camera (vision) and one for the state."""
        return num_views * int(self.vision_latents) + int(self.state_latent)

    def num_latents(self, num_views: int) -> int:
        """K = H keyframes x latents per keyframe (0 without the reasoning expert)."""
        return self.keyframes * self.latent_kinds(num_views) if self.reasoning else 0

    def stride(self, chunk: int) -> int:
        """Δ in frames (``keyframe_stride``, or ``chunk // keyframes`` when it is 0)."""
        if self.keyframe_stride:
            return self.keyframe_stride
        return max(1, chunk // max(1, self.keyframes))
