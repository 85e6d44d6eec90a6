"""What the server gateway asks the homeserver for, and what it refuses.

Synapse gzips its answers when its listener says ``compress: true`` and the
client accepts gzip — which aiohttp offers unless told otherwise.  The
gateway transcodes JSON itself, so it asks for the body as it is; an answer
encoded anyway is refused with a Matrix error, never passed on as JSON.
And it keeps no cookies: one jar behind many accounts would hand one user's
cookies to the next.
"""

from __future__ import annotations

import gzip
import json
import uuid

import pytest
from aiohttp import web
from nio import RoomSendResponse, SyncResponse

from coap_gateway import __version__
from coap_gateway.gateway.upstream import Upstream, UpstreamError
from tests.helpers.devices import FAST, Device, nio, register
from tests.helpers.loops import run_in_fresh_loop


class Scripted:
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

    async def __aenter__(self) -> Scripted:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


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
def gzip_synapse(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("synapse", reason="matrix-synapse is not installed")
    from coap_gateway.tools.synapse_process import LocalSynapse

    server = LocalSynapse(tmp_path_factory.mktemp("synapse-gzip"), compress=True)
    run_in_fresh_loop(server.start())
    try:
        yield server
    finally:
        run_in_fresh_loop(server.stop())


@pytest.mark.synapse
async def test_a_synapse_that_gzips_works_through_the_gateways(gzip_synapse, server_key):
    # the homeserver really does gzip for a client that offers it
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gzip_synapse.base_url}/_matrix/client/versions",
                            headers={"Accept-Encoding": "gzip"}, auto_decompress=False) as direct:
            assert direct.headers.get("Content-Encoding") == "gzip"

    name = f"gz{uuid.uuid4().hex[:6]}"
    async with Device(FAST, gzip_synapse, server_key, 1) as dev:  # secure, sync push: the defaults
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
