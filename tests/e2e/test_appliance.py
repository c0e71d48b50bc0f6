"""Issue 2 acceptance with real clients: nbdinfo, qemu-img, fio, ext4 over nbdfuse."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.appliance import RunningAppliance, same_bytes
from tests.e2e.conftest import need

MiB = 1 << 20


def run(*cmd: str, timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout, **kw)


def test_nbdinfo_shows_size_and_flags(appliance: RunningAppliance) -> None:
    need("nbdinfo")
    info = json.loads(run("nbdinfo", "--json", appliance.uri).stdout)
    export = info["exports"][0]
    assert export["export-size"] == 256 * MiB
    assert export["can_flush"] and export["can_fua"] and export["can_trim"]
    assert export["can_zero"] and export["can_multi_conn"] and not export["is_read_only"]
    assert export["block_size_preferred"] == 4096


def test_qemu_img_convert_then_mirror_is_identical(appliance: RunningAppliance,
                                                    tmp_path: Path) -> None:
    need("qemu-img")
    source = tmp_path / "random.img"
    source.write_bytes(os.urandom(256 * MiB))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), appliance.uri)
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), appliance.uri)
    status = appliance.wait_mirrored()
    assert status["misses"] < status["hits"], "sequential copy should mostly hit the record"
    appliance.stop()
    assert same_bytes(source, appliance.second_img)
    assert same_bytes(appliance.local_img, appliance.second_img)


def test_fio_randwrite_verify(appliance: RunningAppliance) -> None:
    need("fio")
    runtime = os.environ.get("TANDEM_FIO_RUNTIME", "60")
    out = run("fio", "--name=verify", "--ioengine=nbd", f"--uri={appliance.uri}",
              "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=256m",
              f"--runtime={runtime}", "--time_based", "--verify=crc32c",
              "--verify_fatal=1", "--verify_state_save=0", "--output-format=json",
              timeout=int(runtime) + 300)
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["total_ios"] > 0
    appliance.wait_mirrored()
    appliance.stop()
    assert same_bytes(appliance.local_img, appliance.second_img)


def test_ext4_over_nbdfuse(appliance: RunningAppliance, tmp_path: Path) -> None:
    need("nbdfuse", "mkfs.ext4", "fsck.ext4", "losetup")
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        pytest.skip("needs root and /dev/fuse")
    fuse_dir = tmp_path / "fuse"
    mnt = tmp_path / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    fuse = subprocess.Popen(["nbdfuse", str(fuse_dir), appliance.uri])
    loop = ""
    try:
        disk = fuse_dir / "nbd"
        deadline = time.monotonic() + 20
        while not disk.exists():
            assert time.monotonic() < deadline, "nbdfuse did not expose the export"
            time.sleep(0.1)
        run("mkfs.ext4", "-q", "-F", str(disk))
        loop = run("losetup", "--find", "--show", str(disk)).stdout.strip()
        run("mount", loop, str(mnt))
        rng = random.Random(2)
        expected: dict[str, bytes] = {}
        for d in range(8):
            (mnt / f"dir{d}").mkdir()
            for f in range(16):
                data = rng.randbytes(rng.randrange(0, 200_000))
                (mnt / f"dir{d}" / f"file{f}").write_bytes(data)
                expected[f"dir{d}/file{f}"] = data
        run("sync")
        run("umount", str(mnt))
        run("fsck.ext4", "-n", "-f", loop)
        run("mount", "-o", "ro", loop, str(mnt))
        for name, data in expected.items():
            assert (mnt / name).read_bytes() == data
        run("umount", str(mnt))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        subprocess.run(["fusermount3", "-u", str(fuse_dir)], capture_output=True)
        fuse.wait(30)
    appliance.wait_mirrored()
    appliance.stop()
    assert same_bytes(appliance.local_img, appliance.second_img)
