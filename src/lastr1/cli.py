"""The ``lastr1`` command line: ``lastr1 <command> [--config FILE.yaml] [key=value ...]``.

Each command is a typed dataclass config plus a ``run(cfg)`` function living in its own module;
this file only routes. Modules are imported lazily so ``lastr1 --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

import yaml

from lastr1.config import ConfigError, load_config, to_dict


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
    "report": Command(
        "lastr1.commands.report", "rebuild report.md (curves, before/after, costs) for an RL run"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lastr1",
        description="LaST-R1: latent reasoning VLA policies and LAPO RL post-training.",
        epilog="Every command takes --config FILE.yaml and key=value overrides "
        "(nested fields with dots, e.g. env.image_size=96); --print-config shows the result.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument("--config", help="YAML file with the command's fields", default=None)
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="field overrides")
    return parser


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
        elif arg.startswith("--") and arg not in ("--config", "--print-config", "--help"):
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None or module is None:
        parser.print_help()
        return 0
    try:
        cfg = load_config(module.Config, args.config, args.overrides)
    except ConfigError as exc:
        print(f"lastr1 {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    try:
        return int(module.run(cfg) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Input problems surface as one clear line; real bugs keep their traceback.
        print(f"lastr1 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # training diverged; checkpoints up to the last good step are kept
        print(f"lastr1 {args.command}: stopped: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
