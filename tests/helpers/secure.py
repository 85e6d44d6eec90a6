"""A secure CoAP server and client over any link, for transport tests."""

from __future__ import annotations

import asyncio

import aiocoap.resource as resource
from aiocoap import Message
from aiocoap.numbers.codes import Code

from coap_gateway.codec import load_profile
from coap_gateway.secure import ClientEndpoint, ServerEndpoint, keys
from coap_gateway.transport import (
    SERVER_KEY,
    SecureClientCodec,
    SecureServerCodec,
    create_link_endpoint,
    profile_wire_digest,
)

PROFILE = load_profile("lb2")
DIGEST = profile_wire_digest(PROFILE)
SERVER_PRIV, SERVER_PUB = keys.generate_keypair()
EPOCH = 1_800_000_000.0


class Counting(resource.Resource):
    def __init__(self):
        super().__init__()
        self.executions: dict[bytes, int] = {}

    async def render_put(self, request):
        self.executions[request.payload] = self.executions.get(request.payload, 0) + 1
        return Message(code=Code.CHANGED, payload=b"ok:" + request.payload)


def site_with(res):
    site = resource.Site()
    site.add_resource(["x"], res)
    return site


async def secure_server(link, res, clock, static=SERVER_PRIV):
    codec = SecureServerCodec(ServerEndpoint(static, {PROFILE.id: DIGEST}), clock=clock)
    return await create_link_endpoint(link, site=site_with(res), codec=codec), codec


async def secure_client(link, server_addr, clock, *, server_public=SERVER_PUB, digest=DIGEST):
    client_priv, _ = keys.generate_keypair()
    codec = SecureClientCodec(ClientEndpoint(client_priv, PROFILE.id, digest, server_public=server_public),
                              server_addr, clock=clock)
    return await create_link_endpoint(link, codec=codec), codec


async def put(client, body: bytes, timeout: float | None = None) -> Message:
    msg = Message(code=Code.PUT, uri_path=["x"], payload=body)
    msg.remote = client.remote(SERVER_KEY)
    return await asyncio.wait_for(client.context.request(msg).response, timeout)


def virtual_wall_clock():
    loop = asyncio.get_running_loop()
    return lambda: EPOCH + loop.time()
