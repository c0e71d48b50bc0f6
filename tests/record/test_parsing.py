"""One syntax for sizes and addresses, whichever command or profile a value comes from."""

import argparse

import pytest

from firmware.app import register as register_run
from firmware.parsing import parse_host_port, parse_size
from firmware.receive_app import register as register_receive


@pytest.mark.parametrize(("text", "expected"), [
    ("4096", 4096), ("64K", 64 << 10), ("64KiB", 64 << 10), ("64kb", 64 << 10),
    ("1.5G", 3 << 29), ("256M", 256 << 20), ("2T", 2 << 40), (512, 512),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "x1M", "-1M", "0", "1.5Q", 0])
def test_bad_sizes_are_refused_with_the_value(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:3260", ("127.0.0.1", 3260)), ("[::1]:3261", ("::1", 3261)),
    (":7789", ("0.0.0.0", 7789)), ("site-b:0", ("site-b", 0)), ("10900", ("0.0.0.0", 10900)),
])
def test_addresses(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "host:port", "host:70000", ""])
def test_bad_addresses(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_host_port(text)


def test_run_and_receive_accept_the_same_sizes():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register_run(sub)
    register_receive(sub)
    run = parser.parse_args(["run", "--size", "1.5G", "--nbd", ":10900"])
    assert run.size == 3 << 29
    assert run.nbd == ("127.0.0.1", 10900)
    receive = parser.parse_args(["receive", "--medium", "m.img", "--size", "1.5G"])
    assert receive.size == 3 << 29


def test_two_appliances_on_one_machine_take_ports_and_share_media():
    parser = argparse.ArgumentParser()
    register_run(parser.add_subparsers())
    args = parser.parse_args(["run", "--nbd", "10911", "--console", "10912",
                              "--local", "/srv/d.img", "--second", "/srv/m.img"])
    assert args.nbd == ("127.0.0.1", 10911)
    assert (args.console_tcp, args.local_path, args.second_path) == (
        "10912", "/srv/d.img", "/srv/m.img")
