"""Console commands of the mirror and its link: ``verify`` and ``link``.

    verify [start|status|stop]   compare both media by digest while serving
    link [status|rate BYTES|rate off]

``tandem console URL verify`` starts an online verify (DRBD's ``drbdadm
verify``): every clean region is compared by block digests (the receiver
computes its own, so only digests cross the link); a region that differs is
reported and put back in the write record, so the mirror copies it again.
``verify status`` shows the progress and the differing regions.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from firmware.console.commands import coalesce
from firmware.console.grammar import Command, CommandError, CommandTable, UsageError
from firmware.mirror.mirror import Mirror, VerifyReport
from firmware.parsing import parse_size

MiB = 1 << 20


def register_mirror_commands(table: CommandTable, mirror: Callable[[], Mirror]) -> None:
    """Add ``verify`` and ``link`` to a console table; ``mirror()`` gives the running mirror."""
    table.register(Command(
        name="verify",
        usage="verify [start|status|stop]",
        summary="compare the two media by digest while serving; recopy what differs",
        handler=lambda args: _verify(mirror(), args),
        description=("start (the default): begin, or show the verify that is running\n"
                     "status: progress and differing regions (FIRST-LAST ranges)\n"
                     "stop: abandon the verify"),
    ))
    table.register(Command(
        name="link",
        usage="link [status|rate BYTES|rate off]",
        summary="the second medium's link: state, replicated point, rate cap",
        handler=lambda args: _link(mirror(), args),
        description=("status (the default): connection, decision, acknowledged epochs,\n"
                     "  the replicated point and the lag\n"
                     "rate BYTES: cap the link at BYTES per second (64K, 20M...); off: no cap"),
    ))


def _verify(mirror: Mirror, args: list[str]) -> list[str]:
    if len(args) > 1:
        raise UsageError("expected one of start, status, stop")
    action = args[0] if args else "start"
    if action == "start":
        running = mirror.verify_report.state == "running"
        report = mirror.start_verify()
        return [("verify: already running" if running else "verify: started")] + \
            _verify_lines(report)
    if action == "status":
        return _verify_lines(mirror.verify_report)
    if action == "stop":
        return _verify_lines(mirror.stop_verify())
    raise UsageError(f"unknown action '{action}'")


def _verify_lines(report: VerifyReport) -> list[str]:
    share = 100 * report.checked_bytes / report.total_bytes if report.total_bytes else 0.0
    lines = [
        f"state: {report.state}",
        f"checked: {report.checked_bytes} of {report.total_bytes} bytes ({share:.1f}%)",
        f"compared: {report.compared_bytes} bytes (clean regions)",
        f"differing_regions: {len(report.differing)}",
    ]
    if report.differing:
        ranges = coalesce(sorted(report.differing))
        shown = ranges[:32]
        text = " ".join(str(a) if a == b else f"{a}-{b}" for a, b in shown)
        lines.append(f"differing: {text}{' ...' if len(ranges) > len(shown) else ''}")
    if report.error:
        lines.append(f"error: {report.error}")
    return lines


def _link(mirror: Mirror, args: list[str]) -> list[str]:
    action = args[0] if args else "status"
    if action == "status" and len(args) <= 1:
        return _link_lines(mirror)
    if action == "rate" and len(args) == 2:
        rate = None if args[1] == "off" else _parse_rate(args[1])
        try:
            mirror.set_link_rate(rate)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        return [f"link: rate cap {'off' if rate is None else f'{rate} bytes/s'}"]
    raise UsageError("expected status, or rate BYTES|off")


def _parse_rate(text: str) -> int:
    try:
        return parse_size(text.strip().upper().removesuffix("/S"))
    except ValueError:
        raise UsageError(f"not a rate: {text!r} (a positive size per second: 512K, 20M; "
                         f"or 'off')") from None


def _link_lines(mirror: Mirror) -> list[str]:
    status = mirror.status()
    keys = [k for k in status if k.startswith("link_")]
    if not keys:
        return [f"link: the second medium {mirror.second.name} is not a link"]
    wanted = keys + ["mirror_state", "mirror_replicated_write", "mirror_lag_bytes",
                     "mirror_lag_seconds", "mirror_throughput_bytes", "resync_remaining_bytes"]
    width = max(len(k) for k in wanted)
    lines = []
    for key in wanted:
        value = status.get(key)
        text = "-" if value is None else ("yes" if value is True else "no" if value is False
                                          else json.dumps(value) if isinstance(value, dict)
                                          else f"{value:.3f}".rstrip("0").rstrip(".")
                                          if isinstance(value, float) else str(value))
        lines.append(f"{key:<{width}}  {text}")
    return lines
