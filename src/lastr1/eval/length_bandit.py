"""Can LAPO's stop give different tasks different reasoning lengths? A controlled test of the learner.

Why: in the Meta-World demo the stop shortens every task alike. That is the right answer when no
task does better with long reasoning (what ``benchmarks/decoding_probe.py`` measures there), so the
demo alone cannot tell "the learner cannot separate tasks" from "nothing to separate". This replaces
the simulator by a *length bandit* with a known answer: each task has a success probability per stop
candidate (e.g. one task succeeds more often when it reasons short, another when it reasons long),
one sampled decision per episode on real first observations, and the trainer's own update
(:func:`lastr1.train.rl.update_policy`: the LAPO loss, its optimizer groups, the stop lr, the KL anchor).
Everything the stop learns here it learns from the same loss and the same gradients as in RL.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lastr1.algos import OldTerms
from lastr1.algos.advantages import whiten
from lastr1.envs import EnvConfig, make_env
from lastr1.envs.base import EpisodeSpec, Observation
from lastr1.models.latent import choose_stop
from lastr1.models.policy import LastR1Policy
from lastr1.models.policy_io import PolicyInputs
from lastr1.train import rl


@dataclass
class LengthBandit:
    """``success[t, j]``: probability that an episode of task ``t`` succeeds when it stops at candidate ``j``."""

    success: torch.Tensor  # (num_tasks, num_candidates) in [0, 1]

    def __post_init__(self) -> None:
        if self.success.ndim != 2 or not ((self.success >= 0) & (self.success <= 1)).all():
            raise ValueError(
                "LengthBandit.success must be a (num_tasks, num_candidates) tensor of probabilities"
            )

    @staticmethod
    def linear(ends: list[tuple[float, float]], num_candidates: int) -> LengthBandit:
        """Per task ``(p at the shortest candidate, p at the longest)``, linear in between."""
        w = torch.linspace(0, 1, num_candidates)
        rows = [lo + (hi - lo) * w for lo, hi in ends]
        return LengthBandit(torch.stack(rows).float())


def first_observations(env_cfg: EnvConfig, init_set: str, per_task: int) -> Observation:
    """The first observation of starts ``0 … per_task−1`` of every task of ``env_cfg.tasks`` from
    ``init_set``, task-major per start (one in-process env slot per task)."""
    cfg = dataclasses.replace(env_cfg, num_envs=len(env_cfg.tasks), vector="sync", workers=0)
    with make_env(cfg) as env:
        batches = [
            env.reset([EpisodeSpec(t, init_set, i) for t in range(env.num_envs)]) for i in range(per_task)
        ]
    return Observation.stack(batches)


def length_summary(policy: LastR1Policy, inputs: PolicyInputs, task: torch.Tensor, num_tasks: int) -> dict:
    """Per task: the expected reasoning length of the *sampled* stop and the greedy rule's mean length."""
    lengths = torch.tensor(policy.layout.candidate_lengths(), dtype=torch.float32)
    with torch.no_grad():
        logits = policy.act(inputs, mode="greedy").stop_logits
    probs = torch.softmax(logits / policy.decode.stop_temperature, dim=-1)
    expected = probs @ lengths
    index, _ = choose_stop(
        logits, "greedy", 1.0, policy.decode.eval_stop_threshold, greedy_rule=policy.decode.greedy_stop
    )
    greedy = lengths[index]
    rows = [task == t for t in range(num_tasks)]
    return {
        "expected_len": [float(expected[r].mean()) for r in rows],
        "greedy_len": [float(greedy[r].mean()) for r in rows],
        "stop_probs": [probs[r].mean(0).tolist() for r in rows],
    }


def train_stop_on_bandit(
    policy: LastR1Policy,
    cfg: rl.RLConfig,
    bandit: LengthBandit,
    pool: PolicyInputs,
    pool_task: torch.Tensor,
    iterations: int,
    per_task: int,
    eval_inputs: PolicyInputs,
    eval_task: torch.Tensor,
    anchor: LastR1Policy | None = None,
) -> list[dict]:
    """``iterations`` of: draw ``per_task`` first observations per task from ``pool``, sample act, draw
    success from ``bandit`` at the chosen stop, whiten the rewards, run the trainer's update. Load the
    policy with :func:`lastr1.train.rl.load_policy` so it has ``cfg``'s decode and stop readout.

    Returns one :func:`length_summary` on ``eval_inputs`` per iteration (index 0 = before training),
    each with the batch's mean success. The policy is trained in place.
    """
    num_tasks = bandit.success.shape[0]
    if bandit.success.shape[1] != policy.layout.num_candidates:
        raise ValueError(
            f"LengthBandit has {bandit.success.shape[1]} candidates but the policy has "
            f"{policy.layout.num_candidates} (lengths {policy.layout.candidate_lengths()})"
        )
    if int(pool_task.max()) >= num_tasks:
        raise ValueError(
            f"pool task ids go up to {int(pool_task.max())} but the bandit has {num_tasks} tasks"
        )
    if (cfg.algo.kl_coef > 0 or cfg.algo.stop.kl_coef > 0) and anchor is None:
        raise ValueError("algo.kl_coef / algo.stop.kl_coef > 0 needs the frozen starting policy as anchor")
    if cfg.algo.stop.context:  # centred on the pool's start states, as train_rl centres on its first batch
        policy.fit_stop_context_center(pool)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = rl.make_optimizer(policy, cfg)
    history = [{**length_summary(policy, eval_inputs, eval_task, num_tasks), "success": float("nan")}]
    for it in range(1, iterations + 1):
        rows = []
        for t in range(num_tasks):
            idx = torch.nonzero(pool_task == t).squeeze(1)
            rows.append(idx[torch.randint(len(idx), (per_task,), generator=gen)])
        pick = torch.cat(rows)
        with torch.no_grad():
            out = policy.act(pool.index(pick), mode="sample", generator=gen)
        p = bandit.success[pool_task[pick], out.stop_index]
        reward = (torch.rand(p.shape, generator=gen) < p).float()
        mask = torch.ones_like(reward, dtype=torch.bool)
        groups = pool_task[pick] if cfg.experimental.whiten_per_task else None
        adv = whiten(reward, mask, groups)
        ret = reward * cfg.algo.success_reward
        old = OldTerms(adv, ret, out.value, out.logp_tokens, out.logp_stop, out.latents, out.latent_mask)
        rl.update_policy(policy, opt, cfg, old, out, it, anchor)
        history.append(
            {**length_summary(policy, eval_inputs, eval_task, num_tasks), "success": float(reward.mean())}
        )
    return history
