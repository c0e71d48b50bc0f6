"""`tandem rig`: run hil-tests/ against a rig — a virtual board in QEMU, or a real board.

The virtual rig boots Debian's stock kernel (it ships LIO, TCMU, tcm_loop, the
iSCSI target and nbd as modules) under QEMU with the host's / shared
read-only over virtio-9p and tmpfs overlays on top, so the guest runs the
project from this very checkout with the host's Python and tools. Inside, the
firmware (`tandem run` on the sim board) serves its volume through TCMU to a
tcm_loop disk and an iSCSI portal on the guest's own 127.0.0.1:3260, and the
tests (or any command) run against them with TANDEM_SCSI_DISK and
TANDEM_ISCSI_URL in their environment.

  tandem rig setup                      download the kernel, build the initramfs (idempotent)
  tandem rig test --virtual [PYTEST..]  boot, start the firmware, run hil-tests/ inside
  tandem rig exec --virtual -- CMD...   the same set-up, then CMD; exits with CMD's status
  tandem rig test --rig board.toml      run hil-tests/ on a real board (see RigDescription)

Facts this rests on: /dev/kvm on the CI machines is the kvm_pvm flavour, under
which the stock kernel hangs, so the VM runs under TCG unless real VMX/SVM KVM
is there; the guest has no udev (the firmware's devices are found in sysfs).
"""

from __future__ import annotations

import argparse
import lzma
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # tools/rig/command.py → the checkout
CACHE_DIR = Path(os.environ.get("TANDEM_RIG_CACHE", "~/.cache/tandem-rig")).expanduser()
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "kmod")
# Modules the initramfs loads to reach the host's file system and the output console.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio_console", "overlay")
# Modules the guest loads before the firmware starts.
GUEST_MODULES = ("configfs", "target_core_mod", "target_core_user", "tcm_loop",
                 "iscsi_target_mod", "sd_mod")
# Host directories that get a writable tmpfs overlay inside the guest.
OVERLAY_DIRS = ("etc", "root", "home", "tmp", "var", "usr", "opt", "srv")

# The firmware command inside the guest. Placeholders: {python} {run} (the run directory,
# shared with the host) {scratch} (guest tmpfs) {size} {repo}. The default is the
# appliance itself on the simulated board; SERVICE_FIRMWARE is the bare TCMU frontend
# over an image file (no record, no mirror), for looking at the SCSI side alone.
DEFAULT_FIRMWARE = ("{python} -m firmware.cli run --board sim --data-dir {scratch}/data "
                    "--size {size} --tcmu --tcm-loop --iscsi-portal 127.0.0.1:3260 "
                    "--no-console-pty")
SERVICE_FIRMWARE = ("{python} -m tools.rig.tcmu_file --image {scratch}/volume.img "
                    "--size {size} --name tandem0 --tcm-loop --iscsi-portal 127.0.0.1:3260")
# With the default firmware: the sim board's two media must end up identical once the
# mirror has drained (the test stops writing first, so they converge).
DEFAULT_MIRROR_CHECK = ("for i in $(seq 600); do "
                        "cmp -s {scratch}/data/local.img {scratch}/data/second.img && exit 0; "
                        "sleep 0.5; done; cmp {scratch}/data/local.img {scratch}/data/second.img")
# Guest-local scratch space (tmpfs): volume images live here, not on the 9p run directory.
GUEST_SCRATCH = "/tmp/tandem-rig"
DEFAULT_VOLUME_SIZE = "256M"
KEEP_RUNS = 10
READY_TIMEOUT = 120.0
NOTIFY_GRACE = 30.0     # after this long without READY=1, a disk that answers will do


class RigError(Exception):
    pass


def log(message: str) -> None:
    print(f"rig: {message}", file=sys.stderr, flush=True)


# -- the kernel and the initramfs -------------------------------------------------------


