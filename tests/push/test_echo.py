"""The sender's echo folded into its send's answer (push.echo), sans-I/O:
the fold byte by byte, what is never folded, what a client refuses, and
both ends of a chain staying in step across a fold."""

from __future__ import annotations

import json

import pytest

from coap_gateway.codec import HttpResponse, bare_event_id, coap_to_response, echo_fold, response_to_coap
from coap_gateway.errors import CodecError
from coap_gateway.push import Outcome, PushChain, Status, SyncPushState
from coap_gateway.push.echo import (
    F_COUNTS,
    F_SENDER,
    MAX_ROOMS,
    EchoContext,
    Sent,
    echo_event,
    fold,
    leb128,
    parse_send,
    sent_of,
    token_change,
    unfold,
)
from coap_gateway.push.format import FIRST_OBSERVE
from tests.helpers.echo_bodies import COUNTS_PART, EVENT_ID, SENDER, SENT, TXN, context, synapse_echo
from tests.helpers.sync_bodies import PRESET, PROFILE, ROOM, TABLE, empty_body, event_body, message_body, token

# --------------------------------------------------------------- pieces


def test_leb128_bytes():
    assert leb128(0) == b"\x00"
    assert leb128(127) == b"\x7f"
    assert leb128(128) == b"\x80\x01"
    assert leb128(60_000) == b"\xe0\xd4\x03"  # a minute between messages: 3 bytes
    with pytest.raises(CodecError):
        leb128(-1)


def test_token_change_is_a_byte_when_the_room_stream_moves():
    assert token_change(token(10), token(11)) == b"\x02"  # 2·1, nothing else moved
    assert token_change(token(10), token(10)) == b"\x00"
    # s10_2_0 → s12_2_5: 2·2 + more, one other number, index 2, +5
    assert token_change("s10_2_0", "s12_2_5") == b"\x05\x01\x02\x05"
    assert token_change(token(11), token(10)) is None  # went down
    assert token_change("s10_2", "m10_2") is None  # other text
    assert token_change("s10_2", "s10_2_1") is None  # other shape
    assert token_change("s10_02", "s10_03") is None  # a leading zero would not come back


def test_parse_send_and_sent_of():
    routes, names = PROFILE.routes, PROFILE.schemas.message_routes
    target = f"/_matrix/client/v3/rooms/{ROOM.replace('!', '%21')}/send/m.room.message/abc%2F1"
    assert parse_send(target, routes, names) == (ROOM, "m.room.message", "abc%2F1")
    assert parse_send(target + "?x=1", routes, names) is None
    assert parse_send(f"/_matrix/client/v3/rooms/{ROOM}/redact/$e/t", routes, names) is None
    sent = sent_of(ROOM, "m.room.message", TXN, b'{"msgtype":"m.text","body":"hi"}', b'{"event_id":"$e"}')
    assert sent == Sent(ROOM, "m.room.message", TXN, {"msgtype": "m.text", "body": "hi"}, "$e")
    assert sent_of(ROOM, "t", TXN, b"[1]", b'{"event_id":"$e"}') is None
    assert sent_of(ROOM, "t", TXN, b"{}", b'{"errcode":"M_X"}') is None


# ------------------------------------------------------------ the fold


def test_fold_of_a_warm_echo_is_four_bytes_and_rebuilds_synapses_bytes():
    body = synapse_echo(token(10), token(11), ts=1796372820279, age=30)
    ctx = context(last_ts=1796372820279 - 900, sender=SENDER, counts=(0, 0))
    data = fold(body, token(10), SENT, ctx, observe=5)
    # flags: Observe 5 mod 8; ts + 900 ms; age 30; s10 → s11
    assert data == b"\x05" + b"\x84\x07" + b"\x1e" + b"\x02"
    assert unfold(data, token(10), SENT, ctx, observe=5) == body


def test_first_fold_of_an_observation_says_the_sender_counts_and_whole_timestamp():
    body = synapse_echo(token(10), token(11), counts=(2, 1))
    data = fold(body, token(10), SENT, context(), observe=1)
    assert data is not None
    assert data[0] == 1 | F_COUNTS | F_SENDER
    assert data.endswith(b"\x02\x01" + bytes([len(SENDER)]) + SENDER.encode())
    assert unfold(data, token(10), SENT, context(), observe=1) == body


