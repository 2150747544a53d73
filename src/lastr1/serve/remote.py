"""A policy served by ``lastr1 serve`` as the evaluator's :class:`ActingPolicy` (``eval policy=ws://...``).

Why through openpi-client: remote evaluation then exercises exactly the client a robot uses, so a
protocol mismatch shows up in simulation, not on hardware. The collector executes whole action
chunks open loop itself, so each decision asks ``WebsocketClientPolicy.infer`` once per live env slot
and uses the whole chunk -- what ``ActionChunkBroker(policy, action_horizon=chunk)`` does on a robot,
one step at a time. Rows are sent one after another on one connection, so the server computes each
at batch 1: with ``env.num_envs=1`` the episodes equal in-process evaluation's exactly (tested);
with more slots a batched in-process forward may differ from batch 1 in the last float bits.

``decode.stop_scope=episode`` works remotely too: the adapter sends the episode's kept stop decision
(``lastr1/stop_index``) and the server uses it instead of a new one, so the server stays stateless.
The API key, if the server wants one, comes from the ``LASTR1_SERVE_API_KEY`` environment variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lastr1.envs.base import Observation
from lastr1.models.decode import DecodeConfig
from lastr1.serve.validate import IMAGE_KEY, PROMPT_KEY, STATE_KEY, STOP_KEY, WRIST_KEY

API_KEY_ENV = "LASTR1_SERVE_API_KEY"


def is_remote(policy: str) -> bool:
    """Whether an ``eval policy=`` value names a server."""
    return policy.startswith(("ws://", "wss://"))


@dataclass
class RemoteOutput:
    """The part of a policy output the collector and evaluator read."""

    actions: torch.Tensor  # (B, C, A) filtered actions in the robot's (dataset's) units
    latent_len: torch.Tensor  # (B,)
    stop_index: torch.Tensor  # (B,)
    value: torch.Tensor | None = None  # the server does not send the critic's estimate

    @staticmethod
    def cat(rows: list[RemoteOutput]) -> RemoteOutput:
        return RemoteOutput(
            actions=torch.cat([r.actions for r in rows]),
            latent_len=torch.cat([r.latent_len for r in rows]),
            stop_index=torch.cat([r.stop_index for r in rows]),
        )


def observation_request(obs: Observation, i: int, keep_stop: int | None = None) -> dict[str, Any]:
    """Row ``i`` of an observation batch as an openpi-style request (LIBERO keys)."""
    req: dict[str, Any] = {
        IMAGE_KEY: np.ascontiguousarray(obs.images[i, 0]),
        STATE_KEY: np.asarray(obs.proprio[i], dtype=np.float32),
        PROMPT_KEY: obs.instruction[i],
    }
    if obs.images.shape[1] > 1:
        req[WRIST_KEY] = np.ascontiguousarray(obs.images[i, 1])
    if keep_stop is not None:
        req[STOP_KEY] = int(keep_stop)
    return req


class RemotePolicy:
    """Acts through a ``lastr1 serve`` server (see module docstring)."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        try:
            from openpi_client.websocket_client_policy import WebsocketClientPolicy
        except ImportError as exc:
            raise ValueError(
                f"policy={url} needs openpi-client ({exc}); install it with "
                "`pip install --no-deps openpi-client==0.1.2` (scripts/install_python_deps.sh does)"
            ) from None
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        try:
            self.client = WebsocketClientPolicy(url, api_key=key)
        except OSError as exc:
            raise ValueError(f"cannot reach the policy server at {url}: {exc}") from None
        except Exception as exc:  # websockets' InvalidStatus (401, 503), InvalidURI, ...
            raise ValueError(f"the policy server at {url} refused the connection: {exc}") from None
        self.url = url
        self.metadata: dict[str, Any] = self.client.get_server_metadata()
        if self.metadata.get("server") != "lastr1":
            raise ValueError(f"{url} is not a lastr1 policy server (metadata: {sorted(self.metadata)[:8]})")
        self.decode = DecodeConfig(**self.metadata["decode"])
        self.image_size = int(self.metadata["image_size"][0])
        self.num_views = len(self.metadata["image_keys"])

    def act(
        self,
        obs: Observation,
        mode: str = "greedy",
        generator: torch.Generator | None = None,
        keep_stop: torch.Tensor | None = None,
        decode: DecodeConfig | None = None,
    ) -> RemoteOutput:
        """One request per row; the server's mode must be the one asked for."""
        if mode != self.metadata["mode"]:
            raise ValueError(
                f"the evaluator asks for {mode} actions but the server at {self.url} runs mode="
                f"{self.metadata['mode']}; restart it with mode={mode}"
            )
        if decode is not None:
            raise ValueError(
                "a remote policy decodes with the server's settings; set decode.* on `lastr1 serve`"
            )
        actions, lengths, stops = [], [], []
        for i in range(len(obs)):
            keep = None if keep_stop is None else int(keep_stop[i])
            reply = self.client.infer(observation_request(obs, i, keep))
            actions.append(np.asarray(reply["actions"], dtype=np.float32))
            lengths.append(int(reply["latent_len"]))
            stops.append(int(reply["stop_index"]))
        return RemoteOutput(
            actions=torch.from_numpy(np.stack(actions)),
            latent_len=torch.tensor(lengths, dtype=torch.long),
            stop_index=torch.tensor(stops, dtype=torch.long),
        )

    def close(self) -> None:
        self.client._ws.close()
