"""Replay tests/vectors/codec.json: the wire format, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from coap_gateway.codec import json_cbor, options, payload, routes, status, timeline
from coap_gateway.codec.compression import decompress
from coap_gateway.codec.profile import load_profile
from coap_gateway.codec.tables import load_cbor_table

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "codec.json").read_text())


def test_tables_are_the_ones_the_vectors_were_made_with():
    for version, digest in VECTORS["tables"].items():
        assert load_cbor_table(int(version)).digest == digest


@pytest.mark.parametrize("v", VECTORS["cbor"], ids=lambda v: v["comment"])
def test_cbor_vectors(v):
    table = load_cbor_table(v["table"])
    assert json_cbor.encode(v["json"], table).hex() == v["cbor_hex"]
    assert json_cbor.decode(bytes.fromhex(v["cbor_hex"]), table) == v["json"]


@pytest.mark.parametrize("v", VECTORS["routes"], ids=lambda v: f'{v["method"]} {v["target"]}')
def test_route_vectors(v):
    table = load_profile(v["profile"]).routes
    line = routes.http_to_coap(v["method"], v["target"], table)
    assert [list(line.uri_path), list(line.uri_query)] == [v["uri_path"], v["uri_query"]]
    opts = Message(code=Code(line.method), uri_path=line.uri_path, uri_query=line.uri_query).opt.encode()
    assert opts.hex() == v["options_hex"]
    # the other gateway decodes the options bytes, not our objects
    msg = Message.decode(bytes([0x40, line.method, 0, 0]) + bytes.fromhex(v["options_hex"]))
    assert routes.coap_to_http(line.method, msg.opt.uri_path, msg.opt.uri_query, table) == (v["method"], v["target"])


@pytest.mark.parametrize("v", VECTORS["status"], ids=lambda v: str(v["http_status"]))
def test_status_vectors(v):
    st = status.http_to_coap(v["http_status"], v["retry_after"])
    assert (status.format_code(st.code), st.http_status, st.max_age, st.retry_after_header) == (
        v["coap_code"], v["http_status_option"], v["max_age"], v["retry_after_header"])
    back, retry = status.coap_to_http(st.code, st.http_status, st.max_age)
    assert back == v["http_status"] and (retry or st.retry_after_header) == v["retry_after"]


@pytest.mark.parametrize("v", VECTORS["payload"], ids=lambda v: v["comment"])
def test_payload_vectors_decode(v):
    profile = load_profile(v["profile"])
    assert (profile.flate.digest if profile.flate else None) == v["dictionary"]
    body, content_type = payload.payload_to_body(bytes.fromhex(v["payload_hex"]), v["content_format"], profile)
    assert json.loads(body) == json.loads(v["json"]) and content_type == "application/json"
    # deflate output may differ between zlib-ng releases; its size may not grow
    encoded = payload.body_to_payload(v["json"].encode(), "application/json", profile)
    assert len(encoded.payload) <= len(bytes.fromhex(v["payload_hex"]))
    assert encoded.content_format == v["content_format"]
    if "inflated_hex" in v:  # the timeline form: what deflate carries is exact
        assert decompress(bytes.fromhex(v["payload_hex"]), timeline.dictionary(profile)).hex() == v["inflated_hex"]
        assert decompress(encoded.payload, timeline.dictionary(profile)).hex() == v["inflated_hex"]


def test_token_definition_vectors():
    """Access-Token values: each reads back to its token in any profile; the
    client writes them packed exactly where its profile has the token column."""
    from coap_gateway.codec import ClientBinding
    from coap_gateway.codec.binding import decode_token_definition, encode_token_definition

    assert {v["profile"] for v in VECTORS["token_definitions"]} == {"lb3", "lb4"}
    for v in VECTORS["token_definitions"]:
        value = bytes.fromhex(v["value_hex"])
        assert decode_token_definition(value) == (v["handle"], v["token"])
        packs = ClientBinding(load_profile(v["profile"])).packs_tokens
        assert encode_token_definition(v["handle"], v["token"], packs) == value


def test_binding_vectors_resolve_in_order():
    """The server side reads the binding vectors (decoded from their bytes
    only) into the client's requests and tokens; the client side rebuilds
    them byte for byte."""
    from aiocoap.numbers.types import CON

    from coap_gateway.codec import Attempt, ClientBinding, HttpRequest, HttpResponse, Resolved, ServerBinding
    from coap_gateway.codec import response_to_coap

    profile = load_profile("lb3")
    server, client = ServerBinding(profile), ClientBinding(profile)
    client.wire.scope = "lbvectors000"
    login = b'{"type":"m.login.password","identifier":{"type":"m.id.user","user":"carol"},"password":"pw"}'
    for v in VECTORS["binding"]:
        received = Message.decode(bytes.fromhex(v["coap_hex"]), "device")
        resolved = server.resolve(received)
        assert isinstance(resolved, Resolved) and resolved.token == v["token"]
        assert resolved.http.method == v["method"]
        assert resolved.http.target == v["target"].replace("nio-1", "lbvectors000.0").replace("nio-2", "lbvectors000.1")
        answer = HttpResponse(200, v.get("answer", "{}").encode(), "application/json")
        reply = response_to_coap(answer, profile)
        if server.after(received, resolved, answer):  # the login's token, bound as it asked
            reply.opt.add_option(OpaqueOption(options.TOKEN_BOUND, b""))
        assert ("answer" in v) == bool(reply.opt.get_option(options.TOKEN_BOUND))
        body = {"PUT": b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}', "POST": login}.get(v["method"], b"")
        assert resolved.http.body == body
        request = HttpRequest(v["method"], v["target"], body, "application/json" if body else None, v["token"])
        attempt = Attempt()
        message = client.request(request, attempt)
        message.mtype, message.mid, message.token = CON, 0x1234, b""
        assert message.encode().hex() == v["coap_hex"]
        client.reply(request, message, reply, attempt)


def test_short_definition_vector_resolves_and_is_rebuilt():
    """A new device's first send (§7a, "Short definitions"): the server
    matches the room digest against the joined rooms the vector lists, the
    scope is the key's; the client rebuilds the bytes from its key."""
    from aiocoap.numbers.types import CON

    from coap_gateway.codec import Attempt, ClientBinding, HttpRequest, Resolved, RoomsWanted, ServerBinding
    from coap_gateway.codec.route_option import key_scope, room_digest

    v = VECTORS["short_definitions"]
    profile, key = load_profile(v["profile"]), bytes.fromhex(v["device_key_hex"])
    assert key_scope(key) == v["key_scope"] and room_digest(key, v["room"]).hex() == v["room_digest_hex"]
    server = ServerBinding(profile)
    server.session_started("device", key)
    received = Message.decode(bytes.fromhex(v["coap_hex"]), "device")
    assert server.resolve(received) == RoomsWanted(v["token"])
    resolved = server.resolve(received, v["joined_rooms"])
    assert isinstance(resolved, Resolved) and resolved.token == v["token"]
    assert resolved.http.target == v["target"].replace("nio-1", v["key_scope"] + ".0")
    body = b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}'
    message = ClientBinding(profile, key, fresh_key=True).request(
        HttpRequest(v["method"], v["target"], body, "application/json", v["token"]), Attempt())
    message.mtype, message.mid, message.token = CON, 0x1234, b""
    assert message.encode().hex() == v["coap_hex"]
