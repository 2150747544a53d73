"""``lastr1 rl``'s config: every setting of an RL run, checked together when it is built.

Why its own module: the checks that tie settings to each other (the algorithm and the stop
options, group sizes and env slots, probes that RL must not train on) belong beside the fields,
not in the training loop, so a bad combination fails before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lastr1.algos import AlgoConfig, get_algorithm
from lastr1.envs import EnvConfig
from lastr1.models.backbones.run_settings import BackboneRunConfig
from lastr1.models.decode import DecodeConfig


@dataclass
class RLExperimental:
    """Options our measurements found to change nothing on the tasks tried (docs/experiments/).

    Kept so earlier runs can be reproduced; not part of any preset.
    """

    # remove the advantage mean per task instead of per batch (see advantages.whiten)
    whiten_per_task: bool = False
    # ramp the policy lr linearly over the first N optimizer updates (0 = none)
    lr_warmup_updates: int = 0

    def __post_init__(self) -> None:
        if self.lr_warmup_updates < 0:
            raise ValueError(
                f"experimental.lr_warmup_updates={self.lr_warmup_updates} must be >= 0 (0 = no warm-up)"
            )


@dataclass
class RLConfig:
    """``lastr1 rl``: defaults are the LaST-R1 reference recipe at CPU sizes (presets/reference.yaml)."""

    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    # how rollouts sample (temperatures, stop scope) and evaluations decode greedily; saved beside
    # the trained weights as decode.json, so `lastr1 eval` decodes the way RL trained
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    checkpoint: str = ""  # the SFT warm-up checkpoint to start from
    # how a pretrained backbone runs (precision, activation checkpointing, frozen vision tower);
    # null = as the checkpoint's SFT run did (its backbone_run.json; docs/backbones.md)
    backbone_run: BackboneRunConfig | None = None
    out: str = "runs/rl"
    iterations: int = 20
    rollouts_per_iter: int = 16  # episodes per iteration (multiple of env.num_envs)
    # rollouts per initial state for group-relative (GRPO) advantages; GAE runs draw one rollout per
    # start (the reference), whatever this says
    group_size: int = 8
    minibatches: int = 4
    epochs: int = 1
    lr: float = 3e-5
    value_lr: float = 3e-4
    # the reference lets the value loss train the shared backbone; False detaches the value head's
    # input so only the policy loss shapes the features (docs/rl.md)
    value_trains_backbone: bool = True
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    eval_every: int = 5  # iterations; 0 = only at the end
    eval_episodes_per_task: int = 10
    eval_at_start: bool = True  # evaluate the starting checkpoint as iteration 0 (the "before" number)
    # also evaluate the sampled policy (the rollout decode; the one RL optimises) at every
    # evaluation, to evals/sampled_XXXXX.json and the eval_sampled_* metrics
    eval_sampled: bool = False
    eval_videos: bool = False  # write the first episode per task of every evaluation to evals/videos_<it>
    max_env_steps: int = 0  # stop once this many env steps were taken (0 = no budget)
    # step budget of a training rollout; 0 = the backend's (LIBERO: the reference's 240/320/320/576,
    # longer than the published evaluation budgets, which periodic evaluation keeps)
    rollout_max_steps: int = 0
    seed: int = 0
    resume: bool = True
    # start over in an `out` that holds a run's checkpoints, deleting them (never done otherwise)
    overwrite: bool = False
    # settings a resume may change from the run's config.yaml (e.g. lr,algo.kl_coef; a group name
    # such as algo allows all its fields); the old and new values go to config_history.jsonl
    allow_changes: list[str] = field(default_factory=list)
    threads: int = 1  # torch threads; >1 is much slower when another process keeps a core busy
    # slot groups that take turns, so the policy decides for one while the others simulate
    # (rollout.collect); pays off with env.vector=async and env.workers below the core count
    pipeline: int = 1
    # the learner under torchrun (docs/scaling.md): auto = ddp when torchrun started several
    # processes, else one process; ddp = every rank collects rollouts_per_iter / WORLD_SIZE episodes
    # (rollouts_per_iter stays the global count) and gradients are averaged; rank 0 writes
    distributed: Literal["auto", "none", "ddp"] = "auto"
    progress: bool = True
    experimental: RLExperimental = field(default_factory=RLExperimental)

    def __post_init__(self) -> None:
        positive = {
            "iterations": self.iterations,
            "rollouts_per_iter": self.rollouts_per_iter,
            "group_size": self.group_size,
            "minibatches": self.minibatches,
            "epochs": self.epochs,
            "eval_episodes_per_task": self.eval_episodes_per_task,
            "threads": self.threads,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        for name in ("lr", "value_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        for name in ("weight_decay", "eval_every", "max_env_steps", "rollout_max_steps", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 1 <= self.pipeline <= self.env.num_envs:
            raise ValueError(
                f"pipeline={self.pipeline} must be in [1, env.num_envs={self.env.num_envs}] (1 = no overlap)"
            )
        if self.rollouts_per_iter % self.env.num_envs:
            raise ValueError(
                f"rollouts_per_iter={self.rollouts_per_iter} must be a multiple of env.num_envs={self.env.num_envs}"
            )
        if self.rollouts_per_iter % self.rollouts_per_start:
            raise ValueError(
                f"rollouts_per_iter={self.rollouts_per_iter} must be a multiple of group_size={self.group_size} "
                "(group-relative advantages draw group_size rollouts per initial state)"
            )
        if self.advantage_kind == "grpo" and self.group_size < 2:
            raise ValueError("group_size: group-relative advantages need >= 2 rollouts per initial state")
        algo = get_algorithm(self.algo.name)
        for option, off in self.algo.stop.options_in_use():  # read lazily: stand-in algorithms in tests
            if not algo.trains_reasoning:
                raise ValueError(
                    f"{option}: {self.algo.name} does not train the stop; use algo.name=lapo or {off}"
                )
        if self.algo.stop.advantage != "gae" and self.advantage_kind != "gae":
            raise ValueError(
                f"algo.stop.advantage={self.algo.stop.advantage} replaces the critic's baseline, but "
                f"algo.advantage={self.advantage_kind} has no critic; use algo.advantage=gae or stop.advantage=gae"
            )
        if self.decode.force_latent_len and algo.trains_reasoning:
            raise ValueError(
                f"decode.force_latent_len={self.decode.force_latent_len} is an evaluation probe: "
                f"{self.algo.name} trains the stop on lengths it samples; set it to 0"
            )

    @property
    def advantage_kind(self) -> str:
        """``gae`` or ``grpo``: the configured estimator, or the algorithm's default."""
        return self.algo.advantage or get_algorithm(self.algo.name).default_advantage

    @property
    def rollouts_per_start(self) -> int:
        """Rollouts drawn from each initial state: ``group_size`` for group advantages, else 1."""
        return self.group_size if self.advantage_kind == "grpo" else 1

    @property
    def stop_head_lr(self) -> float:
        """The stop head's learning rate: ``algo.stop.lr``, or the policy ``lr`` when it is 0."""
        return self.algo.stop.lr or self.lr
