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

``--group-size G > 1`` runs ``G`` episodes from each start (GRPO's groups) and uses the other
members of the episode's group as its baseline. Episodes of one group are not independent, so the
estimator then treats each group's summed gradient as one sample and divides its signal²/noise² by
``G``: the table is per episode of budget either way, so the two baselines compare directly.

The episodes are sampled with the checkpoint's own decode (its ``decode.json``) with ``decode.*``
overrides on top; here the demo RL's rollout decode on its SFT checkpoint::

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/gradient_agreement.py \\
        --checkpoint runs/demo/sft/final --episodes 64 [--group-size 8] \\
        decode.action_temperature=0.5 decode.stop_scope=episode
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
from lastr1.config import ConfigError
from lastr1.envs import EnvConfig, EpisodeSpec, make_env
from lastr1.models.decode import DecodeConfig, with_overrides
from lastr1.models.policy import LastR1Policy
from lastr1.models.policy_io import PolicyBatch
from lastr1.rollout.collector import Rollout, collect, merge_rollouts
from lastr1.train.rl import old_terms


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="policy folder (e.g. an SFT checkpoint)")
    p.add_argument("--tasks", default="reach-v3,button-press-topdown-v3,drawer-open-v3,drawer-close-v3")
    p.add_argument("--episodes", type=int, default=64, help="episodes collected (a multiple of 2 × tasks)")
    p.add_argument("--algo", default="lapo", choices=["lapo", "ppo_action", "grpo_action"])
    p.add_argument("--placement-scale", type=float, default=0.3)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-size", type=int, default=1, help="episodes per start (1: task baseline)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="decode.key=value",
        help="decode settings over the checkpoint's decode.json (e.g. decode.action_temperature=0.5)",
    )
    return p.parse_args()


def checkpoint_decode(policy: LastR1Policy, overrides: list[str]) -> DecodeConfig:
    """The checkpoint's own decode (``policy.decode``) with the ``decode.*`` overrides on top."""
    try:
        return with_overrides(policy.decode, overrides)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


def _collect(a: argparse.Namespace, policy: LastR1Policy, decode: DecodeConfig) -> Rollout:
    tasks = a.tasks.split(",")
    g = a.group_size
    if g < 1 or a.episodes % (g * len(tasks)) or a.episodes // g < 2 * len(tasks):
        raise SystemExit(
            f"--episodes={a.episodes} must be a multiple of --group-size={g} × {len(tasks)} tasks, "
            "with at least 2 starts per task"
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
        specs = []
        for start in range(a.episodes // g):  # task round-robin, each start repeated g times
            t = start % len(tasks)
            specs += [EpisodeSpec(t, "train", int(rng.integers(env.num_init_states(t, "train"))))] * g
        n = env.num_envs
        for r in tqdm(range(0, len(specs), n), desc="collect", unit="round"):
            rounds.append(collect(env, policy, specs[r : r + n], mode="sample", generator=gen, decode=decode))
    return merge_rollouts(rounds)


def _advantages(roll: Rollout, group_size: int) -> torch.Tensor:
    """Per-episode success minus the leave-one-out mean of its task (G = 1) or of its group."""
    success = roll.success.float()
    key = roll.task if group_size == 1 else torch.arange(len(success)) // group_size
    adv = torch.zeros_like(success)
    for k in key.unique():
        sel = key == k
        m = int(sel.sum())
        if m > 1:
            adv[sel] = success[sel] - (success[sel].sum() - success[sel]) / (m - 1)
    return adv


def _group(name: str) -> str:
    return name.split(".")[0]


def main() -> None:
    a = _args()
    torch.set_num_threads(1)
    policy = LastR1Policy.from_pretrained(a.checkpoint).eval()
    roll = _collect(a, policy, checkpoint_decode(policy, a.overrides))
    success = roll.success.float()
    g = a.group_size
    adv = _advantages(roll, g)[:, None] * roll.mask
    old = old_terms(roll, adv, adv)
    algo, cfg = get_algorithm(a.algo), AlgoConfig(name=a.algo, value_coef=0.0)
    n_eps = roll.index.shape[0]
    sums: dict[str, torch.Tensor] = {}  # Σ x_i per parameter group (x_i: one sample's gradient)
    sq: dict[str, float] = {}  # Σ ‖x_i‖² per parameter group
    sample: dict[str, torch.Tensor] = {}  # the current sample (an episode, or a start's group)
    for ep in tqdm(range(n_eps), desc="per-episode gradients", unit="episode"):
        rows = roll.index[ep][roll.mask[ep]]
        policy.zero_grad(set_to_none=True)
        lp = policy.log_probs(PolicyBatch.from_act(roll.out.index(rows)))
        new = NewTerms(lp.logp_tokens, lp.logp_stop, lp.mu, lp.value, lp.entropy)
        loss, _ = algo.loss(new, old.index(rows), cfg)
        (loss * len(rows)).backward()  # the episode's summed contribution to a batch gradient
        parts: dict[str, list[torch.Tensor]] = {}
        for name, p in policy.named_parameters():
            if p.grad is not None and not name.startswith("value_head"):
                parts.setdefault(_group(name), []).append(p.grad.flatten())
        flat = {k: torch.cat(v).double() for k, v in parts.items()}
        flat["all"] = torch.cat(list(flat.values()))
        for k, x in flat.items():
            sample[k] = sample[k] + x if k in sample else x
        if (ep + 1) % g == 0:
            for k, x in sample.items():
                sums[k] = sums.get(k, torch.zeros_like(x)) + x
                sq[k] = sq.get(k, 0.0) + float(x @ x)
            sample = {}
    sizes = {k: v.numel() for k, v in sums.items()}
    per_task = {
        name: float(success[roll.task == t].mean())
        for t, name in enumerate(a.tasks.split(","))
        if (roll.task == t).any()
    }
    print(
        f"\n{a.algo} policy gradient from {n_eps} sampled episodes (success {success.mean():.1%}: "
        + ", ".join(f"{k} {v:.0%}" for k, v in per_task.items())
        + "); "
        + ("per episode" if g == 1 else f"per group of {g} episodes from one start")
        + ": signal² = ‖E x‖², noise² = tr Cov x"
    )
    n_samples = n_eps // g
    print(
        f"{'parameter group':18s} {'params':>9s} {'signal²/noise²':>15s} {'episodes for agreement 0.5':>27s}"
    )
    rows_out = []
    for k, total in sums.items():
        s2 = (float(total @ total) - sq[k]) / (n_samples * (n_samples - 1))
        n2 = (sq[k] - float(total @ total) / n_samples) / (n_samples - 1)
        rows_out.append((k, s2 / n2 / g if n2 > 0 else float("nan")))  # per episode of budget
    for k, r in sorted(rows_out, key=lambda kv: -kv[1]):
        need = f"{1 / r:.0f}" if r > 0 else "noise hides it"
        print(f"{k:18s} {sizes[k]:9d} {r:15.4f} {need:>27s}")


if __name__ == "__main__":
    main()
