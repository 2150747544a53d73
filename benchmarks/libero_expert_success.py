"""Success of the scripted LIBERO pick-and-place expert, per task, from fixed initial states.

Why: ``lastr1 make-demos --env libero`` keeps only successful expert episodes, so how often the
expert succeeds decides how many tries a demo costs, and which tasks can get demos at all.

    MUJOCO_GL=egl PYOPENGL_PLATFORM=egl python benchmarks/libero_expert_success.py \\
        --suite libero_object --episodes 10 --out runs/expert_object.json

Episode ``k`` of a task starts from initial state ``k`` of ``--init-set`` (``eval``: the benchmark's
50 fixed states) and runs until success or the suite's evaluation budget (220/280/300/520 steps, the
same budget a policy gets). Cameras are off (the expert reads the simulator, and rendering costs
~90 ms a frame on CPU) unless ``--videos`` asks for mp4s of the failed episodes. Tasks whose BDDL goal
the expert does not support are listed, not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from lastr1.envs.base import TaskSpec
from lastr1.envs.config import EnvConfig
from lastr1.envs.libero import SUITE_LIMITS
from lastr1.eval.stats import wilson_interval

VIDEO_FPS = 20


def run_episode(
    env: Any, expert: Any, task: TaskSpec, init_set: str, index: int, frames: list | None
) -> dict:
    """One expert episode; returns success, steps and the expert's phase trace ``[[phase, step], ...]``."""
    obs = env.reset(init_set, index)
    expert.reset()
    trace: list[list[Any]] = []
    success, steps = False, 0
    for steps in range(1, task.max_steps + 1):
        action = expert.act(obs)
        phase = expert.expert.phase
        if not trace or trace[-1][0] != phase:
            trace.append([phase, steps - 1])
        if frames is not None:
            frames.append(obs.images[0])
        obs, _, success = env.step(action)
        if success:
            break
    return {"init_index": index, "success": bool(success), "steps": steps, "phases": trace}


def measure_task(task: TaskSpec, args: argparse.Namespace) -> list[dict]:
    from tqdm import tqdm

    from lastr1.envs.experts.libero import make_expert
    from lastr1.envs.libero import LiberoEnv

    cfg = EnvConfig(backend="libero", suite=task.suite, image_size=args.image_size, cache_dir=args.cache_dir)
    env = LiberoEnv(task, cfg)
    env.set_rendering(bool(args.videos))
    episodes = []
    try:
        expert = make_expert(task, env)
        for index in tqdm(
            range(args.episodes), desc=f"{task.index}:{task.name[:40]}", unit="ep", file=sys.stderr
        ):
            frames: list | None = [] if args.videos else None
            record = run_episode(env, expert, task, args.init_set, index, frames)
            episodes.append(record)
            if frames and not record["success"]:
                import imageio.v2 as imageio

                path = Path(args.videos) / f"{task.suite}_{task.index}_{args.init_set}{index}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                imageio.mimwrite(path, frames, fps=VIDEO_FPS, macro_block_size=1)
    finally:
        env.close()
    return episodes


def select_tasks(suite: str, spec: str, cache_dir: str) -> list[tuple[TaskSpec, bool]]:
    """``(task, supported)`` for the ``--tasks`` selection (default: every task of the suite)."""
    from lastr1.envs.experts.libero import bddl_goal, supports
    from lastr1.envs.suites import resolve_tasks

    names = [s.strip() for s in spec.split(",") if s.strip()]
    tasks = resolve_tasks(
        EnvConfig(backend="libero", suite=suite, tasks=names or [str(i) for i in range(10)])
    )
    return [(t, supports(bddl_goal(t, cache_dir))) for t in tasks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--tasks", default="", help="comma-separated ids or names (default: all supported)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (initial states 0..N-1)")
    parser.add_argument("--init-set", choices=("train", "eval"), default="eval")
    parser.add_argument("--image-size", type=int, default=128, help="only matters with --videos")
    parser.add_argument("--videos", default="", help="directory for mp4s of failed episodes (renders: slow)")
    parser.add_argument("--cache-dir", default=".cache/lastr1")
    parser.add_argument("--out", default="", help="JSON file for the per-episode results")
    args = parser.parse_args(argv)

    start = time.time()
    rows: list[dict] = []
    for task, supported in select_tasks(args.suite, args.tasks, args.cache_dir):
        episodes = measure_task(task, args) if supported else []
        rows.append({"task": task.name, "index": task.index, "supported": supported, "episodes": episodes})

    print(
        f"\nscripted LIBERO expert, {args.suite}, {args.init_set} initial states 0..{args.episodes - 1}, "
        f"budget {SUITE_LIMITS[args.suite].eval_max_steps} steps, {time.time() - start:.0f} s"
    )
    print(
        "| id | task | supported | episodes | successes | success % | Wilson 95 % CI | mean steps (successes) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    total_ok = total_n = 0
    for row in rows:
        eps = row["episodes"]
        if not row["supported"]:
            print(f"| {row['index']} | {row['task']} | no | 0 | - | - | - | - |")
            continue
        ok = [e for e in eps if e["success"]]
        lo, hi = wilson_interval(len(ok), len(eps))
        steps = f"{np.mean([e['steps'] for e in ok]):.0f}" if ok else "-"
        print(
            f"| {row['index']} | {row['task']} | yes | {len(eps)} | {len(ok)} | "
            f"{100 * len(ok) / max(len(eps), 1):.0f} | [{100 * lo:.0f}, {100 * hi:.0f}] | {steps} |"
        )
        total_ok, total_n = total_ok + len(ok), total_n + len(eps)
    if total_n:
        lo, hi = wilson_interval(total_ok, total_n)
        print(
            f"| all | supported tasks | | {total_n} | {total_ok} | {100 * total_ok / total_n:.1f} | "
            f"[{100 * lo:.0f}, {100 * hi:.0f}] | |"
        )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"suite": args.suite, "init_set": args.init_set, "episodes_per_task": args.episodes}
        out.write_text(json.dumps({**meta, "tasks": rows}, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
