"""The console core on bytes: line assembly, commands, answers. No I/O."""

from __future__ import annotations

import json

import pytest

from firmware.console.commands import console_commands
from firmware.console.grammar import (
    PROMPT,
    Command,
    CommandError,
    CommandTable,
    ConsoleSession,
    Echo,
    LineAssembler,
    LineInterrupted,
    LineReceived,
    LineTooLong,
    UsageError,
)

PROMPT_BYTES = PROMPT.encode()


def lines_of(events: list) -> list:
    """Events without echo, lines as their text."""
    return [e.text if isinstance(e, LineReceived) else e for e in events
            if not isinstance(e, Echo)]


def feed_all(*chunks: bytes, **options) -> list:
    assembler = LineAssembler(**options)
    events: list = []
    for chunk in chunks:
        events += assembler.feed(chunk)
    return lines_of(events)


def answer(session: ConsoleSession, data: bytes) -> list[str]:
    """The answer's lines to ``data``, checking it ends with exactly one prompt."""
    out = session.receive(data)
    assert out.endswith(PROMPT_BYTES)
    body = out[:-len(PROMPT_BYTES)].decode()
    assert PROMPT not in body
    assert body == "" or body.endswith("\r\n")
    return body.split("\r\n")[:-1]


@pytest.fixture
def session(backend) -> ConsoleSession:
    return ConsoleSession(console_commands(backend))


# --- line assembly ------------------------------------------------------------------------------

@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n"])
def test_cr_lf_and_crlf_each_end_one_line(terminator):
    assert feed_all(b"status" + terminator + b"help" + terminator) == ["status", "help"]


def test_crlf_split_across_reads_is_one_line_end():
    assert feed_all(b"status\r", b"\nhelp\r", b"\n") == ["status", "help"]


def test_repeated_terminators_make_empty_lines():
    assert feed_all(b"\r\r\n\n") == ["", "", ""]
    assert feed_all(b"a\n\rb\n") == ["a", "", "b"]


def test_partial_line_waits_for_its_end():
    assembler = LineAssembler()
    assert lines_of(assembler.feed(b"sta")) == []
    assert lines_of(assembler.feed(b"tus")) == []
    assert lines_of(assembler.feed(b"\n")) == ["status"]


@pytest.mark.parametrize("erase", [b"\x08", b"\x7f"])
def test_backspace_and_del_erase_one_character(erase):
    assert feed_all(b"stax" + erase + b"tus\n") == ["status"]
    assert feed_all(erase * 3 + b"help\n") == ["help"]  # nothing to erase: no harm
    assert feed_all("é".encode() + erase + b"ok\n") == ["ok"]  # a whole UTF-8 character


def test_ctrl_u_erases_the_line():
    assert feed_all(b"garbage\x15help\n") == ["help"]


def test_ctrl_c_discards_the_line():
    assert feed_all(b"mirror pa\x03status\n") == [LineInterrupted(), "status"]


def test_escape_sequences_are_ignored():
    assert feed_all(b"stat\x1b[A\x1b[1;5Dus\x1bOB\n") == ["status"]
    assert feed_all(b"help\x1b\r") == ["help"]  # ESC then Enter still ends the line


def test_control_bytes_are_ignored_and_tab_is_a_space():
    assert feed_all(b"\x00sta\x07tus\x04\tx\n") == ["status x"]


def test_non_utf8_becomes_replacement_characters():
    assert feed_all(b"\xff\xfeab\xc3\n") == ["\ufffd\ufffdab\ufffd"]


def test_line_of_exactly_the_limit_is_accepted():
    assert feed_all(b"a" * 1024 + b"\n") == ["a" * 1024]


def test_overlong_line_is_discarded_and_the_next_line_works():
    assert feed_all(b"a" * 1025 + b"\nhelp\n") == [LineTooLong(1024), "help"]


def test_overlong_line_across_many_reads():
    chunks = [b"x" * 300] * 10 + [b"\r\n", b"status\r\n"]
    assert feed_all(*chunks) == [LineTooLong(1024), "status"]


def test_ctrl_c_ends_an_overlong_line_too():
    assert feed_all(b"x" * 5000 + b"\x03help\n") == [LineInterrupted(), "help"]


