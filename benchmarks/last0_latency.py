"""act() latency per control step (one action chunk) of LaST0 at κ = 1 and κ = 4 against LaST-R1.

Same width, depth, heads, image size and number of latents for both families (the defaults: d 128,
4 layers, 4 heads, 64 px; LaST-R1 k_max 8; LaST0 4 keyframes x (1 camera + state) = 8 latents, 10
Euler steps). LaST0's reasoning runs at the first of every κ calls of a slot and is reused in between,
so its cost per control step is (one reasoning call + κ − 1 cached calls) / κ, from the medians of
each kind of call (robust to load spikes; the raw mean over whole κ-cycles is printed too). Cases are interleaved round-robin so load on a
shared CPU hits them alike; ratios are to LaST-R1 measured in the same run::

    PYTHONPATH=src python benchmarks/last0_latency.py --batch 8 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lastr1.envs.base import Observation
from lastr1.models import LastR1Policy, PolicyConfig
from lastr1.models.last0.config import Last0Config
from lastr1.models.last0.policy import Last0Policy


def _obs(cfg: PolicyConfig, batch: int) -> Observation:
    rng = np.random.default_rng(0)
    return Observation(
        images=rng.integers(
            0, 256, (batch, cfg.num_views, cfg.image_size, cfg.image_size, 3), dtype=np.uint8
        ),
        proprio=rng.standard_normal((batch, cfg.proprio_dim)).astype(np.float32),
        instruction=["pick up the black bowl and place it on the plate"] * batch,
        privileged=np.zeros((batch, 1), np.float32),
        task=np.zeros(batch, np.int64),
        slot=np.arange(batch),  # env slots: what lets LaST0 keep each episode's reasoning
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=10, help="κ=4 cycles measured (4 calls each)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--euler-steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    shared = dict(d_model=args.d_model, n_layers=args.layers, k_max=8)
    torch.manual_seed(0)
    r1_cfg = PolicyConfig(**shared)
    cases: dict[str, tuple[torch.nn.Module, Observation]] = {
        "LaST-R1 (k_max 8)": (LastR1Policy(r1_cfg).eval().to(args.device), _obs(r1_cfg, args.batch))
    }
    for kappa in (1, 4):
        torch.manual_seed(0)
        cfg = PolicyConfig(
            family="last0", **shared, last0=Last0Config(reason_every=kappa, euler_steps=args.euler_steps)
        )
        cases[f"LaST0 κ={kappa}"] = (Last0Policy(cfg).eval().to(args.device), _obs(cfg, args.batch))
    params = {name: sum(p.numel() for p in pol.parameters()) for name, (pol, _) in cases.items()}

    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in cases}
    reasoned: dict[str, list[bool]] = {name: [] for name in cases}
    for r in range(args.warmup + 4 * args.cycles):  # a multiple of 4 calls: whole κ=4 cycles
        for name, (policy, obs) in cases.items():
            t0 = time.perf_counter()
            out = policy.act(obs, mode="sample", generator=gen)
            dt = time.perf_counter() - t0
            if r >= args.warmup:
                times[name].append(dt * 1000.0)
                flags = getattr(out, "reasoned", None)
                reasoned[name].append(True if flags is None else bool(flags.all()))
    kappas = {"LaST-R1 (k_max 8)": 1, "LaST0 κ=1": 1, "LaST0 κ=4": 4}
    per_step: dict[str, float] = {}
    medians: dict[str, tuple[float, float | None]] = {}
    for name, ms in times.items():
        with_r = [t for t, f in zip(ms, reasoned[name], strict=True) if f]
        without = [t for t, f in zip(ms, reasoned[name], strict=True) if not f]
        r, c = statistics.median(with_r), statistics.median(without) if without else None
        medians[name] = (r, c)
        k = kappas[name]
        per_step[name] = (r + (k - 1) * c) / k if c is not None else r  # one reasoning call per κ calls
    base = per_step["LaST-R1 (k_max 8)"]
    print(
        f"act() latency per control step (one chunk), batch {args.batch}, {args.threads} thread(s), device "
        f"{args.device}, d_model {args.d_model}, {args.layers} layers, {4 * args.cycles} calls per case after "
        f"{args.warmup} warm-up, interleaved. Per step = (median reasoning call + (κ-1) x median cached "
        "call) / κ; ratio = per step / LaST-R1's in this run; mean = raw mean over all calls"
    )
    print(
        f"{'policy':<20} {'params':>10} {'reasoning call ms':>18} {'cached call ms':>15} {'per step ms':>12} "
        f"{'ratio':>6} {'mean ms':>8}"
    )
    for name, ms in times.items():
        r, c = medians[name]
        cached = f"{c:.1f}" if c is not None else "-"
        print(
            f"{name:<20} {params[name]:>10,} {r:>18.1f} {cached:>15} {per_step[name]:>12.1f} "
            f"{per_step[name] / base:>6.2f} {statistics.mean(ms):>8.1f}"
        )


if __name__ == "__main__":
    main()
