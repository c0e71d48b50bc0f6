"""Send one CDB to a Linux SCSI disk with the SG_IO ioctl (no sg3-utils needed)."""

from __future__ import annotations

import ctypes
import fcntl
import os
from dataclasses import dataclass

SG_IO = 0x2285
SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV = -1, -2, -3


class SgIoHeader(ctypes.Structure):
    """struct sg_io_hdr from <scsi/sg.h>."""

    _fields_ = [
        ("interface_id", ctypes.c_int), ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte), ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort), ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p), ("cmdp", ctypes.c_void_p), ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint), ("flags", ctypes.c_uint), ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p), ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte), ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte), ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort), ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint), ("info", ctypes.c_uint),
    ]


@dataclass(frozen=True)
class ScsiReply:
    status: int
    data: bytes
    sense: bytes
    host_status: int

    @property
    def sense_triple(self) -> tuple[int, int, int]:
        return self.sense[2] & 0x0F, self.sense[12], self.sense[13]


def scsi_command(device: str, cdb: bytes, data_in: int = 0, data_out: bytes = b"",
                 timeout_ms: int = 60000) -> ScsiReply:
    cdb_buf = ctypes.create_string_buffer(cdb, len(cdb))
    sense_buf = ctypes.create_string_buffer(96)
    if data_out:
        data_buf = ctypes.create_string_buffer(data_out, len(data_out))
        direction, length = SG_DXFER_TO_DEV, len(data_out)
    elif data_in:
        data_buf = ctypes.create_string_buffer(data_in)
        direction, length = SG_DXFER_FROM_DEV, data_in
    else:
        data_buf, direction, length = None, SG_DXFER_NONE, 0
    header = SgIoHeader(
        interface_id=ord("S"), dxfer_direction=direction, cmd_len=len(cdb), mx_sb_len=96,
        dxfer_len=length, dxferp=ctypes.cast(data_buf, ctypes.c_void_p) if data_buf else None,
        cmdp=ctypes.cast(cdb_buf, ctypes.c_void_p), sbp=ctypes.cast(sense_buf, ctypes.c_void_p),
        timeout=timeout_ms)
    fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, SG_IO, header)
    finally:
        os.close(fd)
    data = data_buf.raw[:length - header.resid] if data_buf is not None and data_in else b""
    return ScsiReply(header.status, data, sense_buf.raw[:header.sb_len_wr], header.host_status)
