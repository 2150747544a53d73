"""``env.vector=ray``: same episodes as ``sync``, and a dead or stalled actor costs only its episodes.

Ray binds every network interface even when told 127.0.0.1, so nothing here starts Ray in the
test process. The Ray checks run once, in a child process (this file run as a script) inside a
loopback-only network namespace it cannot leave (``unshare -n``, then ``ip link set lo up``); each
test then reads its scenario's outcome. They skip where such a namespace cannot be made (not root,
no ``unshare``). The config checks and the collector's handling of failed episodes need no Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lastr1.envs import EnvConfig, EpisodeSpec, make_env
from lastr1.envs.toy import ToyReachEnv, make_single_env, suite_tasks
from lastr1.envs.vector import build_vector_env
from lastr1.rollout.collector import collect

CHUNK = 4
STALL_INDEX = 777  # the train start whose episode stalls its actor (scenario "stalled")
TIMEOUT_S = 4.0  # ray_timeout_s of the stall scenario
CHILD_TIMEOUT_S = 300
HEAD_PORT = 6399  # the `ray start --head` of scenario "joined_cluster" (inside the namespace)


# -- a deterministic scripted policy (per row: no batch effects, so runs with different live sets compare)
@dataclass
class _Out:
    actions: torch.Tensor
    latent_len: torch.Tensor
    value: torch.Tensor

    @classmethod
    def cat(cls, items: list[_Out]) -> _Out:
        return cls(*(torch.cat([getattr(o, f) for o in items]) for f in ("actions", "latent_len", "value")))

    def index(self, rows: list[int]) -> _Out:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return _Out(self.actions[idx], self.latent_len[idx], self.value[idx])


class _Homing:
    """Heads for the instructed target at a fifth of the distance per chunk: episodes span chunks."""

    def act(self, obs, mode="sample", generator=None, **_):
        priv = obs.privileged  # agent xy, red xy, blue xy
        target = np.where(obs.task[:, None] == 0, priv[:, 2:4], priv[:, 4:6])
        step = np.clip((target - priv[:, :2]) / 0.1 / (5 * CHUNK), -1, 1)
        actions = np.zeros((len(obs), CHUNK, 7))
        actions[:, :, :2] = step[:, None]
        return _Out(
            torch.from_numpy(actions),
            torch.from_numpy(obs.slot.copy()),  # which slot decided: checked against the rows kept
            torch.from_numpy(priv[:, 0].astype(np.float32)),
        )


def _toy_env(vector: str = "sync", factory=make_single_env, **kw):
    cfg = EnvConfig(backend="toy", image_size=16, vector=vector, **kw)  # type: ignore[arg-type]
    return build_vector_env(cfg, suite_tasks("toy"), factory, max_cached_per_slot=2)


def _specs(first_budget: int = 25) -> list[EpisodeSpec]:
    """Four train episodes; slots 0 and 2 end after one chunk (``first_budget`` = CHUNK)."""
    return [
        EpisodeSpec(0, "train", 11, max_steps=first_budget),
        EpisodeSpec(1, "train", 12),
        EpisodeSpec(1, "train", 13, max_steps=first_budget),
        EpisodeSpec(0, "train", 14),
    ]


def _episode(roll, i: int) -> dict:
    m = roll.mask[i]
    return {
        "success": bool(roll.success[i]),
        "env_steps": int(roll.env_steps[i]),
        "rewards": roll.rewards[i][m].tolist(),
        "values": roll.values[i][m].tolist(),
        "actions": roll.out.actions[roll.index[i][m]].tolist(),
        "slots": roll.latent_len[i][m].tolist(),
    }


# -- no Ray needed ------------------------------------------------------------------------------------
def test_ray_fields_are_checked_and_the_errors_name_the_fix():
    ok = EnvConfig(backend="toy", vector="ray", num_envs=6, envs_per_worker=2)
    assert ok.ray_actors == 3
    assert (
        EnvConfig(backend="toy", vector="ray", num_envs=4, ray_workers=2, envs_per_worker=2).ray_actors == 2
    )
    with pytest.raises(
        ValueError, match=r"env.ray_workers \* env.envs_per_worker \(3 \* 2 = 6\).*env.num_envs=6"
    ):
        EnvConfig(vector="ray", num_envs=4, ray_workers=3, envs_per_worker=2)
    with pytest.raises(ValueError, match="not a multiple of env.envs_per_worker=2; set env.num_envs=4 or 6"):
        EnvConfig(vector="ray", num_envs=5, envs_per_worker=2)
    with pytest.raises(
        ValueError, match=r"env.ray_workers=2 apply to env.vector=ray only.*set env.vector=ray"
    ):
        EnvConfig(vector="async", num_envs=2, ray_workers=2)
    with pytest.raises(ValueError, match="env.ray_address='10.0.0.1' is not '', 'auto' or HOST:PORT"):
        EnvConfig(vector="ray", ray_address="10.0.0.1")
    with pytest.raises(ValueError, match="env.ray_timeout_s=0 must be > 0"):
        EnvConfig(vector="ray", ray_timeout_s=0)
    with pytest.raises(ValueError, match="env.envs_per_worker=0 must be >= 1"):
        EnvConfig(vector="ray", envs_per_worker=0)
    for address in ("auto", "10.0.0.1:6379", "head-node.local:6379"):
        assert EnvConfig(vector="ray", ray_address=address).ray_address == address


def test_lastr1_never_imports_ray_unless_asked():
    code = (
        "import sys, lastr1, lastr1.envs, lastr1.envs.vector, lastr1.rollout.collector, lastr1.train.rl\n"
        "from lastr1.envs import EnvConfig, make_env\n"
        "make_env(EnvConfig(backend='toy', num_envs=1)).close()\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_collector_drops_a_failed_episode_and_keeps_the_others():
    """A slot flagged failed between two chunks (what a dead Ray actor does to its live episodes):
    it ends, its decisions leave the rollout, the completed ones equal an undisturbed run."""
    specs = _specs()
    with _toy_env(num_envs=4) as env:
        clean = collect(env, _Homing(), specs, pipeline=2)
    with _toy_env(num_envs=4) as env:
        calls = []

        def fail_slot_1(_steps: int) -> None:
            calls.append(_steps)
            if len(calls) == 3:  # slot 1 has run two chunks and waits for its next decision
                env._mark_failed([1])

        roll = collect(env, _Homing(), specs, pipeline=2, on_decision=fail_slot_1)
    assert clean.mask[1].sum() > 2, "slot 1 must still be running when it fails"
    assert roll.failed.tolist() == [False, True, False, False] and roll.num_failed == 1
    assert not roll.mask[1].any() and not roll.success[1]
    assert sorted(roll.index[roll.mask].tolist()) == list(range(len(roll.out.actions)))  # rows renumbered
    assert 1 not in roll.out.latent_len.tolist()  # no decision of slot 1 is kept
    for i in (0, 2, 3):
        assert _episode(roll, i) == _episode(clean, i)
    done = roll.completed()
    assert (
        done.task.tolist() == [0, 1, 0] and done.num_failed == 0 and done.num_decisions == roll.num_decisions
    )


# -- Ray, in a loopback-only network namespace ----------------------------------------------------------
def _namespace_unavailable() -> str:
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root for a loopback-only network namespace (unshare -n)"
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "needs unshare and ip for a loopback-only network namespace"
    probe = subprocess.run(
        ["unshare", "-n", "--", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode:
        return f"cannot make a loopback-only network namespace: {probe.stderr.strip()[:200]}"
    return ""


@pytest.fixture(scope="module")
def ray_outcomes(tmp_path_factory):
    """Run every Ray scenario once in the namespaced child; {scenario: outcome}."""
    pytest.importorskip("ray")
    reason = _namespace_unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("ray") / "outcomes.json"
    ray_tmp = tempfile.mkdtemp(prefix="lr1ray", dir="/tmp")  # short: Ray's socket paths have a length cap
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",  # nothing outside the namespace can reach it; keeps ~/.ray untouched
        "RAY_TMPDIR": ray_tmp,
        "RAY_USAGE_STATS_ENABLED": "0",
        "LASTR1_STALL_MARKER": os.path.join(ray_tmp, "stall-once"),
    }
    cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    proc = subprocess.Popen(
        [*cmd, sys.executable, __file__, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if not out.exists():
        pytest.fail(f"the Ray child wrote no outcomes (exit {proc.returncode}):\n{log[-6000:]}")
    return json.loads(out.read_text())


def _outcome(outcomes: dict, name: str) -> dict:
    got = outcomes[name]
    if got.get("error"):
        pytest.fail(f"ray scenario {name!r} failed in the child:\n{got['error']}")
    return got


def test_ray_env_equals_sync_env_on_toy(ray_outcomes):
    got = _outcome(ray_outcomes, "toy_equivalence")
    assert got["decisions"] > 8 and got["pipeline"] == 2


def test_ray_env_equals_sync_env_on_metaworld(ray_outcomes):
    got = _outcome(ray_outcomes, "metaworld_equivalence")
    if got.get("skipped"):
        pytest.skip(got["skipped"])
    assert got["chunks"] == 3


def test_local_ray_instance_starts_and_stops_with_its_env(ray_outcomes):
    _outcome(ray_outcomes, "local_instance")


def test_env_joins_a_running_cluster_and_leaves_it_running(ray_outcomes):
    got = _outcome(ray_outcomes, "joined_cluster")
    assert got["gcs_address"] == f"127.0.0.1:{HEAD_PORT}"


def test_killed_actor_loses_only_its_running_episode(ray_outcomes):
    got = _outcome(ray_outcomes, "killed")
    assert got["failed"] == [False, False, False, True]
    assert got["restarts"] == 1 and got["failed_episodes"] == 1
    assert got["warning"] and "discarded 1 in-flight episode(s) [3]" in got["warning"]


def test_stalled_actor_is_replaced_after_the_timeout(ray_outcomes):
    got = _outcome(ray_outcomes, "stalled")
    assert got["failed"] == [False, True, False, False]
    assert got["restarts"] == 1 and got["stalled_pid_gone"]
    assert TIMEOUT_S <= got["seconds"] < TIMEOUT_S + 30


# -- the child: run as a script inside the namespace ---------------------------------------------------
class _StallingToyEnv(ToyReachEnv):
    """The toy env, except that train start STALL_INDEX hangs its actor once, in its second chunk."""

    def reset(self, init_set, init_index):
        self._index, self._steps = init_index, 0
        return super().reset(init_set, init_index)

    def step(self, action, render=True):
        self._steps += 1
        if self._index == STALL_INDEX and self._steps == CHUNK + 1:
            try:
                os.remove(os.environ["LASTR1_STALL_MARKER"])  # only the first actor stalls
            except (KeyError, FileNotFoundError):
                pass
            else:
                time.sleep(600)
        return super().step(action, render)


def _stalling_factory(task, cfg):
    return _StallingToyEnv(task, cfg)


def _same_rollouts(a, b, slots) -> None:
    for i in slots:
        assert _episode(a, i) == _episode(b, i), f"slot {i} differs"


def _open_local_instance(envs: list) -> dict:
    """The first env starts a private Ray instance; it stays open while the other scenarios run."""
    import ray

    assert not ray.is_initialized()
    envs.append(_toy_env("ray", num_envs=2, envs_per_worker=2))
    assert ray.is_initialized() and envs[0]._holds_local_ray
    assert len(set(envs[0].actor_pids())) == 1  # one actor, two slots
    return {}


def _close_local_instance(envs: list) -> dict:
    """The other scenarios' envs closed without stopping the instance; neither does closing the env
    that started it while another is open; closing the last one stops it."""
    import ray

    assert ray.is_initialized(), "Ray stopped while an env on it was still open"
    envs[0].reset([EpisodeSpec(0), EpisodeSpec(1)])  # its actor still works
    with _toy_env("ray", num_envs=1) as last:
        envs[0].close()
        assert ray.is_initialized(), "Ray stopped with its starter while another env was open"
        last.reset([EpisodeSpec(1)])
    assert not ray.is_initialized(), "an env started Ray, so closing the last env on it must stop Ray"
    return {}


def _scenario_joined_cluster() -> dict:
    """``env.ray_address=HOST:PORT`` joins a `ray start --head` cluster, and closing the env leaves it up."""
    import ray

    cli = str(Path(sys.executable).with_name("ray"))
    flags = ["--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", "--block"]
    head = subprocess.Popen(
        [cli, "start", "--head", f"--port={HEAD_PORT}", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its process group holds the cluster's daemons: killed at the end
    )
    try:
        status = [cli, "status", f"--address=127.0.0.1:{HEAD_PORT}"]
        for _ in range(120):
            if subprocess.run(status, capture_output=True, timeout=60).returncode == 0:
                break
            time.sleep(0.5)
        with _toy_env("ray", num_envs=2, ray_address=f"127.0.0.1:{HEAD_PORT}") as env:
            gcs = ray.get_runtime_context().gcs_address
            assert not env._holds_local_ray
            assert env.reset([EpisodeSpec(0), EpisodeSpec(1)]).images.shape == (2, 1, 16, 16, 3)
        assert ray.is_initialized(), "closing the env disconnected from the cluster it joined"
        ray.shutdown()
        assert subprocess.run(status, capture_output=True, timeout=60).returncode == 0, "the cluster stopped"
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
    return {"gcs_address": gcs}


def _scenario_toy_equivalence() -> dict:
    from conftest import TINY_POLICY
    from lastr1.models.policy import LastR1Policy, PolicyConfig

    torch.manual_seed(0)
    policy = LastR1Policy(PolicyConfig(**TINY_POLICY, image_size=16, proprio_dim=2, chunk=CHUNK)).eval()
    specs = _specs(first_budget=9)
    rolls = {}
    for vector, kw in (("sync", {}), ("ray", {"ray_workers": 2, "envs_per_worker": 2})):
        with _toy_env(vector, num_envs=4, **kw) as env:
            gen = torch.Generator().manual_seed(3)
            rolls[vector] = collect(env, policy, specs, generator=gen, pipeline=2, record_frames=2)
            # the raw API too: chunks, single steps, experts, init-state counts
            env.reset(specs)
            chunk = np.random.default_rng(0).uniform(-1, 1, size=(4, CHUNK, 7))
            raw = [env.step_chunk(chunk, record=1), env.step(chunk[:, 0])]
            rolls[vector + "_raw"] = (raw, env.expert_actions([1, 3]), env.num_init_states(1, "eval"))
    s, r = rolls["sync"], rolls["ray"]
    assert s.num_decisions == r.num_decisions and torch.equal(s.mask, r.mask)
    for name in ("rewards", "success", "env_steps", "latent_len", "values"):
        assert torch.equal(getattr(s, name), getattr(r, name)), name
    assert torch.equal(s.out.inputs.images, r.out.inputs.images)  # every observation the policy saw
    assert torch.equal(s.out.inputs.proprio, r.out.inputs.proprio)
    assert torch.equal(s.out.action_tokens, r.out.action_tokens)
    for fs, fr in zip(s.frames, r.frames, strict=True):
        np.testing.assert_array_equal(np.stack(fs), np.stack(fr))
    (raw_s, exp_s, n_s), (raw_r, exp_r, n_r) = rolls["sync_raw"], rolls["ray_raw"]
    for a, b in zip(raw_s, raw_r, strict=True):
        np.testing.assert_array_equal(a.obs.images, b.obs.images)
        np.testing.assert_array_equal(a.obs.proprio, b.obs.proprio)
        np.testing.assert_array_equal(a.reward, b.reward)
        assert a.info.keys() == b.info.keys()
        for k in a.info:
            np.testing.assert_array_equal(a.info[k], b.info[k])
    assert [len(f) for f in raw_r[0].frames] == [CHUNK]
    np.testing.assert_array_equal(exp_s, exp_r)
    assert n_s == n_r == 50
    assert not r.failed.any()
    return {"decisions": r.num_decisions, "pipeline": 2}


def _scenario_metaworld_equivalence() -> dict:
    try:
        import lastr1.envs.metaworld  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"Meta-World does not import: {exc}"}
    got = {}
    for vector, kw in (("sync", {}), ("ray", {"envs_per_worker": 2})):
        cfg = EnvConfig(
            backend="metaworld",
            tasks=["reach-v3"],
            num_envs=2,
            image_size=32,
            max_steps=40,
            vector=vector,
            **kw,
        )
        with make_env(cfg) as env:
            rng = np.random.default_rng(0)
            obs = [env.reset([EpisodeSpec(0, "train", 0), EpisodeSpec(0, "eval", 1)])]
            for _ in range(3):
                res = env.step_chunk(rng.uniform(-1, 1, size=(2, CHUNK, 7)))
                obs.append(res.obs)
            got[vector] = obs
    for a, b in zip(got["sync"], got["ray"], strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.proprio, b.proprio)
        np.testing.assert_array_equal(a.privileged, b.privileged)
    return {"chunks": len(got["ray"]) - 1}


class _Warnings:
    """Collects the ray env's warnings (the log line a user sees when an actor is replaced)."""

    def __init__(self):
        import logging

        self.messages: list[str] = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.messages.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("lastr1.envs.ray_vector").addHandler(self.handler)


