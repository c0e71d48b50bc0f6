"""Asymmetric logical unit access (SPC-4 5.16): the target port groups a host sees.

LIO hands ALUA commands to a TCMU handler like any other command, so the handler says
which port group the LUN is reached through (INQUIRY's TPGS field, the device
identification page's target port group and relative target port designators) and what
state each group is in (REPORT TARGET PORT GROUPS). Transitions are implicit only: the
appliance (a pair's node, from what its cores know) sets the states, a host does not
(SET TARGET PORT GROUPS is not supported).

An appliance alone is one group, always active/optimized. In an active-active pair each
node exports the same LUN (one serial, one NAA name) through its own group, so a host's
multipath sees one disk with two paths; the states come from ``PortGroups.states``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Asymmetric access states (SPC-4 table 173).
ACTIVE_OPTIMIZED = 0x0
ACTIVE_NON_OPTIMIZED = 0x1
STANDBY = 0x2
UNAVAILABLE = 0x3
TRANSITIONING = 0xF

STATE_NAMES = {
    ACTIVE_OPTIMIZED: "active/optimized",
    ACTIVE_NON_OPTIMIZED: "active/non-optimized",
    STANDBY: "standby",
    UNAVAILABLE: "unavailable",
    TRANSITIONING: "transitioning",
}

# The states a group of ours may report (byte 1 of a descriptor): T_SUP, U_SUP, S_SUP,
# AO_SUP. Non-optimized is never used: both nodes reach D alike.
_SUPPORTED = 0x80 | 0x08 | 0x04 | 0x01
TPGS_IMPLICIT = 0x10  # INQUIRY byte 5, TPGS = 01b
STATUS_IMPLICIT_CHANGE = 0x02  # the state was last changed implicitly (by the appliance)
# Seconds a host should allow for an implicit transition (the extended header).
IMPLICIT_TRANSITION_S = 10


@dataclass(frozen=True)
class PortGroup:
    """One target port group: its id, the one target port in it, its state now."""

    group_id: int
    relative_port: int
    state: int = ACTIVE_OPTIMIZED


@dataclass
class PortGroups:
    """The groups of one LUN, seen through the group ``local`` (this export).

    ``states`` is asked on every command that reports them, so the answer follows the
    pair as it changes (a failover, a failback)."""

    local: int
    states: Callable[[], Sequence[PortGroup]]

    def local_group(self) -> PortGroup:
        for group in self.states():
            if group.group_id == self.local:
                return group
        raise LookupError(f"target port group {self.local} is not among the LUN's groups")

    @classmethod
    def alone(cls) -> PortGroups:
        """An appliance alone: one group (id 0, as LIO's default group), one port."""
        only = (PortGroup(0, 1, ACTIVE_OPTIMIZED),)
        return cls(0, lambda: only)


def port_designators(group: PortGroup) -> bytes:
    """The device identification page's designators for the port a command came in
    through: relative target port (type 4) and target port group (type 5), both with
    association 01b (the target port) and binary code set."""
    return (bytes((0x01, 0x14, 0x00, 4)) + struct.pack(">HH", 0, group.relative_port)
            + bytes((0x01, 0x15, 0x00, 4)) + struct.pack(">HH", 0, group.group_id))


def report_target_port_groups(groups: Sequence[PortGroup], *, extended: bool) -> bytes:
    """REPORT TARGET PORT GROUPS parameter data (SPC-4 6.36), not yet cut to the
    allocation length: a length-only header or the extended one (format 001b)."""
    body = bytearray()
    for group in groups:
        body += struct.pack(">BBHBBBB", group.state & 0x0F, _SUPPORTED, group.group_id, 0,
                            STATUS_IMPLICIT_CHANGE, 0, 1)
        body += struct.pack(">HH", 0, group.relative_port)
    if extended:
        header = struct.pack(">IBB2x", len(body) + 4, 0x10, IMPLICIT_TRANSITION_S)
    else:
        header = struct.pack(">I", len(body))
    return header + bytes(body)
