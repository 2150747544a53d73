"""Rollout collector throughput as a ratio to the raw vectorised environment, in the same run.

Why: the collector adds a batched ``policy.act`` per action chunk, the bookkeeping of every
decision, and idle slots while the last episodes of a round finish. This measures how much of the
simulator's throughput survives that (target: >= 0.8).

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/rollout_throughput.py
    ... --checkpoint runs/demo-default/sft/final --vector async --rounds 3
    ... --checkpoint runs/demo-default/sft/final --vector async --workers 1 --num-envs 16 --pipeline 1,2

Three rows, all the same vector env and starts (max_steps each), env steps of active slots only.
Random actions rarely succeed, so slots seldom idle; the two raw rows draw different random actions,
so their step counts can differ by the few episodes that do succeed (1600 vs 1508 on the demo tasks):

* ``raw step``: ``env.step`` with uniform random actions, one call (and one render) per env step;
* ``raw chunk``: ``env.step_chunk`` with random chunks of the policy's chunk size, rendering only
  after each chunk as the collector does. The collector's ratio (the target) is against this row;
* ``collect pN``: ``lastr1.rollout.collect(pipeline=N)`` with the policy sampling (an untrained
  default-size policy unless ``--checkpoint`` is given). ``p1`` is the plain act -> step loop; with
  N > 1 the slots form N groups that take turns, so the policy decides for one group while async
  workers simulate the others. ``--workers`` (async) puts the slots in fewer processes, which
  leaves cores for the policy: on 2 cores, ``--workers 1 --pipeline 2`` overlaps one core of
  simulation with one of policy.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from lastr1.envs import EnvConfig, EpisodeSpec, make_env
from lastr1.models.policy import LastR1Policy, PolicyConfig
from lastr1.rollout.collector import collect


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="metaworld")
    p.add_argument("--tasks", default="reach-v3,drawer-open-v3")
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--vector", default="async", choices=["sync", "async"])
    p.add_argument("--workers", type=int, default=0, help="async subprocesses (0 = one per env)")
    p.add_argument("--pipeline", default="1", help="comma list of collect pipeline groups, one row each")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--rounds", type=int, default=2, help="rounds of num_envs episodes per measurement")
    p.add_argument("--checkpoint", default="", help="policy to roll out (default: untrained)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the policy (the env waits during act, so with sync env a second core is idle)",
    )
    return p.parse_args()


def _specs(env, rnd: int) -> list[EpisodeSpec]:
    n = env.num_envs
    return [EpisodeSpec((rnd * n + i) % len(env.tasks), "train", rnd * n + i) for i in range(n)]


def _raw(env, rounds: int, rng: np.random.Generator, chunk: int) -> tuple[int, float]:
    """Env steps and seconds of random-action episodes: ``chunk`` 0 = one ``step`` per action."""
    steps, seconds = 0, 0.0
    for rnd in range(rounds):
        t0 = time.perf_counter()
        env.reset(_specs(env, rnd))
        while True:
            if chunk:
                res = env.step_chunk(rng.uniform(-1, 1, size=(env.num_envs, chunk, 7)))
                steps += int(res.info["chunk_steps"].sum())
            else:
                res = env.step(rng.uniform(-1, 1, size=(env.num_envs, 7)))
                steps += int(res.info["active"].sum())
            if (res.terminated | res.truncated).all():
                break
        seconds += time.perf_counter() - t0
    return steps, seconds


def _collect(env, policy, rounds: int, pipeline: int) -> tuple[int, float, float]:
    steps, seconds, policy_s = 0, 0.0, 0.0
    gen = torch.Generator().manual_seed(0)
    for rnd in range(rounds):
        roll = collect(env, policy, _specs(env, rnd), mode="sample", generator=gen, pipeline=pipeline)
        steps += int(roll.env_steps.sum())
        seconds += roll.seconds["total"]
        policy_s += roll.seconds["policy"]
    return steps, seconds, policy_s


def main() -> None:
    a = _args()
    torch.set_num_threads(a.threads)
    cfg = EnvConfig(
        backend=a.backend,
        tasks=a.tasks.split(","),
        num_envs=a.num_envs,
        vector=a.vector,
        workers=a.workers,
        image_size=a.image_size,
        max_steps=a.max_steps,
    )
    if a.checkpoint:
        policy = LastR1Policy.from_pretrained(a.checkpoint)
    else:
        policy = LastR1Policy(PolicyConfig(image_size=a.image_size))
    policy.eval()
    chunk = policy.config.chunk
    pipelines = [int(x) for x in a.pipeline.split(",")]
    with make_env(cfg) as env:
        _raw(env, 1, np.random.default_rng(1), 0)  # warm-up: worker start, first renders
        step_steps, step_s = _raw(env, a.rounds, np.random.default_rng(0), 0)
        raw_steps, raw_s = _raw(env, a.rounds, np.random.default_rng(0), chunk)
        collected = {p: _collect(env, policy, a.rounds, p) for p in pipelines}
    raw_rate = raw_steps / raw_s
    workers = f", {a.workers or a.num_envs} worker process(es)" if a.vector == "async" else ""
    print(
        f"\n{a.backend} {a.vector} x{a.num_envs}{workers}, {a.image_size}px, tasks {a.tasks}, {a.rounds} rounds,"
        f" policy on {a.threads} torch thread(s)"
    )
    print(f"ratios against `raw chunk` (chunks of {chunk}, rendered once per chunk)")
    print(f"{'mode':11s} {'env steps':>9s} {'steps/s':>8s} {'ratio':>6s} {'policy share':>12s}")
    print(
        f"{'raw step':11s} {step_steps:9d} {step_steps / step_s:8.1f} {step_steps / step_s / raw_rate:6.2f}"
        f" {'-':>12s}"
    )
    print(f"{'raw chunk':11s} {raw_steps:9d} {raw_rate:8.1f} {1.0:6.2f} {'-':>12s}")
    for p, (col_steps, col_s, pol_s) in collected.items():
        col_rate = col_steps / col_s
        print(
            f"{'collect p' + str(p):11s} {col_steps:9d} {col_rate:8.1f} {col_rate / raw_rate:6.2f}"
            f" {pol_s / col_s:12.1%}"
        )


if __name__ == "__main__":
    main()
