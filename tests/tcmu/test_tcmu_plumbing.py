"""The small pieces around the ring: finding devices in sysfs/configfs, the rig's initramfs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from firmware.frontends.tcmu.lio import LioSettings
from firmware.frontends.tcmu.service import find_disk_by_serial
from firmware.frontends.tcmu.uio import UioName, find_uio
from firmware.parsing import parse_host_port as parse_portal
from tools.rig import command as rig


def make_uio(sysfs: Path, index: int, name: str) -> None:
    folder = sysfs / f"uio{index}"
    (folder / "maps" / "map0").mkdir(parents=True)
    (folder / "name").write_text(name + "\n")
    (folder / "maps" / "map0" / "size").write_text("0x40800000\n")


def test_uio_name_round_trip():
    name = UioName.parse("tcm-user/3/tandem0/tandem/vol0\n")
    assert name == UioName(3, "tandem0", "tandem/vol0")
    assert str(name) == "tcm-user/3/tandem0/tandem/vol0"
    assert UioName.parse("uio_pdrv_genirq") is None


def test_find_uio_by_storage_object_name_and_config(tmp_path):
    make_uio(tmp_path, 0, "tcm-user/0/other/tandem/other")
    make_uio(tmp_path, 1, "tcm-user/1/tandem0/tandem/tandem0")
    make_uio(tmp_path, 2, "something-else")
    assert find_uio("tandem0", "tandem/tandem0", sysfs=tmp_path) == "uio1"
    assert find_uio("tandem0", "tandem/elsewhere", sysfs=tmp_path) is None
    assert find_uio("missing", sysfs=tmp_path) is None
    assert find_uio("x", sysfs=tmp_path / "nope") is None


def test_find_disk_by_vpd_serial(tmp_path):
    for name, serial in (("sda", b"OTHER"), ("sdb", b"TDM0123")):
        device = tmp_path / name / "device"
        device.mkdir(parents=True)
        (device / "vpd_pg80").write_bytes(bytes((0, 0x80, 0, len(serial))) + serial)
    (tmp_path / "sdc" / "device").mkdir(parents=True)          # no VPD page at all
    assert find_disk_by_serial("TDM0123", sysfs=tmp_path) == "/dev/sdb"
    assert find_disk_by_serial("TDM9999", sysfs=tmp_path) is None


def test_portals_and_names():
    assert parse_portal("127.0.0.1:3260") == ("127.0.0.1", 3260)
    assert parse_portal("[::1]:3261") == ("::1", 3261)
    with pytest.raises(ValueError):
        parse_portal("127.0.0.1")
    settings = LioSettings(name="tandem0", volume="vol", size=1 << 20, serial="S")
    assert settings.config == "tandem/vol"
    assert settings.target_iqn.endswith(":tandem0")
    wwn = settings.loopback_wwn("target")
    assert wwn.startswith("naa.5001405") and len(wwn) == 20
    assert wwn == LioSettings(name="tandem0", volume="x", size=1, serial="T").loopback_wwn(
        "target")                                   # stable across runs: adoptable
    assert wwn != settings.loopback_wwn("initiator")


def test_rig_finds_the_disk_by_vendor(tmp_path):
    for name, vendor in (("sda", "ATA"), ("sdb", "TANDEM  ")):
        (tmp_path / name / "device").mkdir(parents=True)
        (tmp_path / name / "device" / "vendor").write_text(vendor + "\n")
    assert rig.find_scsi_disk(sysfs=tmp_path) == "/dev/sdb"


def test_rig_builds_the_iscsi_url_from_configfs(tmp_path):
    tpg = tmp_path / "iqn.2025-01.io.tandem:tandem0" / "tpgt_1"
    (tpg / "np" / "127.0.0.1:3260").mkdir(parents=True)
    (tpg / "lun" / "lun_0").mkdir(parents=True)
    (tpg / "enable").write_text("1\n")
    assert rig.find_iscsi_url(configfs=tmp_path) == \
        "iscsi://127.0.0.1:3260/iqn.2025-01.io.tandem:tandem0/0"
    (tpg / "enable").write_text("0\n")
    assert rig.find_iscsi_url(configfs=tmp_path) is None


def parse_newc(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """A minimal newc reader, written from the format description (not from rig.Cpio)."""
    entries, pos = {}, 0
    while True:
        assert archive[pos:pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = archive[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = archive[data_start:data_start + filesize]
        pos = data_start + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data)


def test_initramfs_archive_is_valid_newc():
    archive = rig.Cpio()
    archive.directory("bin")
    archive.file("bin/busybox", b"\x7fELF...", 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.char_device("dev/console", 5, 1)
    archive.file("init", b"#!/bin/sh\n", 0o755)
    entries = parse_newc(archive.finish())
    assert stat.S_ISDIR(entries["bin"][0])
    assert entries["bin/busybox"] == (stat.S_IFREG | 0o755, b"\x7fELF...")
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"][0])


def test_guest_script_runs_the_command_with_the_firmware_around_it(tmp_path):
    tree = rig.KernelTree(tmp_path, "6.1.0-test")
    vm = rig.VirtualRig(tree, cache=tmp_path)
    script = rig.guest_script(vm, ["echo", "hi there"], rig.DEFAULT_FIRMWARE, "64M")
    assert "modprobe" in script and "ip link set lo up" in script
    assert "guest-ctl start --print-env" in script
    assert script.index("guest-ctl start") < script.index("echo 'hi there'") < \
        script.index("guest-ctl stop")
    assert "--size 64M" in script
    bare = rig.guest_script(vm, ["true"], None, "64M")
    assert "guest-ctl" not in bare
