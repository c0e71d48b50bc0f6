"""Console commands of the pair: ``peer``.

    peer status [--json]        state, epoch, role, links, record sizes, messages
    peer takeover [--force]     take over from a silent peer (--force: no fence waited)
    peer rejoin                 yield to the peer after a split brain
    peer link up|down URL       open or close one peer link
    peer flush                  send the queued clears now
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from firmware.console.grammar import Command, CommandError, CommandTable, UsageError
from firmware.peer.events import FlushClears, RejoinCommand, TakeoverCommand
from firmware.peer.node import PairNode


def register_peer_commands(table: CommandTable, node: Callable[[], PairNode | None]) -> None:
    table.register(Command(
        name="peer",
        usage="peer status [--json] | takeover [--force] | rejoin | link up|down URL | flush",
        summary="the pair: its state and links, takeover, rejoin",
        handler=lambda args: _peer(node(), args),
        description=(
            "status: state, epoch, role, each link (state, round trip, last heartbeat),\n"
            "  regions held for the peer, the local copy, messages sent/acked/retried\n"
            "takeover: take over from a silent peer once it is fenced (the lease, the\n"
            "  fence command); --force: at once, on the operator's word that it is down\n"
            "rejoin: after a split brain, this node's writes yield to the peer's\n"
            "link up|down URL: open or close one link (a test, a maintenance window)\n"
            "flush: send the clears queued for the record-holder now"),
    ))


def _peer(node: PairNode | None, args: list[str]) -> list[str]:
    if node is None:
        raise CommandError("this appliance is not a node of a pair (tandem run --node ...)")
    if not args:
        args = ["status"]
    verb, rest = args[0], args[1:]
    if verb == "status":
        if rest not in ([], ["--json"]):
            raise UsageError("peer status [--json]")
        status = node.runtime.status()
        if node.holder is not None:  # active-active: the peer's record, held here
            status["mode"] = "active-active"
            status["holder"] = node.holder.status()
            waits = sorted(node.core.handover_waits)
            status["handovers"] = {
                "count": node.core.handovers,
                "mean_wait_ms": round(1000 * sum(waits) / len(waits), 3) if waits else None,
                "p99_wait_ms": round(1000 * waits[int(0.99 * (len(waits) - 1))], 3)
                if waits else None,
                "owned_regions": len(node.core.local_copy()),
                "peer_owned_regions": len(node.holder.core.held_regions())}
            status["alua"] = node.alua_status()  # the port groups this node's LUN reports
        if rest:
            return [json.dumps(status, separators=(",", ":"), default=str)]
        return _status_lines(status)
    if verb == "takeover":
        if rest not in ([], ["--force"]):
            raise UsageError("peer takeover [--force]")
        before = len(node.runtime.reports)
        node.runtime.submit(TakeoverCommand(force=bool(rest)))
        return _after(node, before, "takeover")
    if verb == "rejoin":
        if rest:
            raise UsageError("peer rejoin")
        before = len(node.runtime.reports)
        node.runtime.submit(RejoinCommand())
        return _after(node, before, "rejoin")
    if verb == "link":
        if len(rest) != 2 or rest[0] not in ("up", "down"):
            raise UsageError("peer link up|down URL")
        link = node.runtime.links.get(rest[1])
        if link is None:
            raise CommandError(f"no peer link {rest[1]!r}; links: "
                               + ", ".join(node.runtime.links))
        link.set_enabled(rest[0] == "up")
        return [f"peer link {rest[1]}: {'enabled' if rest[0] == 'up' else 'closed'}"]
    if verb == "flush":
        if rest:
            raise UsageError("peer flush")
        node.store.offer_clears()
        node.runtime.submit(FlushClears())
        return [f"peer: {node.core.status().clears_queued} clears on their way"]
    raise UsageError(f"unknown peer command {verb!r}")


def _after(node: PairNode, before: int, what: str) -> list[str]:
    """What the command made the core say, and where it stands now."""
    reports = list(node.runtime.reports)
    said = [f"{kind}: {detail}" for _, kind, detail in reports[before:]
            if kind in ("refused", "no-fence", "record-incomplete", "fence-failed",
                        "split-brain", "role-conflict")]
    refused = any(line.startswith("refused") for line in said)
    if refused:
        raise CommandError(f"peer {what}: " + "; ".join(said))
    core = node.core
    return [*said, f"peer {what}: state {core.state.value}, role {core.role}, "
                   f"epoch {core.epoch}"]


def _status_lines(status: dict[str, Any]) -> list[str]:
    lines = [
        f"node {status['node']} (peer {status['peer']}): {status['state']}, "
        f"{status['role']} at epoch {status['epoch']}"
        + (f" (by {status['epoch_creator']})" if status["epoch_creator"] else ""),
        f"frozen {'yes' if status['frozen'] else 'no'} · lease "
        f"{status['lease_remaining_s']:.1f} s",
    ]
    for link in status["links"]:
        rtt = "-" if link["rtt_ms"] is None else f"{link['rtt_ms']:.2f} ms"
        lines.append(f"link {link['url']} ({link['kind']}): {link['state']}, rtt {rtt}, "
                     f"transport {link.get('transport', '?')}, sent {link.get('frames_sent', 0)}"
                     f", received {link.get('frames_received', 0)}"
                     + (f", last error: {link['last_error']}" if link.get("last_error") else ""))
    c = status["counters"]
    lines += [
        f"held_regions {status['held_regions']} · local_copy_regions "
        f"{status['local_copy_regions']} · intent_regions {status['intent_regions']} · "
        f"resync_regions {status['resync_regions']}",
        f"writes: hits {c['hits']}, misses {c['misses']} · marks acked {c['marks_acked']}, "
        f"outstanding {status['marks_outstanding']} · clears acked {c['clears_acked']}, "
        f"queued {status['clears_queued']} · retried {c['retried']}",
        f"record complete {'yes' if status['held_complete'] else 'no'} · full resync "
        f"{'owed' if status['full_resync'] else 'no'}",
    ]
    handovers = status.get("handovers")
    if handovers is not None:  # active-active
        holder = status["holder"]
        wait = "-" if handovers["mean_wait_ms"] is None else (
            f"mean {handovers['mean_wait_ms']:.1f} ms, p99 {handovers['p99_wait_ms']:.1f} ms")
        lines += [
            f"active-active: owned here {handovers['owned_regions']}, by the peer "
            f"{handovers['peer_owned_regions']} · hand-overs {handovers['count']} ({wait})",
            f"peer's record held here: {holder['state']} at epoch {holder['epoch']}, "
            f"{holder['held_regions']} regions",
            "ALUA: " + " · ".join(f"group {g['group']} ({g['node']}) {g['state']}"
                                  for g in status.get("alua", ())),
        ]
    for report in status["reports"][-5:]:
        lines.append(f"report {report['kind']}: {report['detail']}")
    return lines
