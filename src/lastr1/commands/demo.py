"""``lastr1 demo``: the end-to-end main job (what ``make demo`` runs).

make one-shot demos (scripted experts) → SFT warm-up → LAPO RL → final evaluation with videos →
``runs/<name>/report.md`` (learning curve, latent length per task, before/after table).

Every stage's setting comes from one preset (``src/lastr1/presets/<preset>.yaml``, its
``make_demos``, ``sft`` and ``rl`` sections), the same files ``lastr1 sft|rl|eval preset=NAME`` and
the benchmarks read; this command only wires the stages' paths together, so each stage can be
reproduced by hand with the commands printed in the report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lastr1.algos import get_algorithm
from lastr1.algos.base import without_stop_training
from lastr1.commands import make_demos
from lastr1.config import ConfigError, from_dict, load_preset, merge, preset_path
from lastr1.envs import make_env
from lastr1.eval.evaluate import eval_files, evaluate, format_table, save_eval
from lastr1.eval.report import write_run_report, write_sft_report
from lastr1.models.load import load_policy
from lastr1.train.rl import RLConfig, train_rl
from lastr1.train.sft import SFTConfig, train_sft


@dataclass
class Config:
    # the preset every stage reads (demo: ~12 minutes on 2 cores; quick: < 3 minutes, the tests'),
    # or a path to a preset YAML of your own
    preset: str = "demo"
    name: str = ""  # run folder under runs_dir; default: the preset's name
    runs_dir: str = "runs"
    tasks: list[str] = field(default_factory=list)  # override the preset's tasks (every stage)
    algo: Literal["lapo", "ppo_action", "grpo_action"] = "lapo"
    seed: int = 0
    progress: bool = True
    # the policy's architecture, merged into the preset's sft.policy (RL and the evaluations read it
    # from the SFT checkpoint), e.g. policy.backbone=qwen3_vl policy.qwen3_vl_size=tiny
    policy: dict[str, Any] = field(default_factory=dict)
    # any other field of a stage, merged into that section of the preset and checked by the stage's
    # own config, e.g. sft.steps=10 rl.iterations=1 make_demos.episodes_per_task=2
    make_demos: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    rl: dict[str, Any] = field(default_factory=dict)


def stage_configs(cfg: Config, run_dir: Path) -> tuple[make_demos.Config, SFTConfig, RLConfig]:
    """The three stages' configs: the preset's sections with this run's paths, seed and tasks."""
    preset_path(cfg.preset)  # an unknown name fails here, naming the presets
    sections: dict[str, dict[str, Any]] = {}
    extra = {"make_demos": cfg.make_demos, "sft": merge(cfg.sft, {"policy": cfg.policy}), "rl": cfg.rl}
    for section in ("make_demos", "sft", "rl"):
        data = merge(load_preset(cfg.preset, section), extra[section])
        if cfg.tasks and section != "sft":
            data["env"] = {**data.get("env", {}), "tasks": list(cfg.tasks)}
        sections[section] = data
    try:
        demos_cfg = from_dict(
            make_demos.Config,
            {**sections["make_demos"], "out": str(run_dir / "demos"), "overwrite": True},
            prefix="make_demos",
        )
        sft_cfg = from_dict(
            SFTConfig,
            {**sections["sft"], "data": str(run_dir / "demos"), "out": str(run_dir / "sft")},
            prefix="sft",
        )
        sft_cfg = dataclasses.replace(sft_cfg, seed=cfg.seed, progress=cfg.progress)
        rl_data = {**sections["rl"], "checkpoint": str(run_dir / "sft" / "final"), "out": str(run_dir / "rl")}
        rl_data["algo"] = {**rl_data.get("algo", {}), "name": cfg.algo}
        if not get_algorithm(cfg.algo).trains_reasoning:  # the baselines keep the rest of the setting
            rl_data["algo"]["stop"] = without_stop_training(rl_data["algo"].get("stop", {}))
        rl_data.update(seed=cfg.seed, progress=cfg.progress)
        rl_cfg = from_dict(RLConfig, rl_data, prefix="rl")
    except ConfigError as exc:
        given = bool(cfg.policy or cfg.make_demos or cfg.sft or cfg.rl)
        raise ValueError(f"preset={cfg.preset}{' with your overrides' if given else ''}: {exc}") from None
    return demos_cfg, sft_cfg, rl_cfg


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def run(cfg: Config) -> int:
    name = cfg.name or Path(cfg.preset).stem
    run_dir = Path(cfg.runs_dir) / name
    demo_cfg, sft_cfg, rl_cfg = stage_configs(cfg, run_dir)  # every setting checked before any work
    run_dir.mkdir(parents=True, exist_ok=True)
    env_cfg = rl_cfg.env
    seconds: dict[str, float] = {}

    t = _stage("1/5 one-shot demos from scripted experts")
    demos = run_dir / "demos"
    if not (demos / "meta.json").is_file() and make_demos.run(demo_cfg):
        raise RuntimeError("make-demos failed; see the messages above")
    seconds["demos"] = time.perf_counter() - t

    t = _stage("2/5 SFT warm-up (actions + grounded latents + stop)")
    train_sft(sft_cfg)
    seconds["sft"] = time.perf_counter() - t
    if sft_cfg.policy.family == "last0":
        return _finish_without_rl(cfg, run_dir, rl_cfg, seconds)

    t = _stage(f"3/5 RL post-training ({cfg.algo}), evaluated before, during and after")
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
        f"Environment: {env_cfg.backend} {', '.join(env_cfg.tasks) or env_cfg.suite}; placements drawn "
        f"from {env_cfg.placement_scale:g}x the benchmark's ranges (`env.placement_scale`), "
        f"{env_cfg.max_steps} steps, {env_cfg.image_size} px; one scripted demo per task. "
        f"Preset `{cfg.preset}`. "
        f"RL: {rl_cfg.iterations} iterations x {rl_cfg.rollouts_per_iter} rollouts, lr {rl_cfg.lr:g}, "
        f"action temperature {rl_cfg.decode.action_temperature:g}, one stop decision per "
        f"{'episode' if rl_cfg.decode.stop_scope == 'episode' else 'action chunk'} (stop head lr "
        f"{rl_cfg.stop_head_lr:g}), {rl_cfg.algo.action_ratio} action ratio, KL to the SFT policy "
        f"{rl_cfg.algo.kl_coef:g}, value head "
        f"{'trains' if rl_cfg.value_trains_backbone else 'detached from'} the backbone."
    )
    report = write_run_report(run_dir, results["sft"], results["rl"], seconds, cfg.algo, setting=setting)
    print(f"report: {report}")
    return 0


