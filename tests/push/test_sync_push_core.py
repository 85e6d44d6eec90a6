"""Sync push: the shared wire format, both sans-I/O cores, and end to end
(matrix-nio → client gateway → emulated link → server gateway → real Synapse)."""

from __future__ import annotations

import base64
import json
import os
import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.codec.mapping import HttpResponse
from coap_gateway.errors import CodecError, CompressionError, DecompressionBombError
from coap_gateway.push.client import (
    Answer,
    Outcome,
    Plain,
    Register,
    Status,
    SyncPushClientConfig,
    SyncPushState,
    Wait,
)
from coap_gateway.push.format import (
    ENC_CBOR_ASCII,
    ENC_CBOR_UTF8,
    ENC_JSON,
    HEADER_MARK,
    MAX_PARTED,
    PART,
    DeltaState,
    Notification,
    PartBuffer,
    decode_notification,
    encode_body,
    encode_notification,
    expand_template,
    is_empty_sync,
    next_batch_of,
    parse_long_poll,
    split_next_batch,
    split_parts,
)
from coap_gateway.push.server import (
    Fetch,
    Finish,
    Push,
    PushChain,
    ReplayHistory,
    Retry,
    Silent,
    stream_key,
)
from tests.helpers.devices import PROFILE
from tests.helpers.sync_bodies import (
    EMPTY,
    PRESET,
    TABLE,
    empty_body,
    message_body,
    token,
)

# ------------------------------------------------------------ long-polls


@pytest.mark.parametrize("target, eligible", [
    ("/_matrix/client/v3/sync?since=s1_2&timeout=30000", True),
    ("/_matrix/client/r0/sync?timeout=30000&since=s1_2&filter=%7B%7D&set_presence=online", True),
    ("/_matrix/client/v3/sync?since=s1_2&full_state=false&timeout=1", True),
    ("/_matrix/client/v3/sync?timeout=30000", False),  # initial sync
    ("/_matrix/client/v3/sync?since=s1_2&timeout=30000&full_state=true", False),
    ("/_matrix/client/v3/sync?since=s1_2", False),  # no timeout
    ("/_matrix/client/v3/sync?since=s1_2&timeout=-1", False),
    ("/_matrix/client/v3/sync?since=s1_2&timeout=30000&since=s3", False),  # twice
    ("/_matrix/client/v3/sync?since=s1%5F2&timeout=30000", False),  # a token to unescape
    ("/_matrix/client/v3/sync?since=s1_2&timeout=1&access_token=x", False),
    ("/_matrix/client/v3/rooms/!r:hs/messages?since=s1_2&timeout=1", False),
    ("/_matrix/client/v3/sync", False),
])
def test_which_long_polls_are_pushed(target, eligible):
    assert (parse_long_poll("GET", target, PROFILE.routes) is not None) is eligible
    assert parse_long_poll("POST", target, PROFILE.routes) is None


def test_a_stream_is_named_by_everything_but_since_and_timeout():
    a = parse_long_poll("GET", "/_matrix/client/v3/sync?filter=1&since=s1&timeout=30000&set_presence=online",
                        PROFILE.routes)
    b = parse_long_poll("GET", "/_matrix/client/v3/sync?filter=1&since=s7&timeout=0&set_presence=online",
                        PROFILE.routes)
    c = parse_long_poll("GET", "/_matrix/client/v3/sync?filter=2&since=s1&timeout=30000&set_presence=online",
                        PROFILE.routes)
    assert a.params == b.params == ("filter=1", "set_presence=online") != c.params
    assert stream_key("tok", a) == stream_key("tok", b) != stream_key("tok", c) != stream_key("other", a)
    assert (a.since, a.timeout_ms, b.timeout_ms) == ("s1", 30000, 0)
    # the parameters keep their places and their raw text
    assert a.target(since="s9") == "/_matrix/client/v3/sync?filter=1&since=s9&timeout=30000&set_presence=online"
    assert a.target(timeout_ms=0) == "/_matrix/client/v3/sync?filter=1&since=s1&timeout=0&set_presence=online"


# -------------------------------------------------------------- templates


