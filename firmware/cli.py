"""`tandem` — one command line for the appliance and the host-side tools installed with it.

The appliance's own applications are `run` (firmware/app.py) and `receive` (the
remote site, firmware/receive_app.py). Host-side tools (console client, replay,
benchmarks, torture, fuzzing, the rig) add their subcommands through the
``tandem.subcommands`` entry-point group that pyproject.toml declares, so an
appliance image without tools/ simply lists fewer commands.

Each subcommand's module exposes ``register(subparsers) -> None``: it adds its
parser and sets ``func`` to a callable taking the parsed ``argparse.Namespace``
and returning the exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from firmware import app, receive_app

ENTRY_POINT_GROUP = "tandem.subcommands"

Register = Callable[[argparse._SubParsersAction], None]


def installed_subcommands() -> list[Register]:
    """The ``register`` functions of every installed subcommand provider, in name order."""
    found: list[Register] = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            found.append(entry.load())
        except ModuleNotFoundError as exc:  # declared, but its package is not on this board
            print(f"tandem: subcommand {entry.name!r} unavailable: {exc}", file=sys.stderr)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in (app.register, receive_app.register, *installed_subcommands()):
        register(subparsers)
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
