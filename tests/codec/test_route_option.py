"""The compact request form (profile lb3): Route option, message and event-ID schemas, byte by byte."""

from __future__ import annotations

import base64
import json
import re

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.codec import options, route_option
from coap_gateway.codec.mapping import (
    HttpRequest,
    HttpResponse,
    coap_to_request,
    coap_to_response,
    compact_route_name,
    request_to_coap,
    response_to_coap,
)
from coap_gateway.codec.profile import load_profile
from coap_gateway.codec.route_option import (
    ClientWireState,
    HandleUnknown,
    ServerWireState,
    decode_route,
)
from coap_gateway.errors import GatewayError, RouteError

PROFILE = load_profile("lb3")
ROOM = "!" + "A" * 42 + "w"  # room v12: "!" + URL-safe base64 of 32 bytes
ROOM_BYTES = base64.urlsafe_b64decode(ROOM[1:] + "=")
EVENT = "$" + "B" * 42 + "w"
TXN = "0f9c3c4e-7a9b-4c3e-9d1e-2b5a6c7d8e9f"
BODY = b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}'
SEND = f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/{TXN}"


def encode(message: Message, mid: int = 1, mtype=Type.CON) -> bytes:
    message.mid, message.token, message.mtype = mid, b"", mtype
    return message.encode()


def route_value(message: Message) -> bytes:
    return message.opt.get_option(options.ROUTE)[0].value


def confirmed(client: ClientWireState, request: HttpRequest) -> Message:
    """The request, and the server answered it: its definitions are confirmed
    (what ``binding`` does), so the next request uses the handles bare."""
    carried: set = set()
    message = request_to_coap(request, PROFILE, client, carried)
    client.confirm(carried)
    return message


def test_reference_send_cold_then_warm_byte_by_byte():
    client, server = ClientWireState(scope="lbabcdefghij"), ServerWireState()
    first = confirmed(client, HttpRequest("PUT", SEND, BODY, "application/json"))
    # code 0 (client.send), [handle 0, 32 bytes of room], -1 (m.text, deflated), [txn 0, scope]
    assert route_value(first) == bytes.fromhex("00 82 00 5820") + ROOM_BYTES + bytes.fromhex("20 82 00 6c") + b"lbabcdefghij"
    second = request_to_coap(HttpRequest("PUT", SEND.replace(TXN, "t2"), BODY, "application/json"), PROFILE, client)
    assert route_value(second) == bytes.fromhex("00 00 20 01")  # handle 0, m.text deflated, txn 1
    wire = encode(second)
    # header 4 + option header 3 + value 4 + payload marker + 12 bytes of text
    # deflated with the text dictionary (21 raw, 17 with the CBOR-trained one)
    assert len(wire) == 24 and wire[4:7] == bytes.fromhex("e4 fc e6")
    assert wire[11:] == bytes.fromhex("ff 833a16164940479816e40200")
    for msg, txn in ((first, "lbabcdefghij.0"), (second, "lbabcdefghij.1")):
        back = coap_to_request(Message.decode(encode(msg)), PROFILE, server)
        assert back.target == f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/{txn}"
        assert json.loads(back.body) == json.loads(BODY) and back.content_type == "application/json"
        assert back.compact_route == "client.send"


def test_same_client_txn_maps_to_the_same_homeserver_txn_and_back():
    client = ClientWireState(scope="lbscope00001")
    a = route_value(confirmed(client, HttpRequest("PUT", SEND, BODY, "application/json")))
    b = route_value(request_to_coap(HttpRequest("PUT", SEND, BODY, "application/json"), PROFILE, client))
    assert cbor2.loads(a[-1:]) == 0 or a.endswith(b"lbscope00001")  # first: [0, scope]
    assert b == bytes.fromhex("00 00 20 00")  # a retry: the same txn number
    restored = client.restore_txn_ids(b'{"unsigned":{"transaction_id":"lbscope00001.0"},"x":"lbscope00001.99"}')
    assert restored == b'{"unsigned":{"transaction_id":"' + TXN.encode() + b'"},"x":"lbscope00001.99"}'


