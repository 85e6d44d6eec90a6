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
from tests.helpers.devices import until

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


#: (header, what Synapse reads as its origin) — the gateway must read the same or refuse
X_MATRIX_CASES = [
    'X-Matrix origin="b.example",key="ed25519:k",sig="c2ln",destination="a.example"',
    'X-Matrix origin=b.example,key="ed25519:k",sig=c2ln',
    'X-Matrix  origin="b.example" ,\tkey="ed25519:k", sig="c2ln"',
    'X-Matrix ORIGIN="b.example",key="ed25519:k",sig="c2ln"',
    'X-Matrix origin="b.ex\\ample",key="ed25519:k",sig="c2ln"',
    # a name with a space is another name to Synapse: the origin it checks is c.example
    'X-Matrix origin="c.example",key="ed25519:k",sig="c2ln",destination="a.example",origin ="b.example"',
    'X-Matrix origin ="b.example",origin="c.example",key="ed25519:k",sig="c2ln"',
    'X-Matrix origin= "b.example",key="k",sig="s"',
    'X-Matrix\torigin="b.example",key="k",sig="s"',
    # a parameter twice (Synapse takes the last): refused
    'X-Matrix origin="b.example",key="k",sig="s",origin="c.example"',
    'X-Matrix origin="c.example",key="k",sig="s",Origin="b.example"',
]


def test_x_matrix_is_read_as_synapse_reads_it():
    """The origin the gateway checks is the one Synapse verifies: it stripped spaces
    around names, so `origin ="b.example"` after origin="c.example" let gateway B speak
    for c.example."""
    base = pytest.importorskip("synapse.federation.transport.server._base")
    for header in X_MATRIX_CASES:
        ours = x_matrix_params(header)
        try:
            theirs = base._parse_auth_header(header.encode())[0]
        except Exception:  # Synapse answers 400: whatever the gateway read, nothing is served
            theirs = None
        assert ours is None or theirs is None or ours.get("origin") == theirs, header
    assert x_matrix_params(X_MATRIX_CASES[0])["origin"] == "b.example"
    path = "/_matrix/federation/v1/query/profile"
    assert not peer_request_decision(TABLE, KEY_B, path, [X_MATRIX_CASES[5]]).allowed
    for repeated in X_MATRIX_CASES[-2:]:
        assert x_matrix_params(repeated) is None
        assert not peer_request_decision(TABLE, KEY_B, path, [repeated]).allowed


def test_encoded_separators_never_climb_out_of_the_prefix():
    for path in ("/_matrix/federation/x%2F..%2F..%2F_synapse%2Fadmin%2Fv1%2Fusers", "/_matrix/federation/%2e%2E/x",
                 "/_matrix/federation/v1/x%5C..%5C..", "/_matrix/federation/v1/a\\b", "/_matrix/federation/v1/%5c",
                 "/_matrix/federation/v1/%252e%252e/x", "/_matrix/key/v2/x%2f.%2fy", "/_matrix/key/v2/..%2fx"):
        assert not is_federation_path(path), path
    # an encoded slash alone is an event ID of room version 3; dots inside a segment are no dot segment
    assert is_federation_path("/_matrix/federation/v1/event/%24abc%2Fdef")
    assert is_federation_path("/_matrix/federation/v1/event/%24a.b..c")


def test_a_server_name_has_one_spelling():
    """`b.example.`, `b.example..`, … each made a TLS context of their own (3000 CONNECTs: 93 MB)."""
    with_dot = connect_decision(TABLE, "B.Example.:8448")
    assert with_dot.allowed and with_dot.host == "b.example" and with_dot.server_name == "b.example"
    assert connect_decision(TABLE, "b.example.:443").host == "b.example"
    for bad in ("b.example..:8448", "b.example...:443"):
        assert connect_decision(TABLE, bad).status == 400, bad
    assert TABLE.by_name("b.example.") is not None and TABLE.by_name("b.example..") is None


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


class _Link:
    """The link as ``FederationGateway._forward``: each exchange answers when released."""

    def __init__(self, *statuses: int):
        import asyncio

        self.statuses = list(statuses)
        self.exchanged: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, decision, request):
        from coap_gateway.codec import HttpResponse

        self.exchanged.append(request.method)
        status = self.statuses.pop(0)
        await self.release.wait()
        return HttpResponse(status, b'{"event":{}}' if status == 200 else b'{"errcode":"M_FORBIDDEN"}',
                            "application/json")


