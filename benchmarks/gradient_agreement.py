"""How noisy is the policy gradient at a given rollout budget? Signal and noise per episode.

Why: an RL update is only as good as its gradient estimate. This collects ``--episodes`` sampled
episodes from a checkpoint (on ``train`` starts, as RL does) and computes each episode's own
policy-loss gradient ``x_i``. Per parameter group it estimates, without bias,

    signal² = ‖E x‖²  = (‖Σ x_i‖² − Σ ‖x_i‖²) / (N (N − 1))
    noise²  = tr Cov x = (Σ ‖x_i‖² − ‖Σ x_i‖² / N) / (N − 1)

so a batch of ``n`` episodes estimates the gradient with signal-to-noise ``n · signal² / noise²``,
and two independent batches of ``n`` agree (expected cosine) about ``n r / (n r + 1)`` with
``r = signal² / noise²``. The table gives ``n`` for agreement 0.5 (``1 / r``). A negative signal²
estimate means the noise hides the signal entirely at this ``N``.

Advantages are each episode's success minus the mean success of the *other* episodes of its task
(leave-one-out, so the baseline adds no bias), given to every decision of the episode; the loss is
the algorithm's clipped surrogate at ratio 1 with the value loss off, i.e. the policy gradient of
the first minibatch of an update.

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/gradient_agreement.py \\
        --checkpoint runs/demo-default/sft/final --episodes 64
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from tqdm import tqdm

from lastr1.algos import AlgoConfig, NewTerms, get_algorithm
from lastr1.envs import EnvConfig, EpisodeSpec, make_env
from lastr1.models.policy import LastR1Policy
from lastr1.models.policy_io import PolicyBatch
from lastr1.rollout.collector import Rollout, collect, merge_rollouts
from lastr1.train.rl import _index_terms, _old_terms


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="policy folder (e.g. an SFT checkpoint)")
    p.add_argument("--tasks", default="reach-v3,button-press-topdown-v3,drawer-open-v3,drawer-close-v3")
    p.add_argument("--episodes", type=int, default=64, help="episodes collected (a multiple of 2 × tasks)")
    p.add_argument("--algo", default="lapo", choices=["lapo", "ppo_action", "grpo_action"])
    p.add_argument("--action-temperature", type=float, default=1.0)
    p.add_argument("--stop-temperature", type=float, default=1.6)
    p.add_argument("--placement-scale", type=float, default=0.3)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def _collect(a: argparse.Namespace, policy: LastR1Policy) -> Rollout:
    tasks = a.tasks.split(",")
    if a.episodes < 2 * len(tasks) or a.episodes % len(tasks):
        raise SystemExit(
            f"--episodes={a.episodes} must be a multiple of the {len(tasks)} tasks, at least 2 each"
        )
    env_cfg = EnvConfig(
        backend="metaworld",
        tasks=tasks,
        num_envs=len(tasks),
        image_size=a.image_size,
        max_steps=a.max_steps,
        placement_scale=a.placement_scale,
    )
    rng = np.random.default_rng(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    rounds = []
    with make_env(env_cfg) as env:
        for _ in tqdm(range(a.episodes // len(tasks)), desc="collect", unit="round"):
            specs = [
                EpisodeSpec(t, "train", int(rng.integers(env.num_init_states(t, "train"))))
                for t in range(len(tasks))
            ]
            rounds.append(collect(env, policy, specs, mode="sample", generator=gen))
    return merge_rollouts(rounds)


def _group(name: str) -> str:
    return name.split(".")[0]


def main() -> None:
    a = _args()
    torch.set_num_threads(1)
    policy = LastR1Policy.from_pretrained(a.checkpoint).eval()
    policy.config.action_temperature = a.action_temperature
    policy.config.stop_temperature = a.stop_temperature
    roll = _collect(a, policy)
    success = roll.success.float()
    adv_ep = torch.zeros_like(success)
    for t in roll.task.unique():
        sel = roll.task == t
        k = int(sel.sum())
        if k > 1:  # leave-one-out task baseline
            adv_ep[sel] = success[sel] - (success[sel].sum() - success[sel]) / (k - 1)
    adv = adv_ep[:, None] * roll.mask
    old = _old_terms(roll, adv, adv)
    algo, cfg = get_algorithm(a.algo), AlgoConfig(name=a.algo, value_coef=0.0)
    n_eps = roll.index.shape[0]
    sums: dict[str, torch.Tensor] = {}  # Σ x_i per group
    sq: dict[str, float] = {}  # Σ ‖x_i‖² per group
    for ep in tqdm(range(n_eps), desc="per-episode gradients", unit="episode"):
        rows = roll.index[ep][roll.mask[ep]]
        policy.zero_grad(set_to_none=True)
        lp = policy.log_probs(PolicyBatch.from_act(roll.out.index(rows)))
        new = NewTerms(lp.logp_tokens, lp.logp_stop, lp.mu, lp.value, lp.entropy)
        loss, _ = algo.loss(new, _index_terms(old, rows), cfg)
        (loss * len(rows)).backward()  # the episode's summed contribution to a batch gradient
        parts: dict[str, list[torch.Tensor]] = {}
        for name, p in policy.named_parameters():
            if p.grad is not None and not name.startswith("value_head"):
                parts.setdefault(_group(name), []).append(p.grad.flatten())
        flat = {k: torch.cat(v).double() for k, v in parts.items()}
        flat["all"] = torch.cat(list(flat.values()))
        for k, x in flat.items():
            sums[k] = sums.get(k, torch.zeros_like(x)) + x
            sq[k] = sq.get(k, 0.0) + float(x @ x)
    sizes = {k: v.numel() for k, v in sums.items()}
    per_task = {
        name: float(success[roll.task == t].mean())
        for t, name in enumerate(a.tasks.split(","))
        if (roll.task == t).any()
    }
    print(
        f"\n{a.algo} policy gradient from {n_eps} sampled episodes (success {success.mean():.1%}: "
        + ", ".join(f"{k} {v:.0%}" for k, v in per_task.items())
        + "); per episode: signal² = ‖E x‖², noise² = tr Cov x"
    )
    print(
        f"{'parameter group':18s} {'params':>9s} {'signal²/noise²':>15s} {'episodes for agreement 0.5':>27s}"
    )
    rows_out = []
    for k, total in sums.items():
        s2 = (float(total @ total) - sq[k]) / (n_eps * (n_eps - 1))
        n2 = (sq[k] - float(total @ total) / n_eps) / (n_eps - 1)
        rows_out.append((k, s2 / n2 if n2 > 0 else float("nan")))
    for k, r in sorted(rows_out, key=lambda kv: -kv[1]):
        need = f"{1 / r:.0f}" if r > 0 else "noise hides it"
        print(f"{k:18s} {sizes[k]:9d} {r:15.4f} {need:>27s}")


if __name__ == "__main__":
    main()
