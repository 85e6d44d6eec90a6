"""A notification that is one event, sent as its fields (push.compact):
byte layout, exactness, what is never sent so, what a client refuses, and
both ends of a chain in step through such pushes."""

from __future__ import annotations

import json

import pytest

from coap_gateway.codec import HttpResponse
from coap_gateway.errors import CodecError
from coap_gateway.push import PushChain, SyncPushState
from coap_gateway.push.compact import (
    COUNTS_GIVEN,
    COUNTS_PLUS_ONE,
    COUNTS_SHIFT,
    F_ROOM,
    F_SENDER,
    F_TYPE,
    decode_event,
    encode_event,
)
from coap_gateway.push.echo import EchoContext
from coap_gateway.push.format import ENC_EVENT, FIRST_OBSERVE, H_ENCODING_SHIFT, HEADER_MARK, DeltaState
from tests.helpers.sync_bodies import PRESET, PROFILE, ROOM, TABLE, empty_body, message_body, token

DICTIONARY = DeltaState(PRESET).dictionary(token(2))  # what a notification's deflate would use


def warm_context() -> EchoContext:
    """A chain that has shown one message in ROOM from @alice:localhost."""
    ctx = EchoContext()
    ctx.note(empty_body(1))
    ctx.note(message_body(token(1), token(2), 1))
    return ctx


def test_a_warm_message_is_its_fields_the_id_and_the_content():
    ctx = warm_context()
    body = message_body(token(2), token(3), 2)  # the next one: count 1 → 2, ts +1 s, age 34
    data = encode_event(body, token(2), ctx, TABLE, DICTIONARY)
    assert data is not None
    flags = data[0]
    assert flags == COUNTS_PLUS_ONE << COUNTS_SHIFT  # sender and room by index, m.room.message
    # ts +1000 ms (2 B), age 34, s2 → s3, sender #0, room #0
    assert data[1:7] == b"\xe8\x07" + b"\x22" + b"\x02" + b"\x00" + b"\x00"
    doc = json.loads(body)
    event_id = doc["rooms"]["join"][ROOM]["timeline"]["events"][0]["event_id"]
    import base64
    assert data[7:39] == base64.urlsafe_b64decode(event_id[1:] + "=")
    assert decode_event(data, token(2), ctx, TABLE, DICTIONARY) == body
    assert len(data) < 60


def test_new_senders_rooms_types_and_counts_are_given():
    ctx = warm_context()
    doc = json.loads(message_body(token(2), token(3), 7))
    section = doc["rooms"]["join"].pop(ROOM)
    event = section["timeline"]["events"][0]
    event["sender"], event["type"] = "@carol:localhost", "m.room.notice"
    doc["rooms"]["join"]["!other:localhost"] = section
    body = json.dumps(doc, separators=(",", ":")).encode()
    data = encode_event(body, token(2), ctx, TABLE, DICTIONARY)
    assert data is not None
    assert data[0] == F_SENDER | F_ROOM | F_TYPE | COUNTS_GIVEN << COUNTS_SHIFT
    assert decode_event(data, token(2), ctx, TABLE, DICTIONARY) == body


@pytest.mark.parametrize("change", [
    lambda d: d["rooms"]["join"][ROOM]["timeline"]["events"][0]["unsigned"].update(transaction_id="t.1"),
    lambda d: d["rooms"]["join"][ROOM]["timeline"]["events"].append(
        dict(d["rooms"]["join"][ROOM]["timeline"]["events"][0])),
    lambda d: d["rooms"]["join"][ROOM]["ephemeral"]["events"].append({"type": "m.typing"}),
    lambda d: d.update(to_device={"events": []}),
    lambda d: d["rooms"]["join"][ROOM]["timeline"]["events"][0].update(event_id="$short"),
    lambda d: d["rooms"]["join"][ROOM]["timeline"]["events"][0].update(origin_server_ts=1),  # older than seen
])
def test_anything_but_one_plain_event_is_not_sent_as_fields(change):
    doc = json.loads(message_body(token(2), token(3), 2))
    change(doc)
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert encode_event(body, token(2), warm_context(), TABLE, DICTIONARY) is None


