"""The pair's state in a node's own FRAM: the record it holds for its peer, its own
INTENT list, the pair epoch and the node names — torn-write safe.

Layout inside the window ``[base, base + size)`` of an :class:`Nvram` (little-endian)::

    0     superblock slot 0 (128 bytes)
    128   superblock slot 1
    256   HELD table: capacity entry slots of 24 bytes (the record held for the peer)
    ...   INTENT table: capacity entry slots (regions this node may have written)

An entry slot is ``region u64 | gen u64 | kind u8 | 2 pad | crc32c u32 | seal u8``. The
seal is 0x00 for a free slot and 0xA5 for a live one; the CRC covers the first 19 bytes.
A superblock slot holds the pair's state, a sequence number and a CRC, and its seal at
byte 127.

Why a cut can neither lose an acknowledged entry nor invent one: FRAM writes are byte-
granular and reach the cells in ascending address order (the :class:`Nvram` contract),
so the seal, written last, is the commit of its slot.

- An entry is added by writing a whole free slot. Until the seal byte lands the slot
  reads as free: a torn add loses only an entry nobody was told about yet.
- An entry is removed by writing its seal byte alone: one byte, old or new.
- An entry's generation is raised by writing the new entry into a free slot and only
  then freeing the old one; a cut in between leaves both, and loading keeps the higher.
- A superblock is written into the slot not holding the current one: its seal is
  cleared first (one byte), then the whole slot with the seal last. A cut leaves that
  slot unsealed and the other one current.

No sequence of cuts makes a slot read as live with a body it was not written with, so a
live slot whose CRC fails (or a seal that is neither value) is real damage — a bit flip —
and is reported, never silently dropped: the core then treats the record as incomplete.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from crc32c import crc32c

from firmware.peer.frames import KINDS, MAX_NAME, PRIMARY, RECORD_HOLDER
from hal.nvram.base import Nvram

MAGIC = b"TANDEMPR"
LAYOUT_VERSION = 1
SUPERBLOCK_SIZE = 128
SUPERBLOCK_SLOTS = 2
TABLES_OFFSET = SUPERBLOCK_SIZE * SUPERBLOCK_SLOTS
ENTRY_SIZE = 24
SEAL_FREE = 0x00
SEAL_LIVE = 0xA5
HELD = "held"
INTENT = "intent"
TABLES = (HELD, INTENT)

# magic, version, flags, seq, epoch, epoch creator, parent epoch, parent creator, boot,
# role, capacity, node, peer
_SUPER = struct.Struct("<8sHHQQ16sQ16sQB3xI16s16s")
_CRC = struct.Struct("<I")
_SEAL_AT = SUPERBLOCK_SIZE - 1
assert _SUPER.size + _CRC.size <= _SEAL_AT
_ENTRY = struct.Struct("<QQB2x")
_ENTRY_CRC_AT = _ENTRY.size
_ENTRY_SEAL_AT = ENTRY_SIZE - 1
assert _ENTRY.size + _CRC.size == _ENTRY_SEAL_AT

_ROLES = (PRIMARY, RECORD_HOLDER)
_SOLE, _HELD_COMPLETE, _FULL_RESYNC, _YIELDING, _HANDING_BACK = 1, 2, 4, 8, 16


class PairLayoutError(ValueError):
    """The FRAM window holds no valid pair superblock (blank, or another layout)."""


class TableFull(Exception):
    """A table has no free slot for the change; nothing was written."""


class Entry(NamedTuple):
    region: int
    gen: int
    kind: int


@dataclass(frozen=True)
class PairState:
    """What the superblock says. ``sole``: this node took over and served alone at this
    epoch; ``held_complete``: the writer said every region it may have written is in
    HELD (a takeover from HELD alone is then safe); ``full_resync``: the record is not
    to be trusted, the whole volume must be copied before it is clean; ``yielding``: an
    operator's ``peer rejoin`` (this node gives up its epoch to the peer's, and serves
    nothing until it has handed over), kept across a restart; ``handing_back``: this
    node, primary of the peer's record since a takeover, gave that role back to the
    record's owner (active-active failback) and waits for the owner to take it."""

    node: str
    peer: str
    role: str
    epoch: int = 1
    epoch_creator: str = ""
    parent: tuple[int, str] = (0, "")
    boot: int = 0
    sole: bool = False
    held_complete: bool = False
    full_resync: bool = False
    yielding: bool = False
    handing_back: bool = False

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"role {self.role!r} is not one of {_ROLES}")
        for name in (self.node, self.peer, self.epoch_creator, self.parent[1]):
            if len(name.encode()) > MAX_NAME:
                raise ValueError(f"node name {name!r} longer than {MAX_NAME} bytes")
        if not self.node or not self.peer or self.node == self.peer:
            raise ValueError("a pair needs two different non-empty node names")


