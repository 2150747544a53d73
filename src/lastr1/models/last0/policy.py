"""The LaST0 dual-system policy: a slow reasoning expert and a fast flow-matching acting expert.

One Mixture-of-Transformers runs both: the tiny from-scratch one (:mod:`.mot`) or, with
``policy.backbone=qwen3_vl``, the loaded Qwen3-VL's decoder layers with an acting copy
(:mod:`.qwen3_vl_mot`, built by :mod:`.qwen3_vl_parts`). The **reasoning expert** reads the observation
prefix (images, instruction, proprio) and thinks ``K`` latents autoregressively -- each latent is the
final hidden state at the previous position, fed back as the next input -- one per camera and one
for the state at each of ``H`` future keyframes; SFT aligns them to teacher features of those frames.
The **acting expert** reads the current frame (coarse image tokens), the state, a timestep token and
the noisy action chunk, attends to every reasoning token's keys and values, and predicts the flow
velocity (:mod:`.flow`); ``act()`` integrates it with ``euler_steps`` Euler steps, computing the
reasoning part once and reusing its KV cache in every step.

Two frequencies: the reasoning expert runs at the first of every ``reason_every`` (κ) calls of an
episode and its KV cache and latents are kept per environment slot (``Observation.slot``) in between;
the acting expert runs at every call on the fresh observation. :meth:`reset` forgets the kept
reasoning (the rollout collector calls it before each batch of episodes). Rows without a slot id
(served requests, hand-made batches) reason at every call. See ``docs/last0.md``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lastr1.models.backbones.factory import (
    BACKBONE_DIR,
    EXTERNAL,
    is_external_key,
)
from lastr1.models.backbones.run_settings import RUN_FILE, BackboneRunConfig
from lastr1.models.backbones.tiny import HashWordTokenizer, KVCache, ProprioEncoder, TinyConfig
from lastr1.models.decode import DECODE_FILE, DecodeConfig
from lastr1.models.last0.encoders import TwoRateImageEncoder
from lastr1.models.last0.flow import euler_sample, time_features
from lastr1.models.last0.layout import Last0Layout, joint_mask
from lastr1.models.last0.mot import MoTTransformer
from lastr1.models.last0.qwen3_vl_mot import Qwen3VLMoT
from lastr1.models.last0.qwen3_vl_parts import QwenLast0Inputs, build_parts
from lastr1.models.policy import (
    CONFIG_FILE,
    STATS_FILE,
    WEIGHTS_FILE,
    LastR1Policy,
    PolicyConfig,
    action_codec,
    write_policy_folder,
)
from lastr1.models.policy_io import PolicyInputs, _TensorData

REASON = 0  # the reasoning expert's index in the MoT (the acting expert is the last one)
# a MoT call: (embeds, segments, position ids, mask, past) -> (hidden, cache)
Runner = Callable[..., tuple[torch.Tensor, KVCache]]


@dataclass
class ReasoningState:
    """What the slow system hands the fast one: every reasoning token's keys and values per layer
    (``(B, heads, n_reason, head_dim)``; None without the reasoning expert), which of those tokens are
    real (``(B, n_reason)``) and the latents ``(B, K, D)``."""

    kv: KVCache | None
    valid: torch.Tensor
    latents: torch.Tensor

    def rows(self, idx: list[int]) -> ReasoningState:
        sel = torch.as_tensor(idx, dtype=torch.long, device=self.valid.device)
        kv = None if self.kv is None else [(k[sel], v[sel]) for k, v in self.kv]
        return ReasoningState(kv, self.valid[sel], self.latents[sel])

    @staticmethod
    def stack(items: list[ReasoningState]) -> ReasoningState:
        first = items[0]
        kv = None
        if first.kv is not None:
            kv = [
                (torch.cat([s.kv[i][0] for s in items]), torch.cat([s.kv[i][1] for s in items]))  # type: ignore[index]
                for i in range(len(first.kv))
            ]
        return ReasoningState(kv, torch.cat([s.valid for s in items]), torch.cat([s.latents for s in items]))


@dataclass
class _Kept:
    """One env slot's reasoning, reused until it has served ``reason_every`` calls."""

    state: ReasoningState
    age: int = 0


