"""`tandem console PORT_OR_URL [COMMAND...]`: talk to the appliance's management console.

PORT_OR_URL is anything pyserial opens: a serial device (/dev/ttyUSB0), the
simulated board's pty (/dev/pts/7) or a TCP console (socket://127.0.0.1:10810).
With a COMMAND, prints its answer and exits 0, or 1 if the console answered
"error: ..."; without one, reads commands from stdin, one a line.
Exit status 2: the console could not be reached or did not answer in time.
Options go before PORT_OR_URL: everything after it is the command."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable

import serial

PROMPT = b"tandem> "
INTERRUPT = b"\x03"
# The console answers ^C with exactly this, whatever state its session was in.
INTERRUPT_ANSWER = b"^C\r\n" + PROMPT
DEFAULT_BAUDRATE = 115200
DEFAULT_TIMEOUT = 5.0
_POLL_SECONDS = 0.1


class ConsoleError(Exception):
    """The console could not be reached or did not answer in time."""


class ConsoleClient:
    """A console on an open pyserial port: send a command line, get its answer."""

    def __init__(self, port: serial.SerialBase, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._port = port
        self._timeout = timeout
        self._synced = False

    @classmethod
    def open(cls, url: str, baudrate: int = DEFAULT_BAUDRATE,
             timeout: float = DEFAULT_TIMEOUT) -> ConsoleClient:
        try:
            port = serial.serial_for_url(url, baudrate=baudrate, timeout=_POLL_SECONDS)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise ConsoleError(f"cannot open {url}: {exc}") from exc
        return cls(port, timeout)

    def close(self) -> None:
        self._port.close()

    def __enter__(self) -> ConsoleClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def sync(self) -> None:
        """Discard whatever the console had pending (a greeting, a half line of an
        earlier client) by sending ^C and reading up to its answer."""
        self._write(INTERRUPT)
        self._read_until(lambda buffer: buffer.endswith(INTERRUPT_ANSWER))
        self._synced = True

    def command(self, line: str) -> str:
        """Run one command line; return the answer without the prompt."""
        if not self._synced:
            self.sync()
        line = line.strip()
        self._write(line.encode("utf-8") + b"\r\n")
        raw = self._read_until(_ends_with_prompt)
        text = raw[:-len(PROMPT)].decode("utf-8", errors="replace").replace("\r\n", "\n")
        lines = text.splitlines()
        if lines and lines[0] == line:
            lines = lines[1:]  # the console echoes input: drop our own line
        return "\n".join(lines)

    def _write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise ConsoleError(f"write to {self._port.name} failed: {exc}") from exc

    def _read_until(self, done: Callable[[bytearray], bool]) -> bytes:
        deadline = time.monotonic() + self._timeout
        buffer = bytearray()
        while not done(buffer):
            if time.monotonic() >= deadline:
                raise ConsoleError(f"no prompt from {self._port.name} "
                                   f"within {self._timeout:g} s")
            try:
                buffer += self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise ConsoleError(f"read from {self._port.name} failed: {exc}") from exc
        return bytes(buffer)


def _ends_with_prompt(buffer: bytearray) -> bool:
    # The prompt that ends an answer starts a line (or is the whole answer).
    return buffer.endswith(PROMPT) and (len(buffer) == len(PROMPT)
                                        or buffer[-len(PROMPT) - 1] == ord("\n"))


def is_error(answer: str) -> bool:
    return answer.startswith("error:")


# --- the subcommand -----------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "console",
        help="talk to the management console (serial port, pty or socket:// URL)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUDRATE,
                        help=f"baud rate of a serial port (default {DEFAULT_BAUDRATE})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("port", metavar="PORT_OR_URL",
                        help="/dev/ttyUSB0, /dev/pts/N or socket://HOST:PORT")
    parser.add_argument("words", metavar="COMMAND", nargs=argparse.REMAINDER,
                        help="a console command, e.g. 'status --json'; none: read stdin")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        with ConsoleClient.open(args.port, baudrate=args.baud, timeout=args.timeout) as client:
            if args.words:
                return _run_one(client, _command_line(args.words))
            return _run_interactive(client)
    except ConsoleError as exc:
        print(f"tandem console: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _command_line(words: list[str]) -> str:
    # One word is taken as the whole line (`tandem console URL "record --list"`);
    # several are quoted so that each stays one word on the console.
    return words[0] if len(words) == 1 else shlex.join(words)


def _run_one(client: ConsoleClient, line: str) -> int:
    answer = client.command(line)
    if answer:
        print(answer)
    return 1 if is_error(answer) else 0


def _run_interactive(client: ConsoleClient) -> int:
    interactive = sys.stdin.isatty()
    client.sync()
    while True:
        try:
            line = input(PROMPT.decode()) if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            if interactive:
                print()
            return 0
        if not interactive and not line:
            return 0  # end of input
        if not line.strip():
            continue
        answer = client.command(line)
        if answer:
            print(answer, flush=True)
