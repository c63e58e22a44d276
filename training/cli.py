"""Command-line front door: one argparse parser, sub-commands contributed by modules.

Each module that adds a command exposes ``register(subparsers)``; the registry below imports
them by name so that a module still being written (or with a missing optional dependency)
does not break the other commands: its absence is reported, never hidden.

A command that fails on its input (bad data, a wrong option, a missing file: ``DataError``,
``ValueError``, ``OSError``) ends with one ``error: ...`` line on stderr and exit status 2; ``-v``
prints the traceback too. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.data import Columns

# Order = order shown in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "training.pretrained",
    "training.train",
    "training.build",
    "training.export",
    "training.int8_compare",  # adds --compare-schemes to export: after training.export
    "training.evaluate",
    "training.int8_guard",
    "training.int8_agreement",
    "training.calibrate",
    "training.curve",
)

EPILOG = (
    "examples:\n"
    "  python -m training fetch-pretrained\n"
    "  python -m training train --task classification --data ../shared/data/sst2/train.tsv --out models/my-teacher\n"
    "  python -m training distil --task classification --teacher models/my-teacher"
    " --data ../shared/data/sst2/train.tsv --out models/my-student\n"
    "  python -m training build-defaults --recipe quick\n"
    "  python -m training build --task classification --data tickets.csv --no-header --name tickets\n"
    "  python -m training export models/sst2-quick-student\n"
    "  python -m training evaluate models/sst2-quick-student --backend onnx --data ../shared/data/sst2/dev.tsv\n"
    "  python -m training guard models/squad-quick-student\n"
    "  python -m training agreement models/sst2-quick-student --data ../shared/data/sst2/dev.tsv\n"
    "  python -m training calibrate sst2-quick\n"
    "  python -m training curve models/sst2-quick-student --data ../shared/data/sst2/dev.tsv\n"
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # before parsing: --help, or a command of the missing module ("invalid choice"), ends the run there
    for line in missing:
        logging.getLogger("training").warning("command module not loaded, its commands are unavailable: %s", line)
    args = parser.parse_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ValueError, OSError) as exc:  # DataError is a ValueError, FileNotFoundError an OSError
        log = logging.getLogger("training")
        log.debug("the command failed:", exc_info=True)  # the traceback, with -v
        log.error("%s", " ".join(str(exc).split()) or type(exc).__name__, extra={"cli_error": True})
        return 2
    return int(result or 0)


class _Formatter(logging.Formatter):
    """The log format, except a failed command's last word: one ``error: ...`` line."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "cli_error", False):
            return f"error: {record.getMessage()}"
        return super().format(record)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """How a user's labelled file is read (train, distil, build, evaluate)."""
    group = parser.add_argument_group("columns of a labelled TSV/CSV/JSONL file (a name, or a 0-based position)")
    group.add_argument("--text-column", help="the text (default: text, sentence, sentence1 or question; "
                       "header-less: the first column)")
    group.add_argument("--pair-column", help="the second text of a text pair (default: text_pair or sentence2; "
                       "header-less: the middle one of three columns)")
    group.add_argument("--label-column", help="the label (default: label or score; header-less: the last column)")
    group.add_argument("--no-header", action="store_true", help="the TSV/CSV file has no header line: columns "
                       "are read by position")


def add_item_options(parser: argparse.ArgumentParser, articles: str) -> None:
    """Which items of a data set a command reads (SQuAD articles, the first N), on how many
    threads, and how a labelled file's columns are read (`agreement`, `guard`)."""
    parser.add_argument("--articles", help=f"SQuAD articles as a slice '{articles}' or a list '1,4,9'")
    parser.add_argument("--limit", type=int, help="only the first N rows / questions")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: runtime's)")
    add_data_options(parser)


def columns_from_args(args: argparse.Namespace) -> Columns:
    from training.data import Columns

    return Columns(args.text_column, args.pair_column, args.label_column, not args.no_header)


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