def _scenario_killed() -> dict:
    specs = _specs(first_budget=CHUNK)
    with _toy_env(num_envs=4) as env:
        clean = [collect(env, _Homing(), specs, pipeline=2) for _ in range(2)]
    assert clean[0].mask[3].sum() > 2, "slot 3 must still be running when its actor dies"
    warnings = _Warnings()
    with _toy_env("ray", num_envs=4, envs_per_worker=2) as env:
        pid = env.actor_pids()[1]  # the actor of slots 2 and 3
        calls = []

        def kill_after_second_chunk(_steps: int) -> None:
            calls.append(_steps)
            if len(calls) == 2:  # slots 2 and 3 have run one chunk: slot 2 is done, slot 3 runs on
                os.kill(pid, signal.SIGKILL)

        roll = collect(env, _Homing(), specs, pipeline=2, on_decision=kill_after_second_chunk)
        again = collect(env, _Homing(), specs, pipeline=2)  # the run goes on, on the new actor
        restarts, failed_episodes = env.restarts, env.failed_episodes
        assert env.actor_pids()[1] != pid
    _same_rollouts(roll, clean[0], [0, 1, 2])  # slot 2 finished on the dead actor: kept as it was
    assert not roll.mask[3].any() and roll.num_failed == 1
    _same_rollouts(again, clean[1], range(4))
    assert not again.failed.any()
    return {
        "failed": roll.failed.tolist(),
        "restarts": restarts,
        "failed_episodes": failed_episodes,
        "warning": " | ".join(warnings.messages),
    }


