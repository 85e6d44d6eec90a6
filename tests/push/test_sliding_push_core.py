"""Sync push for sliding sync (MSC4186), sans-I/O: which requests are pushed,
what names their stream, the ``pos`` template, and both cores on a chain.

The bodies (tests/helpers/sliding_bodies.py) are Synapse 1.163's own answers
to an Element X-like request.
"""

from __future__ import annotations

import json
import os

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from coap_gateway.codec.mapping import HttpResponse
from coap_gateway.errors import CodecError
from coap_gateway.push.echo import (
    F_BASE,
    F_PLACE,
    EchoContext,
    FoldReader,
    Sent,
    apply_token_change,
    fold,
    token_change,
    unfold,
)
from coap_gateway.push.client import Answer, Outcome, Plain, Register, SyncPushClientConfig, SyncPushState, Wait
from coap_gateway.codec import options
from coap_gateway.codec.payload import body_to_payload, payload_to_body
from coap_gateway.push.format import (
    MAX_POLL_BODY,
    SLIDING,
    SYNC,
    DeltaState,
    ContinueOffer,
    Notification,
    continue_offer,
    delta_payload,
    read_delta_payload,
    decode_notification,
    encode_notification,
    expand_template,
    is_empty_sync,
    is_push_request,
    mark_continued,
    moves_to_device,
    next_batch_of,
    offer_continue,
    parse_long_poll,
    split_next_batch,
)
from coap_gateway.push.server import Fetch, Push, PushChain, Silent, connection_key, stream_key
from tests.helpers.devices import PROFILE
from tests.helpers.sliding_bodies import (
    BOB,
    ME,
    PATH,
    REQUEST,
    ROOM,
    idle,
    news,
    one,
    pos,
    quiet,
    sent,
    stream_token,
)
from tests.helpers.sync_bodies import PRESET, TABLE

def sliding(since: str | None, timeout: int = 30000, body: bytes = REQUEST, method: str = "POST", extra: str = ""):
    query = "" if since is None else f"?pos={since.replace('/', '%2F')}&timeout={timeout}{extra}"
    return parse_long_poll(method, PATH + query, PROFILE.routes, body)


# ------------------------------------------------------------ long-polls


def test_a_sliding_sync_long_poll_is_pushed_as_a_fetch_with_its_body():
    p = sliding(pos(8))
    assert p is not None and p.kind is SLIDING
    assert (p.since, p.timeout_ms, p.body, p.connection) == (pos(8), 30000, REQUEST, "room-list")
    # the registration (FETCH) parses the same; the homeserver gets the POST back
    assert sliding(pos(8), method="FETCH") == p and SLIDING.method == "POST"
    # the pos goes into the query escaped, whatever the client wrote
    assert p.target(since=pos(9)) == PATH + "?pos=" + pos(9).replace("/", "%2F") + "&timeout=30000"
    assert parse_long_poll("POST", f"{PATH}?pos={pos(8)}&timeout=5", PROFILE.routes, REQUEST).since == pos(8)


@pytest.mark.parametrize("since, timeout, body, extra", [
    (None, 30000, REQUEST, ""),  # the initial request: no pos
    (pos(8), 30000, b"[]", ""),  # not an object
    (pos(8), 30000, b"{", ""),
    (pos(8), 30000, b'{"conn_id":5}', ""),
    (pos(8), 30000, b'{"x":"' + b"a" * MAX_POLL_BODY + b'"}', ""),  # too long to ride in a registration
    (pos(8), 30000, REQUEST, "&pos=1"),  # twice
    ("1/s8 x", 30000, REQUEST, ""),  # a token with characters to escape
])
def test_which_sliding_sync_requests_are_not_pushed(since, timeout, body, extra):
    assert sliding(since, timeout, body, extra=extra) is None