def test_template_is_the_idle_answer_without_its_next_batch():
    template, tok = split_next_batch(EMPTY)
    assert tok == "s9_2_0_1_1_1_1_3_0_1_1_1_1_1"
    assert template.startswith(b'{"next_batch":"","device_one_time_keys_count"')
    assert expand_template(template, tok) == EMPTY  # byte for byte
    assert is_empty_sync(EMPTY) and is_empty_sync(b'{"next_batch":"x","rooms":{"join":{}},"presence":{"events":[]}}')
    body = message_body(token(9), token(10), 1)
    assert not is_empty_sync(body) and next_batch_of(body) == token(10)
    assert not is_empty_sync(b'{"next_batch":"x","to_device":{"events":[{"type":"m.room_key"}]}}')


@pytest.mark.parametrize("body", [
    b'{"next_batch":"a","x":{"next_batch":"b"}}',  # twice: a nested one is not told apart
    b'{"rooms":{}}',
    b'{"next_batch":"with space"}',
    b'{"next_batch":"\\u0073"}',  # an escape inside the token
])
def test_no_template_without_exactly_one_plain_next_batch(body):
    assert split_next_batch(body) is None


def test_a_quoted_next_batch_inside_a_string_is_not_the_key():
    body = b'{"next_batch":"s1","rooms":{"x":{"body":"\\"next_batch\\":\\"s2\\""}}}'
    assert split_next_batch(body) == (b'{"next_batch":"","rooms":{"x":{"body":"\\"next_batch\\":\\"s2\\""}}}', "s1")


# ------------------------------------------------------------ body coding


@pytest.mark.parametrize("body, encoding", [
    (message_body("s1", "s2", 1), ENC_CBOR_ASCII),
    (json.dumps({"next_batch": "s1", "body": "grüße ✓"}, separators=(",", ":")).encode(), ENC_CBOR_ASCII),
    (json.dumps({"next_batch": "s1", "body": "grüße ✓"}, separators=(",", ":"),
                ensure_ascii=False).encode(), ENC_CBOR_UTF8),
    (b'{"next_batch":"s1","v":1.50}', ENC_JSON),  # a float written otherwise than Python would
    (b'{"next_batch": "s1"}', ENC_JSON),  # not compact
    (b'{"a":1,"a":2}', ENC_JSON),  # a duplicated key
    (b'not json', ENC_JSON),
])
def test_bodies_travel_as_cbor_only_when_exact(body, encoding):
    assert encode_body(body, TABLE)[0] == encoding
    n = Notification(body)
    delta_s, delta_c = DeltaState(PRESET), DeltaState(PRESET)
    assert decode_notification(encode_notification(n, "s0", delta_s, TABLE), "s0", delta_c, TABLE) == n


def test_key_order_survives_cbor():
    # canonical CBOR would sort the keys; Synapse's order must come back
    body = b'{"z":1,"type":"m.room.message","a":{"sender":"@a:b","content":{"msgtype":"m.text","body":"x"}}}'
    assert encode_body(body, TABLE)[0] == ENC_CBOR_ASCII


# ---------------------------------------------------------- notifications


def test_a_chain_of_notifications_round_trips_byte_for_byte():
    server, client = DeltaState(PRESET), DeltaState(PRESET)
    template, _ = split_next_batch(EMPTY)
    since = token(9)
    sizes = []
    notes = [Notification(template, template=True)]
    notes += [Notification(message_body(token(9 + i), token(10 + i), i, f"message {i}")) for i in range(6)]
    notes += [Notification(empty_body(16, keys=5), adopt=True)]
    for n in notes:
        payload = encode_notification(n, since, server, TABLE)
        assert decode_notification(payload, since, client, TABLE) == n
        sizes.append(len(payload))
        if not n.template:
            since = next_batch_of(n.body)
    # the common case has no header byte; template and adopt have one
    assert sizes[0] < 16 and all(s < 100 for s in sizes[2:-1])
    print(f"\nnotification payloads: {sizes}")


