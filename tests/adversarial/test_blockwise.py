"""Block-wise requests: concurrent uploads on one session, and what a device may make the server hold."""

from __future__ import annotations

import asyncio
import hashlib

import aiocoap.resource as resource
from aiocoap import Message
from aiocoap.numbers.codes import Code

from coap_gateway.transport import SERVER_KEY, create_link_endpoint
from meshsim import LinkProfile, emulated_link_pair
from tests.helpers.scripted import ScriptedServer
from tests.helpers.secure import PROFILE, SERVER_PRIV, SERVER_PUB, site_with  # noqa: F401

FAST = LinkProfile(rate_bps=1_000_000, delay=0.002)


class Bodies(resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    async def render_post(self, request):
        self.bodies.append(request.payload)
        return Message(code=Code.CHANGED, payload=hashlib.sha256(request.payload).digest()[:8])


async def test_concurrent_block_wise_requests_on_one_session_each_arrive_whole():
    # frames of 256 B: a 3 kB body goes in 16-byte… 128-byte blocks
    client_link, server_link = emulated_link_pair(FAST, max_frame=256)
    app = Bodies()
    server = await create_link_endpoint(server_link, site=site_with(app))
    client = await create_link_endpoint(client_link)
    bodies = [bytes([n]) * 3000 for n in (0x41, 0x42, 0x43)]  # same path, same options
    try:
        async def upload(body: bytes) -> Message:
            return await client.request(Message(code=Code.POST, uri_path=["x"], payload=body), "server", 30)

        answers = await asyncio.gather(*(upload(b) for b in bodies))
        assert sorted(app.bodies) == sorted(bodies)  # each whole, none mixed
        assert [a.payload for a in answers] == [hashlib.sha256(b).digest()[:8] for b in bodies]
        assert all(a.code == Code.CHANGED for a in answers)
    finally:
        await client.shutdown()
        await server.shutdown()


class EchoHomeserver(ScriptedServer):
    """A stand-in homeserver for this one layer: answers an upload with the
    SHA-256 of what it received."""

    def __init__(self) -> None:
        from aiohttp import web

        self.web = web
        self.app = web.Application(client_max_size=64 << 20)
        self.app.router.add_post("/_matrix/media/v3/upload", self.upload)
        self.received: list[int] = []

    async def upload(self, request):
        body = await request.read()
        self.received.append(len(body))
        return self.web.json_response({"content_uri": "mxc://hs/" + hashlib.sha256(body).hexdigest()[:16]})



async def test_uploads_are_capped_per_request_and_per_device():
    import aiohttp

    from coap_gateway.app import start_client, start_server
    from coap_gateway.codec import load_profile

    profile = load_profile("lb3")
    async with EchoHomeserver() as hs:
        client_link, server_link = emulated_link_pair(FAST, max_frame=1152)
        server = await start_server(server_link, homeserver=hs.url, profile=profile, static_private=None)
        client = await start_client(client_link, "server", profile=profile)
        limit = server.gateway.config.max_upload
        headers = {"Authorization": "Bearer tok", "Content-Type": "application/octet-stream"}
        try:
            async with aiohttp.ClientSession() as http:
                url = client.base_url + "/_matrix/media/v3/upload?filename=a.bin"
                async with http.post(url, data=b"x" * (limit // 2), headers=headers) as r:
                    assert r.status == 200 and (await r.json())["content_uri"].startswith("mxc://")
                async with http.post(url, data=b"x" * (limit + 1), headers=headers) as r:
                    assert r.status == 413  # 4.13 Request Entity Too Large, nothing forwarded
            assert hs.received == [limit // 2]
            assert server.gateway.counters.refused_uploads >= 1
        finally:
            await client.stop()
            await server.stop()
