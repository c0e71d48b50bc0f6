"""Fuzzing the console core: whatever arrives, no exception escapes and framing holds."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.console.commands import console_commands
from firmware.console.grammar import (
    PROMPT,
    ConsoleSession,
    Echo,
    LineAssembler,
    LineReceived,
    LineTooLong,
)

PROMPT_BYTES = PROMPT.encode()


def count_answers(output: bytes) -> int:
    """Cut output as a client does: lines ending in CRLF, then a prompt ends an answer."""
    answers = 0
    while output:
        if output.startswith(PROMPT_BYTES):
            answers += 1
            output = output[len(PROMPT_BYTES):]
            continue
        end = output.find(b"\r\n")
        assert end >= 0, "an answer line without its CRLF"
        output = output[end + 2:]
    return answers


# Pieces that reach interesting states: real commands, terminators, editing keys,
# escape sequences, broken UTF-8, and raw bytes.
FRAGMENTS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([
        b"status", b"status --json", b"record", b" --list", b" --count", b"mirror ",
        b"pause", b"resume", b"status", b"help", b" help", b"'", b'"', b"\\",
        b"\r", b"\n", b"\r\n", b"\x03", b"\x08", b"\x7f", b"\x15", b"\x1b", b"\x1b[",
        b"\x1b[1;5A", b"\x1bO", b"\t", b"\x00", b"\xc3", b"\xe2\x82", b"\xff", b"\x80",
        b"a" * 1000, b"\x9b",
    ]),
)
STREAMS = st.lists(FRAGMENTS, max_size=30)
SETTINGS = settings(max_examples=10_000, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(chunks=STREAMS, echo=st.booleans())
def test_assembler_and_dispatcher_take_any_bytes(backend_factory, chunks, echo):
    assembler = LineAssembler(echo=echo)
    session = ConsoleSession(console_commands(backend_factory()), echo=echo)
    out = bytearray()
    answers_due = 0
    for chunk in chunks:
        for event in assembler.feed(chunk):
            if isinstance(event, LineReceived):
                # One character per input byte at most, and no terminators inside.
                assert len(event.text) <= 1024
                assert "\r" not in event.text and "\n" not in event.text
            elif isinstance(event, LineTooLong):
                assert event.limit == 1024
            answers_due += not isinstance(event, Echo)
        out += session.receive(chunk)
    if not echo:
        # Each line end and ^C gets exactly one answer, and each answer ends with a prompt.
        assert count_answers(bytes(out)) == answers_due
        assert not out or out.endswith(PROMPT_BYTES)
    # The session still works after whatever came before.
    assert session.receive(b"\x03record --count\r\n").endswith(b"\r\n" + PROMPT_BYTES)


@settings(SETTINGS, max_examples=1_000)
@given(chunks=STREAMS, echo=st.booleans(), cut=st.data())
def test_output_does_not_depend_on_how_reads_cut_the_input(backend_factory, chunks, echo, cut):
    stream = b"".join(chunks)
    whole = ConsoleSession(console_commands(backend_factory()), echo=echo).receive(stream)
    cuts = sorted(cut.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    session = ConsoleSession(console_commands(backend_factory()), echo=echo)
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert b"".join(session.receive(piece) for piece in pieces) == whole
