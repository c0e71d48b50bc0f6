"""Property tests: every backend behaves like a bytearray, and power cuts tear writes cleanly."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.nvram.base import Nvram, PowerLost
from hal.nvram.file_fram import FileFram
from hal.nvram.i2c_fram import I2cFram
from hal.nvram.spi_fram import SpiFram
from tools.sim.fram_models import I2cFramModel, SpiFramModel

SIZE = 8192  # every backend below is 8 KiB


@contextmanager
def file_backend() -> Iterator[Nvram]:
    with tempfile.TemporaryDirectory() as tmp:
        fram = FileFram(os.path.join(tmp, "fram.bin"), SIZE, sync=False)
        try:
            yield fram
        finally:
            fram.close()


@contextmanager
def spi_backend() -> Iterator[Nvram]:
    model = SpiFramModel("MB85RS64V", bufsiz=37)  # odd limit: chunks never align
    model.open(0, 0)
    yield SpiFram(model, max_transfer=37)
    assert not model.violations


@contextmanager
def i2c_backend() -> Iterator[Nvram]:
    yield I2cFram(I2cFramModel("MB85RC64TA"), chunk=29)


BACKENDS: dict[str, Callable[[], AbstractContextManager[Nvram]]] = {
    "file": file_backend,
    "spi": spi_backend,
    "i2c": i2c_backend,
}


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, bytes | int]]:
    ops = []
    for _ in range(draw(st.integers(1, 12))):
        offset = draw(st.integers(0, SIZE - 1))
        if draw(st.booleans()):
            length = draw(st.integers(0, min(300, SIZE - offset)))
            ops.append(("write", offset, draw(st.binary(min_size=length, max_size=length))))
        else:
            ops.append(("read", offset, draw(st.integers(0, min(300, SIZE - offset)))))
    return ops


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@settings(max_examples=60, deadline=None)
@given(ops=operations())
def test_random_operations_match_a_bytearray(backend, ops):
    expected = bytearray(SIZE)
    with BACKENDS[backend]() as fram:
        for op, offset, arg in ops:
            if op == "write":
                fram.write(offset, arg)
                expected[offset : offset + len(arg)] = arg
            else:
                assert fram.read(offset, arg) == bytes(expected[offset : offset + arg])
        fram.barrier()
        assert fram.read(0, SIZE) == bytes(expected)


@settings(max_examples=60, deadline=None)
@given(ops=operations(), budget=st.integers(0, 1200))
def test_power_cut_keeps_exactly_the_bytes_that_fit_in_the_budget(ops, budget):
    writes = [(offset, data) for op, offset, data in ops if op == "write"]
    expected = bytearray(SIZE)
    remaining = budget
    with file_backend() as fram:
        fram.arm_power_cut(budget)
        cut = False
        for offset, data in writes:
            try:
                fram.write(offset, data)
            except PowerLost:
                cut = True
                expected[offset : offset + remaining] = data[:remaining]
                break
            expected[offset : offset + len(data)] = data
            remaining -= len(data)
        assert cut == (sum(len(d) for _, d in writes) > budget)
        fram.power_on()
        assert fram.read(0, SIZE) == bytes(expected)
