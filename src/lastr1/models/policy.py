"""The LaST-R1 policy: observation -> latent chain of thought with adaptive length -> action chunk.

See ``docs/policy.md`` and :mod:`lastr1.models.latent` for the sequence layout and masks. In short:
the transformer reads the observation prefix, runs ``k_max`` Coconut-style latent steps (each step's
final hidden state is the next input embedding, one KV-cached token per step), a stop head scores the
candidate lengths ``{group, 2 group, .., k_max}``, the chosen length masks later latents out of the
action slots' attention, and all ``chunk * action_dim`` action tokens are decoded in one forward pass.
On Qwen3-VL with ``qwen3_vl_layout="reference"`` the sequence and readouts are the reference's
(``<latent_end>`` tokens, ``lm_head`` stop and action logits; docs/backbones.md).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lastr1.models.action_tokenizer import ActionTokenizer, identity_action_stats
from lastr1.models.backbones import (
    Backbone,
    HashWordTokenizer,
    ImageEncoder,
    ProprioEncoder,
    TinyConfig,
    TinyTransformer,
)
from lastr1.models.backbones.factory import (
    BACKBONE_DIR,
    EXTERNAL,
    build_backbone,
    build_layout_tokens,
    check_saved_layout_tokens,
    is_external_key,
    own_state,
    save_external,
)
from lastr1.models.backbones.run_settings import RUN_FILE, BackboneRunConfig
from lastr1.models.decode import DECODE_FILE, DecodeConfig, split_legacy_config
from lastr1.models.last0.config import Last0Config
from lastr1.models.latent import DecodeStream, SequenceLayout, choose_stop, sample_tokens
from lastr1.models.policy_io import ActionOutput, LogProbs, PolicyBatch, PolicyInputs, SFTOutputs

CONFIG_FILE = "config.json"
_LEGACY_NOTED: set[str] = set()
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "dataset_statistics.json"


@dataclass(frozen=True)
class PolicyConfig:
    """What the weights need: the architecture, frozen. Decoding lives in :class:`DecodeConfig`.

    Reference (LaST-R1 LIBERO) values where they apply.
    """

    # which policy: "lastr1" (latent reasoning with an adaptive stop, discrete action tokens) or "last0"
    # (the dual-system predecessor: reasoning and acting experts, flow-matching actions; its own
    # settings are last0.*; docs/last0.md). Saved in config.json, so loaders pick the right class
    family: Literal["lastr1", "last0"] = "lastr1"
    # the sequence model: "tiny" (from scratch, for CPU) or "qwen3_vl" (Qwen3-VL's language model and
    # vision tower through transformers). For qwen3_vl, d_model / n_layers / n_heads are read from the
    # model's config.json (values given here are replaced), and mlp_ratio, dropout, image_grid and
    # instruction_vocab are unused (docs/backbones.md)
    backbone: Literal["tiny", "qwen3_vl"] = "tiny"
    # qwen3_vl: the token layout (docs/backbones.md). reference: the LaST-R1 reference's sequence --
    # <latent_start>, <latent_end>, <latent_pad> and num_bins <action_i> tokens in the tokenizer and
    # embedding (added when missing), the prompt left-padded to qwen3_vl_prompt_len, a <latent_end>
    # token after every latent_group latents, the stop score = the lm_head logit of <latent_end>,
    # action logits = the lm_head over the <action_i> rows, zero action-slot inputs
    # (action_slot_embedding unused), a ReLU value head, parallel decoding only. ours: milestone 2's
    # (a learned <latent_start> vector, linear stop and action heads, the instruction right-padded to
    # instruction_max_len). Unused by the tiny backbone
    qwen3_vl_layout: Literal["reference", "ours"] = "reference"
    # qwen3_vl_layout=reference: the prompt (images, instruction, proprio token) is left-padded to this
    # many tokens (reference: 95; 100 for libero_10); longer instructions are truncated
    qwen3_vl_prompt_len: int = 95
    # qwen3_vl: a local folder with Qwen3-VL weights, tokenizer and image processor (docs/backbones.md);
    # empty = random weights of qwen3_vl_size
    pretrained: str = ""
    # qwen3_vl without pretrained: which bundled config to build (2b, 4b: the published shapes; tiny: tests)
    qwen3_vl_size: Literal["tiny", "2b", "4b"] = "tiny"
    # qwen3_vl: LoRA adapters (peft) of this rank on the backbone's linear layers named in lora_targets;
    # the backbone's own weights are then frozen and only the adapters and our heads train; 0 = none
    lora_rank: int = 0
    lora_alpha: float = 16.0  # the adapters' update is scaled by lora_alpha / lora_rank
    # module names, matched at the end of a linear layer's path: the language model's attention
    # (q_proj, k_proj, v_proj, o_proj) and MLP (gate_proj, up_proj, down_proj); the vision tower's are
    # qkv, proj, linear_fc1, linear_fc2
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    image_size: int = 64
    num_views: int = 1
    image_grid: int = 4  # image tokens per view = grid**2 (tiny backbone)
    proprio_dim: int = 8
    use_proprio: bool = True
    instruction_vocab: int = 2048
    instruction_max_len: int = 20
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    k_max: int = 8  # latent slots; 0 = no latents and no stop decision
    latent_group: int = 2  # a stop candidate after every `latent_group` latents
    # add a per-candidate linear readout of the context state (the hidden state at <latent_start>)
    # to every candidate's stop logit (experimental: RL's algo.stop.context adds it, zero-initialised,
    # so a checkpoint's stop distribution is unchanged until RL trains it; docs/rl.md)
    stop_context: bool = False
    chunk: int = 8
    action_dim: int = 7
    num_bins: int = 256
    decoding: Literal["parallel", "autoregressive"] = "parallel"
    action_slot_embedding: Literal["learned", "zero"] = "learned"  # reference: zero
    value_hidden: tuple[int, ...] = (512, 256, 128)
    # latent_proj output size for the alignment loss; 0 = no projection (the latent itself is aligned)
    target_dim: int = 0
    binarize_gripper: bool = True
    normalize_mask: tuple[bool, ...] = ()  # empty = every dim but the gripper (last)
    # family=last0 only: the dual system's settings (keyframes, reason_every, euler_steps, ...)
    last0: Last0Config = field(default_factory=Last0Config)

    def __post_init__(self) -> None:
        self._resolve_backbone()
        if self.family == "last0" and self.backbone == "qwen3_vl":  # LaST0 has no reference token layout
            object.__setattr__(self, "qwen3_vl_layout", "ours")
        checks = [
            (self.family in ("lastr1", "last0"), f"family={self.family!r} must be 'lastr1' or 'last0'"),
            (self.k_max >= 0, f"k_max={self.k_max} must be >= 0"),
            (self.latent_group >= 1, f"latent_group={self.latent_group} must be >= 1"),
            (
                self.latent_group < 1 or self.k_max % self.latent_group == 0,
                f"k_max={self.k_max} must be a multiple of latent_group",
            ),
            (self.decoding in ("parallel", "autoregressive"), f"decoding={self.decoding!r} is unknown"),
            (
                self.qwen3_vl_layout in ("reference", "ours"),
                f"qwen3_vl_layout={self.qwen3_vl_layout!r} must be reference|ours",
            ),
            (self.qwen3_vl_prompt_len > 0, f"qwen3_vl_prompt_len={self.qwen3_vl_prompt_len} must be > 0"),
            (
                not self.reference_layout or self.decoding == "parallel",
                "qwen3_vl_layout=reference decodes the action tokens in parallel (the reference); set "
                "decoding=parallel, or qwen3_vl_layout=ours for autoregressive decoding",
            ),
            (self.action_slot_embedding in ("learned", "zero"), "action_slot_embedding must be learned|zero"),
            (self.use_proprio is False or self.proprio_dim > 0, "use_proprio needs proprio_dim > 0"),
            (self.image_size >= 8 and self.num_views >= 1, "image_size must be >= 8 and num_views >= 1"),
            (self.target_dim >= 0, f"target_dim={self.target_dim} must be >= 0"),
            (self.lora_rank >= 0, f"lora_rank={self.lora_rank} must be >= 0 (0 = no LoRA)"),
            (
                self.lora_rank == 0 or self.backbone == "qwen3_vl",
                f"lora_rank={self.lora_rank} needs backbone=qwen3_vl (the tiny backbone trains all its weights)",
            ),
            (
                self.lora_rank == 0 or (self.lora_alpha > 0 and len(self.lora_targets) > 0),
                "LoRA needs lora_alpha > 0 and at least one name in lora_targets",
            ),
            (
                self.d_model > 0 and self.n_layers > 0 and self.n_heads > 0,
                "d_model, n_layers, n_heads must be > 0",
            ),
            (
                self.backbone != "tiny" or self.n_heads < 1 or self.d_model % self.n_heads == 0,
                f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}",
            ),
            (
                self.chunk > 0 and self.action_dim > 0 and self.num_bins > 1,
                "chunk, action_dim > 0, num_bins > 1",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"PolicyConfig: {msg}")
        object.__setattr__(self, "value_hidden", tuple(int(h) for h in self.value_hidden))
        object.__setattr__(self, "normalize_mask", tuple(bool(m) for m in self.normalize_mask))
        object.__setattr__(self, "lora_targets", tuple(str(t) for t in self.lora_targets))

    @property
    def reference_layout(self) -> bool:
        """Whether the policy runs the reference's token layout (Qwen3-VL with qwen3_vl_layout=reference)."""
        return self.backbone == "qwen3_vl" and self.qwen3_vl_layout == "reference"

    def _resolve_backbone(self) -> None:
        """Check the backbone fields; for qwen3_vl take d_model, n_layers, n_heads from its config.json
        (a JSON read: no transformers needed to build or validate a config)."""
        if self.backbone not in ("tiny", "qwen3_vl"):
            raise ValueError(f"PolicyConfig: backbone={self.backbone!r} is unknown; use 'tiny' or 'qwen3_vl'")
        if self.backbone == "tiny":
            if self.pretrained:
                raise ValueError(
                    f"PolicyConfig: pretrained={self.pretrained!r} needs backbone=qwen3_vl; set "
                    "policy.backbone=qwen3_vl or leave policy.pretrained empty"
                )
            return
        from lastr1.models.backbones.qwen3_vl_files import hf_config_dict, text_dims

        d, layers, heads = text_dims(hf_config_dict(self.pretrained, self.qwen3_vl_size))
        for name, value in (("d_model", d), ("n_layers", layers), ("n_heads", heads)):
            object.__setattr__(self, name, value)