def test_common_case_costs_no_header_and_headers_cannot_start_deflate():
    n = Notification(message_body(token(9), token(10), 1))
    payload = encode_notification(n, token(9), DeltaState(PRESET), TABLE)
    assert payload[0] & HEADER_MARK != HEADER_MARK
    template = encode_notification(Notification(split_next_batch(EMPTY)[0], template=True), token(9),
                                   DeltaState(PRESET), TABLE)
    assert template[0] & HEADER_MARK == HEADER_MARK


def test_delta_pays_for_consecutive_messages():
    """What each step buys on a one-message sync response (printed with -s)."""
    first = message_body(token(9), token(10), 1)
    second = message_body(token(10), token(11), 2, "see you")
    cbor = encode_body(second, TABLE)[1]
    from coap_gateway.codec.compression import compress

    plain = len(compress(cbor_canonical(second), PROFILE.flate))  # today's response payload
    alone = len(encode_notification(Notification(second), token(10), DeltaState(PRESET), TABLE))
    delta = DeltaState(PRESET)
    encode_notification(Notification(first), token(9), delta, TABLE)
    chained = len(encode_notification(Notification(second), token(10), delta, TABLE))
    print(f"\none-message sync body: JSON {len(second)} B, ordered CBOR {len(cbor)} B, "
          f"CBOR+deflate (plain path) {plain} B, pushed alone {alone} B, pushed after the previous one {chained} B")
    assert chained < alone and chained < plain


def cbor_canonical(body: bytes) -> bytes:
    from coap_gateway.codec import json_cbor

    return json_cbor.json_to_cbor(body, TABLE)


@pytest.mark.parametrize("payload", [bytes([HEADER_MARK | 0x80]) + b"\x03\x00", bytes([HEADER_MARK | 0x21]) + b"\x03\x00",
                                     b"\xff\xff\xff", b"\x03"])
def test_bad_notifications_are_refused(payload):
    with pytest.raises((CodecError, CompressionError)):
        decode_notification(payload, "s1", DeltaState(PRESET), TABLE)


def test_a_deflate_bomb_is_refused():
    from zlib_ng import zlib_ng

    c = zlib_ng.compressobj(9, zlib_ng.DEFLATED, -15, 9, zlib_ng.Z_DEFAULT_STRATEGY, DeltaState(PRESET).dictionary("s1"))
    bomb = c.compress(b"[" + b"0," * 600_000 + b"0]") + c.flush()
    delta = DeltaState(PRESET)
    with pytest.raises(DecompressionBombError):
        decode_notification(bytes([HEADER_MARK | ENC_JSON << 3]) + bomb, "s1", delta, TABLE, max_size=1 << 20)
    assert not delta.recent  # a refused notification leaves the state alone


# ------------------------------------------------------- server: the chain


def chain(since: str = token(9), max_payload: int = 1000) -> PushChain:
    return PushChain(since, TABLE, PRESET, max_payload)


def ok(body: bytes, status: int = 200, headers=()) -> HttpResponse:
    return HttpResponse(status, body, "application/json", list(headers))


def test_chain_pushes_the_template_once_then_stays_silent_on_idle_polls():
    c = chain()
    assert c.poll_timeout(30000) == 0  # learn the template at once
    step = c.on_response(ok(empty_body(9)))
    assert isinstance(step, Push) and step.answered is None
    assert c.template == split_next_batch(EMPTY)[0] and c.poll_timeout(30000) == 30000
    # next_batch moves (other users' activity), nothing else: no push, the poll moves on
    assert isinstance(c.on_response(ok(empty_body(12))), Silent)
    assert (c.head, c.poll_from) == (token(9), token(12))


def test_chain_answers_the_head_even_when_polled_from_further_on():
    c = chain()
    c.on_response(ok(empty_body(9)))
    c.on_response(ok(empty_body(12)))
    body = message_body(token(12), token(13), 1)
    step = c.on_response(ok(body))
    assert isinstance(step, Push) and step.answered == token(9) and step.body == body
    assert c.head == c.poll_from == token(13)


def test_chain_pushes_a_changed_template_as_an_answer_to_adopt():
    c = chain()
    c.on_response(ok(empty_body(9)))
    step = c.on_response(ok(empty_body(10, keys=50)))  # one-time keys uploaded: the client must see it
    assert isinstance(step, Push) and step.answered == token(9)
    assert c.template == split_next_batch(empty_body(10, keys=50))[0] and c.head == token(10)


