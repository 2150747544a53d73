"""The ``lastr1`` command line: ``lastr1 <command> [preset=NAME] [--config FILE.yaml] [key=value ...]``.

Each command is a typed dataclass config plus a ``run(cfg)`` function living in its own module;
this file only routes. A command module's ``SECTION`` names its section in the presets
(``src/lastr1/presets/*.yaml``). Modules are imported lazily so ``lastr1 --help`` is instant.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lastr1.config import ConfigError, load_config, preset_names, split_preset, to_dict


@dataclass(frozen=True)
class Command:
    module: str  # defines ``Config`` (dataclass) and ``run(cfg) -> int | None``
    help: str


COMMANDS: dict[str, Command] = {
    "demo": Command("lastr1.commands.demo", "end-to-end: demos → SFT → LAPO → eval → report.md"),
    "envs": Command("lastr1.commands.envs", "list simulator suites and their tasks"),
    "make-demos": Command(
        "lastr1.commands.make_demos", "record successful one-shot demos from scripted experts"
    ),
    "import-demos": Command(
        "lastr1.commands.import_demos", "convert LIBERO's published demos (HDF5 or LeRobot) to a dataset"
    ),
    "sft": Command("lastr1.commands.sft", "one-shot SFT warm-up: actions + grounded latents + stop"),
    "rl": Command("lastr1.commands.rl", "RL post-training: lapo | ppo_action | grpo_action"),
    "eval": Command("lastr1.commands.eval", "evaluate a checkpoint on the eval initial states"),
    "serve": Command("lastr1.commands.serve", "serve a policy to robots over openpi's websocket protocol"),
    "report": Command(
        "lastr1.commands.report", "rebuild report.md (curves, before/after, costs) for an RL run"
    ),
}


def build_parser(help_for: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``help_for`` names the command whose ``--help`` lists every field."""
    parser = argparse.ArgumentParser(
        prog="lastr1",
        description="LaST-R1: latent reasoning VLA policies and LAPO RL post-training.",
        epilog="Every command takes preset=NAME (one of the shipped presets, or a preset YAML's path), "
        "--config FILE.yaml and key=value overrides (nested fields with dots, e.g. env.image_size=96), "
        "applied in that order; --print-config shows the result, `lastr1 COMMAND --help` every field.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=cmd.help,
            description=cmd.help,
            epilog=_fields_epilog(name) if name == help_for else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", help="YAML file with the command's fields", default=None)
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        p.add_argument("--debug", action="store_true", help="show the traceback of an error")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="field overrides")
    return parser


def _fields_epilog(name: str) -> str | None:
    """Every field of a command's config (only built for the command whose help is asked for)."""
    from lastr1.config_help import help_text

    module = importlib.import_module(COMMANDS[name].module)
    presets = f"presets: {', '.join(preset_names())}\n" if getattr(module, "SECTION", None) else ""
    return f"{presets}fields (key=value; type; default; meaning):\n{help_text(module.Config)}"


def _split_flag_overrides(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """Accept ``--key value`` / ``--key=value`` spellings as ``key=value`` overrides too.

    ``aliases`` maps a command's short names to config paths (``--env libero`` → ``env.backend``).
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config="):
            out += ["--config", arg.split("=", 1)[1]]
        elif arg.startswith("--") and arg not in ("--config", "--print-config", "--help", "--debug"):
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")  # only the key: values such as reach-v3 keep their dashes
            if eq:
                out.append(f"{key}={value}")
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                out.append(f"{key}=true")
        else:
            out.append(arg)
        i += 1
    for j, item in enumerate(out):
        key, sep, value = item.partition("=")
        if sep and key in aliases:
            out[j] = f"{aliases[key]}={value}"
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    module = None
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]].module)
        argv = [argv[0], *_split_flag_overrides(argv[1:], getattr(module, "ALIASES", {}))]
    asks_help = bool(argv) and ("-h" in argv or "--help" in argv)
    parser = build_parser(argv[0] if asks_help and module is not None else None)
    args = parser.parse_args(argv)
    if args.command is None or module is None:
        parser.print_help()
        return 0
    try:
        preset, overrides = split_preset(args.overrides)
        section = getattr(module, "SECTION", None)
        if preset and section is None and hasattr(module.Config, "preset"):
            overrides = [f"preset={preset}", *overrides]  # `lastr1 demo` runs a preset's stages itself
            preset = None
        cfg = load_config(module.Config, args.config, overrides, preset=preset, section=section)
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"lastr1 {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    try:
        return int(module.run(cfg) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\nlastr1 {args.command}: interrupted; {_resume_hint(cfg)}", file=sys.stderr)
        return 130
    except FloatingPointError as exc:  # training diverged; checkpoints up to the last good step are kept
        print(f"lastr1 {args.command}: stopped: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        message = user_error(exc)
        if message is None or args.debug:
            raise  # a bug, or --debug: the traceback
        print(f"lastr1 {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


# what to do about a file-system error, by errno
_OS_FIXES = {
    errno.ENOSPC: "free space on that disk, then rerun the same command (it resumes)",
    errno.EDQUOT: "free space on that disk, then rerun the same command (it resumes)",
    errno.EACCES: "make it writable or choose another out=",
    errno.EPERM: "make it writable or choose another out=",
    errno.EROFS: "it is on a read-only file system; choose another out=",
    errno.ENOTDIR: "a part of the path is a file; choose another path",
    errno.EEXIST: "a file is in the way; move it or choose another path",
    errno.EISDIR: "a directory is in the way; choose another path",
}


def user_error(exc: BaseException) -> str | None:
    """One line for a user's mistake (bad value, missing or unwritable file, full disk), or None
    for anything else, which is a bug and keeps its traceback."""
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f"{exc.filename}: " if exc.filename else ""
        fix = _OS_FIXES.get(exc.errno, "check the path and rerun")
        return f"{where}{exc.strerror or exc}; {fix}"
    if isinstance(exc, (ValueError, OSError)):  # our own messages, raised with the fix in them
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _resume_hint(cfg: Any) -> str:
    """Where an interrupted command picks up: the run's newest checkpoint, when it has one."""
    from lastr1.train.checkpoint import CheckpointManager

    out = getattr(cfg, "out", "")
    latest = CheckpointManager(Path(out) / "checkpoints").latest() if out else None
    if latest is not None:
        return f"rerun the same command to resume from {latest}"
    if out and hasattr(cfg, "resume"):
        return "no checkpoint was saved yet; rerun the same command to start again"
    return "rerun the same command to run it again"


if __name__ == "__main__":
    raise SystemExit(main())
