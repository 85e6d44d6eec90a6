"""What a hostile or broken peer can send in the compact push forms (sans-I/O).

A notification, an echo fold, an event form or a delta registration body
comes from an authenticated but possibly hostile (or buggy) peer.  Whatever
its bytes, reading it either gives a body or raises GatewayError (CodecError,
or CompressionError for deflate that is corrupt or a bomb) — which the shells
turn into "register again" or "resend" — never another exception (a crashed
loop) and never unbounded work.  Mutations of valid forms reach
deep into each reader; the seed makes every run the same.
"""

from __future__ import annotations

import copy
import json
import random

import pytest

from coap_gateway.errors import GatewayError
from coap_gateway.push.compact import decode_event, encode_event
from coap_gateway.push.echo import EchoContext, fold, unfold
from coap_gateway.push.format import (
    SLIDING,
    SYNC,
    DeltaState,
    Notification,
    decode_notification,
    delta_payload,
    encode_notification,
    read_delta_payload,
)
from coap_gateway.codec.payload import body_to_payload
from tests.helpers.devices import PROFILE
from tests.helpers.sync_bodies import PRESET, TABLE, empty_body, message_body, token
from tests.helpers.echo_bodies import SENDER, SENT, synapse_echo
from tests.helpers.echo_bodies import context as echo_context
from tests.helpers.sliding_bodies import ME, one, quiet, sent, stream_token

ROUNDS = 1500


def mutations(data: bytes, rng: random.Random):
    """Flipped bytes, cut ends, added bytes, and all three."""
    for _ in range(ROUNDS):
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(3)
            if kind == 0 and out:
                out[rng.randrange(len(out))] = rng.randrange(256)
            elif kind == 1 and out:
                del out[rng.randrange(len(out)):]
            else:
                at = rng.randrange(len(out) + 1)
                out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        yield bytes(out)


def survives(read, data: bytes) -> None:
    try:
        read(data)
    except GatewayError:
        pass


def sliding_ctx() -> EchoContext:
    ctx = EchoContext(sliding=True)
    for body in (quiet(10), one(11)):
        ctx.note(body)
    return ctx


@pytest.mark.parametrize("sliding", [False, True], ids=["sync", "sliding"])
def test_a_mutated_fold_gives_a_body_or_a_codec_error(sliding):
    rng = random.Random(1)
    if sliding:
        ctx, since, body, what = sliding_ctx(), "1/" + stream_token(11), one(12, ME, "t12"), sent(12)
    else:
        ctx, since, what = echo_context(last_ts=1796372819000, sender=SENDER, counts=(0, 0)), token(10), SENT
        body = synapse_echo(since, token(11))
    data = fold(body, since, what, ctx, 1)
    assert data is not None and unfold(data, since, what, ctx, 1) == body
    for mutated in mutations(data, rng):
        survives(lambda d: unfold(d, since, what, ctx, 1), mutated)


@pytest.mark.parametrize("sliding", [False, True], ids=["sync", "sliding"])
def test_a_mutated_event_form_gives_a_body_or_a_codec_error(sliding):
    rng = random.Random(2)
    if sliding:
        ctx, since, body = sliding_ctx(), "1/" + stream_token(11), one(12)
    else:
        ctx = EchoContext()
        ctx.note(empty_body(1))
        ctx.note(message_body(token(1), token(2), 1))
        since, body = token(2), message_body(token(2), token(3), 2)
    dictionary = DeltaState(PRESET).dictionary(since)
    data = encode_event(body, since, ctx, TABLE, dictionary)
    assert data is not None
    for mutated in mutations(data, rng):
        survives(lambda d: decode_event(d, since, ctx, TABLE, dictionary), mutated)


@pytest.mark.parametrize("kind", [SYNC, SLIDING], ids=["sync", "sliding"])
def test_a_mutated_notification_gives_a_body_or_a_codec_error(kind):
    rng = random.Random(3)
    if kind is SLIDING:
        bodies, since = [quiet(10), one(11), one(12)], "1/" + stream_token(11)
    else:
        bodies = [empty_body(1), message_body(token(1), token(2), 1), message_body(token(2), token(3), 2)]
        since = token(2)
    server, client = DeltaState(PRESET, kind=kind), DeltaState(PRESET, kind=kind)
    for body in bodies[:-1]:  # both ends in step: the mutations reach the deep paths
        payload = encode_notification(Notification(body), since, server, TABLE, kind)
        assert decode_notification(payload, since, client, TABLE, kind=kind).body == body
    payload = encode_notification(Notification(bodies[-1]), since, server, TABLE, kind)
    assert decode_notification(payload, since, copy.deepcopy(client), TABLE, kind=kind).body == bodies[-1]
    for mutated in mutations(payload, rng):
        survives(lambda d: decode_notification(d, since, copy.deepcopy(client), TABLE, kind=kind), mutated)


def test_a_mutated_delta_body_gives_cbor_or_a_codec_error():
    rng = random.Random(4)
    old = json.dumps({"conn_id": "c", "lists": {"all": {"ranges": [[0, 19]]}}}).encode()
    new = old.replace(b"19", b"39")
    payload = body_to_payload(new, "application/json", PROFILE).payload
    delta, crc = delta_payload(payload, old, PROFILE)
    for mutated in mutations(delta, rng):
        survives(lambda d: read_delta_payload(d, old, crc, PROFILE), mutated)
    for mutated in mutations(payload, rng):  # what the client gateway writes from: None when it cannot
        survives(lambda d: delta_payload(d, old, PROFILE), mutated)
