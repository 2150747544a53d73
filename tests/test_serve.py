"""``lastr1 serve``: openpi-client talks to it unchanged; bad input gets one-line errors and the
server keeps serving; concurrency, a bounded load test, a killed client, and remote evaluation.

Everything runs on 127.0.0.1 with servers on ephemeral ports that each test stops itself; loops
are bounded by request counts and hard deadlines.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from openpi_client import msgpack_numpy
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from lastr1.cli import main
from lastr1.commands import eval as eval_command
from lastr1.commands import serve as serve_command
from lastr1.envs import EnvConfig
from lastr1.envs.base import Observation
from lastr1.models.action_tokenizer import ActionTokenizer
from lastr1.models.policy import LastR1Policy, PolicyConfig
from lastr1.serve.action_filter import ActionFilter, UnsafeActionError
from lastr1.serve.codec import DecodeError, pack, unpack
from lastr1.serve.metadata import trained_instructions
from lastr1.serve.server import HARD_LIMIT_FACTOR, PolicyServer, ServerOptions, running_server
from lastr1.serve.validate import IMAGE_KEY, PROMPT_KEY, STATE_KEY

SIZE = 32
TINY = PolicyConfig(
    d_model=32, n_layers=1, n_heads=2, image_size=SIZE, image_grid=2, k_max=4, value_hidden=(16,)
)
DEADLINE_S = 40.0  # hard limit of every multi-request loop here


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random-weight tiny policy saved as a checkpoint (its greedy actions are still deterministic)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("serve") / "final"
    LastR1Policy(TINY).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def served(tiny_ckpt):
    """One server for the module's protocol tests: (port, server)."""
    server = serve_command.build_server(serve_command.Config(checkpoint=str(tiny_ckpt), port=0))
    with running_server(server) as port:
        yield port, server


def _obs(seed: int = 0, prompt: str = "pick up the cube") -> dict:
    rng = np.random.default_rng(seed)
    return {
        IMAGE_KEY: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        STATE_KEY: rng.normal(size=8).astype(np.float32),
        PROMPT_KEY: prompt,
    }


def _in_process(policy: LastR1Policy, req: dict) -> np.ndarray:
    obs = Observation(
        images=req[IMAGE_KEY][None, None],
        proprio=req[STATE_KEY][None],
        instruction=[req[PROMPT_KEY]],
        privileged=np.zeros((1, 0), np.float32),
        task=np.zeros(1, np.int64),
    )
    return policy.act(obs, mode="greedy").actions[0].double().numpy()


def _raw(client: WebsocketClientPolicy, frame: bytes | str) -> bytes | str:
    """Send a frame openpi-client would never build and return the reply frame."""
    client._ws.send(frame)
    return client._ws.recv(timeout=10)


