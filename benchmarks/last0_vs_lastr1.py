"""One-shot SFT of LaST0 vs LaST-R1 from the same demos, greedy success over seeds, plus an ablation.

Both families train from the same one-demo-per-task dataset with the preset's ``sft`` section (same
steps, batch, lr, width and depth); only ``policy.family`` and LaST0's own fields differ. Every run
is then evaluated greedily on the preset's ``eval`` section (same env, same ``eval`` initial
states)::

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/last0_vs_lastr1.py --seeds 0,1,2 --jobs 2 preset=demo

Variants (``--variants``, default the first three):

* ``lastr1``: the preset's LaST-R1 policy (latents with an adaptive stop, discrete action tokens);
* ``last0``: ``policy.family=last0`` -- reasoning expert (4 keyframes x (camera + state) latents
  aligned to DINOv2 and future-proprio targets), flow-matching acting expert, mixed-κ SFT, evaluated
  at ``--kappas`` (default the reference's test setting κ = 4; ``--kappas 1,4`` adds κ = 1 from the
  same checkpoints, an evaluation only);
* ``last0_acting_only``: the ablation without the slow system (``policy.last0.reasoning=false``: no
  reasoning expert, no latents; the acting expert alone reads the frame, state and instruction);
* ``last0_no_latents`` (optional): the reasoning expert reads the observation but thinks no latents.

Without ``--data`` the preset's demos are recorded once into ``<out>/demos``. Finished SFT runs
return at once (they resume) and each evaluation is cached as ``eval_k<κ>.json`` beside its run, so
a killed benchmark continues where it stopped. Prints success per row -- mean over seeds with a 95 %
Student-t interval, and all episodes pooled with a 95 % Wilson interval (``lastr1.eval.stats``) --
and per task; every number goes to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

from lastr1.commands import eval as eval_command
from lastr1.commands import make_demos
from lastr1.config import from_dict, load_config, load_preset, split_preset
from lastr1.envs import make_env
from lastr1.eval.evaluate import evaluate, save_eval
from lastr1.eval.stats import t_interval, wilson_interval
from lastr1.models.load import load_policy
from lastr1.train.sft import SFTConfig, train_sft

VARIANTS: dict[str, list[str]] = {
    "lastr1": [],
    "last0": ["policy.family=last0"],
    "last0_acting_only": ["policy.family=last0", "policy.last0.reasoning=false"],
    "last0_no_latents": ["policy.family=last0", "policy.last0.keyframes=0"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", default="", help="a dataset written by `lastr1 make-demos` (default: record one)"
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="lastr1,last0,last0_acting_only")
    p.add_argument("--kappas", default="4", help="LaST0's reason_every values to evaluate (e.g. 1,4)")
    p.add_argument("--episodes", type=int, default=20, help="eval episodes per task and run")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel worker processes")
    p.add_argument("--out", default="runs/last0_vs_lastr1")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="preset=NAME (default demo) and sft overrides"
    )
    a = p.parse_args(argv)
    preset, a.overrides = split_preset(a.overrides)
    a.preset = preset or "demo"
    unknown = sorted(set(a.variants.split(",")) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
    return a


def sft_config(a: argparse.Namespace, variant: str, seed: int) -> SFTConfig:
    run = Path(a.out) / variant / f"seed{seed}"
    return load_config(
        SFTConfig,
        overrides=[
            *a.overrides,
            *VARIANTS[variant],
            f"data={a.data}",
            f"out={run / 'sft'}",
            f"seed={seed}",
            "progress=false",
        ],
        preset=a.preset,
        section="sft",
    )


def record_demos(a: argparse.Namespace) -> str:
    """The preset's one-shot demos in ``<out>/demos`` (recorded once)."""
    out = Path(a.out) / "demos"
    if not (out / "meta.json").is_file():
        cfg = from_dict(
            make_demos.Config,
            {**load_preset(a.preset, "make_demos"), "out": str(out), "overwrite": True},
            prefix="make_demos",
        )
        if make_demos.run(cfg):
            raise RuntimeError("make-demos failed; see the messages above")
    return str(out)


def fill_target_caches(configs: list[SFTConfig]) -> None:
    """Each distinct teacher's features once, before the workers (they would race on the cache)."""
    from lastr1.data.episodes import load_dataset
    from lastr1.data.latent_targets import compute_dataset_latent_targets
    from lastr1.train.sft import policy_config_for
    from lastr1.train.sft_last0 import keyframe_teachers

    teachers = {}
    for cfg in configs:
        pcfg = policy_config_for(cfg, load_dataset(cfg.data))
        if pcfg.family == "last0":
            found = keyframe_teachers(cfg, pcfg)
        elif pcfg.k_max and cfg.latent_weight > 0:
            found = [dataclasses.replace(cfg.teacher, k_max=pcfg.k_max)]
        else:
            found = []
        teachers.update({repr(t): (cfg.data, t) for t in found})
    for data, teacher in teachers.values():
        compute_dataset_latent_targets(data, teacher, progress=False)