def test_get_and_fetch_do_not_cross_kinds():
    assert parse_long_poll("GET", f"{PATH}?pos=1&timeout=5", PROFILE.routes) is None
    assert parse_long_poll("FETCH", "/_matrix/client/v3/sync?since=s1&timeout=5", PROFILE.routes) is None
    assert parse_long_poll("GET", "/_matrix/client/v3/sync?since=s1&timeout=5", PROFILE.routes, b"{}") is None


def test_one_stream_per_connection_and_its_answers_per_request():
    a, b = sliding(pos(8)), sliding(pos(9), 0)
    other_request = sliding(pos(8), body=REQUEST.replace(b'"timeline_limit": 1', b'"timeline_limit": 2'))
    other_connection = sliding(pos(8), body=REQUEST.replace(b"room-list", b"encryption"))
    # the stream (one observation) is the connection: a new request replaces the old one's
    assert connection_key("t", a) == connection_key("t", b) == connection_key("t", other_request)
    assert connection_key("t", a) != connection_key("t", other_connection)
    # the answers kept for a registration again are the request's
    assert stream_key("t", a) == stream_key("t", b) != stream_key("t", other_request)


def test_a_fetch_registration_is_a_push_request():
    assert is_push_request(Message(code=Code.FETCH, observe=0))
    assert not is_push_request(Message(code=Code.POST, observe=0))
    assert not is_push_request(Message(code=Code.FETCH))


# -------------------------------------------------------------- templates


def test_the_idle_answer_is_the_template_with_the_pos_asked_for():
    template, token = split_next_batch(idle(8), SLIDING)
    assert token == pos(8) and template.startswith(b'{"pos":"","lists"')
    assert expand_template(template, pos(8), SLIDING) == idle(8)  # byte for byte
    assert is_empty_sync(idle(8), SLIDING) and not is_empty_sync(news(9), SLIDING)
    assert next_batch_of(news(9), SLIDING) == pos(9, 2)
    # to-device messages, device-list changes, typing: news
    assert not is_empty_sync(idle(8).replace(b'"events":[]', b'"events":[{"type":"m.room_key"}]'), SLIDING)
    assert not is_empty_sync(idle(8).replace(b'"changed":[]', b'"changed":["@a:hs"]'), SLIDING)
    assert not is_empty_sync(idle(8).replace(b'"typing":{"rooms":{}}',
                                    b'"typing":{"rooms":{"!r":{"type":"m.typing","content":{"user_ids":["@a:hs"]}}}}'),
                             SLIDING)
    # a /sync answer has no pos
    assert split_next_batch(b'{"next_batch":"s1","rooms":{}}', SLIDING) is None
    assert not is_empty_sync(b'{"next_batch":"s1","rooms":{}}', SLIDING)


# ---------------------------------------------------------------- chains


def chain(since: str = pos(8)) -> PushChain:
    return PushChain(since, TABLE, PRESET, 1000, kind=SLIDING)


def ok(body: bytes) -> HttpResponse:
    return HttpResponse(200, body, "application/json")


def test_chain_pushes_the_template_once_then_only_news():
    c = chain()
    first = c.on_response(ok(idle(8)))
    assert isinstance(first, Push) and first.answered is None  # the template
    assert isinstance(c.on_response(ok(idle(11))), Silent)  # the stream token moved, nothing else
    assert (c.head, c.poll_from) == (pos(8), pos(11))
    step = c.on_response(ok(news(12)))
    assert isinstance(step, Push) and step.answered == pos(8) and step.body == news(12)
    # new one-time keys counted: the client's template must change
    step = c.on_response(ok(idle(13, keys=50)))
    assert isinstance(step, Push) and step.answered == pos(12, 2)


# -- one event: the sender's echo folded, someone else's event as its fields


def sliding_context(*bodies: bytes) -> EchoContext:
    ctx = EchoContext(sliding=True)
    for body in bodies:
        ctx.note(body)
    return ctx


