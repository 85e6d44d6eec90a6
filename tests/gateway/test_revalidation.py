"""Revalidation end to end (codec.revalidation; docs/protocol.md §8b): a GET
whose answer did not change crosses the link as an ETag and 2.03 Valid; a
changed answer comes whole; one account never gets another's.

A client gateway and a server gateway (secure, the default profile) on a
2400 bit/s link in front of a real Synapse; the requests are plain HTTP to the
client gateway, as any client sends them; the link's bytes are counted at the
emulated link.  At that rate each answer takes over a second, so Synapse's
`Date` header differs between two asks (it must not change the ETag: it
does not cross the link).
"""

from __future__ import annotations

import json
import uuid

import aiohttp
import pytest

from meshsim import LinkProfile
from tests.helpers.devices import Device

pytestmark = pytest.mark.synapse

SLOW = LinkProfile(rate_bps=2400, delay=0.1)
VERSIONS = "/_matrix/client/versions"
PUSHRULES = "/_matrix/client/v3/pushrules/"


async def register(http: aiohttp.ClientSession, synapse, name: str) -> str:
    """An account made straight on Synapse (not through the gateways)."""
    async with http.post(f"{synapse.base_url}/_matrix/client/v3/register",
                         json={"username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"}}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["access_token"]


async def test_an_unchanged_answer_crosses_as_an_etag_and_a_changed_one_whole(synapse, server_key):
    suffix = uuid.uuid4().hex[:6]
    async with Device(SLOW, synapse, server_key, seed=21) as dev, aiohttp.ClientSession() as http:
        alice = await register(http, synapse, f"alice{suffix}")
        bob = await register(http, synapse, f"bob{suffix}")
        client, server = dev.client.gateway.counters, dev.server.gateway.counters

        async def get(path: str, token: str | None = None) -> tuple[dict, int]:
            before = sum(dev.link_bytes())
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.get(dev.client.base_url + path, headers=headers) as r:
                assert r.status == 200, await r.text()
                return await r.json(), sum(dev.link_bytes()) - before

        async with http.get(synapse.base_url + VERSIONS) as r:
            direct = await r.json()
        await get(VERSIONS, alice)  # the session's handshake, and alice's own /versions
        first, first_bytes = await get(VERSIONS)
        again, again_bytes = await get(VERSIONS)
        print(f"\n/versions: {first_bytes} B on the link, then {again_bytes} B")
        assert first == again == direct
        assert client.revalidated == server.revalidated == 1
        # the whole answer once (~416 B of deflated CBOR), then an ETag each way
        assert first_bytes > 400 and again_bytes <= 70

        # per account: the user-name push rule names each user
        rules_a, _ = await get(PUSHRULES, alice)
        rules_b, _ = await get(PUSHRULES, bob)
        assert f"alice{suffix}" in json.dumps(rules_a) and f"alice{suffix}" not in json.dumps(rules_b)
        assert client.revalidated == 1  # bob's first ask is not answered from alice's

        # a change through the gateway: the next answer is the new one, whole
        rule = f"{PUSHRULES}global/content/cake{suffix}"
        async with http.put(dev.client.base_url + rule, headers={"Authorization": f"Bearer {alice}"},
                            json={"pattern": "cake", "actions": ["notify"]}) as r:
            assert r.status == 200, await r.text()
        changed, changed_bytes = await get(PUSHRULES, alice)
        assert f"cake{suffix}" in json.dumps(changed) and f"cake{suffix}" not in json.dumps(rules_a)
        assert client.revalidated == server.revalidated == 1
        same, same_bytes = await get(PUSHRULES, alice)
        bob_again, _ = await get(PUSHRULES, bob)
        assert same == changed and bob_again == rules_b
        assert client.revalidated == server.revalidated == 3
        print(f"/pushrules/ after a change: {changed_bytes} B, unchanged: {same_bytes} B")
        assert same_bytes < changed_bytes
