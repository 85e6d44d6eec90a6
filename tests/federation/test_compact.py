"""The compact federation transaction, byte by byte (issue 12, item 2; sans-I/O).

The vectors are a real transaction stock Synapse sent (room version 12) and
the answer it got: the event ID this module computes must be Synapse's, the
compact bytes must be the frozen ones, and what gateway B rebuilds must be
canonically the body A signed, under the very X-Matrix header A sent.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from coap_gateway.codec import MAX_REQUEST_BODY, HttpResponse, json_cbor, load_profile
from coap_gateway.errors import CodecError
from coap_gateway.federation import FederationRequest
from coap_gateway.federation.compact import (
    HASH_CHECK,
    MIN_REFERENCE,
    P_HASH,
    KnownIds,
    ReceivedTransaction,
    SentTransaction,
    Unresolved,
    accepted_answer,
    answer_to_compact,
    canonical_json,
    content_hash,
    decode_send,
    encode_send,
    event_id,
    id_bytes,
    is_accepted,
    is_compact_send,
    server_keys,
)

PROFILE = load_profile("lb3")
VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "federation-compact.json").read_text())
ORIGIN, DESTINATION = VECTORS["origin"], VECTORS["destination"]
SENT_AT, RECEIVED_AT = VECTORS["sent_at_ms"], VECTORS["received_at_ms"]
KEY = "a_IOlN"


def real_request(body: dict | None = None, authorization: str | None = None) -> FederationRequest:
    raw = json.dumps(body).encode() if body is not None else VECTORS["request"]["body"].encode()
    return FederationRequest("PUT", VECTORS["request"]["target"], raw, "application/json",
                             [authorization or VECTORS["request"]["authorization"]])


def real_body() -> dict:
    return json.loads(VECTORS["request"]["body"])


def both_know(*values: object) -> tuple[KnownIds, KnownIds]:
    a, b = KnownIds(), KnownIds()
    for known in (a, b):
        known.learn(list(values))
    return a, b


def cross(req: FederationRequest, sender: KnownIds | None = None, receiver: KnownIds | None = None, *,
          keys: frozenset[str] = frozenset(), now_a: int = SENT_AT, now_b: int = RECEIVED_AT
          ) -> tuple[Message, FederationRequest, ReceivedTransaction, SentTransaction]:
    encoded = encode_send(req, PROFILE, origin=ORIGIN, destination=DESTINATION, known=sender, now_ms=now_a,
                          known_keys=keys)
    assert encoded is not None
    message, sent = encoded
    wire = Message(code=message.code, uri_path=message.opt.uri_path, payload=message.payload)
    assert is_compact_send(wire, PROFILE)
    rebuilt, received = decode_send(wire, PROFILE, origin=ORIGIN, destination=DESTINATION, known=receiver,
                                    now_ms=now_b, origin_keys=keys)
    return message, rebuilt, received, sent


def assert_same(rebuilt: FederationRequest, original: FederationRequest) -> None:
    """What homeserver B gets is what A sent: the header byte for byte, the body canonically."""
    assert rebuilt.method == original.method and rebuilt.target == original.target
    assert rebuilt.authorizations == original.authorizations
    assert canonical_json(json.loads(rebuilt.body)) == canonical_json(json.loads(original.body))
    assert rebuilt.content_type == "application/json"


# ---------------------------------------------------------------- the vectors


def test_event_id_and_content_hash_are_synapses() -> None:
    pdu = real_body()["pdus"][0]
    (synapse_id,) = json.loads(VECTORS["synapse_answer"])["pdus"]
    assert event_id(pdu) == VECTORS["event_id"] == synapse_id
    assert VECTORS["content_hash"] == pdu["hashes"]["sha256"]
    assert content_hash(pdu).hex() == __import__("base64").b64decode(pdu["hashes"]["sha256"] + "=").hex()


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_the_vectors_encode_and_rebuild_exactly(case: dict) -> None:
    known = None
    if case["name"] == "references":
        known = KnownIds()
        known.learn(case["known_ids"])
    encoded = encode_send(real_request(), PROFILE, origin=ORIGIN, destination=DESTINATION, known=known,
                          now_ms=SENT_AT, known_keys=frozenset(case["known_keys"]))
    assert encoded is not None
    message, sent = encoded
    assert message.payload.hex() == case["payload_hex"]
    message.mtype, message.mid, message.token = Message.decode(bytes.fromhex(case["coap_hex"])).mtype, 0x2345, b""
    assert message.encode().hex() == case["coap_hex"]
    assert sent.event_ids == [VECTORS["event_id"]]

    receiver = None
    if known is not None:
        receiver = KnownIds()
        receiver.learn(case["known_ids"])
    wire = Message.decode(bytes.fromhex(case["coap_hex"]))
    rebuilt, received = decode_send(wire, PROFILE, origin=ORIGIN, destination=DESTINATION, known=receiver,
                                    now_ms=RECEIVED_AT, origin_keys=frozenset(case["known_keys"]))
    assert_same(rebuilt, real_request())
    assert received.event_ids == [VECTORS["event_id"]]


def test_w6_fits_its_budget() -> None:
    """Issue 12: a federated m.text transaction + answer <= 260 B link level; the
    request's CoAP message with references is 208 B (plus 17 B of sealed frame),
    the "all accepted" answer 4 B (plus 17)."""
    refs = next(c for c in VECTORS["cases"] if c["name"] == "references")
    request = len(refs["coap_hex"]) // 2
    answer = len(VECTORS["accepted_answer_hex"]) // 2
    assert request <= 208 and answer == 4
    assert request + answer + 2 * 17 <= 260
    whole = next(c for c in VECTORS["cases"] if c["name"] == "whole")
    assert len(whole["coap_hex"]) // 2 <= 334  # first contact, every ID whole


def test_the_accepted_answer_is_an_empty_204() -> None:
    answer = Message.decode(bytes.fromhex(VECTORS["accepted_answer_hex"]))
    assert answer.code == Code.CHANGED and answer.payload == b"" and is_accepted(answer)
    rebuilt = accepted_answer(SentTransaction([VECTORS["event_id"]]))
    assert rebuilt.status == 200 and json.loads(rebuilt.body) == json.loads(VECTORS["synapse_answer"])


# ---------------------------------------------------------------- answers


def test_only_an_answer_naming_exactly_the_computed_ids_is_compacted() -> None:
    received = ReceivedTransaction([VECTORS["event_id"]])
    ok = HttpResponse(200, VECTORS["synapse_answer"].encode(), "application/json")
    assert answer_to_compact(ok, received)
    for body in ('{"pdus":{}}', '{"pdus":{"%s":{"error":"bad"}}}' % VECTORS["event_id"],
                 '{"pdus":{"$other":{}}}', '{"pdus":{"%s":{}},"x":1}' % VECTORS["event_id"], "not json"):
        assert not answer_to_compact(HttpResponse(200, body.encode(), "application/json"), received), body
    assert not answer_to_compact(HttpResponse(500, VECTORS["synapse_answer"].encode(), "application/json"), received)


# ---------------------------------------------------------------- references


def test_references_resolve_and_unknown_ones_are_unresolved() -> None:
    body = real_body()
    pdu = body["pdus"][0]
    sender, receiver = both_know(pdu["room_id"], pdu["prev_events"], pdu["auth_events"])
    message, rebuilt, _, _ = cross(real_request(), sender, receiver)
    assert_same(rebuilt, real_request())
    # the receiver lost one (a restart, its table full): it cannot rebuild, and says so
    forgetful = KnownIds()
    forgetful.learn([pdu["room_id"], pdu["auth_events"]])
    with pytest.raises(Unresolved):
        cross(real_request(), sender, forgetful)


def test_a_reference_resolving_to_the_wrong_event_is_caught_by_the_hash_check() -> None:
    """The receiver lacks the prev event but holds another with the same prefix:
    the rebuilt PDU's content hash differs, so it never reaches the homeserver."""
    pdu = real_body()["pdus"][0]
    sender, _ = both_know(pdu["room_id"], pdu["prev_events"], pdu["auth_events"])
    true_prev = id_bytes(pdu["prev_events"][0], "$")
    assert true_prev is not None
    impostor = true_prev[:MIN_REFERENCE] + bytes(32 - MIN_REFERENCE)
    receiver = KnownIds()
    receiver.learn([pdu["room_id"], pdu["auth_events"]])
    receiver.add(impostor)
    assert receiver.resolve(true_prev[:MIN_REFERENCE]) == impostor
    with pytest.raises(Unresolved, match="content hash"):
        cross(real_request(), sender, receiver)


