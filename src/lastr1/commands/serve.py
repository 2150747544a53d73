"""``lastr1 serve checkpoint=DIR host=127.0.0.1 port=8000``: serve a policy to robots over websockets.

openpi's published client (``pip install openpi-client``) talks to it unchanged; see
``docs/serving.md`` for the message schema, the safety filter and a robot-side example. The server
binds 127.0.0.1 unless ``host`` says otherwise; put it behind an SSH tunnel or set ``api_key``
(or the ``LASTR1_SERVE_API_KEY`` environment variable) before exposing it to a network.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field

import torch

from lastr1.models.decode import DecodeConfig
from lastr1.models.load import load_policy
from lastr1.serve.metadata import trained_instructions
from lastr1.serve.remote import API_KEY_ENV
from lastr1.serve.server import HEALTH_PATH, PolicyServer, ServerOptions


@dataclass
class Config:
    checkpoint: str = ""
    # the interface to listen on; 127.0.0.1 = this machine only, 0.0.0.0 = every interface
    host: str = "127.0.0.1"
    port: int = 8000
    # clients must send `Authorization: Api-Key KEY` (openpi-client's api_key=); empty = the
    # LASTR1_SERVE_API_KEY environment variable, or no key when that is unset too
    api_key: str = ""
    # "greedy" (deterministic, what eval measures) or "sample" (the decode's temperatures)
    mode: str = "greedy"
    # how the checkpoint decodes; null = its own decode.json (any decode.* key gives a whole config)
    decode: DecodeConfig | None = None
    # 1 = one forward per request; >1 = requests already waiting from other clients join one forward
    max_batch: int = 1
    max_clients: int = 16
    # largest request in bytes; 0 = twice the checkpoint's observation plus 64 KiB
    max_frame_bytes: int = 0
    # clip actions to the dataset's range and refuse NaN/inf (docs/serving.md); off only for debugging
    action_filter: bool = True
    # per-step limit on the translation part (dims 0-2) of each action, in the robot's units; 0 = off
    max_translation: float = 0.0
    # the instructions listed in the metadata frame; empty = read from the checkpoint's training run
    instructions: list[str] = field(default_factory=list)
    seed: int = 0  # the sampling stream (mode=sample)
    threads: int = 1  # torch threads for the forward pass
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.mode not in ("greedy", "sample"):
            raise ValueError(f"mode={self.mode!r} must be 'greedy' or 'sample'")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in [0, 65535] (0 = any free port)")
        for name in ("max_batch", "max_clients", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_frame_bytes < 0 or self.max_translation < 0:
            raise ValueError("max_frame_bytes and max_translation must be >= 0 (0 = default / off)")


def build_server(cfg: Config) -> PolicyServer:
    """Load the checkpoint and wrap it in a server (what :func:`run` serves; tests call it too)."""
    if not cfg.checkpoint:
        raise ValueError("checkpoint: pass the policy directory to serve (checkpoint=runs/x/final)")
    policy = load_policy(cfg.checkpoint, device=cfg.device, decode=cfg.decode).eval()  # LaST-R1 or LaST0
    options = ServerOptions(
        host=cfg.host,
        port=cfg.port,
        api_key=cfg.api_key or os.environ.get(API_KEY_ENV, ""),
        mode=cfg.mode,
        max_batch=cfg.max_batch,
        max_clients=cfg.max_clients,
        max_frame_bytes=cfg.max_frame_bytes,
        action_filter=cfg.action_filter,
        max_translation=cfg.max_translation,
        seed=cfg.seed,
    )
    instructions = list(cfg.instructions) or trained_instructions(cfg.checkpoint)
    return PolicyServer(policy, options, checkpoint=cfg.checkpoint, instructions=instructions)


def run(cfg: Config) -> int:
    torch.set_num_threads(cfg.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = build_server(cfg)
    meta = server.metadata

    def ready(port: int) -> None:
        print(
            f"serving {cfg.checkpoint} on ws://{cfg.host}:{port} ({meta['mode']}, chunk "
            f"{meta['action_horizon']} x {meta['action_dim']}, images {meta['image_keys']} at "
            f"{meta['image_size'][0]} px, state "
            f"{meta['state_dim']}); health: http://{cfg.host}:{port}{HEALTH_PATH}; Ctrl-C stops",
            flush=True,
        )
        if cfg.host not in ("127.0.0.1", "localhost", "::1") and not server.options.api_key:
            print(f"warning: listening on {cfg.host} without an API key; set api_key= or {API_KEY_ENV}")

    asyncio.run(server.serve_forever(on_ready=ready))
    return 0
