"""RL post-training loop (CleanRL-style, one readable function): collect → advantages → update → eval → checkpoint.

Every algorithm in :mod:`lastr1.algos` runs through this same loop; only the loss and the advantage
estimator change, so comparisons between LAPO and the action-only baselines are like for like.
Rollouts use only ``train`` initial states; periodic evaluation uses the disjoint ``eval`` set.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lastr1.algos import (
    NewTerms,
    OldTerms,
    discounted_returns,
    gae,
    get_algorithm,
    grpo,
    stop_baseline_shift,
)
from lastr1.algos.losses import stop_kl, token_kl
from lastr1.envs import EpisodeSpec, make_env
from lastr1.envs.base import VectorEnv
from lastr1.envs.suites import rollout_max_steps
from lastr1.eval.evaluate import eval_file, evaluate, format_table, save_eval
from lastr1.models.policy import LastR1Policy
from lastr1.models.policy_io import ActionOutput, PolicyBatch
from lastr1.rollout.collector import Rollout, collect, merge_rollouts
from lastr1.train.checkpoint import CheckpointManager, all_finite, load_state
from lastr1.train.diagnostics import iteration_diagnostics
from lastr1.train.distributed import SINGLE, DistContext, NullLogger, session
from lastr1.train.metrics import MetricsLogger
from lastr1.train.rl_config import RLConfig, RLExperimental
from lastr1.train.run_record import config_changes, resume_point, write_record

__all__ = ["RLConfig", "RLExperimental", "load_policy", "train_rl", "update_policy"]


def _train_episodes(cfg: RLConfig, env: VectorEnv, iteration: int) -> tuple[list[EpisodeSpec], list[int]]:
    """This iteration's training starts: tasks round-robin, random train indices, each repeated per group."""
    rng = np.random.default_rng([cfg.seed, iteration])
    per_start = cfg.rollouts_per_start
    starts = cfg.rollouts_per_iter // per_start
    budgets = [cfg.rollout_max_steps or rollout_max_steps(cfg.env, t) for t in env.tasks]
    specs, groups = [], []
    for g in range(starts):
        task = g % len(env.tasks)
        index = int(rng.integers(env.num_init_states(task, "train")))
        for _ in range(per_start):
            specs.append(EpisodeSpec(task, "train", index, max_steps=budgets[task]))
            groups.append(g)
    return specs, groups


