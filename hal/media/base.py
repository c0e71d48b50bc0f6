"""The media seam: pread/pwrite/flush/size over whatever holds the volume's bytes."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class MediumError(OSError):
    """A medium failed an operation; ``errno`` says how (EIO, ENOSPC, ENXIO...)."""


@runtime_checkable
class Medium(Protocol):
    """A block medium: the local disk, the second disk, or a remote stand-in."""

    @property
    def size(self) -> int:
        """Size in bytes."""
        ...

    @property
    def name(self) -> str:
        """What to call it in messages (a path or URL)."""
        ...

    def pread(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset``."""
        ...

    def pwrite(self, offset: int, data: bytes) -> None:
        """Write all of ``data`` at ``offset`` (may sit in a volatile cache until flush)."""
        ...

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        """Make the range read back as zeroes; ``punch`` allows deallocating it."""
        ...

    def flush(self) -> None:
        """Return only when every completed write is durable."""
        ...

    def close(self) -> None:
        """Release the medium."""
        ...


def blocks_the_caller(medium: object) -> bool:
    """Whether a medium's pread/pwrite wait on a device (``blocking``: O_DIRECT, a block
    device), so that the volume runs them on its I/O worker rather than on the event
    loop. A medium that does not say is taken as page-cache fast (images, doubles)."""
    return bool(getattr(medium, "blocking", False))