def _healthz(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------------------- codec and filter


def test_codec_matches_openpi_and_refuses_unsafe_payloads(tmp_path):
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.uint8(7), "s": "x", "n": [1, 2]}
    ours = unpack(msgpack_numpy.packb(msg))  # openpi -> us
    assert ours["a"].dtype == np.float32 and np.array_equal(ours["a"], msg["a"]) and ours["b"] == 7
    theirs = msgpack_numpy.unpackb(pack(msg))  # us -> openpi
    assert np.array_equal(theirs["a"], msg["a"]) and theirs["s"] == "x"
    assert pack(msg) == msgpack_numpy.packb(msg)  # byte for byte

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad_arrays = [
        {b"__ndarray__": True, b"data": pickle.dumps(Evil()), b"dtype": "|O", b"shape": [1]},
        {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|V8", b"shape": [1]},
        {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "[('a', '<i4')]", b"shape": [1]},
        {b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]},  # wrong size
        {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<f4", b"shape": [-2, -1]},
    ]
    for bad in bad_arrays:
        with pytest.raises(DecodeError):
            unpack(msgpack.packb({"x": bad}))
    for frame in (pickle.dumps(Evil()), b"\xc1\xff\x00garbage", msgpack.packb(msgpack.ExtType(1, b"x")), b""):
        with pytest.raises(DecodeError):
            unpack(frame)
    assert not marker.exists()


def test_action_filter_clips_limits_and_refuses_nan():
    f = ActionFilter(np.full(7, -1.0), np.full(7, 1.0), max_translation=0.1)
    a = np.zeros((2, 7))
    a[0, :3] = [3.0, 4.0, 0.0]  # clipped to (1, 1, 0), then scaled to norm 0.1
    a[1, 6] = -5.0
    out, report = f(a)
    assert np.linalg.norm(out[0, :3]) == pytest.approx(0.1) and out[1, 6] == -1.0
    assert report.clipped == 3 and report.limited == 1
    with pytest.raises(UnsafeActionError):
        f(np.full((2, 7), np.nan))
    # the range a checkpoint was trained on holds every action its tokenizer can decode
    stats = {
        "action": {"q01": [-0.3] * 6 + [0.0], "q99": [0.2] * 6 + [1.0], "min": [-0.5] * 7, "max": [0.4] * 7}
    }
    tok = ActionTokenizer(stats, num_bins=16, chunk=2)
    flt = ActionFilter.from_tokenizer(tok)
    every = tok.decode(torch.arange(16).repeat_interleave(14).reshape(16, 14)).reshape(-1, 7).double().numpy()
    assert f is not flt and flt(every)[1].clipped == 0
    assert flt.low[0] == pytest.approx(-0.5) and flt.high[6] == 1.0 and flt.low[6] == -1.0


# ---------------------------------------------------------------------------- the real client


def test_openpi_client_metadata_infer_and_chunk_broker(served, tiny_ckpt):
    port, _ = served
    client = WebsocketClientPolicy("127.0.0.1", port)
    meta = client.get_server_metadata()
    assert meta["server"] == "lastr1" and meta["image_keys"] == [IMAGE_KEY]
    assert meta["image_size"] == [SIZE, SIZE, 3] and meta["state_dim"] == 8
    assert meta["action_dim"] == 7 and meta["action_horizon"] == TINY.chunk and meta["mode"] == "greedy"
    assert meta["action_filter"]["enabled"] and meta["checkpoint"] == str(tiny_ckpt)
    policy = LastR1Policy.from_pretrained(tiny_ckpt).eval()
    req = _obs(1)
    reply = client.infer(req)
    assert reply["actions"].shape == (TINY.chunk, 7) and reply["actions"].dtype == np.float64
    assert np.array_equal(reply["actions"], _in_process(policy, req))  # the filter changed nothing
    assert reply["filter"] == {"clipped": 0, "limited": 0} and reply["server_timing"]["infer_ms"] > 0
    assert reply["latent_len"] in (2, 4)
    broker = ActionChunkBroker(client, action_horizon=TINY.chunk)
    steps = [broker.infer(req)["actions"] for _ in range(TINY.chunk + 1)]
    assert all(s.shape == (7,) for s in steps)
    assert np.array_equal(np.stack(steps[: TINY.chunk]), reply["actions"])
    assert np.array_equal(steps[-1], reply["actions"][0])  # a new chunk after the horizon
    assert _healthz(port)["status"] == "ok"


def _bad_requests(limit: int, marker: Path) -> dict[str, tuple[object, str]]:
    """name -> (frame or request dict, text the error must contain)."""
    good = _obs(2)

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return {
        "missing key": ({k: v for k, v in good.items() if k != PROMPT_KEY}, "prompt: missing"),
        "wrong shape": ({**good, IMAGE_KEY: np.zeros((64, 64, 3), np.uint8)}, "observation/image: shape"),
        "wrong dtype": (
            {**good, IMAGE_KEY: np.zeros((SIZE, SIZE, 3), np.float32)},
            "observation/image: dtype",
        ),
        "state dtype": ({**good, STATE_KEY: np.zeros(8, np.int64)}, "observation/state: dtype"),
        "NaN state": ({**good, STATE_KEY: np.full(8, np.nan, np.float32)}, "observation/state: contains NaN"),
        "not a map": ([1, 2, 3], "request must be a map"),
        "empty prompt": ({**good, PROMPT_KEY: " "}, "prompt: must be a non-empty string"),
        "oversized frame": (b"\x00" * (limit + 1), f"over the limit of {limit}"),
        "garbage bytes": (b"\xc1\xc1 definitely not msgpack", "not a single msgpack message"),
        "pickle payload": (pickle.dumps(Evil()), "msgpack"),
        "object array": (
            msgpack.packb({IMAGE_KEY: {b"__ndarray__": True, b"data": b"x", b"dtype": "|O", b"shape": [1]}}),
            "dtype '|O' is not allowed",
        ),
        "text frame": ("hello", "text frames are not requests"),
    }


def test_malformed_requests_get_one_line_errors_and_the_connection_keeps_serving(served, tmp_path):
    port, server = served
    client = WebsocketClientPolicy("127.0.0.1", port)
    marker = tmp_path / "pwned"
    for name, (payload, expected) in _bad_requests(server.max_frame_bytes, marker).items():
        if not isinstance(payload, (bytes, str)):
            with pytest.raises(RuntimeError, match="Error in inference server") as err:
                client.infer(payload)  # openpi-client recognises the text frame as an error
            text = str(err.value).split("\n", 1)[1]
        else:
            text = _raw(client, payload)
            assert isinstance(text, str), name
        assert expected in text, (name, text)
        assert "\n" not in text and "Traceback" not in text, name
        assert client.infer(_obs(3))["actions"].shape == (TINY.chunk, 7), name  # same connection
    assert not marker.exists()


def test_frames_above_the_hard_limit_close_only_that_connection(served):
    port, server = served
    from websockets.exceptions import ConnectionClosed

    client = WebsocketClientPolicy("127.0.0.1", port)
    with pytest.raises(ConnectionClosed) as err:
        _raw(client, b"\x00" * (server.max_frame_bytes * HARD_LIMIT_FACTOR + 1))
    assert err.value.rcvd is not None and err.value.rcvd.code == 1009  # message too big
    assert WebsocketClientPolicy("127.0.0.1", port).infer(_obs(4))["actions"].shape == (TINY.chunk, 7)


def test_api_key(tiny_ckpt):
    from websockets.exceptions import InvalidStatus

    server = serve_command.build_server(
        serve_command.Config(checkpoint=str(tiny_ckpt), port=0, api_key="s3cret")
    )
    with running_server(server) as port:
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus) as err:
                WebsocketClientPolicy("127.0.0.1", port, api_key=key)
            assert err.value.response.status_code == 401
        assert _healthz(port)["status"] == "ok"  # health checks need no key
        client = WebsocketClientPolicy("127.0.0.1", port, api_key="s3cret")
        assert client.infer(_obs(5))["actions"].shape == (TINY.chunk, 7)


