"""Scale-out throughput, each section against a baseline measured in the same run.

Section "env workers": rollout env steps/s with Ray actors (``env.vector=ray``) against subprocess
workers (``env.vector=async``) at equal cores: the same ``--workers`` processes holding the same
``--num-envs`` slots, Meta-World, random action chunks (``raw chunk``, the simulator alone) and the
rollout collector with an untrained policy (``collect pN``). Ray's overhead is the ratio (aim: >= 0.9).
Rounds alternate the two modes so load on a shared machine hits both alike; a Ray instance is
started before and stopped after each Ray measurement, so the async rows run without Ray's daemons.

Two ratios: wall-clock steps/s, and env steps per CPU-second of this process and all its descendants
(the workers, and Ray's raylet, GCS and helpers). On a machine shared with other jobs the first moves
with their load; the second counts the work each mode costs, whatever the load.

Section "DDP learner": ``benchmarks/scaling_ddp.py``'s ``measure_ddp_scaling(args)``, with ``--ddp``.
Its options are passed as ``--ddp-<option> VALUE`` (``--ddp-procs 1,2 --ddp-rollouts 16``; the list
is ``python benchmarks/scaling_ddp.py --help``); only those reach it, never this script's own.

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/scaling.py
    ... --num-envs 4 --workers 2 --rounds 3 --max-steps 80
    ... --kinds raw              # simulator only, no policy
    ... --ddp                    # add the distributed-learner section
    ... --kinds raw --ddp --ddp-procs 1,2 --ddp-iterations 2

Ray binds every network interface, whatever address it is given. So the script re-executes itself
inside a loopback-only network namespace (``unshare -n``, needs root) unless it already runs in one;
``--no-netns`` skips that and lets Ray listen on this machine's interfaces (a trusted network only).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from lastr1.envs import EnvConfig, EpisodeSpec, make_env

DDP_MODULE = Path(__file__).with_name("scaling_ddp.py")
_NETNS_FLAG = "LASTR1_SCALING_NETNS"  # set in the re-executed child: it runs in the namespace


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="reach-v3,drawer-open-v3", help="Meta-World tasks, comma-separated")
    p.add_argument("--num-envs", type=int, default=4, help="env slots (the same in both modes)")
    p.add_argument("--workers", type=int, default=2, help="worker processes: async subprocesses = Ray actors")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=80, help="episode length (random actions rarely succeed)")
    p.add_argument("--rounds", type=int, default=2, help="measurements per mode, alternating async/ray")
    p.add_argument("--episodes", type=int, default=1, help="rounds of num_envs episodes per measurement")
    p.add_argument("--kinds", default="raw,collect", help="raw (env only) and/or collect (with a policy)")
    p.add_argument("--pipeline", type=int, default=2, help="collect: slot groups taking turns")
    p.add_argument(
        "--ddp", action="store_true", help="add the DDP learner section (benchmarks/scaling_ddp.py)"
    )
    p.add_argument("--no-netns", action="store_true", help="run Ray on this machine's interfaces (see above)")
    args, extra = p.parse_known_args(argv)
    try:
        args.ddp_options = _ddp_options(extra)
    except ValueError as exc:
        p.error(str(exc))
    if args.num_envs % args.workers:
        p.error(
            f"--num-envs {args.num_envs} must be a multiple of --workers {args.workers} (slots per actor)"
        )
    return args


def _ddp_options(extra: list[str]) -> argparse.Namespace:
    """``--ddp-<name> VALUE`` flags as ``ddp_<name>`` attributes (integers where they parse).

    Why a namespace of its own: ``measure_ddp_scaling`` also reads plain ``<name>`` attributes, and
    this script's ``--tasks`` or ``--num-envs`` (Meta-World env workers) must not become the DDP run's.
    """
    options: dict[str, Any] = {}
    items = iter(extra)
    for flag in items:
        if not flag.startswith("--ddp-"):
            raise ValueError(f"unrecognized argument {flag!r} (DDP options are spelled --ddp-<option>)")
        name, has_value, value = flag[2:].partition("=")
        if not has_value:
            value = next(items, "")
            if not value or value.startswith("--"):
                raise ValueError(f"{flag} needs a value")
        options[name.replace("-", "_")] = int(value) if value.lstrip("-").isdigit() else value
    return argparse.Namespace(**options)


# -- network safety ---------------------------------------------------------------------------------
def _loopback_only() -> bool:
    return {name for _, name in socket.if_nameindex()} == {"lo"}


def _reexec_in_netns(argv: list[str]) -> int:
    """Run this script again inside a fresh loopback-only network namespace; its exit code."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        sys.exit(
            "scaling.py: a loopback-only network namespace needs root, unshare and ip; "
            "run as root, or pass --no-netns to let Ray listen on this machine's interfaces"
        )
    env = {**os.environ, _NETNS_FLAG: "1"}
    cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    return subprocess.call([*cmd, sys.executable, os.path.abspath(__file__), *argv], env=env)


