"""aml_magics.dap's framing and channel against in-memory peers: byte buffers, pipes and a
socket pair standing in for an adapter. Malformed input is a clear error and never a hang,
a lost connection fails every pending request, events reach listeners in order through
bounded buffers, and reverse requests are always answered."""

from __future__ import annotations

import io
import json
import os
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml_magics.dap import Channel, MessageStream, ProtocolError, RequestFailed
from aml_magics.dap.errors import DapTimeout, Disconnected
from aml_magics.dap.framing import MAX_HEADER_LINE, encode
from aml_magics.dap.session import CLIENT_ID, CLIENT_NAME, Session


def reader_of(data: bytes) -> MessageStream:
    return MessageStream(io.BytesIO(data), io.BytesIO())


def frame(message: dict) -> bytes:
    return encode(message)


# -- framing -------------------------------------------------------------------------------
def test_round_trip_of_several_messages_with_unicode():
    out = io.BytesIO()
    writer = MessageStream(io.BytesIO(), out)
    messages = [{"seq": 1, "type": "event", "event": "output", "body": {"output": "grüße ✓\n"}},
                {"seq": 2, "type": "response", "request_seq": 1, "success": True}]
    for message in messages:
        writer.write_message(message)
    data = out.getvalue()
    assert data.startswith(b"Content-Length: ")
    stream = reader_of(data)
    assert [stream.read_message(), stream.read_message(), stream.read_message()] == [*messages, None]


def test_blank_lines_between_messages_and_other_headers_are_tolerated():
    body = b'{"type":"event","event":"x"}'
    data = b"\r\n" + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert reader_of(data).read_message() == {"type": "event", "event": "x"}


@pytest.mark.parametrize(("data", "error"), [
    (b"Content-Length 12\r\n\r\n{}", "malformed header line"),
    (b"X-Other: 1\r\n\r\n{}", "without Content-Length"),
    (b"Content-Length: twelve\r\n\r\n{}", "not a number"),
    (b"Content-Length: -4\r\n\r\n{}", "out of range"),
    (b"Content-Length: 99999999999\r\n\r\n", "out of range"),
    (b"Content-Length: 7\r\n\r\n{nope!}", "not JSON"),
    (b"Content-Length: 2\r\n\r\n[]", "not a JSON object"),
    (b"Content-Length: 2\r\n\r\n\xff\xfe", "not UTF-8"),
    (b"Content-Length: 50\r\n\r\n{\"type\": ", "ended after 9 of 50 body bytes"),
    (b"Content-Length: 5\r\n", "ended inside a message header"),
    (b"Content-Len", "ended inside a header line"),
    (b"X" * (MAX_HEADER_LINE + 10) + b"\r\n", "header line longer than"),
])
def test_malformed_input_is_a_clear_error(data, error):
    with pytest.raises(ProtocolError, match=error):
        reader_of(data).read_message()


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(), st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                               lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner))))
def test_any_json_object_survives_the_round_trip(message):
    assert reader_of(frame(message)).read_message() == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_end_in_messages_an_end_or_a_protocol_error(data):
    stream = reader_of(data)
    for _ in range(len(data) + 1):  # every call consumes input: this loop ends
        try:
            message = stream.read_message()
        except ProtocolError:
            return
        if message is None:
            return
        assert isinstance(message, dict)


def test_writing_to_a_closed_stream_is_disconnected():
    stream = MessageStream(io.BytesIO(), io.BytesIO())
    stream.close()
    with pytest.raises(Disconnected, match="cannot send threads"):
        stream.write_message({"type": "request", "command": "threads"})