# ---------------------------------------------------------------------------- concurrency and load


def _hammer(port: int, clients: int, per_client: int, **kw) -> list[list[dict]]:
    """``clients`` threads, each with its own connection, ``per_client`` requests, hard deadline."""
    replies: list[list[dict]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    deadline = time.monotonic() + DEADLINE_S

    def work(i: int) -> None:
        try:
            client = WebsocketClientPolicy("127.0.0.1", port, **kw)
            for j in range(per_client):
                if time.monotonic() > deadline:
                    return
                replies[i].append(client.infer(_obs(1000 * i + j % 7)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    assert not errors, errors[:1]
    return replies


def test_four_concurrent_clients_get_their_own_actions(served, tiny_ckpt):
    port, _ = served
    policy = LastR1Policy.from_pretrained(tiny_ckpt).eval()
    replies = _hammer(port, clients=4, per_client=7)
    for i, rows in enumerate(replies):
        assert len(rows) == 7
        for j, reply in enumerate(rows):
            assert np.array_equal(reply["actions"], _in_process(policy, _obs(1000 * i + j % 7)))


@pytest.mark.parametrize("max_batch", [1, 4])
def test_load_500_requests_over_4_clients_loses_no_reply(tiny_ckpt, max_batch):
    server = serve_command.build_server(
        serve_command.Config(checkpoint=str(tiny_ckpt), port=0, max_batch=max_batch)
    )
    with running_server(server) as port:
        start = time.monotonic()
        replies = _hammer(port, clients=4, per_client=125)
        assert time.monotonic() - start < DEADLINE_S
        assert sum(len(r) for r in replies) == 500
        assert all(r["actions"].shape == (TINY.chunk, 7) for rows in replies for r in rows)
        batches = [r["server_timing"]["batch"] for rows in replies for r in rows]
        assert max(batches) <= max_batch
        health = _healthz(port)
        assert health["served"] == 500 and health["refused"] == 0


def test_healthz_and_new_clients_are_answered_while_a_forward_runs(tiny_ckpt):
    server = serve_command.build_server(serve_command.Config(checkpoint=str(tiny_ckpt), port=0))
    release, entered = threading.Event(), threading.Event()
    act = server.policy.act

    def slow_act(*args, **kwargs):
        entered.set()
        release.wait(20)
        return act(*args, **kwargs)

    server.policy.act = slow_act  # type: ignore[method-assign]
    with running_server(server) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        result: list[dict] = []
        t = threading.Thread(target=lambda: result.append(client.infer(_obs(6))), daemon=True)
        t.start()
        try:
            assert entered.wait(10)
            t0 = time.monotonic()
            assert _healthz(port)["clients"] == 1
            other = WebsocketClientPolicy("127.0.0.1", port)  # handshake + metadata during the forward
            assert other.get_server_metadata()["server"] == "lastr1"
            assert time.monotonic() - t0 < 5
        finally:
            release.set()
        t.join(20)
        assert result and result[0]["actions"].shape == (TINY.chunk, 7)


_KILLED_CLIENT = """
import os, signal, sys
import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy
c = WebsocketClientPolicy("127.0.0.1", int(sys.argv[1]))
c._ws.send(c._packer.pack({"observation/image": np.zeros((32, 32, 3), np.uint8),
    "observation/state": np.zeros(8, np.float32), "prompt": "go"}))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_client_killed_mid_request_does_not_hurt_the_server(served):
    port, _ = served
    before = _healthz(port)["clients"]  # other tests' clients may still be connected
    proc = subprocess.run([sys.executable, "-c", _KILLED_CLIENT, str(port)], timeout=60, check=False)
    assert proc.returncode == -9
    deadline = time.monotonic() + 10
    while _healthz(port)["clients"] != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _healthz(port)["clients"] == before  # the dead connection was cleaned up
    assert WebsocketClientPolicy("127.0.0.1", port).infer(_obs(7))["actions"].shape == (TINY.chunk, 7)


# ---------------------------------------------------------------------------- metadata, CLI, remote eval


def test_metadata_lists_the_instructions_of_the_training_run(tmp_path, tiny_ckpt):
    data = tmp_path / "demos"
    data.mkdir()
    tasks = [{"name": "a", "instruction": "open the drawer"}, {"name": "b", "instruction": "close it"}]
    meta = {"format": "lastr1-episodes", "format_version": 1, "tasks": tasks, "episodes": []}
    (data / "meta.json").write_text(json.dumps(meta))
    sft = tmp_path / "sft"
    (sft / "final").mkdir(parents=True)
    (sft / "config.yaml").write_text(f"data: {data}\n")
    rl = tmp_path / "rl"
    (rl / "checkpoints" / "step-00000010").mkdir(parents=True)
    (rl / "config.yaml").write_text(f"checkpoint: {sft / 'final'}\n")
    assert trained_instructions(sft / "final") == ["open the drawer", "close it"]
    assert trained_instructions(rl / "checkpoints" / "step-00000010") == ["open the drawer", "close it"]
    assert trained_instructions(tiny_ckpt) == []
    server = PolicyServer(LastR1Policy(TINY), ServerOptions(port=0), instructions=["x"])
    assert server.metadata["instructions"] == ["x"]


def test_cli_serve_help_and_config_errors(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "max_batch" in out and "api_key" in out and "127.0.0.1" in out
    assert main(["serve", "mode=fast"]) == 2
    assert "mode='fast'" in capsys.readouterr().err
    assert main(["serve", f"checkpoint={tmp_path / 'missing'}", "port=0"]) == 2
    assert main(["eval", "policy=http://x"]) == 2
    assert "ws://HOST:PORT" in capsys.readouterr().err


def test_remote_eval_equals_in_process_eval(toy_sft_checkpoint, tmp_path):
    """Toy backend (Meta-World stands in by hand, see docs/serving.md): greedy, one env slot so both
    sides run batch-1 forwards; per-episode success, lengths and step counts must be identical."""
    common = dict(episodes_per_task=3, videos_per_task=0, progress=False)
    env = EnvConfig(backend="toy", image_size=32, num_envs=1)
    local = eval_command.Config(
        checkpoint=str(toy_sft_checkpoint), env=env, out=str(tmp_path / "local"), **common
    )
    assert eval_command.run(local) == 0
    server = serve_command.build_server(serve_command.Config(checkpoint=str(toy_sft_checkpoint), port=0))
    with running_server(server) as port:
        remote = eval_command.Config(
            policy=f"ws://127.0.0.1:{port}",
            env=EnvConfig(backend="toy", image_size=32, num_envs=1),
            out=str(tmp_path / "remote"),
            **common,
        )
        assert eval_command.run(remote) == 0
    a = json.loads((tmp_path / "local" / "eval.json").read_text())
    b = json.loads((tmp_path / "remote" / "eval.json").read_text())
    for name, task in a["per_task"].items():
        for key in ("success_list", "mean_latent_len", "mean_env_steps", "mean_episode_latent_len"):
            assert b["per_task"][name][key] == task[key], (name, key)
    assert b["protocol"]["policy"].startswith("ws://") and b["checkpoint"] == str(toy_sft_checkpoint)
    assert b["protocol"]["decode"] == a["protocol"]["decode"]


@pytest.mark.parametrize("scope", ["decision", "episode"])
def test_remote_rollouts_repeat_in_process_rollouts_action_for_action(toy_sft_checkpoint, scope):
    """The eval test above compares summaries; this compares every executed action chunk, with the
    stop chosen per decision and kept per episode (the adapter sends the kept stop back)."""
    from lastr1.envs import make_env
    from lastr1.envs.base import EpisodeSpec
    from lastr1.models.decode import DecodeConfig
    from lastr1.rollout.collector import collect
    from lastr1.serve.remote import RemotePolicy

    decode = DecodeConfig(stop_scope=scope)
    local = LastR1Policy.from_pretrained(toy_sft_checkpoint, decode=decode).eval()
    server = serve_command.build_server(
        serve_command.Config(checkpoint=str(toy_sft_checkpoint), port=0, decode=decode)
    )
    with running_server(server) as port, make_env(EnvConfig(backend="toy", image_size=32, num_envs=1)) as env:
        remote = RemotePolicy(f"ws://127.0.0.1:{port}")
        assert remote.decode == decode
        for task in range(len(env.tasks)):
            spec = [EpisodeSpec(task, "eval", 1)]
            a = collect(env, local, spec, mode="greedy")
            b = collect(env, remote, spec, mode="greedy")
            assert torch.equal(a.out.actions.float(), b.out.actions)
            assert torch.equal(a.latent_len, b.latent_len)
            assert torch.equal(a.success, b.success) and torch.equal(a.env_steps, b.env_steps)
        remote.close()