def test_echo_shows_typing_and_erasing():
    assembler = LineAssembler(echo=True)
    events = assembler.feed(b"hex\x08lp\r\n")
    echoed = b"".join(e.data for e in events if isinstance(e, Echo))
    assert echoed == b"hex\b \blp\r\n"
    assert lines_of(events) == ["help"]


def test_no_echo_by_default():
    assert not any(isinstance(e, Echo) for e in LineAssembler().feed(b"help\x08\r\n"))


# --- sessions: answers and prompts --------------------------------------------------------------

def test_greeting_ends_with_the_prompt(session):
    assert session.greeting().endswith(b"\r\n" + PROMPT_BYTES)


def test_empty_line_gets_just_a_prompt(session):
    assert session.receive(b"\r\n") == PROMPT_BYTES
    assert session.receive(b"   \n") == PROMPT_BYTES


def test_ctrl_c_answers_caret_c_and_prompt(session):
    assert session.receive(b"stat\x03") == b"^C\r\n" + PROMPT_BYTES


def test_status_json_is_exactly_one_line_of_json(session, backend):
    lines = answer(session, b"status --json\r\n")
    assert len(lines) == 1
    assert json.loads(lines[0]) == backend.status()


def test_status_text_shows_every_key(session, backend):
    lines = answer(session, b"status\n")
    keys = [line.split()[0] for line in lines]
    assert keys == list(backend.status())
    assert ["mirror_lag_bytes", "3145728", "(3.0", "MiB)"] in [line.split() for line in lines]


def test_status_json_survives_values_json_cannot_carry(backend):
    backend.status = lambda: {"lag": float("nan"), "peer": object(), "nested": {1: (2, 3)}}
    lines = answer(ConsoleSession(console_commands(backend)), b"status --json\n")
    assert len(lines) == 1
    decoded = json.loads(lines[0])
    assert decoded["lag"] is None and decoded["nested"] == {"1": [2, 3]}


def test_record_summary(session):
    lines = answer(session, b"record\n")
    assert lines[0] == "regions: 7 in 3 ranges"
    assert lines[1].startswith("bytes: 7340032 (7.0 MiB")


def test_record_count(session):
    assert answer(session, b"record --count\n") == ["7"]


def test_record_list_coalesces_consecutive_regions(session):
    assert answer(session, b"record --list\n") == [
        "0-3 bytes 0-4194303",
        "10 bytes 10485760-11534335",
        "12-13 bytes 12582912-14680063",
    ]


def test_record_list_unsorted_duplicates_and_short_last_region(backend_factory):
    backend = backend_factory(regions=[9, 8, 8, 2], region_size=1000, volume_size=9500)
    session = ConsoleSession(console_commands(backend))
    assert answer(session, b"record --list\n") == ["2 bytes 2000-2999", "8-9 bytes 8000-9499"]


def test_record_of_an_empty_record(backend_factory):
    session = ConsoleSession(console_commands(backend_factory(regions=[])))
    assert answer(session, b"record --list\n") == []
    assert answer(session, b"record --count\n") == ["0"]
    assert answer(session, b"record\n")[0] == "regions: 0 in 0 ranges"


def test_record_without_region_size_lists_regions_only(backend):
    backend.status = lambda: {}
    session = ConsoleSession(console_commands(backend))
    assert answer(session, b"record --list\n") == ["0-3", "10", "12-13"]


def test_mirror_pause_and_resume_call_the_backend(session, backend):
    assert answer(session, b"mirror pause\n") == ["mirror: paused"]
    assert backend.mirror_paused and "mirror_pause" in backend.calls
    assert ["mirror_state", "paused"] in [line.split() for line in
                                          answer(session, b"mirror status\n")]
    assert answer(session, b"mirror resume\n") == ["mirror: resumed"]
    assert not backend.mirror_paused


def test_mirror_status_shows_mirror_and_resync_keys_only(session):
    keys = [line.split()[0] for line in answer(session, b"mirror status\n")]
    assert keys == ["mirror_state", "mirror_lag_bytes", "mirror_lag_seconds",
                    "resync_remaining_bytes"]


