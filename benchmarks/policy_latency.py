"""act() latency of the LaST-R1 policy versus the number of latent reasoning steps, with/without KV cache.

Each latent step costs one token's forward with the KV cache; without it every step recomputes the
whole prefix. Ratios are to k_max = 0 (no latents, no stop decision) measured in the same run.

    PYTHONPATH=src python benchmarks/policy_latency.py --batch 8 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lastr1.envs.base import Observation
from lastr1.models import LastR1Policy, PolicyConfig


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
    )


def _measure(
    cases: dict[tuple[int, bool], tuple[LastR1Policy, Observation]], repeats: int, warmup: int
) -> dict[tuple[int, bool], float]:
    """Median ms per case; cases are interleaved round-robin so load spikes on a shared CPU hit all alike."""
    gen = torch.Generator().manual_seed(0)
    times: dict[tuple[int, bool], list[float]] = {key: [] for key in cases}
    for r in range(warmup + repeats):
        for (k, cache), (policy, obs) in cases.items():
            t0 = time.perf_counter()
            policy.act(obs, generator=gen, use_cache=cache)
            if r >= warmup:
                times[(k, cache)].append(time.perf_counter() - t0)
    return {key: statistics.median(v) * 1000.0 for key, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--k-max", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cases: dict[tuple[int, bool], tuple[LastR1Policy, Observation]] = {}
    params: dict[int, int] = {}
    for k in args.k_max:
        torch.manual_seed(0)
        cfg = PolicyConfig(k_max=k, image_size=args.image_size)
        policy = LastR1Policy(cfg).eval().to(args.device)
        params[k] = sum(p.numel() for p in policy.parameters())
        for cache in (True, False):
            cases[(k, cache)] = (policy, _obs(cfg, args.batch))
    ms = _measure(cases, args.repeats, args.warmup)
    rows = [(k, params[k], ms[(k, True)], ms[(k, False)]) for k in args.k_max]

    base = next((r[2] for r in rows if r[0] == 0), rows[0][2])
    print(
        f"act() latency, batch {args.batch}, {args.threads} thread(s), device {args.device}, "
        f"median of {args.repeats}; ratios to k_max=0 (cached) from this run"
    )
    print(
        f"{'k_max':>5} {'params':>9} {'cached ms':>10} {'ratio':>6} {'no-cache ms':>12} {'ratio':>6} {'cache speed-up':>15}"
    )
    for k, params, cached, nocache in rows:
        print(
            f"{k:>5} {params:>9,} {cached:>10.1f} {cached / base:>6.2f} {nocache:>12.1f} "
            f"{nocache / base:>6.2f} {nocache / cached:>15.2f}"
        )


if __name__ == "__main__":
    main()