def test_definitions_travel_until_confirmed():
    """Concurrent requests before the first is answered all carry the
    definitions: a bare handle never reaches a server that may lack it."""
    client = ClientWireState(scope="lbabcdefghij")
    first = route_value(request_to_coap(HttpRequest("PUT", SEND, BODY, "application/json"), PROFILE, client))
    second = route_value(request_to_coap(HttpRequest("PUT", SEND.replace(TXN, "t2"), BODY, "application/json"),
                                         PROFILE, client))
    assert len(second) == len(first)  # the same definitions again
    assert list(_items(first))[1] == list(_items(second))[1] == [0, ROOM_BYTES]
    assert (list(_items(first))[3], list(_items(second))[3]) == ([0, "lbabcdefghij"], [1, "lbabcdefghij"])


def test_a_new_session_without_definitions_is_refused_not_guessed():
    client, old, new = ClientWireState(), ServerWireState(), ServerWireState()
    for _ in range(2):
        msg = confirmed(client, HttpRequest("PUT", SEND, BODY, "application/json"))
        coap_to_request(Message.decode(encode(msg)), PROFILE, old)
    warm = request_to_coap(HttpRequest("PUT", SEND, BODY, "application/json"), PROFILE, client)
    with pytest.raises(HandleUnknown):
        coap_to_request(Message.decode(encode(warm)), PROFILE, new)
    client.server_forgot()
    again = request_to_coap(HttpRequest("PUT", SEND, BODY, "application/json"), PROFILE, client)
    assert coap_to_request(Message.decode(encode(again)), PROFILE, new).target.endswith(f"{client.scope}.0")


def test_every_route_round_trips_with_every_parameter_form():
    client, server = ClientWireState(), ServerWireState()
    samples = {"roomId": ROOM, "roomIdOrAlias": "%23alias%3Ahs", "userId": "%40bob%3Ahs", "eventId": EVENT,
               "eventType": "m.room.member", "txnId": "t%201"}
    for template in PROFILE.routes.by_code.values():
        params = [samples.get(seg[1:-1], "x%2Fy") for seg in template.template[1:].split("/") if seg.startswith("{")]
        target = template.expand(params) + "?a=1&b"
        for method in ("GET", "PUT"):
            msg = request_to_coap(HttpRequest(method, target), PROFILE, client)
            assert not msg.opt.uri_path and compact_route_name(msg, PROFILE) == template.name
            back = coap_to_request(Message.decode(encode(msg)), PROFILE, server)
            assert (back.method, back.target) == (method, target)


def test_message_schema_only_for_exactly_msgtype_and_body():
    client, server = ClientWireState(), ServerWireState()
    for body, bare in ((BODY, True), (b'{"msgtype":"m.notice","body":"x"}', True),
                       (b'{"msgtype":"m.text","body":"x","format":"org.matrix.custom.html"}', False),
                       (b'{"msgtype":"m.custom","body":"x"}', False), (b'{"body":"x"}', False), (b"not json", False),
                       # a msgtype that is no string (unhashable: a TypeError, a 500 at the client gateway)
                       (b'{"msgtype":["m.text"],"body":"x"}', False), (b'{"msgtype":{"a":1},"body":"x"}', False),
                       (b'{"msgtype":0,"body":"x"}', False)):
        msg = request_to_coap(HttpRequest("PUT", SEND, body, "application/json"), PROFILE, client)
        items = list(_items(route_value(msg)))
        assert (items[2] < 0) == bare, body
        back = coap_to_request(Message.decode(encode(msg)), PROFILE, server)
        assert back.body == body if body == b"not json" else json.loads(back.body) == json.loads(body)


def test_short_message_text_travels_raw_when_deflate_would_grow_it():
    client = ClientWireState()
    msg = request_to_coap(HttpRequest("PUT", SEND, b'{"msgtype":"m.text","body":"k"}', "application/json"),
                          PROFILE, client)
    assert msg.payload == b"k" and list(_items(route_value(msg)))[2] == -2  # m.text, raw
    assert json.loads(coap_to_request(Message.decode(encode(msg)), PROFILE, ServerWireState()).body)["body"] == "k"


def _items(value: bytes):
    import io
    stream = io.BytesIO(value)
    while stream.tell() < len(value):
        yield cbor2.load(stream)


