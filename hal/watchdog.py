"""The board's hardware watchdog (Linux ``/dev/watchdog``): reset the board if the
firmware stops petting it.

A pair's primary holds a lease on writing the shared media only while its loop runs;
a hung primary (a kernel stall, a loop stuck in a driver) must not wake up later and
write. Armed, the watchdog resets the board within ``timeout_s`` of the last pet, which
the board profile sets below the pair's lease. Any write pets it; writing ``V`` before
closing disarms it (the driver's "magic close"), so a clean stop does not reset.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct

log = logging.getLogger("tandem.watchdog")

# <linux/watchdog.h>: _IOWR('W', 6, int) and _IOR('W', 7, int)
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707


class Watchdog:
    def __init__(self, device: str = "/dev/watchdog", timeout_s: int | None = None) -> None:
        self.device = device
        self._fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        self.pets = 0
        self.timeout_s = timeout_s
        if timeout_s is not None:
            try:
                raw = fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout_s))
                self.timeout_s = struct.unpack("i", raw)[0]  # what the hardware granted
            except OSError as exc:
                log.warning("watchdog %s: cannot set a %d s timeout (%s); the driver's "
                            "own applies", device, timeout_s, exc)
        log.info("watchdog %s armed (timeout %s s)", device, self.timeout_s or "default")

    def pet(self) -> None:
        if self._fd >= 0:
            os.write(self._fd, b"\0")
            self.pets += 1

    def disarm(self) -> None:
        """A clean stop: magic close, then the board keeps running."""
        if self._fd >= 0:
            try:
                os.write(self._fd, b"V")
            finally:
                os.close(self._fd)
                self._fd = -1

    def abandon(self) -> None:
        """Close without disarming (the power went; on hardware the reset follows)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
