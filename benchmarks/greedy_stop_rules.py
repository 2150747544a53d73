"""Greedy stop rules after RL: does a task lose its success because the greedy length moved?

Why: RL updates the trunk the stop head reads, so a near-tie in the stop categorical can flip and the
greedy reasoning length jump across the whole range (e.g. 5 -> 2), to a length whose actions the
policy was never good at; the greedy success of that task collapses although nothing learned to
prefer the new length. This reads finished ``lapo_vs_baselines.py`` runs (their SFT checkpoint and
every run's final checkpoint, with each run's own decode) under each greedy stop rule
(``decode.greedy_stop``: ``threshold``, the reference's hazard rule, and ``mean``, the candidate
nearest the expected length):

* the *probe* (cheap, forward passes only): on the first observation of ``--probe`` eval starts per
  task, how often the greedy length *jumps* (moves by at least half the candidate range) between the
  SFT checkpoint and the run's final one. For the action-only algorithms, which never train the
  stop, every jump is drift;
* with ``--episodes N``, greedy success of both checkpoints under each rule, and the (run, task)
  pairs that lost more than ``--loss`` points against the SFT checkpoint decoded with the same rule::

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/greedy_stop_rules.py \\
        --bench runs/bench_untuned --bench runs/bench_untuned_base [--episodes 20]

Evaluations are cached (``<bench>/greedy_rule_<rule>_sft.json``, ``<run>/evals/greedy_rule_<rule>.json``;
the ``threshold`` rule reuses the benchmark's own final and "before" evaluations when their decode
is the run's), so a rerun only prints. Every number goes to ``<bench>/greedy_stop_rules.json``.
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
os.environ.setdefault("OMP_NUM_THREADS", "1")  # several torch threads crawl when another job holds a core

import torch

from lastr1.config import ConfigError, load_config
from lastr1.envs import make_env
from lastr1.envs.base import Observation
from lastr1.eval.evaluate import evaluate, save_eval
from lastr1.eval.length_bandit import first_observations
from lastr1.eval.stats import t_interval
from lastr1.models.latent import choose_stop
from lastr1.models.policy import LastR1Policy
from lastr1.train.rl import RLConfig, load_policy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", action="append", required=True, help="a lapo_vs_baselines.py --out folder")
    p.add_argument("--rules", default="threshold,mean")
    p.add_argument("--probe", type=int, default=20, help="eval starts per task for the length probe")
    p.add_argument(
        "--episodes", type=int, default=0, help="eval episodes per task for success (0 = probe only)"
    )
    p.add_argument("--loss", type=float, default=10.0, help="points a task may lose before it counts")
    return p.parse_args(argv)


def _runs(bench: Path) -> list[Path]:
    runs = sorted(p.parent.parent for p in bench.glob("*/seed*/final/model.safetensors"))
    if not runs:
        raise SystemExit(f"--bench {bench}: no finished runs (<algo>/seed<k>/final) in it")
    return runs


def _greedy_lengths(policy: LastR1Policy, probe: Observation, rule: str) -> torch.Tensor:
    """The greedy reasoning length each probe observation gets under ``rule``."""
    with torch.no_grad():
        logits = policy.act(probe, mode="greedy").stop_logits
    index, _ = choose_stop(logits, "greedy", 1.0, policy.decode.eval_stop_threshold, greedy_rule=rule)
    return torch.tensor(policy.layout.candidate_lengths())[index]


def _evaluate(
    checkpoint: str | Path, cfg: RLConfig, rule: str, episodes: int, cache: Path, reuse: Path | None
) -> dict[str, Any]:
    """Greedy evaluation of ``checkpoint`` with the run's decode and ``rule``; cached in ``cache``."""
    for path in ([reuse] if rule == "threshold" and reuse is not None else []) + [cache]:
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved is not None and saved["episodes"] == episodes * len(cfg.env.tasks):
            return saved
    policy = load_policy(checkpoint, cfg)
    decode = dataclasses.replace(cfg.decode, greedy_stop=rule)
    with make_env(cfg.env) as env:
        result = evaluate(policy, env, episodes, mode="greedy", decode=decode)
    save_eval(result, cache)
    return result


def _rates(result: dict[str, Any]) -> dict[str, float]:
    return {task: v["success_rate"] for task, v in result["per_task"].items()}


