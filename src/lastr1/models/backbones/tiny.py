"""A from-scratch pre-norm causal transformer for CPU, plus the small observation encoders.

Why from scratch: the CPU demo needs a ~1-3 M parameter model that trains in minutes, and the policy
needs exact control of three things a generic LM wrapper hides -- input *embeddings* (latents are fed
back as embeddings), an explicit per-sample boolean attention mask (latent slots after the chosen
reasoning length are hidden from the action slots) and explicit position ids (action slots keep
fixed positions whatever the reasoning length). The KV cache is a list of per-layer ``(k, v)``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TinyConfig:
    """Shape of the tiny transformer."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    max_positions: int = 256
    dropout: float = 0.0
    norm: str = "rms"  # "rms" | "layer"
    mlp: str = "swiglu"  # "swiglu" | "gelu"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm={self.norm!r} must be 'rms' or 'layer'")
        if self.mlp not in ("swiglu", "gelu"):
            raise ValueError(f"mlp={self.mlp!r} must be 'swiglu' or 'gelu'")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    return RMSNorm(dim) if kind == "rms" else nn.LayerNorm(dim)


class Attention(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, n, d)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        hidden = int(cfg.d_model * cfg.mlp_ratio)
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            hidden = int(2 * hidden / 3)  # keep the parameter count of a GELU MLP of the same ratio
            self.gate = nn.Linear(cfg.d_model, hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate(x)) * self.up(x) if self.kind == "swiglu" else F.gelu(self.up(x))
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg.norm, cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.norm1(x), mask, past)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, kv


class TinyTransformer(nn.Module):
    """Pre-norm transformer over input embeddings with learned absolute positions and a KV cache.

    ``forward(embeds (B, L, D), position_ids (L,) or (B, L), attn_mask (B, L, L_past + L) bool, past)``
    returns the final-normed hidden states ``(B, L, D)`` and the cache extended by these ``L`` tokens.
    ``attn_mask[b, i, j]`` is True where query ``i`` may attend to key ``j``; every row needs at least
    one True entry (the policy always lets a token see itself).
    """

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_model = cfg.d_model
        self.pos = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.apply(_init_weights)
        for block in self.blocks:  # GPT-2 style: shrink residual writes with depth
            nn.init.normal_(block.attn.out.weight, std=0.02 / (2 * cfg.n_layers) ** 0.5)
            nn.init.normal_(block.mlp.down.weight, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    def forward(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        b, n, _ = embeds.shape
        past_len = past[0][0].shape[2] if past else 0
        if attn_mask.shape != (b, n, past_len + n):
            raise ValueError(
                f"attn_mask must have shape (B, L, L_past + L) = {(b, n, past_len + n)}, got "
                f"{tuple(attn_mask.shape)}"
            )
        if int(position_ids.max()) >= self.cfg.max_positions:
            raise ValueError(
                f"position id {int(position_ids.max())} exceeds max_positions={self.cfg.max_positions}; "
                "raise the backbone's max_positions"
            )
        x = self.drop(embeds + self.pos(position_ids))
        cache: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, attn_mask, past[i] if past else None)
            cache.append(kv)
        return self.norm(x), cache


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


# ----------------------------------------------------------------------------- observation encoders


class ImageEncoder(nn.Module):
    """uint8-derived images ``(B, V, 3, H, W)`` in ``[-1, 1]`` -> ``(B, V * grid**2, D)`` tokens.

    Three strided convs (each halves the resolution) then adaptive average pooling to a ``grid x grid``
    map, a linear projection, a learned grid-position embedding and a per-view embedding. One conv
    stack is shared by all views.
    """

    def __init__(
        self, d_model: int, num_views: int, grid: int = 4, channels: tuple[int, ...] = (32, 64, 128)
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(c_in, c, k, stride=2, padding=k // 2), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.grid = grid
        self.proj = nn.Linear(c_in, d_model)
        self.grid_pos = nn.Parameter(torch.randn(grid * grid, d_model) * 0.02)
        self.view = nn.Parameter(torch.randn(num_views, d_model) * 0.02)

    def num_tokens(self, num_views: int) -> int:
        return num_views * self.grid * self.grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        feat = self.convs(images.flatten(0, 1))
        feat = F.adaptive_avg_pool2d(feat, self.grid).flatten(2).transpose(1, 2)  # (B*V, g*g, C)
        tok = self.proj(feat) + self.grid_pos
        tok = tok.view(b, v, self.grid * self.grid, -1) + self.view[None, :v, None]
        return tok.flatten(1, 2)


class HashWordTokenizer:
    """Download-free instruction tokenizer: lower-cased words hashed (CRC32) into fixed buckets.

    Id 0 is padding. CRC32 (not Python's salted ``hash``) keeps ids identical across processes and
    runs, so a saved policy reads instructions the same way after loading.
    """

    def __init__(self, vocab_size: int = 2048, max_len: int = 20) -> None:
        if vocab_size < 2 or max_len < 1:
            raise ValueError(f"instruction vocab_size={vocab_size} must be >= 2 and max_len={max_len} >= 1")
        self.vocab_size = vocab_size
        self.max_len = max_len
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        hit = self._cache.get(text)
        if hit is None:
            words = re.findall(r"[a-z0-9]+", text.lower())[: self.max_len]
            hit = [1 + zlib.crc32(w.encode()) % (self.vocab_size - 1) for w in words]
            if len(self._cache) < 100_000:
                self._cache[text] = hit
        return hit

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> ``(ids (B, max_len) long, mask (B, max_len) bool)``, right-padded with 0."""
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"instruction[{i}] must be a string, got {type(text).__name__}")
            row = self.ids(text)
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != 0


class ProprioEncoder(nn.Module):
    """Proprioceptive state ``(B, P)`` -> one token ``(B, 1, D)``."""

    def __init__(self, proprio_dim: int, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(proprio_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.net(proprio)[:, None]
