"""The thin I/O layer under the ring: find our /dev/uioN, map it, wait on it, poke it.

``target_core_user`` registers one UIO device per user-backed storage object,
named ``tcm-user/<hba index>/<object name>/<dev_config>``. Its map0 is the
mailbox + command ring + data area. Reading 4 bytes from the device returns
the event count (the kernel queued something); writing 4 bytes makes the
kernel look at the ring's tail (we completed something).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

SYSFS_UIO = Path("/sys/class/uio")
DEV = Path("/dev")


class UioError(OSError):
    """No UIO device for the storage object, or it could not be opened/mapped."""


@dataclass(frozen=True)
class UioName:
    """The parts of a TCMU UIO device name."""

    hba_index: int
    object_name: str
    config: str

    @classmethod
    def parse(cls, text: str) -> UioName | None:
        parts = text.strip().split("/", 3)
        if len(parts) < 3 or parts[0] != "tcm-user" or not parts[1].isdigit():
            return None
        return cls(int(parts[1]), parts[2], parts[3] if len(parts) == 4 else "")

    def __str__(self) -> str:
        tail = f"/{self.config}" if self.config else ""
        return f"tcm-user/{self.hba_index}/{self.object_name}{tail}"


def find_uio(object_name: str, config: str | None = None,
             sysfs: Path = SYSFS_UIO) -> str | None:
    """The uioN device of the TCMU storage object ``object_name`` (and ``config``)."""
    if not sysfs.is_dir():
        return None
    for entry in sorted(sysfs.iterdir()):
        try:
            name = UioName.parse((entry / "name").read_text())
        except OSError:
            continue
        if name and name.object_name == object_name and (config is None or
                                                          name.config == config):
            return entry.name
    return None


class UioDevice:
    """An open, mapped TCMU UIO device."""

    def __init__(self, device: str, sysfs: Path = SYSFS_UIO, dev: Path = DEV) -> None:
        self.device = device
        size_text = (sysfs / device / "maps" / "map0" / "size").read_text().strip()
        self.size = int(size_text, 0)
        try:
            self.fd = os.open(dev / device, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise UioError(exc.errno, f"cannot open /dev/{device}: {exc.strerror}") from exc
        try:
            # map0 is at offset 0 (UIO selects map N with offset N * page size).
            self.mapping = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED,
                                     mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(self.fd)
            raise

    def read_event(self) -> int | None:
        """The kernel's event count if it signalled since the last read, else None."""
        try:
            data = os.read(self.fd, 4)
        except BlockingIOError:
            return None
        return int.from_bytes(data, "little") if len(data) == 4 else None

    def notify(self) -> None:
        """Tell the kernel to collect completions (the written value is ignored)."""
        os.write(self.fd, b"\0\0\0\0")

    def close(self) -> None:
        try:
            self.mapping.close()
        finally:
            os.close(self.fd)