def _advantages(
    cfg: RLConfig, algo_adv: str, roll: Rollout, ctx: DistContext = SINGLE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(N, T) advantages and returns for the chosen estimator, and the stop's advantages where
    ``algo.stop.advantage`` makes them differ (GAE only: group advantages have no critic).
    Whitening is over every rank's rollouts (``ctx``); a group never spans two ranks."""
    stop_adv = None
    if algo_adv == "gae":
        adv, ret = gae(roll.rewards, roll.values, roll.mask, cfg.algo.gamma, cfg.algo.lam)
        out: ActionOutput = roll.out
        if cfg.algo.stop.advantage != "gae" and out.candidate_values.shape[1]:
            probs = torch.softmax(out.stop_logits / out.stop_temperature[:, None], dim=-1)
            shift = stop_baseline_shift(out.value, out.candidate_values, probs)[roll.index.clamp_min(0)]
            if cfg.algo.stop.advantage == "gae_expected":  # V(s, ℓ) → V̄(s) in the first TD error
                stop_adv = adv + shift * roll.mask
            else:  # "return": G − V̄(s), nothing bootstrapped from the critic's later V(s', ℓ)
                g = discounted_returns(roll.rewards, roll.mask, cfg.algo.gamma)
                stop_adv = (g - roll.values + shift) * roll.mask
    else:
        adv = grpo(roll.rewards, roll.mask, roll.group)
        ret = adv.clone()
    if cfg.algo.whiten_advantages and algo_adv == "gae":
        mean, scale = ctx.whitening(adv, roll.mask, roll.task if cfg.experimental.whiten_per_task else None)
        m = roll.mask.to(adv.dtype)
        adv, stop_adv = [None if a is None else (a - mean) * scale * m for a in (adv, stop_adv)]
    return adv, ret, stop_adv


def old_terms(
    roll: Rollout, adv: torch.Tensor, ret: torch.Tensor, stop_adv: torch.Tensor | None = None
) -> OldTerms:
    """The loss inputs recorded at rollout time, flat over valid decisions, with ``(N, T)``
    advantages and returns (benchmarks reuse this to compute the trainer's exact loss)."""
    out: ActionOutput = roll.out
    return OldTerms(
        advantages=roll.flat(adv),
        returns=roll.flat(ret),
        values=out.value,
        logp_action_tokens=out.logp_tokens,
        logp_stop=out.logp_stop,
        latents=out.latents,
        latent_mask=out.latent_mask,
        stop_mask=None if bool(out.stop_chosen.all()) else out.stop_chosen,
        stop_advantages=None if stop_adv is None else roll.flat(stop_adv),
    )


def group_lrs(cfg: RLConfig) -> dict[str, float]:
    """The learning rate of each of the policy's named parameter groups."""
    return {"policy": cfg.lr, "value": cfg.value_lr, "stop": cfg.stop_head_lr}


def make_optimizer(policy: LastR1Policy, cfg: RLConfig) -> torch.optim.Optimizer:
    """AdamW over the policy's named parameter groups (``policy``, ``value``, ``stop``), each with its
    own learning rate; the groups carry their names, so nothing addresses them by position."""
    lrs = group_lrs(cfg)
    groups = [
        {"name": name, "params": params, "lr": lrs[name]}
        for name, params in policy.parameter_groups().items()
    ]
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def param_group(opt: torch.optim.Optimizer, name: str) -> dict[str, Any]:
    """The optimizer's parameter group called ``name``."""
    for group in opt.param_groups:
        if group.get("name") == name:
            return group
    raise KeyError(f"optimizer has no parameter group {name!r}")


def _warmup_factor(opt: torch.optim.Optimizer, warmup: int) -> float:
    """Linear lr ramp for the policy group, counted from the optimizer's own step (so resume keeps it)."""
    if warmup <= 0:
        return 1.0
    params = param_group(opt, "policy")["params"]
    state = opt.state.get(params[0], {}) if params else {}
    done = int(state["step"]) if "step" in state else 0
    return min(1.0, (done + 1) / warmup)


def update_policy(
    policy: LastR1Policy,
    opt: torch.optim.Optimizer,
    cfg: RLConfig,
    old: OldTerms,
    out: ActionOutput,
    it: int,
    anchor: LastR1Policy | None = None,
    ctx: DistContext = SINGLE,
) -> dict[str, float]:
    """K epochs of minibatch updates; raises FloatingPointError on a non-finite loss or gradient norm.

    ``anchor`` (the frozen starting policy) is needed when ``algo.kl_coef`` or ``algo.stop.kl_coef``
    is > 0. The bad minibatch is not applied, but earlier minibatches of this call already were: the
    caller must roll the policy back to its last good weights. Under torchrun (``ctx``) a minibatch
    is the union of every rank's piece, and each step's gradient that of the mean loss over it.
    """
    algo = get_algorithm(cfg.algo.name)
    n = old.advantages.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + it + 7)  # minibatch order, reproducible
    sums: dict[str, float] = {}
    count = 0
    parts = ctx.agree_min(min(cfg.minibatches, n))  # every rank steps the optimizer equally often
    policy.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for mb in ctx.split(perm, parts):
            batch = PolicyBatch.from_act(out.index(mb))
            lp = policy.log_probs(batch, detach_value=not cfg.value_trains_backbone)
            kl_ref = stop_kl_ref = None
            if anchor is not None:
                with torch.no_grad():
                    ref = anchor.log_probs(batch)
                if cfg.algo.kl_coef > 0:
                    kl_ref = token_kl(lp.action_logp_all, ref.action_logp_all)
                if cfg.algo.stop.kl_coef > 0:
                    stop_kl_ref = stop_kl(lp.stop_logits, ref.stop_logits, batch.stop_temperature)
            new = NewTerms(lp.logp_tokens, lp.logp_stop, lp.mu, lp.value, lp.entropy, kl_ref, stop_kl_ref)
            loss, metrics = algo.loss(new, old.index(mb), cfg.algo)
            weight, finite = ctx.batch_weight(len(mb), bool(torch.isfinite(loss)))  # finite on every rank
            if not finite:
                raise FloatingPointError(f"non-finite loss ({loss.item()}) in the {cfg.algo.name} update")
            opt.zero_grad(set_to_none=True)
            (loss * weight).backward()
            ctx.average_grads(policy.parameters())
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            if not torch.isfinite(grad_norm):
                raise FloatingPointError("non-finite gradient norm in the update")
            ramp = _warmup_factor(opt, cfg.experimental.lr_warmup_updates)
            param_group(opt, "policy")["lr"] = cfg.lr * ramp
            param_group(opt, "stop")["lr"] = cfg.stop_head_lr * ramp
            opt.step()
            metrics["grad_norm"] = float(grad_norm)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
    policy.eval()
    if not all_finite(policy):  # a finite loss and gradient can still overflow a weight
        raise FloatingPointError(f"non-finite weights after the {cfg.algo.name} update")
    return {k: v / count for k, v in sums.items()}


