"""Batching of :class:`~lastr1.envs.base.SingleEnv` instances into a :class:`VectorEnv`.

Two modes, one behaviour:

* ``sync``: every slot lives in this process and is stepped in a loop. Best when rendering is
  cheap or the policy forward dominates (no pickling of images).
* ``async``: ``spawn`` subprocesses (fork hangs on GL contexts), one per slot unless
  ``EnvConfig.workers`` groups contiguous slots into fewer, stepped in parallel through pipes. Best
  when simulation + rendering dominate and cores are free.

* ``ray``: the same slots in Ray actors, on this machine or a cluster, with dead or stalled actors
  replaced (:mod:`lastr1.envs.ray_vector`, imported only then).

``step_chunk`` also comes split in two, ``send_chunk(actions, slots)`` / ``recv_chunk()``: async
workers step the sent slots while this process goes on, which is how the rollout collector overlaps
the policy's forward pass for one group of slots with the simulation of another.

Each slot lazily builds one ``SingleEnv`` per task it is asked to run and keeps up to
``max_cached_per_slot`` of them (LIBERO envs are ~2 GB, so it keeps one; Meta-World keeps all).
Episodes end on success (``terminated``) or at the task's ``max_steps`` (``truncated``); a finished
slot is not stepped again and keeps returning its final observation with zero reward until reset.
A slot whose episode was lost with its worker (``ray`` only) is *failed*: it ends, unsuccessful and
truncated, with ``info["failed"]`` set, so consumers can drop the episode instead of learning from it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from lastr1.envs.base import (
    ChunkResult,
    EpisodeSpec,
    InitSet,
    Observation,
    SingleEnv,
    SingleObs,
    StepResult,
    TaskSpec,
    check_action_chunks,
    check_actions,
    check_episodes,
)
from lastr1.envs.config import EnvConfig

SingleEnvFactory = Callable[[TaskSpec, EnvConfig], SingleEnv]


class _Slot:
    """One environment slot: a small LRU cache of per-task simulators plus the episode state."""

    def __init__(self, cfg: EnvConfig, tasks: list[TaskSpec], factory: SingleEnvFactory, max_cached: int):
        self.cfg, self.tasks, self.factory, self.max_cached = cfg, tasks, factory, max(1, max_cached)
        self.envs: OrderedDict[int, SingleEnv] = OrderedDict()
        self.current: SingleEnv | None = None
        self.last_obs: SingleObs | None = None
        self.expert: Any = None  # the scripted expert bound to ``expert_env``, built on first request
        self.expert_env: SingleEnv | None = None
        self.expert_fresh = False  # the episode restarted since the expert last acted

    def env_for(self, task: int) -> SingleEnv:
        if task in self.envs:
            self.envs.move_to_end(task)
            return self.envs[task]
        while len(self.envs) >= self.max_cached:
            _, old = self.envs.popitem(last=False)
            old.close()
        env = self.factory(self.tasks[task], self.cfg)
        self.envs[task] = env
        return env

    def reset(self, task: int, init_set: InitSet, init_index: int) -> SingleObs:
        self.current = self.env_for(task)
        self.last_obs = self.current.reset(init_set, init_index)
        self.expert_fresh = True
        return self.last_obs

    def step(self, action: np.ndarray) -> tuple[SingleObs, float, bool]:
        if self.current is None:
            raise RuntimeError("step() before reset(): call reset(episodes) first")
        self.last_obs, reward, success = self.current.step(action)
        return self.last_obs, reward, success

    def step_chunk(
        self, actions: np.ndarray, budget: int, record: bool
    ) -> tuple[SingleObs, float, bool, int, list[np.ndarray]]:
        """Run ``actions`` (C, 7) open loop until success, ``budget`` steps or the chunk's end.

        Only the observation after the last executed step is rendered (every step's, when
        ``record``): the simulator state, and so the episode, is the same as stepping one by one.
        Returns (obs, summed reward, success, steps executed, agent-view frames if ``record``).
        """
        env = self.current
        if env is None:
            raise RuntimeError("step_chunk() before reset(): call reset(episodes) first")
        n = min(len(actions), budget)
        reward, success, taken = 0.0, False, 0
        frames: list[np.ndarray] = []
        obs = self.last_obs
        for c in range(n):
            obs, r, success = env.step(actions[c], render=record or c == n - 1)
            reward, taken = reward + r, taken + 1
            if record and obs.images is not None:
                frames.append(obs.images[0])
            if success:
                break
        if obs is None or obs.images is None:
            obs = env.observe()
        self.last_obs = obs
        return obs, reward, success, taken, frames

    def expert_action(self) -> np.ndarray:
        """The backend's scripted expert's next action for this slot's episode (runs where the simulator
        lives, so experts that read simulator internals work in async workers too)."""
        if self.current is None or self.last_obs is None:
            raise RuntimeError("expert_action() before reset(): call reset(episodes) first")
        if self.expert_env is not self.current:  # another task (or a rebuilt simulator)
            from lastr1.envs.experts import make_expert

            self.expert = make_expert(self.cfg.backend, self.current.task, self.current)
            self.expert_env = self.current
        if self.expert_fresh:
            self.expert.reset()
            self.expert_fresh = False
        return np.asarray(self.expert.act(self.last_obs), dtype=np.float64)

    def num_init_states(self, task: int, init_set: InitSet) -> int:
        return self.env_for(task).num_init_states(init_set)

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


def _worker(
    conn: Connection,
    cfg: EnvConfig,
    tasks: list[TaskSpec],
    factory: SingleEnvFactory,
    cache: int,
    num_slots: int,
) -> None:
    """Subprocess loop: run ``(method, [(local slot, args), ...])`` requests until told to close.

    One reply per request, in order, so the parent may send several requests before reading.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    slots = [_Slot(cfg, tasks, factory, cache) for _ in range(num_slots)]
    try:
        while True:
            method, calls = conn.recv()
            if method == "close":
                for slot in slots:
                    slot.close()
                conn.send(("ok", None))
                break
            try:
                conn.send(("ok", [getattr(slots[local], method)(*args) for local, args in calls]))
            except Exception as exc:  # report to the parent with the worker's traceback
                conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    except (EOFError, KeyboardInterrupt):
        for slot in slots:
            slot.close()
    finally:
        conn.close()