def _late_gateway(link: _Link):
    from coap_gateway.federation import FederationConfig, FederationGateway
    from coap_gateway.federation.policy import ConnectDecision

    gateway = FederationGateway(FederationConfig("http://127.0.0.1:9", load_profile("lb3")), PeersTable([]))
    gateway._forward = link  # type: ignore[method-assign]
    peer = type("Peer", (), {"public": b"k" * 32})()
    return gateway, ConnectDecision(200, "", host="hs-a.test", port=8448, peer=peer)  # type: ignore[arg-type]


MAKE_JOIN = FederationRequest("GET", "/_matrix/federation/v1/make_join/!r/@b:hs-b.test?ver=12", b"", None, ["X"])


async def test_read_only_requests_are_exchanged_once_while_under_way() -> None:
    """A homeserver that gives up on a slow answer and asks again while it is on its
    way gets the one exchange's answer; once someone has it, the same request crosses
    again (X-Matrix is deterministic: an identical request may be a new one); writes
    are never shared."""
    import asyncio

    link = _Link(200, 200, 200, 200)
    gateway, decision = _late_gateway(link)
    first = asyncio.ensure_future(gateway.forward(decision, MAKE_JOIN))
    await asyncio.sleep(0)
    first.cancel()  # the homeserver's 20 s are up
    retry = asyncio.ensure_future(gateway.forward(decision, MAKE_JOIN))
    await asyncio.sleep(0)
    link.release.set()
    assert (await retry).status == 200
    assert link.exchanged == ["GET"] and gateway.counters.coalesced == 1
    assert (await gateway.forward(decision, MAKE_JOIN)).status == 200
    assert link.exchanged == ["GET", "GET"] and gateway.counters.late_answers == 0
    # a write crosses every time
    send = FederationRequest("PUT", "/_matrix/federation/v1/send/1", b"{}", "application/json", ["X"])
    await gateway.forward(decision, send)
    await gateway.forward(decision, send)
    assert link.exchanged == ["GET", "GET", "PUT", "PUT"]
    await gateway.close()


async def _given_up(link) -> tuple:
    """A make_join under way whose homeserver gave up (its caller cancelled), then answered."""
    import asyncio

    gateway, decision = _late_gateway(link)
    first = asyncio.ensure_future(gateway.forward(decision, MAKE_JOIN))
    await asyncio.sleep(0)
    first.cancel()
    link.release.set()
    await until(lambda: not gateway._inflight)
    return gateway, decision


async def test_a_success_nobody_was_waiting_for_is_kept_for_one_retry() -> None:
    link = _Link(200, 200)
    gateway, decision = await _given_up(link)
    assert (await gateway.forward(decision, MAKE_JOIN)).body == b'{"event":{}}'
    assert link.exchanged == ["GET"] and gateway.counters.late_answers == 1
    await gateway.forward(decision, MAKE_JOIN)  # handed out once: this one crosses
    assert link.exchanged == ["GET", "GET"]
    await gateway.close()


async def test_a_refusal_is_never_kept() -> None:
    """make_join refused ("not invited") after the homeserver gave up; the user is
    invited and joins again with a byte-identical request: it must cross (the 403
    was once served again for 120 s)."""
    link = _Link(403, 200)
    gateway, decision = await _given_up(link)
    assert (await gateway.forward(decision, MAKE_JOIN)).status == 200
    assert link.exchanged == ["GET", "GET"] and gateway.counters.late_answers == 0
    await gateway.close()


# ---------------------------------------------------------------- what a peer or its answers may be


def _fake_link(gateway, reply):
    from types import SimpleNamespace

    async def request(message, key, timeout):
        return reply

    async def wait_for_session(public, wait, address):
        return "key"

    gateway.endpoint = SimpleNamespace(request=request, budget=SimpleNamespace(serialisation=lambda n: 0.0,
                                                                               latency=0.0))
    gateway.codec = SimpleNamespace(wait_for_session=wait_for_session)


async def test_an_answer_that_cannot_be_read_is_a_502() -> None:
    """A peer's answer that does not decompress (a CompressionError) was an exception
    out of the proxy's handler instead of a 502 for the homeserver."""
    from aiocoap.numbers.codes import Code

    from coap_gateway.federation import FederationConfig, FederationGateway

    gateway = FederationGateway(FederationConfig("http://127.0.0.1:9", PROFILE, compact=False), TABLE)
    _fake_link(gateway, Message(code=Code.CONTENT, payload=b"\xff\x00not deflate"))
    request = FederationRequest("PUT", "/_matrix/federation/v1/send/1", b'{"pdus":[]}', "application/json")
    answer = await gateway._forward(connect_decision(TABLE, "b.example:8448"), request)
    assert answer.status == 502 and gateway.counters.sent_failed == 1
    await gateway.close()