def _rollout_metrics(roll: Rollout, env: VectorEnv) -> dict[str, Any]:
    m: dict[str, Any] = {
        "train_success": float(roll.success.float().mean()),
        "train_return": float(roll.rewards.sum(1).mean()),
        "decisions": roll.num_decisions,
    }
    lat = roll.latent_len[roll.mask].float()
    if lat.numel():
        m["latent_len_mean"] = float(lat.mean())
        for q in (10, 50, 90):
            m[f"latent_len_p{q}"] = float(torch.quantile(lat, q / 100))
    per_episode = roll.episode_latent_len()
    if per_episode.numel():
        m["episode_latent_len_mean"] = float(per_episode.mean())
    for t, task in enumerate(env.tasks):
        sel = roll.task == t
        if sel.any():
            m[f"latent_len/{task.name}"] = float(roll.latent_len[sel][roll.mask[sel]].float().mean())
            m[f"episode_latent_len/{task.name}"] = float(per_episode[sel].mean())
            m[f"train_success/{task.name}"] = float(roll.success[sel].float().mean())
    return m


def _save(
    mgr: CheckpointManager, policy: LastR1Policy, opt: torch.optim.Optimizer, state: dict[str, Any]
) -> Path:
    def write(d: Path) -> None:
        policy.save_pretrained(d / "policy")
        torch.save(opt.state_dict(), d / "optimizer.pt")
        (d / "trainer_state.json").write_text(json.dumps(state, indent=2))

    return mgr.save(state["iteration"], write)


def load_policy(path: str | Path, cfg: RLConfig) -> LastR1Policy:
    """A checkpoint as this RL run acts with it: the run's decode (saved with every checkpoint it
    writes), its backbone run settings if it sets them, and, with ``algo.stop.context``, the stop's
    zero-initialised context readout."""
    return LastR1Policy.from_pretrained(
        path, decode=cfg.decode, stop_context=cfg.algo.stop.context, backbone_run=cfg.backbone_run
    ).eval()


def train_rl(cfg: RLConfig) -> dict[str, Any]:
    """Run (or resume) an RL post-training job; returns the final state and last evaluation.

    ``cfg.out`` is held under an exclusive lock for the whole run (:mod:`lastr1.train.run_dir`).
    Under torchrun every rank calls this; rank 0 holds the lock and writes (``cfg.distributed``)."""
    with session(cfg.distributed) as ctx, ctx.main_lock(cfg.out):
        return _train_rl(cfg, ctx)


def check_eval_episodes(cfg: RLConfig, env: VectorEnv) -> None:
    """Refuse, before the first iteration, more eval episodes than a task has eval initial states."""
    for t, task in enumerate(env.tasks):
        available = env.num_init_states(t, "eval")
        if cfg.eval_episodes_per_task > available:
            raise ValueError(
                f"eval_episodes_per_task={cfg.eval_episodes_per_task}: task {task.name!r} has only "
                f"{available} eval initial states; set eval_episodes_per_task <= {available}"
            )


