"""Both ends' state machines without sockets: authentication, epochs, generations."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_link_frames import frames as any_frame

from hal.media.remote.frames import (
    PROTOCOL_VERSION,
    Barrier,
    Challenge,
    ChangeState,
    CommitEpoch,
    Connected,
    EpochAck,
    EpochAcked,
    FrameDecoder,
    ProtocolError,
    ReceiverMachine,
    Refused,
    RemoteState,
    Response,
    SenderMachine,
    SessionRefused,
    SessionStarted,
    Stage,
    Write,
    Zero,
    auth_mac,
)
from hal.media.remote.generations import Decision, SyncState, decide

KEY = b"the shared key"
SIZE = 1 << 20


def frames_of(chunks: list[bytes]) -> list:
    decoder = FrameDecoder()
    for c in chunks:
        decoder.feed(c)
    out = []
    while (f := decoder.next_frame()) is not None:
        out.append(f)
    return out


def deliver(src, dst) -> list:
    """Everything ``src`` queued, into ``dst``; the events/actions it produced."""
    events = []
    for frame in frames_of(src.take_outgoing()):
        events += dst.receive_frame(frame)
    return events


def pair(sender_key=KEY, receiver_key=KEY, sender_state=None, receiver_state=None):
    sender_state = sender_state or SyncState.new_primary()
    receiver_state = receiver_state if receiver_state is not None else SyncState()
    s = SenderMachine(sender_key, state=sender_state, size=SIZE, nonce=os.urandom(32))
    r = ReceiverMachine(receiver_key, local_state=lambda: receiver_state, size=SIZE,
                        nonce=os.urandom(32))
    return s, r


def handshake(s, r):
    s.start()
    events, actions = [], []
    for _ in range(4):
        actions += deliver(s, r)
        events += deliver(r, s)
    return events, actions


def test_handshake_connects_both_ends():
    s, r = pair()
    events, actions = handshake(s, r)
    assert s.ready and r.ready
    assert isinstance(events[-1], Connected) and events[-1].decision is Decision.FULL_SYNC
    started = [a for a in actions if isinstance(a, SessionStarted)]
    assert started and started[0].state.volume_uuid == s.state.volume_uuid  # adopts the uuid


def test_wrong_key_is_refused_and_nothing_is_staged():
    s, r = pair(sender_key=b"guess")
    events, actions = handshake(s, r)
    assert any(isinstance(a, SessionRefused) and a.code == "auth" for a in actions)
    assert any(isinstance(e, Refused) and e.code == "auth" for e in events)
    assert r.closed and not s.ready
    # A sender that pushes writes anyway gets no Stage out of the receiver.
    forged = Write(1, 0, 0, b"evil")
    with pytest.raises(ProtocolError):
        r.receive_frame(forged)


def test_sender_checks_the_receiver_too():
    s, _ = pair()
    s.start()
    s.take_outgoing()
    s.receive_frame(Challenge(PROTOCOL_VERSION, "receiver", os.urandom(32)))
    s.take_outgoing()
    events = s.receive_frame(Response(os.urandom(32)))
    assert isinstance(events[0], Refused) and events[0].code == "auth"


def test_a_reflected_response_does_not_authenticate():
    """An impostor receiver echoes the sender's own answer back: the role binding stops it."""
    s, _ = pair()
    s.start()
    [challenge] = frames_of(s.take_outgoing())
    their_nonce = os.urandom(32)
    s.receive_frame(Challenge(PROTOCOL_VERSION, "receiver", their_nonce))
    [response] = frames_of(s.take_outgoing())
    assert response.mac == auth_mac(KEY, "sender", their_nonce, challenge.nonce)
    events = s.receive_frame(response)
    assert isinstance(events[0], Refused)


def test_echoed_nonce_is_a_protocol_error():
    s, r = pair()
    s.start()
    [challenge] = frames_of(s.take_outgoing())
    with pytest.raises(ProtocolError):
        s.receive_frame(Challenge(PROTOCOL_VERSION, "receiver", challenge.nonce))


@pytest.mark.parametrize("frame", [
    Write(1, 0, 0, b"x"), Barrier(1, 0), Zero(1, 0, 0, 512, False),
])
def test_no_data_frames_before_authentication(frame):
    _, r = pair()
    with pytest.raises(ProtocolError):
        r.receive_frame(frame)


def ready_pair(**kwargs):
    s, r = pair(**kwargs)
    handshake(s, r)
    assert s.ready and r.ready
    return s, r