def test_known_ids_use_the_shortest_unique_prefix_and_stay_bounded() -> None:
    known = KnownIds(limit=4)
    a = bytes([1, 2, 3]) + bytes(29)
    b = bytes([1, 2, 3, 4]) + bytes(28)
    known.add(a)
    assert known.reference(a) == a[:MIN_REFERENCE]
    known.add(b)
    assert len(known.reference(a)) == 4 and len(known.reference(b)) == 4  # lengthened past the shared bytes
    assert known.resolve(a[:3]) is None  # ambiguous
    assert known.resolve(known.reference(b)) == b
    unknown = bytes(range(32))
    assert known.reference(unknown) == unknown  # not held: whole
    for i in range(10):
        known.add(bytes([9, i]) + bytes(30))
    assert len(known) == 4 and a not in known and known.resolve(a[:4]) is None


def test_an_omitted_key_id_needs_exactly_one_learnt_key() -> None:
    message, rebuilt, _, _ = cross(real_request(), keys=frozenset({KEY}))
    assert_same(rebuilt, real_request())
    encoded = encode_send(real_request(), PROFILE, origin=ORIGIN, destination=DESTINATION, known=None,
                          now_ms=SENT_AT, known_keys=frozenset({KEY}))
    assert encoded is not None
    wire = Message(code=Code.PUT, uri_path=encoded[0].opt.uri_path, payload=encoded[0].payload)
    for keys in (frozenset(), frozenset({KEY, "a_other"})):
        with pytest.raises(Unresolved):
            decode_send(wire, PROFILE, origin=ORIGIN, destination=DESTINATION, known=None, now_ms=RECEIVED_AT,
                        origin_keys=keys)
    # a key set of two on the sender's side: the key ID crosses
    encoded = encode_send(real_request(), PROFILE, origin=ORIGIN, destination=DESTINATION, known=None,
                          now_ms=SENT_AT, known_keys=frozenset({KEY, "a_other"}))
    assert encoded is not None and cbor2.loads(encoded[0].payload)[1] == KEY


