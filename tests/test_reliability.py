"""Runs never lose or misreport work, driven through the CLI as a user would (docs/reliability.md).

Each test names the defect of the reliability issue it guards: stale checkpoint pointers, NaN
weights kept as "good", eval results lost to an unwritable ``out``, two processes in one run
directory, invalid values accepted, a run record that lies, late validation, and tracebacks for
ordinary mistakes.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lastr1.train.rl as rl
import lastr1.train.sft as sft
from conftest import TINY_POLICY
from lastr1.cli import main
from lastr1.train.checkpoint import CheckpointManager
from lastr1.train.run_dir import RunLock

TOY_ENV = ["env.backend=toy", "env.image_size=32", "env.num_envs=2"]


def _rl_argv(ckpt, out, *extra: str) -> list[str]:
    """A 2-iteration toy RL run (no evaluation unless asked) as CLI arguments."""
    return [
        "rl",
        *TOY_ENV,
        f"checkpoint={ckpt}",
        f"out={out}",
        "iterations=2",
        "rollouts_per_iter=4",
        "group_size=1",
        "minibatches=2",
        "lr=1e-3",
        "value_lr=1e-3",
        "eval_every=0",
        "eval_at_start=false",
        "eval_episodes_per_task=2",
        "progress=false",
        *extra,
    ]


def _sft_argv(data, out, *extra: str) -> list[str]:
    policy = [
        f"policy.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY_POLICY.items()
    ]
    return [
        "sft",
        f"data={data}",
        f"out={out}",
        *policy,
        "teacher.k_max=4",
        "steps=10",
        "batch_size=8",
        "warmup_steps=2",
        "checkpoint_every=5",
        "progress=false",
        *extra,
    ]


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def finished_rl(toy_sft_checkpoint, tmp_path_factory):
    """A finished 2-iteration RL run; tests copy it before touching it."""
    out = tmp_path_factory.mktemp("rel") / "rl"
    assert main(_rl_argv(toy_sft_checkpoint, out)) == 0
    return out


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# 1. a stale `latest` pointer must not throw the run away ------------------------------------------


def test_stale_latest_pointer_resumes_from_newest_complete_checkpoint(
    finished_rl, toy_sft_checkpoint, tmp_path, capsys
):
    run = _copy(finished_rl, tmp_path)
    metrics = (run / "metrics.jsonl").read_text()
    state = (run / "checkpoints" / "step-00000002" / "trainer_state.json").read_text()
    (run / "checkpoints" / "latest").write_text("step-00000099")
    assert main(_rl_argv(toy_sft_checkpoint, run)) == 0
    out = capsys.readouterr().out
    assert "names step-00000099, which does not exist; resuming from step-00000002" in out
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing deleted, nothing redone
    assert (run / "checkpoints" / "step-00000002" / "trainer_state.json").read_text() == state


def test_stale_pointer_with_no_checkpoint_left_is_refused(finished_rl, toy_sft_checkpoint, tmp_path, capsys):
    run = _copy(finished_rl, tmp_path)
    metrics = (run / "metrics.jsonl").read_text()
    for step in CheckpointManager(run / "checkpoints").complete():
        shutil.rmtree(step)
    (run / "checkpoints" / "latest").write_text("step-00000099")
    assert main(_rl_argv(toy_sft_checkpoint, run)) == 2
    _one_line_error(capsys, "names step-00000099, which does not exist", "overwrite=true")
    assert (run / "metrics.jsonl").read_text() == metrics


def test_starting_over_needs_overwrite(finished_rl, toy_sft_checkpoint, tmp_path, capsys):
    run = _copy(finished_rl, tmp_path)
    metrics = (run / "metrics.jsonl").read_text()
    assert main(_rl_argv(toy_sft_checkpoint, run, "resume=false")) == 2
    _one_line_error(capsys, "already holds a run", "overwrite=true")
    assert (run / "metrics.jsonl").read_text() == metrics
    assert main(_rl_argv(toy_sft_checkpoint, run, "resume=false", "overwrite=true", "iterations=1")) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1]  # the old run's rows are gone
    assert [p.name for p in CheckpointManager(run / "checkpoints").complete()] == ["step-00000001"]


# 2. a kept checkpoint always has finite weights ---------------------------------------------------


def test_sft_never_keeps_non_finite_weights(toy_demos, tmp_path, monkeypatch, capsys):
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step_then_overflow(self, *args, **kwargs):  # step 3 gives inf weights from a finite loss
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_overflow)
    out = tmp_path / "sft"
    assert main(_sft_argv(toy_demos, out, "checkpoint_every=1")) == 1
    err = capsys.readouterr().err
    assert "non-finite weights after SFT step 3" in err
    assert "last good checkpoint is kept (step-00000002)" in err
    latest = CheckpointManager(out / "checkpoints").latest()
    assert latest is not None and latest.name == "step-00000002"
    weights = load_file(str(latest / "policy" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


# 3. eval never loses its results ------------------------------------------------------------------


def _eval_argv(ckpt, out) -> list[str]:
    return ["eval", f"checkpoint={ckpt}", *TOY_ENV, "episodes_per_task=2", "videos_per_task=0", f"out={out}"]


def test_eval_refuses_an_unusable_out_before_any_episode(toy_sft_checkpoint, tmp_path, monkeypatch, capsys):
    import lastr1.commands.eval as eval_command

    monkeypatch.setattr(eval_command, "evaluate", lambda *a, **k: pytest.fail("episodes ran"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(_eval_argv(toy_sft_checkpoint, blocker)) == 2
    _one_line_error(capsys, f"out={blocker} is an existing file")
    assert main(_eval_argv(toy_sft_checkpoint, blocker / "sub")) == 2
    _one_line_error(capsys, "cannot create the directory")


def test_eval_prints_the_table_and_saves_elsewhere_when_out_fails(
    toy_sft_checkpoint, tmp_path, monkeypatch, capsys
):
    import lastr1.eval.evaluate as evaluate_module

    def full_disk(result, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(evaluate_module, "save_eval", full_disk)
    assert main(_eval_argv(toy_sft_checkpoint, tmp_path / "ev")) == 1
    captured = capsys.readouterr()
    assert "overall" in captured.out  # the table
    assert "No space left on device" in captured.err and "the results were saved to" in captured.err
    fallback = captured.err.split("the results were saved to ")[1].split(" instead")[0]
    assert json.loads(Path(fallback).read_text())["episodes"] == 4


# 4. one process per run directory -----------------------------------------------------------------


def test_a_second_run_into_a_held_out_is_refused(toy_sft_checkpoint, tmp_path, monkeypatch, capsys):
    import os

    out = tmp_path / "busy"
    with RunLock(out):
        assert main(_rl_argv(toy_sft_checkpoint, out)) == 2
    _one_line_error(capsys, "is in use by another lastr1 process", f"pid {os.getpid()}")
    assert not (out / "metrics.jsonl").exists()


def test_a_dead_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = textwrap.dedent(f"""
        import sys, time
        from lastr1.train.run_dir import RunLock
        RunLock({str(out)!r}).acquire()
        print("held", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"in use by another lastr1 process \\(pid {proc.pid}\\)"):
            RunLock(out).acquire()
    finally:
        proc.kill()  # like kill -9: the kernel releases the lock, the file stays
        proc.wait()
    assert (out / ".lock").exists()
    with RunLock(out):
        pass


