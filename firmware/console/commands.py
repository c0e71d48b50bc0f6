"""The built-in console commands: ``status``, ``record``, ``mirror`` (``help`` is the table's).

The grammar and the output of each command are described in
:mod:`firmware.console.grammar`. Later features add their own commands the same
way::

    table = console_commands(appliance)
    table.register(Command("peer", "peer status|...", "the pair's state", peer_handler))
"""

from __future__ import annotations

import json
import math

from firmware.console.backend import ConsoleBackend
from firmware.console.grammar import Command, CommandTable, UsageError

_MIRROR_KEY_PREFIXES = ("mirror_", "resync_")


def console_commands(backend: ConsoleBackend) -> CommandTable:
    """A command table with ``help`` and the built-in commands over ``backend``."""
    table = CommandTable()
    table.register(Command(
        name="status",
        usage="status [--json]",
        summary="counters of the record, NVRAM and mirror",
        handler=lambda args: _status(backend, args),
        description="--json: the same as one line of JSON",
    ))
    table.register(Command(
        name="record",
        usage="record [--list|--count]",
        summary="regions named in the write record",
        handler=lambda args: _record(backend, args),
        description=("--count: the number of regions alone\n"
                     "--list: one line per range of consecutive regions,\n"
                     "        'FIRST-LAST bytes START-END' (inclusive)"),
    ))
    table.register(Command(
        name="mirror",
        usage="mirror pause|resume|status",
        summary="pause or resume the mirror, or show its state",
        handler=lambda args: _mirror(backend, args),
    ))
    return table


# --- status -------------------------------------------------------------------------------------

def _status(backend: ConsoleBackend, args: list[str]) -> list[str]:
    flags = _flags(args, {"--json"})
    status = backend.status()
    if "--json" in flags:
        return [json.dumps(_json_safe(status), separators=(",", ":"), allow_nan=False)]
    return _key_value_lines(status)


def _key_value_lines(values: dict[str, object]) -> list[str]:
    if not values:
        return []
    width = max(len(str(key)) for key in values)
    return [f"{str(key):<{width}}  {_format_value(str(key), value)}"
            for key, value in values.items()]


def _format_value(key: str, value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and _is_byte_count(key) and abs(value) >= 1024:
        return f"{value} ({_human_bytes(value)})"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(_json_safe(value), separators=(",", ":"))
    return str(value)


def _is_byte_count(key: str) -> bool:
    return key.endswith("_bytes") or key.endswith("_size") or "_bytes_" in key


def _human_bytes(count: int) -> str:
    if abs(count) < 1024:
        return f"{count} B"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"


def _json_safe(value: object) -> object:
    """``value`` with anything JSON cannot carry made into something it can."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# --- record -------------------------------------------------------------------------------------

def _record(backend: ConsoleBackend, args: list[str]) -> list[str]:
    flags = _flags(args, {"--list", "--count"})
    if len(flags) > 1:
        raise UsageError("--list and --count exclude each other")
    regions = sorted(set(backend.record_regions()))
    if "--count" in flags:
        return [str(len(regions))]
    status = backend.status()
    region_size = _positive_int(status.get("region_size"))
    volume_size = _positive_int(status.get("volume_size"))
    ranges = coalesce(regions)
    if "--list" in flags:
        return [_range_line(first, last, region_size, volume_size) for first, last in ranges]
    lines = [f"regions: {len(regions)} in {len(ranges)} "
             f"range{'' if len(ranges) == 1 else 's'}"]
    if region_size is not None:
        spans = [_byte_span(first, last, region_size, volume_size) for first, last in ranges]
        covered = sum(end - start + 1 for start, end in spans)
        share = f", {100 * covered / volume_size:.2f}% of the volume" if volume_size else ""
        lines.append(f"bytes: {covered} ({_human_bytes(covered)}{share})")
        lines.append(f"region_size: {region_size}")
    if regions:
        lines.append(f"span: {regions[0]}-{regions[-1]}")
    return lines


def coalesce(regions: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct region indices as (first, last) runs of consecutive indices."""
    ranges: list[tuple[int, int]] = []
    for region in regions:
        if ranges and region == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], region)
        else:
            ranges.append((region, region))
    return ranges


def _byte_span(first: int, last: int, region_size: int,
               volume_size: int | None) -> tuple[int, int]:
    """Inclusive byte offsets of regions first..last; the last region may be short."""
    end = (last + 1) * region_size
    if volume_size is not None:
        end = min(end, volume_size)
    return first * region_size, max(end - 1, first * region_size)


def _range_line(first: int, last: int, region_size: int | None, volume_size: int | None) -> str:
    regions = str(first) if first == last else f"{first}-{last}"
    if region_size is None:
        return regions
    start, end = _byte_span(first, last, region_size, volume_size)
    return f"{regions} bytes {start}-{end}"


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


# --- mirror -------------------------------------------------------------------------------------

def _mirror(backend: ConsoleBackend, args: list[str]) -> list[str]:
    if len(args) != 1:
        raise UsageError("expected one of pause, resume, status")
    action = args[0]
    if action == "pause":
        backend.mirror_pause()
        return ["mirror: paused"]
    if action == "resume":
        backend.mirror_resume()
        return ["mirror: resumed"]
    if action == "status":
        status = backend.status()
        mirror = {key: value for key, value in status.items()
                  if str(key).startswith(_MIRROR_KEY_PREFIXES)}
        return _key_value_lines(mirror) or ["mirror: no state reported"]
    raise UsageError(f"unknown action '{action}'")


# --- arguments ----------------------------------------------------------------------------------

def _flags(args: list[str], allowed: set[str]) -> set[str]:
    """The flags in ``args``; anything else is a usage error."""
    for arg in args:
        if arg not in allowed:
            kind = "option" if arg.startswith("-") else "argument"
            raise UsageError(f"unexpected {kind} '{arg}'")
    return set(args)