@pytest.mark.parametrize("event_id,size", [(EVENT, 32), ("$short:example.org", 18)])
def test_event_id_response_is_the_bare_id(event_id, size):
    body = json.dumps({"event_id": event_id}, separators=(",", ":")).encode()
    msg = response_to_coap(HttpResponse(200, body, "application/json"), PROFILE, "client.send")
    wire = encode(msg, mtype=Type.ACK)
    assert len(msg.payload) == size and msg.opt.content_format is None and len(wire) == 4 + 1 + size
    back = coap_to_response(Message.decode(wire), PROFILE, "client.send")
    assert (back.status, back.body, back.content_type) == (200, body, "application/json")


@pytest.mark.parametrize("body", [
    b'{"event_id":"$aaaaaaaaaaaaaaaaaaa:example.org"}',  # 32 bytes of text would read as binary
    b'{"event_id":"$x:hs","extra":1}',
    b'{"event_id": "$x:hs"}',  # not as Synapse writes it
])
def test_other_bodies_on_event_routes_carry_a_content_format(body):
    msg = response_to_coap(HttpResponse(200, body, "application/json"), PROFILE, "client.send")
    assert msg.opt.content_format is not None
    back = coap_to_response(Message.decode(encode(msg, mtype=Type.ACK)), PROFILE, "client.send")
    assert json.loads(back.body) == json.loads(body)


def test_errors_on_event_routes_keep_their_status():
    body = b'{"errcode":"M_FORBIDDEN","error":"no"}'
    msg = response_to_coap(HttpResponse(403, body, "application/json"), PROFILE, "client.send")
    back = coap_to_response(Message.decode(encode(msg, mtype=Type.ACK)), PROFILE, "client.send")
    assert (back.status, json.loads(back.body)) == (403, json.loads(body))


@pytest.mark.parametrize("value,error", [
    (b"", RouteError),
    (bytes.fromhex("1903e8"), RouteError),  # unknown option code 1000
    (bytes.fromhex("00 00 20"), RouteError),  # too few parameters
    (bytes.fromhex("00 00 20 00 00"), RouteError),  # too many
    (bytes.fromhex("03 61 72 20 61 78"), RouteError),  # message schema on client.state_event
    (bytes.fromhex("00 821904000000 00"), RouteError),  # handle 1024
    (bytes.fromhex("00 07 00 00"), HandleUnknown),  # handle never defined
    (bytes.fromhex("00 82 00 61 21 00 00"), HandleUnknown),  # txn without a scope
    (bytes.fromhex("00 82 00 61 21 00 82 00 61 2f"), RouteError),  # scope with '/'
    (bytes.fromhex("00 82 00 62 2f 78 00 00"), RouteError),  # a room handle defined as "/x"
    (bytes.fromhex("00 c1 00 00 00"), RouteError),  # a tag
    (bytes.fromhex("00 c24105 00 00"), RouteError),  # a bignum is a tag too (§7a): handle 5 as tag 2
    (bytes.fromhex("00 00 00 c34107"), RouteError),  # and tag 3
    (bytes.fromhex("00 00 18"), RouteError),  # truncated
    (bytes.fromhex("00 f5 00 00"), RouteError),  # true
])
def test_malformed_route_options_are_refused_cleanly(value, error):
    with pytest.raises(error):
        decode_route(value, PROFILE.routes, PROFILE.schemas, PROFILE.cbor_table, ServerWireState())


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_random_route_option_values_never_crash(value):
    try:
        decode_route(value, PROFILE.routes, PROFILE.schemas, PROFILE.cbor_table, ServerWireState())
    except GatewayError:
        pass


def test_request_with_route_option_and_uri_path_is_refused():
    msg = Message(code=Code.GET, uri_path=["x"])
    msg.opt.add_option(__import__("aiocoap.optiontypes", fromlist=["OpaqueOption"]).OpaqueOption(options.ROUTE, b"\x01"))
    with pytest.raises(RouteError):
        coap_to_request(Message.decode(encode(msg)), PROFILE, ServerWireState())


