"""What the server gateway tells the homeserver, asks it for, and refuses.

Synapse gzips its answers when its listener says ``compress: true`` and the
client accepts gzip — which aiohttp offers unless told otherwise.  The
gateway transcodes JSON itself, so it asks for the body as it is; an answer
encoded anyway is refused with a Matrix error, never passed on as JSON.
And it keeps no cookies: one jar behind many accounts would hand one user's
cookies to the next.  It says whose request it is: the device's address in
X-Forwarded-For, so that a homeserver behind it as behind any proxy
(``x_forwarded: true``) limits and records each device by its own address.
"""

from __future__ import annotations

import gzip
import json
import uuid

import aiohttp
import pytest
from aiohttp import web
from nio import RoomSendResponse, SyncResponse

from coap_gateway import __version__
from coap_gateway.app.runner import start_client, start_server
from coap_gateway.gateway.server import ServerGateway, ServerGatewayConfig
from coap_gateway.gateway.upstream import Upstream, UpstreamError
from coap_gateway.secure import keys
from coap_gateway.transport import UdpLink
from tests.helpers.devices import FAST, PROFILE, Device, nio, register
from tests.helpers.loops import run_in_fresh_loop
from tests.helpers.scripted import ScriptedServer


class Scripted(ScriptedServer):
    """Records each request's headers; answers as ``mode`` says."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.mode = "plain"
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        body = json.dumps({"versions": ["v1.11"]}).encode()
        if self.mode == "gzip":  # regardless of what was asked for
            return web.Response(body=gzip.compress(body), content_type="application/json",
                                headers={"Content-Encoding": "gzip"})
        if self.mode == "cookie":
            response = web.json_response({"versions": []})
            response.set_cookie("synapse_session", "alice-secret")
            return response
        if self.mode == "empty-encoded":
            return web.Response(status=204, headers={"Content-Encoding": "gzip"})
        return web.Response(body=body, content_type="application/json")



async def test_asks_for_identity_and_says_who_it_is():
    async with Scripted() as hs:
        upstream = Upstream(hs.url)
        try:
            answer = await upstream.fetch("GET", "/_matrix/client/versions", token="syt_a")
            held = await upstream.fetch("GET", "/_matrix/client/v3/sync?timeout=5", token="syt_a")
        finally:
            await upstream.close()
    assert json.loads(answer.body) == json.loads(held.body) == {"versions": ["v1.11"]}
    for headers in hs.seen:  # both pools
        assert headers["Accept-Encoding"] == "identity"
        assert headers["User-Agent"] == f"coap-gateway/{__version__}"


async def test_an_encoded_answer_is_refused_not_passed_on():
    async with Scripted() as hs:
        upstream = Upstream(hs.url)
        try:
            hs.mode = "gzip"
            with pytest.raises(UpstreamError) as refused:
                await upstream.fetch("GET", "/_matrix/client/versions")
            assert refused.value.kind == UpstreamError.ENCODED
            error = refused.value.as_response()
            assert error.status == 502 and json.loads(error.body)["errcode"] == "M_UNKNOWN"
            assert b"content-encoded" in error.body
            hs.mode = "empty-encoded"  # nothing to decode: nothing wrong
            assert (await upstream.fetch("GET", "/_matrix/client/versions")).status == 204
        finally:
            await upstream.close()


async def test_a_target_that_is_no_request_target_never_reaches_the_homeserver():
    """Defence in depth below the mappings: yarl drops CR/LF but would write a
    space or cut at '#' in the request line (an audit's raw-socket check)."""
    async with Scripted() as hs:
        upstream = Upstream(hs.url)
        try:
            for target in ("/_matrix/client/v3/a b", "/_matrix/client/v3/x\r\nX-Injected: 1", "/_matrix/a#frag",
                           "_matrix/client/versions", "/_matrix/\x7f", "/_matrix/\x00"):
                with pytest.raises(UpstreamError) as refused:
                    await upstream.fetch("GET", target)
                assert refused.value.kind == UpstreamError.TARGET and refused.value.as_response().status == 400
            assert hs.seen == []
            assert (await upstream.fetch("GET", "/_matrix/client/versions?x=%7B%22a%22%3A1%7D")).status == 200
        finally:
            await upstream.close()


async def test_no_cookie_crosses_from_one_request_to_the_next():
    async with Scripted() as hs:
        upstream = Upstream(hs.url)
        try:
            hs.mode = "cookie"
            first = await upstream.fetch("GET", "/_matrix/client/versions", token="syt_alice")
            assert any(name == "Set-Cookie" for name, _ in first.headers)
            hs.mode = "plain"
            await upstream.fetch("GET", "/_matrix/client/versions", token="syt_bob")
        finally:
            await upstream.close()
    assert "Cookie" not in hs.seen[1]


@pytest.fixture(scope="module")
def proxied_synapse(tmp_path_factory: pytest.TempPathFactory):
    """Configured as operators run one behind a proxy: gzip on, X-Forwarded-For
    trusted, logins limited per address (one, then one per 5 minutes)."""
    pytest.importorskip("synapse", reason="matrix-synapse is not installed")
    from coap_gateway.tools.synapse_process import LocalSynapse

    server = LocalSynapse(tmp_path_factory.mktemp("synapse-proxied"), compress=True, x_forwarded=True,
                          extra_config={"rc_login": {"address": {"per_second": 0.003, "burst_count": 1}}})
    run_in_fresh_loop(server.start())
    try:
        yield server
    finally:
        run_in_fresh_loop(server.stop())


@pytest.mark.synapse
async def test_a_synapse_that_gzips_works_through_the_gateways(proxied_synapse, server_key):
    # the homeserver really does gzip for a client that offers it
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxied_synapse.base_url}/_matrix/client/versions",
                            headers={"Accept-Encoding": "gzip"}, auto_decompress=False) as direct:
            assert direct.headers.get("Content-Encoding") == "gzip"

    name = f"gz{uuid.uuid4().hex[:6]}"
    async with Device(FAST, proxied_synapse, server_key, 1) as dev:  # secure, sync push: the defaults
        client = nio(dev.client.base_url, name)
        try:
            await register(client, name)
            room = await client.room_create(name="gzip")
            assert isinstance(await client.sync(timeout=0), SyncResponse)
            sent = await client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
            assert isinstance(sent, RoomSendResponse)
            seen = False
            for _ in range(10):  # the push loop's long-polls cross Synapse's gzip listener too
                sync = await client.sync(timeout=30000)
                assert isinstance(sync, SyncResponse), sync
                joined = sync.rooms.join.get(room.room_id)
                if joined and any(e.event_id == sent.event_id for e in joined.timeline.events):
                    seen = True
                    break
            assert seen, "the message never came back through sync"
            history = await client.room_messages(room.room_id, start="", limit=10)
            assert any(getattr(e, "event_id", None) == sent.event_id for e in history.chunk)
            assert dev.server.gateway.counters.upstream_errors == 0
        finally:
            await client.close()


