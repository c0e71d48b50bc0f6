"""The console's protocol core: bytes in, bytes out, no I/O.

Grammar of a session
====================

Input is a byte stream, cut into lines:

* CR, LF or CRLF ends a line (a CR followed by LF ends one line, not two; an
  empty line just gets a new prompt).
* Backspace (0x08) and DEL (0x7F) erase the last character, ^U erases the line,
  ^C (0x03) discards the line and answers ``^C`` and a new prompt, TAB is a space.
* Other control bytes and terminal escape sequences (arrow keys: ``ESC [ A``)
  are ignored; bytes that are not UTF-8 become U+FFFD, so they can only ever
  make an unknown command or a bad argument.
* A line longer than 1024 bytes is discarded whole; at its end the console
  answers ``error: line too long (more than 1024 bytes), discarded``.

A line is split into words like a POSIX shell does (``shlex``: quotes group
words); the first word names the command:

``help [COMMAND]``
    List the commands, or show one command's usage and description.
``status [--json]``
    Counters and state as ``key  value`` lines; with ``--json``, exactly one
    line holding one JSON object.
``record [--list|--count]``
    Default: how many regions are in the write record, in how many ranges,
    how many bytes. ``--count``: the number alone. ``--list``: one line per
    range of consecutive regions, ``FIRST-LAST bytes START-END`` (``FIRST``
    alone for a single region; byte offsets inclusive).
``mirror pause|resume|status``
    Pause or resume copying to the second medium, or show the mirror's state.

More commands are added by registering a :class:`Command` in the
:class:`CommandTable` (see :mod:`firmware.console.commands`).

Output conventions scripts can rely on
======================================

* Output lines end with CRLF. Every answer, including the empty answer to an
  empty line, ends with the prompt ``tandem> `` at the start of a line (no
  newline after it); the console also prints a prompt when a session starts.
* An answer whose first line starts with ``error:`` is a failure; a usage error
  has a second line ``usage: ...``.
* ^C is answered by exactly ``^C`` CRLF and the prompt, whatever the session's
  state: a client syncs with a console by sending ^C and reading up to that.
* By default input is not echoed (clients are programs); a session created with
  ``echo=True`` echoes input for people at a terminal.
"""

from __future__ import annotations

import shlex
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

PROMPT = "tandem> "
MAX_LINE_BYTES = 1024
NEWLINE = "\r\n"
INTERRUPT_ANSWER = "^C"

_CR, _LF, _CTRL_C, _BACKSPACE, _TAB, _CTRL_U, _ESC, _DEL = 13, 10, 3, 8, 9, 0x15, 0x1B, 0x7F
_ERASE_ONE = b"\b \b"


# --- line assembler -------------------------------------------------------------------------

@dataclass(frozen=True)
class LineReceived:
    """A complete line (terminator removed), decoded from UTF-8 with replacement."""

    text: str


@dataclass(frozen=True)
class LineInterrupted:
    """^C: the line typed so far was discarded."""


@dataclass(frozen=True)
class LineTooLong:
    """A line longer than the limit ended; it was discarded."""

    limit: int


@dataclass(frozen=True)
class Echo:
    """Bytes to send back so a person at a terminal sees what they type."""

    data: bytes


LineEvent = LineReceived | LineInterrupted | LineTooLong | Echo


