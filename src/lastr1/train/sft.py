"""One-shot SFT warm-up: action-token CE + λ·latent alignment to grounded targets + stop CE.

Per sample (one decision step t of a demo):

* the action chunk ``a[t : t+C]`` (padded with the last action) is tokenised and learned with
  cross-entropy over the C·7 parallel action slots;
* a reasoning length L is drawn (uniformly from the stop candidates, as the reference warm-up
  does, or fixed per task from config); the model runs its own Coconut latent chain and the first
  L latents are aligned to the teacher's future-frame targets (weight λ) with ``1 − cos`` (the
  reference, ``latent_loss=cos``) or ``(1 − cos) + MSE`` (``cos_mse``). A latent is aligned itself
  when the target is as wide as the model (``d_model``: e.g. DINOv2 features reduced by top-k
  channels, the paper's choice), else through a learned linear projection;
  the action slots only see those L latents;
* the stop head learns to pick L (cross-entropy over the candidates, weight ``stop_weight``).

AdamW with warm-up + cosine decay, gradient clipping, random-shift image augmentation, a progress
bar, TensorBoard scalars, crash-safe checkpoints every N steps and resume after a kill.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lastr1.data.episodes import Dataset, load_dataset
from lastr1.data.stats import load_statistics
from lastr1.envs.base import Observation
from lastr1.models.backbones.run_settings import BackboneRunConfig
from lastr1.models.latent import SequenceLayout
from lastr1.models.policy import LastR1Policy, PolicyConfig
from lastr1.models.teachers.base import TeacherConfig
from lastr1.train.checkpoint import CheckpointManager, all_finite, load_state
from lastr1.train.distributed import SINGLE, DistContext, NullLogger, session
from lastr1.train.metrics import MetricsLogger
from lastr1.train.run_dir import writable_dir
from lastr1.train.run_record import config_changes, resume_point, write_record


@dataclass
class SFTConfig:
    """``lastr1 sft``: warm up a policy on one demo per task."""

    data: str = "runs/demos"  # a dataset written by `lastr1 make-demos`
    out: str = "runs/sft"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # how a pretrained backbone runs: precision, activation checkpointing, frozen vision tower (saved
    # with the checkpoint as backbone_run.json, so `lastr1 rl` on it runs the same way; docs/backbones.md)
    backbone_run: BackboneRunConfig = field(default_factory=BackboneRunConfig)
    teacher: TeacherConfig = field(default_factory=lambda: TeacherConfig(name="proprio"))
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr × this (reference: 0.1)
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    latent_weight: float = 1.0  # λ; 0 trains latents only through the action loss
    # "cos": 1 − cos(z, z*) (the reference); "cos_mse": (1 − cos) + MSE (our earlier default)
    latent_loss: Literal["cos", "cos_mse"] = "cos"
    stop_weight: float = 0.1
    # "uniform": L drawn uniformly from the stop candidates per sample (reference warm-up);
    # "per_task": L from target_lengths ("task=L" items), default_target_len for the rest.
    stop_target: Literal["uniform", "per_task"] = "uniform"
    target_lengths: list[str] = field(default_factory=list)
    default_target_len: int = 0  # 0 = k_max
    augment_shift: int = 4  # random image shift in pixels (0 = off)
    checkpoint_every: int = 500
    seed: int = 0
    threads: int = 1  # torch threads; >1 is much slower when another process keeps a core busy
    resume: bool = True
    # start over in an `out` that holds a run's checkpoints, deleting them (never done otherwise)
    overwrite: bool = False
    # settings a resume may change from the run's config.yaml (e.g. lr,batch_size; a group name
    # such as policy allows all its fields); the old and new values go to config_history.jsonl
    allow_changes: list[str] = field(default_factory=list)
    progress: bool = True
    # the learner under torchrun (docs/scaling.md): auto = ddp when torchrun started several processes,
    # else one process; every rank trains on its share of each batch (batch_size stays the global
    # count); fsdp2 also shards a Qwen3-VL backbone over the ranks
    distributed: Literal["auto", "none", "ddp", "fsdp2"] = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        for name in (
            "warmup_steps",
            "weight_decay",
            "grad_clip",
            "latent_weight",
            "stop_weight",
            "augment_shift",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.latent_loss not in ("cos", "cos_mse"):
            raise ValueError(f"latent_loss={self.latent_loss!r} must be 'cos' (reference) or 'cos_mse'")
        self.backbone_run.check_for(self.policy.backbone)
        if self.distributed == "fsdp2" and self.policy.backbone != "qwen3_vl":
            raise ValueError(
                "distributed=fsdp2 shards a Qwen3-VL backbone (policy.backbone=qwen3_vl); "
                f"for policy.backbone={self.policy.backbone} use distributed=ddp"
            )


@dataclass
class SFTData:
    """Every (episode, t) decision step of a dataset as tensors, built once."""

    images: torch.Tensor  # uint8 (N, V, H, W, 3)
    proprio: torch.Tensor  # (N, P)
    instructions: list[str]
    tokens: torch.Tensor  # (N, C·7) action-token targets
    targets: torch.Tensor | None  # (N, K, dim) latent targets or None
    task: torch.Tensor  # (N,) task index into ``task_names``
    task_names: list[str]


def action_chunks(actions: np.ndarray, chunk: int) -> np.ndarray:
    """``(T, 7)`` → ``(T, chunk, 7)``: a[t:t+chunk], padded with the episode's last action."""
    t = actions.shape[0]
    idx = np.minimum(np.arange(t)[:, None] + np.arange(chunk)[None, :], t - 1)
    return actions[idx]


