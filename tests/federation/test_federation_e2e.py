"""Two stock Synapses federating through a pair of gateways (issue 12, milestone 1).

Synapse A and Synapse B (SQLite, unpatched, signatures checked) each send
their outbound federation to their own gateway (``https_proxy``, trusting
the gateway's CA through ``federation_custom_ca_list``); the gateways carry
it as CoAP + CBOR + Flate in one Noise session over an emulated link
(the default profile) to the other gateway, which hands it to the other Synapse's
federation listener.  Everything is checked through each Synapse's own
client API.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from urllib.parse import quote

import aiohttp
import pytest

from coap_gateway.app.federation import homeserver_lines
from coap_gateway.federation import CA_CERT, FederationCA
from coap_gateway.tools import LocalSynapse, free_port
from meshsim import LinkProfile, emulated_link_pair
from tests.federation.helpers import sessions_up, start_pair

pytestmark = pytest.mark.synapse

FAST = LinkProfile(rate_bps=1_000_000, delay=0.002)
NAME_A, NAME_B = "hs-a.test", "hs-b.test"


def synapse_config(proxy_port: int, ca_dir) -> dict:
    return {
        # exactly the lines docs/operator.md lists
        "https_proxy": f"http://127.0.0.1:{proxy_port}",
        "federation_custom_ca_list": [str(ca_dir / CA_CERT)],
        # quiet federation: no presence EDUs between the two
        "presence": {"enabled": False},
    }


class Client:
    """A user of one Synapse, through its own client API (no gateway)."""

    def __init__(self, http: aiohttp.ClientSession, base: str):
        self.http, self.base, self.token, self.user_id = http, base, "", ""

    async def call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            data = await r.json()
            assert r.status == 200, (method, path, r.status, data)
            return data

    async def register(self, name: str) -> None:
        data = await self.call("POST", "/_matrix/client/v3/register",
                               {"username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"}})
        self.token, self.user_id = data["access_token"], data["user_id"]

    async def send(self, room: str, text: str) -> str:
        path = f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/{uuid.uuid4().hex}"
        return (await self.call("PUT", path, {"msgtype": "m.text", "body": text}))["event_id"]

    async def wait_for(self, room: str, event_id: str, timeout: float = 60.0) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            path = f"/_matrix/client/v3/rooms/{quote(room)}/event/{quote(event_id)}"
            headers = {"Authorization": f"Bearer {self.token}"}
            async with self.http.get(self.base + path, headers=headers) as r:
                if r.status == 200:
                    return await r.json()
            await asyncio.sleep(0.1)
        raise AssertionError(f"{event_id} never reached {self.base}")


async def test_two_stock_synapses_federate_through_the_gateways(tmp_path):
    link_a, link_b = emulated_link_pair(FAST, names=("a", "b"), seed=12)
    port_a, port_b = free_port(), free_port()
    proxy_a, proxy_b = free_port(), free_port()
    # the CAs exist before the homeservers read their config
    FederationCA(tmp_path / "gw-a"), FederationCA(tmp_path / "gw-b")
    hs_a = LocalSynapse(tmp_path / "hs-a", server_name=NAME_A, port=port_a,
                        extra_config=synapse_config(proxy_a, tmp_path / "gw-a"))
    hs_b = LocalSynapse(tmp_path / "hs-b", server_name=NAME_B, port=port_b,
                        extra_config=synapse_config(proxy_b, tmp_path / "gw-b"))
    assert homeserver_lines(f"http://127.0.0.1:{proxy_a}", tmp_path / "gw-a" / CA_CERT)[0] == \
        f"https_proxy: {hs_a.extra_config['https_proxy']}"
    gw_a, gw_b = await start_pair(link_a, link_b, name_a=NAME_A, name_b=NAME_B,
                                  homeserver_a=f"http://127.0.0.1:{port_a}",
                                  homeserver_b=f"http://127.0.0.1:{port_b}", tmp=tmp_path)
    await gw_a.proxy.close(), await gw_b.proxy.close()
    await gw_a.proxy.start("127.0.0.1", proxy_a), await gw_b.proxy.start("127.0.0.1", proxy_b)
    try:
        await sessions_up(gw_a, gw_b)
        await asyncio.gather(hs_a.start(), hs_b.start())
        async with aiohttp.ClientSession() as http:
            alice, bob = Client(http, hs_a.base_url), Client(http, hs_b.base_url)
            await alice.register("alice")
            await bob.register("bob")
            room = (await alice.call("POST", "/_matrix/client/v3/createRoom",
                                     {"preset": "public_chat", "name": "over CoAP"}))["room_id"]
            started = time.monotonic()
            before_join = link_a.sent_bytes, link_b.sent_bytes
            joined = await bob.call("POST", f"/_matrix/client/v3/join/{quote(room)}?server_name={NAME_A}", {})
            join_seconds = time.monotonic() - started
            join_bytes = link_a.sent_bytes - before_join[0], link_b.sent_bytes - before_join[1]
            assert joined["room_id"] == room
            # B -> A and A -> B, each checked on the receiving homeserver
            from_bob = await bob.send(room, "hello from B")
            assert (await alice.wait_for(room, from_bob))["content"]["body"] == "hello from B"
            await asyncio.sleep(1.0)  # let the first transactions and their answers settle
            sent_before = link_a.sent_bytes, link_b.sent_bytes, link_a.sent_frames, link_b.sent_frames
            recorded = _record_requests(gw_a)
            from_alice = await alice.send(room, "Hello, see you at 5pm")
            event = await bob.wait_for(room, from_alice)
            assert event["content"]["body"] == "Hello, see you at 5pm" and event["sender"] == alice.user_id
            await asyncio.sleep(1.0)  # the answer to the transaction
            w6 = (link_a.sent_bytes - sent_before[0], link_b.sent_bytes - sent_before[1],
                  link_a.sent_frames - sent_before[2], link_b.sent_frames - sent_before[3])
            members = await bob.call("GET", f"/_matrix/client/v3/rooms/{quote(room)}/joined_members")
            assert set(members["joined"]) == {alice.user_id, bob.user_id}

            # gateway B forgets what it shares with A (as a restart would): A's references
            # no longer resolve, B answers 4.12, A sends the transaction again whole
            from coap_gateway.federation.compact import PeerWire
            gw_b.gateway.wire[gw_a.public] = PeerWire()
            again = await alice.send(room, "after B forgot")
            assert (await bob.wait_for(room, again))["content"]["body"] == "after B forgot"
            assert gw_a.gateway.counters.compact_resent == 1 and gw_b.gateway.counters.compact_unresolved == 1

        # nothing was refused or stripped: stock Synapse B verified A's X-Matrix and
        # signatures (a stripped header is a 401, a changed body a 401/403)
        for gw in (gw_a, gw_b):
            assert gw.gateway.counters.refused == {}, gw.gateway.counters
            assert gw.proxy.counters.connects_refused == 0 and gw.proxy.counters.requests_refused == 0
            assert not any(400 <= s < 600 and s != 404 for s in gw.gateway.counters.by_status), \
                gw.gateway.counters.by_status
        assert gw_a.proxy.counters.requests > 0 and gw_b.proxy.counters.requests > 0
        # both looked the other up through the proxy: the well-known answered by the gateway
        assert gw_a.proxy.counters.well_known >= 1 and gw_b.proxy.counters.well_known >= 1
        # one Noise session for the pair, used both ways: one handshake, one session at the responder
        handshakes = sum(c.handshakes for gw in (gw_a, gw_b) for c in gw.codec.clients.values())
        responder_sessions = sum(gw.codec.server.sessions_established for gw in (gw_a, gw_b))
        assert handshakes == 1 and responder_sessions == 1
        # W6 is one transaction crossing (and its answer): print what it is made of
        assert [m[0] for m in recorded][:1] == ["PUT"], recorded
        # issue 12: the compact form, every ID the pair shares as a reference, the key ID
        # learnt, the answer an empty 2.04: <= 260 B link level, <= 344 B with headers
        assert recorded[0][1] == "." and recorded[0][2]["x_matrix_option"] == 0
        assert w6[2] == 1 and w6[3] == 1
        assert w6[0] + w6[1] <= 260 and w6[0] + w6[1] + 42 * (w6[2] + w6[3]) <= 344, w6
        assert gw_a.gateway.counters.compact_accepted >= 2 and gw_b.gateway.counters.compact_served >= 2
        assert gw_a.gateway.counters.served > 0 and gw_b.gateway.counters.served > 0
        print(f"\nfederated join {join_seconds:.2f} s, {join_bytes[1]} B B->A + {join_bytes[0]} B A->B; W6 one m.text: A->B {w6[0]} B "
              f"({w6[2]} frames), B->A {w6[1]} B ({w6[3]} frames), total {w6[0] + w6[1]} B link level, "
              f"{w6[0] + w6[1] + 42 * (w6[2] + w6[3])} B with Ethernet+IPv4+UDP")
        print("W6 request:", recorded[0])
        print("gateway A:", json.dumps(vars(gw_a.gateway.counters), default=str))
        print("gateway B:", json.dumps(vars(gw_b.gateway.counters), default=str))
    finally:
        await asyncio.gather(hs_a.stop(), hs_b.stop())
        await gw_a.stop()
        await gw_b.stop()


def _record_requests(gw) -> list:
    """Record what each request gateway ``gw`` sends over the link is made of."""
    from coap_gateway.federation import X_MATRIX

    original = gw.endpoint.request

    async def request(message, key, timeout=None):
        # header 4, empty token, options, payload marker and payload
        encoded = 4 + len(message.opt.encode()) + (1 + len(message.payload) if message.payload else 0)
        x_matrix = sum(len(o.value) + 3 for o in message.opt.get_option(X_MATRIX))
        path = "/".join(message.opt.uri_path)
        recorded.append((message.code.name, path, {
            "coap_message": encoded, "x_matrix_option": x_matrix, "payload": len(message.payload),
            "uri_path_bytes": sum(len(p.encode()) + 1 for p in message.opt.uri_path)}))
        return await original(message, key, timeout)

    recorded: list = []
    gw.endpoint.request = request
    return recorded