def test_the_pos_moves_by_its_stream_number_in_one_byte():
    since, new = "1/" + stream_token(11), "1/" + stream_token(12)
    assert token_change(since, new) == bytes([1, 1, 1, 1])  # the connection's number first: 4 B
    assert token_change(since, new, lead=1) == bytes([2])
    assert apply_token_change(since, FoldReader(bytes([2])), lead=1) == new
    with pytest.raises(CodecError):  # the lead number is not among "the others"
        apply_token_change(since, FoldReader(bytes([1, 1, 1, 1])), lead=1)


def test_the_echo_folds_in_the_sliding_layout_byte_for_byte():
    ctx = sliding_context(quiet(10), one(11))
    body = one(12, ME, "t12")
    data = fold(body, "1/" + stream_token(11), sent(12), ctx, 3)
    assert data is not None and len(data) == 6 + len(ME)  # the first names the device's user
    assert unfold(data, "1/" + stream_token(11), sent(12), ctx, 3) == body
    ctx.note(body)
    warm = one(13, ME, "t13")
    data = fold(warm, "1/" + stream_token(12), sent(13), ctx, 4)
    # flags, +0.4 s (2), age, pos (1); bump_stamp and prev_batch follow from the positions
    assert data is not None and len(data) == 5 and data[0] & F_PLACE, data.hex()
    assert unfold(data, "1/" + stream_token(12), sent(13), ctx, 4) == warm
    with pytest.raises(CodecError):
        unfold(data, "1/" + stream_token(12), sent(13), ctx, 5)  # another place in the chain
    # another stream (presence, account data) moved between the since and
    # the event: still implied — Synapse's prev_batch is the new pos, one
    # room position back (js-sdk's sync shows this all the time)
    since = "1/" + stream_token(12, account=2)
    data = fold(one(14, ME, "t14"), since, sent(14), ctx, 5)
    assert data is not None and data[0] & F_PLACE and len(data) == 8, data.hex()  # the pos change names account
    assert unfold(data, since, sent(14), ctx, 5) == one(14, ME, "t14")
    ctx.note(one(14, ME, "t14"))
    # the pos moved past the event (it is not the newest of the room stream): the place is given
    later = one(15, ME, "t15").replace(stream_token(15).encode(), stream_token(16).encode(), 1)
    data = fold(later, "1/" + stream_token(14), sent(15), ctx, 6)
    assert data is not None and not data[0] & F_PLACE and len(data) > 5, data
    assert unfold(data, "1/" + stream_token(14), sent(15), ctx, 6) == later


def test_after_an_answer_with_other_extensions_the_echo_is_written_on_the_rest_before():
    receipt = '"receipts":{"rooms":{"' + ROOM + '":{"type":"m.receipt","content":{}}}}'
    ctx = sliding_context(quiet(10), one(11), quiet(12, receipts=receipt))
    body = one(13, ME, "t13")
    data = fold(body, "1/" + stream_token(12), sent(13), ctx, 1)
    assert data is not None and data[0] & F_BASE
    assert unfold(data, "1/" + stream_token(12), sent(13), ctx, 1) == body
    # /sync has one layout: the bit is refused there
    with pytest.raises(CodecError, match="reserved"):
        unfold(data, "1/" + stream_token(12), sent(13), EchoContext(), 1)


def test_what_is_not_the_layout_is_not_folded():
    ctx = sliding_context(quiet(10), one(11))
    since = "1/" + stream_token(11)
    other_room = '"lists":{"all":{"count":2,"ops":[{"op":"SYNC","range":[0,19],"room_ids":["' + ROOM + '","!b:x"]}]}}'
    assert fold(one(12, ME, "t12", lists=other_room), since, sent(12), ctx, 1) is None  # the list moved
    assert fold(one(12, ME, "t12", text="something else"), since, sent(12), ctx, 1) is None
    assert fold(one(12, ME, "t12"), since, sent(12), EchoContext(sliding=True), 1) is None  # no answer yet
    assert fold(one(12, ME, "t12"), since, sent(12), EchoContext(), 1) is None  # not /sync's layout