# -- a scripted peer over a socket pair ------------------------------------------------------
class Peer:
    """The adapter's end of a socket pair: reads what the channel sends, writes what a test wants."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stream = MessageStream.from_socket(sock, name="peer")

    def read(self) -> dict:
        message = self.stream.read_message()
        assert message is not None
        return message

    def send(self, message: dict) -> None:
        self.stream.write_message(message)

    def respond(self, request: dict, body: dict | None = None, success: bool = True, message: str = "") -> None:
        self.send({"seq": 0, "type": "response", "request_seq": request["seq"], "command": request["command"],
                   "success": success, "body": body or {}, **({"message": message} if message else {})})

    def event(self, name: str, body: dict | None = None) -> None:
        self.send({"seq": 0, "type": "event", "event": name, "body": body or {}})


@pytest.fixture
def pair():
    """(channel, peer): a started Channel whose adapter is the test."""
    ours, theirs = socket.socketpair()
    channel = Channel(MessageStream.from_socket(ours, name="test"))
    peer = Peer(theirs)
    yield channel, peer
    channel.close()
    peer.stream.close()


def test_responses_are_matched_to_their_requests_in_any_order(pair):
    channel, peer = pair
    channel.start()
    first = channel.send_request("threads")
    second = channel.send_request("evaluate", {"expression": "1+1"})
    got = [peer.read(), peer.read()]
    assert [m["command"] for m in got] == ["threads", "evaluate"]
    assert got[1]["arguments"] == {"expression": "1+1"}
    peer.respond(got[1], {"result": "2"})
    peer.respond(got[0], {"threads": [{"id": 1, "name": "MainThread"}]})
    assert second.body(5) == {"result": "2"}
    assert first.body(5) == {"threads": [{"id": 1, "name": "MainThread"}]}


def test_a_failed_response_carries_the_adapters_message(pair):
    channel, peer = pair
    channel.start()
    request = channel.send_request("evaluate", {"expression": "nope"})
    peer.send({"seq": 0, "type": "response", "request_seq": peer.read()["seq"], "command": "evaluate",
               "success": False, "message": "NameError", "body": {"error": {"format": "name 'nope' is not defined"}}})
    with pytest.raises(RequestFailed) as caught:
        request.body(5)
    assert caught.value.adapter_message == "NameError: name 'nope' is not defined"
    assert str(caught.value) == "evaluate failed: NameError: name 'nope' is not defined"


def test_a_lost_connection_fails_every_pending_request_and_later_ones(pair):
    channel, peer = pair
    reasons: list[str] = []
    channel.on_close(reasons.append)
    channel.start()
    pending = [channel.send_request("threads"), channel.send_request("stackTrace", {"threadId": 1})]
    peer.read(), peer.read()
    peer.sock.shutdown(socket.SHUT_RDWR)
    for request in pending:
        with pytest.raises(Disconnected, match="closed by the adapter"):
            request.body(10)
    assert reasons == ["the connection was closed by the adapter"]
    with pytest.raises(Disconnected, match="cannot send"):
        channel.request("threads", timeout=5)
    late: list[str] = []
    channel.on_close(late.append)  # registered after the end: told at once
    assert late == reasons


def test_a_malformed_frame_closes_the_channel_with_the_reason(pair):
    channel, peer = pair
    channel.start()
    request = channel.send_request("threads")
    peer.read()
    peer.sock.sendall(b"Content-Length: 4\r\n\r\n{bad")
    with pytest.raises(Disconnected, match="protocol error: message body is not JSON"):
        request.body(10)
    assert channel.closed and channel.close_reason.startswith("protocol error")


def test_a_message_of_unknown_type_is_a_protocol_error(pair):
    channel, peer = pair
    channel.start()
    peer.send({"seq": 1, "type": "gossip"})
    with pytest.raises(Disconnected, match="unknown type 'gossip'"):
        channel.request("threads", timeout=10)


def test_close_by_the_client_fails_pending_and_wakes_event_waiters(pair):
    channel, peer = pair
    queue = channel.event_queue(["stopped"])
    channel.start()
    request = channel.send_request("threads")
    errors: list[Exception] = []

    def wait() -> None:
        try:
            queue.take("stopped", timeout=60)
        except Disconnected as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    channel.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert errors and "closed by the client" in str(errors[0])
    with pytest.raises(Disconnected, match="closed by the client"):
        request.body(5)


def test_listeners_get_their_events_in_wire_order_and_a_raising_one_does_not_stop_them(pair, capsys):
    channel, peer = pair
    everything: list[str] = []
    stops: list[dict] = []
    channel.on_event(lambda m: everything.append(m["event"]))
    channel.on_event(lambda m: 1 / 0, "output")
    unsubscribe = channel.on_event(lambda m: stops.append(m["body"]), "stopped")
    queue = channel.event_queue(["terminated"])
    channel.start()
    peer.event("output", {"output": "a"})
    peer.event("stopped", {"reason": "breakpoint", "threadId": 1})
    peer.event("continued", {"threadId": 1})
    peer.event("terminated")
    queue.take("terminated", timeout=10)  # every listener ran before the queue's
    assert everything == ["output", "stopped", "continued", "terminated"]
    assert stops == [{"reason": "breakpoint", "threadId": 1}]
    assert "a listener raised ZeroDivisionError" in capsys.readouterr().err
    unsubscribe()
    peer.event("stopped", {"reason": "step", "threadId": 1})
    peer.event("terminated")
    queue.take("terminated", timeout=10)
    assert len(stops) == 1


def test_buffers_are_bounded_and_count_what_they_dropped():
    ours, theirs = socket.socketpair()
    channel = Channel(MessageStream.from_socket(ours), recent_events=5)
    queue = channel.event_queue(maxlen=10)
    done = channel.event_queue(["terminated"], maxlen=1)
    channel.start()
    peer = Peer(theirs)
    try:
        for i in range(100):
            peer.event("output", {"output": f"{i}\n"})
        peer.event("terminated")
        done.take("terminated", timeout=10)
        assert channel.events_received == 101
        assert [m["body"].get("output") for m in channel.recent_events()] == ["96\n", "97\n", "98\n", "99\n", None]
        kept = queue.snapshot()
        assert len(kept) == 10 and queue.dropped == 91
        assert kept[0]["body"]["output"] == "91\n"
        assert "last events" in channel.recent_text()
        with pytest.raises(DapTimeout, match="waiting for a 'stopped' event; last events"):
            queue.take("stopped", timeout=0.2)
    finally:
        channel.close()
        peer.stream.close()


def test_reverse_requests_are_answered_by_handlers_or_refused(pair):
    channel, peer = pair
    seen: list[dict] = []

    def start_debugging(message: dict) -> dict:
        seen.append(message)
        return {"accepted": True}

    def run_in_terminal(message: dict) -> dict:
        raise RuntimeError("no terminal here")

    channel.handle("startDebugging", start_debugging)
    channel.handle("runInTerminal", run_in_terminal)
    channel.start()
    for seq, command in enumerate(("startDebugging", "runInTerminal", "somethingElse"), start=1):
        peer.send({"seq": seq, "type": "request", "command": command, "arguments": {"n": seq}})
    answers = [peer.read() for _ in range(3)]
    assert [(a["type"], a["request_seq"], a["command"], a["success"]) for a in answers] == [
        ("response", 1, "startDebugging", True), ("response", 2, "runInTerminal", False),
        ("response", 3, "somethingElse", False)]
    assert answers[0]["body"] == {"accepted": True}
    assert answers[1]["message"] == "no terminal here"
    assert answers[2]["message"] == "reverse request 'somethingElse' is not supported by aml-magics"
    assert seen[0]["arguments"] == {"n": 1}
    assert len({a["seq"] for a in answers}) == 3  # our own sequence numbers, unique


def test_pipes_work_as_well_as_sockets():
    to_peer_r, to_peer_w = os.pipe()
    to_us_r, to_us_w = os.pipe()
    channel = Channel(MessageStream(os.fdopen(to_us_r, "rb"), os.fdopen(to_peer_w, "wb"), name="pipes")).start()
    peer = MessageStream(os.fdopen(to_peer_r, "rb"), os.fdopen(to_us_w, "wb"), name="peer")
    try:
        request = channel.send_request("threads")
        sent = peer.read_message()
        assert sent is not None and sent["command"] == "threads"
        peer.write_message({"seq": 1, "type": "response", "request_seq": sent["seq"], "command": "threads",
                            "success": True, "body": {"threads": []}})
        assert request.body(5) == {"threads": []}
        pending = channel.send_request("pause", {"threadId": 1})
        peer.close()  # the peer goes away: end of stream on our reader
        with pytest.raises(Disconnected):
            pending.body(10)
    finally:
        channel.close()


def test_the_handshake_says_who_we_are_and_fails_clearly_when_attach_is_refused(pair):
    """The attach refusal debugpy's adapter gives a second client, as one error line."""
    channel, peer = pair
    session = Session(channel).start()
    errors: list[Exception] = []
    thread = threading.Thread(target=lambda: _attach(session, errors))
    thread.start()
    initialize = peer.read()
    assert initialize["command"] == "initialize"
    assert (initialize["arguments"]["clientID"], initialize["arguments"]["clientName"]) == (CLIENT_ID, CLIENT_NAME)
    assert "test" not in json.dumps(initialize["arguments"]).lower()
    peer.respond(initialize, {"supportsConfigurationDoneRequest": True})
    attach = peer.read()
    assert attach["command"] == "attach" and attach["arguments"]["connect"]["port"] == 5678
    peer.respond(attach, success=False, message="Server[pid=4242] is already being debugged.")
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RequestFailed)
    assert str(errors[0]) == "attach failed: Server[pid=4242] is already being debugged."


def _attach(session: Session, errors: list[Exception]) -> None:
    try:
        session.attach({"type": "debugpy", "request": "attach", "connect": {"host": "127.0.0.1", "port": 5678}},
                       timeout=10)
    except Exception as exc:
        errors.append(exc)
