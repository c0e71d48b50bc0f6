"""The console served on a pty, TCP and a serial device, driven by real clients."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest
import serial

from firmware.console.grammar import PROMPT
from tools.console_client import ConsoleClient, ConsoleError

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0


def tcp_url(server) -> str:
    host, port = server.tcp_address
    return f"socket://{host}:{port}"


def run_tandem(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware.cli", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=30)


def read_until_prompt(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(PROMPT.encode()):
        chunk = sock.recv(4096)
        assert chunk, "console closed the connection"
        data += chunk
    return data


# --- pty ----------------------------------------------------------------------------------------

def test_pty_console_answers_a_pyserial_client(start_server, backend):
    server = start_server(pty=True, tcp=None)
    assert server.pty_path.startswith("/dev/pts/")
    with ConsoleClient.open(server.pty_path, timeout=TIMEOUT) as client:
        assert json.loads(client.command("status --json")) == backend.status()
        assert client.command("record --count") == "7"


def test_pty_survives_a_client_leaving_mid_line(start_server):
    server = start_server(pty=True, tcp=None)
    port = serial.Serial(server.pty_path, 115200, timeout=TIMEOUT)
    port.write(b"\xff\x1b[garbage mirror pa")  # no line end, then gone
    port.flush()
    port.close()
    with ConsoleClient.open(server.pty_path, timeout=TIMEOUT) as client:
        assert client.command("record --count") == "7"
    with ConsoleClient.open(server.pty_path, timeout=TIMEOUT) as client:  # and again
        assert client.command("mirror status").startswith("mirror_state")


def test_tandem_console_on_the_pty_as_a_subprocess(start_server, backend):
    server = start_server(pty=True, tcp=None)
    result = run_tandem("console", server.pty_path, "record", "--list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "0-3 bytes 0-4194303"


# --- TCP (pyserial socket://) -------------------------------------------------------------------

def test_socket_url_console(start_server, backend):
    server = start_server()
    with ConsoleClient.open(tcp_url(server), timeout=TIMEOUT) as client:
        assert client.command("record --list").splitlines() == [
            "0-3 bytes 0-4194303", "10 bytes 10485760-11534335", "12-13 bytes 12582912-14680063"]
        assert client.command("nope").startswith("error: unknown command 'nope'")


def test_mirror_pause_over_the_console_calls_the_backend(start_server, backend):
    server = start_server()
    with ConsoleClient.open(tcp_url(server), timeout=TIMEOUT) as client:
        assert client.command("mirror pause") == "mirror: paused"
        assert backend.mirror_paused
        assert client.command("mirror resume") == "mirror: resumed"
        assert not backend.mirror_paused
    assert backend.calls.count("mirror_pause") == 1
    assert backend.calls.count("mirror_resume") == 1


def test_garbage_on_one_session_does_not_disturb_another(start_server, backend):
    server = start_server()
    garbage = bytes(range(256)) * 64  # control bytes, line ends, ^C, escapes, bad UTF-8
    no_line_end = bytes(b for b in range(256) if b not in b"\r\n\x03") * 8 + b"x" * 5000
    with socket.create_connection(server.tcp_address, timeout=TIMEOUT) as deaf, \
            socket.create_connection(server.tcp_address, timeout=TIMEOUT) as noisy, \
            ConsoleClient.open(tcp_url(server), timeout=TIMEOUT) as client:
        deaf.sendall(garbage)  # and never reads its answers
        read_until_prompt(noisy)
        noisy.sendall(no_line_end)
        assert client.command("record --count") == "7"
        noisy.sendall(b"\r\n")
        assert read_until_prompt(noisy) == b"error: line too long (more than 1024 bytes), " \
                                           b"discarded\r\n" + PROMPT.encode()
        noisy.sendall(b"\x1b[Astat\xc3")  # and leave mid-line
    with ConsoleClient.open(tcp_url(server), timeout=TIMEOUT) as client:
        assert json.loads(client.command("status --json"))["board"] == "sim"


def test_several_sessions_at_once(start_server):
    server = start_server()
    clients = [ConsoleClient.open(tcp_url(server), timeout=TIMEOUT) for _ in range(4)]
    try:
        for _ in range(3):
            for client in clients:
                assert client.command("record --count") == "7"
    finally:
        for client in clients:
            client.close()


def test_a_failing_backend_answers_errors_and_the_console_stays_up(start_server, backend):
    server = start_server()
    with ConsoleClient.open(tcp_url(server), timeout=TIMEOUT) as client:
        backend.failure = RuntimeError("volume gone")
        assert client.command("status") == "error: status failed: RuntimeError: volume gone"
        backend.failure = None
        assert client.command("record --count") == "7"


def test_tcp_session_greets_with_a_prompt(start_server):
    server = start_server()
    with socket.create_connection(server.tcp_address, timeout=TIMEOUT) as sock:
        assert read_until_prompt(sock).endswith(b"\r\n" + PROMPT.encode())


# --- a serial device (here the slave of a pty the test holds the master of) --------------------

def test_serial_device_console(start_server):
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        start_server(serial_device=os.ttyname(slave), tcp=None)
        os.write(master, b"\x03record --count\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while not data.endswith(b"7\r\n" + PROMPT.encode()):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the serial console did not answer: {data!r}"
            ready, _, _ = select.select([master], [], [], remaining)
            if ready:
                data += os.read(master, 4096)
        # Ctrl-C cancelled the (empty) line; the answer is the record's count after the
        # prompt, on its own line, then a new prompt.
        lines = data.decode().split("\r\n")
        assert f"{PROMPT}^C" in lines
        assert lines[-2:] == [f"{PROMPT}7", PROMPT]
    finally:
        os.close(master)
        os.close(slave)


# --- `tandem console` as a command --------------------------------------------------------------

def test_tandem_console_status_json_prints_parseable_json(start_server, backend):
    server = start_server()
    result = run_tandem("console", tcp_url(server), "status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == backend.status()


def test_tandem_console_exits_1_on_an_error_answer(start_server):
    server = start_server()
    result = run_tandem("console", tcp_url(server), "mirror", "stop")
    assert result.returncode == 1
    assert result.stdout.startswith("error: mirror: unknown action 'stop'")


def test_tandem_console_reads_commands_from_stdin(start_server, backend):
    server = start_server()
    result = run_tandem("console", tcp_url(server), stdin="record --count\n\nmirror pause\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["7", "mirror: paused"]
    assert backend.mirror_paused


def test_tandem_console_exits_2_when_nothing_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        result = run_tandem("console", f"socket://127.0.0.1:{port}", "status")
    assert result.returncode == 2
    assert "cannot open" in result.stderr


def test_client_times_out_on_a_silent_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        host, port = listener.getsockname()
        with ConsoleClient.open(f"socket://{host}:{port}", timeout=0.3) as client, \
                pytest.raises(ConsoleError, match="no prompt"):
            client.command("status")
