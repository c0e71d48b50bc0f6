"""Acceptance 4: kill -9 under fio load, restart, nothing acknowledged is lost and the
record-driven resync makes the second medium equal the local one."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.appliance import RunningAppliance, same_bytes
from tests.e2e.conftest import need
from tests.e2e.pattern_checker import check

ROUNDS = int(os.environ.get("TANDEM_CRASH_ROUNDS", "20"))
CHECKER_BLOCKS = 16384  # the first 64 MiB carry logged patterns; fio loads the rest


@pytest.mark.slow
def test_kill_under_load_then_recover(tmp_path: Path) -> None:
    need("fio")
    rng = random.Random(int(os.environ.get("TANDEM_CRASH_SEED", "4")))
    data = tmp_path / "data"
    log = tmp_path / "acked.log"
    for round_no in range(1, ROUNDS + 1):
        app = RunningAppliance(data).start()
        fio = subprocess.Popen(
            ["fio", "--name=load", "--ioengine=nbd", f"--uri={app.uri}", "--rw=randwrite",
             "--bs=4k", "--iodepth=32", "--offset=64m", "--size=192m", "--time_based",
             "--runtime=60", "--output=/dev/null"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        writer = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("pattern_checker.py")), app.uri,
             str(log), str(round_no), str(CHECKER_BLOCKS)],
            stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 2.5))
        app.kill()
        acked_now = int(writer.communicate(timeout=60)[0] or 0)
        fio.wait(60)

        again = RunningAppliance(data).start()
        status = again.status()
        assert "full resync" not in str(status.get("startup")), status
        checked, problems = check(again.uri, log)
        assert not problems, f"round {round_no}: {problems[:5]}"
        assert checked > 0 and acked_now >= 0
        again.wait_mirrored()
        again.stop()
        assert same_bytes(again.local_img, again.second_img), f"round {round_no}: media differ"
