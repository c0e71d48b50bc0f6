"""The volume over iSCSI: libiscsi's conformance suite, and the kernel initiator's login."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import need, run
from scsi_passthrough import scsi_command

# The iscsi-test-cu families the volume must pass (SBC/SPC commands a host relies on).
# libiscsi has no SYNCHRONIZE CACHE family; that command is checked through SG_IO below
# and in test_tcm_loop.py.
REQUIRED_FAMILIES = (
    "SCSI.TestUnitReady", "SCSI.Inquiry", "SCSI.ReadCapacity10", "SCSI.ReadCapacity16",
    "SCSI.Read10", "SCSI.Read16", "SCSI.Write10", "SCSI.Write16", "SCSI.Unmap",
    "SCSI.WriteSame10", "SCSI.WriteSame16",
)
# Everything else under SCSI.* is run only on request (TANDEM_HIL_ISCSI_ALL=1), to keep
# the CI stage short; docs/iscsi-test-cu.md records a full run.
SUMMARY = re.compile(r"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", re.MULTILINE)


def iscsi_test_cu(url: str, family: str, results: Path) -> tuple[int, int, str]:
    need("iscsi-test-cu")
    proc = subprocess.run(["iscsi-test-cu", "--dataloss", "--test", family, url],
                          capture_output=True, text=True, timeout=1800, check=False)
    (results / f"iscsi-test-cu-{family}.txt").write_text(proc.stdout + proc.stderr)
    match = SUMMARY.search(proc.stdout)
    assert match, f"no summary from iscsi-test-cu {family}:\n{proc.stdout[-3000:]}" \
                  f"\n{proc.stderr[-2000:]}"
    _total, ran, _passed, failed = map(int, match.groups())
    return ran, failed, proc.stdout


@pytest.mark.parametrize("family", REQUIRED_FAMILIES)
def test_iscsi_test_cu_family(iscsi_url, results_dir, family):
    ran, failed, output = iscsi_test_cu(iscsi_url, family, results_dir)
    failures = [line for line in output.splitlines() if "FAILED" in line]
    assert ran > 0
    assert failed == 0, "\n".join(failures[:40])


@pytest.mark.skipif(os.environ.get("TANDEM_HIL_ISCSI_ALL") != "1",
                    reason="the whole SCSI suite runs only with TANDEM_HIL_ISCSI_ALL=1")
def test_iscsi_test_cu_everything(iscsi_url, results_dir):
    """Run every SCSI.* family and record the outcome per test (not asserted)."""
    need("iscsi-test-cu")
    listing = subprocess.run(["iscsi-test-cu", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    families = sorted({name for name in listing if name.count(".") == 1
                       and name.startswith("SCSI.")})
    lines = []
    for family in families:
        started = time.monotonic()
        ran, failed, output = iscsi_test_cu(iscsi_url, family, results_dir)
        lines.append(f"{family}\tran={ran}\tfailed={failed}\t"
                     f"{time.monotonic() - started:.0f}s")
        for test in re.findall(r"^\s*Test: (\S+) \.\.\.(.*)$", output, re.MULTILINE):
            lines.append(f"  {test[0]}\t{test[1].strip()}")
    (results_dir / "iscsi-test-cu-all.txt").write_text("\n".join(lines) + "\n")


def _iscsi_disks() -> set[str]:
    sessions = Path("/sys/class/iscsi_session")
    return {p.name for p in sessions.glob("session*/device/target*/*/block/*")}


def test_kernel_initiator_login(iscsi_url, tmp_path):
    need("iscsiadm", "iscsid")
    url = urlparse(iscsi_url)
    portal = url.netloc
    iqn = url.path.strip("/").split("/")[0]
    subprocess.run(["modprobe", "iscsi_tcp"], check=False)
    Path("/run/lock/iscsi").mkdir(parents=True, exist_ok=True)     # open-iscsi's lock dir
    if subprocess.run(["pgrep", "-x", "iscsid"], capture_output=True).returncode != 0:
        run(["iscsid"])
        time.sleep(1)
    discovery = run(["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", portal])
    assert iqn in discovery.stdout
    before = _iscsi_disks()
    run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "--login"], timeout=120)
    try:
        deadline = time.monotonic() + 60
        while not (_iscsi_disks() - before) and time.monotonic() < deadline:
            time.sleep(0.2)
        (name,) = _iscsi_disks() - before
        disk = f"/dev/{name}"
        deadline = time.monotonic() + 30
        while not Path(disk).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert Path(f"/sys/block/{name}/device/vendor").read_text().strip() == "TANDEM"
        pattern = tmp_path / "pattern"
        pattern.write_bytes(os.urandom(1 << 20))
        run(["dd", f"if={pattern}", f"of={disk}", "bs=64k", "seek=64", "oflag=direct",
             "status=none"])
        back = tmp_path / "back"
        run(["dd", f"if={disk}", f"of={back}", "bs=64k", "skip=64", "count=16",
             "iflag=direct", "status=none"])
        assert back.read_bytes() == pattern.read_bytes()
        sync = scsi_command(disk, bytes((0x35,)) + bytes(9))
        assert sync.status == 0                                 # SYNCHRONIZE CACHE(10)
    finally:
        run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "--logout"], timeout=120)
