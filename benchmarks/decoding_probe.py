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

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/decoding_probe.py \\
        --checkpoint runs/demo-default/sft/final --episodes 10
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

from lastr1.envs import EnvConfig, make_env
from lastr1.eval.evaluate import evaluate
from lastr1.eval.stats import wilson_interval
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
    p.add_argument("--action-temperature", type=float, default=1.0, help="sampled row (demo RL: 1.0)")
    p.add_argument("--stop-temperature", type=float, default=1.6, help="sampled row (reference: 1.6)")
    p.add_argument(
        "--sampled-lengths", action="store_true", help="also sample at each fixed length, not only the stop"
    )
    p.add_argument("--stop-scope", default="", help="PolicyConfig.stop_scope; '' = the checkpoint's")
    p.add_argument("--out", default="", help="write every result to this JSON file")
    return p.parse_args()


def main() -> None:
    a = _args()
    torch.set_num_threads(1)
    policy = LastR1Policy.from_pretrained(a.checkpoint).eval()
    base = policy.config
    if a.stop_scope:
        base = dataclasses.replace(base, stop_scope=a.stop_scope)
    lengths = [int(x) for x in a.lengths.split(",")] if a.lengths else policy.layout.candidate_lengths()
    rows: list[tuple[str, str, Any]] = []  # (name, act mode, config)
    for decode in filter(None, a.action_decodes.split(",")):
        rows.append((f"{decode}, stop rule", "greedy", dataclasses.replace(base, greedy_actions=decode)))
        for length in lengths:
            cfg = dataclasses.replace(base, greedy_actions=decode, force_latent_len=length)
            rows.append((f"{decode}, length {length}", "greedy", cfg))
    sampled = dataclasses.replace(
        base, action_temperature=a.action_temperature, stop_temperature=a.stop_temperature
    )
    temps = f"T {a.action_temperature:g}"
    rows.append((f"sampled ({temps} / stop {a.stop_temperature:g})", "sample", sampled))
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
        image_size=base.image_size,
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
        for name, mode, cfg in rows:
            policy.config = cfg
            res = evaluate(policy, env, a.episodes, mode=mode, seed=0)  # a bar per row: minutes each
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
