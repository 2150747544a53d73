"""Flow-matching math for the acting expert (conventions of the LaST0 / π0 reference).

Time runs from ``t = 1`` (pure noise) to ``t = 0`` (the action chunk)::

    x_t = t · noise + (1 − t) · a        velocity target  u = dx_t/dt = noise − a

Training draws ``t ~ Beta(1.5, 1) · 0.999 + 0.001`` (more weight near the noise end, never exactly 0)
and regresses the predicted velocity on ``u`` with an MSE. Sampling integrates the learned velocity
with ``N`` Euler steps of size ``1/N`` from ``t = 1`` to ``0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

BETA_A = 1.5  # Beta(1.5, 1): density ∝ t^0.5
T_SCALE, T_MIN = 0.999, 0.001


def sample_time(
    n: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """``(n,)`` training times ``Beta(1.5, 1) · 0.999 + 0.001``.

    Beta(a, 1) has CDF ``t^a``, so ``u^(1/a)`` with ``u ~ U(0, 1)`` samples it exactly from a seeded
    generator (``torch.distributions.Beta`` takes none)."""
    u = torch.rand(n, generator=generator, device=device)
    return u.pow(1.0 / BETA_A) * T_SCALE + T_MIN


def noisy_actions(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = t · noise + (1 − t) · a`` for chunks ``(B, C, A)`` and times ``(B,)``."""
    tt = t.to(actions.dtype)[:, None, None]
    return tt * noise + (1.0 - tt) * actions


def velocity_target(actions: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``u = noise − a``: the constant velocity of the straight path from the action to the noise."""
    return noise - actions


def flow_loss(pred: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the predicted velocity and ``noise − a``."""
    return F.mse_loss(pred, velocity_target(actions, noise))


def euler_sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, steps: int
) -> torch.Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` from ``x_1 = noise`` to ``t = 0`` in ``steps`` Euler steps
    (``t`` is passed as a ``(B,)`` tensor)."""
    if steps < 1:
        raise ValueError(f"euler steps={steps} must be >= 1")
    x = noise
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), 1.0 - i * dt, dtype=x.dtype, device=x.device)
        x = x - dt * velocity(x, t)
    return x


def time_features(
    t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0
) -> torch.Tensor:
    """Sinusoidal features ``(B, dim)`` of times in [0, 1]: sine and cosine at ``dim / 2`` periods spaced
    geometrically from ``min_period`` to ``max_period`` (fine enough to tell Euler steps apart, coarse
    enough to vary smoothly over the unit interval)."""
    if dim % 2:
        raise ValueError(f"time feature dim={dim} must be even")
    frac = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** frac
    angle = t.float()[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
