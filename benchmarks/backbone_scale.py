"""What a Qwen3-VL backbone costs: act() latency, an SFT step and a LAPO update, and peak memory.

Two modes:

* no ``--size``: the tiny random Qwen3-VL (``qwen3_vl_size=tiny``) against the demo preset's tiny
  backbone on the same observations, the three costs measured round-robin in one run (so load spikes
  on a shared CPU hit both alike) and printed as a table with their ratios;
* ``--size tiny|2b|4b``: one policy of that configuration with random weights and the run settings
  given (default: bf16 weights, LoRA rank 16), one act() on ``--decisions`` observations at
  ``--image-size`` px and one LAPO update on those decisions; prints wall times, parameter counts and
  peak memory (the process's peak RSS; on CUDA also the peak allocated GPU memory).

``--device cuda`` runs either mode on a GPU (same code; the clock waits for the device).
``--layout`` picks the Qwen3-VL token layout (``PolicyConfig.qwen3_vl_layout``; default the
reference's, the numbers in docs/backbones.md before milestone 3 were measured with ``ours``).

    PYTHONPATH=src python benchmarks/backbone_scale.py --threads 1
    PYTHONPATH=src python benchmarks/backbone_scale.py --size 2b --decisions 2
    PYTHONPATH=src python benchmarks/backbone_scale.py --size 4b --device cuda --checkpointing
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import lastr1.train.rl as rl
from lastr1.algos import AlgoConfig, OldTerms
from lastr1.config import from_dict, load_preset
from lastr1.envs import EnvConfig
from lastr1.envs.base import Observation
from lastr1.models import LastR1Policy, PolicyConfig
from lastr1.models.backbones.run_settings import BackboneRunConfig
from lastr1.train.sft import SFTConfig, SFTData, sft_loss

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def _obs(cfg: PolicyConfig, batch: int, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    size = cfg.image_size
    return Observation(
        images=rng.integers(0, 256, (batch, cfg.num_views, size, size, 3), dtype=np.uint8),
        proprio=rng.standard_normal((batch, cfg.proprio_dim)).astype(np.float32),
        instruction=[INSTRUCTION] * batch,
        privileged=np.zeros((batch, 1), np.float32),
        task=np.zeros(batch, np.int64),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_gb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in GB (Linux: ru_maxrss is in KB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    current = peak
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) / 1e6
    except OSError:
        pass
    return current, peak


def _sft_data(policy: LastR1Policy, batch: int) -> SFTData:
    """``batch`` synthetic warm-up samples: random action chunks and latent targets."""
    cfg = policy.config
    g = torch.Generator().manual_seed(1)
    obs = _obs(cfg, batch, seed=1)
    return SFTData(
        images=torch.from_numpy(obs.images),
        proprio=torch.from_numpy(obs.proprio),
        instructions=list(obs.instruction),
        tokens=policy.tokenizer.encode(
            torch.rand(batch, cfg.chunk, cfg.action_dim, generator=g) * 2 - 1
        ).long(),
        targets=torch.randn(batch, cfg.k_max, cfg.d_model, generator=g),
        task=torch.zeros(batch, dtype=torch.long),
        task_names=["bench"],
    )


class Workload:
    """One policy and the three things measured on it: act, an SFT step, a LAPO update."""

    def __init__(self, policy: LastR1Policy, batch: int, device: torch.device) -> None:
        self.policy = policy.to(device)
        self.device = device
        self.obs = _obs(policy.config, batch)
        self.data = _sft_data(policy, batch)
        self.sft_cfg = SFTConfig(augment_shift=0)
        trainable = [p for p in policy.parameters() if p.requires_grad]
        self.sft_opt = torch.optim.AdamW(trainable, lr=1e-5)
        self.rl_cfg = rl.RLConfig(
            env=EnvConfig(backend="toy", num_envs=1),
            algo=AlgoConfig(name="lapo"),
            rollouts_per_iter=1,
            minibatches=1,
            lr=1e-5,
            value_lr=1e-5,
            progress=False,
        )
        self.rl_opt = rl.make_optimizer(policy, self.rl_cfg)
        self.gen = torch.Generator().manual_seed(0)
        self.updates = 0
        self.rollout: Any = None  # the decisions LAPO re-scores (one act, reused: timing only)

    def act(self) -> Any:
        self.policy.eval()
        with torch.no_grad():
            out = self.policy.act(self.obs, generator=self.gen)
        _sync(self.device)
        return out

    def sft_step(self) -> None:
        self.policy.train()
        idx = torch.arange(len(self.data.instructions))
        loss, _ = sft_loss(self.policy, self.data, idx, self.sft_cfg, torch.Generator().manual_seed(0))
        self.sft_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.sft_opt.step()
        _sync(self.device)

    def lapo_update(self) -> dict[str, float]:
        if self.rollout is None:
            self.rollout = self.act()
        out = self.rollout
        reward = (torch.arange(len(out.value), device=out.value.device) % 2).float()
        adv = (reward - reward.mean()) / (reward.std() + 1e-6) if len(reward) > 1 else reward
        old = OldTerms(adv, reward, out.value, out.logp_tokens, out.logp_stop, out.latents, out.latent_mask)
        self.updates += 1
        metrics = rl.update_policy(self.policy, self.rl_opt, self.rl_cfg, old, out, self.updates)
        _sync(self.device)
        return metrics


def _count(policy: LastR1Policy) -> tuple[int, int]:
    params = list(policy.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def compare(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """(a) tiny Qwen3-VL vs the tiny backbone: median ms of each cost, measured round-robin."""
    tiny_fields = dict(load_preset("demo", "sft")["policy"])
    common = dict(image_size=args.image_size, proprio_dim=8, k_max=8, chunk=8, instruction_max_len=20)
    configs = {
        "tiny backbone (demo preset)": from_dict(PolicyConfig, {**tiny_fields, **common}, prefix="policy"),
        "Qwen3-VL tiny (random)": PolicyConfig(
            backbone="qwen3_vl",
            qwen3_vl_size="tiny",
            qwen3_vl_layout=args.layout,
            value_hidden=tuple(tiny_fields["value_hidden"]),
            **common,
        ),
    }
    loads: dict[str, Workload] = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        loads[name] = Workload(LastR1Policy(cfg), args.batch, device)
    for load in loads.values():
        load.rollout = load.act()
    jobs: dict[str, Callable[[Workload], Any]] = {
        "act": Workload.act,
        "sft_step": Workload.sft_step,
        "lapo_update": Workload.lapo_update,
    }
    times: dict[tuple[str, str], list[float]] = {(n, j): [] for n in loads for j in jobs}
    for r in range(args.warmup + args.repeats):
        for job, fn in jobs.items():
            for name, load in loads.items():
                t0 = time.perf_counter()
                fn(load)
                if r >= args.warmup:
                    times[(name, job)].append(time.perf_counter() - t0)
    base = next(iter(loads))
    rows = []
    for name, load in loads.items():
        total, _ = _count(load.policy)
        row: dict[str, Any] = {"policy": name, "params": total, "prefix": load.policy.layout.n_prefix}
        for job in jobs:
            ms = statistics.median(times[(name, job)]) * 1000
            row[job] = ms
            row[f"{job}_ratio"] = ms / (statistics.median(times[(base, job)]) * 1000)
        rows.append(row)
    print(
        f"\nbatch {args.batch}, {args.image_size} px, k_max 8, chunk 8 x 7, {args.threads} thread(s), "
        f"{device}, median of {args.repeats} (after {args.warmup} warm-up), round-robin\n"
    )
    print("| policy | params | prefix tokens | act ms (x) | SFT step ms (x) | LAPO update ms (x) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [f"{row[j]:.0f} ({row[j + '_ratio']:.1f}x)" for j in jobs]
        print(f"| {row['policy']} | {row['params'] / 1e6:.2f} M | {row['prefix']} | {' | '.join(cells)} |")
    return rows


def scale(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """(b) one act() and one LAPO update on a Qwen3-VL of ``--size`` with random weights."""
    run = BackboneRunConfig(
        precision=args.precision, gradient_checkpointing=args.checkpointing, freeze_vision=args.freeze_vision
    )
    cfg = PolicyConfig(
        backbone="qwen3_vl",
        qwen3_vl_size=args.size,
        qwen3_vl_layout=args.layout,
        image_size=args.image_size,
        use_proprio=False,  # the reference's LIBERO runs
        instruction_max_len=20,
        k_max=8,
        chunk=8,
        lora_rank=args.lora_rank,
    )
    result: dict[str, Any] = {"size": args.size, "device": str(device), **dataclasses.asdict(run)}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    policy = LastR1Policy(cfg, backbone_run=run).to(device)
    result["build_s"] = time.perf_counter() - t0
    result["rss_after_build_gb"] = _rss_gb()[0]
    total, trainable = _count(policy)
    result.update(params=total, trainable=trainable, prefix_tokens=policy.layout.n_prefix)
    load = Workload(policy, args.decisions, device)
    t0 = time.perf_counter()
    load.rollout = load.act()
    result["act_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = load.lapo_update()
    result["lapo_update_s"] = time.perf_counter() - t0
    result["loss"] = metrics["loss"]
    result["peak_rss_gb"] = _rss_gb()[1]
    if device.type == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    print(
        f"\nQwen3-VL {args.size}, random weights, {args.precision}, LoRA rank {args.lora_rank}, "
        f"checkpointing {args.checkpointing}, frozen vision {args.freeze_vision}, {device}, "
        f"{args.threads} thread(s); {args.decisions} decision(s) at {args.image_size} px\n"
    )
    print("| quantity | value |")
    print("|---|---|")
    print(f"| parameters (trainable) | {total / 1e9:.3f} B ({trainable / 1e6:.2f} M) |")
    print(f"| prefix tokens (image + text + <latent_start>) | {result['prefix_tokens']} |")
    print(f"| build (random init) | {result['build_s']:.1f} s |")
    print(f"| one act() | {result['act_s']:.1f} s |")
    print(f"| one LAPO update | {result['lapo_update_s']:.1f} s (loss {result['loss']:.4f}) |")
    print(
        f"| RSS after build / peak RSS | {result['rss_after_build_gb']:.2f} / {result['peak_rss_gb']:.2f} GB |"
    )
    if "peak_gpu_gb" in result:
        print(f"| peak GPU memory allocated | {result['peak_gpu_gb']:.2f} GB |")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=["tiny", "2b", "4b"], default=None, help="scale mode; omit to compare"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--image-size", type=int, default=None, help="default: 64 (compare), 256 (scale)")
    parser.add_argument("--batch", type=int, default=8, help="compare: observations per act / SFT / LAPO")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--decisions", type=int, default=2, help="scale: observations in the act and update")
    parser.add_argument("--precision", choices=["fp32", "bf16-mixed", "bf16-true"], default="bf16-true")
    parser.add_argument("--lora-rank", type=int, default=16, help="scale: 0 = train the whole backbone")
    parser.add_argument("--checkpointing", action="store_true", help="scale: activation checkpointing")
    parser.add_argument("--freeze-vision", action="store_true", help="scale: keep the vision tower fixed")
    parser.add_argument(
        "--layout", choices=["reference", "ours"], default="reference", help="the Qwen3-VL token layout"
    )
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = 64 if args.size is None else 256
    return args


def main(argv: list[str] | None = None) -> Any:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: this torch build sees no CUDA device; run it on a GPU machine")
    return compare(args, device) if args.size is None else scale(args, device)


if __name__ == "__main__":
    main()