def test_a_client_refuses_what_it_cannot_rebuild():
    ctx = warm_context()
    data = encode_event(message_body(token(2), token(3), 2), token(2), ctx, TABLE, DICTIONARY)
    assert data is not None
    for bad, reason in ((b"", "empty"), (bytes([0x40]) + data[1:], "not valid"),
                        (bytes([0x06]) + data[1:], "not valid"), (data[:10], "event ID")):
        with pytest.raises(CodecError, match=reason):
            decode_event(bad, token(2), ctx, TABLE, DICTIONARY)
    with pytest.raises(CodecError, match="never showed"):
        decode_event(data[:5] + b"\x05" + data[6:], token(2), ctx, TABLE, DICTIONARY)  # sender #5
    with pytest.raises(CodecError, match="before any answer"):
        decode_event(data, token(2), EchoContext(), TABLE, DICTIONARY)


def test_both_ends_of_a_chain_agree_through_event_forms():
    server = PushChain(token(0), TABLE, PRESET, 1024)
    client = SyncPushState(PROFILE)
    poll = client.classify("GET", f"/_matrix/client/v3/sync?since={token(0)}&timeout=30000", "tok")
    stream, _ = client.stream(poll, "tok")
    generation = client.begin(stream, token(0), 0.0)
    first = server.on_response(HttpResponse(200, empty_body(0)))
    assert client.on_registered(stream, generation, server.next_observe(), first.payload, 0.0).value == "ok"
    header = bytes([HEADER_MARK | ENC_EVENT << H_ENCODING_SHIFT])
    forms = 0
    for n in range(1, 6):
        body = message_body(token(n - 1), token(n), n, text=f"message number {n}")
        push = server.on_response(HttpResponse(200, body))
        forms += push.payload.startswith(header)
        assert client.on_notification(stream, generation, server.next_observe(), push.payload, 0.0).value == "ok"
        assert stream.answers[token(n - 1)].body == body
    assert forms >= 4  # the first message has no sender or room to point at yet: deflated whole


def test_the_delta_dictionary_advances_the_same_on_both_ends():
    from coap_gateway.push.format import Notification, decode_notification, encode_notification, split_next_batch

    a, b = DeltaState(PRESET), DeltaState(PRESET)
    template = split_next_batch(empty_body(0))[0]
    payload = encode_notification(Notification(template, template=True), token(0), a, TABLE)
    assert decode_notification(payload, token(0), b, TABLE).body == template
    for n in range(1, 5):
        body = message_body(token(n - 1), token(n), n)
        payload = encode_notification(Notification(body), token(n - 1), a, TABLE)
        assert decode_notification(payload, token(n - 1), b, TABLE).body == body
        assert a.dictionary(token(n)) == b.dictionary(token(n))
        assert (a.echo.last_ts, a.echo.counts, a.echo.senders) == (b.echo.last_ts, b.echo.counts, b.echo.senders)
    assert payload[0] == HEADER_MARK | ENC_EVENT << H_ENCODING_SHIFT
    assert FIRST_OBSERVE == 0


def encrypted_body(since: str, next_batch: str, n: int, session: str = "W6vQAD8S1WXSlENDC5VqCesWM/BS/T3Pf+MgkgMaeK8") -> bytes:
    """Synapse's answer carrying one Megolm message of ``session`` (its ciphertext differs each time)."""
    import base64
    import hashlib
    doc = json.loads(message_body(since, next_batch, n))
    event = doc["rooms"]["join"][ROOM]["timeline"]["events"][0]
    ciphertext = b"".join(hashlib.sha256(b"%d-%d" % (n, i)).digest() for i in range(6))  # 192 B, incompressible
    event["type"] = "m.room.encrypted"
    event["content"] = {"algorithm": "m.megolm.v1.aes-sha2",
                        "ciphertext": base64.b64encode(ciphertext).decode().rstrip("="),
                        "device_id": "BEGETAUIVV", "sender_key": "fdIwIIi56Iuz6T+f6eywCdsRQ9Zxk1KAERve2uaxLwA",
                        "session_id": session}
    return json.dumps(doc, separators=(",", ":")).encode()