def _scenario_stalled() -> dict:
    specs = _specs(first_budget=CHUNK)
    specs[1] = EpisodeSpec(1, "train", STALL_INDEX)  # slot 1, on actor 0 with slot 0 (done after a chunk)
    with _toy_env(num_envs=4, factory=_stalling_factory) as env:  # no marker: nothing stalls
        clean = collect(env, _Homing(), specs)
    assert clean.mask[1].sum() > 1, "slot 1 must reach its second chunk"
    Path(os.environ["LASTR1_STALL_MARKER"]).touch()
    with _toy_env(
        "ray", num_envs=4, envs_per_worker=2, ray_timeout_s=TIMEOUT_S, factory=_stalling_factory
    ) as env:
        pid = env.actor_pids()[0]
        t0 = time.perf_counter()
        roll = collect(env, _Homing(), specs)
        seconds = time.perf_counter() - t0
        restarts = env.restarts
        again = collect(env, _Homing(), specs)
    assert not os.path.exists(os.environ["LASTR1_STALL_MARKER"]), "the stall never happened"
    _same_rollouts(roll, clean, [0, 2, 3])
    _same_rollouts(again, clean, range(4))  # the replacement does not stall: the run goes on
    assert not again.failed.any()
    gone = False
    for _ in range(50):  # the killed actor's process exits
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            gone = True
            break
        time.sleep(0.1)
    return {
        "failed": roll.failed.tolist(),
        "restarts": restarts,
        "seconds": seconds,
        "stalled_pid_gone": gone,
    }


def _child(out: Path) -> None:
    names = {name for _, name in socket.if_nameindex()}
    if names != {"lo"}:  # never start Ray where it could be reached
        raise SystemExit(f"refusing to start Ray: network interfaces {sorted(names)} are not loopback only")
    import ray

    outcomes: dict[str, dict] = {}

    def run(name, fn):
        t0 = time.perf_counter()
        try:
            outcomes[name] = fn() or {}
        except Exception:
            outcomes[name] = {"error": traceback.format_exc()}
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)

    run("joined_cluster", _scenario_joined_cluster)
    envs: list = []  # the env that starts the local instance the other scenarios share
    run("local_instance", lambda: _open_local_instance(envs))
    try:
        run("toy_equivalence", _scenario_toy_equivalence)
        run("killed", _scenario_killed)
        run("stalled", _scenario_stalled)
        run("metaworld_equivalence", _scenario_metaworld_equivalence)
        if not outcomes["local_instance"].get("error"):
            run("local_instance", lambda: _close_local_instance(envs))
    finally:
        ray.shutdown()
    out.write_text(json.dumps(outcomes))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # conftest's TINY_POLICY
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    torch.set_num_threads(1)
    _child(Path(sys.argv[1]))