class LineAssembler:
    """Cuts a byte stream into lines, applying the editing keys of a dumb terminal.

    Never raises on any input and never holds more than ``max_line_bytes`` bytes.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES, echo: bool = False) -> None:
        self._max = max_line_bytes
        self._echo = echo
        self._line = bytearray()
        self._overlong = False  # the current line passed the limit: drop it at its end
        self._after_cr = False  # a LF right after a CR belongs to the same line end
        self._in_escape = False  # saw ESC
        self._in_sequence = False  # saw ESC [ or ESC O: skip up to the final byte

    def feed(self, data: bytes) -> list[LineEvent]:
        events: list[LineEvent] = []
        echo = bytearray()

        def emit(event: LineEvent) -> None:
            # Echo what was typed before reporting what it meant.
            if echo:
                events.append(Echo(bytes(echo)))
                echo.clear()
            events.append(event)

        for byte in data:
            if self._after_cr:
                self._after_cr = False
                if byte == _LF:
                    continue
            if self._skip_escape(byte):
                continue
            if byte in (_CR, _LF):
                self._after_cr = byte == _CR
                if self._echo:
                    echo += NEWLINE.encode()
                if self._overlong:
                    emit(LineTooLong(self._max))
                else:
                    emit(LineReceived(self._line.decode("utf-8", errors="replace")))
                self._reset_line()
            elif byte == _CTRL_C:
                self._reset_line()
                emit(LineInterrupted())
            elif byte in (_BACKSPACE, _DEL):
                if self._line and not self._overlong:
                    self._erase_last_character()
                    if self._echo:
                        echo += _ERASE_ONE
            elif byte == _CTRL_U:
                if self._echo and not self._overlong:
                    echo += _ERASE_ONE * _count_characters(self._line)
                self._reset_line()
            elif byte == _ESC:
                self._in_escape = True
            elif byte < 0x20 and byte != _TAB:
                continue  # NUL, bell, ^D and friends mean nothing here
            elif not self._overlong:
                if byte == _TAB:
                    byte = 0x20
                self._line.append(byte)
                if len(self._line) > self._max:
                    self._overlong = True
                    self._line.clear()  # hold nothing of a line that will be dropped
                elif self._echo:
                    echo.append(byte)
        if echo:
            events.append(Echo(bytes(echo)))
        return events

    def _skip_escape(self, byte: int) -> bool:
        """Swallow terminal escape sequences; True if ``byte`` was part of one."""
        if self._in_escape:
            self._in_escape = False
            if byte in b"[O":
                self._in_sequence = True
                return True
            # ESC then a control byte (ESC, Enter): the control byte still counts.
            return byte >= 0x20
        if self._in_sequence:
            if byte < 0x20 or byte >= 0x7F:
                self._in_sequence = False  # not a sequence after all: handle the byte
                return False
            if 0x40 <= byte <= 0x7E:
                self._in_sequence = False  # the final byte
            return True
        return False

    def _erase_last_character(self) -> None:
        # Erase a whole UTF-8 character: its continuation bytes, then its first byte.
        if 0x80 <= self._line[-1] <= 0xBF:
            while self._line and 0x80 <= self._line[-1] <= 0xBF:
                self._line.pop()
            if self._line and self._line[-1] >= 0xC0:
                self._line.pop()
        else:
            self._line.pop()

    def _reset_line(self) -> None:
        self._line.clear()
        self._overlong = False
        self._in_escape = False
        self._in_sequence = False


def _count_characters(line: bytes | bytearray) -> int:
    return sum(1 for byte in line if not 0x80 <= byte <= 0xBF)


# --- commands and the dispatcher --------------------------------------------------------------

class UsageError(Exception):
    """The arguments do not fit the command; the console adds the usage line."""


class CommandError(Exception):
    """The command understood its arguments but could not do what they ask."""


Handler = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class Command:
    """One console command.

    ``handler`` gets the words after the command name and returns the answer's
    lines; it raises :class:`UsageError` for bad arguments and :class:`CommandError`
    for failures. A handler holds (by closure or ``functools.partial``) whatever
    object it needs: the table knows nothing about the appliance.
    """

    name: str
    usage: str  # "record [--list|--count]"
    summary: str  # one line for ``help``
    handler: Handler
    description: str = ""  # more lines for ``help NAME``


class CommandTable:
    """The console's commands by name, and the dispatcher that runs a line.

    ``help`` is built in, since it describes the table itself.
    """

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self.register(Command(
            name="help",
            usage="help [COMMAND]",
            summary="list the commands, or describe one",
            handler=self._help,
        ))

    def register(self, command: Command) -> None:
        if not command.name or any(c.isspace() for c in command.name):
            raise ValueError(f"bad command name {command.name!r}")
        if command.name in self._commands:
            raise ValueError(f"command {command.name!r} is already registered")
        self._commands[command.name] = command

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def run(self, line: str) -> list[str]:
        """The answer to one input line, as output lines. Never raises."""
        try:
            words = shlex.split(line)
        except ValueError as exc:  # an unbalanced quote
            return [f"error: {exc}".lower()]
        if not words:
            return []
        name, args = words[0], words[1:]
        command = self._commands.get(name)
        if command is None:
            return [f"error: unknown command {_quote(name)} (try 'help')"]
        try:
            answer = command.handler(args)
        except UsageError as exc:
            return [f"error: {name}: {exc}", f"usage: {command.usage}"]
        except CommandError as exc:
            return [f"error: {name}: {exc}"]
        except Exception as exc:  # a failing backend must not end the session
            return [f"error: {name} failed: {type(exc).__name__}: {exc}"]
        return answer

    def _help(self, args: list[str]) -> list[str]:
        if len(args) > 1:
            raise UsageError("expected at most one command name")
        if args:
            command = self._commands.get(args[0])
            if command is None:
                raise CommandError(f"unknown command {_quote(args[0])}")
            lines = [f"usage: {command.usage}", command.summary]
            lines += command.description.splitlines()
            return lines
        width = max(len(c.usage) for c in self._commands.values())
        lines = ["commands:"]
        lines += [f"  {c.usage:<{width}}  {c.summary}" for c in self._commands.values()]
        return lines


def _quote(word: str) -> str:
    return "'" + word.replace("'", "\\'") + "'"


# --- a session: line assembler + dispatcher -----------------------------------------------------

class ConsoleSession:
    """One console session (a TCP connection, the pty, a serial line) as a byte transducer."""

    def __init__(self, commands: CommandTable, *, echo: bool = False,
                 max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._commands = commands
        self._lines = LineAssembler(max_line_bytes=max_line_bytes, echo=echo)

    def greeting(self) -> bytes:
        """What to send when the session starts."""
        return _encode(["Tandem management console; type 'help' for commands."])

    def receive(self, data: bytes) -> bytes:
        """Feed received bytes; return the bytes to send back. Never raises."""
        out = bytearray()
        for event in self._lines.feed(data):
            if isinstance(event, Echo):
                out += event.data
            elif isinstance(event, LineReceived):
                out += _encode(self._commands.run(event.text))
            elif isinstance(event, LineInterrupted):
                out += _encode([INTERRUPT_ANSWER])
            elif isinstance(event, LineTooLong):
                out += _encode([
                    f"error: line too long (more than {event.limit} bytes), discarded"])
        return bytes(out)


def _encode(lines: list[str]) -> bytes:
    """Answer lines and the prompt, as sent on the wire."""
    text = "".join(_printable(line) + NEWLINE for line in lines) + PROMPT
    return text.encode("utf-8", errors="replace")


def _printable(line: str) -> str:
    # A line of output is one line on the wire: no control characters inside it
    # (say from a command name echoed back in an error), split at embedded newlines.
    parts = str(line).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return NEWLINE.join(
        "".join("\ufffd" if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in part)
        for part in parts)