# 5. invalid values are refused at load time, naming the field --------------------------------------


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["sft", "steps=0"], "steps=0 must be >= 1"),
        (["rl", "iterations=-1"], "iterations=-1 must be >= 1"),
        (["rl", "lr=-1"], "lr=-1.0 must be > 0"),
        (["rl", "value_lr=0"], "value_lr=0.0 must be > 0"),
        (["rl", "algo.stop.lr=-1"], "algo.stop.lr=-1.0 must be >= 0"),
        (["rl", "algo.kl_coef=-0.1"], "algo.kl_coef=-0.1 must be >= 0"),
        (["rl", "env.num_envs=0"], "env.num_envs=0 must be >= 1"),
        (["sft", "policy.latent_group=0"], "latent_group=0 must be >= 1"),
        (["sft", "policy.n_heads=3"], "must be a multiple of n_heads=3"),
        (["eval", "episodes_per_task=0"], "episodes_per_task=0 must be >= 1"),
        (["eval", "videos_per_task=-1"], "videos_per_task=-1 must be >= 0"),
        (["rl", "lr=[1"], "lr: '[1' is not a valid value"),
    ],
)
def test_invalid_values_are_one_line_config_errors(argv, field, capsys):
    assert main(argv) == 2
    _one_line_error(capsys, "config error", field)


def test_zero_divisor_in_a_config_file_is_a_config_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("policy:\n  latent_group: 0\n")
    assert main(["sft", f"--config={path}"]) == 2
    _one_line_error(capsys, "latent_group=0 must be >= 1")


# 6. the run record tells the truth ----------------------------------------------------------------


