"""Federation gateways are not open proxies (UDP loopback, a recording fake homeserver).

* homeserver A's proxy refuses a CONNECT to a name outside the peers table
  (and anything that is not a CONNECT), and inside a tunnel to a peer
  forwards federation/key paths only;
* gateway B refuses a peer's request for a non-federation path, and one
  whose X-Matrix origin is not behind that peer; what it forwards carries
  the X-Matrix header verbatim;
* a Noise key outside the peers table reaches nothing.
"""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from aiohttp import web

from coap_gateway.codec import link_failure
from coap_gateway.federation import FederationRequest, connect_decision, federation_to_coap
from coap_gateway.secure import ClientEndpoint, keys
from coap_gateway.transport import LinkFailure, SecureClientCodec, UdpLink, create_link_endpoint, profile_wire_digest
from tests.federation.helpers import PROFILE, sessions_up, start_pair
from tests.helpers.devices import until

XM = 'X-Matrix origin="a.example",destination="b.example",key="ed25519:k",sig="c2lnbmF0dXJl"'


class FakeHomeserver:
    """Answers every request 200 and records what it got (with ``gate``: once it is set)."""

    def __init__(self, gate: asyncio.Event | None = None):
        self.seen: list[tuple[str, str, list[str], bytes]] = []
        self.gate = gate

    async def start(self) -> str:
        async def handle(request: web.Request) -> web.Response:
            self.seen.append((request.method, request.raw_path, request.headers.getall("Authorization", []),
                              await request.read()))
            if self.gate is not None:
                await self.gate.wait()
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"


@pytest.fixture
async def pair(tmp_path):
    """Gateway A (homeserver a.example) and B (b.example, a fake homeserver) on UDP loopback."""
    fake_a, fake_b = FakeHomeserver(), FakeHomeserver()
    base_a, base_b = await fake_a.start(), await fake_b.start()
    link_a, link_b = await UdpLink.open("127.0.0.1", 0), await UdpLink.open("127.0.0.1", 0)
    gw_a, gw_b = await start_pair(link_a, link_b, name_a="a.example", name_b="b.example", homeserver_a=base_a,
                                  homeserver_b=base_b, tmp=tmp_path, address_a=link_a.local_address,
                                  address_b=link_b.local_address)
    await sessions_up(gw_a, gw_b)
    yield gw_a, gw_b, fake_b, link_b
    await gw_a.stop()
    await gw_b.stop()
    await fake_a.runner.cleanup()
    await fake_b.runner.cleanup()