@dataclass(frozen=True)
class KernelTree:
    """An extracted linux-image package: its version, root and boot images."""

    root: Path
    version: str

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def vmlinux(self) -> Path:
        return self.root / "boot" / f"vmlinux-{self.version}"

    @property
    def boot_image(self) -> Path:
        # The uncompressed ELF boots through QEMU's PVH entry, skipping seconds of
        # xz decompression under TCG; the bzImage is the fallback.
        return self.vmlinux if self.vmlinux.exists() else self.vmlinuz

    @property
    def initramfs(self) -> Path:
        return self.root.parent / f"initramfs-{self.version}.img"


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


def ensure_host_packages() -> None:
    missing = [p for p in HOST_PACKAGES
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], text=True,
                                 capture_output=True).stdout.find("ok installed") < 0]
    if not missing:
        return
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def kernel_package() -> str:
    """The versioned package linux-image-amd64 depends on (e.g. linux-image-6.1.0-56-amd64)."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "Depends:" and words[1][len("linux-image-"):][:1] \
                .isdigit():
            return words[1]
    raise RigError("cannot resolve the package behind linux-image-amd64")


def ensure_kernel(cache: Path = CACHE_DIR) -> KernelTree:
    """Download and unpack the current Debian kernel once; reuse it afterwards."""
    kernels = cache / "kernel"
    existing = sorted(kernels.glob("*/lib/modules/*/modules.dep"))
    if existing and os.environ.get("TANDEM_RIG_REFRESH") != "1":
        modules = existing[-1].parent
        return KernelTree(modules.parent.parent.parent, modules.name)
    package = kernel_package()
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        log(f"downloading {package}")
        subprocess.run(["apt-get", "download", "-q", package], cwd=debs, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = sorted(debs.glob(f"{package}_*.deb"))
    root = kernels / package
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(found[-1]), str(root)])
    found[-1].unlink()                                  # 70 MB; fetched again if ever needed
    (version,) = [p.name for p in (root / "lib" / "modules").iterdir()]
    _run(["depmod", "-b", str(root), version])      # the package ships no modules.dep
    tree = KernelTree(root, version)
    try:
        _extract_vmlinux(tree.vmlinuz, tree.vmlinux)
    except (ValueError, lzma.LZMAError) as exc:
        log(f"no uncompressed kernel ({exc}); booting the bzImage")
    return tree


def _extract_vmlinux(vmlinuz: Path, vmlinux: Path) -> None:
    image = vmlinuz.read_bytes()
    start = image.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise ValueError("no xz payload in the bzImage")
    elf = lzma.LZMADecompressor().decompress(image[start:])
    if elf[:4] != b"\x7fELF":
        raise ValueError("the xz payload is not an ELF image")
    vmlinux.write_bytes(elf)


class Cpio:
    """A newc cpio archive (what the kernel unpacks as initramfs), built in memory."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._parts.append(header + encoded + bytes(-(len(header) + len(encoded)) % 4))
        self._parts.append(data + bytes(-len(data) % 4))

    def directory(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._add(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0)
        return b"".join(self._parts)


INIT_SCRIPT = r"""#!/bin/sh
# Tandem rig init: reach the host's / over 9p, make it writable with tmpfs overlays,
# run the command script the host wrote into the run directory, power off.
PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() { echo "rig-init: $*"; sync; poweroff -f; }
for m in $(cat /modules/order); do insmod /modules/$m || echo "rig-init: insmod $m failed"; done
for arg in $(cat /proc/cmdline); do
    case $arg in
        tandem.run=*) RUN=${arg#tandem.run=} ;;
        tandem.modules=*) MODULES=${arg#tandem.modules=} ;;
        tandem.cache=*) CACHE=,cache=${arg#tandem.cache=} ;;
    esac
done
KV=$(cat /proc/sys/kernel/osrelease)
P9=trans=virtio,version=9p2000.L,msize=512000,access=any
mount -t 9p -o ro,$P9$CACHE hostroot /root || fail "cannot mount the host's / over 9p"
mount -t tmpfs -o mode=755 tmpfs /upper
for d in __OVERLAY_DIRS__; do
    [ -d /root/$d ] || continue
    mkdir -p /upper/$d/data /upper/$d/work
    mount -t overlay overlay -o lowerdir=/root/$d,upperdir=/upper/$d/data,workdir=/upper/$d/work \
        /root/$d || fail "overlay on /$d failed"
done
mkdir -p /root/usr/lib/modules/$KV
mount -o bind /root$MODULES /root/usr/lib/modules/$KV || fail "cannot bind the modules"
mount -t 9p -o $P9 rigrun /root$RUN || fail "cannot mount the run directory"
mount -t proc proc /root/proc
mount -t sysfs sysfs /root/sys
mount -t devtmpfs devtmpfs /root/dev
mkdir -p /root/dev/pts /root/dev/shm
mount -t devpts devpts /root/dev/pts
mount -t tmpfs tmpfs /root/dev/shm
mount -t tmpfs tmpfs /root/run
i=0
while [ ! -e /dev/hvc0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
# switch_root, not chroot: the kernel's own module requests (crc32c for iSCSI digests,
# say) run /sbin/modprobe in PID 1's root, which must be the host's tree.
exec switch_root /root /bin/bash -c \
    'bash "$0/guest.sh" </dev/null >/dev/hvc0 2>&1; echo $? > "$0/rc"; sync
     echo o > /proc/sysrq-trigger; sleep 30' "$RUN"
"""


def _module_files(tree: KernelTree, names: Iterable[str]) -> list[Path]:
    """The .ko files for ``names`` and their dependencies, in load order."""
    files: list[Path] = []
    for name in names:
        out = _run(["modprobe", "-d", str(tree.root), "-S", tree.version,
                    "--show-depends", name]).stdout
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["insmod"] and Path(words[1]) not in files:
                files.append(Path(words[1]))
    return files


def ensure_initramfs(tree: KernelTree) -> Path:
    if tree.initramfs.exists() and tree.initramfs.stat().st_mtime >= Path(__file__).stat().st_mtime:
        return tree.initramfs
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RigError("busybox (busybox-static) is not installed")
    if shutil.which("file") and "statically linked" not in _run(["file", "-L", busybox]).stdout:
        raise RigError(f"{busybox} is not statically linked (install busybox-static)")
    archive = Cpio()
    for directory in ("bin", "dev", "proc", "sys", "root", "upper", "modules"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    for applet in ("sh", "mount", "mkdir", "insmod", "cat", "switch_root", "sleep", "sync",
                   "poweroff"):
        archive.symlink(f"bin/{applet}", "busybox")
    order = []
    for ko in _module_files(tree, BOOT_MODULES):
        data = ko.read_bytes()
        name = ko.name
        if name.endswith(".xz"):            # busybox insmod wants plain ELF
            data, name = lzma.decompress(data), name[:-3]
        archive.file(f"modules/{name}", data)
        order.append(name)
    archive.file("modules/order", ("\n".join(order) + "\n").encode())
    script = INIT_SCRIPT.replace("__OVERLAY_DIRS__", " ".join(OVERLAY_DIRS))
    archive.file("init", script.encode(), 0o755)
    tree.initramfs.write_bytes(archive.finish())
    log(f"initramfs {tree.initramfs} ({tree.initramfs.stat().st_size} bytes, "
        f"modules: {' '.join(order)})")
    return tree.initramfs


def setup(cache: Path = CACHE_DIR) -> KernelTree:
    """Everything the virtual rig needs on the host; quick when it is already there."""
    started = time.monotonic()
    ensure_host_packages()
    tree = ensure_kernel(cache)
    ensure_initramfs(tree)
    log(f"ready: kernel {tree.version} ({time.monotonic() - started:.1f} s)")
    return tree


# -- booting ----------------------------------------------------------------------------


def _accelerator(choice: str) -> list[str]:
    real_kvm = (os.access("/dev/kvm", os.R_OK | os.W_OK)
                and not Path("/sys/module/kvm_pvm").exists()
                and (Path("/sys/module/kvm_intel").exists()
                     or Path("/sys/module/kvm_amd").exists()))
    if choice == "kvm" or (choice == "auto" and real_kvm):
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg", "-cpu", "max"]


@dataclass
class VirtualRig:
    """One boot of the virtual board running one guest script."""

    tree: KernelTree
    memory: str = "2G"
    cpus: int = 2
    accel: str = "auto"
    timeout: float = 1200.0
    # 9p caching of the read-only host tree: "loose" lets the guest keep file pages
    # (Python's modules, the tools) instead of fetching them again on every start.
    cache_mode: str | None = os.environ.get("TANDEM_RIG_9P_CACHE", "loose") or None
    cache: Path = CACHE_DIR
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        runs = self.cache / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        # Kept runs (failures, --keep) pile up: only the newest few stay.
        for old in sorted(runs.glob("run.*"), key=lambda p: p.stat().st_mtime)[:-KEEP_RUNS]:
            shutil.rmtree(old, ignore_errors=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="run.", dir=runs))

    def boot(self, guest_script: str) -> int:
        """Run ``guest_script`` (bash) as root in the guest; return its exit status."""
        script = self.run_dir / "guest.sh"
        script.write_text(guest_script)
        append = " ".join((
            "console=ttyS0", "panic=-1", "quiet", "loglevel=4",
            f"tandem.run={self.run_dir}", f"tandem.modules={self.tree.modules}",
            *([f"tandem.cache={self.cache_mode}"] if self.cache_mode else [])))
        command = [
            "qemu-system-x86_64", "-M", "q35", *_accelerator(self.accel),
            "-m", self.memory, "-smp", str(self.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(self.tree.boot_image), "-initrd", str(self.tree.initramfs),
            "-append", append,
            "-serial", f"file:{self.run_dir / 'console.log'}",
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,"
                      "multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=rigrun,path={self.run_dir},security_model=none",
            "-device", "virtio-9p-pci,fsdev=rigrun,mount_tag=rigrun",
            "-device", "virtio-serial-pci",
            "-chardev", "stdio,id=out,signal=off", "-device", "virtconsole,chardev=out",
        ]
        started = time.monotonic()
        try:
            subprocess.run(command, stdin=subprocess.DEVNULL, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            log(f"the VM ran past {self.timeout:.0f} s and was stopped")
        rc_file = self.run_dir / "rc"
        log(f"VM ran {time.monotonic() - started:.1f} s; logs in {self.run_dir}")
        if not rc_file.exists():
            console = self.run_dir / "console.log"
            tail = console.read_text(errors="replace").splitlines()[-30:] \
                if console.exists() else []
            log("the VM ended without a result; last console lines:\n" + "\n".join(tail))
            return 125
        return int(rc_file.read_text().strip() or 125)


def guest_script(rig: VirtualRig, command: list[str], firmware: str | None,
                 volume_size: str, mirror_check: str | None = None) -> str:
    """The bash script the guest runs: modules, network, firmware, then ``command``."""
    python = _python()
    run = rig.run_dir
    lines = [
        "#!/bin/bash",
        f"export PATH={shlex.quote(str(Path(python).parent))}:"
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"export HOME=/root LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1 "
        f"TANDEM_RIG_RUN={run} TANDEM_RIG_VIRTUAL=1",
        "mount -t configfs configfs /sys/kernel/config 2>/dev/null || true",
        f"for m in {' '.join(GUEST_MODULES)}; do modprobe $m || echo \"rig: modprobe $m failed\"; "
        "done",
        "mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config",
        "ip link set lo up",
        f"mkdir -p {GUEST_SCRATCH} /run/lock",
        f"cd {shlex.quote(str(REPO))}",
        # Test knobs (TANDEM_HIL_*) pass through from the host's environment.
        *(f"export {key}={shlex.quote(value)}" for key, value in sorted(os.environ.items())
          if key.startswith("TANDEM_HIL_")),
        "echo \"rig: guest up after $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)\"",
    ]
    if firmware is not None:
        cmdline = firmware.format(python=shlex.quote(python), run=run, size=volume_size,
                                  repo=REPO, scratch=GUEST_SCRATCH)
        ctl = f"{shlex.quote(python)} -m tools.rig guest-ctl"
        if mirror_check:
            check = mirror_check.format(python=shlex.quote(python), run=run, repo=REPO,
                                        scratch=GUEST_SCRATCH)
            lines.append(f"export TANDEM_MIRROR_CHECK={shlex.quote(check)}")
        lines += [
            f"export TANDEM_RIG_FIRMWARE={shlex.quote(cmdline)}",
            f"export TANDEM_FIRMWARE_CTL={shlex.quote(ctl)}",
            f"devices=$({ctl} start --print-env) || "
            "{ echo 'rig: the firmware did not come up'; "
            f"tail -n 40 {run}/firmware.log; exit 124; }}",
            "eval \"$devices\"",
        ]
    lines += [
        shlex.join(command),
        "rc=$?",
    ]
    if firmware is not None:
        lines += [f"{shlex.quote(python)} -m tools.rig guest-ctl stop || true"]
    lines += ["exit $rc", ""]
    return "\n".join(lines)


def _python() -> str:
    """The interpreter for the guest: this venv's, which the guest sees at the same path."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else Path(sys.executable))


# -- inside the guest: start, stop and find the firmware's devices -----------------------


def find_scsi_disk(vendor: str = "TANDEM", sysfs: Path = Path("/sys/block")) -> str | None:
    """The /dev/sdX whose SCSI vendor is ``vendor`` (no udev in the guest)."""
    for block in sorted(sysfs.glob("sd*")):
        try:
            if (block / "device" / "vendor").read_text().strip() == vendor:
                return f"/dev/{block.name}"
        except OSError:
            continue
    return None


def find_iscsi_url(configfs: Path = Path("/sys/kernel/config/target/iscsi")) -> str | None:
    """iscsi://HOST:PORT/IQN/0 for the first enabled iSCSI target portal group."""
    for target in sorted(configfs.glob("iqn.*")):
        for tpg in sorted(target.glob("tpgt_*")):
            try:
                enabled = (tpg / "enable").read_text().strip() == "1"
            except OSError:
                continue
            portals = sorted(p.name for p in (tpg / "np").glob("*"))
            luns = sorted(int(p.name.removeprefix("lun_")) for p in (tpg / "lun").glob("lun_*"))
            if enabled and portals and luns:
                host, port = portals[0].rsplit(":", 1)
                host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
                return f"iscsi://{host}:{port}/{target.name}/{luns[0]}"
    return None


def _probe_disk(device: str, timeout: float) -> bool:
    """True once a direct read of block 0 is answered (the handler is serving)."""
    probe = subprocess.run(["dd", f"if={device}", "of=/dev/null", "bs=512", "count=1",
                            "iflag=direct", "status=none"], capture_output=True,
                           timeout=timeout, check=False)
    return probe.returncode == 0


class GuestFirmware:
    """The firmware process in the guest, started from $TANDEM_RIG_FIRMWARE."""

    def __init__(self, run_dir: Path, cmdline: str) -> None:
        self.run_dir = run_dir
        self.cmdline = cmdline
        self.pidfile = run_dir / "firmware.pid"
        self.logfile = run_dir / "firmware.log"

    def pid(self) -> int | None:
        """The firmware's pid while it runs (a zombie counts as ended: in the guest
        nobody may reap it, because the process that started it has exited)."""
        try:
            pid = int(self.pidfile.read_text())
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return None if state in ("Z", "X") else pid

    def start(self, timeout: float = READY_TIMEOUT) -> dict[str, str]:
        if self.pid() is not None:
            raise RigError("the firmware is already running")
        notify_path = Path("/run/tandem-rig-notify.sock")     # 9p cannot hold sockets
        notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        started = time.monotonic()
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1")
        with open(self.logfile, "ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')}: {self.cmdline}\n".encode())
            out.flush()
            proc = subprocess.Popen(shlex.split(self.cmdline), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, cwd=REPO)
        self.pidfile.write_text(str(proc.pid))
        notify.settimeout(0.5)
        ready = False
        try:
            while time.monotonic() - started < timeout:
                if proc.poll() is not None:
                    raise RigError(f"the firmware exited with status {proc.returncode}")
                try:
                    message = notify.recv(4096).decode(errors="replace")
                except TimeoutError:
                    message = ""
                if "READY=1" in message.split("\n"):
                    ready = True
                    break
                if time.monotonic() - started > NOTIFY_GRACE and find_scsi_disk():
                    # A firmware that does not speak sd_notify: ready once its disk answers.
                    ready = True
                    break
        finally:
            notify.close()
            notify_path.unlink(missing_ok=True)
        if not ready:
            raise RigError(f"the firmware did not report ready within {timeout:.0f} s")
        env_out = {}
        disk = find_scsi_disk()
        if disk:
            if not _probe_disk(disk, timeout):
                raise RigError(f"{disk} does not answer")
            env_out["TANDEM_SCSI_DISK"] = disk
        url = find_iscsi_url()
        if url:
            env_out["TANDEM_ISCSI_URL"] = url
        log(f"firmware ready in {time.monotonic() - started:.1f} s (pid {proc.pid}): "
            + " ".join(f"{k}={v}" for k, v in env_out.items()))
        return env_out

    def signal(self, signum: int, wait: float = 60.0) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.pid() is None:
                self.pidfile.unlink(missing_ok=True)
                return True
            time.sleep(0.1)
        raise RigError(f"the firmware (pid {pid}) did not end within {wait:.0f} s")


def guest_ctl(args: argparse.Namespace) -> int:
    """`tools.rig guest-ctl start|stop|kill` inside the guest (used by hil-tests too)."""
    import signal as signals
    run_dir = Path(os.environ["TANDEM_RIG_RUN"])
    firmware = GuestFirmware(run_dir, os.environ["TANDEM_RIG_FIRMWARE"])
    try:
        if args.action == "start":
            env = firmware.start()
            if args.print_env:
                for key, value in env.items():
                    print(f"export {key}={shlex.quote(value)}")
        elif args.action == "stop":
            firmware.signal(signals.SIGTERM)
        elif args.action == "kill":
            firmware.signal(signals.SIGKILL)
    except RigError as exc:
        log(str(exc))
        return 1
    return 0


# -- real boards ------------------------------------------------------------------------


@dataclass(frozen=True)
class RigDescription:
    """Where a real board is: how to reach it and what the tests find on it.

    board.toml:
        [board]
        ssh = "root@10.0.0.2"            # hil-tests run on the board, over ssh
        checkout = "/opt/tandem"         # this project's tree on the board
        python = "/opt/tandem/.venv/bin/python"
        console = "/dev/ttyUSB0"         # the board's serial console, for people
        [env]                            # handed to the tests as they are
        TANDEM_SCSI_DISK = "/dev/sda"
        TANDEM_ISCSI_URL = "iscsi://10.0.0.2:3260/iqn.2024-01.org.tandem:vol0/0"
        TANDEM_FIRMWARE_CTL = "/opt/tandem/tools/firmware-ctl"   # start|stop|kill
    """

    ssh: str
    checkout: str
    python: str
    console: str | None
    env: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> RigDescription:
        data = tomllib.loads(path.read_text())
        board = data.get("board", {})
        try:
            return cls(board["ssh"], board.get("checkout", "/opt/tandem"),
                       board.get("python", "python3"), board.get("console"),
                       {k: str(v) for k, v in data.get("env", {}).items()})
        except KeyError as exc:
            raise RigError(f"{path}: [board] needs {exc}") from None


def run_on_board(rig: RigDescription, command: list[str]) -> int:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in rig.env.items())
    remote = f"cd {shlex.quote(rig.checkout)} && env {env} {shlex.join(command)}"
    return subprocess.run(["ssh", rig.ssh, remote], check=False).returncode


# -- the command line -------------------------------------------------------------------


def _pytest_command(python: str, extra: list[str]) -> list[str]:
    # The checkout is read-only in the guest: no cache, no hypothesis example database.
    return [python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
            "hil-tests", *extra]


def run_virtual(args: argparse.Namespace, command: list[str]) -> int:
    tree = setup() if not args.no_setup else ensure_kernel()
    rig = VirtualRig(tree, memory=args.memory, cpus=args.cpus, accel=args.accel,
                     timeout=args.timeout)
    firmware = None if args.no_firmware else (args.firmware or DEFAULT_FIRMWARE)
    if firmware == "service":
        firmware = SERVICE_FIRMWARE
    mirror_check = args.mirror_check
    if mirror_check is None and args.firmware is None:
        mirror_check = DEFAULT_MIRROR_CHECK
    rc = rig.boot(guest_script(rig, command, firmware, args.volume_size, mirror_check or None))
    if rc == 0 and not args.keep:
        shutil.rmtree(rig.run_dir, ignore_errors=True)
    else:
        log(f"kept {rig.run_dir} (console.log, firmware.log)")
    return rc


def cmd_setup(args: argparse.Namespace) -> int:
    setup()
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    extra = [a for a in args.pytest_args if a != "--"]
    if args.rig:
        rig = RigDescription.load(Path(args.rig))
        return run_on_board(rig, _pytest_command(rig.python, extra))
    return run_virtual(args, _pytest_command(_python(), extra))


def cmd_exec(args: argparse.Namespace) -> int:
    command = [a for a in args.command]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise SystemExit("tandem rig exec: give a command after --")
    if args.rig:
        return run_on_board(RigDescription.load(Path(args.rig)), command)
    return run_virtual(args, command)


def _add_rig_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--virtual", action="store_true",
                       help="boot the virtual board (Debian's kernel under QEMU)")
    where.add_argument("--rig", metavar="FILE", help="a real board's rig description (TOML)")
    parser.add_argument("--firmware", default=os.environ.get("TANDEM_RIG_FIRMWARE_CMD"),
                        help="firmware command in the guest; placeholders {python} {run} "
                             "{scratch} {size} {repo} (default: `tandem run` on the sim "
                             "board with --tcmu --tcm-loop --iscsi-portal 127.0.0.1:3260; "
                             "'service': the bare TCMU frontend over an image file)")
    parser.add_argument("--mirror-check", metavar="CMD",
                        help="command that exits 0 once the mirror holds the volume's bytes "
                             "(waits for the drain itself); same placeholders (default with "
                             "the default firmware: compare the sim board's two images; "
                             "'' for none)")
    parser.add_argument("--no-firmware", action="store_true",
                        help="do not start the firmware (bare kernel + modules)")
    parser.add_argument("--volume-size", default=DEFAULT_VOLUME_SIZE)
    parser.add_argument("--memory", default="2G", help="guest memory (default 2G)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds before the VM is stopped (default 1200)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--no-setup", action="store_true",
                        help="skip the set-up check (kernel and initramfs must exist)")


def _add_actions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("setup", help="fetch the kernel, build the initramfs (idempotent)")
    p.set_defaults(func=cmd_setup)
    p = sub.add_parser("test", help="run hil-tests/ on the rig")
    _add_rig_options(p)
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="PYTEST ARGS")
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("exec", help="run a command on the rig with the firmware up")
    _add_rig_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(func=cmd_exec)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rig", help="run hil-tests on the virtual or a real rig",
                                   description=__doc__.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_actions(parser.add_subparsers(dest="rig_command", metavar="ACTION", required=True))


def main(argv: list[str] | None = None) -> int:
    """`python -m tools.rig setup|test|exec|guest-ctl` (guest-ctl runs inside the guest)."""
    parser = argparse.ArgumentParser(prog="python -m tools.rig")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_actions(sub)
    ctl = sub.add_parser("guest-ctl", help="(inside the guest) start|stop|kill the firmware")
    ctl.add_argument("action", choices=("start", "stop", "kill"))
    ctl.add_argument("--print-env", action="store_true",
                     help="after start, print the devices as shell exports")
    ctl.set_defaults(func=guest_ctl)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