def test_resume_with_changed_settings_is_refused_unless_allowed(
    finished_rl, toy_sft_checkpoint, tmp_path, capsys
):
    run = _copy(finished_rl, tmp_path)
    record = (run / "config.yaml").read_text()
    assert main(_rl_argv(toy_sft_checkpoint, run, "iterations=3", "value_lr=5e-4")) == 2
    _one_line_error(capsys, "value_lr: 0.001 -> 0.0005", "allow_changes=value_lr")
    assert (run / "config.yaml").read_text() == record  # a failed command leaves the record alone
    assert not (run / "checkpoints" / "step-00000003").exists()

    assert (
        main(_rl_argv(toy_sft_checkpoint, run, "iterations=3", "value_lr=5e-4", "allow_changes=value_lr"))
        == 0
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["value_lr"] == 5e-4
    history = [json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()]
    assert history == [
        {"time": history[0]["time"], "resumed_at": 2, "changes": {"value_lr": [0.001, 0.0005]}}
    ]
    opt = torch.load(run / "checkpoints" / "step-00000003" / "optimizer.pt", weights_only=True)
    assert {g["name"]: g["lr"] for g in opt["param_groups"]}["value"] == 5e-4  # what the record says


# 7. every setting is checked before the first iteration -------------------------------------------


def test_eval_settings_are_checked_before_training(toy_sft_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rl, "collect", lambda *a, **k: pytest.fail("an iteration ran"))
    out = tmp_path / "late"
    assert main(_rl_argv(toy_sft_checkpoint, out, "eval_episodes_per_task=999")) == 2
    _one_line_error(capsys, "eval_episodes_per_task=999", "eval initial states")
    assert not (out / "config.yaml").exists() and not (out / "metrics.jsonl").exists()


def test_sft_target_lengths_are_checked_before_training(toy_demos, tmp_path, capsys):
    out = tmp_path / "sft"
    argv = _sft_argv(toy_demos, out, "stop_target=per_task", "target_lengths=reach-red=3")
    assert main(argv) == 2
    _one_line_error(capsys, "target length 3 for task 'reach-red' must be one of")
    assert not (out / "config.yaml").exists()


# 8. ordinary mistakes are one-line errors, not tracebacks -----------------------------------------


def test_truncated_episode_file_is_one_line(toy_demos, tmp_path, capsys):
    data = tmp_path / "demos"
    shutil.copytree(toy_demos, data, ignore=shutil.ignore_patterns("latent_targets"))
    episode = sorted(data.rglob("*.npz"))[0]
    episode.write_bytes(episode.read_bytes()[:100])
    assert main(_sft_argv(data, tmp_path / "sft")) == 2
    _one_line_error(capsys, f"episode file {episode} is not a readable .npz")


def test_truncated_weights_file_is_one_line(toy_sft_checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(toy_sft_checkpoint, ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    assert main(_eval_argv(ckpt, tmp_path / "ev")) == 2
    _one_line_error(capsys, f"{weights} is damaged")
    with pytest.raises(ValueError, match="is damaged"):  # --debug: the traceback
        main([*_eval_argv(ckpt, tmp_path / "ev"), "--debug"])


def test_out_an_existing_file_is_one_line(toy_sft_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(_rl_argv(toy_sft_checkpoint, blocker)) == 2
    _one_line_error(capsys, f"out={blocker} is an existing file")
    assert blocker.read_text() == "keep me"


def test_full_disk_is_one_line_and_keeps_earlier_checkpoints(
    toy_sft_checkpoint, tmp_path, monkeypatch, capsys
):
    real_save = rl._save

    def save_or_full(mgr, policy, opt, state):
        if state["iteration"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(mgr.root / "step-00000002.tmp"))
        return real_save(mgr, policy, opt, state)

    monkeypatch.setattr(rl, "_save", save_or_full)
    out = tmp_path / "full"
    assert main(_rl_argv(toy_sft_checkpoint, out)) == 2
    _one_line_error(capsys, "No space left on device", "free space")
    assert CheckpointManager(out / "checkpoints").latest().name == "step-00000001"


def test_read_only_dataset_caches_targets_in_the_run(toy_demos, tmp_path, monkeypatch, capsys):
    data = tmp_path / "demos"
    shutil.copytree(toy_demos, data, ignore=shutil.ignore_patterns("latent_targets"))
    real = sft.writable_dir
    monkeypatch.setattr(sft, "writable_dir", lambda p: False if str(p) == str(data) else real(p))
    out = tmp_path / "sft"
    assert main(_sft_argv(data, out, "steps=2", "checkpoint_every=2")) == 0
    assert "is not writable; caching latent targets under" in capsys.readouterr().out
    assert (out / "latent_targets").is_dir() and not (data / "latent_targets").exists()


def test_ctrl_c_ends_cleanly_saying_where_to_resume(toy_sft_checkpoint, tmp_path, monkeypatch, capsys):
    real_update = rl.update_policy

    def interrupt_at_2(policy, opt, cfg, old, out, it, anchor=None):
        if it == 2:
            raise KeyboardInterrupt
        return real_update(policy, opt, cfg, old, out, it, anchor)

    monkeypatch.setattr(rl, "update_policy", interrupt_at_2)
    out = tmp_path / "ctrl_c"
    assert main(_rl_argv(toy_sft_checkpoint, out)) == 130
    _one_line_error(capsys, "interrupted; rerun the same command to resume from", "step-00000001")
    monkeypatch.setattr(rl, "update_policy", real_update)
    assert main(_rl_argv(toy_sft_checkpoint, out)) == 0  # the lock was released; it resumes
    assert "from iteration 1" in capsys.readouterr().out