async def _http(host: str, port: int, raw: bytes, *, tls_name: str | None = None, cafile: str | None = None,
                then: bytes | None = None) -> tuple[bytes, bytes | None]:
    """Send ``raw`` to the proxy; with ``tls_name``, after its answer start
    TLS to that name and send ``then``.  The answers' bytes."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    inner = None
    if tls_name is not None and head.startswith(b"HTTP/1.1 200"):
        context = ssl.create_default_context(cafile=cafile)
        await writer.start_tls(context, server_hostname=tls_name)
        writer.write(then or b"")
        await writer.drain()
        inner = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(next(line.split(b":")[1] for line in inner.split(b"\r\n") if line.lower().startswith(b"content-length")))
        inner += await reader.readexactly(length)
    writer.close()
    return head, inner


async def test_connect_outside_the_peers_table_is_refused(pair):
    gw_a, _, fake_b, _ = pair
    host, port = gw_a.proxy.url.removeprefix("http://").rsplit(":", 1)
    for target in (b"evil.example:8448", b"127.0.0.1:8008", b"b.example:22", b"a.example:8448"):
        head, _ = await _http(host, int(port), b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403"), (target, head)
    head, _ = await _http(host, int(port), b"GET http://b.example:8448/_matrix/key/v2/server HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405")
    assert gw_a.proxy.counters.connects_refused == 5 and gw_a.proxy.counters.connects == 0
    assert fake_b.seen == []


async def test_inside_a_tunnel_only_federation_paths_cross(pair):
    gw_a, _, fake_b, _ = pair
    host, port = gw_a.proxy.url.removeprefix("http://").rsplit(":", 1)
    cafile = str(gw_a.ca.cert_path)
    connect = b"CONNECT b.example:8448 HTTP/1.1\r\nHost: b.example:8448\r\n\r\n"
    _, inner = await _http(host, int(port), connect, tls_name="b.example", cafile=cafile,
                           then=b"GET /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: b.example\r\n\r\n")
    assert inner.startswith(b"HTTP/1.1 403")
    # the well-known lookup is answered by the gateway, over port 443 too
    _, inner = await _http(host, int(port), b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n",
                           tls_name="b.example", cafile=cafile,
                           then=b"GET /.well-known/matrix/server HTTP/1.1\r\nHost: b.example\r\n\r\n")
    assert json.loads(inner.split(b"\r\n\r\n", 1)[1]) == {"m.server": "b.example:8448"}
    assert fake_b.seen == []
    # a federation request crosses, its X-Matrix header verbatim, the body canonically equal
    body = json.dumps({"pdus": [], "edus": [], "origin": "a.example", "origin_server_ts": 1}).encode()
    request = (b"PUT /_matrix/federation/v1/send/42 HTTP/1.1\r\nHost: b.example\r\nContent-Type: application/json\r\n"
               b"Authorization: " + XM.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    _, inner = await _http(host, int(port), connect, tls_name="b.example", cafile=cafile, then=request)
    assert inner.startswith(b"HTTP/1.1 200")
    assert [(m, p, a) for m, p, a, _ in fake_b.seen] == [("PUT", "/_matrix/federation/v1/send/42", [XM])]
    assert json.loads(fake_b.seen[0][3]) == json.loads(body)


async def test_a_peer_reaches_federation_paths_only(pair):
    gw_a, gw_b, fake_b, _ = pair
    to_b = connect_decision(gw_a.gateway.table, "b.example:8448")
    for target, authorization in (
            ("/_matrix/client/v3/account/whoami", [XM]),
            ("/_synapse/admin/v1/users/@x:b.example", [XM]),
            ("/_matrix/federation/v1/send/1", [XM.replace("a.example", "c.example", 1)]),  # not behind A
    ):
        answer = await gw_a.gateway.forward(to_b, FederationRequest("GET", target, b"", None, authorization))
        assert answer.status == 403, target
    assert fake_b.seen == []
    assert sum(gw_b.gateway.counters.refused.values()) == 3
    answer = await gw_a.gateway.forward(to_b, FederationRequest("GET", "/_matrix/key/v2/server", b"", None, []))
    assert answer.status == 200 and [p for _, p, _, _ in fake_b.seen] == ["/_matrix/key/v2/server"]


async def test_an_unknown_noise_key_reaches_nothing(pair):
    _, gw_b, fake_b, link_b = pair
    intruder_priv = keys.generate_keypair()[0]
    link = await UdpLink.open("127.0.0.1", 0)
    # it even knows gateway B's key: its IK1 decrypts, and gets no session (not a peer)
    codec = SecureClientCodec(ClientEndpoint(intruder_priv, PROFILE.id, profile_wire_digest(PROFILE),
                                             server_public=gw_b.public, restart=True, unbound=True),
                              link_b.local_address)
    endpoint = await create_link_endpoint(link, codec=codec)
    try:
        message = federation_to_coap(FederationRequest("GET", "/_matrix/key/v2/server"), PROFILE)
        with pytest.raises(LinkFailure):
            await endpoint.request(message, "server", timeout=3.0)
        assert codec.handshakes == 0
    finally:
        await endpoint.shutdown()
    assert fake_b.seen == []
    assert gw_b.codec.server.dropped["client key not admitted"] >= 1
    # gateway A's session alone, if B is its responder (the lower key initiates)
    assert gw_b.codec.server.endpoint.sizes()["sessions"] == (0 if gw_b.codec.clients else 1)
    assert link_failure(None).status == 504  # (what homeserver A would hear)


async def test_a_homeserver_that_gave_up_gets_the_late_answer_on_its_retry(tmp_path):
    """Synapse gives some requests a fixed time (``make_join`` 20 s) and then
    closes the connection; on a slow link the answer comes later.  The proxy
    must notice the close, so that the gateway keeps the answer nobody got
    for the retry, which then does not cross the link again."""
    fake_a, fake_b = FakeHomeserver(), FakeHomeserver(gate=asyncio.Event())
    base_a, base_b = await fake_a.start(), await fake_b.start()
    link_a, link_b = await UdpLink.open("127.0.0.1", 0), await UdpLink.open("127.0.0.1", 0)
    gw_a, gw_b = await start_pair(link_a, link_b, name_a="a.example", name_b="b.example", homeserver_a=base_a,
                                  homeserver_b=base_b, tmp=tmp_path, address_a=link_a.local_address,
                                  address_b=link_b.local_address)
    host, port = gw_a.proxy.url.removeprefix("http://").rsplit(":", 1)
    connect = b"CONNECT b.example:8448 HTTP/1.1\r\nHost: b.example:8448\r\n\r\n"
    make_join = (b"GET /_matrix/federation/v1/make_join/!r:b.example/@u:a.example?ver=10 HTTP/1.1\r\n"
                 b"Host: b.example\r\nAuthorization: " + XM.encode() + b"\r\n\r\n")
    try:
        await sessions_up(gw_a, gw_b)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(connect)
        await reader.readuntil(b"\r\n\r\n")
        await writer.start_tls(ssl.create_default_context(cafile=str(gw_a.ca.cert_path)), server_hostname="b.example")
        writer.write(make_join)
        await until(lambda: len(fake_b.seen) == 1, timeout=10)  # under way, its answer held back
        writer.close()  # the homeserver's own timeout
        await until(lambda: gw_a.proxy.counters.abandoned == 1, timeout=10)
        fake_b.gate.set()
        await until(lambda: not gw_a.gateway._inflight, timeout=10)
        _, inner = await _http(host, int(port), connect, tls_name="b.example", cafile=str(gw_a.ca.cert_path),
                               then=make_join)
        assert inner.startswith(b"HTTP/1.1 200") and json.loads(inner.split(b"\r\n\r\n", 1)[1]) == {"ok": True}
        assert len(fake_b.seen) == 1 and gw_a.gateway.counters.late_answers == 1
    finally:
        await gw_a.stop()
        await gw_b.stop()
        await fake_a.runner.cleanup()
        await fake_b.runner.cleanup()


async def test_one_tunnel_carries_request_after_request(pair):
    """Synapse keeps its connection to a peer open: the proxy reads the next
    request on it after answering (while it waited for an answer it watched
    the connection for a close, and that watch must be gone by then)."""
    gw_a, _, fake_b, _ = pair
    host, port = gw_a.proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"CONNECT b.example:8448 HTTP/1.1\r\nHost: b.example:8448\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await writer.start_tls(ssl.create_default_context(cafile=str(gw_a.ca.cert_path)), server_hostname="b.example")
        for path in (b"/_matrix/federation/v1/version", b"/_matrix/key/v2/server", b"/_matrix/federation/v1/version"):
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: b.example\r\nAuthorization: " + XM.encode() + b"\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            assert json.loads(await reader.readexactly(length)) == {"ok": True}
    finally:
        writer.close()
    assert len(fake_b.seen) == 3 and gw_a.proxy.counters.abandoned == 0
