"""The watchdog driver against a stand-in device file: pets write, a clean stop
disarms with the magic 'V', a power cut leaves it armed."""

from __future__ import annotations

from pathlib import Path

from hal.watchdog import Watchdog


def test_pets_then_magic_close(tmp_path: Path) -> None:
    device = tmp_path / "watchdog"
    device.touch()
    dog = Watchdog(str(device), timeout_s=2)  # a plain file refuses the ioctl: logged
    dog.pet()
    dog.pet()
    dog.disarm()
    dog.pet()  # after the close: nothing
    assert device.read_bytes() == b"\0\0V" and dog.pets == 2


def test_abandon_does_not_disarm(tmp_path: Path) -> None:
    device = tmp_path / "watchdog"
    device.touch()
    dog = Watchdog(str(device))
    dog.pet()
    dog.abandon()
    assert device.read_bytes() == b"\0"