def test_handle_table_is_bounded_then_values_travel_literally():
    client = ClientWireState()
    for i in range(route_option.MAX_HANDLES + 5):
        request_to_coap(HttpRequest("GET", f"/_matrix/client/v3/rooms/!r{i}:hs/members"), PROFILE, client)
    assert len(client.handles) == route_option.MAX_HANDLES
    msg = request_to_coap(HttpRequest("GET", "/_matrix/client/v3/rooms/!late:hs/members"), PROFILE, client)
    assert list(_items(route_value(msg)))[1] == "!late:hs"


def test_the_text_dictionary_is_checked_by_digest():
    import copy

    from coap_gateway.codec import datafiles
    from coap_gateway.codec.schemas import parse_schema_table
    from coap_gateway.errors import TableError

    doc = datafiles.read_json("schemas-v1.json")
    assert parse_schema_table(doc).text_dictionary.digest == doc["text_dictionary"]["digest"]
    for bad in ({"file": "text-v1.txt", "digest": "sha256:" + "0" * 64}, {"file": "../x", "digest": "x"}, None):
        wrong = copy.deepcopy(doc)
        wrong["text_dictionary"] = bad
        with pytest.raises(TableError):
            parse_schema_table(wrong)


# ------------------------------------------------- the encrypted schema

CIPHERTEXT = bytes(range(200))
MEGOLM = {"algorithm": "m.megolm.v1.aes-sha2",
          "ciphertext": base64.b64encode(CIPHERTEXT).decode().rstrip("="),
          "device_id": "XXMIDOLLDZ",
          "sender_key": "a9ObkZlnrbjTX5TEqjz7PZH6ml1L+itP2pdjWjAfNyA",
          "session_id": "KRV4t04bg/E5Y7vPuxKeO6QIrFA1kA0uOsEmTkWEsQA"}
ENCRYPTED = json.dumps(MEGOLM, separators=(",", ":")).encode()
SEND_ENCRYPTED = f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.encrypted/"


def encrypted_send(txn: str, body: bytes = ENCRYPTED) -> HttpRequest:
    return HttpRequest("PUT", SEND_ENCRYPTED + txn, body, "application/json")


def test_an_encrypted_send_carries_its_session_once_then_only_the_ciphertext():
    client, server = ClientWireState(scope="lbabcdefghij"), ServerWireState()
    first = confirmed(client, encrypted_send("m1"))
    items = list(_items(route_value(first)))
    handle, template = items[-1]  # [handle, CBOR of the body with "ciphertext":""]
    assert handle == 0 and handle in client.confirmed  # (the room is handle 1)
    assert first.payload == CIPHERTEXT and first.opt.content_format is None
    warm = request_to_coap(encrypted_send("m2"), PROFILE, client)
    assert route_value(warm)[-1:] == b"\x00" and warm.payload == CIPHERTEXT
    generic = request_to_coap(encrypted_send("m3"), PROFILE, ClientWireState(scope="lbabcdefghij"))
    # what the session costs per message without the schema: its keys, device and algorithm
    assert len(encode(generic)) - len(encode(warm)) > 80
    for msg, txn in ((first, "lbabcdefghij.0"), (warm, "lbabcdefghij.1")):
        back = coap_to_request(Message.decode(encode(msg)), PROFILE, server)
        assert back.target == SEND_ENCRYPTED.replace("m.room.encrypted/", f"m.room.encrypted/{txn}")
        assert back.body == ENCRYPTED and back.content_type == "application/json"  # byte for byte
    # a new Megolm session is a new template, the same session in another room the same one
    other = dict(MEGOLM, session_id="S" * 43)
    rotated = request_to_coap(encrypted_send("m4", json.dumps(other, separators=(",", ":")).encode()),
                              PROFILE, client)
    assert list(_items(route_value(rotated)))[-1][0] == 2


@pytest.mark.parametrize("body", [
    json.dumps(MEGOLM).encode(),  # spaces: rebuilding would not give these bytes
    json.dumps(dict(MEGOLM, ciphertext=MEGOLM["ciphertext"] + "==="), separators=(",", ":")).encode(),
    json.dumps(dict(MEGOLM, ciphertext="not base64 at all, but long enough"), separators=(",", ":")).encode(),
    json.dumps(dict(MEGOLM, ciphertext={"curve": {"type": 0, "body": "x"}}), separators=(",", ":")).encode(),
    json.dumps({k: v for k, v in MEGOLM.items() if k != "ciphertext"}, separators=(",", ":")).encode(),
    b"[1,2]", b"not json",
])
def test_the_encrypted_schema_only_where_it_rebuilds_the_exact_bytes(body):
    client, server = ClientWireState(), ServerWireState()
    msg = request_to_coap(encrypted_send("m1", body), PROFILE, client)
    assert len(list(_items(route_value(msg)))) == 4  # code, room, type, txn: no template
    back = coap_to_request(Message.decode(encode(msg)), PROFILE, server).body
    assert back == body or json.loads(back) == json.loads(body)  # the generic form (keys in CBOR's order)


