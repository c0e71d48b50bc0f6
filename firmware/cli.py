"""`tandem` — one command line for the appliance and its host-side tools.

Each subcommand lives in its own module, which exposes
``register(subparsers) -> None``: it adds its parser and sets ``func`` to a
callable taking the parsed ``argparse.Namespace`` and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that each add one or more subcommands, in the order `tandem --help` lists them.
SUBCOMMAND_MODULES = (
    "firmware.app",
    "tools.console_client",
    "tools.replay",
    "tools.replay_report",
    "firmware.mirror.link.receiver",
    "tools.benchmark",
    "tools.bench_link",
    "tools.torture",
    "tools.fuzz",
    "tools.rig",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a subcommand whose module has not landed yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
