"""`tandem receive`: the remote end of the link, keeping a crash-consistent copy of a volume.

    tandem receive --listen HOST:PORT --medium PATH --key-file FILE
                   [--tls-cert FILE --tls-key FILE] [--before-resync CMD]

The copy is always the image of the sending appliance's volume at the end of
some epoch: an epoch is journalled whole, then applied, then acknowledged.
A peer without the key, or one that sends garbage, is dropped with nothing
written, and the receiver keeps listening. Beside the medium live
``PATH.tandem-state`` (generations, consistent flag) and ``PATH.tandem-journal``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import stat
import sys

from firmware.parsing import parse_host_port, parse_size
from firmware.receiver.journal import EpochJournal
from firmware.receiver.replica import Replica
from firmware.receiver.server import READ_SIZE, Receiver
from hal.media.file import FileMedium
from hal.media.remote.generations import StateFile, SyncState
from hal.media.remote.net import server_tls_context

log = logging.getLogger("tandem.receive")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "receive",
        help="keep a crash-consistent remote copy of a volume mirrored over the link",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--listen", type=parse_host_port, metavar="HOST:PORT",
                   help="address to accept the sending appliance on (port 0: any free port)")
    p.add_argument("--medium", required=True, metavar="PATH",
                   help="image file or block device holding the copy")
    p.add_argument("--key-file", metavar="FILE",
                   help="shared secret: the file's whole content")
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert")
    p.add_argument("--size", type=parse_size, metavar="BYTES",
                   help="create the image file with this size if it does not exist")
    p.add_argument("--state", metavar="FILE",
                   help="sync state file (default PATH.tandem-state)")
    p.add_argument("--journal", metavar="FILE",
                   help="epoch journal file (default PATH.tandem-journal)")
    p.add_argument("--before-resync", metavar="CMD",
                   help="shell command run before a consistent copy becomes inconsistent for "
                        "a resync (snapshot it); a non-zero exit refuses the resync. "
                        "$TANDEM_MEDIUM names the medium")
    p.add_argument("--promote", action="store_true",
                   help="mark this copy as written independently (taken over at this site): "
                        "start a new generation, then exit")
    p.add_argument("--discard-my-data", action="store_true",
                   help="forget this copy's generations so the next sender overwrites it "
                        "with a full sync (resolves a split brain in the sender's favour)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every session event")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="tandem receive: %(message)s", stream=sys.stderr)
    try:
        is_block = stat.S_ISBLK(os.stat(args.medium).st_mode)
    except FileNotFoundError:
        is_block = False
    if is_block and not (args.state and args.journal):
        print("tandem receive: a block device needs --state and --journal files",
              file=sys.stderr)
        return 2
    if not os.path.exists(args.medium) and args.size is None:
        print(f"tandem receive: {args.medium} does not exist (give --size to create it)",
              file=sys.stderr)
        return 2
    state_file = StateFile(args.state or args.medium + ".tandem-state")
    journal = EpochJournal(args.journal or args.medium + ".tandem-journal")
    try:
        journal.lock()
    except BlockingIOError:
        print(f"tandem receive: {args.medium} is in use by another tandem receive",
              file=sys.stderr)
        journal.close()
        return 1
    try:
        create = args.size is not None and not os.path.exists(args.medium)
        medium = FileMedium(args.medium, args.size if create else None, create=create)
        replica = Replica(medium, state_file, journal)
    except (OSError, ValueError) as exc:
        print(f"tandem receive: {exc}", file=sys.stderr)
        return 1
    try:
        if args.promote or args.discard_my_data:
            return _admin(args, replica)
        if not args.listen or not args.key_file:
            print("tandem receive: --listen and --key-file are required", file=sys.stderr)
            return 2
        with open(args.key_file, "rb") as f:
            key = f.read()
        if not key:
            print(f"tandem receive: {args.key_file} is empty", file=sys.stderr)
            return 2
        tls = None
        if args.tls_cert:
            tls = server_tls_context(args.tls_cert, args.tls_key)
        epoch = replica.recover()
        if epoch is not None:
            log.warning("replayed journalled epoch %d after a crash", epoch)
        receiver = Receiver(replica, key, before_resync=args.before_resync)
        return asyncio.run(_serve(receiver, args.listen, tls))
    finally:
        replica.close()


def _admin(args: argparse.Namespace, replica: Replica) -> int:
    state = replica.state
    if args.discard_my_data:
        state = SyncState(state.volume_uuid, None, (), False)
        replica.forget_journal()
        print("tandem receive: generations forgotten; the next sender will do a full sync")
    if args.promote:
        state = SyncState(state.volume_uuid, state.current, state.history, state.consistent)
        state = state.rotated()
        print(f"tandem receive: promoted; new generation {state.current}")
    replica.set_state(None, state)
    return 0


async def _serve(receiver: Receiver, listen: tuple[str, int], tls: ssl.SSLContext | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(receiver.handle, listen[0], listen[1], ssl=tls,
                                        limit=READ_SIZE)
    address = server.sockets[0].getsockname()
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    state = receiver.replica.state
    print(f"tandem receive: listening on {host}:{address[1]} "
          f"({'consistent' if state.consistent else 'inconsistent'}, "
          f"generation {state.current})", flush=True)
    async with server:
        await stop.wait()
        server.close()
        receiver.abort_all()
        while receiver.sessions:
            await asyncio.sleep(0.05)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m firmware.receive_app ARGS`` is ``tandem receive ARGS``."""
    parser = argparse.ArgumentParser(prog="tandem")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["receive", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