def test_an_answer_at_the_since_it_answers_is_said_once_and_is_no_step():
    """Synapse's idle answer after keys were uploaded or claimed: new key
    counts, and (no stream moved) next_batch = the since it answers.  Kept
    as the answer to that since, the client gateway answered every later
    poll from it at once (the client spun) and a registration from there
    replayed it without end.  The client must see the counts once — js-sdk
    tops up its one-time keys from them — then wait, with them in its template."""
    server, history = chain(), ReplayHistory()
    state = client()
    p = poll(token(9))
    stream, _ = state.stream(p, "tok")
    gen = state.begin(stream, token(9), 0)
    assert state.on_registered(stream, gen, 0, pushed(server, ok(empty_body(9))), 0) is Outcome.OK
    step = server.on_response(ok(empty_body(9, keys=50)))
    assert isinstance(step, Push) and step.answered is None and step.body is None  # not kept in the history
    assert server.head == server.poll_from == token(9)
    assert server.template == split_next_batch(empty_body(9, keys=50))[0]
    assert state.on_notification(stream, gen, 1, step.payload, 1) is Outcome.OK
    assert state.on_request(stream, p, 2) == Answer(ok(empty_body(9, keys=50), headers=()))
    for now in (3, 4):
        assert state.on_request(stream, p, now) == Wait()  # not the same answer again
    assert state.on_timeout(stream, token(9)).body == empty_body(9, keys=50)
    # news after it is a step like any other, and the chain goes on from it
    news = message_body(token(9), token(10), 1)
    step = server.on_response(ok(news))
    assert isinstance(step, Push) and step.answered == token(9) and step.body == news
    history.put(b"k", step.answered, step.body)
    assert state.on_notification(stream, gen, 2, step.payload, 5) is Outcome.OK
    assert state.on_request(stream, p, 6).response.body == news
    # a registration from token(9) replays the news, and only the news
    again = chain()
    assert isinstance(again.on_replay(history.get(b"k", again.head)), Push) and again.head == token(10)
    assert history.get(b"k", again.head) is None


def test_chain_errors_finish_and_busy_retries():
    c = chain()
    assert isinstance(c.on_response(ok(b'{"errcode":"M_UNKNOWN_TOKEN","soft_logout":true}', 401)), Finish)
    step = c.on_response(ok(b'{"errcode":"M_LIMIT_EXCEEDED"}', 429, [("Retry-After", "7")]))
    assert isinstance(step, Retry) and step.delay == 7
    assert [c.on_response(ok(b"", 502)).delay for _ in range(3)] == [2, 4, 8]
    assert isinstance(c.on_unreachable(), Retry)
    assert isinstance(c.on_response(ok(b'{"no":"next_batch"}')), Finish)


def test_chain_too_large_to_push_is_fetched():
    c = chain(max_payload=40)
    c.template = b"x"
    big = message_body(token(9), token(10), 1, "x" * 400 + str(uuid.uuid4()) * 10)
    assert isinstance(c.on_response(ok(big)), Fetch)
    assert c.head == token(9)  # not moved: the client polls it plainly


def registered(state: SyncPushState, since: str = token(9)):
    """A stream registered from ``since`` whose registration was answered
    "registered, nothing yet": (stream, its poll, the generation)."""
    p = poll(since)
    stream, _ = state.stream(p, "tok")
    gen = state.begin(stream, since, 0)
    state.on_registered(stream, gen, 0, b"", 0)
    return stream, p, gen


def test_split_parts_byte_by_byte():
    assert split_parts(b"abcd", 4) == [b"abcd"]  # fits: one notification, no marker
    # PART + 3 bytes, PART + 3 bytes, then the rest (1 to 4 bytes) bare
    assert split_parts(b"abcdefghij", 4) == [b"\xc6abc", b"\xc6def", b"ghij"]
    assert split_parts(b"abcdefghijk", 4) == [b"\xc6abc", b"\xc6def", b"\xc6ghi", b"jk"]
    assert PART == 0xC6 and PART & HEADER_MARK == HEADER_MARK
    with pytest.raises(CodecError):
        split_parts(b"x" * (MAX_PARTED + 1), 1000)
    with pytest.raises(ValueError):
        split_parts(b"abc", 1)