@dataclass
class Last0Output(_TensorData):
    """What ``act`` decided. ``latent_len`` and ``stop_index`` have the LaST-R1 meaning for the
    collector, evaluator and server (K latents always; no stop decision, so 0)."""

    actions: torch.Tensor  # float (B, C, A) un-normalised
    actions_normalized: torch.Tensor  # float (B, C, A) in [-1, 1], the integrated flow
    noise: torch.Tensor  # float (B, C, A): x at t = 1, where the integration started
    latents: torch.Tensor  # float (B, K, D): the reasoning the actions conditioned on
    latent_len: torch.Tensor  # long (B,): K
    stop_index: torch.Tensor  # long (B,): 0
    reasoned: torch.Tensor  # bool (B,): whether this call ran the reasoning expert for the row
    inputs: PolicyInputs  # the acting observation

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class Last0SFTOutputs:
    """Differentiable outputs for the warm-up losses."""

    velocity: torch.Tensor  # (B, C, A): predicted flow velocity at (x_t, t)
    latents: torch.Tensor  # (B, K, D)
    latent_pred: list[torch.Tensor]  # per latent kind (cameras, state): (B, H, target_dim of the kind)


class Last0Policy(nn.Module):
    """LaST0 on the tiny from-scratch MoT or on Qwen3-VL (``PolicyConfig(family="last0")``;
    ``config.last0`` has its own settings; the Qwen3-VL parts live in :mod:`.qwen3_vl_parts`).
    ``stats`` is ``dataset_statistics.json`` (None: identity normalisation); ``backbone_run`` how a
    Qwen3-VL backbone runs (precision, activation checkpointing, frozen vision tower)."""

    family = "last0"

    def __init__(
        self,
        config: PolicyConfig | None = None,
        stats: dict[str, Any] | None = None,
        decode: DecodeConfig | None = None,
        backbone_run: BackboneRunConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = self.config = config or PolicyConfig(family="last0")
        if cfg.family != "last0":
            raise ValueError(
                f"Last0Policy needs policy.family=last0, got {cfg.family!r}; build LaST-R1 policies with "
                "LastR1Policy (lastr1.models.load_policy picks the class of a saved folder)"
            )
        self.backbone_run = backbone_run or BackboneRunConfig()
        self.backbone_run.check_for(cfg.backbone)
        l0 = cfg.last0
        self.decode = decode or DecodeConfig()  # unused by LaST0's decoding; the collector and server read it
        # the LaST-R1 tokenizer's q01/q99 normalisation; its bins are unused (actions are continuous)
        self.stats, self.tokenizer = action_codec(cfg, stats)
        d, a = cfg.d_model, cfg.action_dim
        n_text, n_state = cfg.instruction_max_len, int(cfg.use_proprio)
        self.qwen_inputs: QwenLast0Inputs | None = None
        if cfg.backbone == "tiny":  # (this construction order keeps seeded tiny policies unchanged)
            self.text_tokenizer = HashWordTokenizer(cfg.instruction_vocab, cfg.instruction_max_len)
            self.images = TwoRateImageEncoder(d, cfg.num_views, cfg.image_grid, l0.fast_image_grid)
            self.text_embed = nn.Embedding(cfg.instruction_vocab, d)
            nn.init.normal_(self.text_embed.weight, std=0.02)
            # the reasoning prefix's proprio token (Qwen3-VL's encoder has its own)
            self.proprio_encoder = (
                ProprioEncoder(cfg.proprio_dim, d) if cfg.use_proprio and l0.reasoning else None
            )
            n_slow, n_fast = self.images.num_tokens(cfg.num_views)
            n_obs = n_slow + n_text + n_state if l0.reasoning else 0
        else:
            # the HF model is the backbone's (saved in backbone/); the MoT holds the acting copy
            self.backbone, self.obs_encoder, mot = build_parts(cfg, self.backbone_run)
            self.qwen_inputs = QwenLast0Inputs(self.obs_encoder, l0.fast_image_grid)
            self.text_tokenizer = self.obs_encoder.tokenize
            self.images, self.text_embed, self.proprio_encoder = None, None, None
            n_obs, n_fast = self.obs_encoder.num_tokens, cfg.num_views * l0.fast_image_grid**2
        # the acting expert's state token
        self.state_encoder = ProprioEncoder(cfg.proprio_dim, d) if cfg.use_proprio else None
        self.layout = Last0Layout(
            n_obs=n_obs,
            n_latents=l0.num_latents(cfg.num_views),
            n_context=n_fast + (0 if l0.reasoning else n_text) + n_state,
            chunk=cfg.chunk,
            causal_acting=l0.acting_attention == "causal",
        )
        self.n_kinds = l0.latent_kinds(cfg.num_views) if self.layout.n_latents else 0
        self.latent_start = nn.Parameter(torch.randn(d) * 0.02) if self.layout.n_latents else None
        if l0.target_dims and len(l0.target_dims) != self.n_kinds:
            raise ValueError(
                f"last0.target_dims has {len(l0.target_dims)} entries but the policy has {self.n_kinds} latent "
                "kinds per keyframe (cameras, then the state); leave target_dims empty, SFT fills it"
            )
        self.latent_heads = nn.ModuleList(nn.Linear(d, t) for t in l0.target_dims)
        self.time_dim = 2 * max(1, d // 2)
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.action_in = nn.Sequential(nn.Linear(a, d), nn.SiLU(), nn.Linear(d, d))
        self.action_out = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, a))
        nn.init.zeros_(self.action_out[-1].weight)  # the first velocity is 0: no random kick at init
        nn.init.zeros_(self.action_out[-1].bias)
        self.n_experts = 2 if l0.reasoning else 1
        self.act_expert = self.n_experts - 1
        if cfg.backbone == "tiny":
            tiny = TinyConfig(d, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio, self.layout.total, cfg.dropout)
            self.transformer: MoTTransformer | Qwen3VLMoT = MoTTransformer(tiny, self.n_experts)
            if l0.init_acting_from_reasoning and l0.reasoning:
                self.transformer.copy_expert(REASON, self.act_expert)
        else:  # the acting expert starts as a copy of the pretrained reasoning expert, always
            self.transformer = mot
        mean, std = LastR1Policy._proprio_stats(self)  # type: ignore[arg-type]  # same statistics, same checks
        self.register_buffer("proprio_mean", mean)
        self.register_buffer("proprio_std", std)
        self._kept: dict[int, _Kept] = {}

    # ------------------------------------------------------------------ inputs

    @property
    def device(self) -> torch.device:
        return self.time_mlp[0].weight.device

    def encode_obs(self, obs: Any) -> PolicyInputs:
        """Validate an :class:`~lastr1.envs.base.Observation` into network inputs (LaST-R1's checks
        and tokenisation: one source of truth for both families)."""
        return LastR1Policy.encode_obs(self, obs)  # type: ignore[arg-type]

    def _proprio(self, inputs: PolicyInputs) -> torch.Tensor:
        return (inputs.proprio - self.proprio_mean) / self.proprio_std

    def _encode(
        self, inputs: PolicyInputs, slow: bool = True, fast: bool = True
    ) -> tuple[Any | None, torch.Tensor | None]:
        """``(slow, fast)``: what the reasoning prefix is built from (tiny: image tokens; Qwen3-VL: the
        encoded prefix) and the acting expert's fast image tokens; None where not asked for or absent."""
        if self.qwen_inputs is not None:
            proprio = self._proprio(inputs) if self.config.use_proprio else None
            return self.qwen_inputs(inputs, proprio, slow=slow, fast=fast)
        if not slow and self.images.fast is None:  # nothing to compute: skip the convs
            return None, None
        return self.images(inputs.images, slow=slow, fast=fast)

    def _reason_prefix(self, inputs: PolicyInputs, slow: Any) -> tuple[torch.Tensor, torch.Tensor, Runner]:
        """Reasoning-prefix embeddings ``(B, n_prefix, D)``, key validity, and the MoT call to run the
        prefix with (Qwen3-VL's carries the batch's DeepStack features)."""
        if self.qwen_inputs is not None:
            embeds, valid, deepstack = slow
            ones = valid[:, :1]
            if self.latent_start is not None:
                embeds = torch.cat([embeds, self.latent_start.expand(len(inputs), 1, -1)], dim=1)
                valid = torch.cat([valid, ones], dim=1)
            return embeds, valid, self.transformer.bind(deepstack)  # type: ignore[union-attr]
        b = len(inputs)
        ones = torch.ones(b, 1, dtype=torch.bool, device=slow.device)
        parts = [slow, self.text_embed(inputs.instruction_ids)]
        valid = [ones.expand(b, slow.shape[1]), inputs.instruction_mask]
        if self.proprio_encoder is not None:
            parts.append(self.proprio_encoder(self._proprio(inputs)))
            valid.append(ones)
        if self.latent_start is not None:
            parts.append(self.latent_start.expand(b, 1, -1))
            valid.append(ones)
        return torch.cat(parts, dim=1), torch.cat(valid, dim=1), self.transformer

    def _act_context(
        self, inputs: PolicyInputs, fast: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The acting tokens before the timestep: fast image tokens, (the instruction without the
        reasoning expert), the state token. ``(B, n_context, D)`` and their validity."""
        b, dev = len(inputs), self.device
        parts: list[torch.Tensor] = []
        valid: list[torch.Tensor] = []
        if fast is not None:
            parts.append(fast)
            valid.append(torch.ones(b, fast.shape[1], dtype=torch.bool, device=dev))
        if not self.config.last0.reasoning:
            parts.append(self.text_embed(inputs.instruction_ids))
            valid.append(inputs.instruction_mask)
        if self.state_encoder is not None:
            parts.append(self.state_encoder(self._proprio(inputs)))
            valid.append(torch.ones(b, 1, dtype=torch.bool, device=dev))
        if not parts:
            return torch.zeros(b, 0, self.config.d_model, device=dev), torch.zeros(
                b, 0, dtype=torch.bool, device=dev
            )
        return torch.cat(parts, dim=1), torch.cat(valid, dim=1)

    # ------------------------------------------------------------------ the two experts

    def _reason(self, inputs: PolicyInputs, slow: torch.Tensor | None) -> ReasoningState:
        """Run the reasoning expert: the prefix in one call, then K one-token latent steps on its KV
        cache (each latent is the previous position's final hidden state)."""
        b, lay, dev = len(inputs), self.layout, self.device
        if slow is None:  # no reasoning expert
            return ReasoningState(
                None,
                torch.zeros(b, 0, dtype=torch.bool, device=dev),
                torch.zeros(b, 0, self.config.d_model, device=dev),
            )
        embeds, valid, runner = self._reason_prefix(inputs, slow)
        pos = torch.arange(lay.n_prefix, device=dev)
        hidden, kv = runner(embeds, ((REASON, lay.n_prefix),), pos, joint_mask(lay, pos, valid))
        z = hidden[:, -1]
        latents: list[torch.Tensor] = []
        one = torch.ones(b, 1, dtype=torch.bool, device=dev)
        for k in range(lay.n_latents):
            latents.append(z)
            valid = torch.cat([valid, one], dim=1)
            pos = torch.tensor([lay.n_prefix + k], device=dev)
            hidden, kv = self.transformer(z[:, None], ((REASON, 1),), pos, joint_mask(lay, pos, valid), kv)
            z = hidden[:, 0]
        lat = torch.stack(latents, dim=1) if latents else embeds.new_zeros(b, 0, embeds.shape[-1])
        return ReasoningState(kv, valid, lat)

    def _acting_inputs(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The timestep token and the noisy action tokens ``(B, 1 + C, D)``."""
        time_tok = self.time_mlp(time_features(t, self.time_dim).to(x.dtype))
        return torch.cat([time_tok[:, None], self.action_in(x)], dim=1)

    def _velocity_fn(
        self, context: torch.Tensor, context_valid: torch.Tensor, state: ReasoningState
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``v(x_t, t)`` of the acting expert on a fixed context and reasoning. Under causal acting
        attention the context tokens never see the noisy actions, so their keys and values are
        computed once here and each Euler step feeds only the timestep and action tokens."""
        lay, expert = self.layout, self.act_expert
        b, dev = context.shape[0], context.device
        step_valid = torch.ones(b, 1 + lay.chunk, dtype=torch.bool, device=dev)
        valid = torch.cat([state.valid, context_valid, step_valid], dim=1)
        pos = lay.acting_positions(dev)
        past, n_fixed = state.kv, 0
        if lay.causal_acting and lay.n_context:
            n_fixed = lay.n_context
            ctx_mask = joint_mask(lay, pos[:n_fixed], valid[:, : lay.n_reason + n_fixed])
            _, past = self.transformer(context, ((expert, n_fixed),), pos[:n_fixed], ctx_mask, past)
        fed = context[:, n_fixed:]  # the context tokens every step still feeds (bidirectional)
        step_pos = pos[n_fixed:]
        mask = joint_mask(lay, step_pos, valid)
        segments = ((expert, lay.n_act - n_fixed),)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            embeds = torch.cat([fed, self._acting_inputs(x, t)], dim=1)
            hidden, _ = self.transformer(embeds, segments, step_pos, mask, past)
            return self.action_out(hidden[:, -lay.chunk :])

        return velocity

    def _latent_pred(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """Each latent kind's projection onto its target space: ``[(B, H, dim_j)]``."""
        if not len(self.latent_heads):
            return []
        b, _, d = latents.shape
        per_kind = latents.view(b, self.config.last0.keyframes, self.n_kinds, d)
        return [head(per_kind[:, :, j]) for j, head in enumerate(self.latent_heads)]

    # ------------------------------------------------------------------ acting

    def reset(self) -> None:
        """Forget the kept reasoning of every slot (new episodes start)."""
        self._kept.clear()

    def _reasoning_for(
        self, inputs: PolicyInputs, slots: Any
    ) -> tuple[ReasoningState, torch.Tensor, torch.Tensor | None]:
        """This call's reasoning per row -- kept from an earlier call of the row's slot, or run now
        (first call, κ calls served, or no slot id) -- plus which rows ran it and the fast image tokens."""
        b, reasoning = len(inputs), self.config.last0.reasoning
        ids = [int(s) for s in slots] if slots is not None and reasoning else None
        if ids is not None and len(set(ids)) != b:
            ids = None  # repeated slot ids cannot name one episode each: reason for every row
        need = [
            i
            for i in range(b)
            if ids is None
            or ids[i] not in self._kept
            or self._kept[ids[i]].age >= self.config.last0.reason_every
        ]
        if reasoning and len(need) == b:  # the image encoder runs once for both readouts
            slow, fast = self._encode(inputs)
            fresh = self._reason(inputs, slow)
        else:
            fast = self._encode(inputs, slow=False)[1]
            fresh = None
            if reasoning and need:
                sub = inputs.index(need)
                fresh = self._reason(sub, self._encode(sub, fast=False)[0])
            elif not reasoning:
                fresh = self._reason(inputs, None)
        reasoned = torch.zeros(b, dtype=torch.bool)
        reasoned[need] = reasoning
        if ids is None:
            assert fresh is not None
            return fresh, reasoned, fast
        for j, i in enumerate(need):
            self._kept[ids[i]] = _Kept(fresh.rows([j]))  # type: ignore[union-attr]
        rows = []
        for i in ids:
            kept = self._kept[i]
            kept.age += 1
            rows.append(kept.state)
        return ReasoningState.stack(rows), reasoned, fast

    @torch.no_grad()
    def act(
        self,
        obs: Any,
        mode: Literal["sample", "greedy"] = "sample",
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        keep_stop: torch.Tensor | None = None,
        decode: DecodeConfig | None = None,
        noise: torch.Tensor | None = None,
    ) -> Last0Output:
        """Reason (every κ-th call of a slot), then integrate the flow into one action chunk.

        ``mode="sample"`` starts the integration from Gaussian noise drawn from ``generator``;
        ``"greedy"`` from zero noise (deterministic). ``noise`` ``(B, C, A)`` gives the start
        explicitly. ``use_cache=False`` reasons at every call. ``keep_stop`` and ``decode`` are
        accepted for the collector's and server's interface; LaST0 has no stop decision.
        """
        del keep_stop, decode
        if mode not in ("sample", "greedy"):
            raise ValueError(f"act mode={mode!r} must be 'sample' or 'greedy'")
        cfg, lay = self.config, self.layout
        inputs = obs.to(self.device) if isinstance(obs, PolicyInputs) else self.encode_obs(obs)
        b = len(inputs)
        state, reasoned, fast = self._reasoning_for(inputs, getattr(obs, "slot", None) if use_cache else None)
        shape = (b, cfg.chunk, cfg.action_dim)
        if noise is None:
            noise = torch.zeros(shape) if mode == "greedy" else torch.randn(shape, generator=generator)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        noise = noise.to(self.device)
        context, context_valid = self._act_context(inputs, fast)
        x = euler_sample(self._velocity_fn(context, context_valid, state), noise, cfg.last0.euler_steps)
        normed = x.clamp(-1.0, 1.0)
        return Last0Output(
            actions=self.tokenizer.unnormalize(normed),
            actions_normalized=normed,
            noise=noise,
            latents=state.latents,
            latent_len=torch.full((b,), lay.n_latents, dtype=torch.long, device=self.device),
            stop_index=torch.zeros(b, dtype=torch.long, device=self.device),
            reasoned=reasoned.to(self.device),
            inputs=inputs,
        )

    # ------------------------------------------------------------------ training

    def sft_outputs(
        self, reason_inputs: PolicyInputs, act_inputs: PolicyInputs, x_t: torch.Tensor, t: torch.Tensor
    ) -> Last0SFTOutputs:
        """Differentiable warm-up outputs: the reasoning expert thinks on ``reason_inputs`` (an
        observation up to κ−1 chunks older in SFT), the acting expert predicts the velocity at
        ``(x_t, t)`` ``(B, C, A)``, ``(B,)`` on ``act_inputs`` -- the path ``act`` takes, with gradients."""
        slow = self._encode(reason_inputs, fast=False)[0] if self.config.last0.reasoning else None
        state = self._reason(reason_inputs, slow)
        fast = self._encode(act_inputs, slow=False)[1]
        context, context_valid = self._act_context(act_inputs, fast)
        velocity = self._velocity_fn(context, context_valid, state)(x_t, t)
        return Last0SFTOutputs(velocity, state.latents, self._latent_pred(state.latents))

    def forward_joint(
        self,
        reason_inputs: PolicyInputs,
        latents: torch.Tensor,
        act_inputs: PolicyInputs,
        x_t: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Hidden states ``(B, total, D)`` of the whole sequence -- reasoning prefix, the given latents,
        acting tokens -- in ONE forward under the joint mask, without any cache (the reference's
        teacher-forced pass; tests check the cached paths against it)."""
        lay, reasoning = self.layout, self.config.last0.reasoning
        parts: list[torch.Tensor] = []
        valid: list[torch.Tensor] = []
        runner: Runner = self.transformer
        if reasoning:
            embeds, prefix_valid, runner = self._reason_prefix(
                reason_inputs, self._encode(reason_inputs, fast=False)[0]
            )
            parts += [embeds, latents]
            valid += [prefix_valid, torch.ones(latents.shape[:2], dtype=torch.bool, device=latents.device)]
        fast = self._encode(act_inputs, slow=False)[1]
        context, context_valid = self._act_context(act_inputs, fast)
        parts += [context, self._acting_inputs(x_t, t)]
        valid += [
            context_valid,
            torch.ones(len(act_inputs), 1 + lay.chunk, dtype=torch.bool, device=self.device),
        ]
        key_valid = torch.cat(valid, dim=1)
        pos = torch.arange(lay.total, device=self.device)
        segments = ((REASON, lay.n_reason), (self.act_expert, lay.n_act)) if reasoning else ((0, lay.n_act),)
        hidden, _ = runner(torch.cat(parts, dim=1), segments, pos, joint_mask(lay, pos, key_valid))
        return hidden

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``config.json`` (with ``family: last0``), ``decode.json`` and
        ``dataset_statistics.json``: the LaST-R1 folder layout. On Qwen3-VL the reasoning expert (the
        HF model) goes to ``backbone/`` in the HF layout, as LaST-R1 saves it, and the acting copy with
        the rest to ``model.safetensors``; non-default run settings to ``backbone_run.json``."""
        return write_policy_folder(self, directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        decode: DecodeConfig | None = None,
        reason_every: int | None = None,
        backbone_run: BackboneRunConfig | None = None,
    ) -> Last0Policy:
        """Rebuild a policy saved by :meth:`save_pretrained` (``decode`` replaces ``decode.json``;
        ``reason_every`` the saved κ, e.g. to evaluate one checkpoint at several κ; ``backbone_run``
        the saved run settings, ``backbone_run.json``)."""
        from safetensors.torch import load_file

        from lastr1.config import from_dict

        path = Path(directory)
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE) if not (path / f).is_file()]
        if not path.is_dir() or missing:
            raise ValueError(
                f"policy folder {str(path)!r} is missing or incomplete (missing {missing}); pass a folder "
                "written by save_pretrained"
            )
        try:
            arch = json.loads((path / CONFIG_FILE).read_text())
            if isinstance(arch, dict) and arch.get("backbone") in EXTERNAL:  # saved beside the heads
                arch["pretrained"] = str(path / BACKBONE_DIR)
            config = from_dict(PolicyConfig, arch, prefix="policy")
            if reason_every is not None:
                config = dataclasses.replace(
                    config, last0=dataclasses.replace(config.last0, reason_every=reason_every)
                )
            saved = DecodeConfig()
            if (path / DECODE_FILE).is_file():
                saved = from_dict(DecodeConfig, json.loads((path / DECODE_FILE).read_text()), prefix="decode")
            stats = json.loads((path / STATS_FILE).read_text())
            if backbone_run is None and (path / RUN_FILE).is_file():
                backbone_run = from_dict(
                    BackboneRunConfig, json.loads((path / RUN_FILE).read_text()), prefix="backbone_run"
                )
        except (json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"cannot read policy folder {str(path)!r}: {exc}") from None
        policy = cls(config, stats, decode or saved, backbone_run)
        try:
            weights = load_file(str(path / WEIGHTS_FILE))
        except Exception as exc:  # safetensors' own error type: a truncated or damaged file
            raise ValueError(f"{path / WEIGHTS_FILE} is damaged ({exc}); use another checkpoint") from None
        external = config.backbone in EXTERNAL  # its weights came from backbone/
        try:
            result = policy.load_state_dict(weights, strict=not external)
        except RuntimeError as exc:
            raise ValueError(f"{path / WEIGHTS_FILE} does not match config.json: {str(exc)[:300]}") from None
        missing = [k for k in result.missing_keys if not is_external_key(k)]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{path / WEIGHTS_FILE} does not match config.json: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        return policy.to(device)
