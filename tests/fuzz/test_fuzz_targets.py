"""The fuzz targets in the suite: the kept corpus and crash inputs replay, plus a short
random pass; the long coverage-guided runs are `python -m tools.fuzz` (atheris)."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.fuzz_targets import TARGETS, pieces
from tools.fuzz_targets import seeds as make_seeds

HERE = Path(__file__).parent
SEEDS = make_seeds()
REPO = HERE.parents[1]
SHORT = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def kept_inputs(target: str) -> list[Path]:
    files = []
    for kind in ("corpus", "crashes"):
        directory = HERE / kind / target
        if directory.is_dir():
            files += sorted(p for p in directory.iterdir()
                            if p.is_file() and p.suffix != ".md")
    return files


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kept_corpus_and_crash_inputs_replay(target) -> None:
    files = kept_inputs(target)
    assert files or target == "link", f"no corpus for {target}: run python -m tools.fuzz"
    for path in files:
        try:
            TARGETS[target](path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{path.relative_to(REPO)}: {exc!r}") from exc


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_hand_made_seeds_pass(target) -> None:
    for data in SEEDS[target]:
        TARGETS[target](data)


@pytest.mark.parametrize("target", sorted(TARGETS))
@SHORT
@given(data=st.binary(max_size=700))
def test_random_bytes(target, data) -> None:
    TARGETS[target](data)


@pytest.mark.parametrize("target", sorted(TARGETS))
@SHORT
@given(choice=st.integers(min_value=0), flips=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=6))
def test_mutated_seeds(target, choice, flips) -> None:
    inputs = SEEDS[target] or [b"\0\0"]
    data = bytearray(inputs[choice % len(inputs)])
    for where, value in flips:
        data[where % len(data)] = value
    TARGETS[target](bytes(data))


def test_pieces_cover_the_input() -> None:
    rng = random.Random(1)
    for _ in range(100):
        data = rng.randbytes(rng.randrange(200))
        split = rng.randrange(256)
        assert b"".join(pieces(data, split)) == data


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_short_run(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "tools.fuzz", "nbd", "record", "--runs", "300"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "crashes 0" in out.stdout and "inputs tried" in out.stdout