def _evaluate(a: argparse.Namespace, final: Path, kappa: int | None, path: Path) -> dict[str, Any]:
    """Greedy success of a checkpoint on the preset's eval env (LaST0 at reason_every=kappa)."""
    if path.is_file():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    cfg = load_config(eval_command.Config, preset=a.preset, section="eval")
    kept = {"reason_every": kappa} if kappa is not None else {}
    policy = load_policy(final, decode=cfg.decode, **kept).eval()  # LaST-R1 decodes as the preset says
    env_cfg = dataclasses.replace(
        cfg.env, image_size=policy.config.image_size, wrist_view=policy.config.num_views > 1
    )
    with make_env(env_cfg) as env:
        result = evaluate(policy, env, a.episodes, progress=False)
    save_eval(result, path)
    return result


def run_one(a: argparse.Namespace, variant: str, seed: int) -> list[dict[str, Any]]:
    cfg = sft_config(a, variant, seed)
    final = train_sft(cfg)  # a finished run resumes at its last step and returns at once
    kappas: list[int | None] = (
        [int(k) for k in a.kappas.split(",")] if cfg.policy.family == "last0" else [None]
    )
    if variant == "last0_acting_only":
        kappas = [None]  # nothing to reuse without the reasoning expert
    rows = []
    for kappa in kappas:
        name = variant if kappa is None else f"{variant} κ={kappa}"
        res = _evaluate(a, final, kappa, final.parent.parent / f"eval_k{kappa or 0}.json")
        rows.append(
            {
                "row": name,
                "variant": variant,
                "kappa": kappa,
                "seed": seed,
                "success": res["success_rate"],
                "successes": res["successes"],
                "episodes": res["episodes"],
                "per_task": {k: v["success_rate"] for k, v in res["per_task"].items()},
            }
        )
    return rows


def main() -> None:
    a = parse_args()
    if not a.data:
        a.data = record_demos(a)
    seeds = [int(k) for k in a.seeds.split(",")]
    names = a.variants.split(",")
    configs = {(v, k): sft_config(a, v, k) for v in names for k in seeds}  # every setting checked first
    fill_target_caches(list(configs.values()))
    jobs = list(configs)
    if a.jobs > 1:
        ctx = multiprocessing.get_context("spawn")  # rendering envs hang after fork
        with ProcessPoolExecutor(a.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(run_one, a, v, k) for v, k in jobs]
            rows = [r for f in tqdm(futures, desc="runs", unit="run") for r in f.result()]
    else:
        rows = [r for v, k in tqdm(jobs, desc="runs", unit="run") for r in run_one(a, v, k)]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(
        json.dumps({"preset": a.preset, "overrides": a.overrides, "data": a.data, "runs": rows}, indent=2)
    )
    print(
        f"\nSFT from {a.data} (preset={a.preset}{', ' + ' '.join(a.overrides) if a.overrides else ''}), "
        f"greedy on {a.episodes} eval episodes per task and run; mean over seeds [95% Student-t CI], "
        "and all episodes pooled [95% Wilson CI]"
    )
    tasks = list(rows[0]["per_task"])
    print(
        f"{'row':<26s} {'seeds':>5s} {'success':>8s} {'[95% t CI]':>17s} {'pooled [95% Wilson]':>24s} "
        + " ".join(f"{t[:14]:>14s}" for t in tasks)
    )
    for name in dict.fromkeys(r["row"] for r in rows):
        mine = [r for r in rows if r["row"] == name]
        mean, half = t_interval([r["success"] for r in mine])
        k, n = sum(r["successes"] for r in mine), sum(r["episodes"] for r in mine)
        lo, hi = wilson_interval(k, n)
        # the t interval clipped to [0, 1] for display (with 2 seeds it is wide: t = 12.7)
        t_lo, t_hi = max(0.0, mean - half), min(1.0, mean + half)
        t_ci = f"[{t_lo:6.1%}, {t_hi:6.1%}]" if len(mine) > 1 else "(one seed)"
        cells = " ".join(f"{sum(r['per_task'][t] for r in mine) / len(mine):14.1%}" for t in tasks)
        print(
            f"{name:<26s} {len(mine):5d} {mean:8.1%} {t_ci:>17s} {f'{k / n:.1%} [{lo:.0%}, {hi:.0%}]':>24s} {cells}"
        )
        print(f"{'':26s} per seed: " + ", ".join(f"{r['success']:.1%}" for r in mine))


if __name__ == "__main__":
    main()
