"""Starting and stopping the TCMU frontend: LIO objects, the ring handler, the fabrics.

``start_tcmu_frontend(target, name, ...)`` is what `tandem run --tcmu` calls with
the real volume. The order matters: the storage object is created (or adopted)
and the handler serves its ring *before* a LUN is mapped, because mapping a
LUN into tcm_loop makes the kernel scan it at once with SCSI commands that
only the handler can answer.

``python -m firmware.frontends.tcmu.service --image FILE --size 256M`` runs the
frontend over a plain image file (no record, no mirror): the virtual rig's
stand-in for the appliance until `tandem run --tcmu` exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from firmware.frontends.tcmu.handler import TcmuHandler
from firmware.frontends.tcmu.lio import Chap, LioExport, LioSettings
from firmware.frontends.tcmu.scsi import DiskIdentity, ScsiDisk
from firmware.frontends.tcmu.uio import UioDevice, find_uio
from firmware.parsing import parse_host_port, parse_size
from firmware.volume.target import BlockTarget, TargetError

log = logging.getLogger(__name__)

DISK_TIMEOUT = 60.0


@dataclass
class TcmuFrontend:
    """A running TCMU frontend: close() undoes what start_tcmu_frontend() did."""

    export: LioExport
    device: UioDevice
    handler: TcmuHandler
    scsi_disk: str | None
    iscsi_url: str | None
    adopted: bool

    async def close(self, keep_exports: bool = False) -> None:
        """Stop serving. Unless ``keep_exports``, remove the LUNs first — while the
        handler still answers, since the kernel flushes a disk that goes away."""
        if not keep_exports:
            await asyncio.to_thread(self.export.remove_fabrics)
        await self.handler.close()
        self.device.close()
        if not keep_exports:
            await asyncio.to_thread(self.export.remove_storage_object)


def default_serial(name: str) -> str:
    return "TDM" + hashlib.sha256(name.encode()).hexdigest()[:13].upper()


async def start_tcmu_frontend(target: BlockTarget, name: str, *, tcm_loop: bool,
                              iscsi_portal: str | None, iscsi_iqn: str | None,
                              iscsi_initiators: tuple[str, ...] = (),
                              chap: Chap | None = None, serial: str | None = None,
                              volume: str | None = None, max_transfer_blocks: int = 65536,
                              max_data_area_mb: int = 64) -> TcmuFrontend:
    """Export ``target`` through LIO as storage object user/``name``; serve it over TCMU."""
    serial = serial or default_serial(name)
    settings = LioSettings(
        name=name, volume=volume or name, size=target.size, serial=serial,
        block_size=target.logical_block_size, hw_max_sectors=max_transfer_blocks,
        max_data_area_mb=max_data_area_mb, tcm_loop=tcm_loop,
        iscsi_portal=parse_host_port(iscsi_portal) if iscsi_portal else None,
        iscsi_iqn=iscsi_iqn, iscsi_initiators=tuple(iscsi_initiators), chap=chap)
    export = await asyncio.to_thread(LioExport, settings)
    adopted = await asyncio.to_thread(export.ensure_storage_object)
    uio = await _wait_for_uio(name, settings.config)
    device = UioDevice(uio)
    try:
        # Whatever an earlier handler left in the ring goes back to the initiators as
        # BUSY (they resend it); we start from an empty ring.
        await asyncio.to_thread(export.restart_ring)
        disk = ScsiDisk(target, DiskIdentity(serial=serial,
                                             max_transfer_blocks=max_transfer_blocks))
        handler = TcmuHandler(device, disk)
        handler.start()
    except BaseException:
        device.close()
        raise
    frontend = TcmuFrontend(export, device, handler, None, None, adopted)
    try:
        if tcm_loop:
            await asyncio.to_thread(export.ensure_loopback)
            frontend.scsi_disk = await _wait_for_disk(serial)
        if settings.iscsi_portal:
            frontend.iscsi_url = await asyncio.to_thread(export.ensure_iscsi)
    except BaseException:
        await frontend.close()
        raise
    log.info("TCMU frontend %s up (%s): /dev/%s, disk %s, iSCSI %s", name,
             "adopted" if adopted else "new", uio, frontend.scsi_disk, frontend.iscsi_url)
    return frontend


async def _wait_for_uio(name: str, config: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        uio = find_uio(name, config)
        if uio is not None:
            return uio
        if time.monotonic() > deadline:
            raise OSError(f"no UIO device for TCMU storage object {name}")
        await asyncio.sleep(0.05)


def find_disk_by_serial(serial: str, sysfs: Path = Path("/sys/block")) -> str | None:
    """The /dev/sdX whose unit serial number (VPD page 0x80) is ``serial``."""
    wanted = serial.encode()
    for block in sorted(sysfs.glob("sd*")):
        try:
            page = (block / "device" / "vpd_pg80").read_bytes()
        except OSError:
            continue
        if page[4:4 + int.from_bytes(page[2:4], "big")] == wanted:
            return f"/dev/{block.name}"
    return None


async def _wait_for_disk(serial: str, timeout: float = DISK_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        disk = await asyncio.to_thread(find_disk_by_serial, serial)
        if disk is not None and os.path.exists(disk):
            return disk
        if time.monotonic() > deadline:
            raise OSError(f"no SCSI disk with serial {serial} appeared")
        await asyncio.sleep(0.1)


def notify_ready(status: str = "") -> None:
    """sd_notify READY=1 (systemd Type=notify units, and the rig, wait for it)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    message = "READY=1" + (f"\nSTATUS={status}" if status else "")
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


# -- a file-backed volume for the rig ----------------------------------------------------

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class FileTarget:
    """A BlockTarget over an image file: no record, no mirror (the rig's stand-in)."""

    def __init__(self, path: Path, size: int) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._size = size
        libc = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc, use_errno=True) if libc else None

    @property
    def size(self) -> int:
        return self._size

    @property
    def logical_block_size(self) -> int:
        return 512

    @property
    def preferred_block_size(self) -> int:
        return 4096

    @property
    def read_only(self) -> bool:
        return False

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise TargetError.out_of_range(offset, length, self._size)

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        try:
            return os.pread(self._fd, length, offset).ljust(length, b"\0")
        except OSError as exc:
            raise TargetError(exc.errno or 5, str(exc)) from exc

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self._check(offset, len(data))
        try:
            os.pwrite(self._fd, data, offset)
            if fua:
                os.fdatasync(self._fd)
        except OSError as exc:
            raise TargetError(exc.errno or 5, str(exc)) from exc

    async def write_zeroes(self, offset: int, length: int, fua: bool = False,
                           may_trim: bool = True) -> None:
        self._check(offset, length)
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
        prog="python -m firmware.frontends.tcmu.service",
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