def test_utf8_bodies_fold_with_their_flag():
    sent = Sent(ROOM, "m.room.message", TXN, {"msgtype": "m.text", "body": "Привет ⚡"}, EVENT_ID)
    ascii_body = synapse_echo(token(3), token(4), body="Привет ⚡")
    utf8_body = ascii_body.replace(json.dumps("Привет ⚡").encode(), json.dumps("Привет ⚡", ensure_ascii=False).encode())
    ctx = context(sender=SENDER, counts=(0, 0))
    for body in (ascii_body, utf8_body):
        data = fold(body, token(3), sent, ctx, observe=2)
        assert data is not None
        assert unfold(data, token(3), sent, ctx, observe=2) == body


@pytest.mark.parametrize("change", [
    lambda b: b.replace(b'"summary":{}', b'"summary":{"m.joined_member_count":2}'),  # more than the echo
    lambda b: b.replace(b'"ephemeral":{"events":[]}', b'"ephemeral":{"events":[{"type":"m.typing"}]}'),
    lambda b: b.replace(b'"limited":false', b'"limited":true'),
    lambda b: b.replace(b'"membership":"join"', b'"membership":"leave"'),
    lambda b: b.replace(b'"prev_batch":"s10', b'"prev_batch":"s9'),
    lambda b: b.replace(b'"msgtype":"m.text"}', b'"msgtype":"m.text","x":1}'),  # content not as sent
    lambda b: b.replace(b'"content":{"body"', b'"content": {"body"'),  # not Synapse's spacing
    lambda b: b.replace(b'"age":30', b'"age":-1'),
    lambda b: b[:-1],
])
def test_anything_but_the_exact_echo_is_not_folded(change):
    body = change(synapse_echo(token(10), token(11)))
    assert fold(body, token(10), SENT, context(sender=SENDER, counts=(0, 0)), observe=1) is None


def test_not_folded_for_another_send_room_or_an_older_timestamp():
    body = synapse_echo(token(10), token(11))
    ctx = context(sender=SENDER, counts=(0, 0))
    other = Sent(ROOM, "m.room.message", "lbpbifujdt.2", SENT.content, EVENT_ID)
    assert fold(body, token(10), other, ctx, 1) is None
    assert fold(body, token(10), Sent("!other:x", *list(SENT.__dict__.values())[1:]), ctx, 1) is None
    assert fold(body, token(10), SENT, context(last_ts=1796372820280), 1) is None
    assert fold(body, token(9), SENT, ctx, 1) is None  # answers another since


def test_unfold_refuses_what_it_cannot_rebuild():
    body = synapse_echo(token(10), token(11))
    ctx = context(last_ts=1796372820000, sender=SENDER, counts=(0, 0))
    data = fold(body, token(10), SENT, ctx, observe=3)
    assert data is not None
    bad = [
        (b"", "empty"),
        (bytes([data[0] | 0x40]) + data[1:], "reserved"),
        (data + b"\x00", "trailing"),
        (data[:-1], "ends inside"),
        (data[:1] + b"\xff" * 11, "longer than 10"),
    ]
    for fold_bytes, reason in bad:
        with pytest.raises(CodecError, match=reason):
            unfold(fold_bytes, token(10), SENT, ctx, observe=3)
    with pytest.raises(CodecError, match="another place"):
        unfold(data, token(10), SENT, ctx, observe=4)
    with pytest.raises(CodecError, match="sender"):
        unfold(data, token(10), SENT, context(sender=None, counts=(0, 0)), observe=3)
    with pytest.raises(CodecError, match="unread counts"):
        unfold(data, token(10), SENT, context(sender=SENDER), observe=3)
    with pytest.raises(CodecError, match="more numbers"):
        unfold(b"\x03\x00\x00\x03\x20\x01\x01", token(10), SENT, ctx, observe=3)


def test_context_learns_from_the_chain_and_stays_bounded():
    ctx = EchoContext()
    ctx.note(empty_body(3))
    assert (ctx.last_ts, ctx.sender, len(ctx.counts)) == (0, None, 0)
    ctx.note(synapse_echo(token(10), token(11), ts=1000, counts=(4, 1)))
    assert (ctx.last_ts, ctx.sender, ctx.counts[ROOM]) == (1000, SENDER, (4, 1))
    for n in range(MAX_ROOMS + 5):
        doc = {"next_batch": "x", "rooms": {"join": {f"!r{n}:x": {
            "unread_notifications": {"notification_count": n, "highlight_count": 0}}}}}
        ctx.note(json.dumps(doc).encode())
    assert len(ctx.counts) == MAX_ROOMS and ROOM not in ctx.counts
    ctx.note(b'{"rooms":{"join":{"!a":{"timeline":{"events":[{"origin_server_ts":"9"}]}}}}}')  # odd types: ignored
    assert ctx.last_ts == 1000


