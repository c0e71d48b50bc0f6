"""The volume as a local SCSI disk (LIO tcm_loop -> TCMU ring -> firmware)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
from pathlib import Path

import pytest
from conftest import need, run
from scsi_passthrough import scsi_command

# Sized to run ~10-20 s each under TCG; a real board can take more (the env overrides).
FIO_SIZE_4K = os.environ.get("TANDEM_HIL_FIO_SIZE_4K", "16M")
FIO_SIZE_1M = os.environ.get("TANDEM_HIL_FIO_SIZE_1M", "128M")


def block_count(disk: str) -> int:
    """512-byte sectors of the disk, as the kernel sees them."""
    return int(Path(f"/sys/block/{Path(disk).name}/size").read_text())


def test_the_disk_is_ours(scsi_disk):
    device = Path(f"/sys/block/{Path(scsi_disk).name}/device")
    assert (device / "vendor").read_text().strip() == "TANDEM"
    assert block_count(scsi_disk) > 0


def test_synchronize_cache_reaches_the_firmware(scsi_disk):
    assert scsi_command(scsi_disk, struct.pack(">BBIBHB", 0x35, 0, 0, 0, 0, 0)).status == 0
    assert scsi_command(scsi_disk, struct.pack(">BBQIBB", 0x91, 0, 0, 0, 0, 0)).status == 0


def test_errors_come_back_as_sense_data(scsi_disk):
    beyond = block_count(scsi_disk)
    reply = scsi_command(scsi_disk, struct.pack(">BBIBHB", 0x28, 0, beyond, 0, 1, 0), 512)
    assert reply.status == 0x02
    assert reply.sense_triple == (0x5, 0x21, 0x00)      # LBA OUT OF RANGE
    reply = scsi_command(scsi_disk, bytes((0xD5,)) + bytes(9))
    assert reply.status == 0x02
    assert reply.sense_triple == (0x5, 0x20, 0x00)      # INVALID COMMAND OPERATION CODE


def test_inquiry_vpd_pages_through_the_kernel(scsi_disk):
    reply = scsi_command(scsi_disk, struct.pack(">BBBHB", 0x12, 1, 0x00, 255, 0), 255)
    assert reply.status == 0
    assert {0x80, 0x83, 0xB0, 0xB1, 0xB2} <= set(reply.data[4:4 + reply.data[3]])
    reply = scsi_command(scsi_disk, struct.pack(">BBBHB", 0x12, 1, 0xB0, 255, 0), 255)
    assert len(reply.data) == 64                        # short answers carry a residual


def _tree(root: Path, seed: int) -> dict[str, str]:
    """Write a tree of files of assorted sizes; return their SHA-256 by relative path."""
    rng = random.Random(seed)
    digests = {}
    for d in range(8):
        folder = root / f"dir{d}" / f"sub{d % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(16):
            data = rng.randbytes(rng.choice((100, 4096, 5000, 65536, 200_000)))
            path = folder / f"file{f}.bin"
            path.write_bytes(data)
            digests[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    big = rng.randbytes(1 << 20) * 16
    (root / "big.bin").write_bytes(big)
    digests["big.bin"] = hashlib.sha256(big).hexdigest()
    return digests


def test_ext4_filesystem_round_trip(scsi_disk, tmp_path):
    need("mkfs.ext4", "e2fsck", "mount", "umount")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(["mkfs.ext4", "-q", "-F", scsi_disk], timeout=300)
    run(["mount", scsi_disk, str(mnt)])
    try:
        digests = _tree(mnt, seed=3)
        run(["sync"])
    finally:
        run(["umount", str(mnt)])
    run(["e2fsck", "-f", "-n", scsi_disk], timeout=300)     # exit status 0: no errors
    run(["mount", "-o", "ro", scsi_disk, str(mnt)])
    try:
        found = {str(p.relative_to(mnt)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in mnt.rglob("*.bin")}
    finally:
        run(["umount", str(mnt)])
    assert found == digests


def fio(disk: str, name: str, results: Path, *options: str) -> dict:
    need("fio")
    # Size-bound, not time-bound: fio skips the verify pass of a job cut by --runtime.
    out = results / f"fio-{name}.json"
    run(["fio", f"--name={name}", f"--filename={disk}", "--direct=1", "--ioengine=libaio",
         "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
         "--output-format=json", f"--output={out}", *options], timeout=900)
    report = json.loads(out.read_text())
    job = report["jobs"][0]
    assert job["error"] == 0
    return job


@pytest.mark.slow
def test_fio_random_4k_writes_qd32_verify(scsi_disk, results_dir):
    job = fio(scsi_disk, "randwrite-4k-qd32", results_dir, "--rw=randwrite", "--bs=4k",
              "--iodepth=32", f"--size={FIO_SIZE_4K}")
    assert job["write"]["io_bytes"] > 0
    assert job["read"]["io_bytes"] == job["write"]["io_bytes"]     # everything verified


@pytest.mark.slow
def test_fio_sequential_1m_writes_verify(scsi_disk, results_dir):
    job = fio(scsi_disk, "write-1m", results_dir, "--rw=write", "--bs=1M", "--iodepth=4",
              f"--size={FIO_SIZE_1M}")
    assert job["write"]["io_bytes"] > 0
    assert job["read"]["io_bytes"] == job["write"]["io_bytes"]


@pytest.mark.slow
def test_mirror_holds_the_same_bytes_after_the_drain(scsi_disk, results_dir):
    """After the writes above, the second medium catches up and matches the volume."""
    check = os.environ.get("TANDEM_MIRROR_CHECK")
    if not check:
        pytest.skip("TANDEM_MIRROR_CHECK is not set (the firmware under test has no mirror)")
    fio(scsi_disk, "before-mirror-check", results_dir, "--rw=randwrite", "--bs=4k",
        "--iodepth=32", "--size=8M")
    run(["sh", "-c", check], timeout=600)
