"""NVRAM backends and the factory that builds one from a board profile's table.

Spec tables (keys not listed are an error, so profile typos do not pass silently):

``{"kind": "file", "path": str, "size": int, "sync": bool | "process" = True}``
    :class:`~hal.nvram.file_fram.FileFram` -- the simulated board.
``{"kind": "spi", "bus": int, "cs": int, "speed_hz": int, "max_transfer": int = 4096,
"mode": int = 0, "size": int | None}``
    :class:`~hal.nvram.spi_fram.SpiFram` on ``/dev/spidev<bus>.<cs>``; ``size``, if
    given, must match the part RDID reports.
``{"kind": "i2c", "bus": int, "address": int = 0x50, "size": int | None,
"chunk": int = 256, "probe_id": bool = True}``
    :class:`~hal.nvram.i2c_fram.I2cFram` on ``/dev/i2c-<bus>``; ``size`` is required
    for parts without a device ID and checked against it otherwise.

``device`` replaces the spidev/SMBus object (tests pass a chip model from
:mod:`tools.sim.fram_models`). Drivers are imported on demand, so a board without
smbus2 or spidev can still open the kinds it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hal.nvram.base import Nvram, NvramError, PowerLost
from hal.nvram.stats import NvramStats

__all__ = ["Nvram", "NvramError", "NvramStats", "PowerLost", "open_nvram"]

_REQUIRED = {
    "file": {"path", "size"},
    "spi": {"bus", "cs", "speed_hz"},
    "i2c": {"bus"},
}
_OPTIONAL = {
    "file": {"sync"},
    "spi": {"max_transfer", "mode", "size"},
    "i2c": {"address", "size", "chunk", "probe_id"},
}


def open_nvram(spec: Mapping[str, Any], *, device: Any = None) -> Nvram:
    """Open the NVRAM a board profile describes."""
    kind = spec.get("kind")
    if kind not in _REQUIRED:
        raise ValueError(f"NVRAM kind {kind!r} is not one of {sorted(_REQUIRED)}")
    keys = set(spec) - {"kind"}
    missing = _REQUIRED[kind] - keys
    unknown = keys - _REQUIRED[kind] - _OPTIONAL[kind]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing {sorted(missing)}")
        if unknown:
            problems.append(f"unknown {sorted(unknown)}")
        raise ValueError(f"NVRAM spec of kind {kind!r}: {', '.join(problems)}")

    if kind == "file":
        if device is not None:
            raise ValueError("a file NVRAM takes no device object")
        from hal.nvram.file_fram import FileFram

        return FileFram(spec["path"], spec["size"], sync=spec.get("sync", True))
    if kind == "spi":
        from hal.nvram.spi_fram import DEFAULT_MAX_TRANSFER, open_spi_fram

        return open_spi_fram(
            spec["bus"],
            spec["cs"],
            spec["speed_hz"],
            max_transfer=spec.get("max_transfer", DEFAULT_MAX_TRANSFER),
            mode=spec.get("mode", 0),
            expected_size=spec.get("size"),
            device=device,
        )
    from hal.nvram.i2c_fram import DEFAULT_ADDRESS, DEFAULT_CHUNK, open_i2c_fram

    return open_i2c_fram(
        spec["bus"],
        spec.get("address", DEFAULT_ADDRESS),
        size=spec.get("size"),
        chunk=spec.get("chunk", DEFAULT_CHUNK),
        probe_id=spec.get("probe_id", True),
        device=device,
    )
