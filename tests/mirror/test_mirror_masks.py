"""Which blocks of each region the second medium misses (firmware/mirror/masks.py)."""

from __future__ import annotations

from firmware.mirror.masks import WRITTEN_BLOCK, BlockMasks, block_runs, extents

SHIFT = 16  # 64 KiB regions: 16 blocks each
REGION = 1 << SHIFT


def test_a_write_across_a_region_edge_marks_the_blocks_of_both() -> None:
    masks = BlockMasks(SHIFT, known=True)
    masks.note(REGION - 512, 1024)  # the last sector of region 0, the first of region 1
    assert masks.noted() == {0: 1 << 15, 1: 1}
    masks.note(3 * REGION, 0)  # zero length still names its block
    assert masks.noted()[3] == 1


def test_taken_masks_are_in_copy_until_copied_and_later_writes_are_noted_afresh() -> None:
    masks = BlockMasks(SHIFT, known=True)
    masks.note(0, 2 * WRITTEN_BLOCK)
    taken = masks.take([0, 5])
    assert taken == {0: 0b11} and masks.in_copy == taken and masks.noted() == {}
    masks.note(REGION + 4 * WRITTEN_BLOCK, 1)
    assert masks.pending() == {0: 0b11, 1: 0b10000}
    masks.copied()
    assert masks.pending() == {1: 0b10000}


def test_unknown_masks_copy_whole_regions() -> None:
    masks = BlockMasks(SHIFT, known=False)
    masks.note(0, 4096)
    assert not masks.known and masks.pending() is None and masks.take([0]) == {}
    assert masks.copy_bytes(0, masks.noted()) == REGION
    masks.restart()
    masks.note(0, 4096)
    assert masks.copy_bytes(0, masks.noted()) == WRITTEN_BLOCK


def test_chunks_count_noted_blocks_not_regions() -> None:
    masks = BlockMasks(SHIFT, known=True)
    for region in range(8):
        masks.note(region * REGION, WRITTEN_BLOCK)
    chunks, total = masks.chunks(list(range(8)) + [9], chunk_bytes=3 * WRITTEN_BLOCK)
    assert chunks == [[0, 1, 2], [3, 4, 5], [6, 7, 9]]
    assert total == 8 * WRITTEN_BLOCK + REGION  # region 9: nothing noted, all of it


def test_extents_join_neighbours_and_stop_at_the_medium_end() -> None:
    assert list(extents([0, 1, 3], SHIFT, 10 * REGION)) == [(0, 2 * REGION),
                                                           (3 * REGION, REGION)]
    assert list(extents([9], SHIFT, 9 * REGION + 100)) == [(9 * REGION, 100)]
    # Noted blocks: the last block of region 0 and the first of region 1 make one run.
    masks = {0: 1 << 15 | 1, 1: 1}
    assert list(extents([0, 1], SHIFT, 10 * REGION, masks)) == [
        (0, WRITTEN_BLOCK), (REGION - WRITTEN_BLOCK, 2 * WRITTEN_BLOCK)]
    assert list(block_runs(0, 0b1110110)) == [(4096, 12288), (16384, 28672)]


def test_the_pipeline_knows_which_regions_its_writes_touch() -> None:
    import asyncio

    from firmware.mirror.pipeline import Pipeline, QueuedWrite, Run

    shift = 16  # 64 KiB regions
    pipeline = Pipeline(lambda: 0.0)
    pipeline.enqueue(QueuedWrite(1, 3 * 65536 + 4096, 8192, b"x" * 8192, False, 0.0))
    assert pipeline.touches({3}, shift) and not pipeline.touches({2, 4}, shift)
    batch, _ = pipeline.take_batch(1 << 20)
    assert pipeline.touches({3}, shift)  # being written now
    pipeline.batch_written()
    assert not pipeline.touches({3}, shift)
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        pipeline.track(Run(future, 8192, seq=1, extents=[(w.offset, w.length) for w in batch]))
        pipeline.track(Run(loop.create_future(), 65536, regions=[9]))
        assert pipeline.touches({3}, shift) and pipeline.touches({9}, shift)
        assert not pipeline.touches({4, 8}, shift)
    finally:
        loop.close()
