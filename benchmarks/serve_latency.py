"""Policy server overhead: round trip through ``lastr1 serve`` vs in-process ``act()``, and throughput.

Latency: batch 1, greedy, a 64-px observation (the default PolicyConfig, random weights), the
in-process ``act()`` and the openpi-client round trip interleaved request by request so load spikes
on a shared CPU hit both alike; p50/p99 and the p50 ratio (the protocol's overhead: msgpack, the
websocket, validation, the action filter, the hop to the inference thread). Throughput: requests/s
with 1 and 4 clients (threads in this process, one connection each), with ``max_batch=1`` and 4.
Everything runs on 127.0.0.1 in one process, so clients and server share the cores.

    PYTHONPATH=src python benchmarks/serve_latency.py --repeats 200 --seconds 5
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from lastr1.envs.base import Observation
from lastr1.models import LastR1Policy, PolicyConfig
from lastr1.serve.server import PolicyServer, ServerOptions, running_server


def _request(cfg: PolicyConfig, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation/image": rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
        "observation/state": rng.standard_normal(cfg.proprio_dim).astype(np.float32),
        "prompt": "pick up the black bowl and place it on the plate",
    }


def _as_obs(req: dict) -> Observation:
    return Observation(
        images=req["observation/image"][None, None],
        proprio=req["observation/state"][None],
        instruction=[req["prompt"]],
        privileged=np.zeros((1, 0), np.float32),
        task=np.zeros(1, np.int64),
    )


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def latency(policy: LastR1Policy, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Interleaved in-process and remote round trips at batch 1 (seconds)."""
    server = PolicyServer(policy, ServerOptions(port=0))
    req = _request(policy.config, 0)
    obs = _as_obs(req)
    times: dict[str, list[float]] = {"in-process act()": [], "server round trip": []}
    with running_server(server) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        for r in range(warmup + repeats):
            t0 = time.perf_counter()
            policy.act(obs, mode="greedy")
            t1 = time.perf_counter()
            client.infer(req)
            t2 = time.perf_counter()
            if r >= warmup:
                times["in-process act()"].append(t1 - t0)
                times["server round trip"].append(t2 - t1)
    return times


def throughput(policy: LastR1Policy, clients: int, max_batch: int, seconds: float) -> tuple[float, float]:
    """Requests per second and the mean forward batch over ``seconds`` of ``clients`` busy clients."""
    server = PolicyServer(policy, ServerOptions(port=0, max_batch=max_batch))
    counts = [0] * clients
    batches: list[int] = []
    with running_server(server) as port:
        conns = [WebsocketClientPolicy("127.0.0.1", port) for _ in range(clients)]
        for c in conns:  # warm-up
            c.infer(_request(policy.config, 1))
        start = time.perf_counter()
        stop = start + seconds

        def work(i: int) -> None:
            req = _request(policy.config, 2 + i)
            while time.perf_counter() < stop:
                reply = conns[i].infer(req)
                counts[i] += 1
                batches.append(int(reply["server_timing"]["batch"]))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        elapsed = time.perf_counter() - start
    return sum(counts) / elapsed, statistics.mean(batches) if batches else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = LastR1Policy(PolicyConfig(image_size=args.image_size)).eval()
    print(f"policy: default PolicyConfig at {args.image_size} px, torch threads {args.threads}\n")
    times = latency(policy, args.repeats, args.warmup)
    base = statistics.median(times["in-process act()"])
    print("| path (batch 1, greedy) | p50 ms | p99 ms | p50 ratio |")
    print("|---|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {_pct(v, 50):.2f} | {_pct(v, 99):.2f} | {statistics.median(v) / base:.2f}x |")
    print("\n| clients | max_batch | requests/s | mean forward batch |")
    print("|---|---|---|---|")
    for clients in (1, 4):
        for max_batch in (1, 4):
            rps, mean_batch = throughput(policy, clients, max_batch, args.seconds)
            print(f"| {clients} | {max_batch} | {rps:.1f} | {mean_batch:.2f} |")


if __name__ == "__main__":
    main()