def measure(bench: Path, rules: list[str], probe_n: int, episodes: int, loss: float) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {rule: [] for rule in rules}
    probe: Observation | None = None
    sft_policies: dict[tuple[str, Any, bool], LastR1Policy] = {}
    for run in _runs(bench):
        try:
            cfg = load_config(RLConfig, run / "config.yaml")
        except ConfigError as exc:  # a run of an older lastr1, whose settings this one cannot read
            print(f"skipping {run}: its config.yaml does not load ({exc})")
            continue
        if probe is None:
            probe = first_observations(cfg.env, "eval", probe_n)
            task = torch.from_numpy(probe.task)
        key = (cfg.checkpoint, cfg.decode, cfg.algo.stop.context)  # every run of a bench shares its SFT
        if key not in sft_policies:
            sft_policies[key] = load_policy(cfg.checkpoint, cfg)
        sft, final = sft_policies[key], load_policy(run / "final", cfg)
        span = max(sft.layout.candidate_lengths()) - min(sft.layout.candidate_lengths())
        for rule in rules:
            before, after = _greedy_lengths(sft, probe, rule), _greedy_lengths(final, probe, rule)
            jumps = (after - before).abs() * 2 >= span
            row: dict[str, Any] = {
                "run": str(run.relative_to(bench)),
                "probe_starts": len(task),
                "jump_frac": float(jumps.float().mean()),
                "task_jump_frac": {
                    t: float(jumps[task == i].float().mean()) for i, t in enumerate(cfg.env.tasks)
                },
                "task_len": {
                    t: (float(before[task == i].float().mean()), float(after[task == i].float().mean()))
                    for i, t in enumerate(cfg.env.tasks)
                },
            }
            if episodes:
                b_eval = _evaluate(
                    cfg.checkpoint,
                    cfg,
                    rule,
                    episodes,
                    bench / f"greedy_rule_{rule}_sft.json",
                    bench / "eval_before_greedy.json",
                )
                a_eval = _evaluate(
                    run / "final",
                    cfg,
                    rule,
                    episodes,
                    run / "evals" / f"greedy_rule_{rule}.json",
                    run / "evals" / f"eval_{cfg.iterations:05d}.json",
                )
                b, a = _rates(b_eval), _rates(a_eval)
                deltas = {t: a[t] - b[t] for t in b}
                row |= {
                    "episodes": a_eval["episodes"],
                    "before": b_eval["success_rate"],
                    "after": a_eval["success_rate"],
                    "task_delta": deltas,
                    "losses": [t for t, d in deltas.items() if d < -loss / 100],
                }
            rows[rule].append(row)
    return rows


def _print(bench: Path, rows: dict[str, list[dict[str, Any]]], loss: float) -> None:
    first = next(iter(rows.values()))[0]
    print(
        f"\n{bench}: SFT checkpoint vs each run's final checkpoint, per greedy stop rule; probe: "
        f"{first['probe_starts']} first observations of eval starts; jump: the greedy length moved by at "
        "least half the candidate range"
    )
    tasks = list(first["task_jump_frac"])
    print(f"{'rule':10s} {'run':24s} {'jumps':>6s}  " + " ".join(f"{t[:16]:>16s}" for t in tasks))
    for rule, runs in rows.items():
        for r in runs:
            cells = " ".join(
                f"{r['task_len'][t][0]:4.1f}→{r['task_len'][t][1]:3.1f} {r['task_jump_frac'][t]:4.0%}".rjust(
                    16
                )
                for t in tasks
            )
            print(f"{rule:10s} {r['run']:24s} {r['jump_frac']:6.1%}  {cells}")
    if "episodes" in first:
        print(f"\ngreedy success on {first['episodes']} eval episodes per checkpoint and rule")
        print(
            f"{'rule':10s} {'run':24s} {'SFT':>6s} {'after':>6s} {'Δ':>7s} {'worst task Δ':>13s}  tasks losing > {loss:g} points"
        )
        for rule, runs in rows.items():
            for r in runs:
                print(
                    f"{rule:10s} {r['run']:24s} {r['before']:6.1%} {r['after']:6.1%} {r['after'] - r['before']:+7.1%} "
                    f"{min(r['task_delta'].values()):+13.1%}  {', '.join(r['losses']) or '-'}"
                )
        for rule, runs in rows.items():
            mean, half = t_interval([r["after"] - r["before"] for r in runs])
            lost = sum(len(r["losses"]) for r in runs)
            pairs = sum(len(r["task_delta"]) for r in runs)
            print(
                f"{rule:10s} Δ over runs {mean:+6.1%} [{mean - half:+6.1%}, {mean + half:+6.1%}]; losses {lost}/{pairs}"
            )


def main() -> None:
    a = parse_args()
    rules = [r for r in a.rules.split(",") if r]
    for bench in map(Path, a.bench):
        rows = measure(bench, rules, a.probe, a.episodes, a.loss)
        (bench / "greedy_stop_rules.json").write_text(json.dumps(rows, indent=2))
        _print(bench, rows, a.loss)


if __name__ == "__main__":
    main()