def build_sft_data(dataset: Dataset, policy: LastR1Policy, targets: list[np.ndarray] | None) -> SFTData:
    names = sorted({ep.task for ep in dataset})
    chunks = [action_chunks(ep.actions, policy.config.chunk) for ep in dataset]
    tokens = policy.tokenizer.encode(torch.from_numpy(np.concatenate(chunks)).float())
    return SFTData(
        images=torch.from_numpy(np.concatenate([ep.images for ep in dataset])),
        proprio=torch.from_numpy(np.concatenate([ep.proprio for ep in dataset]).astype(np.float32)),
        instructions=[ep.instruction for ep in dataset for _ in range(len(ep))],
        tokens=tokens.long(),
        targets=torch.from_numpy(np.concatenate(targets)).float() if targets is not None else None,
        task=torch.tensor([names.index(ep.task) for ep in dataset for _ in range(len(ep))]),
        task_names=names,
    )


def shift_images(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (replicate padding), per sample: DrQ-style."""
    if pad <= 0:
        return images
    b, v, h, w, c = images.shape
    x = images.permute(0, 1, 4, 2, 3).reshape(b, v * c, h, w).float()
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = dy[:, None] + torch.arange(h)[None]
    cols = dx[:, None] + torch.arange(w)[None]
    x = x[
        torch.arange(b)[:, None, None, None],
        torch.arange(v * c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return x.reshape(b, v, c, h, w).permute(0, 1, 3, 4, 2).round().to(torch.uint8)


def _lengths(
    cfg: SFTConfig, policy: LastR1Policy, task: torch.Tensor, names: list[str], gen: torch.Generator
) -> torch.Tensor:
    lay = policy.layout
    if lay.k_max == 0:
        return torch.zeros_like(task)
    candidates = torch.tensor(lay.candidate_lengths())
    if cfg.stop_target == "uniform":
        return candidates[torch.randint(len(candidates), task.shape, generator=gen)]
    table = _target_table(cfg, policy.layout, names)
    return torch.tensor([table[names[i]] for i in task.tolist()])


def _target_table(cfg: SFTConfig, layout: SequenceLayout, names: list[str]) -> dict[str, int]:
    allowed = layout.candidate_lengths()
    default = cfg.default_target_len or layout.k_max
    table = {n: default for n in names}
    for item in cfg.target_lengths:
        if "=" not in item:
            raise ValueError(f"target_lengths item {item!r} must look like task=L (e.g. reach-v3=2)")
        name, value = item.split("=", 1)
        if name not in table:
            raise ValueError(f"target_lengths: task {name!r} is not in the dataset; tasks: {names}")
        table[name] = int(value)
    for name, length in table.items():
        if length not in allowed:
            raise ValueError(f"target length {length} for task {name!r} must be one of {allowed}")
    return table


def sft_loss(
    policy: LastR1Policy, data: SFTData, idx: torch.Tensor, cfg: SFTConfig, gen: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """The warm-up loss on the samples ``idx`` (see module docstring)."""
    images = shift_images(data.images[idx], cfg.augment_shift, gen)
    obs = Observation(
        images=images.numpy(),
        proprio=data.proprio[idx].numpy(),
        instruction=[data.instructions[i] for i in idx.tolist()],
        privileged=np.zeros((len(idx), 0), np.float32),
        task=data.task[idx].numpy(),
    )
    inputs = policy.encode_obs(obs)
    lengths = _lengths(cfg, policy, data.task[idx], data.task_names, gen)
    out = policy.sft_outputs(inputs, latent_len=lengths if policy.layout.k_max else None)
    tokens = data.tokens[idx]
    action_ce = F.cross_entropy(out.action_logits.flatten(0, 1), tokens.flatten())
    loss = action_ce
    metrics = {"action_ce": action_ce.item()}
    with torch.no_grad():
        metrics["action_acc"] = (out.action_logits.argmax(-1) == tokens).float().mean().item()
    if policy.layout.k_max:
        stop_ce = F.cross_entropy(out.stop_logits, policy.stop_target(lengths))
        loss = loss + cfg.stop_weight * stop_ce
        metrics["stop_ce"] = stop_ce.item()
        if cfg.latent_weight > 0 and data.targets is not None:
            pred = out.latent_pred if out.latent_pred is not None else out.latents
            target = data.targets[idx][:, : pred.shape[1]]
            mask = out.latent_mask.float()
            cos = 1 - F.cosine_similarity(pred, target, dim=-1)
            per_slot = cos + ((pred - target) ** 2).mean(-1) if cfg.latent_loss == "cos_mse" else cos
            align = (per_slot * mask).sum() / mask.sum().clamp_min(1)
            loss = loss + cfg.latent_weight * align
            metrics["latent_cos"] = ((cos * mask).sum() / mask.sum().clamp_min(1)).item()
            metrics["latent_align"] = align.item()
    metrics["loss"] = loss.item()
    return loss, metrics


def resume_step(latest: Path, gen: torch.Generator) -> int:
    """The step a checkpoint was saved at, with the batch generator restored to its state then."""
    try:
        step = int(json.loads((latest / "trainer_state.json").read_text())["step"])
    except (OSError, json.JSONDecodeError, KeyError):
        raise ValueError(
            f"{latest / 'trainer_state.json'} is unreadable; delete {latest} to resume from the "
            "checkpoint before it, or pass overwrite=true to start over"
        ) from None
    gen.set_state(load_state(latest / "rng.pt"))
    return step


def lr_at(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))
    return float(cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine))


def policy_config_for(cfg: SFTConfig, dataset: Dataset) -> PolicyConfig:
    """The configured policy, with data-given shapes filled in (image size, views, proprio dim)."""
    first = dataset[0]
    _, views, h, w, _ = first.images.shape
    if h != w:
        raise ValueError(f"demo images must be square, got {h}x{w}")
    return dataclasses.replace(cfg.policy, image_size=h, num_views=views, proprio_dim=first.proprio.shape[1])


def train_sft(cfg: SFTConfig) -> Path:
    """Train (or resume) and return the directory of the final policy checkpoint.

    ``cfg.out`` is held under an exclusive lock for the whole run (:mod:`lastr1.train.run_dir`).
    ``policy.family=last0`` trains the dual-system policy (:mod:`lastr1.train.sft_last0`)."""
    with session(cfg.distributed) as ctx, ctx.main_lock(cfg.out):
        if ctx.distributed and cfg.policy.family == "last0":
            raise ValueError("policy.family=last0 trains in one process: run lastr1 sft without torchrun")
        if cfg.policy.family == "last0":
            from lastr1.train.sft_last0 import train_sft_last0

            return train_sft_last0(cfg)
        return _train_sft(cfg, ctx)


def _train_sft(cfg: SFTConfig, ctx: DistContext = SINGLE) -> Path:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out)
    mgr = CheckpointManager(out_dir / "checkpoints")
    ctx.check_share("batch_size", cfg.batch_size)  # the global batch, in equal shares
    # rank 0 decides (overwrite=true deletes); every rank then loads the same checkpoint
    latest = ctx.on_main(resume_point, out_dir, mgr, cfg.resume, cfg.overwrite)
    changes = ctx.on_main(config_changes, out_dir, cfg, cfg.allow_changes) if latest is not None else {}
    dataset = load_dataset(cfg.data)
    stats = load_statistics(cfg.data)
    targets = None
    pcfg = policy_config_for(cfg, dataset)
    if cfg.stop_target == "per_task" and pcfg.k_max:  # checked now, not at the first step
        layout = SequenceLayout(0, pcfg.k_max, pcfg.chunk * pcfg.action_dim, pcfg.latent_group)
        _target_table(cfg, layout, sorted({ep.task for ep in dataset}))
    if pcfg.k_max and cfg.latent_weight > 0:
        from lastr1.data.latent_targets import compute_dataset_latent_targets

        teacher = dataclasses.replace(cfg.teacher, k_max=pcfg.k_max)
        # a read-only dataset folder cannot hold the target cache: keep it in the run instead
        cache_root = None if writable_dir(cfg.data) else out_dir
        if cache_root is not None:
            print(f"note: {cfg.data} is not writable; caching latent targets under {out_dir}")
        cache = ctx.main_first(  # rank 0 fills the cache, the others read it
            compute_dataset_latent_targets, cfg.data, teacher, progress=cfg.progress, cache_root=cache_root
        )
        targets = [cache.targets(i) for i in range(len(dataset))]
        width = int(targets[0].shape[-1])
        # as wide as the model: align the latent itself (the reference); else a learned projection
        pcfg = dataclasses.replace(pcfg, target_dim=0 if width == pcfg.d_model else width)
    run = cfg.backbone_run
    if latest:
        policy = LastR1Policy.from_pretrained(latest / "policy", backbone_run=run)
    else:
        policy = LastR1Policy(pcfg, stats, backbone_run=run)
    policy = ctx.prepare(policy)  # ddp: rank 0's weights on every rank; fsdp2: the backbone sharded
    data = build_sft_data(dataset, policy, targets)
    # frozen weights (LoRA's base, backbone_run.freeze_vision) stay out of the optimizer
    trainable = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    gen = torch.Generator().manual_seed(cfg.seed)
    if latest is not None:
        ctx.load_optimizer(policy, opt, load_state(latest / "optimizer.pt"))
        for group in opt.param_groups:  # this config's decay (the lr is set every step)
            group["weight_decay"] = cfg.weight_decay
        step = resume_step(latest, gen)
        print(f"resuming SFT in {out_dir} from step {step}")
    if ctx.is_main:
        write_record(out_dir, cfg, changes, step)  # every setting checked: the run has started
    logger = MetricsLogger(out_dir, resume_step=step if latest else None) if ctx.is_main else NullLogger()
    n = data.tokens.shape[0]
    policy.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="sft", disable=not cfg.progress or not ctx.is_main)
    t0 = time.perf_counter()
    try:
        while step < cfg.steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen)
            idx, shard_gen = ctx.shard_batch(idx, gen)  # this rank's share of the batch
            loss, metrics = sft_loss(policy, data, idx, cfg, shard_gen)
            weight, finite = ctx.batch_weight(len(idx), bool(torch.isfinite(loss)))  # finite on every rank
            if not finite:
                raise FloatingPointError(f"non-finite SFT loss at step {step + 1}; {kept_checkpoint(mgr)}")
            opt.zero_grad(set_to_none=True)
            (loss * weight).backward()
            ctx.average_grads(trainable)
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
            opt.step()
            step += 1
            metrics["lr"] = opt.param_groups[0]["lr"]
            if step % 10 == 0 or step == cfg.steps:
                metrics["steps_per_s"] = 10 / max(time.perf_counter() - t0, 1e-9)
                t0 = time.perf_counter()
                metrics = ctx.mean_metrics(metrics)  # rank 0: over every rank's shard
                logger.log(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['action_acc']:.2f}")
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                # a finite loss can still give non-finite weights: never keep them as "good"
                if not all_finite(policy):
                    raise FloatingPointError(
                        f"non-finite weights after SFT step {step}; {kept_checkpoint(mgr)}"
                    )
                with ctx.for_saving(policy, opt) as (full, full_opt):
                    if ctx.is_main:
                        save_state(mgr, full, full_opt, gen, step)
    finally:
        bar.close()
        logger.close()
    policy.eval()
    final = out_dir / "final"
    with ctx.for_saving(policy) as (full, _):
        if ctx.is_main:
            full.save_pretrained(final)
    ctx.barrier()  # every rank returns once final/ is written
    return final


def kept_checkpoint(mgr: CheckpointManager) -> str:
    """Which checkpoint a stopped run keeps, for its message."""
    good = mgr.latest()
    if good is None:
        return "no checkpoint was saved; lower lr and rerun"
    return f"the last good checkpoint is kept ({good.name}); lower lr and rerun with allow_changes=lr to resume from it"


def save_state(
    mgr: CheckpointManager, policy: LastR1Policy, opt: torch.optim.Optimizer, gen: torch.Generator, step: int
) -> None:
    def write(d: Path) -> None:
        policy.save_pretrained(d / "policy")
        torch.save(opt.state_dict(), d / "optimizer.pt")
        torch.save(gen.get_state(), d / "rng.pt")
        (d / "trainer_state.json").write_text(json.dumps({"step": step}))

    mgr.save(step, write)
