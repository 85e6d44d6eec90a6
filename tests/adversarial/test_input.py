"""Hostile bodies: numbers Matrix JSON does not have.

Matrix's canonical JSON allows integers in [-(2**53)+1, 2**53-1] and no
NaN/Infinity.  A body outside that is answered as a homeserver answers bad
JSON (HTTP 400 M_NOT_JSON / M_BAD_JSON; 4.00 on the CoAP side), never with
5.00 and a traceback, and is never forwarded.  Real UDP, real Synapse.
"""

from __future__ import annotations

import json
import uuid

import aiohttp
import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from coap_gateway.app.runner import start_client, start_server
from coap_gateway.codec import compress, options
from coap_gateway.secure import keys
from coap_gateway.transport import UdpLink
from tests.helpers.devices import PROFILE, nio, register

pytestmark = pytest.mark.synapse

BIG = "9" * 9600  # beyond Python's int<->str limit (4300 digits)
NOT_MATRIX_JSON = {
    "9600 digits": b'{"n": ' + BIG.encode() + b"}",
    "2**53": b'{"n": 9007199254740992}',
    "-(2**53)": b'{"n": [-9007199254740992]}',
    "2**64": b'{"n": 18446744073709551616}',
    "NaN": b'{"n": NaN}',
    "Infinity": b'{"n": Infinity}',
    "-Infinity": b'{"n": {"m": -Infinity}}',
    "1e400": b'{"n": 1e400}',
    "-1e400": b'{"n": -1e400}',
}


class UdpPair:
    """Client gateway and server gateway on real UDP sockets, Noise between them."""

    def __init__(self, synapse, server_key, state_dir):
        self.synapse, self.server_key, self.state_dir = synapse, server_key, state_dir

    async def __aenter__(self):
        server_link = await UdpLink.open("127.0.0.1", 0)
        self.server = await start_server(server_link, homeserver=self.synapse.base_url, profile=PROFILE,
                                         static_private=self.server_key, state_dir=self.state_dir)
        client_link = await UdpLink.open("127.0.0.1", 0)
        self.client = await start_client(client_link, server_link.local_address, profile=PROFILE,
                                         static_private=keys.generate_keypair()[0],
                                         server_public=keys.public_from_private(self.server_key))
        return self

    async def __aexit__(self, *exc):
        await self.client.stop()
        await self.server.stop()

    async def coap(self, message: Message) -> Message:
        """One raw CoAP request over the secure session, as a hostile client gateway sends it."""
        return await self.client.endpoint.request(message, self.client.gateway.server_key, 30)


async def test_the_client_gateway_answers_numbers_json_does_not_have_with_400(synapse, server_key, tmp_path):
    async with UdpPair(synapse, server_key, tmp_path) as pair:
        user = f"numbers{uuid.uuid4().hex[:6]}"
        matrix = nio(pair.client.base_url, user)
        await register(matrix, user)
        url = f"{pair.client.base_url}/_matrix/client/v3/user/{matrix.user_id}/account_data/net.example.n"
        auth = {"Authorization": f"Bearer {matrix.access_token}", "Content-Type": "application/json"}
        try:
            async with aiohttp.ClientSession() as http:
                frames = pair.client.endpoint.counters.frames_out
                for name, body in NOT_MATRIX_JSON.items():
                    async with http.put(url, data=body, headers=auth) as r:
                        answer = await r.json()
                        assert r.status == 400, (name, r.status, answer)
                        assert answer["errcode"] in ("M_NOT_JSON", "M_BAD_JSON"), (name, answer)
                # answered where it came in: nothing crossed the link, nothing reached Synapse
                assert pair.client.endpoint.counters.frames_out == frames
                assert pair.server.gateway.counters.by_status == {200: pair.server.gateway.counters.by_status[200]}

                # the edges of the range and floats still cross exactly
                edges = b'{"e":1e+300,"f":1.0,"max":9007199254740991,"min":-9007199254740991,"z":-0.0}'
                async with http.put(url, data=edges, headers=auth) as r:
                    assert r.status == 200, await r.text()
                async with http.get(url, headers=auth) as r:
                    back = await r.read()
                assert json.loads(back) == json.loads(edges)
                assert b'"f":1.0' in back and b'"z":-0.0' in back  # floats stay floats
        finally:
            await matrix.close()


@pytest.mark.parametrize("value", [10**9600, 2**32000, -(10**9600), 2**64, 2**53, -(2**53), float("nan"), float("inf"),
                                   float("-inf")], ids=["bignum 9600 digits", "bignum 2**32000", "-bignum", "2**64", "2**53",
                                                        "-(2**53)", "NaN", "inf", "-inf"])
async def test_the_server_gateway_answers_such_cbor_with_4_00(synapse, server_key, tmp_path, value):
    async with UdpPair(synapse, server_key, tmp_path) as pair:
        codes = {}
        for deflated in (False, True):
            cbor = cbor2.dumps({"n": value})
            message = Message(code=Code.PUT, uri_path=["_matrix", "client", "v3", "user", "@x:hs", "account_data", "n"])
            message.opt.add_option(OpaqueOption(options.NO_TOKEN, b""))
            if deflated:
                message.payload = compress(cbor, PROFILE.flate)
            else:
                message.payload, message.opt.content_format = cbor, options.CF_CBOR
            codes["deflated" if deflated else "cbor"] = str((await pair.coap(message)).code)
        # 4.00, the gateway's own answer to a malformed request (the homeserver
        # would have said 4.01: no token); never 5.00
        assert codes == {"cbor": "4.00 Bad Request", "deflated": "4.00 Bad Request"}
        assert pair.server.gateway.counters.by_status == {}  # nothing was forwarded
