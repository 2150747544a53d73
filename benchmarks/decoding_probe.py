"""How much of a checkpoint's greedy success the deterministic decode itself decides.

Why: greedy evaluation (the reference protocol) makes two deterministic choices per action chunk --
the reasoning length (the stop rule: first candidate whose hazard reaches the threshold, else the
argmax) and each action token (the argmax bin). RL optimises the *sampled* policy, so a checkpoint
can be good and its greedy decode bad. This evaluates one checkpoint on the same ``eval`` initial
states under every combination of

* reasoning length: the stop rule, or fixed at each candidate length (``force_latent_len``);
* action decode: ``argmax`` (reference) or ``bin_mean`` (the bin nearest the mean index);

plus the sampled policy at the rollout temperatures as a reference row (with ``--sampled-lengths``
also sampled at each fixed length: whether the reasoning length matters to the policy RL optimises,
per task, which is what LAPO's stop term can learn), and prints success per task with the episodes
counted (95 % Wilson interval on the overall rate).

Every row decodes with the checkpoint's own decode (its ``decode.json``: an RL checkpoint's is its
rollout decode) with ``decode.*`` overrides on top; here the demo RL's rollout decode on its SFT
checkpoint::

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/decoding_probe.py \\
        --checkpoint runs/demo/sft/final --episodes 10 \\
        decode.action_temperature=0.5 decode.stop_scope=episode
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from lastr1.config import ConfigError
from lastr1.envs import EnvConfig, make_env
from lastr1.eval.evaluate import evaluate
from lastr1.eval.stats import wilson_interval
from lastr1.models.decode import DecodeConfig, with_overrides
from lastr1.models.policy import LastR1Policy


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tasks", default="reach-v3,button-press-topdown-v3,drawer-open-v3,drawer-close-v3")
    p.add_argument("--episodes", type=int, default=10, help="per task, on the eval initial states")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--placement-scale", type=float, default=0.3, help="Meta-World ranges x this (demo: 0.3)")
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--action-decodes", default="argmax,bin_mean", help="greedy rows; '' = none")
    p.add_argument("--lengths", default="", help="fixed lengths to probe (default: every stop candidate)")
    p.add_argument(
        "--sampled-lengths", action="store_true", help="also sample at each fixed length, not only the stop"
    )
    p.add_argument("--out", default="", help="write every result to this JSON file")
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
    base = checkpoint_decode(policy, a.overrides)
    lengths = [int(x) for x in a.lengths.split(",")] if a.lengths else policy.layout.candidate_lengths()
    rows: list[tuple[str, str, DecodeConfig]] = []  # (name, act mode, decode)
    for actions in filter(None, a.action_decodes.split(",")):
        rows.append((f"{actions}, stop rule", "greedy", dataclasses.replace(base, greedy_actions=actions)))
        for length in lengths:
            decode = dataclasses.replace(base, greedy_actions=actions, force_latent_len=length)
            rows.append((f"{actions}, length {length}", "greedy", decode))
    sampled = base  # at the decode's rollout temperatures
    temps = f"T {sampled.action_temperature:g}"
    rows.append((f"sampled ({temps} / stop {sampled.stop_temperature:g})", "sample", sampled))
    if a.sampled_lengths:
        for length in lengths:
            rows.append(
                (
                    f"sampled ({temps}), length {length}",
                    "sample",
                    dataclasses.replace(sampled, force_latent_len=length),
                )
            )
    env_cfg = EnvConfig(
        backend="metaworld",
        tasks=a.tasks.split(","),
        num_envs=a.num_envs,
        image_size=policy.config.image_size,
        max_steps=a.max_steps,
        vector="sync",
        placement_scale=a.placement_scale,
    )
    results: dict[str, Any] = {}
    tasks = env_cfg.tasks
    print(f"{a.checkpoint}: {a.episodes} eval episodes per task and row, {len(tasks)} tasks")
    head = f"{'decode':30s} " + " ".join(f"{t[:14]:>14s}" for t in tasks)
    print(head + f" {'overall [95% CI]':>22s} {'latent len':>10s}", flush=True)
    with make_env(env_cfg) as env:
        for name, mode, decode in rows:
            # a bar per row: minutes each
            res = evaluate(policy, env, a.episodes, mode=mode, seed=0, decode=decode)
            results[name] = res
            n, rate = res["episodes"], res["success_rate"]
            lo, hi = wilson_interval(round(rate * n), n)
            cells = " ".join(f"{res['per_task'][t]['success_rate']:14.0%}" for t in tasks)
            print(
                f"{name:30s} {cells} {rate:7.1%} [{lo:4.0%}, {hi:4.0%}] {res['mean_latent_len']:10.2f}",
                flush=True,
            )
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
