"""The command-line router: help, config errors as one line, listing environments."""

from __future__ import annotations

import pytest

from lastr1.cli import COMMANDS, main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_field_is_one_line_error(capsys):
    assert main(["envs", "colour=red"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "colour: unknown field" in err


def test_flag_style_overrides_and_print_config(capsys):
    assert main(["envs", "--backend", "toy", "--print-config"]) == 0
    assert "backend: toy" in capsys.readouterr().out


def test_envs_lists_toy_tasks(capsys):
    assert main(["envs", "backend=toy"]) == 0
    out = capsys.readouterr().out
    assert "reach-red" in out and "move the gripper to the blue target" in out


def test_bad_backend_is_clear(capsys):
    assert main(["envs", "backend=gazebo"]) == 2
    assert "backend='gazebo' is unknown" in capsys.readouterr().err


def test_unknown_command_exits_nonzero():
    with pytest.raises(SystemExit) as exc:
        main(["fly"])
    assert exc.value.code != 0


def test_issue_spelling_of_make_demos_flags(capsys):
    argv = ["make-demos", "--env", "metaworld", "--tasks=reach-v3,drawer-open-v3"]
    argv += ["--episodes-per-task", "1", "--out", "runs/x", "--print-config"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "backend: metaworld" in out and "- reach-v3" in out and "- drawer-open-v3" in out
    assert "episodes_per_task: 1" in out and "out: runs/x" in out


def test_wrong_type_names_the_field(capsys):
    assert main(["make-demos", "episodes_per_task=many"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "episodes_per_task" in err


def test_config_equals_spelling_reads_the_file(tmp_path, capsys):
    path = tmp_path / "envs.yaml"
    path.write_text("backend: toy\n")
    assert main(["envs", f"--config={path}", "--print-config"]) == 0
    assert "backend: toy" in capsys.readouterr().out