def _train_rl(cfg: RLConfig, ctx: DistContext = SINGLE) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    # each rank collects whole rounds of its env slots, and a GRPO group stays on one rank
    share = math.lcm(cfg.env.num_envs, cfg.rollouts_per_start)
    ctx.check_share("rollouts_per_iter", cfg.rollouts_per_iter, share, "env.num_envs (x group_size for GRPO)")
    out_dir = Path(cfg.out)
    mgr = CheckpointManager(out_dir / "checkpoints")
    # rank 0 decides (overwrite=true deletes); every rank then loads the same checkpoint
    latest = ctx.on_main(resume_point, out_dir, mgr, cfg.resume, cfg.overwrite)
    changes = ctx.on_main(config_changes, out_dir, cfg, cfg.allow_changes) if latest is not None else {}
    if latest is None and not cfg.checkpoint:
        raise ValueError("checkpoint: give the SFT checkpoint to start RL from (checkpoint=runs/.../final)")
    source = latest / "policy" if latest is not None else Path(cfg.checkpoint)
    policy = ctx.prepare(load_policy(source, cfg))
    anchor = None
    if cfg.algo.kl_coef > 0 or cfg.algo.stop.kl_coef > 0:  # the anchor is RL's start, also after a resume
        if not cfg.checkpoint:
            raise ValueError(
                "algo.kl_coef / algo.stop.kl_coef > 0: give checkpoint=, the starting policy the KL anchors to"
            )
        anchor = load_policy(cfg.checkpoint, cfg).requires_grad_(False)
    opt = make_optimizer(policy, cfg)
    state: dict[str, Any] = {"iteration": 0, "env_steps": 0, "last_eval": None}
    if latest is not None:
        ctx.load_optimizer(policy, opt, load_state(latest / "optimizer.pt"))
        # the loaded groups carry the rates they were saved with; use this config's (the same
        # unless allow_changes let them change), so config.yaml says what the optimizer uses
        for name, lr in group_lrs(cfg).items():
            param_group(opt, name).update(lr=lr, weight_decay=cfg.weight_decay)
        try:
            state = json.loads((latest / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise ValueError(
                f"{latest / 'trainer_state.json'} is unreadable; delete {latest} to resume from the "
                "checkpoint before it, or pass overwrite=true to start over"
            ) from None
        if ctx.is_main:
            print(f"resuming {out_dir} from iteration {state['iteration']} ({latest.name})")
    adv_kind = cfg.advantage_kind
    env = make_env(cfg.env)
    try:
        check_eval_episodes(cfg, env)  # every setting is checked before any iteration is spent
        resume_step = state["iteration"] if latest is not None else None
        if ctx.is_main:
            write_record(out_dir, cfg, changes, state["iteration"])  # the run has started: record it
        logger = MetricsLogger(out_dir, resume_step=resume_step) if ctx.is_main else NullLogger()
    except BaseException:
        env.close()
        raise
    bar = tqdm(
        total=cfg.iterations,
        initial=state["iteration"],
        desc=f"rl {cfg.algo.name}",
        disable=not cfg.progress or not ctx.is_main,
    )
    try:
        if ctx.is_main and cfg.eval_at_start and state["iteration"] == 0 and state["last_eval"] is None:
            state["last_eval"] = _evaluate(cfg, policy, env, out_dir, 0, logger, state)
        while state["iteration"] < cfg.iterations:
            if cfg.max_env_steps and state["env_steps"] >= cfg.max_env_steps:
                break
            it = state["iteration"] + 1
            t0 = time.perf_counter()
            specs, groups = _train_episodes(cfg, env, it)  # the global draw; this rank collects its share
            specs, groups = ctx.shard(specs), ctx.shard(groups)
            gen = torch.Generator().manual_seed(ctx.rank_seed(cfg.seed * 100_003 + it))
            rounds = []
            for s in range(0, len(specs), env.num_envs):
                rounds.append(
                    collect(
                        env,
                        policy,
                        specs[s : s + env.num_envs],
                        mode="sample",
                        success_reward=cfg.algo.success_reward,
                        generator=gen,
                        group=groups[s : s + env.num_envs],
                        pipeline=cfg.pipeline,
                    )
                )
            roll = merge_rollouts(rounds)
            # episodes lost to a dead or stalled env worker (env.vector=ray): counted, never trained on
            env_failures = ctx.sum_int(roll.num_failed)  # every rank's
            roll = roll.completed()
            t_collect = time.perf_counter() - t0
            adv, ret, stop_adv = _advantages(cfg, adv_kind, roll, ctx)
            old = old_terms(roll, adv, ret, stop_adv)
            if cfg.algo.stop.context:  # a fresh readout is centred on this batch's start states, once
                fitted = policy.fit_stop_context_center(roll.out.inputs.index(roll.index[:, 0]))
                if fitted:  # on every rank alike: their centres' mean is the union's
                    ctx.average_buffer(policy.stop_context_center)
            t1 = time.perf_counter()
            ranks = {"ctx": ctx} if ctx.distributed else {}  # one process: the call tests wrap, unchanged
            try:
                upd = ctx.mean_metrics(update_policy(policy, opt, cfg, old, roll.out, it, anchor, **ranks))
            except FloatingPointError as exc:
                good = mgr.latest()
                where = good.name if good else "none yet"
                print(
                    f"stopping: {exc}; the last good checkpoint is kept ({where}), nothing was saved after it"
                )
                state["stopped"] = str(exc)
                # earlier minibatches of this iteration were applied: roll back so `final` is the last good policy
                restore = good / "policy" if good is not None else source
                # load_policy: the starting checkpoint gets the run's (zero) stop context readout too
                policy.load_state_dict(load_policy(restore, cfg).state_dict())
                break
            t_update = time.perf_counter() - t1
            t2 = time.perf_counter()
            diag: dict[str, float] = {}
            if ctx.is_main:  # logged by rank 0 for its share of the rollouts; the others skip the cost
                diag = iteration_diagnostics(  # why the policy does (not) improve: lastr1.train.diagnostics
                    policy,
                    roll,
                    old,
                    cfg.algo,
                    advantage_kind=adv_kind,
                    task_names=[t.name for t in env.tasks],
                    anchor=anchor,
                    detach_value=not cfg.value_trains_backbone,
                    batch_size=-(-roll.num_decisions // cfg.minibatches),  # one update minibatch
                    seed=cfg.seed * 100_003 + it + 11,
                )
            diag["sec_diag"] = time.perf_counter() - t2
            steps = ctx.sum_int(int(roll.env_steps.sum()))  # every rank's
            state["env_steps"] += steps
            state["iteration"] = it
            row = {
                "env_steps": state["env_steps"],
                **_rollout_metrics(ctx.gather_rollout(roll), env),  # rank 0: every rank's episodes
                **upd,
                **diag,
                "env_steps_per_s": steps / max(t_collect, 1e-9),
                "env_failures": env_failures,
                "sec_collect": t_collect,
                "sec_update": t_update,
                "sec_env": sum(r.seconds["env"] for r in rounds),
                "sec_policy": sum(r.seconds["policy"] for r in rounds),
            }
            logger.log(it, row)
            if ctx.is_main and ((cfg.eval_every and it % cfg.eval_every == 0) or it == cfg.iterations):
                state["last_eval"] = _evaluate(cfg, policy, env, out_dir, it, logger, state)
            if ctx.is_main:
                _save(mgr, policy, opt, state)
            bar.update(1)
            bar.set_postfix(success=f"{row['train_success']:.2f}", lat=f"{row.get('latent_len_mean', 0):.1f}")
    finally:
        bar.close()
        env.close()
        logger.close()
    final = out_dir / "final"
    if ctx.is_main:
        policy.save_pretrained(final)
    return ctx.broadcast_object(state)  # rank 0's (it holds the last evaluation); waits for final/


def _evaluate(
    cfg: RLConfig,
    policy: LastR1Policy,
    env: VectorEnv,
    out_dir: Path,
    it: int,
    logger: MetricsLogger,
    state: dict[str, Any],
) -> dict[str, Any]:
    t0 = time.perf_counter()
    videos = out_dir / "evals" / f"videos_{it:05d}" if cfg.eval_videos else None
    res = evaluate(
        policy,
        env,
        cfg.eval_episodes_per_task,
        progress=cfg.progress,
        videos_dir=videos,
        pipeline=cfg.pipeline,
    )
    save_eval(res, eval_file(out_dir, "greedy", it))
    row = {
        "env_steps": state["env_steps"],
        "eval_success": res["success_rate"],
        "eval_latent_len": res["mean_latent_len"],
        "eval_episodes": res["episodes"],
        "sec_eval": time.perf_counter() - t0,
        **{f"eval_success/{k}": v["success_rate"] for k, v in res["per_task"].items()},
        **{f"eval_latent_len/{k}": v["mean_latent_len"] for k, v in res["per_task"].items()},
    }
    if cfg.eval_sampled:
        sampled = evaluate(
            policy,
            env,
            cfg.eval_episodes_per_task,
            progress=cfg.progress,
            mode="sample",
            seed=cfg.seed,
            pipeline=cfg.pipeline,
        )
        save_eval(sampled, eval_file(out_dir, "sample", it))
        row["eval_sampled_success"] = sampled["success_rate"]
        row.update({f"eval_sampled_success/{k}": v["success_rate"] for k, v in sampled["per_task"].items()})
        row.update(
            {
                f"eval_sampled_episode_latent_len/{k}": v["mean_episode_latent_len"]
                for k, v in sampled["per_task"].items()
            }
        )
        row["sec_eval"] = time.perf_counter() - t0
    logger.log(it, row)
    if cfg.progress:
        tqdm.write(f"eval @ iteration {it}:\n{format_table(res)}")
    return {"iteration": it, "success_rate": res["success_rate"], "ci95": res["ci95"]}