def test_the_key_counts_come_from_the_latest_answer_not_the_idle_template():
    # js-sdk uploads its keys: the next answers say 50 one-time keys, while the
    # template (renewed only by an idle answer) still says 0
    ctx = EchoContext()
    assert fold(synapse_echo(token(10), token(11)), token(10), SENT, ctx, 1) is None  # no answer yet
    ctx.note(empty_body(9))
    assert ctx.counts_part == COUNTS_PART
    ctx.note(empty_body(10, keys=50))
    body = synapse_echo(token(10), token(11)).replace(b'"signed_curve25519":0', b'"signed_curve25519":50')
    data = fold(body, token(10), SENT, ctx, 1)
    assert data is not None and unfold(data, token(10), SENT, ctx, 1) == body
    assert fold(synapse_echo(token(10), token(11)), token(10), SENT, ctx, 1) is None  # 0 is no longer the count
    with pytest.raises(CodecError, match="before any answer"):
        unfold(data, token(10), SENT, EchoContext(), 1)


# ------------------------------------------------- the answer that carries it


def test_the_send_answer_carries_the_fold_under_2_04():
    answer = HttpResponse(200, b'{"event_id":"' + EVENT_ID.encode() + b'"}', "application/json")
    plain = response_to_coap(answer, PROFILE, "client.send")
    folded = response_to_coap(answer, PROFILE, "client.send", echo=b"\x05\x84\x07\x1e\x02")
    assert (plain.code.dotted, folded.code.dotted) == ("2.05", "2.04")
    assert folded.payload == bare_event_id(answer) + b"\x05\x84\x07\x1e\x02"
    assert folded.opt.content_format is None
    for message in (plain, folded):
        assert coap_to_response(message, PROFILE, "client.send").body == answer.body
    assert echo_fold(folded, PROFILE, "client.send") == b"\x05\x84\x07\x1e\x02"
    assert echo_fold(plain, PROFILE, "client.send") is None
    assert echo_fold(folded, PROFILE, None) is None  # not a compact request: not this form
    # an event ID that is not 32 bytes of base64 cannot have a fold behind it
    text_id = HttpResponse(200, b'{"event_id":"$abc:example.org"}', "application/json")
    assert response_to_coap(text_id, PROFILE, "client.send", echo=b"\x01").code.dotted == "2.05"


# ------------------------------------------------ both ends of one chain


def test_server_and_client_chains_stay_in_step_across_a_fold():
    server = PushChain(token(9), TABLE, PRESET, 1024)
    client = SyncPushState(PROFILE)
    poll = client.classify("GET", f"/_matrix/client/v3/sync?since={token(9)}&timeout=30000", "tok")
    stream, _ = client.stream(poll, "tok")
    generation = client.begin(stream, token(9), 0.0)

    first = server.on_response(HttpResponse(200, empty_body(9)))  # the template, as Observe 0
    assert server.next_observe() == FIRST_OBSERVE  # (the shell numbers what it sends)
    assert client.on_registered(stream, generation, FIRST_OBSERVE, first.payload, 0.0).value == "ok"
    # bob's message, pushed: the client learns ts, counts (and not yet alice's ID)
    pushed = server.on_response(HttpResponse(200, message_body(token(9), token(10), 1)))
    client.on_notification(stream, generation, server.next_observe(), pushed.payload, 0.0)
    assert stream.head == token(10)

    assert client.echo_target("tok") == (stream, generation)
    echo = synapse_echo(token(10), token(11), ts=1795364413749 + 5000, counts=(1, 0))
    folded = server.on_echo(HttpResponse(200, echo), SENT)
    assert folded is not None and folded.observe == 2 and folded.answered == token(10)
    assert folded.fold[0] == 2 | F_SENDER  # counts as last pushed; alice's ID said once
    assert client.on_echo(stream, generation, SENT, folded.fold, 0.0).value == "ok"
    assert stream.answers[token(10)].body == echo and stream.head == token(11) == server.head

    # the next notification is read against the same deflate history at both ends
    later = message_body(token(11), token(12), 2)
    pushed = server.on_response(HttpResponse(200, later))
    assert server.next_observe() == 3
    assert client.on_notification(stream, generation, 3, pushed.payload, 0.0).value == "ok"
    assert stream.answers[token(11)].body == later

    # a second echo: the sender is known now, the fold is 4–5 bytes
    echo2 = synapse_echo(token(12), token(13), ts=1795364414749 + 9000, counts=(2, 0))
    folded = server.on_echo(HttpResponse(200, echo2), SENT)
    assert folded is not None and len(folded.fold) <= 5
    assert client.on_echo(stream, generation, SENT, folded.fold, 0.0).value == "ok"
    assert stream.answers[token(12)].body == echo2


