"""Inference off the event loop: one thread runs the policy, optionally on batches of requests.

Why a thread: a forward pass takes milliseconds to seconds; run on the event loop it would stall
``GET /healthz``, the handshakes of new clients and the replies to everyone else (openpi's server
does this). torch releases the GIL inside its kernels, so the loop keeps answering while the thread
computes. Why one thread: the policy is one model on one device; two forwards at once would only
split the same cores.

Batching is opportunistic: the thread takes one request, then whatever else is already waiting (up
to ``max_batch``), without waiting for more -- a lone client never pays for it. Rows that carry a
kept stop decision and rows that do not go in separate forwards (``act`` takes one ``keep_stop``
per call). A batched greedy forward can differ from a batch-1 forward in the last float bits, so
``max_batch=1`` (the default) is the one that reproduces in-process ``act()`` exactly.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from lastr1.envs.base import Observation
from lastr1.models.decode import DecodeConfig
from lastr1.models.policy import LastR1Policy
from lastr1.serve.validate import Request


class Overloaded(RuntimeError):
    """The request queue is full; the client should retry later."""


@dataclass
class Result:
    """One request's share of a forward pass."""

    actions: np.ndarray  # float64 (chunk, action_dim), before the action filter
    latent_len: int
    stop_index: int
    queue_ms: float  # waiting for the thread
    infer_ms: float  # the forward pass this request was part of
    batch: int  # rows in that forward


@dataclass
class _Job:
    request: Request
    future: concurrent.futures.Future[Result]
    submitted: float


class InferenceWorker:
    """Runs ``policy.act`` for submitted requests in a background thread (see module docstring)."""

    def __init__(
        self,
        policy: LastR1Policy,
        mode: str = "greedy",
        decode: DecodeConfig | None = None,
        max_batch: int = 1,
        max_queue: int = 256,
        seed: int = 0,
    ) -> None:
        if mode not in ("greedy", "sample"):
            raise ValueError(f"mode={mode!r} must be 'greedy' or 'sample'")
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1")
        self.policy, self.mode, self.decode, self.max_batch = policy, mode, decode, max_batch
        self._generator = torch.Generator().manual_seed(seed) if mode == "sample" else None
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="lastr1-inference", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> concurrent.futures.Future[Result]:
        """Queue one request; its future resolves with a :class:`Result` or the policy's exception."""
        fut: concurrent.futures.Future[Result] = concurrent.futures.Future()
        try:
            self._queue.put_nowait(_Job(request, fut, time.perf_counter()))
        except queue.Full:
            raise Overloaded("the server's request queue is full; retry shortly") from None
        return fut

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued work and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            kept = [j for j in live if j.request.keep_stop is not None]
            fresh = [j for j in live if j.request.keep_stop is None]
            for group in (fresh, kept):
                if group:
                    self._run(group)

    def _run(self, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            obs = Observation.stack([j.request.obs for j in jobs])
            keep = None
            if jobs[0].request.keep_stop is not None:
                keep = torch.tensor([j.request.keep_stop for j in jobs], dtype=torch.long)
            out = self.policy.act(
                obs, mode=self.mode, generator=self._generator, keep_stop=keep, decode=self.decode
            )  # type: ignore[arg-type]
            actions = out.actions.detach().cpu().double().numpy()
            lengths = out.latent_len.cpu().tolist()
            stops = out.stop_index.cpu().tolist()
        except Exception as exc:  # the handler turns it into a one-line reply and logs it
            for j in jobs:
                j.future.set_exception(exc)
            return
        infer_ms = (time.perf_counter() - start) * 1e3
        for i, j in enumerate(jobs):
            j.future.set_result(
                Result(
                    actions=actions[i],
                    latent_len=int(lengths[i]),
                    stop_index=int(stops[i]),
                    queue_ms=(start - j.submitted) * 1e3,
                    infer_ms=infer_ms,
                    batch=len(jobs),
                )
            )
