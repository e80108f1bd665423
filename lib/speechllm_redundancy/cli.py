"""`speechllm-redundancy …` (the console script) or `python -m speechllm_redundancy …`: one entry point;
each concept module registers its own commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from speechllm_redundancy.errors import UserError

# module -> it exposes `register(subparsers)` adding its sub-commands
COMMAND_MODULES = (
    "speechllm_redundancy.zoo",
    "speechllm_redundancy.data.cli",
    "speechllm_redundancy.slam_cli",
    "speechllm_redundancy.angles",
    "speechllm_redundancy.pruning",
    "speechllm_redundancy.book_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m speechllm_redundancy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
