"""Rendered environment steps per second: one env vs 2 vectorised envs (in-process vs subprocesses),
and for LIBERO what rendering only the decision frames buys.

Why: rollouts dominate CPU RL time, so this tells which ``env.vector`` mode to use at which image
size on this machine. Every number is measured in the same run, and each vector mode is reported as
a ratio to the single-env baseline of the same backend and image size.

    MUJOCO_GL=egl PYOPENGL_PLATFORM=egl PYTHONPATH=src python benchmarks/env_throughput.py
    ... --sizes 64,128 --steps 200 --backends metaworld
    ... --backends libero --libero-sizes 64,128,224
    ... --backends libero-render --libero-sizes 64,128 --libero-steps 48 --rounds 2

Counts are env steps (one slot stepping once = one step) with uniform random actions, agent view only;
construction, the first reset and (for ``async``) process start-up are excluded.

``libero-render`` (one LIBERO env, agent + wrist view unless ``--libero-views 1``) steps the same
random actions from the same start three ways, interleaved over ``--rounds`` so load on a shared
machine hits all three alike: ``every step`` renders after every step (what LIBERO did before
decision-frame rendering), ``decision frames`` renders only after the last step of each
``--chunk``-step action chunk (what the rollout collector asks for), ``physics only`` renders
nothing (the limit). Ratios are against ``every step``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from lastr1.envs import EnvConfig, EpisodeSpec, make_env, resolve_tasks

DEFAULT_TASK = {"metaworld": "pick-place-v3", "libero": ""}


def _single_rate(backend: str, cfg: EnvConfig, steps: int) -> float:
    module = importlib.import_module(f"lastr1.envs.{backend}")
    task = resolve_tasks(cfg)[0]
    env = module.make_single_env(task, cfg)
    try:
        env.reset("train", 0)
        actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, 7))
        start = time.perf_counter()
        for a in actions:
            env.step(a)
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def _vector_rate(cfg: EnvConfig, steps: int) -> float:
    env = make_env(cfg)
    try:
        env.reset([EpisodeSpec(task=0, init_index=i) for i in range(cfg.num_envs)])
        actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, cfg.num_envs, 7))
        start = time.perf_counter()
        for a in actions:
            res = env.step(a)
            if res.terminated.any() or res.truncated.any():
                raise RuntimeError("an episode ended during the benchmark; raise max_steps")
        return steps * cfg.num_envs / (time.perf_counter() - start)
    finally:
        env.close()


def bench_backend(backend: str, task: str, sizes: list[int], steps: int, num_envs: int) -> list[tuple]:
    task = task or resolve_tasks(EnvConfig(backend=backend))[0].name  # type: ignore[arg-type]
    rows = []
    for size in sizes:
        base = dict(backend=backend, tasks=[task], image_size=size, max_steps=steps + 10)
        single = _single_rate(backend, EnvConfig(**base, num_envs=1), steps)  # type: ignore[arg-type]
        rows.append((backend, size, "single", 1, single, 1.0))
        print(f"  {backend} {size}px single: {single:.1f} steps/s", file=sys.stderr, flush=True)
        for mode in ("sync", "async"):
            cfg = EnvConfig(**base, num_envs=num_envs, vector=mode)  # type: ignore[arg-type]
            rate = _vector_rate(cfg, steps)
            rows.append((backend, size, mode, num_envs, rate, rate / single))
            print(f"  {backend} {size}px {mode} x{num_envs}: {rate:.1f} steps/s", file=sys.stderr, flush=True)
    return rows


RENDER_MODES = ("every step", "decision frames", "physics only")


def bench_libero_render(
    task: str, sizes: list[int], steps: int, chunk: int, views: int, rounds: int
) -> list[tuple]:
    """Steps/s of one LIBERO env per rendering mode (module docstring), rows (size, mode, rate, ratio)."""
    from lastr1.envs import libero

    rows = []
    for size in sizes:
        cfg = EnvConfig(
            backend="libero", tasks=[task] if task else [], image_size=size, wrist_view=views == 2
        )
        env = libero.make_single_env(resolve_tasks(cfg)[0], cfg)
        seconds = dict.fromkeys(RENDER_MODES, 0.0)
        try:
            actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, 7))
            for _ in range(rounds):
                for mode in RENDER_MODES:
                    env.reset("train", 0)
                    start = time.perf_counter()
                    for k, a in enumerate(actions):
                        render = mode == "every step" or (
                            mode == "decision frames" and k % chunk == chunk - 1
                        )
                        env.step(a, render=render)
                    seconds[mode] += time.perf_counter() - start
        finally:
            env.close()
        base = rounds * steps / seconds["every step"]
        for mode in RENDER_MODES:
            rate = rounds * steps / seconds[mode]
            rows.append((size, mode, rate, rate / base))
            print(f"  libero {size}px {mode}: {rate:.1f} steps/s", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="64,128,224", help="comma-separated square image sizes")
    parser.add_argument("--steps", type=int, default=150, help="Meta-World steps per measurement")
    parser.add_argument("--libero-steps", type=int, default=20, help="LIBERO steps per measurement (~10/s)")
    parser.add_argument(
        "--libero-sizes",
        default="128",
        help="LIBERO image sizes (building a LIBERO env takes seconds, so the default keeps one size)",
    )
    parser.add_argument("--num-envs", type=int, default=2, help="slots of the vectorised runs")
    parser.add_argument(
        "--backends", default="metaworld,libero,libero-render", help="comma-separated backends"
    )
    parser.add_argument("--metaworld-task", default=DEFAULT_TASK["metaworld"])
    parser.add_argument("--libero-task", default="", help="LIBERO task name/id (default: first default task)")
    parser.add_argument(
        "--chunk", type=int, default=8, help="libero-render: steps per decision (action chunk)"
    )
    parser.add_argument("--libero-views", type=int, default=2, choices=(1, 2), help="libero-render: cameras")
    parser.add_argument("--rounds", type=int, default=2, help="libero-render: interleaved rounds per mode")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    libero_sizes = [int(s) for s in args.libero_sizes.split(",") if s.strip()]
    rows: list[tuple] = []
    render_rows: list[tuple] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend in ("libero", "libero-render"):
            try:
                importlib.import_module("lastr1.envs.libero")
            except ImportError as exc:
                print(f"{backend}: skipped (lastr1.envs.libero does not import: {exc})")
                continue
        if backend == "libero":
            rows += bench_backend("libero", args.libero_task, libero_sizes, args.libero_steps, args.num_envs)
        elif backend == "libero-render":
            render_rows += bench_libero_render(
                args.libero_task, libero_sizes, args.libero_steps, args.chunk, args.libero_views, args.rounds
            )
        elif backend == "metaworld":
            rows += bench_backend("metaworld", args.metaworld_task, sizes, args.steps, args.num_envs)
        else:
            parser.error(
                f"--backends: unknown backend {backend!r}; use metaworld, libero and/or libero-render"
            )
    if rows:
        print(f"\nrendered env steps/s (agent view, random actions, {os.cpu_count()} CPUs)")
        print(f"{'backend':<10} {'size':>5} {'mode':<7} {'envs':>4} {'steps/s':>9} {'vs single':>9}")
        for backend, size, mode, n, rate, ratio in rows:
            print(f"{backend:<10} {size:>5} {mode:<7} {n:>4} {rate:>9.1f} {ratio:>8.2f}x")
    if render_rows:
        print(
            f"\nLIBERO steps/s by rendering ({args.libero_views} camera(s), chunk {args.chunk}, "
            f"{args.rounds} x {args.libero_steps} steps per mode, one env, {os.cpu_count()} CPUs)"
        )
        print(f"{'size':>5} {'rendering':<16} {'steps/s':>8} {'vs every step':>13}")
        for size, mode, rate, ratio in render_rows:
            print(f"{size:>5} {mode:<16} {rate:>8.1f} {ratio:>12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