def test_someone_elses_event_comes_as_its_fields():
    delta_a, delta_b = DeltaState(PRESET, kind=SLIDING), DeltaState(PRESET, kind=SLIDING)
    since = "1/" + stream_token(11)
    for delta in (delta_a, delta_b):
        for body in (quiet(10), one(11)):
            delta.echo.note(body)
    payload = encode_notification(Notification(one(12)), since, delta_a, TABLE, SLIDING)
    assert payload[0] == 0x06 | 3 << 3  # the event form
    assert len(payload) <= 62, len(payload)  # 32 of it the event ID; deflated whole it was ~80 B
    assert decode_notification(payload, since, delta_b, TABLE, kind=SLIDING).body == one(12)


def test_the_chain_folds_the_echo_and_moves_on():
    c = chain(pos(8))
    c.on_response(ok(quiet(10)))
    c.on_response(ok(one(11)))
    step = c.on_echo(ok(one(12, ME, "t12")), sent(12))
    assert step is not None and step.answered == "1/" + stream_token(11)
    assert c.head == c.poll_from == "1/" + stream_token(12)


def test_client_and_server_cores_agree_on_a_sliding_chain():
    """Server chain → payloads → client state: every answer the client gets
    is byte for byte what Synapse said; idle polls come from the template
    with the pos asked for; another request on the connection registers."""
    state = SyncPushState(PROFILE, SyncPushClientConfig())
    server = chain()
    p = sliding(pos(8))
    stream, _ = state.stream(p, "tok")
    assert state.on_request(stream, p, 0) == Register(pos(8))
    gen = state.begin(stream, pos(8), 0)
    first = server.on_response(ok(idle(8)))
    assert state.on_registered(stream, gen, 0, first.payload, 0) is Outcome.OK
    assert state.on_request(stream, p, 1) == Wait()
    assert state.on_timeout(stream, pos(8)).body == idle(8)
    assert isinstance(server.on_response(ok(idle(10))), Silent)
    step = server.on_response(ok(news(11)))
    assert state.on_notification(stream, gen, 1, step.payload, 2) is Outcome.OK
    action = state.on_request(stream, p, 3)
    assert isinstance(action, Answer) and action.response.body == news(11)
    after = sliding(pos(11, 2))
    assert state.on_request(stream, after, 4) == Wait()
    assert state.on_timeout(stream, pos(11, 2)).body == expand_template(split_next_batch(idle(8), SLIDING)[0],
                                                                        pos(11, 2), SLIDING)
    # the client changes its request (a longer list): the observation follows it
    wider = sliding(pos(11, 2), body=REQUEST.replace(b"19]", b"39]"))
    assert state.stream(wider, "tok")[0] is stream
    assert state.on_request(stream, wider, 5) == Register(pos(11, 2))
    state.begin(stream, pos(11, 2), 5)
    assert stream.template is None  # the old request's idle answer is not the new one's
    # ... but a request that does not wait is sent as it is
    assert state.on_request(stream, sliding(pos(11, 2), 0, body=b"{}"), 6) == Plain()


def test_a_sliding_template_notification_round_trips():
    delta_a, delta_b = DeltaState(PRESET), DeltaState(PRESET)
    template = split_next_batch(idle(8), SLIDING)[0]
    payload = encode_notification(Notification(template, template=True), pos(8), delta_a, TABLE, SLIDING)
    assert decode_notification(payload, pos(8), delta_b, TABLE, kind=SLIDING).body == template
    with pytest.raises(CodecError):  # not a /sync template
        encode_notification(Notification(template, template=True), pos(8), DeltaState(PRESET), TABLE)


# -- a new request on the connection goes on from the old observation's state


def _registered(state: SyncPushState, server: PushChain, since: str, body: bytes = REQUEST):
    """A stream registered from ``since`` with ``body``, its first answer taken."""
    p = sliding(since, body=body)
    stream, _ = state.stream(p, "tok")
    assert state.on_request(stream, p, 0) == Register(since)
    gen = state.begin(stream, since, 0)
    first = server.on_response(ok(quiet(10)))
    reply = Message(code=Code.CONTENT, payload=first.payload, observe=server.next_observe())
    assert state.on_first_answer(stream, gen, reply, 0).observing
    return stream


