"""kill -9 of the firmware under load: the LUN survives and no acknowledged write is lost."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import need, run
from scsi_passthrough import scsi_command

KILL_AFTER = float(os.environ.get("TANDEM_HIL_KILL_AFTER", "5"))
FIO_SIZE = os.environ.get("TANDEM_HIL_FIO_SIZE_CRASH", "24M")


@pytest.mark.slow
def test_kill_9_under_fio_load_then_restart(scsi_disk, firmware, results_dir):
    need("fio")
    out = results_dir / "fio-crash.json"
    # Random 4k writes at queue depth 32 with checksums, enough of them to span the kill
    # and the restart; fio then reads everything back and verifies it (size-bound, since
    # fio skips the verify pass of a job cut short by --runtime).
    fio = subprocess.Popen(
        ["fio", "--name=crash", f"--filename={scsi_disk}", "--direct=1", "--ioengine=libaio",
         "--rw=randwrite", "--bs=4k", "--iodepth=32", f"--size={FIO_SIZE}",
         "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--output-format=json",
         f"--output={out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(KILL_AFTER)
        assert fio.poll() is None, "fio ended before the kill"
        killed = time.monotonic()
        firmware("kill")
        time.sleep(1)
        firmware("start")
        back_after = time.monotonic() - killed
        _, stderr = fio.communicate(timeout=900)
    finally:
        if fio.poll() is None:
            fio.kill()
    assert fio.returncode == 0, stderr[-3000:]
    job = json.loads(out.read_text())["jobs"][0]
    assert job["error"] == 0
    assert job["read"]["io_bytes"] == job["write"]["io_bytes"] > 0
    (results_dir / "crash-restart.txt").write_text(f"LUN back {back_after:.1f} s after kill\n")
    # The same disk answers a fresh command after the restart.
    assert Path(scsi_disk).exists()
    assert scsi_command(scsi_disk, struct.pack(">BBIBHB", 0x28, 0, 0, 0, 1, 0), 512).status == 0
    # Recovery resynced what the record named: the mirror converges on the volume's bytes.
    check = os.environ.get("TANDEM_MIRROR_CHECK")
    if check:
        run(["sh", "-c", check], timeout=600)