def _jsonable(obj: Any) -> Any:
    """Statistics as plain JSON types (numpy arrays and tensors become lists) so they save as given."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return np.asarray(obj.tolist()).tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def action_codec(cfg: PolicyConfig, stats: dict[str, Any] | None) -> tuple[dict[str, Any], ActionTokenizer]:
    """The dataset statistics a policy saves (identity when none) and the action tokenizer built from
    them; refuses statistics whose action width differs from ``cfg.action_dim``."""
    saved = _jsonable(stats) if stats is not None else identity_action_stats(cfg.action_dim)
    tokenizer = ActionTokenizer(
        saved,
        num_bins=cfg.num_bins,
        chunk=cfg.chunk,
        normalize_mask=cfg.normalize_mask or None,
        binarize_gripper=cfg.binarize_gripper,
    )
    if tokenizer.action_dim != cfg.action_dim:
        raise ValueError(
            f"dataset statistics have {tokenizer.action_dim} action dims but PolicyConfig.action_dim="
            f"{cfg.action_dim}; pass matching statistics"
        )
    return saved, tokenizer


def _mlp(sizes: list[int], activation: type[nn.Module] = nn.GELU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class LastR1Policy(nn.Module):
    """LaST-R1 policy on the tiny CPU backbone or Qwen3-VL (``PolicyConfig.backbone``). ``stats`` is
    ``dataset_statistics.json`` (None: identity); ``backbone_run`` how a pretrained backbone runs
    (precision, activation checkpointing, frozen vision tower; saved as ``backbone_run.json``)."""

    def __init__(
        self,
        config: PolicyConfig | None = None,
        stats: dict[str, Any] | None = None,
        decode: DecodeConfig | None = None,
        backbone_run: BackboneRunConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = self.config = config or PolicyConfig()
        if cfg.family != "lastr1":
            raise ValueError(
                f"policy.family={cfg.family!r} is a LaST0 policy, not LaST-R1: build it with "
                "lastr1.models.last0.policy.Last0Policy and load saved folders with lastr1.models.load_policy; "
                "LaST-R1-only code (RL, log_probs) does not apply to it (docs/last0.md)"
            )
        self.backbone_run = backbone_run or BackboneRunConfig()
        self.backbone_run.check_for(cfg.backbone)
        self.decode = decode or DecodeConfig()  # the default for act(); saved as decode.json
        self.decode.check_for(cfg.k_max, cfg.latent_group)
        self.stats, self.tokenizer = action_codec(cfg, stats)
        d = cfg.d_model
        self.obs_encoder: nn.Module | None = None
        self.layout_tokens: nn.Module | None = None  # the reference layout's token rows and readouts
        if cfg.backbone == "tiny":  # (this construction order keeps seeded tiny policies unchanged)
            self.text_tokenizer = HashWordTokenizer(cfg.instruction_vocab, cfg.instruction_max_len)
            self.image_encoder = ImageEncoder(d, cfg.num_views, cfg.image_grid)
            self.text_embed = nn.Embedding(cfg.instruction_vocab, d)
            self.proprio_encoder = ProprioEncoder(cfg.proprio_dim, d) if cfg.use_proprio else None
            n_obs = (
                self.image_encoder.num_tokens(cfg.num_views) + cfg.instruction_max_len + int(cfg.use_proprio)
            )
        else:
            self.image_encoder, self.text_embed, self.proprio_encoder = None, None, None
            backbone, self.obs_encoder = build_backbone(cfg, self.backbone_run)
            if cfg.reference_layout:
                self.layout_tokens = build_layout_tokens(cfg, backbone, self.obs_encoder)
            self.text_tokenizer = self.obs_encoder.tokenize
            n_obs = self.obs_encoder.num_tokens
        mean, std = self._proprio_stats()
        self.register_buffer("proprio_mean", mean)
        self.register_buffer("proprio_std", std)
        n_prefix = n_obs + 1
        ref = cfg.reference_layout
        self.layout = SequenceLayout(
            n_prefix, cfg.k_max, cfg.chunk * cfg.action_dim, cfg.latent_group, latent_end=ref
        )
        # the reference layout reads <latent_start> from the vocabulary and feeds zeros to the slots
        self.latent_start = None if ref else nn.Parameter(torch.randn(d) * 0.02)
        slots = (
            torch.randn(self.layout.n_actions, d) * 0.02 if not ref else torch.zeros(self.layout.n_actions, d)
        )
        if cfg.action_slot_embedding == "learned" and not ref:
            self.action_slots = nn.Parameter(slots)
        else:
            self.register_buffer("action_slots", torch.zeros_like(slots))
        self.action_token_embed = nn.Embedding(cfg.num_bins, d) if cfg.decoding == "autoregressive" else None
        if cfg.backbone == "tiny":
            backbone = TinyTransformer(
                TinyConfig(d, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio, self.layout.total, cfg.dropout)
            )
        self.backbone = backbone
        # the reference layout's stop and action readouts are lm_head rows (self.layout_tokens)
        self.stop_head = nn.Linear(d, 1) if cfg.k_max > 0 and not ref else None
        self.stop_context_head: nn.Linear | None = None
        if cfg.stop_context:
            self._add_stop_context()
        self.action_head = None if ref else nn.Linear(d, cfg.num_bins)
        self.value_head = _mlp([d, *cfg.value_hidden, 1], nn.ReLU if ref else nn.GELU)
        self.latent_proj = nn.Linear(d, cfg.target_dim) if cfg.target_dim > 0 else None
        for module in (self.text_embed, self.action_token_embed):
            if module is not None:
                nn.init.normal_(module.weight, std=0.02)

    def _add_stop_context(self) -> None:
        """Add the zero-initialised context readout of the stop (``PolicyConfig.stop_context``)."""
        if self.layout.k_max == 0:
            raise ValueError("stop_context needs k_max > 0: a policy without latents has no stop decision")
        if self.stop_context_head is None:
            head = nn.Linear(self.config.d_model, self.layout.num_candidates, bias=False)
            nn.init.zeros_(head.weight)
            self.stop_context_head = head
            # the readout reads <latent_start> minus this centre (fit_stop_context_center); zero = uncentred
            self.register_buffer("stop_context_center", torch.zeros_like(head.weight[0]))

    @torch.no_grad()
    def fit_stop_context_center(self, inputs: PolicyInputs) -> bool:
        """Centre the stop's context readout on the mean ``<latent_start>`` state of ``inputs`` (e.g.
        one first observation per episode of every task), while the readout is still zero, so acting
        does not change; returns whether it did.

        Why: the tasks' start states share most of their direction (cosine 0.93-0.98 between three of
        the demo's four tasks), so an uncentred readout trained on one task's reward moves every task's
        length alike; centred, it reads what tells the tasks apart (docs/rl.md, "per-task reasoning
        lengths in real RL").
        """
        head = self.stop_context_head
        if head is None or bool(head.weight.any()) or bool(self.stop_context_center.any()):
            return False
        _, h_start = self._open_stream(inputs.to(self.device), use_cache=True)
        self.stop_context_center.copy_(h_start.mean(0))
        return True

    # ------------------------------------------------------------------ pre-processing

    def _proprio_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.config.proprio_dim if self.config.use_proprio else 0
        mean, std = torch.zeros(p), torch.ones(p)
        ps = self.stats.get("proprio") if isinstance(self.stats, dict) else None
        if p and isinstance(ps, dict) and "mean" in ps and "std" in ps:
            m, s = torch.as_tensor(ps["mean"]).float().flatten(), torch.as_tensor(ps["std"]).float().flatten()
            if m.numel() != p or s.numel() != p:
                raise ValueError(f"stats['proprio'] has {m.numel()} dims but PolicyConfig.proprio_dim={p}")
            mean, std = m, s.clamp_min(1e-6)
        return mean, std

    @property
    def device(self) -> torch.device:
        return self.value_head[0].weight.device

    def encode_obs(self, obs: Any) -> PolicyInputs:
        """Validate an :class:`~lastr1.envs.base.Observation` and turn it into network inputs."""
        cfg = self.config
        images = torch.as_tensor(np.asarray(obs.images)) if not torch.is_tensor(obs.images) else obs.images
        want = (cfg.num_views, cfg.image_size, cfg.image_size, 3)
        if images.ndim != 5 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"obs.images has shape {tuple(images.shape)} but the policy expects (N, {', '.join(map(str, want))}) "
                f"(PolicyConfig image_size={cfg.image_size}, num_views={cfg.num_views}); make env.image_size / "
                "wrist_view match the policy config"
            )
        if images.dtype != torch.uint8:
            raise ValueError(f"obs.images must be uint8 in [0, 255], got dtype {images.dtype}")
        n = images.shape[0]
        if len(obs.instruction) != n:
            raise ValueError(f"obs.instruction has {len(obs.instruction)} strings for {n} images")
        if cfg.use_proprio:
            proprio = torch.as_tensor(np.asarray(obs.proprio, dtype=np.float32))
            if proprio.shape != (n, cfg.proprio_dim):
                raise ValueError(
                    f"obs.proprio has shape {tuple(proprio.shape)} but the policy expects ({n}, {cfg.proprio_dim}); "
                    "set PolicyConfig.proprio_dim to the env's proprio size (or use_proprio=false)"
                )
            if not torch.isfinite(proprio).all():
                raise ValueError("obs.proprio contains NaN or inf")
        else:
            proprio = torch.zeros(n, 0)
        ids, mask = self.text_tokenizer(list(obs.instruction))
        return PolicyInputs(images, proprio, ids, mask).to(self.device)

    def _prefix(self, inputs: PolicyInputs) -> tuple[torch.Tensor, torch.Tensor, Backbone]:
        """Prefix embeddings ``(B, Lp, D)``, key validity ``(B, Lp)`` and the backbone to run this batch
        on (Qwen3-VL's carries the batch's DeepStack image features)."""
        b = len(inputs)
        proprio = (inputs.proprio - self.proprio_mean) / self.proprio_std if self.config.use_proprio else None
        runner: Backbone = self.backbone
        order = None
        if self.obs_encoder is not None:
            embeds, valid_obs, deepstack, order = self.obs_encoder(
                inputs.images, inputs.instruction_ids, inputs.instruction_mask, proprio
            )
            parts, valid = [embeds], [valid_obs]
        else:
            img = inputs.images.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
            parts = [self.image_encoder(img), self.text_embed(inputs.instruction_ids)]
            valid = [
                torch.ones(b, parts[0].shape[1], dtype=torch.bool, device=img.device),
                inputs.instruction_mask,
            ]
            if self.proprio_encoder is not None:
                parts.append(self.proprio_encoder(proprio))
                valid.append(valid[0][:, :1])
        start = (
            self.layout_tokens.start(b)
            if self.layout_tokens is not None
            else self.latent_start.expand(b, 1, -1)
        )
        parts.append(start)
        valid.append(valid[0][:, :1])
        prefix_valid = torch.cat(valid, dim=1)
        if self.obs_encoder is not None:  # a left-padded prompt: the batch's positions go with it
            runner = self.backbone.bind(deepstack, order, prefix_valid if order is not None else None)
        return torch.cat(parts, dim=1), prefix_valid, runner

    # ------------------------------------------------------------------ building blocks

    def _stop_logits(self, chain: torch.Tensor) -> torch.Tensor:
        """``chain`` = hidden states at positions Lp-1 .. action_begin-1 (``(B, K+1, D)``; with
        ``<latent_end>`` tokens ``(B, K+K/group+1, D)``) -> ``(B, num_candidates)``."""
        if self.layout.k_max == 0:
            return chain.new_zeros(chain.shape[0], 0)
        idx = torch.tensor(self.layout.stop_rows(), device=chain.device)
        if self.layout_tokens is not None:  # the lm_head logit of <latent_end> at each group's end
            logits = self.layout_tokens.stop_logits(chain[:, idx])
        else:
            logits = self.stop_head(chain[:, idx]).squeeze(-1)
        if self.stop_context_head is not None:
            logits = logits + self.stop_context_head(chain[:, 0] - self.stop_context_center)
        return logits

    def _open_stream(self, inputs: PolicyInputs, use_cache: bool) -> tuple[DecodeStream, torch.Tensor]:
        """Feed the observation prefix; the decode stream and the ``<latent_start>`` state ``(B, D)``."""
        prefix, valid, runner = self._prefix(inputs)
        stream = DecodeStream(runner, self.layout, valid, self.config.decoding == "autoregressive", use_cache)
        full = torch.full((len(inputs),), self.layout.k_max, device=prefix.device)
        return stream, stream.feed(prefix, full)[:, -1]

    def _candidate_values(self, chain: torch.Tensor) -> torch.Tensor:
        """The value head at every stop candidate's ``<latent_end>`` ``(B, num_candidates)``: what the
        critic expects for each reasoning length (the stop's baseline, ``StopConfig.advantage``)."""
        if self.layout.k_max == 0:
            return chain.new_zeros(chain.shape[0], 0)
        idx = torch.tensor(self.layout.value_rows(), device=chain.device)
        return self.value_head(chain[:, idx]).squeeze(-1)

    def _value(self, chain: torch.Tensor, latent_len: torch.Tensor, detach: bool = False) -> torch.Tensor:
        h = chain[torch.arange(chain.shape[0], device=chain.device), self.layout.chain_rows(latent_len)]
        if detach:  # the critic reads the features but does not shape them
            h = h.detach()
        return self.value_head(h).squeeze(-1)

    def _mu(self, chain: torch.Tensor) -> torch.Tensor:
        """The hidden states that produced the latents ``(B, K, D)`` (the position before each slot)."""
        if not self.layout.latent_end:
            return chain[:, :-1]
        return chain[:, torch.tensor(self.layout.mu_rows(), dtype=torch.long, device=chain.device)]

    def _action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Action-slot hidden states -> logits over the bins (the ``<action_i>`` rows of the ``lm_head``
        in the reference layout)."""
        if self.layout_tokens is not None:
            return self.layout_tokens.action_logits(hidden)
        return self.action_head(hidden)

    def _reasoning_inputs(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, K, D)`` -> the inputs between ``<latent_start>`` and the action slots: the
        latents, with ``<latent_end>``'s embedding after every group in the reference layout."""
        lay = self.layout
        if not lay.latent_end:
            return latents
        end = self.layout_tokens.end(latents.shape[0]).to(latents.dtype)
        parts: list[torch.Tensor] = []
        for g in range(lay.num_candidates):
            parts += [latents[:, g * lay.latent_group : (g + 1) * lay.latent_group], end]
        return torch.cat(parts, dim=1)

    def _action_inputs(self, b: int, tokens: torch.Tensor | None) -> torch.Tensor:
        """Action-slot input embeddings; autoregressive mode adds the previous token's embedding."""
        emb = self.action_slots.expand(b, -1, -1)
        if self.action_token_embed is not None and tokens is not None:
            prev = self.action_token_embed(tokens[:, :-1])
            emb = torch.cat([emb[:, :1], emb[:, 1:] + prev], dim=1)
        return emb

    def _latent_mask(self, latent_len: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.layout.k_max, device=latent_len.device)[None] < latent_len[:, None]

    def _check_lengths(self, latent_len: torch.Tensor) -> None:
        allowed = self.layout.candidate_lengths() or [0]
        bad = ~torch.isin(latent_len, torch.tensor(allowed, device=latent_len.device))
        if bad.any():
            raise ValueError(
                f"latent_len values {latent_len[bad].tolist()} are not among the candidates {allowed}"
            )

    def _run_latents(
        self,
        stream: DecodeStream,
        prefix_hidden_last: torch.Tensor,
        noise_std: float,
        gen: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Coconut loop: returns fed-back latents ``(B, K, D)`` and the chain ``(B, K+1, D)``; with
        ``<latent_end>`` tokens each group's last latent and its ``<latent_end>`` go in one call (the
        token's input is fixed), and the chain also holds the ``<latent_end>`` states."""
        b = prefix_hidden_last.shape[0]
        lay = self.layout
        full = torch.full((b,), lay.k_max, device=prefix_hidden_last.device)
        h, latents, chain = prefix_hidden_last, [], [prefix_hidden_last]
        for k in range(lay.k_max):
            z = h
            if noise_std > 0:
                z = h + noise_std * torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)
            latents.append(z)
            if lay.latent_end and (k + 1) % lay.latent_group == 0:
                out = stream.feed(torch.cat([z[:, None], self.layout_tokens.end(b).to(z.dtype)], 1), full)
                chain += [out[:, 0], out[:, 1]]
                h = out[:, 1]
                continue
            h = stream.feed(z[:, None], full)[:, 0]
            chain.append(h)
        d = prefix_hidden_last.shape[-1]
        lat = torch.stack(latents, dim=1) if latents else prefix_hidden_last.new_zeros(b, 0, d)
        return lat, torch.stack(chain, dim=1)

    # ------------------------------------------------------------------ public API

    @torch.no_grad()
    def act(
        self,
        obs: Any,
        mode: Literal["sample", "greedy"] = "sample",
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        keep_stop: torch.Tensor | None = None,
        decode: DecodeConfig | None = None,
    ) -> ActionOutput:
        """Reason, choose the length, decode an action chunk.

        ``obs`` is an :class:`~lastr1.envs.base.Observation` (or already-encoded :class:`PolicyInputs`).
        All ``k_max`` latent steps always run (the stop categorical needs every candidate's logit);
        ``use_cache=False`` recomputes the whole sequence per step (the latency baseline).
        ``keep_stop`` ``(B,)``: stop candidates chosen earlier (``stop_scope="episode"``), used instead
        of a new choice and marked ``stop_chosen=False``. ``decode`` replaces the policy's default
        :class:`DecodeConfig` for this call.
        """
        if mode not in ("sample", "greedy"):
            raise ValueError(f"act mode={mode!r} must be 'sample' or 'greedy'")
        cfg, lay = self.config, self.layout
        dec = decode or self.decode
        if decode is not None:
            dec.check_for(cfg.k_max, cfg.latent_group)
        inputs = obs.to(self.device) if isinstance(obs, PolicyInputs) else self.encode_obs(obs)
        b = len(inputs)
        a_temp = dec.action_temperature if mode == "sample" else 1.0
        s_temp = dec.stop_temperature if mode == "sample" else 1.0
        stream, h_prefix = self._open_stream(inputs, use_cache)
        noise = dec.latent_noise_std if mode == "sample" else 0.0
        latents, chain = self._run_latents(stream, h_prefix, noise, generator)
        stop_logits = self._stop_logits(chain)
        if lay.k_max:
            stop_index, logp_stop = choose_stop(
                stop_logits, mode, s_temp, dec.eval_stop_threshold, generator, dec.greedy_stop
            )
            if dec.force_latent_len:
                stop_index = torch.full_like(stop_index, dec.force_latent_len // lay.latent_group - 1)
            elif keep_stop is not None:
                stop_index = keep_stop.to(stop_index)
            if dec.force_latent_len or keep_stop is not None:
                logp_stop = (
                    F.log_softmax(stop_logits / s_temp, dim=-1).gather(1, stop_index[:, None]).squeeze(1)
                )
        else:
            stop_index, logp_stop = (
                torch.zeros(b, dtype=torch.long, device=h_prefix.device),
                h_prefix.new_zeros(b),
            )
        latent_len = lay.latent_len(stop_index)
        tok_mode = "mean" if mode == "greedy" and dec.greedy_actions == "bin_mean" else mode
        if cfg.decoding == "parallel":
            hidden = stream.feed(self._action_inputs(b, None), latent_len)
            tokens, logp_tokens = sample_tokens(self._action_logits(hidden), tok_mode, a_temp, generator)
        else:
            tok_list: list[torch.Tensor] = []
            lp_list: list[torch.Tensor] = []
            for j in range(lay.n_actions):
                emb = self.action_slots[j].expand(b, 1, -1)
                if j > 0:
                    emb = emb + self.action_token_embed(tok_list[-1])[:, None]
                hidden = stream.feed(emb, latent_len)
                tok, lp = sample_tokens(self._action_logits(hidden[:, 0]), tok_mode, a_temp, generator)
                tok_list.append(tok)
                lp_list.append(lp)
            tokens, logp_tokens = torch.stack(tok_list, 1), torch.stack(lp_list, 1)
        return ActionOutput(
            actions=self.tokenizer.decode(tokens),
            action_tokens=tokens,
            latents=latents,
            latent_len=latent_len,
            stop_index=stop_index,
            latent_mask=self._latent_mask(latent_len),
            logp_action=logp_tokens.double().sum(1),
            logp_tokens=logp_tokens,
            logp_stop=logp_stop,
            stop_logits=stop_logits,
            value=self._value(chain, latent_len),
            candidate_values=self._candidate_values(chain),
            action_temperature=torch.full((b,), a_temp, device=h_prefix.device),
            stop_temperature=torch.full((b,), s_temp, device=h_prefix.device),
            stop_chosen=torch.full(
                (b,), keep_stop is None and not dec.force_latent_len and lay.k_max > 0, device=h_prefix.device
            ),
            inputs=inputs,
        )

    def _teacher_forced(
        self,
        inputs: PolicyInputs,
        latents: torch.Tensor,
        latent_len: torch.Tensor,
        tokens: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over the whole sequence; returns the chain (hidden states at positions
        ``Lp-1 .. action_begin-1``) and the action hidden states."""
        lay = self.layout
        b = len(inputs)
        if latents.shape[:2] != (b, lay.k_max):
            raise ValueError(f"latents must have shape ({b}, {lay.k_max}, D), got {tuple(latents.shape)}")
        prefix, valid, runner = self._prefix(inputs)
        reasoning = self._reasoning_inputs(latents.to(prefix.dtype))
        seq = torch.cat([prefix, reasoning, self._action_inputs(b, tokens)], dim=1)
        stream = DecodeStream(runner, lay, valid, self.config.decoding == "autoregressive", use_cache=True)
        hidden = stream.feed(seq, latent_len)
        return hidden[:, lay.n_prefix - 1 : lay.action_begin], hidden[:, lay.action_begin :]

    def log_probs(self, batch: PolicyBatch, detach_value: bool = False) -> LogProbs:
        """Re-score stored decisions teacher-forced on the stored latents, in one batched forward.

        ``detach_value``: the value head reads the features without its loss shaping them (the
        reference lets it train the backbone; ``RLConfig.value_trains_backbone``)."""
        stop_index = batch.stop_index.long()
        latent_len = self.layout.latent_len(stop_index)
        tokens = batch.action_tokens.long()
        chain, act_hidden = self._teacher_forced(batch.inputs, batch.latents, latent_len, tokens)
        logits = self._action_logits(act_hidden) / batch.action_temperature[:, None, None]
        logp_all = F.log_softmax(logits, dim=-1)
        logp_tokens = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean(-1)
        stop_logits = self._stop_logits(chain)
        if self.layout.k_max:
            stop_lp = F.log_softmax(stop_logits / batch.stop_temperature[:, None], dim=-1)
            logp_stop = stop_lp.gather(1, stop_index[:, None]).squeeze(1)
        else:
            logp_stop = logp_tokens.new_zeros(len(batch))
        return LogProbs(
            logp_tokens=logp_tokens,
            logp_action=logp_tokens.double().sum(1),
            logp_stop=logp_stop,
            mu=self._mu(chain),
            latent_mask=self._latent_mask(latent_len),
            value=self._value(chain, latent_len, detach_value),
            entropy=entropy,
            stop_logits=stop_logits,
            action_logp_all=logp_all,
        )

    def stop_target(self, latent_len: torch.Tensor) -> torch.Tensor:
        """Candidate index for a reasoning length (SFT stop cross-entropy target: ``L / group - 1``)."""
        self._check_lengths(latent_len)
        return latent_len // self.layout.latent_group - 1

    def sft_outputs(
        self,
        inputs: PolicyInputs,
        latent_len: torch.Tensor | None = None,
        action_tokens: torch.Tensor | None = None,
        latent_inputs: torch.Tensor | None = None,
    ) -> SFTOutputs:
        """Differentiable outputs for the warm-up losses.

        Latents are the model's own (Coconut: ``k_max`` sequential KV-cached steps with gradients) unless
        ``latent_inputs`` ``(B, K, D)`` are given to teacher-force them. Action slots see only the first
        ``latent_len`` latents (default ``k_max``). ``action_tokens`` are required for autoregressive
        decoding (teacher forcing). The value is read at slot ``latent_len``.
        """
        lay, b = self.layout, len(inputs)
        if latent_len is None:
            latent_len = torch.full((b,), lay.k_max, dtype=torch.long, device=self.device)
        latent_len = latent_len.long().to(self.device)
        self._check_lengths(latent_len)
        if self.config.decoding == "autoregressive" and action_tokens is None:
            raise ValueError("sft_outputs needs action_tokens for autoregressive decoding (teacher forcing)")
        tokens = action_tokens.long() if action_tokens is not None else None
        if latent_inputs is not None:
            chain, act_hidden = self._teacher_forced(inputs, latent_inputs, latent_len, tokens)
        else:
            stream, h_prefix = self._open_stream(inputs, use_cache=True)
            _, chain = self._run_latents(stream, h_prefix, 0.0, None)
            act_hidden = stream.feed(self._action_inputs(b, tokens), latent_len)
        mu = self._mu(chain)
        return SFTOutputs(
            action_logits=self._action_logits(act_hidden),
            latents=mu,
            latent_pred=self.latent_proj(mu) if self.latent_proj is not None else None,
            latent_mask=self._latent_mask(latent_len),
            stop_logits=self._stop_logits(chain),
            value=self._value(chain, latent_len),
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role, so an optimizer gives each its own learning rate without
        reaching into the modules: ``policy`` (everything that acts and reasons), ``value`` (the
        critic head), ``stop`` (what only the stop reads: the ``<latent_end>`` scorer and its context
        readout). In the reference layout the scorer is the ``lm_head`` row of ``<latent_end>``: with
        tied embeddings also that token's input embedding, which the action slots attend to, so every
        objective moves it; it stays in ``policy`` (``layout_tokens``), and ``stop`` holds the context
        readout only (empty without ``stop_context``)."""
        value = list(self.value_head.parameters())
        stop = [
            p
            for head in (self.stop_head, self.stop_context_head)
            if head is not None
            for p in head.parameters()
        ]
        taken = {id(p) for p in value + stop}
        main = [p for p in self.parameters() if id(p) not in taken and p.requires_grad]
        return {"policy": main, "value": value, "stop": stop}

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json`` (architecture), ``decode.json`` (the default
        decoding) and ``dataset_statistics.json`` to ``directory``; a Qwen3-VL backbone goes to
        ``backbone/`` in the HF layout (loadable by transformers alone) and the rest to
        ``model.safetensors``."""
        return write_policy_folder(self, directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        decode: DecodeConfig | None = None,
        stop_context: bool = False,
        backbone_run: BackboneRunConfig | None = None,
    ) -> LastR1Policy:
        """Rebuild a policy saved by :meth:`save_pretrained`.

        ``decode`` replaces the saved default decoding (``decode.json``; older checkpoints kept it in
        ``config.json``). ``stop_context`` adds the stop's zero-initialised context readout if the
        checkpoint has none (``algo.stop.context``), leaving its stop distribution unchanged.
        ``backbone_run`` replaces the saved run settings (``backbone_run.json``; absent = defaults)."""
        from safetensors.torch import load_file

        from lastr1.config import from_dict

        path = Path(directory)
        if not path.is_dir():
            raise ValueError(
                f"policy folder {str(path)!r} does not exist; pass a folder written by save_pretrained"
            )
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE) if not (path / f).is_file()]
        if missing:
            raise ValueError(
                f"policy folder {str(path)!r} is incomplete: missing {missing}; re-save the policy"
            )
        try:
            arch, legacy = split_legacy_config(json.loads((path / CONFIG_FILE).read_text()))
            if stop_context:
                arch["stop_context"] = True  # the readout starts at zero: the distribution is unchanged
            if arch.get("backbone") in EXTERNAL:  # the backbone saved beside the heads, not the original
                arch["pretrained"] = str(path / BACKBONE_DIR)
            if arch.get("backbone") == "qwen3_vl":  # saved before the reference layout existed
                arch.setdefault("qwen3_vl_layout", "ours")
            config = from_dict(PolicyConfig, arch, prefix="policy")
            if (path / DECODE_FILE).is_file():
                saved = from_dict(DecodeConfig, json.loads((path / DECODE_FILE).read_text()), prefix="decode")
            else:
                saved = from_dict(DecodeConfig, legacy, prefix="decode")
                if legacy and str(path) not in _LEGACY_NOTED:  # once per folder, not per load
                    _LEGACY_NOTED.add(str(path))
                    print(
                        f"note: {path / CONFIG_FILE} predates decode.json; its decoding keys "
                        f"({', '.join(sorted(legacy))}) were read as the policy's default decode"
                    )
            stats = json.loads((path / STATS_FILE).read_text())
            if backbone_run is None and (path / RUN_FILE).is_file():
                backbone_run = from_dict(
                    BackboneRunConfig, json.loads((path / RUN_FILE).read_text()), prefix="backbone_run"
                )
        except (json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"cannot read policy folder {str(path)!r}: {exc}") from None
        check_saved_layout_tokens(config, path)  # the reference layout's trained token rows
        policy = cls(config, stats, decode or saved, backbone_run)
        try:
            weights = load_file(str(path / WEIGHTS_FILE))
        except Exception as exc:  # safetensors' own error type: a truncated or damaged file
            raise ValueError(
                f"{path / WEIGHTS_FILE} is damaged ({exc}); re-save the policy or use another checkpoint"
            ) from None
        try:
            result = policy.load_state_dict(weights, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(f"{path / WEIGHTS_FILE} does not match config.json: {exc}") from None
        # readouts saved before the centre existed read the state uncentred, as the zero centre does;
        # a readout added by ``stop_context`` starts at zero
        added = {"stop_context_center"} | ({"stop_context_head.weight"} if stop_context else set())
        external = policy.config.backbone in EXTERNAL  # its weights came from backbone/
        missing = [k for k in result.missing_keys if k not in added and not (external and is_external_key(k))]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{path / WEIGHTS_FILE} does not match config.json: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        return policy.to(device)


def write_policy_folder(policy: Any, directory: str | Path) -> Path:
    """The policy folder both families write: ``model.safetensors`` (own weights), an external
    backbone in ``backbone/`` (HF layout), ``config.json``, ``decode.json``, non-default
    ``backbone_run.json`` and ``dataset_statistics.json``."""
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in own_state(policy).items()}
    save_file(state, str(path / WEIGHTS_FILE))
    save_external(policy, path)
    (path / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(policy.config), indent=2))
    (path / DECODE_FILE).write_text(json.dumps(dataclasses.asdict(policy.decode), indent=2))
    if not policy.backbone_run.is_default:  # absent = the defaults (every tiny policy)
        (path / RUN_FILE).write_text(json.dumps(dataclasses.asdict(policy.backbone_run), indent=2))
    (path / STATS_FILE).write_text(json.dumps(policy.stats, indent=2))
    return path
