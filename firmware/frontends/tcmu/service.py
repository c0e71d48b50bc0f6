"""Starting and stopping the TCMU frontend: LIO objects, the ring handler, the fabrics.

``start_tcmu_frontend(target, name, ...)`` is what `tandem run --tcmu` calls with
the real volume. The order matters: the storage object is created (or adopted)
and the handler serves its ring *before* a LUN is mapped, because mapping a
LUN into tcm_loop makes the kernel scan it at once with SCSI commands that
only the handler can answer.
The rig's stand-alone export of a plain image file is tools/rig/tcmu_file.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from firmware.frontends.tcmu.alua import PortGroups
from firmware.frontends.tcmu.handler import TcmuHandler
from firmware.frontends.tcmu.lio import Chap, LioExport, LioSettings
from firmware.frontends.tcmu.scsi import DiskIdentity, ScsiDisk
from firmware.frontends.tcmu.uio import UioDevice, find_uio
from firmware.parsing import parse_host_port
from firmware.volume.target import BlockTarget

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
                              max_data_area_mb: int = 64, ports: PortGroups | None = None,
                              cmd_time_out_s: int | None = None,
                              refuse_reservations: bool = False) -> TcmuFrontend:
    """Export ``target`` through LIO as storage object user/``name``; serve it over TCMU.
    ``ports``: the LUN's target port groups as this export shows them (a pair's node)."""
    serial = serial or default_serial(name)
    settings = LioSettings(
        name=name, volume=volume or name, size=target.size, serial=serial,
        block_size=target.logical_block_size, hw_max_sectors=max_transfer_blocks,
        max_data_area_mb=max_data_area_mb, tcm_loop=tcm_loop,
        iscsi_portal=parse_host_port(iscsi_portal) if iscsi_portal else None,
        iscsi_iqn=iscsi_iqn, iscsi_initiators=tuple(iscsi_initiators), chap=chap,
        cmd_time_out_s=cmd_time_out_s, refuse_reservations=refuse_reservations)
    export = await asyncio.to_thread(LioExport, settings)
    adopted = await asyncio.to_thread(export.ensure_storage_object)
    uio = await wait_for_uio(name, settings.config)
    device = UioDevice(uio)
    try:
        # Whatever an earlier handler left in the ring goes back to the initiators as
        # BUSY (they resend it); we start from an empty ring.
        await asyncio.to_thread(export.restart_ring)
        disk = ScsiDisk(target, DiskIdentity(serial=serial,
                                             max_transfer_blocks=max_transfer_blocks),
                        ports=ports or PortGroups.alone())
        handler = TcmuHandler(device, disk)
        handler.start()
    except BaseException:
        device.close()
        raise
    frontend = TcmuFrontend(export, device, handler, None, None, adopted)
    try:
        if tcm_loop:
            await asyncio.to_thread(export.ensure_loopback)
            frontend.scsi_disk = await wait_for_disk(serial)
        if settings.iscsi_portal:
            frontend.iscsi_url = await asyncio.to_thread(export.ensure_iscsi)
    except BaseException:
        await frontend.close()
        raise
    log.info("TCMU frontend %s up (%s): /dev/%s, disk %s, iSCSI %s", name,
             "adopted" if adopted else "new", uio, frontend.scsi_disk, frontend.iscsi_url)
    return frontend


async def wait_for_uio(name: str, config: str, timeout: float = 10.0) -> str:
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


async def wait_for_disk(serial: str, timeout: float = DISK_TIMEOUT) -> str:
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