def test_server_keys_reads_a_key_answer() -> None:
    body = b'{"server_name":"hs-a.test","verify_keys":{"ed25519:a_IOlN":{"key":"x"}},"old_verify_keys":{}}'
    assert server_keys(body) == ("hs-a.test", frozenset({KEY}))
    assert server_keys(b"[]") is None and server_keys(b"nope") is None


# ---------------------------------------------------------------- time


@pytest.mark.parametrize("skew_days", [-23, -1, 0, 1, 23])
def test_the_transaction_time_survives_clock_skew(skew_days: int) -> None:
    skew = skew_days * 86_400_000
    _, rebuilt, _, _ = cross(real_request(), now_b=SENT_AT + skew)
    assert_same(rebuilt, real_request())


def test_a_time_far_from_the_senders_clock_travels_whole() -> None:
    body = real_body()
    body["origin_server_ts"] = 5  # not "now": the 32-bit form would not be exact
    body["pdus"][0]["unsigned"]["age_ts"] = 7
    _, rebuilt, _, _ = cross(real_request(body))
    assert json.loads(rebuilt.body)["origin_server_ts"] == 5
    assert json.loads(rebuilt.body)["pdus"][0]["unsigned"] == {"age_ts": 7}


# ---------------------------------------------------------------- shapes


def _variants() -> list[tuple[str, dict]]:
    base = real_body()
    out = []
    state = copy.deepcopy(base)
    pdu = state["pdus"][0]
    pdu.update(type="m.room.member", state_key="@bob:hs-b.test",
               content={"membership": "join", "displayname": "bob", "avatar_url": None})
    out.append(("a state event, content by the table", state))
    redaction = copy.deepcopy(base)
    redaction["pdus"][0].update(type="m.room.redaction", redacts=base["pdus"][0]["prev_events"][0], content={})
    out.append(("a redaction (redacts in the rest)", redaction))
    old_ids = copy.deepcopy(base)
    old_ids["pdus"][0].update(room_id="!opaque:hs-a.test", prev_events=["$abc/+def:hs-a.test"], auth_events=[])
    out.append(("room version 1 style IDs, as text", old_ids))
    edus = copy.deepcopy(base)
    edus["edus"] = [{"edu_type": "m.typing", "content": {"room_id": base["pdus"][0]["room_id"],
                                                          "user_id": "@alice:hs-a.test", "typing": True}}]
    out.append(("EDUs alongside", edus))
    only_edus = {"origin": ORIGIN, "origin_server_ts": base["origin_server_ts"], "pdus": [], "edus": edus["edus"]}
    out.append(("EDUs only, no PDU", only_edus))
    odd = copy.deepcopy(base)
    odd["pdus"][0].update(sender="@carol:elsewhere.test", depth=2**40, unsigned={"age_ts": 1, "age": 3},
                          content={"msgtype": "m.text", "body": "x", "format": "org.matrix.custom.html"},
                          signatures={ORIGIN: {"ed25519:a_IOlN": "c2ln", "ed25519:b": "AAAA"}},
                          hashes={"sha256": "bm90IGEgaGFzaA"})
    out.append(("another sender, a large depth, unusual unsigned, two signatures, a wrong hash", odd))
    unknown_type = copy.deepcopy(base)
    unknown_type["pdus"][0]["type"] = "org.example.custom"
    out.append(("an event type outside the table", unknown_type))
    return out


