from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.appliance import RunningAppliance


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (tools/setup.sh installs them)")


@pytest.fixture
def appliance(tmp_path) -> Iterator[RunningAppliance]:
    app = RunningAppliance(tmp_path / "data").start()
    yield app
    app.stop()
