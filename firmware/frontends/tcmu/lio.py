"""LIO configuration through configfs with rtslib-fb: the user-backed storage object for
the volume and the fabrics in front of it (tcm_loop for a local disk, iSCSI for hosts).

Names are derived from the storage object's name, so a firmware restarted after a
crash finds what the previous run left behind: a storage object with the same name,
size and config is adopted (hosts keep their disks and sessions), anything that
does not match is removed and created again.

Every call here is synchronous and may wait for the kernel to scan a LUN, which
means SCSI commands to *our* handler: call them from a worker thread
(``asyncio.to_thread``) while the handler keeps serving the ring.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONFIGFS_TARGET = Path("/sys/kernel/config/target")
HANDLER_SUBTYPE = "tandem"
DEFAULT_IQN_PREFIX = "iqn.2025-01.io.tandem"
ISCSI_TPG_TAG = 1
LUN_INDEX = 0


class LioError(Exception):
    """configfs refused a change, or LIO is not available on this kernel."""


@dataclass(frozen=True)
class Chap:
    """CHAP credentials an initiator must present (and, if mutual, the target's)."""

    userid: str
    password: str
    mutual_userid: str | None = None
    mutual_password: str | None = None


@dataclass(frozen=True)
class LioSettings:
    name: str                           # storage object: core/user_N/<name>
    volume: str                         # what our handler serves; dev_config "tandem/<volume>"
    size: int
    serial: str
    block_size: int = 512
    hw_max_sectors: int = 65536         # largest command in blocks; keep = DiskIdentity's limit
    max_data_area_mb: int = 64          # ring data area: holds the largest command (32 MiB)
                                        # twice; the kernel queues commands when it is full
    cmd_ring_size_mb: int | None = None  # command ring size (kernel default 8 MiB)
    tcm_loop: bool = False
    iscsi_portal: tuple[str, int] | None = None
    iscsi_iqn: str | None = None
    iscsi_initiators: tuple[str, ...] = ()     # empty: demo mode, any initiator may log in
    chap: Chap | None = None
    # A pair's export (active-active): commands a dead handler left in the ring fail
    # after this many seconds (LIO's cmd_time_out), so a host's multipath moves them to
    # the other path; None: the kernel's default.
    cmd_time_out_s: int | None = None
    # Persistent reservations refused (LIO's emulate_pr=0: PR IN/OUT and RESERVE/RELEASE
    # end in ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE): an active-active pair
    # does not replicate reservation state between its nodes, so it offers none.
    refuse_reservations: bool = False

    @property
    def config(self) -> str:
        return f"{HANDLER_SUBTYPE}/{self.volume}"

    @property
    def target_iqn(self) -> str:
        return self.iscsi_iqn or f"{DEFAULT_IQN_PREFIX}:{self.name}"

    def loopback_wwn(self, role: str) -> str:
        """Stable NAA names for the tcm_loop target and its initiator nexus."""
        digest = hashlib.sha256(f"{self.name}/{role}".encode()).hexdigest()[:9]
        return f"naa.5001405{digest}"


class LioExport:
    """The configfs objects of one exported volume."""

    def __init__(self, settings: LioSettings) -> None:
        try:
            import rtslib_fb
            from rtslib_fb import utils
        except ImportError as exc:     # pragma: no cover - Debian's python3-rtslib-fb
            raise LioError("rtslib-fb is not installed (Debian: python3-rtslib-fb)") from exc
        self._rts = rtslib_fb
        self.settings = settings
        # RTSRoot points the kernel's db_root at rtslib-fb's own directory and fails
        # when that directory is missing, as on a fresh system where targetcli never ran.
        preferred = getattr(rtslib_fb.RTSRoot, "_preferred_dbroot", None)
        if preferred:
            try:
                Path(preferred).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("cannot create LIO's db_root %s: %s", preferred, exc)
        try:
            self._root = rtslib_fb.RTSRoot()
            utils.modprobe("target_core_user")
        except rtslib_fb.RTSLibError as exc:
            raise LioError(f"LIO is not available: {exc}") from exc
        self.storage_object: rtslib_fb.UserBackedStorageObject | None = None
        self.adopted = False
        self._ensure_dbroot()

    def _ensure_dbroot(self) -> None:
        """The kernel keeps persistent-reservation and ALUA state under its db_root
        (/etc/target unless set); without the directories PR OUT fails with
        LOGICAL UNIT COMMUNICATION FAILURE, because the APTPL file cannot be written."""
        try:
            dbroot = Path((CONFIGFS_TARGET / "dbroot").read_text().strip())
            for sub in ("pr", "alua"):
                (dbroot / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("LIO db_root not usable (persistent reservations will fail): %s", exc)

    # -- the storage object ------------------------------------------------------------

    def ensure_storage_object(self) -> bool:
        """Create the user-backed storage object, or adopt a matching one. True if adopted."""
        rts, s = self._rts, self.settings
        existing = None
        for so in self._root.storage_objects:
            if so.plugin == "user" and so.name == s.name:
                existing = so
        if existing is not None:
            if existing.config == s.config and existing.size == s.size:
                log.info("adopting LIO storage object user/%s left by an earlier run", s.name)
                self.storage_object, self.adopted = existing, True
                return True
            log.warning("replacing stale LIO storage object user/%s (config %s, %d bytes)",
                        s.name, existing.config, existing.size)
            existing.delete()
        control = f"max_data_area_mb={s.max_data_area_mb},hw_block_size={s.block_size}"
        if s.cmd_ring_size_mb:
            control += f",cmd_ring_size_mb={s.cmd_ring_size_mb}"
        try:
            self.storage_object = rts.UserBackedStorageObject(
                s.name, config=s.config, size=s.size, wwn=s.serial,
                hw_max_sectors=s.hw_max_sectors, control=control)
        except rts.RTSLibError as exc:
            raise LioError(f"cannot create user/{s.name}: {exc}") from exc
        # Both only while the storage object has no LUN (the kernel refuses them later).
        attributes = {}
        if s.cmd_time_out_s is not None:
            attributes["cmd_time_out"] = str(s.cmd_time_out_s)
        if s.refuse_reservations:
            attributes["emulate_pr"] = "0"
        for name, value in attributes.items():
            try:
                self.storage_object.set_attribute(name, value)
            except rts.RTSLibError as exc:
                raise LioError(f"user/{s.name}: {name}={value}: {exc}") from exc
        self.adopted = False
        return False

    @property
    def storage_path(self) -> Path:
        if self.storage_object is None:
            raise LioError("no storage object")
        return Path(self.storage_object.path)

    @property
    def hba_index(self) -> int:
        return int(self.storage_path.parent.name.rsplit("_", 1)[1])

    def _action(self, name: str, value: str) -> None:
        try:
            (self.storage_path / "action" / name).write_text(value)
        except OSError as exc:
            raise LioError(f"{name}={value} on {self.storage_path}: {exc}") from exc

    def restart_ring(self) -> None:
        """Start from an empty ring: the kernel fails what an earlier handler left in
        flight with BUSY, and initiators send those commands again."""
        self._action("block_dev", "1")
        try:
            self._action("reset_ring", "1")
        finally:
            self._action("block_dev", "0")

    # -- fabrics -----------------------------------------------------------------------

    def _ensure_lun(self, tpg: object) -> object:
        rts = self._rts
        for lun in tpg.luns:                                    # type: ignore[attr-defined]
            if lun.lun != LUN_INDEX:
                continue
            try:
                if lun.storage_object == self.storage_object:
                    return lun
            except rts.RTSLibError:
                pass                                            # a dangling link
            lun.delete()
        return rts.LUN(tpg, LUN_INDEX, storage_object=self.storage_object)

    def ensure_loopback(self) -> str:
        """Map the volume into tcm_loop (the kernel scans it at once); return the target WWN."""
        rts, s = self._rts, self.settings
        try:
            fabric = rts.FabricModule("loopback")
            target = rts.Target(fabric, s.loopback_wwn("target"), mode="any")
            tpg = rts.TPG(target, 1, mode="any")
            self._ensure_lun(tpg)
        except rts.RTSLibError as exc:
            raise LioError(f"tcm_loop: {exc}") from exc
        return target.wwn

    def ensure_iscsi(self) -> str:
        """The iSCSI target, portal group, portal, LUN and access rules; return the URL."""
        rts, s = self._rts, self.settings
        if s.iscsi_portal is None:
            raise LioError("no iSCSI portal configured")
        host, port = s.iscsi_portal
        try:
            fabric = rts.FabricModule("iscsi")
            target = rts.Target(fabric, s.target_iqn, mode="any")
            tpg = rts.TPG(target, ISCSI_TPG_TAG, mode="any")
            lun = self._ensure_lun(tpg)
            demo = not s.iscsi_initiators
            tpg.set_attribute("generate_node_acls", "1" if demo else "0")
            tpg.set_attribute("cache_dynamic_acls", "1" if demo else "0")
            tpg.set_attribute("demo_mode_write_protect", "0")
            tpg.set_attribute("authentication", "1" if s.chap else "0")
            if s.chap and demo:
                self._set_chap(tpg, s.chap)
            for acl in list(tpg.node_acls):
                if acl.node_wwn not in s.iscsi_initiators:
                    acl.delete()
            for initiator in s.iscsi_initiators:
                acl = rts.NodeACL(tpg, initiator, mode="any")
                if not any(m.mapped_lun == LUN_INDEX for m in acl.mapped_luns):
                    rts.MappedLUN(acl, LUN_INDEX, lun)
                if s.chap:
                    self._set_chap(acl, s.chap)
            if not any(p.ip_address == host and p.port == port for p in tpg.network_portals):
                rts.NetworkPortal(tpg, host, port, mode="any")
            tpg.enable = True
        except rts.RTSLibError as exc:
            raise LioError(f"iSCSI: {exc}") from exc
        url_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if ":" in url_host:
            url_host = f"[{url_host}]"
        return f"iscsi://{url_host}:{port}/{s.target_iqn}/{LUN_INDEX}"

    @staticmethod
    def _set_chap(node: object, chap: Chap) -> None:
        node.chap_userid = chap.userid                          # type: ignore[attr-defined]
        node.chap_password = chap.password                      # type: ignore[attr-defined]
        if chap.mutual_userid and chap.mutual_password:
            node.chap_mutual_userid = chap.mutual_userid        # type: ignore[attr-defined]
            node.chap_mutual_password = chap.mutual_password    # type: ignore[attr-defined]

    # -- teardown ----------------------------------------------------------------------

    def remove_fabrics(self) -> None:
        """Remove our iSCSI and tcm_loop targets (hosts see the LUN go away)."""
        rts, s = self._rts, self.settings
        for fabric_name, wwn in (("iscsi", s.target_iqn),
                                 ("loopback", s.loopback_wwn("target"))):
            try:
                fabric = rts.FabricModule(fabric_name)
                for target in fabric.targets:
                    if target.wwn == wwn:
                        target.delete()
            except rts.RTSLibError as exc:
                log.warning("removing the %s target: %s", fabric_name, exc)

    def remove_storage_object(self) -> None:
        if self.storage_object is None:
            return
        try:
            self.storage_object.delete()
        except self._rts.RTSLibError as exc:
            log.warning("removing user/%s: %s", self.settings.name, exc)
        self.storage_object = None
