"""``lastr1 eval --checkpoint DIR --env metaworld --tasks a,b --episodes 20``.

Greedy actions and the deterministic stop rule on the ``eval`` initial states; writes ``eval.json``
(per-task and per-suite success, 95 % Wilson intervals, mean latent length, the per-episode success
lists, and the protocol: step budgets, settle steps, image size, simulator versions) and one mp4 per
task. LIBERO at the paper's protocol::

    lastr1 eval --checkpoint runs/x/final --env libero --suite libero_spatial --trials-per-task 50 \
        --env.num_envs 8 --env.vector async

LIBERO evaluates every task of the suite unless ``--tasks`` names some. ``--policy expert`` runs the
backend's scripted experts instead of a checkpoint (checks an install without a trained policy).
``--policy ws://HOST:PORT`` evaluates the policy a ``lastr1 serve`` server runs, through
openpi-client, with the simulator here (``lastr1.serve.remote``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lastr1.envs import EnvConfig, make_env
from lastr1.envs.config import ENV_ALIASES
from lastr1.envs.suites import list_tasks, resolve_suite
from lastr1.eval.evaluate import evaluate, format_table, save_eval_or_fallback
from lastr1.eval.scripted import ScriptedPolicy
from lastr1.models.decode import DecodeConfig
from lastr1.models.load import load_policy
from lastr1.serve.remote import RemotePolicy, is_remote
from lastr1.train.run_dir import make_run_dir

ALIASES = {
    **ENV_ALIASES,
    "episodes": "episodes_per_task",
    "trials_per_task": "episodes_per_task",
}
SECTION = "eval"  # its section in the presets
POLICIES = ("checkpoint", "expert")
# the simulator stack whose versions decide whether LIBERO's fixed initial states load as published
STACK = ("lastr1", "torch", "numpy", "mujoco", "robosuite", "libero", "metaworld")


@dataclass
class Config:
    checkpoint: str = ""
    # "checkpoint": the policy at `checkpoint`; "expert": the backend's scripted experts;
    # "ws://HOST:PORT": the policy a `lastr1 serve` server runs (remote evaluation)
    policy: str = "checkpoint"
    env: EnvConfig = field(default_factory=EnvConfig)
    episodes_per_task: int = 20
    init_set: str = "eval"
    out: str = ""  # default: <checkpoint>/eval (runs/eval-expert/<suite> for --policy expert)
    videos_per_task: int = 1
    # "greedy": the deployment decode (the benchmark number); "sample": the rollout decode RL
    # optimises (the checkpoint's temperatures), seeded by `seed` -- checkpoint policies only
    mode: str = "greedy"
    seed: int = 0
    # how the checkpoint decodes (stop rule and scope, probes such as decode.force_latent_len);
    # null = the checkpoint's own decode.json (what its RL run used); any decode.* key gives a whole
    # decode config, its other fields at the reference defaults
    decode: DecodeConfig | None = None
    threads: int = 1  # torch threads; >1 is much slower when another process keeps a core busy
    pipeline: int = 1  # slot groups taking turns (rollout.collect); checkpoint policies only
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("episodes_per_task", "threads", "pipeline"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.videos_per_task < 0:
            raise ValueError(f"videos_per_task={self.videos_per_task} must be >= 0 (0 = no videos)")
        if self.policy not in POLICIES and not is_remote(self.policy):
            raise ValueError(
                f"policy={self.policy!r} is unknown; use one of {list(POLICIES)} or ws://HOST:PORT"
            )
        if self.init_set not in ("train", "eval"):
            raise ValueError(f"init_set={self.init_set!r} must be 'eval' (the benchmark states) or 'train'")
        if self.mode not in ("greedy", "sample"):
            raise ValueError(f"mode={self.mode!r} must be 'greedy' (the benchmark decode) or 'sample'")
        if self.mode == "sample" and self.policy != "checkpoint":
            raise ValueError(
                f"mode=sample needs a checkpoint policy (policy={self.policy!r} decodes its own way); "
                "leave mode out"
            )


def stack_versions() -> dict[str, str]:
    """Installed versions of the packages that decide simulator behaviour."""
    out = {}
    for name in STACK:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _protocol(cfg: Config, env: Any, policy: Any) -> dict[str, Any]:
    proto: dict[str, Any] = {
        "backend": cfg.env.backend,
        "suite": resolve_suite(cfg.env),
        "policy": cfg.policy,
        "mode": cfg.mode,
        "init_set": cfg.init_set,
        "trials_per_task": cfg.episodes_per_task,
        "max_steps": {t.name: t.max_steps for t in env.tasks},
        "image_size": cfg.env.image_size,
        "actions": _decode_name(policy.decode, cfg.mode) if cfg.policy != "expert" else "scripted expert",
        "decode": dataclasses.asdict(policy.decode) if cfg.policy != "expert" else None,
        "seed": cfg.seed,
        "pipeline": cfg.pipeline,
        "versions": stack_versions(),
    }
    if getattr(policy, "family", "") == "last0":  # no stop rule: the flow integrated from zero noise
        l0 = policy.config.last0
        start = "Gaussian noise" if cfg.mode == "sample" else "zero noise"
        proto["actions"] = (
            f"{cfg.mode} flow (from {start}, {l0.euler_steps} Euler steps), reasoning every {l0.reason_every} chunks"
        )
    if cfg.env.backend == "libero":
        from lastr1.envs.libero import SETTLE_STEPS

        proto["settle_steps"] = SETTLE_STEPS
        proto["image_orientation"] = "rotated 180 degrees (upright), as the reference models expect"
    return proto


def _decode_name(pc: DecodeConfig, mode: str = "greedy") -> str:
    """The decode that ran."""
    if mode == "sample":
        return (
            f"sampled (action temperature {pc.action_temperature}, stop temperature {pc.stop_temperature}, "
            f"stop scope {pc.stop_scope})"
        )
    forced = pc.force_latent_len
    stop = f"reasoning length fixed at {forced}" if forced else "deterministic stop rule"
    if pc.stop_scope == "episode" and not forced:
        stop += " at each episode's first decision"
    return f"greedy ({pc.greedy_actions}), {stop}"


def run(cfg: Config) -> int:
    if cfg.policy not in POLICIES and not is_remote(cfg.policy):
        raise ValueError(f"policy={cfg.policy!r} is unknown; use one of {list(POLICIES)} or ws://HOST:PORT")
    if cfg.policy == "checkpoint" and not cfg.checkpoint:
        raise ValueError(
            "checkpoint: pass the policy directory to evaluate (--checkpoint runs/x/final), "
            "or --policy expert to run the scripted experts"
        )
    if cfg.init_set not in ("train", "eval"):
        raise ValueError(f"init_set={cfg.init_set!r} must be 'eval' (the benchmark states) or 'train'")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    env_cfg = cfg.env
    if env_cfg.backend == "libero" and not env_cfg.tasks:  # the benchmark protocol: the whole suite
        env_cfg.tasks = [t.name for t in list_tasks("libero", resolve_suite(env_cfg))]
    policy: Any = None
    if cfg.policy == "checkpoint":
        # the decode is checked against the architecture here, before any episode runs
        policy = load_policy(cfg.checkpoint, decode=cfg.decode).eval()  # LaST-R1 or LaST0
        if env_cfg.image_size != policy.config.image_size:
            print(f"note: using env.image_size={policy.config.image_size} to match the checkpoint")
            env_cfg.image_size = policy.config.image_size
        env_cfg.wrist_view = policy.config.num_views > 1
        out = Path(cfg.out or Path(cfg.checkpoint) / "eval")
    elif is_remote(cfg.policy):
        if cfg.decode is not None:
            raise ValueError(
                "decode.* applies to checkpoints; a remote policy decodes as its `lastr1 serve` does"
            )
        policy = RemotePolicy(cfg.policy)
        if env_cfg.image_size != policy.image_size:
            print(f"note: using env.image_size={policy.image_size} to match the served checkpoint")
            env_cfg.image_size = policy.image_size
        env_cfg.wrist_view = policy.num_views > 1
        out = Path(cfg.out or Path("runs/eval-remote") / resolve_suite(env_cfg))
    else:
        from lastr1.envs.experts import expert_factory

        expert_factory(env_cfg.backend)  # a clear error before any simulator is built
        if cfg.pipeline != 1:
            raise ValueError(
                f"pipeline={cfg.pipeline}: the scripted experts read the simulators between chunks, "
                "so they need pipeline=1 (leave it out with --policy expert)"
            )
        out = Path(cfg.out or Path("runs/eval-expert") / resolve_suite(env_cfg))
    make_run_dir(out)  # a bad out fails now, not after every episode ran
    with make_env(env_cfg) as env:
        result = evaluate(
            policy if policy is not None else ScriptedPolicy(env),
            env,
            cfg.episodes_per_task,
            init_set=cfg.init_set,
            videos_dir=out / "videos" if cfg.videos_per_task else None,
            videos_per_task=cfg.videos_per_task,
            progress=cfg.progress,
            mode=cfg.mode,
            seed=cfg.seed,
            pipeline=cfg.pipeline,
        )
        result["protocol"] = _protocol(cfg, env, policy)
    result["suite"] = result["protocol"]["suite"]
    result["checkpoint"] = str(cfg.checkpoint) if cfg.policy == "checkpoint" else None
    if isinstance(policy, RemotePolicy):
        result["checkpoint"] = policy.metadata.get("checkpoint") or None
        policy.close()
    print(format_table(result))  # first: nothing after the episodes may lose their results
    path, warning = save_eval_or_fallback(result, out / "eval.json")
    if warning:
        print(f"lastr1 eval: {warning}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