def test_a_template_the_server_lacks_or_that_is_not_one_is_refused():
    client = ClientWireState(scope="lbabcdefghij")
    confirmed(client, encrypted_send("m1"))
    warm = request_to_coap(encrypted_send("m2"), PROFILE, client)
    with pytest.raises(HandleUnknown):  # a new session of the server: define it again
        coap_to_request(Message.decode(encode(warm)), PROFILE, ServerWireState())
    server = ServerWireState()
    server.define(1, ROOM)
    server.define_scope("lbabcdefghij")
    server.define(0, ROOM)  # handle 0 names a room, not a template
    with pytest.raises(RouteError, match="not a body template"):
        coap_to_request(Message.decode(encode(warm)), PROFILE, server)
    code, room, etype, txn = list(_items(route_value(warm)))[:4]
    bad = [
        [0, cbor2.dumps({"ciphertext": "x"})],  # the ciphertext is not empty
        [0, b"\xff"],  # not CBOR
        [0, "text"],  # not bytes
        [5000, cbor2.dumps({"ciphertext": ""})],  # handle out of range
    ]
    for item in bad:
        value = b"".join(cbor2.dumps(x) for x in (code, room, etype, txn, item))
        with pytest.raises(RouteError):
            decode_route(value, PROFILE.routes, PROFILE.schemas, PROFILE.cbor_table, server)
    # a template on another event type, or on a route that is not a send, is refused
    text = list(_items(route_value(request_to_coap(HttpRequest("PUT", SEND, BODY, "application/json"),
                                                   PROFILE, client))))
    with pytest.raises(RouteError):
        decode_route(b"".join(cbor2.dumps(x) for x in (*text, 1)), PROFILE.routes, PROFILE.schemas,
                     PROFILE.cbor_table, server)


@pytest.mark.parametrize("event_type, txn, body", [
    ("m.custom", "m.room.message", BODY),  # a message-shaped body of another type
    ("m.custom", "m.room.encrypted", ENCRYPTED),  # an encrypted-shaped one
])
def test_the_schemas_look_at_the_event_type_not_at_any_parameter(event_type, txn, body):
    """Only the event-type parameter says m.room.message or m.room.encrypted:
    a transaction ID that reads so leaves the event type alone."""
    target = f"/_matrix/client/v3/rooms/{ROOM}/send/{event_type}/{txn}"
    msg = request_to_coap(HttpRequest("PUT", target, body, "application/json"), PROFILE, ClientWireState())
    back = coap_to_request(Message.decode(encode(msg)), PROFILE, ServerWireState())
    assert back.target.split("/")[-2] == event_type
    assert json.loads(back.body) == json.loads(body)


# ------------------------------------------------ key scope and room digests

DEVICE_KEY = bytes(range(32))  # a device's static public key
OTHER_ROOM = "!" + "C" * 42 + "w"


def new_device() -> tuple[ClientWireState, ServerWireState]:
    """A device whose key is new, as binding sets it up on both sides."""
    client = ClientWireState(scope=route_option.key_scope(DEVICE_KEY), digest_key=DEVICE_KEY)
    server = ServerWireState()
    server.device_key = DEVICE_KEY
    return client, server


