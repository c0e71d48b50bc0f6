"""Fixtures for the link tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the test modules import link_support

from link_support import KEY, SIZE, CuttableProxy, ReceiverProcess  # noqa: E402


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "link.key"
    path.write_bytes(KEY)
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "remote.img"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    return path


@pytest.fixture
def receiver_factory(tmp_path: Path, image: Path, key_file: Path):
    started: list[ReceiverProcess] = []

    def make(*extra: str) -> ReceiverProcess:
        r = ReceiverProcess(tmp_path, image, key_file, list(extra))
        started.append(r)
        return r

    yield make
    for r in started:
        r.kill()


@pytest.fixture
def receiver(receiver_factory) -> ReceiverProcess:
    return receiver_factory().start()


@pytest.fixture
def proxy_factory():
    proxies: list[CuttableProxy] = []

    def make(target_port: int) -> CuttableProxy:
        p = CuttableProxy(target_port)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.close()