@dataclass(frozen=True)
class TableChange:
    """Make ``table`` name at least ``add`` (an existing entry keeps the higher gen) and
    not name the regions in ``remove``."""

    table: str
    add: tuple[Entry, ...] = ()
    remove: tuple[int, ...] = ()


@dataclass(frozen=True)
class StateChange:
    state: PairState


FramChange = TableChange | StateChange


@dataclass
class LoadedPair:
    """What start-up found: the state, both tables, and damaged slots per table."""

    state: PairState
    capacity: int
    held: dict[int, Entry]
    intent: dict[int, Entry]
    damaged: dict[str, int] = field(default_factory=dict)


def required_bytes(capacity: int) -> int:
    """FRAM bytes for superblocks and two tables of ``capacity`` entries each."""
    return TABLES_OFFSET + 2 * capacity * ENTRY_SIZE


def encode_entry(entry: Entry) -> bytes:
    body = _ENTRY.pack(entry.region, entry.gen, entry.kind)
    return body + _CRC.pack(crc32c(body)) + bytes([SEAL_LIVE])


def decode_entry(raw: bytes) -> Entry | None | bool:
    """The entry in a slot; None if free; False if damaged."""
    seal = raw[_ENTRY_SEAL_AT]
    if seal == SEAL_FREE:
        return None
    body = raw[:_ENTRY.size]
    (crc,) = _CRC.unpack_from(raw, _ENTRY_CRC_AT)
    if seal != SEAL_LIVE or crc32c(body) != crc:
        return False
    region, gen, kind = _ENTRY.unpack(body)
    if kind not in KINDS:
        return False
    return Entry(region, gen, kind)


def _name_bytes(name: str) -> bytes:
    return name.encode().ljust(16, b"\0")