@pytest.mark.parametrize("name, body", _variants(), ids=[n for n, _ in _variants()])
def test_every_shape_rebuilds_canonically_equal(name: str, body: dict) -> None:
    pdus = body["pdus"]
    ids = [p.get("room_id") for p in pdus] + [e for p in pdus for e in p.get("prev_events", []) + p.get("auth_events", [])]
    sender, receiver = both_know(ids)
    message, rebuilt, received, sent = cross(real_request(body), sender, receiver)
    assert_same(rebuilt, real_request(body))
    assert received.event_ids == sent.event_ids == [event_id(p) for p in pdus]


def test_a_wrong_content_hash_crosses_whole_and_unchanged() -> None:
    body = real_body()
    body["pdus"][0]["hashes"]["sha256"] = "A" * 43
    message, rebuilt, _, _ = cross(real_request(body))
    assert len(cbor2.loads(message.payload)[4][0][P_HASH]) == 32
    assert json.loads(rebuilt.body)["pdus"][0]["hashes"] == {"sha256": "A" * 43}
    right = cross(real_request())[0]
    assert len(cbor2.loads(right.payload)[4][0][P_HASH]) == HASH_CHECK


@pytest.mark.parametrize("change", [
    "other header order", "origin mismatch", "two headers", "extra body key", "not /send", "a query",
    "origin not in body", "pdus not a list",
])
def test_what_the_form_cannot_carry_exactly_goes_plain(change: str) -> None:
    body, auth = real_body(), VECTORS["request"]["authorization"]
    target = VECTORS["request"]["target"]
    authorizations = [auth]
    if change == "other header order":
        authorizations = [auth.replace('origin="hs-a.test",', "") + ',origin="hs-a.test"']
    elif change == "origin mismatch":
        body["origin"] = "elsewhere.test"
    elif change == "two headers":
        authorizations = [auth, auth]
    elif change == "extra body key":
        body["unexpected"] = 1
    elif change == "not /send":
        target = "/_matrix/federation/v1/backfill/x"
    elif change == "a query":
        target += "?x=1"
    elif change == "origin not in body":
        del body["origin"]
    elif change == "pdus not a list":
        body["pdus"] = {}
    req = FederationRequest("PUT", target, json.dumps(body).encode(), "application/json", authorizations)
    assert encode_send(req, PROFILE, origin=ORIGIN, destination=DESTINATION, known=None, now_ms=SENT_AT) is None


# ---------------------------------------------------------------- hostile input


def test_malformed_compact_transactions_are_codec_errors_only() -> None:
    """A mutated, truncated or extended payload: a CodecError (answered 4.00 or 4.12),
    never another exception, and never a body the hash check did not pass."""
    valid = encode_send(real_request(), PROFILE, origin=ORIGIN, destination=DESTINATION, known=None,
                        now_ms=SENT_AT)
    assert valid is not None
    payload = valid[0].payload
    rng = random.Random(12)
    candidates = [payload[:n] for n in range(0, len(payload), 7)] + [payload + b"\x00", b"", b"\xff" * 9,
                                                                     cbor2.dumps([1, 2, 3]), cbor2.dumps("x")]
    for _ in range(400):
        mutated = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        candidates.append(bytes(mutated))
    rebuilt_ok = 0
    for candidate in candidates:
        wire = Message(code=Code.PUT, uri_path=valid[0].opt.uri_path, payload=candidate)
        try:
            rebuilt, _ = decode_send(wire, PROFILE, origin=ORIGIN, destination=DESTINATION, known=None,
                                     now_ms=RECEIVED_AT)
        except CodecError:
            continue
        rebuilt_ok += 1
        json.loads(rebuilt.body)  # whatever passed is a JSON body
    assert rebuilt_ok < len(candidates) // 2  # most mutations are refused


