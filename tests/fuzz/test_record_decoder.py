"""The NVRAM record decoder against damaged images.

A record read back at start-up may be *larger* than the one written (the resync
copies a little more), never smaller (it would skip a region that differs). So a
damaged image must be refused -- start-up then resyncs everything -- or read as
a superset of what was written.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.record.layout import BITMAP_OFFSET, HEADER_SIZE, LayoutError
from firmware.record.store import NvramRecordStore
from tools.fuzz_targets import RamNvram, record_image

MANY = settings(max_examples=200, deadline=None)


@st.composite
def records(draw: st.DrawFn) -> tuple[int, int, list[int], bool]:
    region_size = 4096 << draw(st.integers(0, 5))
    nregions = draw(st.integers(1, 3000))
    volume_size = nregions * region_size - draw(st.sampled_from([0, 512]))
    regions = draw(st.lists(st.integers(0, nregions - 1), max_size=80, unique=True))
    return volume_size, region_size, sorted(regions), draw(st.booleans())


def load(image: bytes | bytearray) -> tuple[int, int, list[int]] | None:
    try:
        loaded = NvramRecordStore(RamNvram(image)).load()
    except LayoutError:
        return None
    g = loaded.header.geometry
    return g.volume_size, g.region_size, loaded.regions


@MANY
@given(record=records())
def test_an_intact_image_reads_back_exactly(record) -> None:
    volume_size, region_size, regions, adopted = record
    image = record_image(volume_size, region_size, regions, adopted=adopted)
    assert load(image) == (volume_size, region_size, regions)


@MANY
@given(record=records(), flips=st.lists(st.tuples(st.integers(0), st.integers(0, 7)),
                                        min_size=1, max_size=40))
def test_flipped_bits_are_refused_or_read_as_a_larger_record(record, flips) -> None:
    volume_size, region_size, regions, adopted = record
    image = bytearray(record_image(volume_size, region_size, regions, adopted=adopted))
    nregions = -(-volume_size // region_size)
    end = BITMAP_OFFSET + 2 * -(-nregions // 8)
    rails_hit: set[tuple[int, int]] = set()
    for where, bit in flips:
        where %= end
        if where >= BITMAP_OFFSET:
            pair = (where - BITMAP_OFFSET) // 2
            if (pair, bit) in rails_hit:
                continue  # the same bit in both rails: see the test below
            rails_hit.add((pair, bit))
        image[where] ^= 1 << bit
    result = load(image)
    if result is None:
        return  # refused: a full resync
    assert result[:2] == (volume_size, region_size)
    assert set(regions) <= set(result[2])


@MANY
@given(record=records(), slot_bits=st.lists(st.integers(0, 8 * HEADER_SIZE - 1), min_size=1,
                                            max_size=8))
def test_a_damaged_newest_header_falls_back_to_the_other_slot(record, slot_bits) -> None:
    volume_size, region_size, regions, _ = record
    image = bytearray(record_image(volume_size, region_size, regions, adopted=True))
    newest = HEADER_SIZE  # adopt() wrote generation 2 into slot B
    for bit in slot_bits:
        image[newest + bit // 8] ^= 1 << (bit % 8)
    assert load(image) == (volume_size, region_size, regions)


@MANY
@given(image=st.binary(min_size=2 * HEADER_SIZE, max_size=2048))
def test_random_images_are_refused(image) -> None:
    # Without the magic and a matching CRC nothing is taken for a record.
    assert load(image) is None


def test_the_blind_spot_of_dual_rail_is_the_same_bit_flipped_in_both_rails() -> None:
    # Documented limit (docs/reliability.md): a pair whose byte and complement both
    # lose the same bit still agree, so the region disappears. It takes two
    # independent faults in adjacent bytes; every single-rail damage is caught above.
    image = bytearray(record_image(1 << 24, 65536, [3]))
    image[BITMAP_OFFSET] ^= 1 << 3
    image[BITMAP_OFFSET + 1] ^= 1 << 3
    assert load(image) == (1 << 24, 65536, [])