def test_a_new_request_body_goes_on_from_the_old_state_when_both_ends_hold_it():
    state = SyncPushState(PROFILE, SyncPushClientConfig())
    old = chain("1/" + stream_token(9))
    stream = _registered(state, old, "1/" + stream_token(9))
    step = old.on_response(ok(one(11)))
    assert state.on_notification(stream, stream.generation, old.next_observe(), step.payload, 1) is Outcome.OK
    since = "1/" + stream_token(11)
    # the client asks with another body (a to-device position taken, a room opened)
    wider = sliding(since, body=REQUEST.replace(b"19]", b"39]"))
    assert state.on_request(state.stream(wider, "tok")[0], wider, 2) == Register(since)
    gen = state.begin(stream, since, 2)
    taken = state.continuation(stream)
    assert taken is not None and taken[0] == 1
    assert old.continued(taken[0] - 1) is None  # a number the server did not end on: afresh
    new = PushChain(since, TABLE, PRESET, 1000, kind=SLIDING, delta=old.continued(taken[0]))
    template = quiet(11).replace(b"19]", b"39]")  # the new request's idle answer
    first = new.on_response(ok(template))
    fresh = PushChain(since, TABLE, PRESET, 1000, kind=SLIDING).on_response(ok(template))
    assert len(first.payload) <= len(fresh.payload) // 3, (len(first.payload), len(fresh.payload))
    reply = Message(code=Code.CONTENT, payload=first.payload, observe=new.next_observe())
    mark_continued(reply)
    assert state.on_first_answer(stream, gen, reply, 3).observing
    assert state.on_timeout(stream, since).body == template
    # and the event form still knows the room and the sender
    step = new.on_response(ok(one(12).replace(b"19]", b"39]")))
    assert step.payload[0] == 0x06 | 3 << 3
    assert state.on_notification(stream, gen, new.next_observe(), step.payload, 4) is Outcome.OK


def test_a_chain_that_fetched_an_answer_it_encoded_is_not_continued():
    """Too large to push, the answer was fetched plainly; its body is in the
    chain's dictionary but not in the client's: nothing may go on from it."""
    old = PushChain("1/" + stream_token(9), TABLE, PRESET, 300, kind=SLIDING)
    assert isinstance(old.on_response(ok(quiet(10))), Push)
    observe = old.next_observe()
    assert old.continued(observe) is not None
    big = one(11, text=os.urandom(600).hex())  # incompressible: over 300 B however it is encoded
    assert isinstance(old.on_response(ok(big)), Fetch)
    assert old.continued(observe) is None


def test_a_request_a_later_one_took_over_never_registers_over_it():
    """Two requests with different bodies waiting on one connection (the
    client gave the first up, or asks twice at once): the later one's
    observation stands; the earlier one goes on as a plain request."""
    state = SyncPushState(PROFILE, SyncPushClientConfig())
    since = "1/" + stream_token(9)
    first = sliding(since)
    stream, _ = state.stream(first, "tok")
    assert state.on_request(stream, first, 0) == Register(since)
    state.begin(stream, since, 0)
    later = sliding(since, body=REQUEST.replace(b"19]", b"39]"))
    assert state.stream(later, "tok")[0] is stream
    assert state.on_request(stream, later, 1) == Register(since)
    state.begin(stream, since, 1)
    assert isinstance(state.on_request(stream, first, 2), Plain)
    assert isinstance(state.on_request(stream, later, 2), Wait)