def test_an_epoch_is_committed_only_at_its_barrier():
    s, r = ready_pair()
    s.write(0, b"a" * 512)
    s.write_zeroes(4096, 8192)
    actions = deliver(s, r)
    assert [type(a) for a in actions] == [Stage, Stage]
    epoch = s.barrier()
    actions = deliver(s, r)
    assert actions == [CommitEpoch(epoch, 2)]
    r.epoch_durable(epoch)
    events = deliver(r, s)
    assert events == [EpochAcked(epoch, False), EpochAcked(epoch, True)]
    assert s.unacked_epochs == ()


def test_long_writes_are_split_within_one_epoch():
    s, r = ready_pair()
    s.write(0, bytes(SIZE))  # 1 MiB here; MAX_DATA is larger, so one frame
    s.barrier()
    actions = deliver(s, r)
    assert isinstance(actions[-1], CommitEpoch)


@pytest.mark.parametrize("bad", [
    Write(1, 1, 0, b"x"),  # seq gap
    Write(2, 0, 0, b"x"),  # wrong epoch
    Write(1, 0, SIZE - 1, b"xx"),  # beyond the medium
    Zero(1, 0, 0, SIZE + 1, False),
    Barrier(1, 5),  # count does not match
    EpochAck(1, True),  # not the sender's to send
])
def test_out_of_order_or_out_of_range_frames_are_refused(bad):
    _, r = ready_pair()
    with pytest.raises(ProtocolError):
        r.receive_frame(bad)


def test_state_changes_only_between_epochs():
    s, r = ready_pair()
    s.write(0, b"x")
    with pytest.raises(RuntimeError):
        s.send_state(False)
    epoch = s.barrier()
    deliver(s, r)
    r.epoch_durable(epoch)
    deliver(r, s)
    s.send_state(False)
    [change] = deliver(s, r)
    assert isinstance(change, ChangeState) and not change.state.consistent
    r.state_persisted(change.state)
    [event] = deliver(r, s)
    assert isinstance(event, RemoteState) and not event.state.consistent
    s.send_state(True)
    [change] = deliver(s, r)
    assert change.state.consistent and change.state.current == s.state.current


def test_ack_for_an_epoch_never_sent_is_a_protocol_error():
    s, _ = ready_pair()
    with pytest.raises(ProtocolError):
        s.receive_frame(EpochAck(7, True))


# --- generations ------------------------------------------------------------------------


def test_generation_decisions():
    a = SyncState.new_primary()
    in_sync = a.adopting(a)
    assert decide(a, in_sync) is Decision.IN_SYNC
    later = a.rotated()
    assert decide(later, in_sync) is Decision.RESYNC  # the remote is behind
    assert decide(a, SyncState()) is Decision.FULL_SYNC
    promoted = in_sync.rotated()
    assert decide(a, promoted) is Decision.REMOTE_AHEAD
    assert decide(later, promoted) is Decision.SPLIT_BRAIN  # both moved on
    other = SyncState.new_primary()
    assert decide(other, in_sync) is Decision.UNRELATED
    mid_resync = SyncState(a.volume_uuid, a.current, (), False)
    assert decide(a, mid_resync) is Decision.RESYNC


@pytest.mark.parametrize("decision", ["split", "ahead", "unrelated"])
def test_refused_decisions_stop_both_ends(decision):
    a = SyncState.new_primary()
    remote = a.adopting(a).rotated()  # promoted at the remote site
    sender = {"split": a.rotated(), "ahead": a, "unrelated": SyncState.new_primary()}[decision]
    s, r = pair(sender_state=sender, receiver_state=remote)
    events, actions = handshake(s, r)
    assert any(isinstance(e, Refused) and e.decision and e.decision.refused for e in events)
    assert not r.ready
    if decision == "split":
        assert "split brain" in next(e.message for e in events if isinstance(e, Refused))


def test_too_small_remote_is_refused():
    s = SenderMachine(KEY, state=SyncState.new_primary(), size=SIZE * 2, nonce=os.urandom(32))
    r = ReceiverMachine(KEY, local_state=SyncState, size=SIZE, nonce=os.urandom(32))
    events, _ = handshake(s, r)
    assert any(isinstance(e, Refused) and e.code == "size" for e in events)



# --- fuzz: any frame sequence is handled or refused, never crashes ------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(any_frame, max_size=12))
def test_any_frame_sequence_is_handled_or_refused(sequence):
    s, r = ready_pair()
    for machine in (r, s):
        for frame in sequence:
            try:
                machine.receive_frame(frame)
            except ProtocolError:
                break
