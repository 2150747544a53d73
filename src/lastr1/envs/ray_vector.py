"""``env.vector=ray``: :class:`~lastr1.envs.vector.BatchedEnv`'s slots in Ray actors.

Why Ray: subprocess workers (``async``) stop at one machine's cores; Ray actors run the same slots on
any node of a cluster, and Ray's object store hands their numpy observations back without an extra
pickling copy. Why a subclass: only the transport differs (``_send``/``_recv``); the episode
bookkeeping, checks and results stay :class:`BatchedEnv`'s, so ``ray`` returns what ``sync`` does
for the same episodes and actions.

Fault tolerance: an actor that dies, or does not answer a call within ``env.ray_timeout_s``, is
killed and replaced by a fresh one. Its live episodes cannot go on (the simulator state died with
it): those slots end unsuccessful with ``info["failed"]`` set, and the rollout collector drops them.
Finished episodes are never lost, since their results are already here. ``reset`` and
``num_init_states`` are pure functions of their arguments, so they are retried on the new actor.

This module imports ``ray``; :func:`~lastr1.envs.vector.build_vector_env` imports it only for
``vector=ray``, so the rest of lastr1 never needs ray installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import ray.exceptions

from lastr1.envs.base import TaskSpec
from lastr1.envs.config import EnvConfig
from lastr1.envs.vector import BatchedEnv, SingleEnvFactory, _Slot

log = logging.getLogger(__name__)

# A private local instance: no dashboard, a small object store (observations are small and are read
# back at once), worker logs kept out of the driver's terminal.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2
# calls that carry an episode: their slots' results are lost with the actor
_EPISODE_CALLS = ("step", "step_chunk", "expert_action")
# calls that are pure functions of their arguments: retried on the replacement actor
_RETRIED_CALLS = ("reset", "num_init_states")
_RETRIES = 2
# starting an actor (a process, imports) is not a stall: it gets its own, longer bound
_START_TIMEOUT_S = 300.0


class EnvActor:
    """The Ray actor: ``num_slots`` :class:`_Slot`\\ s, stepped in turn (one call per request)."""

    def __init__(
        self,
        cfg: EnvConfig,
        tasks: list[TaskSpec],
        factory: SingleEnvFactory,
        cache: int,
        num_slots: int,
        cwd: str,
    ):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        if os.path.isdir(cwd):  # relative paths (env.cache_dir) mean what they mean to the driver
            os.chdir(cwd)
        self.slots = [_Slot(cfg, tasks, factory, cache) for _ in range(num_slots)]

    def call(self, method: str, calls: list[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        """``method`` on each ``(local slot, args)``; one reply for all, in order."""
        return [getattr(self.slots[local], method)(*args) for local, args in calls]

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        for slot in self.slots:
            slot.close()


# we replace actors ourselves (their episodes must be discarded, not silently resumed);
# SPREAD puts them on as many nodes as the cluster has
_RemoteEnvActor = ray.remote(EnvActor).options(
    max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD"
)


@dataclass
class _Worker:
    """Driver-side handle of one actor; ``generation`` counts its replacements."""

    handle: Any
    slots: list[int]  # global slot indices, contiguous
    generation: int = 0
    pid: int = 0


@dataclass
class _Call:
    """One actor's share of a request."""

    worker: int
    generation: int
    ref: Any  # ray.ObjectRef of the list of per-slot results
    slots: list[int]


@dataclass
class _RayRequest:
    """Calls sent to the slots ``which`` and not yet read back (``BatchedEnv._send``'s contract)."""

    which: list[int]
    method: str
    args: dict[int, tuple[Any, ...]]
    deadline: float  # time.monotonic() by which every actor must have answered
    calls: list[_Call] = field(default_factory=list)


class _LocalRay:
    """A local instance an env of this process started: every env on it is a user, and the last one
    to close stops it (an instance the caller started or joined is the caller's to stop)."""

    started_by_env = False
    users = 0


