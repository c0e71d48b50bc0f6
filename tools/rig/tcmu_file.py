"""``python -m tools.rig.tcmu_file --image FILE --size 256M``: an image file through LIO/TCMU.

The frontend of firmware/frontends/tcmu over a plain file (no record, no mirror):
the rig uses it to check the kernel plumbing (tcm_loop, iSCSI, CHAP) apart from
the appliance.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from pathlib import Path

from firmware.frontends.tcmu.lio import Chap
from firmware.frontends.tcmu.service import notify_ready, start_tcmu_frontend
from firmware.parsing import parse_size
from firmware.volume.target import TargetError, TargetShape, first_mismatch

log = logging.getLogger(__name__)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class FileTarget(TargetShape):
    """A BlockTarget over an image file: no record, no mirror (the rig's stand-in)."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(size)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        libc = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc, use_errno=True) if libc else None

    async def read(self, offset: int, length: int) -> bytes:
        self.check_range(offset, length)
        try:
            return os.pread(self._fd, length, offset).ljust(length, b"\0")
        except OSError as exc:
            raise TargetError(exc.errno or 5, str(exc)) from exc

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self.check_range(offset, len(data))
        try:
            os.pwrite(self._fd, data, offset)
            if fua:
                os.fdatasync(self._fd)
        except OSError as exc:
            raise TargetError(exc.errno or 5, str(exc)) from exc

    async def write_zeroes(self, offset: int, length: int, fua: bool = False,
                           may_trim: bool = True) -> None:
        self.check_range(offset, length)
        if not self._punch(offset, length):
            chunk = bytes(min(length, 1 << 20))
            end = offset + length
            while offset < end:
                piece = min(len(chunk), end - offset)
                os.pwrite(self._fd, chunk[:piece], offset)
                offset += piece
        if fua:
            os.fdatasync(self._fd)

    async def trim(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length)

    async def compare_and_write(self, offset: int, expected: bytes, data: bytes,
                                fua: bool = False) -> int | None:
        self.check_compare_and_write(offset, expected, data)
        # Blocking calls on the loop, with no await from the read to the write: no other
        # command of this process reaches the file in between.
        try:
            stored = os.pread(self._fd, len(expected), offset).ljust(len(expected), b"\0")
            mismatch = first_mismatch(stored, expected)
            if mismatch is None:
                os.pwrite(self._fd, data, offset)
                if fua:
                    os.fdatasync(self._fd)
        except OSError as exc:
            raise TargetError(exc.errno or 5, str(exc)) from exc
        return mismatch

    async def flush(self) -> None:
        os.fdatasync(self._fd)

    def _punch(self, offset: int, length: int) -> bool:
        if self._libc is None or length == 0:
            return length == 0
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        return self._libc.fallocate(self._fd, ctypes.c_int(mode), ctypes.c_long(offset),
                                    ctypes.c_long(length)) == 0

    def close(self) -> None:
        os.close(self._fd)


async def _serve(args: argparse.Namespace) -> int:
    target = FileTarget(Path(args.image), parse_size(args.size))
    chap = Chap(args.chap_user, args.chap_password) if args.chap_user else None
    frontend = await start_tcmu_frontend(
        target, args.name, tcm_loop=args.tcm_loop, iscsi_portal=args.iscsi_portal,
        iscsi_iqn=args.iscsi_iqn, iscsi_initiators=tuple(args.iscsi_initiator or ()),
        chap=chap)
    print(f"scsi_disk={frontend.scsi_disk or ''} iscsi_url={frontend.iscsi_url or ''}",
          flush=True)
    notify_ready(f"serving {args.name}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping after %d commands", frontend.handler.commands_done)
    await frontend.close(keep_exports=args.keep_exports)
    await target.flush()
    target.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.rig.tcmu_file",
        description="Serve an image file through LIO/TCMU (tcm_loop disk and/or iSCSI).")
    parser.add_argument("--image", required=True, help="image file (created if missing)")
    parser.add_argument("--size", default="256M", help="volume size (default 256M)")
    parser.add_argument("--name", default="tandem0", help="LIO storage object name")
    parser.add_argument("--tcm-loop", action="store_true", help="a local SCSI disk")
    parser.add_argument("--iscsi-portal", help="HOST:PORT of an iSCSI portal")
    parser.add_argument("--iscsi-iqn", help="target IQN (default derived from the name)")
    parser.add_argument("--iscsi-initiator", action="append",
                        help="allowed initiator IQN (repeatable; none: demo mode)")
    parser.add_argument("--chap-user")
    parser.add_argument("--chap-password")
    parser.add_argument("--keep-exports", action="store_true",
                        help="leave the LIO objects in place on exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
