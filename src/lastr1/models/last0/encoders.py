"""The LaST0 policy's image encoder: one conv stack, a slow and a fast readout.

The reasoning expert reads each view as ``grid x grid`` tokens (the tiny LaST-R1 encoder's recipe:
three stride-2 convs, adaptive average pooling, a linear map, learned grid-position and view
embeddings). The acting expert reads the *current* frame as a coarser ``fast_grid x fast_grid`` map
of the same conv features, every chunk. Why one stack: when both experts read the same frame (every
reasoning step) the convs run once, and the fast view costs a pooling and a linear map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Readout(nn.Module):
    """Conv features -> ``grid x grid`` tokens per view."""

    def __init__(self, channels: int, d_model: int, num_views: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(channels, d_model)
        self.grid_pos = nn.Parameter(torch.randn(grid * grid, d_model) * 0.02)
        self.view = nn.Parameter(torch.randn(num_views, d_model) * 0.02)

    def forward(self, feat: torch.Tensor, b: int, v: int) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(feat, self.grid).flatten(2).transpose(1, 2)  # (B*V, g*g, C)
        tok = (self.proj(pooled) + self.grid_pos).view(b, v, self.grid * self.grid, -1)
        return (tok + self.view[None, :v, None]).flatten(1, 2)


class TwoRateImageEncoder(nn.Module):
    """uint8 images ``(B, V, H, W, 3)`` -> slow tokens ``(B, V·grid², D)`` and/or fast tokens
    ``(B, V·fast_grid², D)`` (``fast_grid = 0``: none)."""

    def __init__(
        self,
        d_model: int,
        num_views: int,
        grid: int,
        fast_grid: int,
        channels: tuple[int, ...] = (32, 64, 128),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(c_in, c, k, stride=2, padding=k // 2), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.slow = _Readout(c_in, d_model, num_views, grid)
        self.fast = _Readout(c_in, d_model, num_views, fast_grid) if fast_grid > 0 else None

    def num_tokens(self, num_views: int) -> tuple[int, int]:
        """(slow, fast) tokens for ``num_views`` views."""
        fast = self.fast.grid**2 if self.fast is not None else 0
        return num_views * self.slow.grid**2, num_views * fast

    def forward(
        self, images: torch.Tensor, slow: bool = True, fast: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        b, v = images.shape[:2]
        x = images.permute(0, 1, 4, 2, 3).float().flatten(0, 1) / 127.5 - 1.0
        feat = self.convs(x)
        slow_tok = self.slow(feat, b, v) if slow else None
        fast_tok = self.fast(feat, b, v) if fast and self.fast is not None else None
        return slow_tok, fast_tok