def test_a_new_device_defines_room_and_scope_in_8_bytes_instead_of_49():
    client, server = new_device()
    message = request_to_coap(HttpRequest("PUT", SEND, BODY, "application/json"), PROFILE, client, set())
    digest = route_option.room_digest(DEVICE_KEY, ROOM)
    # code 0, [handle 0, 4-byte digest], -1 (m.text, deflated), [txn 0]: the key's scope
    assert route_value(message) == bytes.fromhex("00 82 00 44") + digest + bytes.fromhex("20 81 00")
    full = request_to_coap(HttpRequest("PUT", SEND, BODY, "application/json"), PROFILE,
                           ClientWireState(scope="lb" + "a" * 8), set())
    # the room: [0, bytes(32)] 36 B -> [0, bytes(4)] 7 B; the scope: [0, text(10)] 13 B -> [0] 2 B
    assert len(route_value(full)) - len(route_value(message)) == (36 - 7) + (13 - 2)
    with pytest.raises(route_option.RoomsNeeded):
        coap_to_request(Message.decode(encode(message)), PROFILE, server)
    back = coap_to_request(Message.decode(encode(message)), PROFILE, server, rooms=[OTHER_ROOM, ROOM])
    assert back.target == f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/{route_option.key_scope(DEVICE_KEY)}.0"
    assert server.lookup(0) == ROOM and server.scope == client.scope


def test_key_scope_and_digests_are_the_keys_own():
    assert route_option.key_scope(DEVICE_KEY) != route_option.key_scope(bytes(32))
    assert re.fullmatch(r"lb[a-z2-7]{8}", route_option.key_scope(DEVICE_KEY))
    # keyed: another device's digest of the same room differs (nobody can make two rooms collide for a device
    # whose key they do not know)
    assert route_option.room_digest(DEVICE_KEY, ROOM) != route_option.room_digest(bytes(32), ROOM)
    assert len(route_option.room_digest(DEVICE_KEY, ROOM)) == route_option.ROOM_DIGEST_BYTES == 4


@pytest.mark.parametrize("rooms", [[], [OTHER_ROOM], "twice"])
def test_a_digest_that_matches_no_room_or_two_is_handle_unknown_and_then_sent_in_full(rooms, monkeypatch):
    client, server = new_device()
    if rooms == "twice":
        # two joined rooms with the same digest: never guessed between
        monkeypatch.setattr(route_option, "room_digest", lambda key, room, size=4: b"same")
        rooms = [OTHER_ROOM, ROOM]
    carried: set = set()
    message = request_to_coap(HttpRequest("PUT", SEND, BODY, "application/json"), PROFILE, client, carried)
    with pytest.raises(HandleUnknown):
        coap_to_request(Message.decode(encode(message)), PROFILE, server, rooms=rooms)
    client.server_forgot(carried)
    again = request_to_coap(HttpRequest("PUT", SEND, BODY, "application/json"), PROFILE, client, set())
    assert list(_items(route_value(again)))[1] == [0, ROOM_BYTES]  # in full from now on
    assert coap_to_request(Message.decode(encode(again)), PROFILE, server).target.startswith(
        f"/_matrix/client/v3/rooms/{ROOM}/")


def test_digests_only_on_message_routes():
    """A join or an invite names a room the account may not have joined."""
    client, _ = new_device()
    state = f"/_matrix/client/v3/rooms/{ROOM}/join"
    message = request_to_coap(HttpRequest("POST", state, b"{}", "application/json"), PROFILE, client, set())
    assert list(_items(route_value(message)))[1] == [0, ROOM_BYTES]


def test_a_text_room_id_is_matched_as_the_client_wrote_it():
    client, server = new_device()
    text_room = "!abc:example.org"
    send = f"/_matrix/client/v3/rooms/%21abc%3Aexample.org/send/m.room.message/{TXN}"
    message = request_to_coap(HttpRequest("PUT", send, BODY, "application/json"), PROFILE, client, set())
    back = coap_to_request(Message.decode(encode(message)), PROFILE, server, rooms=[text_room])
    assert back.target.startswith("/_matrix/client/v3/rooms/!abc:example.org/send/")


@pytest.mark.parametrize("room, txn", [([0, b"abcd"], [0, "lbscope"]), (ROOM, [0])])
def test_short_forms_need_a_device_key(room, txn):
    """A plaintext device (no static key) has neither a key scope nor digests: 4.00."""
    value = b"".join(cbor2.dumps(item) for item in (0, room, -1, txn))
    with pytest.raises(RouteError, match="secure session"):
        decode_route(value, PROFILE.routes, PROFILE.schemas, PROFILE.cbor_table, ServerWireState(), rooms=[ROOM])