async def _login(base: str, name: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/_matrix/client/v3/login", headers=headers or {}, json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
                "password": "password-" + name}) as answer:
            return answer.status, await answer.json()


@pytest.mark.synapse
async def test_each_device_is_known_to_the_homeserver_by_its_own_address(proxied_synapse, tmp_path):
    """Two devices on their own addresses (127.0.0.5, 127.0.0.6) log in through one server gateway
    under a homeserver limit of one login per address: both get in, and the homeserver records
    each device's address — for its requests and its pushed sync loop alike — not the gateway's."""
    server_priv, _ = keys.generate_keypair()
    server_link = await UdpLink.open("127.0.0.1", 0)
    server = await start_server(server_link, homeserver=proxied_synapse.base_url, profile=PROFILE,
                                static_private=server_priv, state_dir=tmp_path)
    devices = []
    try:
        for host in ("127.0.0.5", "127.0.0.6"):
            link = await UdpLink.open(host, 0)
            devices.append(await start_client(link, server_link.local_address, profile=PROFILE,
                                              static_private=keys.generate_keypair()[0],
                                              server_public=keys.public_from_private(server_priv)))
        names = [f"xff{uuid.uuid4().hex[:6]}" for _ in devices]
        for device, name in zip(devices, names):
            client = nio(device.base_url, name)
            try:
                await register(client, name)
            finally:
                await client.close()
        # the second device asks to pass for the first, which has used its one login: its
        # headers never cross the link, the server gateway names its real address
        first = await _login(devices[0].base_url, names[0])
        second = await _login(devices[1].base_url, names[1], headers={"X-Forwarded-For": "127.0.0.5"})
        assert first[0] == second[0] == 200, (first, second)
        # a third login from the first device's address is the homeserver's to refuse
        again = await _login(devices[0].base_url, names[0])
        assert again[0] == 429 and again[1]["errcode"] == "M_LIMIT_EXCEEDED"

        # the first device's sync loop, pushed: the server gateway long-polls for it
        client = nio(devices[0].base_url, names[0])
        client.access_token, client.user_id = first[1]["access_token"], first[1]["user_id"]
        try:
            assert isinstance(await client.sync(timeout=0), SyncResponse)
            assert isinstance(await client.sync(timeout=100), SyncResponse)
            assert server.gateway.sync_push is not None and server.gateway.sync_push.counters.polls >= 1
        finally:
            await client.close()
        admin = await proxied_synapse.admin_token()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{proxied_synapse.base_url}/_synapse/admin/v1/whois/{first[1]['user_id']}",
                                headers={"Authorization": f"Bearer {admin}"}) as answer:
                whois = await answer.json()
        seen = {(c["ip"], c["user_agent"]) for d in whois["devices"].values()
                for s in d["sessions"] for c in s["connections"]}
        assert seen == {("127.0.0.5", f"coap-gateway/{__version__}")}, seen
    finally:
        for device in devices:
            await device.stop()
        await server.stop()