async def test_a_peer_request_that_does_not_decompress_is_a_400() -> None:
    from aiocoap.numbers.codes import Code

    from coap_gateway.federation import FederationConfig, FederationGateway

    gateway = FederationGateway(FederationConfig("http://127.0.0.1:9", PROFILE), TABLE)
    message = federation_to_coap(FederationRequest("PUT", "/_matrix/federation/v1/send/1", b'{"pdus":[]}',
                                                   "application/json"), PROFILE)
    message.payload = b"\xff\x00not deflate"
    message.remote = type("Remote", (), {"key": None})()
    answer = await gateway.render(message)
    assert answer.code == Code.BAD_REQUEST and gateway.counters.refused == {"malformed": 1}
    await gateway.close()


class _Remote:
    def __init__(self, name: str):
        self.blockwise_key = (name,)
        self.key = None
        self.maximum_payload_size = 1024


class _Pipe:
    def __init__(self, request):
        self.request = request
        self.responses: list = []

    def add_response(self, response, is_last):
        self.responses.append(response)


async def _block(gateway, remote, tag: int, number: int, more: bool, payload: bytes = b"x" * 1024,
                 request: Message | None = None):
    from aiocoap import error, optiontypes
    from aiocoap.numbers.codes import Code

    message = (request or Message(code=Code.PUT, uri_path=("x",))).copy(payload=payload)
    message.remote = remote
    message.opt.block1 = optiontypes.BlockOption.BlockwiseTuple(number, more, 6)
    message.opt.request_tag = [bytes([tag])]
    pipe = _Pipe(message)
    try:
        await gateway.render_to_pipe(pipe)
    except error.RenderableError as exc:  # (aiocoap's pipe answers these: 2.31 Continue, …)
        return exc.to_message().code
    return pipe.responses[-1].code


async def test_block_wise_requests_from_peers_are_bounded_and_wait_on_disk(tmp_path) -> None:
    """A peer held 32 MiB in four never-finished uploads (aiocoap keeps them all, in
    memory, copying each whole at every block: 22.7 s of CPU).  Now: one request at
    most max_upload (4.13), one peer at most max_upload_per_peer (5.03), on disk."""
    from aiocoap.numbers.codes import Code

    from coap_gateway.federation import FederationConfig, FederationGateway
    from coap_gateway.gateway import UploadSpool
    from coap_gateway.transport import assembly_bytes

    config = FederationConfig("http://127.0.0.1:9", PROFILE, max_upload=16 << 10, max_upload_per_peer=40 << 10,
                              max_upload_total=100 << 10, spool_dir=tmp_path)
    gateway = FederationGateway(config, TABLE)
    peer = _Remote("peer-b")
    codes = [await _block(gateway, peer, 0, n, True) for n in range(20)]
    assert codes[:16] == [Code.CONTINUE] * 16 and codes[16] == Code.REQUEST_ENTITY_TOO_LARGE
    held = next(iter(gateway._block1._assemblies._items.values())).payload
    assert isinstance(held, UploadSpool)
    codes = [await _block(gateway, peer, tag, n, True) for tag in (1, 2, 3) for n in range(15)]
    assert Code.SERVICE_UNAVAILABLE in codes and assembly_bytes(gateway, peer) <= 40 << 10
    assert gateway.counters.refused_uploads >= 2
    # another peer has its own share; one request within the bounds is assembled and served
    import os

    body = json.dumps({"pdus": [], "x": os.urandom(1500).hex()}).encode()
    request = federation_to_coap(FederationRequest("PUT", "/_matrix/federation/v1/send/1", body, "application/json"),
                                 PROFILE)
    blocks = [request.payload[i:i + 1024] for i in range(0, len(request.payload), 1024)]
    assert len(blocks) > 1
    other = _Remote("peer-c")
    codes = [await _block(gateway, other, 0, n, n < len(blocks) - 1, block, request) for n, block in enumerate(blocks)]
    # assembled, read and judged: a key outside the table (the fake remote has none)
    assert codes == [Code.CONTINUE] * (len(blocks) - 1) + [Code.FORBIDDEN]
    assert gateway.counters.refused == {"unknown gateway key": 1}
    await gateway.close()
