"""LAPO vs action-only baselines from the same SFT checkpoint and the same env-step budget.

Why: "LAPO beats action-only RL" is the paper's central claim; here it is a measured gap over
seeds, with the episodes counted, never one lucky run. Every algorithm starts from the same SFT
checkpoint, collects the same number of rollouts per iteration for the same number of iterations
(so the same env-step budget, give or take early successes), and is evaluated greedily on the same
``eval`` initial states. The "before" number is that checkpoint's evaluation: greedy once, sampled
once per seed with the run's sampling seed, so each Δ is a paired difference.

The RL setting is a preset's ``rl`` section (default ``preset=demo``) plus ``key=value``
overrides, read by the same loader as ``lastr1 rl``; the flags are only about the benchmark::

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/lapo_vs_baselines.py \\
        --checkpoint runs/demo/sft/final --seeds 0,1,2 --jobs 2 preset=demo env.vector=sync

The stop's LAPO-only options (``algo.stop.kl_coef``, ``.advantage``, ``.context``) reach LAPO only;
the baselines keep the rest of the setting. Prints a table (success before/after with a 95 %
interval over seeds, latent length before/after, env steps, wall time), each task's reasoning length
in the training rollouts, and each task's stop distribution on the first observations of its
``eval`` starts (expected sampled length before and after, and how far it sits from the other
tasks'). Every number goes to ``<out>/results.json``; the runs themselves stay in
``<out>/<algo>/seed<k>`` (metrics.jsonl, evals, checkpoints) for the learning-curve plot.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from tqdm import tqdm

from lastr1.algos import get_algorithm
from lastr1.algos.base import STOP_TRAINING_OPTIONS
from lastr1.config import load_config, split_preset
from lastr1.envs import make_env
from lastr1.envs.base import Observation
from lastr1.eval.evaluate import eval_files, evaluate, save_eval
from lastr1.eval.length_bandit import first_observations, length_summary
from lastr1.eval.report import plot_learning_curve, plot_task_lengths, task_length_curves
from lastr1.eval.stats import t_interval
from lastr1.models.policy import LastR1Policy
from lastr1.train.metrics import read_metrics
from lastr1.train.rl import RLConfig, load_policy, train_rl

ALGOS = ("lapo", "ppo_action", "grpo_action")
# greedy: the reference protocol; sample: the stochastic policy RL optimises, at the rollout decode
MODES = ("greedy", "sample")
DEFAULT_PRESET = "demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="SFT checkpoint every algorithm starts from")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--algos", default=",".join(ALGOS))
    p.add_argument(
        "--stop-probe",
        type=int,
        default=10,
        help="eval starts per task whose first observation measures the stop distribution (0 = skip)",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel worker processes (use env.vector=sync with > 1)"
    )
    p.add_argument("--out", default="runs/lapo_vs_baselines")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=f"preset=NAME (default {DEFAULT_PRESET}) and RL config overrides, as for `lastr1 rl`",
    )
    a = p.parse_args(argv)
    preset, a.overrides = split_preset(a.overrides)
    a.preset = preset or DEFAULT_PRESET
    return a


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    return {
        "success": res["success_rate"],
        "latent_len": res["mean_latent_len"],
        "episodes": res["episodes"],
        "per_task": {k: v["success_rate"] for k, v in res["per_task"].items()},
        "latent_len_per_task": {k: v["mean_latent_len"] for k, v in res["per_task"].items()},
        # each episode weighs once (older eval files lack it)
        "episode_latent_len_per_task": {
            k: v.get("mean_episode_latent_len") for k, v in res["per_task"].items()
        },
    }


def _stop_lengths(policy_dir: Path | str, cfg: RLConfig, probe: Observation | None) -> dict[str, Any] | None:
    """Per task, the expected sampled reasoning length (at the rollout stop temperature) and the greedy
    rule's length on ``probe``'s first observations: the stop itself, without episode sampling noise."""
    if probe is None:
        return None
    policy = load_policy(policy_dir, cfg)
    task = torch.from_numpy(probe.task)
    return length_summary(policy, policy.encode_obs(probe), task, int(task.max()) + 1)


def run_config(a: argparse.Namespace, algo: str, seed: int, progress: bool) -> RLConfig:
    """The RL config of one (algorithm, seed) run: the preset's ``rl`` section and the overrides,
    the same for every algorithm except the stop's LAPO-only options, which the baselines drop."""
    run = Path(a.out) / algo / f"seed{seed}"
    overrides = list(a.overrides)
    if not get_algorithm(algo).trains_reasoning:
        lapo_only = tuple(f"algo.stop.{name}" for name in STOP_TRAINING_OPTIONS)
        overrides = [o for o in overrides if not o.split("=", 1)[0].strip().startswith(lapo_only)]
    return load_config(
        RLConfig,
        overrides=[
            *overrides,
            f"algo.name={algo}",
            f"checkpoint={a.checkpoint}",
            f"out={run}",
            f"seed={seed}",
            "eval_at_start=false",  # the benchmark evaluates the shared checkpoint once (_befores)
            "eval_sampled=true",
            "eval_videos=false",
            f"progress={str(progress).lower()}",  # a bar per run when runs are sequential
        ],
        preset=a.preset,
        section="rl",
    )