def test_the_address_the_homeserver_is_told():
    gateway = ServerGateway(ServerGatewayConfig("http://hs", PROFILE), sync_push=None)
    for address, told in [(("127.0.0.5", 40000), "127.0.0.5"), (("::ffff:192.0.2.7", 5683, 0, 0), "192.0.2.7"),
                          (("2001:db8::1", 5683, 0, 0), "2001:db8::1"), ("line", None), (("node-3", 1), None),
                          (None, None)]:
        gateway.address_of = lambda remote, address=address: address
        assert gateway.forwarded_for(object()) == told, address


class Paths(ScriptedServer):
    """Records the raw path of each request; answers ``{}``."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.answer)

    async def answer(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        return web.json_response({})


async def test_dot_segments_are_refused_and_admin_is_found_however_encoded():
    """Synapse takes ``%2e%2e`` as a room ID, but a front proxy that
    normalises paths walks up with it: ``rooms/%2e%2e/…/_synapse/admin``
    reached the admin API behind one.  A ``.`` or ``..`` segment, however
    encoded (also inside a segment with encoded slashes), is refused before
    anything is forwarded; an admin prefix hidden by an encoded or doubled
    slash is refused as admin.  Encoded slashes themselves go through: a room
    v3 event ID has them."""
    from yarl import URL

    from meshsim import emulated_link_pair

    async with Paths() as hs:
        client_link, server_link = emulated_link_pair(FAST, seed=7)
        server = await start_server(server_link, homeserver=hs.url, profile=PROFILE, static_private=None,
                                    sync_push=False)
        client = await start_client(client_link, "server", profile=PROFILE, sync_push=False)
        try:
            async with aiohttp.ClientSession() as http:
                async def status(path: str) -> int:
                    async with http.get(URL(client.base_url + path, encoded=True),
                                        headers={"Authorization": "Bearer syt_a"}) as answer:
                        return answer.status

                up = "/_matrix/client/v3/rooms/%2e%2e/%2e%2e/%2e%2e/%2e%2e/_synapse/admin/v1/server_version"
                for path in (up, "/_matrix/client/v3/rooms/%2E%2E%2F%2E%2E%2F_synapse%2Fadmin/messages",
                             "/_matrix/client/v3/rooms/x%5C..%5C../state", "/_matrix/client/v3/profile/%2e/x"):
                    assert await status(path) == 400, path
                for path in ("/_synapse%2Fadmin/v1/server_version", "/_synapse%5cadmin/v1/server_version"):
                    assert await status(path) == 403, path
                event = "/_matrix/client/v3/rooms/!r:hs/event/$AbC%2Fdef%2Bghi"
                assert await status(event) == 200
        finally:
            await client.stop()
            await server.stop()
    assert hs.paths == [event]
    assert server.gateway.counters.refused_paths == 4 and server.gateway.counters.refused_admin == 2
