"""One-shot SFT warm-up of the LaST0 policy (``lastr1 sft policy.family=last0``).

Per sample (one decision step t of a demo):

* **two frequencies**: κ is drawn from ``policy.last0.train_reason_every`` (reference: mixed
  {2, 4, 8}) and a staleness s ~ U{0..κ−1}; the reasoning expert reads the observation s chunks
  earlier (``t − s·C``, clamped to the episode's first frame) -- what it would have seen at its last
  run when acting runs κ times per reasoning step -- while the acting expert reads step t;
* **flow matching**: the chunk ``a[t : t+C]`` (padded with the last action, normalised with the
  dataset's q01/q99), ``t_f ~ Beta(1.5, 1)·0.999 + 0.001``, ``x = t_f·noise + (1 − t_f)·a``, MSE of the
  predicted velocity against ``noise − a``;
* **latent spatio-temporal thought**: the K latents the reasoning expert generates (Coconut loop with
  gradients) are aligned, through one linear head per latent kind, to the teachers' features of
  its H future keyframes ``t_r + h·Δ`` -- per camera a vision teacher (``teacher`` when it names one,
  else DINOv2), and the standardised future proprio -- with ``1 − cos`` (``latent_loss=cos``) or
  ``(1 − cos) + MSE`` (``cos_mse``), weight λ = ``latent_weight``.

The loop (AdamW, warm-up + cosine, clipping, augmentation, checkpoints, resume, NaN stop) is the
LaST-R1 warm-up's; ``train_sft`` dispatches here on ``policy.family``. Single process. On
``policy.backbone=qwen3_vl`` the run settings ``backbone_run.*`` apply as for LaST-R1; frozen weights
(``freeze_vision``) stay out of the optimizer.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lastr1.data.episodes import Dataset, load_dataset
from lastr1.data.stats import load_statistics
from lastr1.envs.base import Observation
from lastr1.models.last0.flow import flow_loss, noisy_actions, sample_time
from lastr1.models.last0.policy import Last0Policy
from lastr1.models.policy import PolicyConfig
from lastr1.models.policy_io import PolicyInputs
from lastr1.models.teachers.base import TeacherConfig
from lastr1.train.checkpoint import CheckpointManager, all_finite, load_state
from lastr1.train.metrics import MetricsLogger
from lastr1.train.run_dir import writable_dir
from lastr1.train.run_record import config_changes, resume_point, write_record
from lastr1.train.sft import (
    SFTConfig,
    action_chunks,
    kept_checkpoint,
    lr_at,
    policy_config_for,
    resume_step,
    save_state,
    shift_images,
)

VISION_TEACHERS = ("dinov2", "hf")


@dataclass
class Last0Data:
    """Every (episode, t) decision step of a dataset as tensors, built once."""

    images: torch.Tensor  # uint8 (N, V, H, W, 3)
    proprio: torch.Tensor  # (N, P)
    instructions: list[str]
    actions: torch.Tensor  # (N, C, A) normalised chunks
    episode_start: torch.Tensor  # (N,) row of the step's episode's first frame
    targets: list[torch.Tensor]  # per latent kind (cameras, then state): (N, H, dim)


def check_config(cfg: SFTConfig) -> None:
    """Refuse the LaST-R1-only warm-up settings with a line naming the field."""
    if cfg.stop_target != "uniform" or cfg.target_lengths:
        raise ValueError(
            "stop_target / target_lengths choose LaST-R1's reasoning length; a LaST0 policy always thinks "
            "its K latents: leave them at their defaults with policy.family=last0"
        )


def keyframe_teachers(cfg: SFTConfig, pcfg: PolicyConfig) -> list[TeacherConfig]:
    """One teacher per latent kind, in the policy's order: each camera's vision teacher, then the state."""
    l0 = pcfg.last0
    if not (l0.num_latents(pcfg.num_views) and cfg.latent_weight > 0):
        return []
    h, stride = l0.keyframes, l0.stride(pcfg.chunk)
    teachers = []
    if l0.vision_latents:
        base = cfg.teacher if cfg.teacher.name in VISION_TEACHERS else TeacherConfig(name="dinov2")
        teachers += [
            dataclasses.replace(base, views=(v,), k_max=h, stride=stride) for v in range(pcfg.num_views)
        ]
    if l0.state_latent:
        base = cfg.teacher if cfg.teacher.name == "proprio" else TeacherConfig(name="proprio")
        teachers.append(dataclasses.replace(base, k_max=h, stride=stride))
    return teachers


def keyframe_targets(cfg: SFTConfig, pcfg: PolicyConfig, out_dir: Path) -> list[torch.Tensor]:
    """Per latent kind, ``(N, H, dim)``: the teacher features of each step's H future keyframes
    (``t + h·Δ``, clamped to the episode's last frame), from the dataset's target caches."""
    from lastr1.data.latent_targets import compute_dataset_latent_targets

    teachers = keyframe_teachers(cfg, pcfg)
    cache_root = None if not teachers or writable_dir(cfg.data) else out_dir
    if cache_root is not None:
        print(f"note: {cfg.data} is not writable; caching latent targets under {out_dir}")
    out = []
    for teacher in teachers:
        cache = compute_dataset_latent_targets(
            cfg.data, teacher, progress=cfg.progress, cache_root=cache_root
        )
        per_episode = [cache.targets(ep, teacher.k_max, teacher.stride) for ep in cache.episode_ids]
        out.append(torch.from_numpy(np.concatenate(per_episode)).float())
    return out


def build_data(dataset: Dataset, policy: Last0Policy, targets: list[torch.Tensor]) -> Last0Data:
    chunks = np.concatenate([action_chunks(ep.actions, policy.config.chunk) for ep in dataset])
    starts, offset = [], 0
    for ep in dataset:
        starts += [offset] * len(ep)
        offset += len(ep)
    return Last0Data(
        images=torch.from_numpy(np.concatenate([ep.images for ep in dataset])),
        proprio=torch.from_numpy(np.concatenate([ep.proprio for ep in dataset]).astype(np.float32)),
        instructions=[ep.instruction for ep in dataset for _ in range(len(ep))],
        actions=policy.tokenizer.normalize(torch.from_numpy(chunks).float()),
        episode_start=torch.tensor(starts, dtype=torch.long),
        targets=targets,
    )


def _inputs(
    policy: Last0Policy, data: Last0Data, idx: torch.Tensor, shift: int, gen: torch.Generator
) -> PolicyInputs:
    obs = Observation(
        images=shift_images(data.images[idx], shift, gen).numpy(),
        proprio=data.proprio[idx].numpy(),
        instruction=[data.instructions[i] for i in idx.tolist()],
        privileged=np.zeros((len(idx), 0), np.float32),
        task=np.zeros(len(idx), np.int64),
    )
    return policy.encode_obs(obs)


def last0_loss(
    policy: Last0Policy, data: Last0Data, idx: torch.Tensor, cfg: SFTConfig, gen: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """The warm-up loss on the acting steps ``idx`` (see module docstring)."""
    l0, chunk = policy.config.last0, policy.config.chunk
    b = len(idx)
    kappa = torch.tensor(l0.train_reason_every)[
        torch.randint(len(l0.train_reason_every), (b,), generator=gen)
    ]
    stale = (torch.rand(b, generator=gen) * kappa).long()  # s ~ U{0 .. κ-1}
    ridx = torch.maximum(idx - stale * chunk, data.episode_start[idx])
    act_inputs = _inputs(policy, data, idx, cfg.augment_shift, gen)
    reason_inputs = _inputs(policy, data, ridx, cfg.augment_shift, gen)
    actions = data.actions[idx].to(policy.device)
    noise = torch.randn(actions.shape, generator=gen).to(policy.device)
    t = sample_time(b, gen).to(policy.device)
    out = policy.sft_outputs(reason_inputs, act_inputs, noisy_actions(actions, noise, t), t)
    flow = flow_loss(out.velocity, actions, noise)
    loss = flow
    metrics = {"flow_mse": flow.item(), "staleness": stale.float().mean().item()}
    if out.latent_pred and data.targets and cfg.latent_weight > 0:
        cos_terms, align_terms = [], []
        for pred, targets in zip(out.latent_pred, data.targets, strict=True):
            target = targets[ridx].to(pred.device)
            cos = 1 - F.cosine_similarity(pred, target, dim=-1)
            per_slot = cos + ((pred - target) ** 2).mean(-1) if cfg.latent_loss == "cos_mse" else cos
            cos_terms.append(cos.mean())
            align_terms.append(per_slot.mean())
        align = torch.stack(align_terms).mean()
        loss = loss + cfg.latent_weight * align
        metrics["latent_cos"] = torch.stack(cos_terms).mean().item()
        metrics["latent_align"] = align.item()
    metrics["loss"] = loss.item()
    return loss, metrics


def train_sft_last0(cfg: SFTConfig) -> Path:
    """Train (or resume) a LaST0 policy; the caller holds the run directory's lock."""
    check_config(cfg)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out)
    mgr = CheckpointManager(out_dir / "checkpoints")
    latest = resume_point(out_dir, mgr, cfg.resume, cfg.overwrite)
    changes = config_changes(out_dir, cfg, cfg.allow_changes) if latest is not None else {}
    dataset = load_dataset(cfg.data)
    stats = load_statistics(cfg.data)
    pcfg = policy_config_for(cfg, dataset)
    targets = keyframe_targets(cfg, pcfg, out_dir)
    dims = tuple(int(t.shape[-1]) for t in targets)
    pcfg = dataclasses.replace(pcfg, last0=dataclasses.replace(pcfg.last0, target_dims=dims))
    run = cfg.backbone_run  # a Qwen3-VL backbone's precision, checkpointing, frozen vision tower
    if latest:
        policy = Last0Policy.from_pretrained(latest / "policy", backbone_run=run)
    else:
        policy = Last0Policy(pcfg, stats, backbone_run=run)
    data = build_data(dataset, policy, targets)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    gen = torch.Generator().manual_seed(cfg.seed)
    if latest is not None:
        opt.load_state_dict(load_state(latest / "optimizer.pt"))
        for group in opt.param_groups:
            group["weight_decay"] = cfg.weight_decay
        step = resume_step(latest, gen)
        print(f"resuming LaST0 SFT in {out_dir} from step {step}")
    write_record(out_dir, cfg, changes, step)
    logger = MetricsLogger(out_dir, resume_step=step if latest else None)
    n = data.actions.shape[0]
    policy.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="sft (last0)", disable=not cfg.progress)
    t0 = time.perf_counter()
    try:
        while step < cfg.steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen)
            loss, metrics = last0_loss(policy, data, idx, cfg, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite SFT loss at step {step + 1}; {kept_checkpoint(mgr)}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            opt.step()
            step += 1
            metrics["lr"] = opt.param_groups[0]["lr"]
            if step % 10 == 0 or step == cfg.steps:
                metrics["steps_per_s"] = 10 / max(time.perf_counter() - t0, 1e-9)
                t0 = time.perf_counter()
                logger.log(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", flow=f"{metrics['flow_mse']:.3f}")
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if not all_finite(policy):
                    raise FloatingPointError(
                        f"non-finite weights after SFT step {step}; {kept_checkpoint(mgr)}"
                    )
                save_state(mgr, policy, opt, gen, step)  # type: ignore[arg-type]
    finally:
        bar.close()
        logger.close()
    policy.eval()
    final = out_dir / "final"
    policy.save_pretrained(final)
    return final