def test_the_last_piece_never_begins_like_a_part():
    """The client takes the first notification that is not a part as the last
    piece: a rest that began with C6 (deflate output does, once in 256) was
    read as one more part, and the next notification joined to it."""
    # the rest would be C6 65 66: its C6 goes as one more part
    assert split_parts(b"abc\xc6ef", 4) == [b"\xc6abc", b"\xc6\xc6", b"ef"]
    assert split_parts(b"abc\xc6\xc6\xc6\xc6f", 4) == [b"\xc6abc", b"\xc6\xc6\xc6\xc6", b"\xc6\xc6", b"f"]
    buffer = PartBuffer()
    assert [buffer.feed(p) for p in split_parts(b"abc\xc6ef", 4)] == [None, None, b"abc\xc6ef"]
    assert buffer.feed(b"next") == b"next"  # nothing left over for the next notification
    with pytest.raises(CodecError):  # every byte after the parts is C6: no last piece can be told apart
        split_parts(b"abc\xc6\xc6", 4)
    with pytest.raises(CodecError):  # a whole payload never begins so (header mark and reserved bits)
        split_parts(b"\xc6abc", 10)


#: payload bytes, C6 about every other one (uniform bytes seldom hit the boundary)
C6_RICH = st.lists(st.one_of(st.just(PART), st.integers(0, 255)), min_size=1, max_size=300).map(bytes)


@settings(max_examples=400, deadline=None)
@given(C6_RICH.filter(lambda b: b[0] != PART), st.integers(2, 40),
       st.binary(min_size=1, max_size=20).filter(lambda b: b[0] != PART))
def test_parts_always_join_back_to_the_payload_and_nothing_else(payload, frame, after):
    try:
        parts = split_parts(payload, frame)
    except CodecError:
        assert payload.rstrip(bytes([PART])) != payload  # only a payload ending in C6 bytes
        return
    assert all(1 <= len(p) <= frame for p in parts)
    buffer = PartBuffer()
    assert [buffer.feed(p) for p in parts] == [None] * (len(parts) - 1) + [payload]
    assert buffer.feed(after) == after and not buffer.pending


def test_part_buffer_joins_in_order_and_refuses_bad_shapes():
    parts = PartBuffer()
    assert parts.feed(b"whole") == b"whole" and not parts.pending
    assert [parts.feed(p) for p in split_parts(b"abcdefghijk", 4)] == [None, None, None, b"abcdefghijk"]
    assert not parts.pending and not parts.pieces
    for bad in ([b"\xc6"], [b"\xc6ab", b""]):  # an empty part; parts, then an empty last piece
        parts = PartBuffer()
        with pytest.raises(CodecError):
            for p in bad:
                parts.feed(p)
    parts = PartBuffer(limit=5)  # bounded: a hostile server cannot make the client buffer more
    parts.feed(b"\xc6abc")
    with pytest.raises(CodecError):
        parts.feed(b"\xc6def")
    parts.clear()
    assert parts.feed(b"ab") == b"ab"


def test_chain_too_large_for_one_frame_goes_in_parts_to_a_client_that_takes_them():
    c = PushChain(token(9), TABLE, PRESET, 40, parts=True)
    c.template = b"x"
    big = message_body(token(9), token(10), 1, "x" * 400 + str(uuid.uuid4()) * 10)
    step = c.on_response(ok(big))
    assert isinstance(step, Push) and len(step.parts) >= 3
    assert b"".join(p[1:] for p in step.parts[:-1]) + step.parts[-1] == step.payload
    assert all(len(p) <= 40 for p in step.parts) and c.head == token(10)
    # the client joins them and reads the answer exactly
    state = client()
    stream, _, gen = registered(state)  # "registered", the parts follow
    stream.template = b"x"
    for n, part in enumerate(step.parts, start=1):
        assert state.on_notification(stream, gen, n, part, 0) is Outcome.OK
    assert stream.answers[token(9)].body == big and stream.head == token(10) and not stream.parts.pending
    # longer than parts may carry: fetched plainly
    huge = message_body(token(10), token(11), 2, base64.b64encode(os.urandom(MAX_PARTED)).decode())
    assert isinstance(c.on_response(ok(huge)), Fetch)