def connect(cfg: EnvConfig) -> bool:
    """Join ``cfg.ray_address``, or start a private local instance when it is empty.

    Reuses a connection the caller already made (``ray.init`` or this function before building
    the env). Returns whether this call started the local instance.
    """
    if ray.is_initialized():
        return False
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, log_to_driver=False)
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private instance reports nothing
    ray.init(
        address="local",  # never attach to a cluster by accident (RAY_ADDRESS, a `ray start` here)
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
    )
    return True


class RayBatchedEnv(BatchedEnv):
    """:class:`BatchedEnv` whose slots live in ``cfg.ray_actors`` Ray actors (module docstring).

    ``restarts`` counts replaced actors and ``failed_episodes`` the episodes they took with them.
    """

    def __init__(
        self, cfg: EnvConfig, tasks: list[TaskSpec], factory: SingleEnvFactory, max_cached_per_slot: int
    ):
        self.restarts = 0
        self.failed_episodes = 0
        self._workers: list[_Worker] = []
        self._holds_local_ray = False
        super().__init__(cfg, tasks, factory, max_cached_per_slot)

    # -- actors -----------------------------------------------------------------------------------
    def _start_workers(self, factory: SingleEnvFactory, cache: int) -> None:
        _LocalRay.started_by_env |= connect(self.cfg)
        self._holds_local_ray = _LocalRay.started_by_env
        _LocalRay.users += self._holds_local_ray
        self._factory, self._cache = factory, cache
        per = self.cfg.envs_per_worker
        blocks = [list(range(w * per, (w + 1) * per)) for w in range(self.cfg.ray_actors)]
        self._workers = self._spawn([(b, 0) for b in blocks])
        self._where = [(w, j) for w in range(len(blocks)) for j in range(per)]

    def _spawn(self, specs: list[tuple[list[int], int]]) -> list[_Worker]:
        """Start one actor per ``(slots, generation)`` and wait until all of them answer."""
        handles = [
            _RemoteEnvActor.remote(self.cfg, self.tasks, self._factory, self._cache, len(s), os.getcwd())
            for s, _ in specs
        ]
        try:
            pids = ray.get([h.pid.remote() for h in handles], timeout=_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"{len(handles)} ray env worker(s) did not start within {_START_TIMEOUT_S:g} s; does the "
                "cluster have a free CPU for each (`ray status`)?"
            ) from None
        return [_Worker(h, s, g, pid) for h, (s, g), pid in zip(handles, specs, pids, strict=True)]

    def _replace(self, w: int, why: str) -> None:
        """Kill actor ``w`` and start a fresh one; its live episodes end as failed."""
        old = self._workers[w]
        with contextlib.suppress(Exception):
            ray.kill(old.handle, no_restart=True)
        self._workers[w] = self._spawn([(old.slots, old.generation + 1)])[0]
        lost = [i for i in old.slots if not self._done[i]]
        self._mark_failed(lost)
        self.restarts += 1
        self.failed_episodes += len(lost)
        log.warning(
            "ray env worker %d (slots %s) %s; replaced it and discarded %d in-flight episode(s) %s",
            w,
            old.slots,
            why,
            len(lost),
            lost,
        )

    # -- transport (BatchedEnv's seam) ------------------------------------------------------------
    def _send(self, method: str, per_slot_args: list[tuple[Any, ...]], which: list[int]) -> _RayRequest:
        req = _RayRequest(
            list(which),
            method,
            dict(zip(which, per_slot_args, strict=True)),
            time.monotonic() + self.cfg.ray_timeout_s,
        )
        by_worker: dict[int, list[int]] = {}
        for i in which:
            if method in _EPISODE_CALLS and self._failed[i]:
                continue  # the episode is gone: answered with a placeholder in _recv
            by_worker.setdefault(self._where[i][0], []).append(i)
        for w, slots in by_worker.items():
            worker = self._workers[w]
            calls = [(self._where[i][1], req.args[i]) for i in slots]
            req.calls.append(_Call(w, worker.generation, worker.handle.call.remote(method, calls), slots))
        return req

    def _recv(self, req: _RayRequest, attempt: int = 0) -> list[Any]:
        """``req``'s results in slot order. Slots of a dead or stalled actor get a placeholder
        (their episode is over), except for pure calls, which are retried on its replacement."""
        results: dict[int, Any] = {}
        live = [c for c in req.calls if c.generation == self._workers[c.worker].generation]
        lost = [c for c in req.calls if c.generation != self._workers[c.worker].generation]
        refs = [c.ref for c in live]
        try:  # the usual case, in one round trip: every actor answers in time
            for c, got in zip(live, ray.get(refs, timeout=self._time_left(req)), strict=True):
                results.update(zip(c.slots, got, strict=True))
            live = []
        except ray.exceptions.RayError:  # a timeout, a dead actor or an env error: sort them out below
            pass
        done: set[Any] = set()
        if live:  # returns early when every actor has answered, or died (an error is an answer)
            done = set(ray.wait(refs, num_returns=len(refs), timeout=self._time_left(req))[0])
        for c in live:
            if c.ref not in done:
                self._replace(c.worker, f"did not answer {req.method} within {self.cfg.ray_timeout_s:g} s")
                lost.append(c)
                continue
            try:
                results.update(zip(c.slots, ray.get(c.ref), strict=True))
            except ray.exceptions.RayTaskError as exc:  # the env code raised: a bug, not a crash
                raise RuntimeError(f"ray env worker {c.worker} failed in {req.method}: {exc}") from None
            except ray.exceptions.RayError as exc:  # the actor died (killed, crashed, node lost)
                if c.generation == self._workers[c.worker].generation:
                    self._replace(c.worker, f"died during {req.method} ({type(exc).__name__})")
                lost.append(c)
        lost_slots = [i for c in lost for i in c.slots]
        if lost_slots and req.method in _RETRIED_CALLS:
            if attempt >= _RETRIES:
                raise RuntimeError(
                    f"ray env workers for slots {lost_slots} failed {req.method} {attempt + 1} times; "
                    "see the Ray worker logs (/tmp/ray/session_latest/logs) for why they die"
                )
            retry = self._send(req.method, [req.args[i] for i in lost_slots], lost_slots)
            results.update(zip(lost_slots, self._recv(retry, attempt + 1), strict=True))
        for i in req.which:  # lost episodes, now or earlier: ended, nothing stepped
            if i not in results:
                results[i] = self._placeholder(req.method, i)
        return [results[i] for i in req.which]

    @staticmethod
    def _time_left(req: _RayRequest) -> float:
        return max(0.0, req.deadline - time.monotonic())

    def _placeholder(self, method: str, i: int) -> Any:
        """The answer of a failed slot: its last observation, no reward, no success, no step."""
        if method == "step":
            return self._last[i], 0.0, False
        if method == "step_chunk":
            return self._last[i], 0.0, False, 0, []
        if method == "expert_action":
            return np.zeros(7)
        raise AssertionError(f"{method} has no placeholder")  # _RETRIED_CALLS never get here

    def actor_pids(self) -> list[int]:
        """Each actor's process id; actor ``w`` holds slots ``w * envs_per_worker`` onwards (tests kill one)."""
        return [w.pid for w in self._workers]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if ray.is_initialized():
            with contextlib.suppress(Exception):  # let the simulators close; kill what does not
                ray.get([w.handle.close.remote() for w in self._workers], timeout=10)
            for w in self._workers:
                with contextlib.suppress(Exception):
                    ray.kill(w.handle, no_restart=True)
        self._workers = []
        if self._holds_local_ray:
            self._holds_local_ray = False
            _LocalRay.users -= 1
            if _LocalRay.users == 0:
                _LocalRay.started_by_env = False
                ray.shutdown()