def _run(
    a: argparse.Namespace, algo: str, seed: int, progress: bool, probe: Observation | None
) -> dict[str, Any]:
    """One (algorithm, seed) run from the shared checkpoint; its greedy and sampled results."""
    cfg = run_config(a, algo, seed, progress)
    run = Path(cfg.out)
    state = train_rl(cfg)  # a finished or killed run resumes instead of being redone
    logged = read_metrics(run / "metrics.jsonl")
    # the run's own logged seconds, not this call's: a resumed (finished) run returns at once
    wall = sum(r.get("sec_collect", 0.0) + r.get("sec_update", 0.0) + r.get("sec_eval", 0.0) for r in logged)
    rows = [r for r in logged if "train_success" in r]
    stop = _stop_lengths(run / "final", cfg, probe)
    records = {}
    for mode in MODES:
        after = json.loads(eval_files(run, mode)[-1].read_text())
        records[mode] = {
            "seed": seed,
            "env_steps": state["env_steps"],
            "wall_s": wall,
            "train_latent_len_first": rows[0].get("latent_len_mean") if rows else None,
            "train_latent_len_last": rows[-1].get("latent_len_mean") if rows else None,
            "stop": stop,
            **_summary(after),
        }
    return records


def main() -> None:
    a = parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(k) for k in a.seeds.split(",")]
    algos = a.algos.split(",")
    configs = {(algo, k): run_config(a, algo, k, False) for algo in algos for k in seeds}  # checked up front
    base = configs[algos[0], seeds[0]]
    env_cfg = base.env
    print(
        f"preset={a.preset} {' '.join(a.overrides)}: {base.iterations} iterations x {base.rollouts_per_iter} "
        f"rollouts, critic {'attached to' if base.value_trains_backbone else 'detached from'} the backbone, "
        f"{base.algo.action_ratio} action ratio, decode {base.decode}"
    )
    befores = _befores(base, a.checkpoint, out, seeds)
    probe = first_observations(env_cfg, "eval", a.stop_probe) if a.stop_probe > 0 else None
    stop_before = _stop_lengths(a.checkpoint, base, probe)
    for mode, per_seed in befores.items():
        rates = ", ".join(f"{per_seed[k]['success_rate']:.1%}" for k in seeds)
        print(
            f"SFT checkpoint, {mode}: {rates} (seeds {a.seeds}) over {per_seed[seeds[0]]['episodes']} eval episodes"
        )

    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    jobs = list(configs)
    if a.jobs > 1:  # one run per worker process; each run is single-threaded (torch and its env)
        ctx = multiprocessing.get_context("spawn")  # rendering envs hang after fork (MACHINE_FACTS)
        with ProcessPoolExecutor(a.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run, a, algo, seed, False, probe) for algo, seed in jobs]
            done = [f.result() for f in tqdm(futures, desc="runs", unit="run")]
    else:
        done = [_run(a, algo, seed, True, probe) for algo, seed in jobs]
    for (algo, _), records in zip(jobs, done, strict=True):
        for mode, record in records.items():
            record["before"] = befores[mode][record["seed"]]["success_rate"]
            results.setdefault(mode, {}).setdefault(algo, []).append(record)
            print(
                f"{algo:12s} seed {record['seed']} {mode:6s}: {record['before']:.1%} -> "
                f"{record['success']:.1%} ({record['episodes']} episodes, {record['env_steps']} env "
                f"steps, {record['wall_s']:.0f} s)",
                flush=True,
            )

    summary = {
        "before": {m: {str(k): _summary(b) for k, b in per_seed.items()} for m, per_seed in befores.items()},
        "stop_before": stop_before,
        "setting": {"preset": a.preset, "overrides": a.overrides},
        "runs": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot_learning_curve(
        {f"{algo}/seed{seeds[0]}": out / algo / f"seed{seeds[0]}" for algo in results["greedy"]},
        out / "learning_curve.png",
    )
    runs = {algo: [out / algo / f"seed{k}" for k in seeds] for algo in results["greedy"]}
    plot_task_lengths(runs, out / "latent_length_per_task.png")
    for mode in MODES:
        print(f"\n== {mode} evaluation ==")
        _print_table(list(befores[mode].values()), results[mode], mode)
    _print_lengths(runs)
    if stop_before is not None:
        _print_stop(stop_before, results["greedy"], env_cfg.tasks, a.stop_probe)


def _befores(
    cfg: RLConfig, checkpoint: str, out: Path, seeds: list[int]
) -> dict[str, dict[int, dict[str, Any]]]:
    """The SFT checkpoint's evaluations: greedy once (deterministic), sampled once per run seed.

    A run with seed k draws its sampled evaluation from a generator seeded k, so its "before" is the
    SFT policy sampled with the same seed: Δ is then a paired difference.
    """
    paths = {("greedy", k): out / "eval_before_greedy.json" for k in seeds}
    paths |= {("sample", k): out / f"eval_before_sample_seed{k}.json" for k in seeds}
    missing = {path: key for key, path in paths.items() if not path.is_file()}  # one entry per file
    if missing:
        # the run's decode, exactly as RL's own evaluations
        policy = LastR1Policy.from_pretrained(checkpoint, decode=cfg.decode).eval()
        with make_env(cfg.env) as env:
            for path, (mode, k) in missing.items():
                save_eval(evaluate(policy, env, cfg.eval_episodes_per_task, mode=mode, seed=k), path)
    befores: dict[str, dict[int, dict[str, Any]]] = {}
    for (mode, k), path in paths.items():
        befores.setdefault(mode, {})[k] = json.loads(path.read_text())
    return befores


def _print_table(befores: list[dict[str, Any]], results: dict[str, list[dict[str, Any]]], mode: str) -> None:
    n_eval = befores[0]["episodes"]
    before_rate = sum(b["success_rate"] for b in befores) / len(befores)
    before_len = sum(b["mean_latent_len"] for b in befores) / len(befores)
    print(
        f"\nfrom one SFT checkpoint; {mode} eval on {n_eval} eval episodes per run; before: the SFT policy "
        f"({'mean over the same sampling seeds' if mode == 'sample' else 'deterministic'}); mean [95% "
        "Student-t CI] over seeds; Δ paired per seed (wall s: this invocation's, near 0 for resumed runs)"
    )
    head = f"{'algo':12s} {'seeds':>5s} {'before':>7s} {'after':>22s} {'Δ paired':>22s} {'latent len':>13s} "
    head += f"{'env steps':>10s} {'wall s':>7s}"
    print(head)
    for algo, runs in results.items():
        mean, half = t_interval([r["success"] for r in runs])
        delta, d_half = t_interval([r["success"] - r["before"] for r in runs])
        lat = sum(r["latent_len"] for r in runs) / len(runs)
        steps = sum(r["env_steps"] for r in runs) / len(runs)
        wall = sum(r["wall_s"] for r in runs) / len(runs)
        print(
            f"{algo:12s} {len(runs):5d} {before_rate:7.1%} "
            f"{mean:8.1%} {_bracket(mean, half, '5.1%')} "
            f"{delta:+7.1%} {_bracket(delta, d_half, '+5.1%')} "
            f"{before_len:5.2f} → {lat:4.2f} {steps:10.0f} {wall:7.0f}"
        )
    tasks = list(befores[0]["per_task"])
    print("\nper task (mean over seeds)")
    print(f"{'algo':12s} " + " ".join(f"{t[:18]:>18s}" for t in tasks))
    sft = [sum(b["per_task"][t]["success_rate"] for b in befores) / len(befores) for t in tasks]
    print(f"{'SFT':12s} " + " ".join(f"{c:18.1%}" for c in sft))
    for algo, runs in results.items():
        cells = [sum(r["per_task"][t] for r in runs) / len(runs) for t in tasks]
        print(f"{algo:12s} " + " ".join(f"{c:18.1%}" for c in cells))


def _bracket(centre: float, half: float, spec: str) -> str:
    """``[lo, hi]`` of a 95 % interval, or a same-width note when one seed gives no interval."""
    cell = f"[{centre - half:{spec}}, {centre + half:{spec}}]"
    return f"{'[1 seed: no CI]':>{len(cell)}s}" if math.isnan(half) else cell


def _print_lengths(runs: dict[str, list[Path]]) -> None:
    """Whether the reasoning length adapts, and per task: each task's mean sampled length in the
    training rollouts at the first and last iteration, mean [95 % CI] over seeds, and the change."""
    print(
        "\nreasoning length in the training rollouts per task: first → last iteration, mean over seeds; "
        "change paired per seed [95% CI]"
    )
    for algo, dirs in runs.items():
        for task, curves in task_length_curves(dirs).items():
            first = [c[0] for c in curves]
            last = [c[-1] for c in curves]
            change, half = t_interval([b - a for a, b in zip(first, last, strict=True)])
            print(
                f"{algo:12s} {task:26s} {sum(first) / len(first):5.2f} → {sum(last) / len(last):5.2f}  "
                f"{change:+5.2f} {_bracket(change, half, '+5.2f')}  ({len(curves)} seeds)"
            )


def _print_stop(
    before: dict[str, Any], results: dict[str, list[dict[str, Any]]], tasks: list[str], n: int
) -> None:
    """Per task: the stop's expected sampled length before → after, the change, and the task's length
    after RL minus the mean of the other tasks' (≠ 0: the stop gives this task its own length)."""
    print(
        f"\nthe stop on the first observations of {n} eval starts per task: expected sampled length "
        "(stop T 1.6) before → after, change and after − the other tasks' mean, paired per seed [95% CI]; "
        "greedy rule's length after"
    )
    for algo, runs in results.items():
        after = [r["stop"]["expected_len"] for r in runs]
        for t, task in enumerate(tasks):
            change, c_half = t_interval([x[t] - before["expected_len"][t] for x in after])
            others = [(sum(x) - x[t]) / (len(x) - 1) for x in after] if len(tasks) > 1 else []
            apart, a_half = t_interval([x[t] - o for x, o in zip(after, others, strict=False)] or [0.0])
            greedy = sum(r["stop"]["greedy_len"][t] for r in runs) / len(runs)
            print(
                f"{algo:12s} {task:26s} {before['expected_len'][t]:5.2f} → "
                f"{sum(x[t] for x in after) / len(after):5.2f}  change {change:+5.2f} "
                f"{_bracket(change, c_half, '+5.2f')}  apart {apart:+5.2f} {_bracket(apart, a_half, '+5.2f')}"
                f"  greedy {greedy:4.2f}  ({len(runs)} seeds)"
            )


if __name__ == "__main__":
    main()