def test_a_fold_the_client_cannot_place_ends_the_observation():
    client = SyncPushState(PROFILE)
    poll = client.classify("GET", f"/_matrix/client/v3/sync?since={token(9)}&timeout=30000", "tok")
    stream, _ = client.stream(poll, "tok")
    generation = client.begin(stream, token(9), 0.0)
    server = PushChain(token(9), TABLE, PRESET, 1024)
    client.on_registered(stream, generation, FIRST_OBSERVE,
                         server.on_response(HttpResponse(200, empty_body(9))).payload, 0.0)
    server.next_observe()
    folded = server.on_echo(HttpResponse(200, synapse_echo(token(9), token(10))), SENT)
    assert folded is not None
    # the client's send record is gone (None), or a stale generation: register again (the server replays)
    assert client.on_echo(stream, generation, None, folded.fold, 0.0).value == "lost"
    assert stream.status is Status.IDLE
    generation = client.begin(stream, token(9), 0.0)
    client.on_registered(stream, generation, FIRST_OBSERVE, b"", 0.0)
    assert client.on_echo(stream, generation - 1, SENT, folded.fold, 0.0).value == "lost"


def test_no_fold_before_the_first_answer_or_for_an_error():
    server = PushChain(token(9), TABLE, PRESET, 1024)
    echo = HttpResponse(200, synapse_echo(token(9), token(10)))
    assert server.on_echo(echo, SENT) is None  # the client could not build it yet
    server.on_response(HttpResponse(200, empty_body(9)))
    assert server.on_echo(HttpResponse(500, b"{}"), SENT) is None
    assert server.on_echo(echo, SENT) is not None


def test_a_fold_another_sends_answer_overtook_is_a_gap_not_damage():
    """Two sends in flight (NSTART 4 allows it); the second's answer comes
    first: its Observe bits say so, and the client registers again (the
    history replays both) instead of reading it at the wrong place."""
    server = PushChain(token(9), TABLE, PRESET, 1024)
    client = SyncPushState(PROFILE)
    poll = client.classify("GET", f"/_matrix/client/v3/sync?since={token(9)}&timeout=30000", "tok")
    stream, _ = client.stream(poll, "tok")
    generation = client.begin(stream, token(9), 0.0)
    client.on_registered(stream, generation, server.next_observe(),
                         server.on_response(HttpResponse(200, empty_body(9))).payload, 0.0)
    pushed = server.on_response(HttpResponse(200, message_body(token(9), token(10), 1)))
    client.on_notification(stream, generation, server.next_observe(), pushed.payload, 0.0)
    content = {"body": "Hello, see you at 5pm", "msgtype": "m.text"}  # Synapse's key order
    one = Sent(ROOM, "m.room.message", TXN, content, EVENT_ID)
    two = Sent(ROOM, "m.room.message", "lbpbifujdt.2", content, "$" + "B" * 43)

    def echo(sent: Sent, since: int, ts: int) -> HttpResponse:
        return HttpResponse(200, event_body(token(since), token(since + 1), echo_event(sent, SENDER, ts, 30), (1, 0)))

    first, later = server.on_echo(echo(one, 10, 1795364420000), one), server.on_echo(echo(two, 11, 1795364421000), two)
    assert first is not None and later is not None and later.observe == first.observe + 1
    assert client.on_echo(stream, generation, two, later.fold, 0.0) is Outcome.LOST
    assert client.undecodable == 0 and stream.status is Status.IDLE and token(10) not in stream.answers
