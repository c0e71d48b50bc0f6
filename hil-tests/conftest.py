"""Hardware-in-the-loop tests: run on a rig (the virtual board, or a real one) as root.

They find the appliance through the environment the rig sets up:

    TANDEM_SCSI_DISK      the tcm_loop disk of the volume, e.g. /dev/sda
    TANDEM_ISCSI_URL      iscsi://HOST:PORT/IQN/LUN of the volume
    TANDEM_FIRMWARE_CTL   a command taking start|stop|kill (for the crash tests)
    TANDEM_RIG_RUN        a directory for results worth keeping (optional)
    TANDEM_MIRROR_CHECK   a shell command that waits for the mirror to drain and exits 0
                          when it holds the volume's bytes (optional)
    TANDEM_RIG_VIRTUAL    1 on the virtual rig (tests that start extra exports need it)

A test whose variable is missing is skipped, so the same files run against a
board that exports only iSCSI, say.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


# Gentle tests first, the crash last: a failure early says more than one after a kill.
MODULE_ORDER = ("test_tcm_loop", "test_iscsi", "test_crash")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.stem
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)
    items.sort(key=rank)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set (run through `tandem rig test`)")
    return value


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture
def scsi_disk() -> str:
    disk = _env("TANDEM_SCSI_DISK")
    if not Path(disk).exists():
        pytest.fail(f"TANDEM_SCSI_DISK={disk} does not exist")
    return disk


@pytest.fixture
def iscsi_url() -> str:
    return _env("TANDEM_ISCSI_URL")


class FirmwareControl:
    """Starts, stops and kills the firmware through the rig's TANDEM_FIRMWARE_CTL."""

    def __init__(self, command: str) -> None:
        self.command = shlex.split(command)

    def __call__(self, action: str, timeout: float = 180) -> None:
        subprocess.run([*self.command, action], check=True, timeout=timeout)


@pytest.fixture
def firmware() -> FirmwareControl:
    return FirmwareControl(_env("TANDEM_FIRMWARE_CTL"))


@pytest.fixture
def results_dir(tmp_path) -> Path:
    """Where to leave logs a person may want to read after the run."""
    run = os.environ.get("TANDEM_RIG_RUN")
    return Path(run) if run else tmp_path


def run(cmd: list[str], timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess:
    """Run a tool; on failure show its output in the assertion message."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          check=False, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, (
        f"{shlex.join(cmd)} exited with {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc
