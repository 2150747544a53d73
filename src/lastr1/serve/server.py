"""The websocket policy server: openpi's wire protocol, ``GET /healthz``, errors as one-line text frames.

Protocol (openpi's ``WebsocketPolicyServer``, which ``openpi_client.WebsocketClientPolicy`` expects):
on connect the server sends one binary msgpack frame, the metadata (:mod:`.metadata`); then, per
binary frame the client sends (an observation, :mod:`.validate`), exactly one reply: a binary frame
``{"actions": (chunk, action_dim) float64, "server_timing": {...}, ...}`` or, for a request it
refuses, a *text* frame -- openpi-client's convention for an error -- with one line naming the
field. Never a traceback: an unexpected failure is logged here and answered with a generic line.
The connection and the server keep serving after any error reply.

Limits, so a lab can leave it running: bind 127.0.0.1 unless told otherwise; an optional API key
(``Authorization: Api-Key KEY``, openpi-client's header; a wrong key gets HTTP 401 before the
upgrade); frames above ``max_frame_bytes`` get an error reply, frames above 4x that are cut off by
the websocket layer before they are buffered (close code 1009); at most ``max_clients``
connections (HTTP 503 beyond); the worker queue is bounded (an "overloaded" reply beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response as HttpResponse

from lastr1.models.policy import LastR1Policy
from lastr1.serve.action_filter import ActionFilter, UnsafeActionError
from lastr1.serve.codec import DecodeError, pack, unpack
from lastr1.serve.metadata import build_metadata, observation_spec
from lastr1.serve.validate import RequestError, validate_request
from lastr1.serve.worker import InferenceWorker, Overloaded

log = logging.getLogger("lastr1.serve")
HEALTH_PATH = "/healthz"
HARD_LIMIT_FACTOR = 4  # frames above this multiple of max_frame_bytes are never buffered


@dataclass(frozen=True)
class ServerOptions:
    """How the server listens and what it lets through (``lastr1 serve`` fills it from its Config)."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0 = any free port (tests)
    api_key: str = ""  # empty = no key needed
    mode: str = "greedy"  # "greedy" (deterministic) or "sample" (the decode's temperatures)
    max_batch: int = 1  # >1 batches concurrent clients' requests into one forward
    max_clients: int = 16
    max_frame_bytes: int = 0  # 0 = sized from the checkpoint's observation (see frame_limit)
    action_filter: bool = True
    max_translation: float = 0.0  # per-step translation norm limit; 0 = off
    seed: int = 0  # the sampling stream when mode="sample"


def frame_limit(policy: LastR1Policy) -> int:
    """Default request size limit: twice a full observation plus 64 KiB for the prompt and extras."""
    cfg = policy.config
    pixels = cfg.num_views * cfg.image_size * cfg.image_size * 3
    return 2 * (pixels + 8 * cfg.proprio_dim) + 64 * 1024


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