def _finish_without_rl(cfg: Config, run_dir: Path, rl_cfg: RLConfig, seconds: dict[str, float]) -> int:
    """A LaST0 policy has no RL stage yet: evaluate the SFT policy the way the RL stage would have
    (its env, eval episodes, videos) and write an SFT-only report."""
    _stage("3/5 RL post-training: skipped")
    print(
        "RL skipped for policy.family=last0: RL for LaST0's flow-matching acting expert is not implemented "
        "(docs/last0.md, 'RL: how it would plug in'); running SFT -> eval -> report",
        flush=True,
    )
    t = _stage("4/5 the SFT policy on the eval initial states")
    policy = load_policy(run_dir / "sft" / "final").eval()
    with make_env(rl_cfg.env) as env:
        result = evaluate(
            policy,
            env,
            rl_cfg.eval_episodes_per_task,
            videos_dir=run_dir / "sft" / "eval_videos" if rl_cfg.eval_videos else None,
            progress=cfg.progress,
        )
    save_eval(result, run_dir / "eval_sft.json")
    print(f"[sft]\n{format_table(result)}")
    seconds["eval"] = time.perf_counter() - t

    _stage("5/5 report")
    env_cfg, l0 = rl_cfg.env, policy.config.last0
    setting = (
        f"Environment: {env_cfg.backend} {', '.join(env_cfg.tasks) or env_cfg.suite}; placements drawn "
        f"from {env_cfg.placement_scale:g}x the benchmark's ranges, {env_cfg.max_steps} steps, "
        f"{env_cfg.image_size} px; one scripted demo per task. Preset `{cfg.preset}`. Policy: LaST0 "
        f"(policy.family=last0), {policy.layout.n_latents} latents, reasoning every {l0.reason_every} "
        f"chunks, {l0.euler_steps} Euler steps, greedy = integration from zero noise."
    )
    note = "RL was skipped: RL for LaST0's flow-matching acting expert is not implemented (docs/last0.md)."
    report = write_sft_report(run_dir, result, seconds, setting=setting, note=note)
    print(f"report: {report}")
    return 0