def test_a_megolm_session_is_remembered_past_the_last_two_bodies():
    """A session's sender key, session ID and device stay in the chain's
    dictionary (``EchoContext.sessions``) while other pushes come between two
    of its messages: the second costs its ciphertext, not the session again."""
    from coap_gateway.push.format import Notification, decode_notification, encode_notification

    bodies = [encrypted_body(token(1), token(2), 1), message_body(token(2), token(3), 2, "a receipt-sized line"),
              message_body(token(3), token(4), 3, "and another one"), encrypted_body(token(4), token(5), 4)]
    server, client, forgetful = (DeltaState(PRESET) for _ in range(3))
    for state in (server, client, forgetful):
        state.echo.note(empty_body(1))
    sizes = []
    for i, body in enumerate(bodies):
        since = token(i + 1)
        if i == len(bodies) - 1:
            forgetful.echo.sessions.clear()  # as before: the session only in the last two bodies
            without = len(encode_notification(Notification(body), since, forgetful, TABLE))
        else:
            encode_notification(Notification(body), since, forgetful, TABLE)
        payload = encode_notification(Notification(body), since, server, TABLE)
        sizes.append(len(payload))
        got = decode_notification(payload, since, client, TABLE)
        assert got is not None and got.body == body
    assert list(server.echo.sessions) == list(client.echo.sessions) and len(server.echo.sessions) == 1
    assert sizes[-1] <= without - 50, (sizes, without)
    print(f"\nMegolm message after two other pushes: {sizes[-1]} B (without the session memory: {without} B)")


def test_the_session_memory_is_bounded():
    from coap_gateway.push.echo import MAX_SESSIONS, session_bytes

    ctx, seen = EchoContext(), []
    for n in range(MAX_SESSIONS + 3):
        body = encrypted_body(token(n), token(n + 1), n + 1, session=f"{n:043d}")
        ctx.note(body)
        seen.append(session_bytes(json.loads(body)["rooms"]["join"][ROOM]["timeline"]["events"][0]))
    assert list(ctx.sessions) == seen[-MAX_SESSIONS:]  # the most recent, least recent first
    ctx.note(encrypted_body(token(20), token(21), 21, session=f"{3:043d}"))  # seen again: moves to the end
    assert list(ctx.sessions) == seen[4:] + [seen[3]]
    # a content that is not a Megolm message's few fields is not remembered
    crafted = {"content": {"ciphertext": "x", **{f"k{i}": "v" * 100 for i in range(40)}}}
    assert session_bytes(crafted) == b""
    assert session_bytes({"content": {"ciphertext": 5, "sender_key": "k"}}) == b""
    assert session_bytes({"content": {"ciphertext": "c", "device_id": "D", "long": "x" * 200}}) == b"\x61D"


def test_a_type_the_chain_showed_is_named_by_its_index():
    """m.room.encrypted (nearly every private room) is 17 B as text; once the
    chain showed it, an empty text and its index stand for it."""
    ctx = warm_context()
    first = encrypted_body(token(2), token(3), 2)
    cold = encode_event(first, token(2), ctx, TABLE, DICTIONARY)
    assert cold is not None and b"m.room.encrypted" in cold
    ctx.note(first)
    body = encrypted_body(token(3), token(4), 3)
    data = encode_event(body, token(3), ctx, TABLE, DICTIONARY)
    assert data is not None and data[0] & F_TYPE and b"m.room.encrypted" not in data
    assert len(data) <= len(cold) - 14
    assert decode_event(data, token(3), ctx, TABLE, DICTIONARY) == body
    forgot = warm_context()
    forgot.types.clear()
    with pytest.raises(CodecError, match="never showed"):  # an index the chain does not have
        decode_event(data, token(3), forgot, TABLE, DICTIONARY)