def _name_of(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


def encode_superblock(state: PairState, capacity: int, seq: int) -> bytes:
    flags = ((_SOLE if state.sole else 0) | (_HELD_COMPLETE if state.held_complete else 0)
             | (_FULL_RESYNC if state.full_resync else 0) | (_YIELDING if state.yielding else 0)
             | (_HANDING_BACK if state.handing_back else 0))
    body = _SUPER.pack(MAGIC, LAYOUT_VERSION, flags, seq, state.epoch,
                       _name_bytes(state.epoch_creator), state.parent[0],
                       _name_bytes(state.parent[1]), state.boot, _ROLES.index(state.role),
                       capacity, _name_bytes(state.node), _name_bytes(state.peer))
    raw = bytearray(SUPERBLOCK_SIZE)
    raw[:_SUPER.size] = body
    raw[_SUPER.size:_SUPER.size + _CRC.size] = _CRC.pack(crc32c(body))
    raw[_SEAL_AT] = SEAL_LIVE
    return bytes(raw)


def decode_superblock(raw: bytes) -> tuple[PairState, int, int] | None:
    """(state, capacity, seq) from a superblock slot, or None if it is not valid."""
    if raw[_SEAL_AT] != SEAL_LIVE:
        return None
    body = raw[:_SUPER.size]
    (crc,) = _CRC.unpack_from(raw, _SUPER.size)
    if crc32c(body) != crc:
        return None
    (magic, version, flags, seq, epoch, creator, parent_epoch, parent_creator, boot, role,
     capacity, node, peer) = _SUPER.unpack(body)
    if magic != MAGIC or version != LAYOUT_VERSION or role >= len(_ROLES):
        return None
    try:
        state = PairState(node=_name_of(node), peer=_name_of(peer), role=_ROLES[role],
                          epoch=epoch, epoch_creator=_name_of(creator),
                          parent=(parent_epoch, _name_of(parent_creator)), boot=boot,
                          sole=bool(flags & _SOLE), held_complete=bool(flags & _HELD_COMPLETE),
                          full_resync=bool(flags & _FULL_RESYNC),
                          yielding=bool(flags & _YIELDING),
                          handing_back=bool(flags & _HANDING_BACK))
    except ValueError:
        return None
    return state, capacity, seq


class _Table:
    """The RAM index of one entry table, as written."""

    def __init__(self, offset: int, capacity: int) -> None:
        self.offset = offset
        self.capacity = capacity
        self.entries: dict[int, tuple[Entry, int]] = {}  # region -> (entry, slot)
        self.free: list[int] = list(range(capacity))  # a heap: the lowest free slot first
        self.superseded: list[int] = []  # live slots of a lower gen (a cut mid-update)

    def slot_offset(self, slot: int) -> int:
        return self.offset + slot * ENTRY_SIZE


class PairFram:
    """The pair's superblock and tables in ``nvram[base : base + size]``.

    Every method that writes leaves the FRAM valid at every byte (see the module's
    docstring). After a write fails (PowerLost, NvramError) the RAM index is re-read
    from the FRAM before the next change.
    """

    def __init__(self, nvram: Nvram, *, base: int = 0, size: int | None = None) -> None:
        self._nvram = nvram
        self._base = base
        self._size = nvram.size - base if size is None else size
        if base < 0 or self._size <= TABLES_OFFSET or base + self._size > nvram.size:
            raise ValueError(f"FRAM window {base}+{self._size} does not fit "
                             f"{nvram.size} bytes with room for a pair record")
        self._state: PairState | None = None
        self._capacity = 0
        self._seq = 0
        self._slot = 0  # the superblock slot holding the current state
        self._tables: dict[str, _Table] = {}
        self._stale = False  # a write failed: re-read before trusting the index

    @staticmethod
    def capacity_for(size: int) -> int:
        """The most entries per table a window of ``size`` bytes holds."""
        return max(0, (size - TABLES_OFFSET) // (2 * ENTRY_SIZE))

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def state(self) -> PairState:
        if self._state is None:
            raise PairLayoutError("pair FRAM used before load() or format()")
        return self._state

    # -- start-up ------------------------------------------------------------------------

    def format(self, state: PairState, capacity: int | None = None) -> LoadedPair:
        """Write empty tables and ``state``. Both superblocks are invalidated first, so a
        cut in here leaves no valid superblock (a blank FRAM), never a mix."""
        capacity = self.capacity_for(self._size) if capacity is None else capacity
        if capacity < 2 or required_bytes(capacity) > self._size:
            raise ValueError(f"{capacity} entries per table do not fit {self._size} bytes")
        for slot in range(SUPERBLOCK_SLOTS):
            self._write(slot * SUPERBLOCK_SIZE + _SEAL_AT, bytes([SEAL_FREE]))
        self._write(TABLES_OFFSET, bytes(2 * capacity * ENTRY_SIZE))
        self._nvram.barrier()
        self._capacity = capacity
        self._seq = 0
        self._slot = 1
        self._tables = self._empty_tables(capacity)
        self._stale = False
        self._write_state(state)
        return self._loaded({HELD: 0, INTENT: 0})

    def load(self) -> LoadedPair:
        """Read the superblock and both tables; PairLayoutError if there is no pair."""
        best: tuple[PairState, int, int, int] | None = None
        for slot in range(SUPERBLOCK_SLOTS):
            decoded = decode_superblock(self._read(slot * SUPERBLOCK_SIZE, SUPERBLOCK_SIZE))
            if decoded is not None and (best is None or decoded[2] > best[2]):
                best = (*decoded, slot)
        if best is None:
            raise PairLayoutError("no valid pair superblock in FRAM")
        state, capacity, seq, slot = best
        if capacity < 2 or required_bytes(capacity) > self._size:
            raise PairLayoutError(f"superblock names {capacity} entries, more than the "
                                  f"{self._size} bytes of the window hold")
        self._state, self._capacity, self._seq, self._slot = state, capacity, seq, slot
        damaged = self._scan()
        return self._loaded(damaged)

    def open_boot(self) -> LoadedPair:
        """Load, count this boot (persisted before the core may use it), return it."""
        loaded = self.load()
        self._write_state(replace(self.state, boot=self.state.boot + 1))
        return self._loaded(loaded.damaged)

    def _loaded(self, damaged: dict[str, int]) -> LoadedPair:
        return LoadedPair(self.state, self._capacity,
                          {r: e for r, (e, _) in self._tables[HELD].entries.items()},
                          {r: e for r, (e, _) in self._tables[INTENT].entries.items()},
                          damaged)

    def _empty_tables(self, capacity: int) -> dict[str, _Table]:
        return {HELD: _Table(TABLES_OFFSET, capacity),
                INTENT: _Table(TABLES_OFFSET + capacity * ENTRY_SIZE, capacity)}

    def _scan(self) -> dict[str, int]:
        self._tables = self._empty_tables(self._capacity)
        damaged: dict[str, int] = {}
        for name, table in self._tables.items():
            raw = self._read(table.offset, table.capacity * ENTRY_SIZE)
            free: list[int] = []
            bad = 0
            for slot in range(table.capacity):
                decoded = decode_entry(raw[slot * ENTRY_SIZE:(slot + 1) * ENTRY_SIZE])
                if decoded is None:
                    free.append(slot)
                elif decoded is False:
                    bad += 1  # neither free nor usable: keep its slot out of use
                else:
                    assert isinstance(decoded, Entry)
                    held = table.entries.get(decoded.region)
                    if held is None:
                        table.entries[decoded.region] = (decoded, slot)
                    elif held[0].gen >= decoded.gen:
                        table.superseded.append(slot)
                    else:
                        table.superseded.append(held[1])
                        table.entries[decoded.region] = (decoded, slot)
            table.free = free  # ascending: already a heap
            damaged[name] = bad
        self._stale = False
        return damaged

    # -- changes -------------------------------------------------------------------------

    def entries(self, table: str) -> dict[int, Entry]:
        return {r: e for r, (e, _) in self._tables[table].entries.items()}

    def free_slots(self, table: str) -> int:
        t = self._tables[table]
        return len(t.free) + len(t.superseded)

    def apply(self, change: FramChange) -> None:
        """Persist one change; raise TableFull (nothing written) or the NVRAM's error."""
        if self._stale:
            self._scan()
        try:
            if isinstance(change, StateChange):
                self._write_state(change.state)
            else:
                self._apply_table(self._tables[change.table], change.add, change.remove)
        except TableFull:
            raise
        except BaseException:
            self._stale = True
            raise

    def _apply_table(self, t: _Table, add: Iterable[Entry], remove: Iterable[int]) -> None:
        updates: list[Entry] = []
        new: list[Entry] = []
        highest: dict[int, Entry] = {}
        for e in add:
            if e.region not in highest or highest[e.region].gen < e.gen:
                highest[e.region] = e
        for e in highest.values():
            held = t.entries.get(e.region)
            if held is None:
                new.append(e)
            elif held[0].gen < e.gen:
                updates.append(e)
        removing = [r for r in dict.fromkeys(remove) if r in t.entries]
        room = len(t.free) + len(t.superseded) + len(removing)
        if len(new) > room or (updates and not room):
            raise TableFull(f"{len(new)} new entries, {room} free slots")
        for slot in t.superseded:
            self._free_slot(t, slot)
        t.superseded.clear()
        for region in removing:
            _, slot = t.entries.pop(region)
            self._free_slot(t, slot)
        for e in updates:  # new slot first, then free the old one
            _, old = t.entries[e.region]
            slot = heapq.heappop(t.free)
            self._write(t.slot_offset(slot), encode_entry(e))
            t.entries[e.region] = (e, slot)
            self._free_slot(t, old)
        slots = [heapq.heappop(t.free) for _ in new]  # ascending
        for e, slot in zip(new, slots, strict=True):
            t.entries[e.region] = (e, slot)
        self._write_slot_runs(t, list(zip(slots, new, strict=True)))
        self._nvram.barrier()

    def _write_slot_runs(self, t: _Table, placed: list[tuple[int, Entry]]) -> None:
        """One NVRAM write per run of adjacent slots: each slot's seal still lands after
        its own body, so a cut anywhere leaves whole entries and free slots only."""
        i = 0
        while i < len(placed):
            j = i + 1
            while j < len(placed) and placed[j][0] == placed[j - 1][0] + 1:
                j += 1
            data = b"".join(encode_entry(e) for _, e in placed[i:j])
            self._write(t.slot_offset(placed[i][0]), data)
            i = j

    def _free_slot(self, t: _Table, slot: int) -> None:
        self._write(t.slot_offset(slot) + _ENTRY_SEAL_AT, bytes([SEAL_FREE]))
        heapq.heappush(t.free, slot)

    def _write_state(self, state: PairState) -> None:
        slot = self._slot ^ 1
        offset = slot * SUPERBLOCK_SIZE
        raw = encode_superblock(state, self._capacity, self._seq + 1)
        self._write(offset + _SEAL_AT, bytes([SEAL_FREE]))
        self._write(offset, raw)
        self._nvram.barrier()
        self._seq += 1
        self._slot = slot
        self._state = state

    def _read(self, offset: int, length: int) -> bytes:
        return self._nvram.read(self._base + offset, length)

    def _write(self, offset: int, data: bytes) -> None:
        self._nvram.write(self._base + offset, data)
