"""Command-line front door: one argparse parser, sub-commands contributed by modules.

Each module that adds a command exposes ``register(subparsers)``; the registry below imports
them by name so that a module still being written (or with a missing optional dependency)
does not break the other commands: its absence is reported, never hidden.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Order = order shown in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "training.pretrained",
    "training.train",
    "training.build",
    "training.export",
    "training.int8_compare",  # adds --compare-schemes to export: after training.export
    "training.evaluate",
    "training.calibrate",
)

EPILOG = (
    "examples:\n"
    "  python -m training fetch-pretrained\n"
    "  python -m training train --task classification --data ../shared/data/sst2/train.tsv --out models/my-teacher\n"
    "  python -m training distil --task classification --teacher models/my-teacher"
    " --data ../shared/data/sst2/train.tsv --out models/my-student\n"
    "  python -m training build-defaults --recipe quick\n"
    "  python -m training export models/sst2-quick-student\n"
    "  python -m training evaluate models/sst2-quick-student --backend onnx --data ../shared/data/sst2/dev.tsv\n"
    "  python -m training calibrate sst2-quick\n"
    "run `python -m training <command> --help` for each command's options and example."
)


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    """Build the parser; return it with the modules that could not be imported (and why)."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Build, distil, export and evaluate distilserve models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    missing: list[str] = []
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a module not written yet, or an optional dependency absent
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        module.register(subparsers)
    return parser, missing


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen command's handler (set with ``set_defaults(func=...)``)."""
    parser, missing = build_parser()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # before parsing: --help, or a command of the missing module ("invalid choice"), ends the run there
    for line in missing:
        logging.getLogger("training").warning("command module not loaded, its commands are unavailable: %s", line)
    args = parser.parse_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


def add_command(
    subparsers: argparse._SubParsersAction, name: str, help_: str, example: str
) -> argparse.ArgumentParser:
    """Add a sub-command whose --help ends with a runnable example (the team's CLI rule)."""
    return subparsers.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