def test_a_continued_answer_the_client_did_not_offer_is_a_lost_observation():
    state = SyncPushState(PROFILE, SyncPushClientConfig())
    server = chain("1/" + stream_token(9))
    p = sliding("1/" + stream_token(9))
    stream, _ = state.stream(p, "tok")
    gen = state.begin(stream, "1/" + stream_token(9), 0)
    assert state.continuation(stream) is None  # a first registration offers nothing
    reply = Message(code=Code.CONTENT, payload=server.on_response(ok(quiet(10))).payload,
                    observe=server.next_observe())
    mark_continued(reply)
    answer = state.on_first_answer(stream, gen, reply, 0)
    assert not answer.observing and answer.outcome is Outcome.LOST


def test_push_continue_round_trips_and_refuses_what_it_cannot_read():
    registration = Message(code=Code.FETCH)
    offer_continue(registration, (1 << 24) + 5, b"\x01\x02")
    assert continue_offer(registration) == ContinueOffer(5, b"\x01\x02")
    registration = Message(code=Code.FETCH)
    offer_continue(registration, 7, b"\x09", crc=0xDEADBEEF)
    assert continue_offer(registration) == ContinueOffer(7, b"\x09", 0xDEADBEEF)
    for value in (b"\x00", b"\x02\x00\x00\x05", b"\x01\x00\x00\x05\x00", b"\x00\x00\x00\x05" + bytes(9)):
        bad = Message(code=Code.FETCH)  # too short, unknown flags, no CRC, a token too long: start afresh
        bad.opt.add_option(OpaqueOption(options.PUSH_CONTINUE, value))
        assert continue_offer(bad) is None, value
    assert continue_offer(Message(code=Code.FETCH)) is None


def test_a_new_request_body_goes_as_a_delta_against_the_old_one():
    old = json.dumps({"conn_id": "room-list", "lists": {"all": {"ranges": [[0, 19]], "timeline_limit": 1}},
                      "extensions": {"to_device": {"enabled": True, "since": "5"}}}).encode()
    new = old.replace(b'"since": "5"', b'"since": "6"')
    payload = body_to_payload(new, "application/json", PROFILE).payload
    delta, crc = delta_payload(payload, old, PROFILE)
    assert len(delta) <= len(payload) // 3, (len(delta), len(payload))
    # the old body as the server holds it: decoded from what it was sent (key order, spacing)
    held = payload_to_body(body_to_payload(old, "application/json", PROFILE).payload, None, PROFILE)[0]
    cbor = read_delta_payload(delta, held, crc, PROFILE)
    assert json.loads(payload_to_body(cbor, options.CF_CBOR, PROFILE)[0]) == json.loads(new)
    with pytest.raises(CodecError, match="CRC"):  # written against another old body
        read_delta_payload(delta, old.replace(b"19", b"29"), crc, PROFILE)


def test_a_room_the_lists_show_is_named_by_its_index_from_the_first_event():
    """A fresh observation's first answers are the lists and the template:
    the rooms they list are known to both ends, so the first event form
    names its room in one byte instead of its 44-B ID."""
    from coap_gateway.push.compact import F_ROOM, encode_event

    ctx = sliding_context(quiet(10))
    assert list(ctx.rooms) == [ROOM]
    data = encode_event(one(11), "1/" + stream_token(10), ctx, TABLE, PRESET)
    assert data is not None and not data[0] & F_ROOM and ROOM.encode() not in data


def test_to_device_events_hold_the_loop_until_the_next_request():
    """Polled again with the same body, Synapse would answer with the same
    to-device events (the body names their old position): the chain says
    to wait for the client's next request instead."""
    c = chain("1/" + stream_token(9))
    assert not c.on_response(ok(quiet(10))).hold  # the template
    batch = quiet(11).replace(b'"to_device":{"next_batch":"1","events":[]}',
                              b'"to_device":{"next_batch":"2","events":[{"type":"m.test","sender":"' + BOB.encode()
                              + b'","content":{"n":0}}]}')
    assert batch != quiet(11)
    step = c.on_response(ok(batch))
    assert isinstance(step, Push) and step.hold
    assert not c.on_response(ok(one(12))).hold  # a room event: the same request goes on
    assert not moves_to_device(batch, SYNC) and not moves_to_device(b"{", SLIDING)
