"""Batched closed-loop interaction: all N environments step together, one ``policy.act`` per decision.

One *decision* is one action chunk: the policy reasons (latents + stop), emits C actions, and the
environments execute them open loop (fewer if an episode ends inside the chunk) in one
``env.step_chunk`` call, which renders only the observation the next decision reads. The collector
stores everything LAPO needs to recompute log-probs later — the observation, the policy's
:class:`ActionOutput` (latents, stop, action tokens, old log-probs, value) — plus reward and done,
and returns a padded :class:`Rollout`. Finished slots are dropped from the policy batch, so the
forward pass only pays for live episodes. An episode the env reports as failed (``info["failed"]``:
its Ray worker died or stalled) keeps its row but loses its decisions, and :meth:`Rollout.completed`
drops it, so nothing trains on an episode cut short by a crash.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from lastr1.envs.base import EpisodeSpec, Observation, VectorEnv
from lastr1.models.decode import DecodeConfig


class ActingPolicy(Protocol):
    """What the collector needs from a policy (``lastr1.models.policy.LastR1Policy`` satisfies it)."""

    def act(
        self,
        obs: Observation,
        mode: str = "sample",
        generator: torch.Generator | None = None,
        keep_stop: torch.Tensor | None = None,
    ) -> Any: ...


@dataclass
class Rollout:
    """A batch of N episodes as T padded decisions, plus the flat list of valid decisions.

    ``index[n, t]`` is the row of decision t of episode n in the flat ``out`` (``-1`` on
    padding), so per-decision tensors can move between the two layouts.
    """

    out: Any  # ActionOutput (carries the policy inputs), one row per valid decision
    index: torch.Tensor  # (N, T) long
    mask: torch.Tensor  # (N, T) bool
    rewards: torch.Tensor  # (N, T) float
    values: torch.Tensor  # (N, T) float, the value head at acting time
    success: torch.Tensor  # (N,) bool
    env_steps: torch.Tensor  # (N,) env steps taken
    task: torch.Tensor  # (N,) task index
    group: torch.Tensor  # (N,) initial-state group id (same id = same start)
    latent_len: torch.Tensor  # (N, T) chosen reasoning length per decision (0 on padding)
    # (N,) bool: the episode was lost with its env worker (no decisions kept); None = none was
    failed: torch.Tensor | None = None
    frames: list[list[np.ndarray]] = field(default_factory=list)  # per episode, agent-view frames
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.failed is None:
            self.failed = torch.zeros(self.mask.shape[0], dtype=torch.bool)

    @property
    def num_failed(self) -> int:
        """Episodes lost with their env worker (reported by ``env.vector=ray``)."""
        return 0 if self.failed is None else int(self.failed.sum())

    def completed(self) -> Rollout:
        """This rollout without its failed episodes (itself if none failed). Their decisions are
        already gone, so ``out`` and ``index`` stay valid; GRPO groups and success rates then count
        only episodes that ran to their end."""
        if self.failed is None or not bool(self.failed.any()):
            return self
        keep = ~self.failed
        rows = set(keep.nonzero().flatten().tolist())
        return Rollout(
            out=self.out,
            index=self.index[keep],
            mask=self.mask[keep],
            rewards=self.rewards[keep],
            values=self.values[keep],
            success=self.success[keep],
            env_steps=self.env_steps[keep],
            task=self.task[keep],
            group=self.group[keep],
            latent_len=self.latent_len[keep],
            frames=[f for i, f in enumerate(self.frames) if i in rows],
            seconds=dict(self.seconds),
        )

    @property
    def num_decisions(self) -> int:
        return int(self.mask.sum())

    def episode_latent_len(self) -> torch.Tensor:
        """``(N,)`` each episode's mean reasoning length over its decisions (0 for an empty episode).

        Why: a mean over *decisions* weights an episode by its duration, and failures run to the step
        budget, so where the length decides success it reports the failures' length. Averaging per
        episode first weights every episode once (with ``stop_scope="episode"`` it is the length
        the episode chose).
        """
        counts = self.mask.sum(1)
        total = (self.latent_len * self.mask).sum(1).float()
        return torch.where(counts > 0, total / counts.clamp(min=1), torch.zeros_like(total))

    def flat(self, padded: torch.Tensor) -> torch.Tensor:
        """Gather an ``(N, T)`` tensor into the flat decision order."""
        out = torch.empty(self.num_decisions, dtype=padded.dtype)
        out[self.index[self.mask]] = padded[self.mask]
        return out


def _as_numpy_actions(actions: Any) -> np.ndarray:
    return actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)


def collect(
    env: VectorEnv,
    policy: ActingPolicy,
    episodes: list[EpisodeSpec],
    *,
    mode: str = "sample",
    success_reward: float = 5.0,
    generator: torch.Generator | None = None,
    record_frames: int = 0,
    group: list[int] | None = None,
    on_decision: Callable[[int], None] | None = None,
    pipeline: int = 1,
    decode: DecodeConfig | None = None,
) -> Rollout:
    """Run one episode in every slot of ``env`` from ``episodes`` and return the padded rollout.

    Args:
        mode: ``"sample"`` (RL rollouts: sampled stop and actions) or ``"greedy"`` (evaluation).
        success_reward: reward given at the last decision of a successful episode (reference: 5).
        record_frames: keep agent-view frames of the first this-many slots (for videos).
        group: initial-state group id per slot (GRPO); defaults to one group per distinct start.
        on_decision: called with the number of env steps taken after each decision (progress bars).
        pipeline: split the slots into this many groups that take turns: while one group's action
            chunk simulates (in async workers), the policy decides for the next. With
            ``EnvConfig(vector="async", workers=...)`` leaving a core free this hides most of the
            policy's time (``benchmarks/rollout_throughput.py``). The episodes are the same; the
            batches, and so the sampling stream, differ from ``pipeline=1``.
        decode: how the policy decodes (temperatures, stop scope, probes); None = the policy's own
            default (``policy.decode``).
    """
    n = env.num_envs
    if len(episodes) != n:
        raise ValueError(f"collect needs one EpisodeSpec per env slot: got {len(episodes)} for {n} envs")
    if not 1 <= pipeline <= n:
        raise ValueError(f"pipeline={pipeline} must be in [1, num_envs={n}] (1 = no overlap)")
    if callable(getattr(policy, "reset", None)):  # a stateful policy (LaST0's kept reasoning) starts afresh
        policy.reset()  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    obs = env.reset(episodes)
    t_env = time.perf_counter() - t0
    t_policy = 0.0
    done = np.zeros(n, dtype=bool)
    success = np.zeros(n, dtype=bool)
    failed = np.zeros(n, dtype=bool)
    env_steps = np.zeros(n, dtype=np.int64)
    frames: list[list[np.ndarray]] = [[obs.images[i, 0]] for i in range(min(record_frames, n))]
    out_rows: list[Any] = []
    per_slot: list[list[tuple[int, float, int, float]]] = [[] for _ in range(n)]  # (row, reward, len, value)
    row = 0
    # stop_scope "episode": each slot's first stop candidate, kept for the episode (-1: not chosen yet)
    dec = decode or getattr(policy, "decode", None)
    per_episode = getattr(dec, "stop_scope", "decision") == "episode"
    extra = {"decode": decode} if decode is not None else {}
    kept = torch.full((n,), -1, dtype=torch.long)
    in_flight: deque[tuple[np.ndarray, Any, int]] = deque()  # (slots, policy output, first row)

    def decide(slots: np.ndarray) -> None:
        """One batched ``policy.act`` for ``slots``, then start their action chunk."""
        nonlocal t_policy, row
        t1 = time.perf_counter()
        keep = kept[slots] if per_episode and bool((kept[slots] >= 0).all()) else None
        with torch.no_grad():
            if keep is None:
                out = policy.act(obs.select(slots), mode=mode, generator=generator, **extra)
            else:
                out = policy.act(obs.select(slots), mode=mode, generator=generator, keep_stop=keep, **extra)
        t_policy += time.perf_counter() - t1
        if per_episode and keep is None:  # a group's slots start together: all choose now
            kept[slots] = out.stop_index.cpu()
        actions = _as_numpy_actions(out.actions)  # (B, C, 7)
        full = np.zeros((n, *actions.shape[1:]), dtype=np.float64)
        full[slots] = actions
        env.send_chunk(full, slots=slots, record=len(frames))
        in_flight.append((slots, out, row))
        out_rows.append(out)
        row += len(slots)

    # ``pipeline`` groups of slots take turns: the policy decides for one group while the others'
    # chunks run in async workers. With 1 group this is the plain act -> step loop.
    for slots in np.array_split(np.arange(n), pipeline):
        decide(slots)
    while in_flight:
        slots, out, first_row = in_flight.popleft()
        t2 = time.perf_counter()
        res = env.recv_chunk()
        t_env += time.perf_counter() - t2
        env_steps += res.info["chunk_steps"]
        for i in range(len(frames)):
            frames[i].extend(res.frames[i])
        obs = res.obs
        newly_success = res.info["success"] & ~success
        success[slots] = res.info["success"][slots]
        done[slots] = (res.terminated | res.truncated)[slots]
        failed |= res.info.get("failed", False)
        values = (
            out.value.detach().cpu().numpy()
            if getattr(out, "value", None) is not None
            else np.zeros(len(slots))
        )
        lengths = out.latent_len.detach().cpu().numpy()
        for j, i in enumerate(slots):
            r = success_reward if newly_success[i] else 0.0
            per_slot[i].append((first_row + j, r, int(lengths[j]), float(values[j])))
        if on_decision is not None:
            on_decision(int(env_steps.sum()))
        live = slots[~done[slots]]
        if len(live):
            decide(live)
    out_all = type(out_rows[0]).cat(out_rows)
    if failed.any():  # drop the lost episodes' decisions; their rows stay, empty, flagged `failed`
        success[failed] = False
        per_slot = [[] if failed[i] else steps for i, steps in enumerate(per_slot)]
        kept = sorted(r for steps in per_slot for r, *_ in steps)
        renumber = {old: new for new, old in enumerate(kept)}
        per_slot = [[(renumber[r], *rest) for r, *rest in steps] for steps in per_slot]
        out_all = out_all.index(kept)
    t_max = max((len(s) for s in per_slot), default=0)
    index = torch.full((n, t_max), -1, dtype=torch.long)
    rewards = torch.zeros(n, t_max)
    values_t = torch.zeros(n, t_max)
    lat = torch.zeros(n, t_max, dtype=torch.long)
    for i, steps in enumerate(per_slot):
        for t, (r_idx, r, length, v) in enumerate(steps):
            index[i, t], rewards[i, t], lat[i, t], values_t[i, t] = r_idx, r, length, v
    if group is None:
        keys = [(e.task, e.init_set, e.init_index) for e in episodes]
        ids = {k: j for j, k in enumerate(dict.fromkeys(keys))}
        group = [ids[k] for k in keys]
    return Rollout(
        out=out_all,
        index=index,
        mask=index >= 0,
        rewards=rewards,
        values=values_t,
        success=torch.from_numpy(success),
        env_steps=torch.from_numpy(env_steps),
        task=torch.tensor([e.task for e in episodes]),
        group=torch.tensor(group),
        latent_len=lat,
        failed=torch.from_numpy(failed),
        frames=frames,
        seconds={"env": t_env, "policy": t_policy, "total": time.perf_counter() - t0},
    )


def merge_rollouts(parts: list[Rollout]) -> Rollout:
    """Concatenate rollouts of several collection rounds (episodes stacked, decisions re-indexed)."""
    if len(parts) == 1:
        return parts[0]
    t_max = max(p.mask.shape[1] for p in parts)

    def pad(x: torch.Tensor, value: float | int = 0) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, t_max - x.shape[1]), value=value)

    offsets = np.cumsum([0] + [p.num_decisions for p in parts[:-1]])
    index = torch.cat(
        [pad(torch.where(p.mask, p.index + int(o), -1), -1) for p, o in zip(parts, offsets, strict=True)]
    )
    return Rollout(
        out=type(parts[0].out).cat([p.out for p in parts]),
        index=index,
        mask=torch.cat([pad(p.mask, False) for p in parts]),
        rewards=torch.cat([pad(p.rewards) for p in parts]),
        values=torch.cat([pad(p.values) for p in parts]),
        success=torch.cat([p.success for p in parts]),
        env_steps=torch.cat([p.env_steps for p in parts]),
        task=torch.cat([p.task for p in parts]),
        group=torch.cat([p.group for p in parts]),
        latent_len=torch.cat([pad(p.latent_len) for p in parts]),
        failed=torch.cat([p.failed for p in parts]),
        frames=[f for p in parts for f in p.frames],
        seconds={k: sum(p.seconds.get(k, 0.0) for p in parts) for k in parts[0].seconds},
    )