class _Remote:
    """Parent-side handle to a spawned subprocess that runs the slots ``slots`` (global indices)."""

    def __init__(
        self,
        ctx: Any,
        cfg: EnvConfig,
        tasks: list[TaskSpec],
        factory: SingleEnvFactory,
        cache: int,
        slots: list[int],
    ):
        self.slots = slots
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker, args=(child, cfg, tasks, factory, cache, len(slots)), daemon=True
        )
        self.proc.start()
        child.close()

    def send(self, method: str, calls: list[tuple[int, tuple[Any, ...]]]) -> None:
        self.conn.send((method, calls))

    def recv(self) -> Any:
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"env worker {self.proc.pid} died (exit code {self.proc.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"env worker failed: {payload}")
        return payload

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.send("close", [])
                self.recv()
            except (RuntimeError, BrokenPipeError, OSError):
                pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


@dataclass
class _Request:
    """Calls sent to the slots ``which`` and not yet read back (see :meth:`BatchedEnv._send`)."""

    which: list[int]
    remotes: list[int] = field(default_factory=list)  # async: the workers written to, in order
    results: list[Any] | None = None  # sync: computed at send time


class BatchedEnv:
    """The :class:`VectorEnv` implementation shared by all backends."""

    def __init__(
        self,
        cfg: EnvConfig,
        tasks: list[TaskSpec],
        factory: SingleEnvFactory,
        max_cached_per_slot: int,
    ):
        if not tasks:
            raise ValueError("env.tasks resolved to no task; name at least one (`lastr1 envs` lists them)")
        self.cfg = cfg
        self.tasks = list(tasks)
        self.num_envs = cfg.num_envs
        self.image_size = cfg.image_size
        self.num_views = 2 if cfg.wrist_view else 1
        self._async = cfg.vector == "async"
        self._start_workers(factory, max_cached_per_slot)
        self._task = np.zeros(self.num_envs, dtype=np.int64)
        self._max_steps = np.zeros(self.num_envs, dtype=np.int64)
        self._steps = np.zeros(self.num_envs, dtype=np.int64)
        self._done = np.ones(self.num_envs, dtype=bool)
        self._success = np.zeros(self.num_envs, dtype=bool)
        self._failed = np.zeros(self.num_envs, dtype=bool)  # episode lost with its worker (ray)
        self._last: list[SingleObs | None] = [None] * self.num_envs
        self._pending: deque[tuple[_Request, int]] = deque()  # chunks sent, not yet received (record)
        self._closed = False

    def _start_workers(self, factory: SingleEnvFactory, cache: int) -> None:
        """Create the slots: in this process (sync) or in spawned subprocesses (async)."""
        if self._async:
            ctx = mp.get_context("spawn")
            workers = self.cfg.workers or self.num_envs
            blocks = np.array_split(np.arange(self.num_envs), workers)  # contiguous slots per worker
            self._remotes = [_Remote(ctx, self.cfg, self.tasks, factory, cache, b.tolist()) for b in blocks]
            # slot -> (worker, index inside the worker)
            self._where = [(w, j) for w, b in enumerate(blocks) for j in range(len(b))]
        else:
            self._slots = [_Slot(self.cfg, self.tasks, factory, cache) for _ in range(self.num_envs)]

    def _mark_failed(self, slots: list[int]) -> None:
        """End the episodes of ``slots`` as lost (their worker died): done, unsuccessful, flagged."""
        self._failed[slots] = True
        self._done[slots] = True

    # -- dispatch -------------------------------------------------------------------------------
    def _send(self, method: str, per_slot_args: list[tuple[Any, ...]], which: list[int]) -> _Request:
        """Start ``method`` on the slots in ``which``: async workers run it while this process goes on;
        sync slots run it now. Read the results with :meth:`_recv`, in the order of the sends."""
        req = _Request(list(which))
        if not self._async:
            req.results = [
                getattr(self._slots[i], method)(*args) for i, args in zip(which, per_slot_args, strict=True)
            ]
            return req
        calls: dict[int, list[tuple[int, tuple[Any, ...]]]] = {}
        for i, args in zip(which, per_slot_args, strict=True):
            w, local = self._where[i]
            calls.setdefault(w, []).append((local, args))
        for w, worker_calls in calls.items():
            self._remotes[w].send(method, worker_calls)
        req.remotes = list(calls)
        return req

    def _recv(self, req: _Request) -> list[Any]:
        """The results of ``req`` in the order of its slots (blocks until its workers answer)."""
        if req.results is not None:
            return req.results
        by_slot: dict[int, Any] = {}
        for w in req.remotes:
            slots = [i for i in req.which if self._where[i][0] == w]
            by_slot.update(zip(slots, self._remotes[w].recv(), strict=True))
        return [by_slot[i] for i in req.which]

    def _call_all(self, method: str, per_slot_args: list[tuple[Any, ...]], which: list[int]) -> list[Any]:
        """Call ``method`` on the slots in ``which``; async workers run concurrently."""
        if self._pending:
            raise RuntimeError(
                f"{method}() while {len(self._pending)} action chunk(s) are in flight: "
                "call recv_chunk() for every send_chunk() first"
            )
        return self._recv(self._send(method, per_slot_args, which))

    # -- VectorEnv API --------------------------------------------------------------------------
    def num_init_states(self, task: int, init_set: InitSet) -> int:
        if not 0 <= task < len(self.tasks):
            raise ValueError(f"task index {task} out of range: this env has {len(self.tasks)} tasks")
        return int(self._call_all("num_init_states", [(task, init_set)], [0])[0])

    def reset(self, episodes: list[EpisodeSpec]) -> Observation:
        check_episodes(episodes, self.num_envs, len(self.tasks))
        args = [(e.task, e.init_set, e.init_index) for e in episodes]
        obs = self._call_all("reset", args, list(range(self.num_envs)))
        self._task[:] = [e.task for e in episodes]
        self._max_steps[:] = [e.max_steps or self.tasks[e.task].max_steps for e in episodes]
        self._steps[:] = 0
        self._done[:] = False
        self._success[:] = False
        self._failed[:] = False
        self._last = list(obs)
        return self._batch(self._last)

    def step(self, actions: np.ndarray) -> StepResult:
        acts = check_actions(actions, self.num_envs)
        active = self._active()
        reward = np.zeros(self.num_envs, dtype=np.float32)
        results = self._call_all("step", [(acts[i],) for i in active], active)
        for i, (obs, rew, success) in zip(active, results, strict=True):
            self._last[i] = obs
            reward[i] = rew
            self._steps[i] += 1
            self._success[i] |= bool(success)
        terminated, truncated, info = self._end_of_step(active)
        return StepResult(self._batch(self._last), reward, terminated, truncated, info)

    def step_chunk(self, actions: np.ndarray, record: int = 0) -> ChunkResult:
        """Run one ``(N, C, 7)`` action chunk per live slot (see :meth:`_Slot.step_chunk`)."""
        if self._pending:
            raise RuntimeError("step_chunk() while chunks are in flight: call recv_chunk() first")
        self.send_chunk(actions, record=record)
        return self.recv_chunk()

    def send_chunk(self, actions: np.ndarray, slots: Any = None, record: int = 0) -> None:
        """Start one ``(N, C, 7)`` action chunk on ``slots`` (default: every live slot); rows of other
        slots are ignored. Async workers step while the caller goes on (e.g. the policy decides for
        other slots); :meth:`recv_chunk` returns the results, oldest send first. Failed slots (their
        episode was lost with a worker since the caller last looked) are skipped, not refused: the
        result reports them ended with ``info["failed"]``."""
        acts = check_action_chunks(actions, self.num_envs)
        busy = {i for req, _ in self._pending for i in req.which}
        which = self._active() if slots is None else [int(i) for i in slots]
        which = [i for i in which if not (0 <= i < self.num_envs and self._failed[i])]
        bad = [i for i in which if not 0 <= i < self.num_envs or self._done[i] or i in busy]
        if bad:
            raise ValueError(
                f"send_chunk slots {bad} are out of range, done, or already have a chunk in flight; "
                "send to live slots only, once per recv_chunk()"
            )
        budget = self._max_steps - self._steps
        args = [(acts[i], int(budget[i]), i < record) for i in which]
        self._pending.append((self._send("step_chunk", args, which), record))

    def recv_chunk(self) -> ChunkResult:
        """Wait for the oldest chunk in flight; the result covers all N slots, with ``info["active"]``
        marking the slots it stepped (rewards, ``chunk_steps`` and frames are zero/empty elsewhere)."""
        if not self._pending:
            raise RuntimeError("recv_chunk() without a chunk in flight: call send_chunk() first")
        req, record = self._pending.popleft()
        reward = np.zeros(self.num_envs, dtype=np.float32)
        chunk_steps = np.zeros(self.num_envs, dtype=np.int64)
        frames: list[list[np.ndarray]] = [[] for _ in range(min(record, self.num_envs))]
        for i, (obs, rew, success, taken, slot_frames) in zip(req.which, self._recv(req), strict=True):
            self._last[i] = obs
            reward[i] = rew
            chunk_steps[i] = taken
            self._steps[i] += taken
            self._success[i] |= bool(success)
            if i < record:
                frames[i] = slot_frames
        terminated, truncated, info = self._end_of_step(req.which)
        info["chunk_steps"] = chunk_steps
        return ChunkResult(self._batch(self._last), reward, terminated, truncated, info, frames=frames)

    def _active(self) -> list[int]:
        return [i for i in range(self.num_envs) if not self._done[i]]

    def _end_of_step(self, active: list[int]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Episode-end flags after a step of the ``active`` slots; marks finished slots done.
        A failed slot (episode lost with its worker) is truncated, and flagged in ``info["failed"]``."""
        terminated = self._success.copy()
        truncated = ~terminated & ((self._steps >= self._max_steps) | self._failed)
        was_active = np.zeros(self.num_envs, dtype=bool)
        was_active[active] = True
        self._done |= terminated | truncated
        info = {
            "success": self._success.copy(),
            "active": was_active,
            "steps": self._steps.copy(),
            "failed": self._failed.copy(),
        }
        return terminated, truncated, info

    def expert_actions(self, slots: np.ndarray | list[int]) -> np.ndarray:
        """``(len(slots), 7)`` actions of the backend's scripted experts for those slots' episodes."""
        which = [int(i) for i in slots]
        return np.stack(self._call_all("expert_action", [() for _ in which], which))

    @property
    def done(self) -> np.ndarray:
        """Which slots have finished their episode (copy)."""
        return self._done.copy()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._async:
            for remote in self._remotes:
                remote.close()
        else:
            for slot in self._slots:
                slot.close()

    def __enter__(self) -> BatchedEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _batch(self, items: list[SingleObs | None]) -> Observation:
        obs = [o for o in items if o is not None]
        if len(obs) != len(items):
            raise RuntimeError("some env slots were never reset")
        return Observation(
            images=np.stack([o.images for o in obs]),
            proprio=np.stack([o.proprio for o in obs]).astype(np.float32),
            instruction=[self.tasks[t].instruction for t in self._task],
            privileged=np.stack([o.privileged for o in obs]).astype(np.float32),
            task=self._task.copy(),
            slot=np.arange(self.num_envs, dtype=np.int64),
        )


def build_vector_env(
    cfg: EnvConfig, tasks: list[TaskSpec], factory: SingleEnvFactory, max_cached_per_slot: int
) -> BatchedEnv:
    """Batch ``cfg.num_envs`` slots of ``factory``-made simulators (see module docstring)."""
    if cfg.vector == "ray":  # imported here so that only env.vector=ray needs ray installed
        from lastr1.envs.ray_vector import RayBatchedEnv

        return RayBatchedEnv(cfg, tasks, factory, max_cached_per_slot)
    return BatchedEnv(cfg, tasks, factory, max_cached_per_slot)