def test_an_answer_whose_rest_began_with_c6_reaches_the_client_exactly():
    """A real answer and a frame size where the rest after full pieces
    begins with C6: the client joins the answer byte-exact and reads the
    next notification on its own (before the fix, it joined the two and the
    push was undecodable)."""
    found = None
    for seed in range(400):
        rnd = random.Random(seed)
        text = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(300))
        big = message_body(token(9), token(10), 1, text)
        payload = encode_notification(Notification(big), token(9), DeltaState(PRESET, 2), TABLE)
        for frame in range(40, 200):
            cut = -(-(len(payload) - frame) // (frame - 1)) * (frame - 1)
            if len(payload) > frame and payload[cut] == PART:
                found = big, frame
                break
        if found:
            break
    assert found is not None
    big, frame = found
    server = PushChain(token(9), TABLE, PRESET, frame, parts=True)
    server.template = b"x"
    step = server.on_response(ok(big))
    assert isinstance(step, Push) and step.parts[-1][:1] != bytes([PART])
    state = client()
    stream, _, gen = registered(state)
    stream.template = b"x"
    for n, part in enumerate(step.parts, start=1):
        assert state.on_notification(stream, gen, n, part, 0) is Outcome.OK
    after = message_body(token(10), token(11), 2)
    assert state.on_notification(stream, gen, len(step.parts) + 1, pushed(server, ok(after)), 0) is Outcome.OK
    assert [a.body for a in stream.answers.values()] == [big, after] and state.undecodable == 0


def test_client_drops_parts_it_cannot_finish():
    state = client()
    stream, _, gen = registered(state)
    assert state.on_notification(stream, gen, 1, b"\xc6abc", 0) is Outcome.OK and stream.parts.pending
    # a gap in the Observe numbers: the observation is lost, and the parts with it
    assert state.on_notification(stream, gen, 3, b"def", 0) is Outcome.LOST
    assert stream.status is Status.IDLE and not stream.parts.pending
    # a new registration starts with an empty buffer; a bad last piece is undecodable, not a crash
    gen = state.begin(stream, token(9), 0)
    state.on_registered(stream, gen, 0, b"", 0)
    state.on_notification(stream, gen, 1, b"\xc6abc", 0)
    assert state.on_notification(stream, gen, 2, b"garbage", 0) is Outcome.LOST
    assert state.undecodable == 1


def test_history_is_bounded():
    h = ReplayHistory(per_stream=2, max_streams=2, max_bytes=100)
    for i in range(3):
        h.put(b"a", f"s{i}", b"x" * 10)
    assert h.get(b"a", "s0") is None and h.get(b"a", "s2") == b"x" * 10 and len(h) == 2
    h.put(b"b", "s0", b"y")
    h.put(b"c", "s0", b"z")
    assert h.get(b"a", "s1") is None and h.get(b"c", "s0") == b"z"
    h.put(b"c", "s1", b"w" * 95)
    assert h.bytes <= 100


def test_a_device_cycling_streams_pushes_out_its_own_answers_not_others():
    """A hostile device registering stream after stream (a new filter each
    time) with large answers: the history drops its own oldest first, and an
    honest device's answer — a to-device message it may need replayed after
    a lost notification — stays."""
    h = ReplayHistory(per_stream=4, max_streams=100, max_bytes=1000, max_bytes_per_owner=300)
    h.put(b"honest", "s1", b"h" * 50, owner="alice")
    for i in range(50):
        h.put(b"filter-%d" % i, "s1", b"x" * 100, owner="mallory")
    assert h.get(b"honest", "s1") == b"h" * 50
    assert sum(h.get(b"filter-%d" % i, "s1") is not None for i in range(50)) == 3  # its share: 300 B
    assert h.bytes == 350
    # the same stream from the device's new process (a restart): its bytes go with it
    h.put(b"honest", "s2", b"h" * 60, owner="alice-2")
    assert h.get(b"honest", "s1") == b"h" * 50 and h.bytes == 410
    for i in range(4):
        h.put(b"other-%d" % i, "s1", b"y" * 100, owner="alice")  # alice's old process held nothing more
    assert h.get(b"honest", "s1") == b"h" * 50


# ------------------------------------------------- client: streams, caches


def client(**config) -> SyncPushState:
    return SyncPushState(PROFILE, SyncPushClientConfig(**config))


def poll(since: str, timeout: int = 30000, extra: str = "") -> object:
    return parse_long_poll("GET", f"/_matrix/client/v3/sync?since={since}&timeout={timeout}{extra}", PROFILE.routes)


def pushed(c: PushChain, response: HttpResponse) -> bytes:
    step = c.on_response(response)
    assert isinstance(step, Push)
    return step.payload


def test_client_and_server_cores_agree_on_a_chain():
    """Server chain → payloads → client state: every answer the client gets
    is byte for byte what Synapse said, and idle polls come from the template."""
    state = client()
    server = chain()
    p = poll(token(9))
    stream, _ = state.stream(p, "tok")
    assert state.on_request(stream, p, 0) == Register(token(9))
    gen = state.begin(stream, token(9), 0)
    assert state.on_registered(stream, gen, 0, pushed(server, ok(empty_body(9))), 0) is Outcome.OK
    assert state.on_request(stream, p, 1) == Wait()
    assert state.on_timeout(stream, token(9)).body == empty_body(9)
    silent = server.on_response(ok(empty_body(11)))
    assert isinstance(silent, Silent)
    bodies = [message_body(token(11 + i), token(12 + i), i) for i in range(3)]
    for i, body in enumerate(bodies):
        assert state.on_notification(stream, gen, 1 + i, pushed(server, ok(body)), 2) is Outcome.OK
    # the client catches up: each since is answered with exactly what Synapse said
    got = []
    since = token(9)
    for _ in bodies:
        action = state.on_request(stream, poll(since), 3)
        assert isinstance(action, Answer)
        got.append(action.response.body)
        since = next_batch_of(action.response.body)
    assert got == bodies
    assert state.on_request(stream, poll(since), 4) == Wait() and not stream.answers


def test_client_ignores_duplicates_and_notices_a_gap():
    state = client()
    server = chain()
    p = poll(token(9))
    stream, _ = state.stream(p, "tok")
    gen = state.begin(stream, token(9), 0)
    state.on_registered(stream, gen, 0, pushed(server, ok(empty_body(9))), 0)
    first = pushed(server, ok(message_body(token(9), token(10), 1)))
    assert state.on_notification(stream, gen, 1, first, 0) is Outcome.OK
    assert state.on_notification(stream, gen, 1, first, 0) is Outcome.OK  # a duplicate: no effect
    assert list(stream.answers) == [token(9)]
    third = pushed(server, ok(message_body(token(10), token(11), 2)))
    assert state.on_notification(stream, gen, 3, third, 0) is Outcome.LOST  # 2 went missing
    assert stream.status is Status.IDLE
    # an old observation's late events are ignored
    assert state.on_notification(stream, gen - 1, 4, third, 0) is Outcome.OK


def test_a_first_answer_that_is_not_observe_0_is_never_decoded():
    """The registration's answer (Observe 0: the template here) is lost; the
    client retransmits its registration, and the server's next notification
    (Observe 1, deflated against the template it pushed) overtakes the
    re-sent answer and reaches aiocoap first, as the request's response.
    Measured in 100bps-lossy (seed 3): decoded against a fresh dictionary it
    read as invalid CBOR — or, worse, as other valid bytes.  It must not be
    decoded; the stream registers again and the history replays."""
    from aiocoap import Message
    from aiocoap.numbers.codes import Code

    state = client()
    server = chain()
    p = poll(token(9))
    stream, _ = state.stream(p, "tok")
    gen = state.begin(stream, token(9), 0)
    assert server.next_observe() == 0
    lost = pushed(server, ok(empty_body(9)))  # the template: never arrives
    assert lost and server.next_observe() == 1
    body = message_body(token(9), token(10), 1)
    overtaking = Message(code=Code.CONTENT, observe=1, payload=pushed(server, ok(body)))
    first = state.on_first_answer(stream, gen, overtaking, 1)
    assert not first.observing and first.outcome is Outcome.LOST and not first.plain
    assert stream.status is Status.IDLE and not stream.answers and stream.template is None
    assert state.on_request(stream, p, 2) == Register(token(9))  # at once, not declined
    # the server's new chain replays the answer to token(9) as Observe 0: it reads exactly
    replayed = chain()
    step = replayed.on_replay(body)
    assert isinstance(step, Push) and replayed.next_observe() == 0
    gen = state.begin(stream, token(9), 3)
    answer = Message(code=Code.CONTENT, observe=0, payload=step.payload)
    assert state.on_first_answer(stream, gen, answer, 3).observing
    assert state.on_request(stream, p, 4) == Answer(HttpResponse(200, body, "application/json"))


def test_a_notification_before_the_first_answer_is_read_is_kept_for_after_it():
    """The registration's answer has arrived but its coroutine has not run
    yet when notification 1 comes (a fast link, a busy machine: seen in the
    suite as a W2 of 191 B — the dropped notification broke the chain, the
    next made a gap, the stream registered again)."""
    state = client()
    server = chain()
    p = poll(token(9))
    stream, _ = state.stream(p, "tok")
    gen = state.begin(stream, token(9), 0)
    first = pushed(server, ok(empty_body(9)))
    body = message_body(token(9), token(10), 1)
    second = pushed(server, ok(body))
    assert state.on_notification(stream, gen, 1, second, 0) is Outcome.OK  # kept, not yet applied
    assert not stream.answers and stream.status is Status.REGISTERING
    assert state.on_registered(stream, gen, 0, first, 0) is Outcome.OK
    assert stream.observe == 1 and stream.early == []
    assert state.on_request(stream, p, 1) == Answer(HttpResponse(200, body, "application/json"))


def test_client_plain_for_timeout_zero_and_after_a_decline():
    state = client(decline_for=60)
    p = poll(token(9))
    stream, _ = state.stream(p, "tok")
    assert state.on_request(stream, poll(token(9), timeout=0), 0) == Plain()
    gen = state.begin(stream, token(9), 0)
    state.on_declined(stream, gen, 0)
    assert state.on_request(stream, p, 10) == Plain()
    assert state.on_request(stream, p, 61) == Register(token(9))


def test_client_errors_are_said_once_and_large_answers_fetched_plainly():
    state = client()
    stream, p, gen = registered(state)
    state.on_final(stream, gen, ok(b'{"errcode":"M_UNKNOWN_TOKEN"}', 401))
    assert state.on_request(stream, p, 1).response.status == 401
    assert state.on_request(stream, p, 2) == Register(token(9))
    gen = state.begin(stream, token(9), 2)
    state.on_final(stream, gen, None)
    assert state.on_request(stream, p, 3) == Plain()


def test_client_pauses_when_nobody_takes_the_answers_and_cancels_idle_streams():
    state = client(max_answers=2, min_idle=30)
    server = chain()
    p = poll(token(9))
    stream, _ = state.stream(p, "tok")
    state.on_request(stream, p, 0)
    gen = state.begin(stream, token(9), 0)
    state.on_registered(stream, gen, 0, pushed(server, ok(empty_body(9))), 0)
    outcomes = [state.on_notification(stream, gen, 1 + i, pushed(server, ok(message_body(token(9 + i), token(10 + i), i))), 1)
                for i in range(3)]
    assert outcomes == [Outcome.OK, Outcome.OK, Outcome.PAUSE]
    assert state.idle(60) == []  # 30 s minimum, 3 × 30 s timeout
    assert state.idle(91) == [stream]
    stream.last_heard = 0
    assert state.due_checks(10) == []  # default: an hour
    assert client(check_interval=5).due_checks(10) == []


def test_client_streams_are_bounded():
    state = client(max_streams=2)
    evicted = []
    for i in range(3):
        _, gone = state.stream(poll(token(9), extra=f"&filter={i}"), "tok")
        evicted += gone
    assert len(state.streams) == 2 and len(evicted) == 1