class PolicyServer:
    """Serve one policy over websockets (see module docstring). Use :meth:`serve_forever` or
    :func:`running_server`."""

    def __init__(
        self,
        policy: LastR1Policy,
        options: ServerOptions | None = None,
        *,
        checkpoint: str = "",
        instructions: list[str] | None = None,
    ) -> None:
        self.policy = policy.eval()
        self.options = opts = options or ServerOptions()
        self.spec = observation_spec(policy)
        self.max_frame_bytes = opts.max_frame_bytes or frame_limit(policy)
        self.filter = (
            ActionFilter.from_tokenizer(policy.tokenizer, opts.max_translation)
            if opts.action_filter
            else None
        )
        self.metadata = build_metadata(
            policy,
            checkpoint=checkpoint,
            mode=opts.mode,
            instructions=instructions or [],
            action_low=self.filter.low.tolist() if self.filter else None,
            action_high=self.filter.high.tolist() if self.filter else None,
            max_translation=opts.max_translation,
            max_frame_bytes=self.max_frame_bytes,
            max_batch=opts.max_batch,
        )
        self._metadata_frame = pack(self.metadata)
        self.worker: InferenceWorker | None = None
        self._server: Server | None = None
        self._clients = 0
        self.served = 0
        self.refused = 0

    # ------------------------------------------------------------------ HTTP before the upgrade

    def _process_request(self, connection: ServerConnection, request: HttpRequest) -> HttpResponse | None:
        """``GET /healthz``, the API key and the client limit, answered without touching the policy."""
        if request.path.split("?")[0] == HEALTH_PATH:
            body = {
                "status": "ok",
                "clients": self._clients,
                "queued": self.worker.pending if self.worker else 0,
                "served": self.served,
                "refused": self.refused,
            }
            return connection.respond(HTTPStatus.OK, json.dumps(body) + "\n")
        key = self.options.api_key
        if key:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {key}".encode()):
                log.warning("refused a connection: missing or wrong API key")
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")
        if self._clients >= self.options.max_clients:
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"server is at its limit of {self.options.max_clients} clients\n",
            )
        return None

    # ------------------------------------------------------------------ websocket

    async def _handler(self, ws: ServerConnection) -> None:
        self._clients += 1
        peer = ws.remote_address
        log.info("client connected: %s", peer)
        try:
            await ws.send(self._metadata_frame)
            async for message in ws:
                await ws.send(await self._reply(message))
        except ConnectionClosed:
            pass  # a client that goes away mid-request only loses its own reply
        finally:
            self._clients -= 1
            log.info("client disconnected: %s", peer)

    async def _reply(self, message: str | bytes) -> str | bytes:
        """One reply per frame: the actions, or a one-line text error."""
        start = time.perf_counter()
        try:
            if isinstance(message, str):
                raise RequestError("text frames are not requests; send a binary msgpack frame")
            if len(message) > self.max_frame_bytes:
                raise RequestError(
                    f"frame of {len(message)} bytes is over the limit of {self.max_frame_bytes}"
                )
            request = validate_request(unpack(message), self.spec)
            assert self.worker is not None
            result = await asyncio.wrap_future(self.worker.submit(request))
            actions = result.actions
            report = None
            if self.filter is not None:
                actions, report = self.filter(actions)
            reply: dict[str, Any] = {
                "actions": actions,
                "latent_len": result.latent_len,
                "stop_index": result.stop_index,
                "server_timing": {
                    "infer_ms": result.infer_ms,
                    "queue_ms": result.queue_ms,
                    "total_ms": (time.perf_counter() - start) * 1e3,
                    "batch": result.batch,
                },
            }
            if report is not None:
                reply["filter"] = {"clipped": report.clipped, "limited": report.limited}
            self.served += 1
            return pack(reply)
        except (DecodeError, RequestError, Overloaded, UnsafeActionError) as exc:
            self.refused += 1
            return f"lastr1 serve: {_one_line(exc)}"
        except Exception:
            self.refused += 1
            log.exception("request failed")
            return "lastr1 serve: internal error while answering this request (details in the server log)"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        opts = self.options
        self.worker = InferenceWorker(self.policy, opts.mode, None, opts.max_batch, seed=opts.seed)
        self._server = await serve(
            self._handler,
            opts.host,
            opts.port,
            process_request=self._process_request,
            max_size=self.max_frame_bytes * HARD_LIMIT_FACTOR,
            max_queue=4,
            compression=None,
        )
        port = int(next(iter(self._server.sockets)).getsockname()[1])
        log.info(
            "serving on ws://%s:%d (healthz: http://%s:%d%s)", opts.host, port, opts.host, port, HEALTH_PATH
        )
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.worker is not None:
            await asyncio.to_thread(self.worker.close)
            self.worker = None

    async def serve_forever(self, on_ready: Any = None) -> None:
        """Serve until cancelled (Ctrl-C in ``lastr1 serve``)."""
        port = await self.start()
        if on_ready is not None:
            on_ready(port)
        try:
            await asyncio.Future()
        finally:
            await self.stop()


@contextlib.contextmanager
def running_server(server: PolicyServer, timeout: float = 30.0) -> Iterator[int]:
    """Run ``server`` on its own event loop in a background thread; yields the port, stops on exit.

    Why: tests and the benchmark drive it with blocking clients (openpi-client) from this thread.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        state["stopping"] = stopping = asyncio.Event()
        try:
            state["port"] = await server.start()
        except BaseException as exc:
            state["error"] = exc
            return
        finally:
            ready.set()
        await stopping.wait()
        await server.stop()

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=thread_main, name="lastr1-serve", daemon=True)
    thread.start()
    if not ready.wait(timeout):
        raise TimeoutError(f"the policy server did not start within {timeout} s")
    if "error" in state:
        raise state["error"]
    try:
        yield state["port"]
    finally:
        loop.call_soon_threadsafe(state["stopping"].set)
        thread.join(timeout)
