"""The sans-I/O core of federation: peers table, policy, mapping and its vector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiocoap import Message

from coap_gateway.codec import HttpResponse, load_profile
from coap_gateway.federation import (
    X_MATRIX,
    FederationRequest,
    Peer,
    PeersError,
    PeersTable,
    coap_to_federation,
    connect_decision,
    dump_peers,
    federation_to_coap,
    initiates,
    is_federation_path,
    load_peers,
    peer_request_decision,
    request_decision,
)
from coap_gateway.federation.mapping import answer_to_coap, coap_to_answer
from coap_gateway.federation.policy import parse_authority, well_known_body, x_matrix_params
from coap_gateway.secure import keys

PROFILE = load_profile("lb3")
KEY_B = bytes(range(32))
KEY_C = bytes(range(1, 33))
TABLE = PeersTable([Peer(KEY_B, ("192.0.2.2", 5684), ("b.example",)),
                    Peer(KEY_C, ("192.0.2.3", 5684), ("c.example:8449", "c2.example"))])
VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "federation.json").read_text())


def canonical(body: bytes) -> str:
    return json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- peers table

def test_peers_table_round_trips_through_toml():
    text = dump_peers(TABLE)
    again = load_peers(text)
    assert again.names() == ["b.example", "c.example:8449", "c2.example"]
    assert again.by_name("B.Example.").public == KEY_B and again.by_name("b.example:8448").public == KEY_B
    assert again.by_key(KEY_C).servers == ("c.example:8449", "c2.example")


@pytest.mark.parametrize("text", [
    '[[peer]]\nservers = ["b"]\ngateway = "udp://h:1"\n',                                 # no key
    f'[[peer]]\nservers = ["b"]\ngateway = "udp://h:1"\nkey = "{keys.encode_key(KEY_B)}"\nextra = 1\n',
    f'[[peer]]\nservers = []\ngateway = "udp://h:1"\nkey = "{keys.encode_key(KEY_B)}"\n',  # fronts nothing
    '[[peer]]\nservers = ["b"]\ngateway = "udp://h:1"\nkey = "not base64!"\n',
    f'[[peer]]\nservers = ["b"]\ngateway = "u"\nkey = "{keys.encode_key(KEY_B)}"\n'
    f'[[peer]]\nservers = ["b"]\ngateway = "v"\nkey = "{keys.encode_key(KEY_C)}"\n',      # a name twice
    "peer = 3\n", "[[peer\n",
])
def test_bad_peers_tables_are_refused(text):
    with pytest.raises(PeersError):
        load_peers(text)


# -- CONNECT

def test_connect_only_to_peer_names():
    assert connect_decision(TABLE, "b.example:8448").allowed
    assert connect_decision(TABLE, "B.EXAMPLE:8448").peer.public == KEY_B
    assert connect_decision(TABLE, "c.example:8449").peer.public == KEY_C
    well_known = connect_decision(TABLE, "b.example:443")
    assert well_known.allowed and well_known.well_known_only
    for refused in ("evil.example:8448", "b.example:22", "c.example:8448", "127.0.0.1:8008", "b.example.evil:8448"):
        assert connect_decision(TABLE, refused).status == 403, refused
    for malformed in ("b.example", "b.example:", "b.example:99999", "user@b.example:8448", "[::1", ":8448", ""):
        assert connect_decision(TABLE, malformed).status == 400, malformed
    assert parse_authority("[2001:db8::1]:8448") == ("2001:db8::1", 8448)
    # one table may list every node: our own homeserver is not reached through the link
    assert connect_decision(TABLE, "b.example:8448", own_key=KEY_B).status == 403
    assert connect_decision(TABLE, "b.example:443", own_key=KEY_B).status == 403


def test_requests_inside_the_tunnel():
    peer = connect_decision(TABLE, "b.example:8448")
    assert request_decision(peer, "PUT", "/_matrix/federation/v1/send/1").action == "forward"
    assert request_decision(peer, "GET", "/_matrix/key/v2/server").action == "forward"
    assert request_decision(peer, "GET", "/.well-known/matrix/server").action == "well-known"
    for path in ("/_matrix/client/v3/login", "/_synapse/admin/v1/users", "/_matrix/federation/../client/v3/x",
                 "/_matrix/%66ederation/..%2F..%2Fclient", "/_matrix/federation", "//evil/_matrix/federation/v1/x",
                 "http://evil/_matrix/federation/v1/x", "/_matrix/media/v3/download/x/y"):
        decision = request_decision(peer, "GET", path)
        assert decision.action == "refuse" and decision.status == 403, path
    only = connect_decision(TABLE, "b.example:443")
    assert request_decision(only, "PUT", "/_matrix/federation/v1/send/1").status == 404
    assert json.loads(well_known_body(only)) == {"m.server": "b.example:8448"}
    assert json.loads(well_known_body(connect_decision(TABLE, "c.example:8449"))) == {"m.server": "c.example:8449"}


def test_federation_paths():
    assert is_federation_path("/_matrix/federation/v1/send/1?x=1")
    assert is_federation_path("/_matrix/federation/v1/event/%24abc%2Fdef")  # an encoded slash in an event ID
    assert not is_federation_path("/_matrix/key")
    assert not is_federation_path("/_matrix/key/./../client/v3/x")


# -- a peer's request at gateway B

def test_peer_requests_at_the_homeservers_gateway():
    xm = 'X-Matrix origin="b.example",destination="a.example",key="ed25519:k",sig="c2ln"'
    assert peer_request_decision(TABLE, KEY_B, "/_matrix/federation/v1/send/1", [xm]).allowed
    assert peer_request_decision(TABLE, KEY_B, "/_matrix/key/v2/server", []).allowed
    assert peer_request_decision(TABLE, bytes(32), "/_matrix/federation/v1/send/1", [xm]).reason == "unknown gateway key"
    assert not peer_request_decision(TABLE, KEY_B, "/_matrix/client/v3/account/whoami", [xm]).allowed
    # a gateway speaks for its own homeservers only
    assert not peer_request_decision(TABLE, KEY_C, "/_matrix/federation/v1/send/1", [xm]).allowed
    assert not peer_request_decision(TABLE, KEY_B, "/_matrix/federation/v1/send/1", ["Bearer abc"]).allowed
    assert x_matrix_params(xm) == {"origin": "b.example", "destination": "a.example", "key": "ed25519:k", "sig": "c2ln"}


def test_one_side_of_each_pair_initiates():
    assert initiates(KEY_B, KEY_C) != initiates(KEY_C, KEY_B)


# -- mapping

def test_x_matrix_crosses_verbatim_and_the_body_canonically_equal():
    vector = VECTORS["request"]
    request = FederationRequest(vector["method"], vector["target"], vector["body"].encode(), vector["content_type"],
                                [vector["authorization"]])
    message = federation_to_coap(request, PROFILE)
    assert [o.value.decode() for o in message.opt.get_option(X_MATRIX)] == [vector["authorization"]]
    received = coap_to_federation(Message.decode(bytes.fromhex(vector["coap_hex"])), PROFILE)
    assert (received.method, received.target, received.authorizations) == (
        request.method, request.target, request.authorizations)
    assert canonical(received.body) == canonical(request.body)


def test_federation_vector_bytes():
    from aiocoap.numbers.types import ACK, CON

    vector = VECTORS["request"]
    request = FederationRequest(vector["method"], vector["target"], vector["body"].encode(), vector["content_type"],
                                [vector["authorization"]])
    message = federation_to_coap(request, PROFILE)
    message.mtype, message.mid, message.token = CON, 0x1234, b""
    assert message.encode().hex() == vector["coap_hex"]
    answer = VECTORS["answer"]
    reply = answer_to_coap(HttpResponse(answer["status"], answer["body"].encode(), "application/json"), PROFILE)
    reply.mtype, reply.mid, reply.token = ACK, 0x1234, b""
    assert reply.encode().hex() == answer["coap_hex"]
    back = coap_to_answer(Message.decode(bytes.fromhex(answer["coap_hex"])), PROFILE)
    assert back.status == 200 and canonical(back.body) == canonical(answer["body"].encode())


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"X-Matrix a=\"b\"\r\nInjected: 1", b"x" * 4096])
def test_bad_x_matrix_options_are_refused(bad):
    from aiocoap.optiontypes import OpaqueOption

    from coap_gateway.errors import CodecError

    message = federation_to_coap(FederationRequest("GET", "/_matrix/key/v2/server"), PROFILE)
    message.opt.add_option(OpaqueOption(X_MATRIX, bad))
    with pytest.raises(CodecError):
        coap_to_federation(message, PROFILE)


# ---------------------------------------------------------------- low-bandwidth EDUs


def _txn(pdus: list, edus: list | None) -> bytes:
    body: dict = {"origin": "hs-a.test", "origin_server_ts": 1, "pdus": pdus}
    if edus is not None:
        body["edus"] = edus
    return json.dumps(body).encode()


def test_only_transactions_of_nothing_but_ephemeral_edus_are_answered_locally() -> None:
    from coap_gateway.federation import ephemeral_only

    send = "/_matrix/federation/v1/send/17"
    typing = {"edu_type": "m.typing", "content": {"room_id": "!r", "user_id": "@a:hs-a.test", "typing": True}}
    receipt = {"edu_type": "m.receipt", "content": {}}
    presence = {"edu_type": "m.presence", "content": {"push": []}}
    devices = {"edu_type": "m.device_list_update", "content": {}}
    to_device = {"edu_type": "m.direct_to_device", "content": {}}
    assert ephemeral_only("PUT", send, _txn([], [typing, receipt, presence])) == 3
    # E2EE needs device lists and to-device messages; a PDU always crosses
    assert ephemeral_only("PUT", send, _txn([], [typing, devices])) == 0
    assert ephemeral_only("PUT", send, _txn([], [to_device])) == 0
    assert ephemeral_only("PUT", send, _txn([{"type": "m.room.message"}], [typing])) == 0
    assert ephemeral_only("PUT", send, _txn([], [])) == 0 and ephemeral_only("PUT", send, _txn([], None)) == 0
    assert ephemeral_only("GET", send, _txn([], [typing])) == 0
    assert ephemeral_only("PUT", "/_matrix/federation/v1/backfill/x", _txn([], [typing])) == 0
    assert ephemeral_only("PUT", send, b"not json") == 0


async def test_a_low_bandwidth_gateway_answers_ephemeral_transactions_itself() -> None:
    """Nothing crosses (the gateway has no link at all here), the homeserver gets
    {"pdus": {}}, and the drop is counted; with the mode off the same request would cross."""
    from coap_gateway.codec import load_profile
    from coap_gateway.federation import FederationConfig, FederationGateway, FederationRequest, PeersTable

    gateway = FederationGateway(FederationConfig("http://127.0.0.1:9", load_profile("lb3"), low_bandwidth=True),
                                PeersTable([]))
    typing = {"edu_type": "m.typing", "content": {"room_id": "!r", "user_id": "@a:hs-a.test", "typing": True}}
    request = FederationRequest("PUT", "/_matrix/federation/v1/send/18", _txn([], [typing, typing]), "application/json")
    answer = await gateway.forward(None, request)  # type: ignore[arg-type]
    assert answer.status == 200 and json.loads(answer.body) == {"pdus": {}}
    assert gateway.counters.edus_dropped == 2 and gateway.counters.transactions_dropped == 1
    assert gateway.counters.sent == 0
    await gateway.close()


async def test_read_only_requests_are_exchanged_once_and_their_late_answers_kept() -> None:
    """A homeserver that gives up on a slow answer and asks again gets the one exchange's
    answer (coalesced while under way, kept afterwards); writes are never shared."""
    import asyncio

    from coap_gateway.codec import HttpResponse, load_profile
    from coap_gateway.federation import FederationConfig, FederationGateway, FederationRequest, PeersTable
    from coap_gateway.federation.policy import ConnectDecision

    gateway = FederationGateway(FederationConfig("http://127.0.0.1:9", load_profile("lb3")), PeersTable([]))
    release = asyncio.Event()
    exchanged: list[str] = []

    async def exchange(decision, request):  # the link, answering late
        exchanged.append(request.method)
        await release.wait()
        return HttpResponse(200, b'{"event":{}}', "application/json")

    gateway._forward = exchange  # type: ignore[method-assign]
    peer = type("Peer", (), {"public": b"k" * 32})()
    decision = ConnectDecision(200, "", host="hs-a.test", port=8448, peer=peer)  # type: ignore[arg-type]
    make_join = FederationRequest("GET", "/_matrix/federation/v1/make_join/!r/@b:hs-b.test?ver=12", b"", None, ["X"])
    first = asyncio.ensure_future(gateway.forward(decision, make_join))
    await asyncio.sleep(0)
    first.cancel()  # the homeserver's 20 s are up
    retry = asyncio.ensure_future(gateway.forward(decision, make_join))
    await asyncio.sleep(0)
    release.set()
    assert (await retry).status == 200
    again = await gateway.forward(decision, make_join)
    assert again.body == b'{"event":{}}'
    assert exchanged == ["GET"] and gateway.counters.coalesced == 1 and gateway.counters.late_answers == 1
    # a write crosses every time
    send = FederationRequest("PUT", "/_matrix/federation/v1/send/1", b"{}", "application/json", ["X"])
    await gateway.forward(decision, send)
    await gateway.forward(decision, send)
    assert exchanged == ["GET", "PUT", "PUT"]
    await gateway.close()