def test_a_plain_send_is_not_taken_for_a_compact_one() -> None:
    plain = Message(code=Code.PUT, uri_path=(".", "1796351748852"), payload=b"x")
    assert not is_compact_send(plain, PROFILE)
    assert not is_compact_send(Message(code=Code.POST, uri_path=(".",)), PROFILE)


def test_the_specs_annotated_bytes_are_the_vectors() -> None:
    """docs/protocol.md §11a.5 annotates the vector: every byte it shows is there, in order."""
    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    block = text.split("### 11a.5 Vector", 1)[1].split("```", 2)[1]
    vector = next(c for c in VECTORS["cases"] if c["name"] == "references")["coap_hex"]
    position = 0
    for line in block.strip().splitlines():
        shown = line[:32].strip()
        for fragment in shown.split("…"):
            fragment = fragment.replace(" ", "")
            if fragment:
                found = vector.find(fragment, position)
                assert found >= 0, (line, fragment)
                position = found + len(fragment)
    assert position == len(vector)


# ---------------------------------------------------------------- bounds and shapes (an audit's findings)


def _crafted(txn: object = "1", pdus: list | None = None, edus: object = None) -> Message:
    """A compact transaction written by hand (what a hostile or buggy peer may send)."""
    uri_path = cross(real_request())[0].opt.uri_path
    return Message(code=Code.PUT, uri_path=uri_path, payload=cbor2.dumps([txn, KEY, b"\x01" * 64, None, pdus or [],
                                                                          edus]))


def _pdu(**fields: object) -> list:
    out: list = [None] * 12
    for position, value in fields.items():
        out[int(position[1:])] = value
    return out


def _decode(message: Message, known: KnownIds | None = None) -> FederationRequest:
    return decode_send(message, PROFILE, origin=ORIGIN, destination=DESTINATION, known=known, now_ms=RECEIVED_AT)[0]


def test_a_peer_cannot_make_each_reference_scan_its_whole_table() -> None:
    """4096 IDs sharing their first 3 bytes made each reference compare with all of
    them (0.8 s of CPU per 16 KB); a bucket keeps MAX_BUCKET, the newest."""
    from coap_gateway.federation.compact import MAX_BUCKET

    known = KnownIds()
    ids = [b"\xaa\xbb\xcc" + i.to_bytes(2, "big") + bytes(27) for i in range(4096)]
    for raw in ids:
        known.add(raw)
    assert len(known) == MAX_BUCKET and ids[-1] in known and ids[0] not in known
    assert known.reference(ids[-1]) == ids[-1][:5] and known.resolve(ids[-1][:5]) == ids[-1]
    # IDs of other prefixes are not pushed out by them
    other = bytes(32)
    known.add(other)
    for raw in ids:
        known.add(raw)
    assert other in known


def test_a_transaction_carries_what_synapse_takes_and_no_more() -> None:
    from coap_gateway.federation.compact import MAX_AUTH_EVENTS, MAX_EDUS, MAX_PDUS, MAX_PREV_EVENTS

    with pytest.raises(CodecError):
        _decode(_crafted(pdus=[_pdu()] * (MAX_PDUS + 1)))
    with pytest.raises(CodecError):
        _decode(_crafted(pdus=[_pdu(p6=[b"\x00" * 32] * (MAX_PREV_EVENTS + 1))]))
    with pytest.raises(CodecError):
        _decode(_crafted(pdus=[_pdu(p7=[b"\x00" * 32] * (MAX_AUTH_EVENTS + 1))]))
    edus = [{"edu_type": "m.typing", "content": {}}] * (MAX_EDUS + 1)
    with pytest.raises(CodecError):
        _decode(_crafted(edus=json_cbor.encode(edus, PROFILE.cbor_table)))
    # the sender sends such a transaction plain (Synapse answers it), and a long list of
    # prev_events in field 11, as it is
    body = real_body()
    body["pdus"] = [body["pdus"][0]] * (MAX_PDUS + 1)
    assert encode_send(real_request(body), PROFILE, origin=ORIGIN, destination=DESTINATION, known=None,
                       now_ms=SENT_AT) is None
    body = real_body()
    body["pdus"][0]["prev_events"] = body["pdus"][0]["prev_events"] * (MAX_PREV_EVENTS + 1)
    message, rebuilt, _, _ = cross(real_request(body))
    assert cbor2.loads(message.payload)[4][0][6] is None
    assert_same(rebuilt, real_request(body))


