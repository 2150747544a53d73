"""``lastr1 demo``: the end-to-end main job (what ``make demo`` runs).

make one-shot demos (scripted experts) → SFT warm-up → LAPO RL → final evaluation with videos →
``runs/<name>/report.md`` (learning curve, latent length per task, before/after table).

Presets are the only place with stage sizes; everything else is each stage's own config, so a
user can reproduce any stage by hand with the commands printed in the report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lastr1.algos import AlgoConfig
from lastr1.commands import make_demos
from lastr1.envs import EnvConfig
from lastr1.eval.evaluate import eval_files, format_table, save_eval
from lastr1.eval.report import write_run_report
from lastr1.models.policy import PolicyConfig
from lastr1.train.rl import RLConfig, train_rl
from lastr1.train.sft import SFTConfig, train_sft

# Stage sizes per preset. "default" targets ~10 minutes on 2 CPU cores; "quick" < 3 minutes (tests).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "tasks": ["reach-v3", "button-press-topdown-v3", "drawer-open-v3", "drawer-close-v3"],
        "image_size": 64,
        "max_steps": 200,
        "placement_scale": 0.3,
        "num_envs": 4,
        "vector": "async",  # subprocess workers: 1.3-1.7x the in-process loop on 2 cores (env benchmark)
        "policy": {"d_model": 128, "n_layers": 3, "n_heads": 4, "image_grid": 4, "value_hidden": (128, 64)},
        "sft_steps": 600,
        "sft_batch": 32,
        # 64 rollouts per iteration: at 16 the policy gradient is mostly noise and RL drifts the
        # warm-up down (docs/rl.md, "how many episodes an update needs")
        "rl_iterations": 10,
        "rollouts_per_iter": 64,
        "rl_epochs": 1,
        "rl_lr": 1e-4,
        # one stop decision per episode, sampled actions at T 0.5, the stop head at 30x the policy lr:
        # the setting where LAPO's stop learns within this budget (docs/rl.md, 5 seeds); at T 1.0 and
        # one stop per action chunk the reasoning length barely changes an episode's outcome
        "rl_action_temperature": 0.5,
        "rl_stop_scope": "episode",
        "rl_stop_lr": 3e-3,
        "rl_group_size": 8,  # grpo_action: 8 rollouts from each of 8 starts per iteration
        "rl_value_trains_backbone": False,  # the critic reads the features but does not shape them
        # KL to the SFT policy: without it the token entropy grows and training success falls
        "rl_kl_coef": 0.5,
        "eval_episodes": 10,
    },
    "quick": {
        "tasks": ["reach-v3", "drawer-close-v3"],
        "image_size": 48,
        "max_steps": 80,
        "placement_scale": 0.3,
        "num_envs": 2,
        "vector": "sync",
        "policy": {"d_model": 64, "n_layers": 2, "n_heads": 4, "image_grid": 4, "value_hidden": (64,)},
        "sft_steps": 40,
        "sft_batch": 16,
        "rl_iterations": 2,
        "rollouts_per_iter": 4,
        "rl_epochs": 1,
        "rl_lr": 1e-4,
        "rl_action_temperature": 0.5,
        "rl_stop_scope": "episode",
        "rl_stop_lr": 3e-3,
        "rl_group_size": 2,
        "rl_value_trains_backbone": False,
        "rl_kl_coef": 0.5,
        "eval_episodes": 2,
    },
}


@dataclass
class Config:
    preset: Literal["default", "quick"] = "default"
    name: str = ""  # run folder under runs_dir; default: demo-<preset>
    runs_dir: str = "runs"
    tasks: list[str] = field(default_factory=list)  # override the preset's Meta-World tasks
    algo: Literal["lapo", "ppo_action", "grpo_action"] = "lapo"
    placement_scale: float = 0.0  # Meta-World placement ranges x this; 0 = the preset's
    seed: int = 0
    progress: bool = True


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def run(cfg: Config) -> int:
    p = PRESETS[cfg.preset]
    run_dir = Path(cfg.runs_dir) / (cfg.name or f"demo-{cfg.preset}")
    run_dir.mkdir(parents=True, exist_ok=True)
    env_cfg = EnvConfig(
        backend="metaworld",
        tasks=list(cfg.tasks or p["tasks"]),
        num_envs=p["num_envs"],
        image_size=p["image_size"],
        max_steps=p["max_steps"],
        vector=p["vector"],
        placement_scale=cfg.placement_scale or p["placement_scale"],
    )
    seconds: dict[str, float] = {}

    t = _stage("1/5 one-shot demos from scripted experts")
    demos = run_dir / "demos"
    if not (demos / "meta.json").is_file():
        demo_cfg = make_demos.Config(
            env=dataclasses.replace(env_cfg, num_envs=1), out=str(demos), overwrite=True
        )
        if make_demos.run(demo_cfg):
            raise RuntimeError("make-demos failed; see the messages above")
    seconds["demos"] = time.perf_counter() - t

    t = _stage("2/5 SFT warm-up (actions + grounded latents + stop)")
    sft_cfg = SFTConfig(
        data=str(demos),
        out=str(run_dir / "sft"),
        policy=PolicyConfig(**p["policy"]),
        steps=p["sft_steps"],
        batch_size=p["sft_batch"],
        seed=cfg.seed,
        progress=cfg.progress,
    )
    sft_final = train_sft(sft_cfg)
    seconds["sft"] = time.perf_counter() - t

    t = _stage(f"3/5 RL post-training ({cfg.algo}), evaluated before, during and after")
    rl_cfg = RLConfig(
        env=env_cfg,
        algo=AlgoConfig(name=cfg.algo, kl_coef=p["rl_kl_coef"]),
        checkpoint=str(sft_final),
        out=str(run_dir / "rl"),
        iterations=p["rl_iterations"],
        rollouts_per_iter=p["rollouts_per_iter"],
        group_size=p["rl_group_size"] if cfg.algo == "grpo_action" else 1,
        epochs=p["rl_epochs"],
        lr=p["rl_lr"],
        stop_lr=p["rl_stop_lr"],
        stop_scope=p["rl_stop_scope"],
        action_temperature=p["rl_action_temperature"],
        value_trains_backbone=p["rl_value_trains_backbone"],
        eval_every=p["rl_iterations"],  # before and after: each evaluation runs greedy and sampled
        eval_episodes_per_task=p["eval_episodes"],
        eval_sampled=True,
        eval_videos=True,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    train_rl(rl_cfg)
    seconds["rl + eval"] = time.perf_counter() - t

    # "before" is the SFT checkpoint's evaluation at iteration 0, "after" the last one: the same
    # eval initial states, greedy actions, deterministic stop rule
    t = _stage("4/5 before/after on the eval initial states")
    evals = eval_files(run_dir / "rl")
    results = {"sft": _load(evals[0]), "rl": _load(evals[-1])}
    for label, res in results.items():
        save_eval(res, run_dir / f"eval_{label}.json")
        print(f"[{label}]\n{format_table(res)}")
    seconds["before/after"] = time.perf_counter() - t

    _stage("5/5 report")
    setting = (
        f"Environment: Meta-World {', '.join(env_cfg.tasks)}; placements drawn from "
        f"{env_cfg.placement_scale:g}x the benchmark's ranges (`env.placement_scale`), "
        f"{env_cfg.max_steps} steps, {env_cfg.image_size} px; one scripted demo per task. "
        f"RL: {rl_cfg.iterations} iterations x {rl_cfg.rollouts_per_iter} rollouts, lr {rl_cfg.lr:g}, "
        f"action temperature {rl_cfg.action_temperature:g}, one stop decision per "
        f"{'episode' if rl_cfg.stop_scope == 'episode' else 'action chunk'} (stop head lr "
        f"{rl_cfg.stop_lr or rl_cfg.lr:g}), KL to the SFT policy "
        f"{rl_cfg.algo.kl_coef:g}, value head "
        f"{'trains' if rl_cfg.value_trains_backbone else 'detached from'} the backbone."
    )
    report = write_run_report(run_dir, results["sft"], results["rl"], seconds, cfg.algo, setting=setting)
    print(f"report: {report}")
    return 0
