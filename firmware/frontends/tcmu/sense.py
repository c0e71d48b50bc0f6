"""SCSI status codes, sense keys and sense data (SPC-4 fixed and descriptor formats)."""

from __future__ import annotations

import errno
from dataclasses import dataclass

# Status codes (SAM-5).
GOOD = 0x00
CHECK_CONDITION = 0x02
BUSY = 0x08
TASK_SET_FULL = 0x28

# Sense keys.
NO_SENSE = 0x0
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
DATA_PROTECT = 0x7
ABORTED_COMMAND = 0xB
MISCOMPARE = 0xE

# (ASC, ASCQ) pairs used by this target.
NO_ADDITIONAL_SENSE = (0x00, 0x00)
LUN_NOT_READY = (0x04, 0x00)
WRITE_ERROR = (0x0C, 0x00)
UNRECOVERED_READ_ERROR = (0x11, 0x00)
PARAMETER_LIST_LENGTH_ERROR = (0x1A, 0x00)
MISCOMPARE_DURING_VERIFY = (0x1D, 0x00)
INVALID_COMMAND_OPERATION_CODE = (0x20, 0x00)
LBA_OUT_OF_RANGE = (0x21, 0x00)
INVALID_FIELD_IN_CDB = (0x24, 0x00)
INVALID_FIELD_IN_PARAMETER_LIST = (0x26, 0x00)
WRITE_PROTECTED = (0x27, 0x00)
SPACE_ALLOCATION_FAILED_WRITE_PROTECT = (0x27, 0x07)
SAVING_PARAMETERS_NOT_SUPPORTED = (0x39, 0x00)
INTERNAL_TARGET_FAILURE = (0x44, 0x00)


@dataclass(frozen=True)
class Sense:
    """One error condition: key, additional sense code, and where in the CDB it lies."""

    key: int
    asc_ascq: tuple[int, int]
    field_pointer: int | None = None    # byte of the CDB (or parameter list) at fault
    in_cdb: bool = True
    bit_pointer: int | None = None

    def fixed(self) -> bytes:
        """Fixed-format sense data (response code 0x70), 18 bytes."""
        data = bytearray(18)
        data[0] = 0x70
        data[2] = self.key
        data[7] = 10
        data[12], data[13] = self.asc_ascq
        data[15:18] = self._sense_key_specific()
        return bytes(data)

    def descriptor(self) -> bytes:
        """Descriptor-format sense data (response code 0x72)."""
        descriptors = b""
        sks = self._sense_key_specific()
        if sks[0]:
            descriptors = bytes((0x02, 0x06, 0, 0)) + sks + b"\0"
        header = bytes((0x72, self.key, *self.asc_ascq, 0, 0, 0, len(descriptors)))
        return header + descriptors

    def _sense_key_specific(self) -> bytes:
        if self.field_pointer is None or self.key != ILLEGAL_REQUEST:
            return bytes(3)
        first = 0x80 | (0x40 if self.in_cdb else 0)
        if self.bit_pointer is not None:
            first |= 0x08 | (self.bit_pointer & 0x7)
        return bytes((first,)) + self.field_pointer.to_bytes(2, "big")


class CheckCondition(Exception):
    """Raised while executing a command: answer CHECK CONDITION with this sense."""

    def __init__(self, sense: Sense) -> None:
        super().__init__(f"sense key {sense.key:#x} asc/ascq "
                         f"{sense.asc_ascq[0]:#04x}/{sense.asc_ascq[1]:#04x}")
        self.sense = sense


def illegal_request(asc_ascq: tuple[int, int], field_pointer: int | None = None,
                    bit_pointer: int | None = None, in_cdb: bool = True) -> CheckCondition:
    return CheckCondition(Sense(ILLEGAL_REQUEST, asc_ascq, field_pointer, in_cdb, bit_pointer))


def invalid_field(field_pointer: int, bit_pointer: int | None = None) -> CheckCondition:
    return illegal_request(INVALID_FIELD_IN_CDB, field_pointer, bit_pointer)


def sense_for_errno(err: int, writing: bool) -> Sense:
    """The sense a volume error (``TargetError.errno``) turns into."""
    if err == errno.EINVAL:
        return Sense(ILLEGAL_REQUEST, LBA_OUT_OF_RANGE)
    if err == errno.EIO:
        return Sense(MEDIUM_ERROR, WRITE_ERROR if writing else UNRECOVERED_READ_ERROR)
    if err == errno.ENOSPC:
        # A thin volume that ran out of room: writes fail, the LU stays readable.
        return Sense(DATA_PROTECT, SPACE_ALLOCATION_FAILED_WRITE_PROTECT)
    if err == errno.EPERM:
        return Sense(DATA_PROTECT, WRITE_PROTECTED)
    if err == errno.EOVERFLOW:
        return Sense(ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
    if err == errno.ESHUTDOWN:
        return Sense(NOT_READY, LUN_NOT_READY)
    return Sense(HARDWARE_ERROR, INTERNAL_TARGET_FAILURE)