def test_a_type_that_is_not_a_string_crosses_or_goes_plain_never_a_crash() -> None:
    """{"type": ["x"]} in the remaining keys was a TypeError (unhashable) in the event
    ID, a 5.00 and a traceback; the encoder crashed on it too."""
    rest = json_cbor.encode({"type": ["x"]}, PROFILE.cbor_table)
    content = json_cbor.encode({"a": 1}, PROFILE.cbor_table)
    rebuilt = _decode(_crafted(pdus=[_pdu(p3=content, p11=rest)]))
    assert json.loads(rebuilt.body)["pdus"] == [{"type": ["x"], "content": {"a": 1}}]
    for kind in (["x"], {"x": 1}):
        body = real_body()
        body["pdus"][0]["type"] = kind
        assert_same(cross(real_request(body))[1], real_request(body))


@pytest.mark.parametrize("txn", ["x?destination=evil", "a b", "a\r\nX-Injected: 1", "..", ".", "a#b", "a/b"])
def test_a_transaction_id_is_one_path_segment(txn: str) -> None:
    """The txnId becomes part of the request line: a query, a space or a line break
    in it would change the request homeserver B gets."""
    with pytest.raises(CodecError):
        _decode(_crafted(txn=txn))
    target = "/_matrix/federation/v1/send/" + txn
    request = FederationRequest("PUT", target, VECTORS["request"]["body"].encode(), "application/json",
                                [VECTORS["request"]["authorization"]])
    assert encode_send(request, PROFILE, origin=ORIGIN, destination=DESTINATION, known=None, now_ms=SENT_AT) is None


@pytest.mark.parametrize("sender", ["alice", "x:" + ORIGIN, "", "@alice:elsewhere.test", "@@a:" + ORIGIN])
def test_a_sender_crosses_unchanged_whatever_its_form(sender: str) -> None:
    body = real_body()
    body["pdus"][0]["sender"] = sender
    assert_same(cross(real_request(body))[1], real_request(body))


def test_a_local_sender_still_travels_as_its_localpart() -> None:
    message = cross(real_request())[0]
    local = real_body()["pdus"][0]["sender"][1:].split(":")[0]
    assert cbor2.loads(message.payload)[4][0][1] == local


@pytest.mark.parametrize("pdu", [_pdu(p4=2**53), _pdu(p4=-(2**53)), _pdu(p4=2**64 - 1), _pdu(p5=2**60),
                                 _pdu(p5=1, p10=2**60)])
def test_integers_beyond_canonical_json_are_refused(pdu: list) -> None:
    with pytest.raises(CodecError):
        _decode(_crafted(pdus=[pdu]))


def test_other_malformed_fields_are_refused() -> None:
    with pytest.raises(CodecError):  # edus not an array
        _decode(_crafted(edus=json_cbor.encode({"a": 1}, PROFILE.cbor_table)))
    with pytest.raises(CodecError):  # a txnId beyond 2**63
        _decode(_crafted(txn=2**64))
    body = real_body()
    body["pdus"][0]["depth"] = 2**53
    assert encode_send(real_request(body), PROFILE, origin=ORIGIN, destination=DESTINATION, known=None,
                       now_ms=SENT_AT) is None
    body = real_body()
    body["edus"] = {"not": "an array"}
    assert encode_send(real_request(body), PROFILE, origin=ORIGIN, destination=DESTINATION, known=None,
                       now_ms=SENT_AT) is None


def test_a_key_answer_nested_too_deep_is_no_key_answer() -> None:
    assert server_keys(b"[" * 100_000 + b"]" * 100_000) is None


def test_edus_that_decode_to_more_json_than_a_request_may_carry_are_refused() -> None:
    """A few hundred kB of table codes (`{"kind": "sender_notification_permission"}`
    in 3 bytes) decode to megabytes of JSON: refused at the plain path's cap."""
    count = 100_000
    edus = b"\x81\x9a" + count.to_bytes(4, "big") + b"\xa1\x2f\x03" * count  # one EDU, a long array
    assert len(json_cbor.dump_json(json_cbor.decode(edus, PROFILE.cbor_table))) > MAX_REQUEST_BODY
    with pytest.raises(CodecError):
        _decode(_crafted(edus=edus))