def test_help_lists_every_command(session):
    lines = answer(session, b"help\n")
    assert lines[0] == "commands:"
    for name in ("help", "status", "record", "mirror"):
        assert any(line.split()[0] == name for line in lines[1:])


def test_help_for_one_command_shows_its_usage(session):
    assert answer(session, b"help record\n")[0] == "usage: record [--list|--count]"
    assert answer(session, b"help nope\n") == ["error: help: unknown command 'nope'"]


def test_unknown_command(session):
    assert answer(session, b"xyz --all\n") == ["error: unknown command 'xyz' (try 'help')"]


@pytest.mark.parametrize("line, message, usage", [
    (b"status --yaml", "error: status: unexpected option '--yaml'", "usage: status [--json]"),
    (b"record --list --count", "error: record: --list and --count exclude each other",
     "usage: record [--list|--count]"),
    (b"record 5", "error: record: unexpected argument '5'", "usage: record [--list|--count]"),
    (b"mirror", "error: mirror: expected one of pause, resume, status",
     "usage: mirror pause|resume|status"),
    (b"mirror stop", "error: mirror: unknown action 'stop'", "usage: mirror pause|resume|status"),
    (b"help a b", "error: help: expected at most one command name", "usage: help [COMMAND]"),
])
def test_wrong_arguments_give_error_and_usage(session, line, message, usage):
    assert answer(session, line + b"\n") == [message, usage]


def test_unbalanced_quote_is_an_error(session):
    assert answer(session, b"status 'oops\n")[0].startswith("error:")


def test_overlong_line_answers_an_error(session):
    assert answer(session, b"s" * 2000 + b"\r\n") == [
        "error: line too long (more than 1024 bytes), discarded"]


def test_garbage_line_answers_an_error_not_a_crash(session):
    lines = answer(session, b"\xff\x00\x1b\xc3(\x80 \x9b\n")
    assert len(lines) == 1 and lines[0].startswith("error: unknown command")


def test_failing_backend_gives_an_error_and_the_session_goes_on(session, backend):
    backend.failure = OSError("FRAM not answering")
    assert answer(session, b"status\n") == [
        "error: status failed: OSError: FRAM not answering"]
    backend.failure = None
    assert answer(session, b"record --count\n") == ["7"]


def test_several_lines_in_one_read_get_one_answer_each(session):
    out = session.receive(b"record --count\r\nrecord --count\r\n")
    assert out == b"7\r\n" + PROMPT_BYTES + b"7\r\n" + PROMPT_BYTES


def test_echo_session_echoes_before_answering(backend):
    session = ConsoleSession(console_commands(backend), echo=True)
    assert session.receive(b"record --count\r") == b"record --count\r\n7\r\n" + PROMPT_BYTES


# --- the command table --------------------------------------------------------------------------

def test_registered_command_is_dispatched_and_listed(backend):
    table = console_commands(backend)

    def peer(args: list[str]) -> list[str]:
        if args != ["status"]:
            raise UsageError("expected 'status'")
        return ["peer: alone"]

    table.register(Command("peer", "peer status", "the pair's state", peer))
    session = ConsoleSession(table)
    assert answer(session, b"peer status\n") == ["peer: alone"]
    assert answer(session, b"peer x\n") == ["error: peer: expected 'status'", "usage: peer status"]
    assert any(line.startswith("  peer status") for line in answer(session, b"help\n"))


def test_command_error_is_one_error_line():
    table = CommandTable()

    def verify(args: list[str]) -> list[str]:
        raise CommandError("mirror is paused")

    table.register(Command("verify", "verify", "compare both media", verify))
    assert table.run("verify") == ["error: verify: mirror is paused"]


def test_handler_output_cannot_break_the_line_framing():
    table = CommandTable()
    table.register(Command("odd", "odd", "", lambda args: ["a\nb\x1b[2J", "c\r\nd"]))
    assert answer(ConsoleSession(table), b"odd\n") == ["a", "b\ufffd[2J", "c", "d"]


def test_duplicate_or_bad_names_are_refused(backend):
    table = console_commands(backend)
    with pytest.raises(ValueError):
        table.register(Command("status", "status", "", lambda args: []))
    with pytest.raises(ValueError):
        table.register(Command("two words", "", "", lambda args: []))
