"""Does the reasoning length change what the policy does? Action-distribution shift per task.

Runs the checkpoint on the ``eval`` starts (greedy by default), then re-scores every decision's
action tokens at each stop candidate on the same latents (``lastr1.eval.length_sensitivity``) and
prints, per task: KL(p_Lmax ‖ p_L) in nats per token, the fraction of greedy action tokens that
change between the shortest and the longest length, and the yardstick, the KL between consecutive
decisions of one episode (one action chunk of motion), and the swap KL: the actions at the longest
length with another same-task decision's latents. The ratios are the KL at the shortest length and
the swap KL over the chunk KL.

The rollouts decode with the checkpoint's own decode (its ``decode.json``) with ``decode.*``
overrides on top, e.g. sampled at the demo RL's action temperature::

    python benchmarks/length_sensitivity.py --checkpoint runs/demo/sft/final --episodes 10 \\
        [--mode sample decode.action_temperature=0.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from tqdm import tqdm

from lastr1.config import ConfigError
from lastr1.envs import EnvConfig, EpisodeSpec, make_env
from lastr1.eval.length_sensitivity import length_sensitivity
from lastr1.models.decode import DecodeConfig, with_overrides
from lastr1.models.policy import LastR1Policy
from lastr1.rollout.collector import collect, merge_rollouts


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tasks", default="reach-v3,button-press-topdown-v3,drawer-open-v3,drawer-close-v3")
    p.add_argument("--episodes", type=int, default=10, help="eval starts per task")
    p.add_argument("--mode", default="greedy", choices=["greedy", "sample"], help="how the rollouts act")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--placement-scale", type=float, default=0.3, help="Meta-World ranges x this (demo: 0.3)")
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--out", default="", help="write the per-task rows as JSON here")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="decode.key=value",
        help="decode settings over the checkpoint's decode.json (e.g. decode.action_temperature=0.5)",
    )
    return p.parse_args()


def checkpoint_decode(policy: LastR1Policy, overrides: list[str]) -> DecodeConfig:
    """The checkpoint's own decode (``policy.decode``) with the ``decode.*`` overrides on top."""
    try:
        return with_overrides(policy.decode, overrides)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


def main() -> None:
    a = _args()
    torch.set_num_threads(1)
    policy = LastR1Policy.from_pretrained(a.checkpoint).eval()
    decode = checkpoint_decode(policy, a.overrides)
    tasks = a.tasks.split(",")
    env_cfg = EnvConfig(
        backend="metaworld",
        tasks=tasks,
        num_envs=a.num_envs,
        image_size=policy.config.image_size,
        max_steps=a.max_steps,
        vector="sync",
        placement_scale=a.placement_scale,
    )
    specs = [EpisodeSpec(t, "eval", i) for t in range(len(tasks)) for i in range(a.episodes)]
    gen = torch.Generator().manual_seed(0)
    parts = []
    n = a.num_envs
    full = len(specs) - len(specs) % n  # episodes that fill whole rounds of n slots
    bar = tqdm(total=len(specs), desc="rollout episodes", unit="ep")

    def run(env_cfg: EnvConfig, batches: list[list[EpisodeSpec]]) -> None:
        with make_env(env_cfg) as env:
            for batch in batches:
                parts.append(collect(env, policy, batch, mode=a.mode, generator=gen, decode=decode))
                bar.update(len(batch))

    if full:
        run(env_cfg, [specs[s : s + n] for s in range(0, full, n)])
    if full < len(specs):  # the rest in a smaller env: padded slots would count twice
        run(dataclasses.replace(env_cfg, num_envs=len(specs) - full), [specs[full:]])
    bar.close()
    roll = merge_rollouts(parts)
    rows = length_sensitivity(policy, roll, len(tasks))
    lengths = policy.layout.candidate_lengths()
    short, long_ = lengths[0], lengths[-1]
    print(
        f"\n{a.checkpoint}: {a.mode} rollouts on {a.episodes} eval starts per task; KL(p_{long_} ‖ p_L) "
        "in nats per action token on the same latents; flips: greedy tokens that differ between "
        f"lengths {short} and {long_}; swap KL: at length {long_} with the next same-task decision's "
        f"latents; chunk KL: consecutive decisions at length {long_}; ratios: KL L={short} and swap KL "
        "over chunk KL"
    )
    kl_heads = " ".join(f"{'KL L=' + str(L):>9s}" for L in lengths[:-1])
    print(
        f"{'task':26s} {'decisions':>9s} {kl_heads} {'flips':>7s} {'swap KL':>9s} {'chunk KL':>9s} "
        f"{'ratio':>7s} {'swap ratio':>10s}"
    )
    for task, row in zip(tasks, rows, strict=True):
        kls = " ".join(f"{row['kl'][L]:9.4f}" for L in lengths[:-1])
        ratio = row["kl"][short] / row["state_kl"]
        print(
            f"{task:26s} {row['decisions']:9d} {kls} {row['flip'][short]:7.1%} {row['swap_kl']:9.4f} "
            f"{row['state_kl']:9.4f} {ratio:7.2f} {row['swap_kl'] / row['state_kl']:10.2f}"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(dict(zip(tasks, rows, strict=True)), indent=2))


if __name__ == "__main__":
    main()