# -- section: env workers -----------------------------------------------------------------------------
def _env_config(args: argparse.Namespace, vector: str) -> EnvConfig:
    layout: dict[str, Any] = (
        {"workers": args.workers}
        if vector == "async"
        else {"ray_workers": args.workers, "envs_per_worker": args.num_envs // args.workers}
    )
    return EnvConfig(
        backend="metaworld",
        tasks=args.tasks.split(","),
        num_envs=args.num_envs,
        image_size=args.image_size,
        max_steps=args.max_steps,
        vector=vector,  # type: ignore[arg-type]
        **layout,
    )


def _specs(n: int, num_tasks: int, rnd: int) -> list[EpisodeSpec]:
    return [EpisodeSpec((rnd * n + i) % num_tasks, "train", rnd * n + i) for i in range(n)]


def _tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its live descendants."""
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:  # exited meanwhile
            continue
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0.0)
        todo += [child for child, p in parent.items() if p == pid]
    return total


def _raw_chunks(env: Any, episodes: int, chunk: int, seed: int) -> tuple[int, float, float]:
    """Env steps, seconds and CPU seconds of ``episodes`` rounds of random-chunk episodes in every slot."""
    rng = np.random.default_rng(seed)
    steps = 0
    cpu0, t0 = _tree_cpu_seconds(), time.perf_counter()
    for rnd in range(episodes):
        env.reset(_specs(env.num_envs, len(env.tasks), rnd))
        while not env.done.all():
            res = env.step_chunk(rng.uniform(-1, 1, size=(env.num_envs, chunk, 7)))
            steps += int(res.info["chunk_steps"].sum())
    return steps, time.perf_counter() - t0, _tree_cpu_seconds() - cpu0


def _collect(env: Any, policy: Any, episodes: int, pipeline: int) -> tuple[int, float, float]:
    """The same for the rollout collector with ``policy`` sampling."""
    from lastr1.rollout.collector import collect

    gen = torch.Generator().manual_seed(0)
    steps = 0
    cpu0, t0 = _tree_cpu_seconds(), time.perf_counter()
    for rnd in range(episodes):
        roll = collect(
            env, policy, _specs(env.num_envs, len(env.tasks), rnd), generator=gen, pipeline=pipeline
        )
        steps += int(roll.env_steps.sum())
    return steps, time.perf_counter() - t0, _tree_cpu_seconds() - cpu0


def _measure_once(args: argparse.Namespace, vector: str, policy: Any, kinds: list[str]) -> dict[str, tuple]:
    """One warmed-up measurement of every kind for one mode; Ray is started and stopped around it."""
    owns_ray = False
    if vector == "ray":
        from lastr1.envs.ray_vector import connect

        owns_ray = connect(_env_config(args, vector))
    try:
        with make_env(_env_config(args, vector)) as env:
            chunk = policy.config.chunk
            _raw_chunks(env, 1, chunk, seed=99)  # warm-up: worker start, simulators built, first renders
            out = {}
            if "raw" in kinds:
                out["raw chunk"] = _raw_chunks(env, args.episodes, chunk, seed=0)
            if "collect" in kinds:
                out[f"collect p{args.pipeline}"] = _collect(env, policy, args.episodes, args.pipeline)
            return out
    finally:
        if owns_ray:
            import ray

            ray.shutdown()


def measure_env_workers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of env steps/s for async and ray workers, with Ray's ratio to async per kind."""
    from lastr1.models.policy import LastR1Policy, PolicyConfig

    probe = EnvConfig(
        backend="metaworld", tasks=args.tasks.split(",")[:1], num_envs=1, image_size=args.image_size
    )
    with make_env(probe) as env:  # the policy's proprio size is the backend's
        proprio_dim = env.reset([EpisodeSpec(0)]).proprio.shape[1]
    torch.manual_seed(0)
    policy = LastR1Policy(PolicyConfig(image_size=args.image_size, proprio_dim=proprio_dim)).eval()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    totals: dict[tuple[str, str], np.ndarray] = {}  # (mode, kind) -> [steps, seconds, CPU seconds]
    for rnd in range(args.rounds):
        for vector in ("async", "ray") if rnd % 2 == 0 else ("ray", "async"):
            for kind, got in _measure_once(args, vector, policy, kinds).items():
                totals[(vector, kind)] = totals.get((vector, kind), np.zeros(3)) + got
                steps, seconds, cpu = got
                print(
                    f"  round {rnd} {vector} {kind}: {steps / seconds:.1f} steps/s, {steps / cpu:.1f} steps/CPU-s",
                    file=sys.stderr,
                    flush=True,
                )
    rows = []
    for (vector, kind), (steps, seconds, cpu) in totals.items():
        base_steps, base_seconds, base_cpu = totals[("async", kind)]
        rows.append(
            {
                "kind": kind,
                "mode": vector,
                "workers": args.workers,
                "envs": args.num_envs,
                "env steps": int(steps),
                "steps/s": steps / seconds,
                "vs async": (steps / seconds) / (base_steps / base_seconds),
                "steps/CPU-s": steps / cpu,
                "CPU vs async": (steps / cpu) / (base_steps / base_cpu),
            }
        )
    return sorted(rows, key=lambda r: (r["kind"], r["mode"] != "async"))


def print_env_workers(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    print(
        f"\nenv workers: Meta-World {args.tasks}, {args.image_size}px, {args.max_steps} steps/episode, "
        f"{args.num_envs} slots in {args.workers} processes, {args.rounds} x {args.episodes} round(s) per mode"
    )
    print(
        f"{'kind':<11} {'mode':<6} {'env steps':>9} {'steps/s':>8} {'vs async':>8} {'steps/CPU-s':>11}"
        f" {'CPU vs async':>12}"
    )
    for r in rows:
        print(
            f"{r['kind']:<11} {r['mode']:<6} {r['env steps']:>9d} {r['steps/s']:>8.1f} {r['vs async']:>7.2f}x"
            f" {r['steps/CPU-s']:>11.1f} {r['CPU vs async']:>11.2f}x"
        )


# -- section: DDP learner ------------------------------------------------------------------------------
def measure_ddp(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """``scaling_ddp.measure_ddp_scaling(args)`` when asked for and present; None (with a line) if not."""
    if not args.ddp:
        print("\nDDP learner: skipped (pass --ddp)")
        return None
    if not DDP_MODULE.exists():
        print(f"\nDDP learner: skipped ({DDP_MODULE.name} is not written yet)")
        return None
    spec = importlib.util.spec_from_file_location("scaling_ddp", DDP_MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.measure_ddp_scaling(args.ddp_options)


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    """A plain table of dict rows (the DDP section's format is its own)."""
    print(f"\n{title}")
    if not rows:
        print("(no rows)")
        return
    keys = list(rows[0])
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = {k: max(len(k), *(len(cell(r.get(k, ""))) for r in rows)) for k in keys}
    print(" ".join(f"{k:>{widths[k]}}" for k in keys))
    for r in rows:
        print(" ".join(f"{cell(r.get(k, '')):>{widths[k]}}" for k in keys))


def _machine() -> str:
    model = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return f"{names[0] if names else model}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    if not args.no_netns and os.environ.get(_NETNS_FLAG) != "1" and not _loopback_only():
        return _reexec_in_netns(argv)
    if not args.no_netns and not _loopback_only():
        sys.exit("scaling.py: expected a loopback-only network namespace; refusing to start Ray")
    ray_tmp = None
    if not os.environ.get("RAY_TMPDIR"):  # Ray's session files go away with the run
        ray_tmp = tempfile.mkdtemp(prefix="lr1ray", dir="/tmp")
        os.environ["RAY_TMPDIR"] = ray_tmp
    if not args.no_netns:  # nothing outside the namespace can connect; keep ~/.ray untouched
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(1)
    print(f"scaling.py on {_machine()}, {time.strftime('%Y-%m-%d')}", flush=True)
    try:
        print_env_workers(args, measure_env_workers(args))
        ddp_rows = measure_ddp(args)
        if ddp_rows is not None:
            print_rows("DDP learner", ddp_rows)
    finally:
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
