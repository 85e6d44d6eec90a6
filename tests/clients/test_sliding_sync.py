"""Sliding sync (MSC4186, "simplified sliding sync") through the gateways.

It is Element X's only way to sync, so it must work through the gateways as it
works against Synapse: the first request lists the rooms, a later one with
``pos`` and ``timeout`` is held by the homeserver until there is news and
brings it.  Element X itself (the Rust SDK) is not run here; these are its
requests, by raw HTTP, as MSC4186 defines them.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from tests.helpers.devices import FAST, Device

pytestmark = pytest.mark.synapse

SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
REQUEST = {"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1,
                             "required_state": [["m.room.name", ""]]}}}


async def _conversation(base: str) -> dict[str, object]:
    """Register, create a room, sync it, then long-poll while a message is sent."""
    name = f"ss{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/_matrix/client/v3/register", json={
                "username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"}}) as answer:
            assert answer.status == 200, await answer.text()
            auth = {"Authorization": f"Bearer {(await answer.json())['access_token']}"}
        async with http.post(f"{base}/_matrix/client/v3/createRoom", json={"name": "sliding"},
                             headers=auth) as answer:
            room_id = (await answer.json())["room_id"]
        async with http.post(f"{base}{SLIDING_SYNC}", json=REQUEST, headers=auth) as answer:
            assert answer.status == 200, await answer.text()
            first = await answer.json()

        async def long_poll() -> dict:
            async with http.post(f"{base}{SLIDING_SYNC}?pos={first['pos']}&timeout=30000", json=REQUEST,
                                 headers=auth) as answer:
                assert answer.status == 200, await answer.text()
                return await answer.json()

        polling = asyncio.ensure_future(long_poll())
        async with http.put(f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                            json={"msgtype": "m.text", "body": "Hello, see you at 5pm"}, headers=auth) as answer:
            assert answer.status == 200
            event_id = (await answer.json())["event_id"]
        news = await asyncio.wait_for(polling, 60)
    return {
        "listed": first["lists"]["all"]["count"],
        "named": first["rooms"][room_id]["name"],
        "news": [e["event_id"] for e in news["rooms"][room_id]["timeline"]] == [event_id],
        "body": news["rooms"][room_id]["timeline"][0]["content"]["body"],
        "moved": news["pos"] != first["pos"],
    }


async def test_sliding_sync_through_the_gateways_as_against_synapse(synapse, server_key):
    direct = await _conversation(synapse.base_url)
    async with Device(FAST, synapse, server_key, 1) as device:  # secure, lb4, sync push: the defaults
        through = await _conversation(device.client.base_url)
    expected = {"listed": 1, "named": "sliding", "news": True, "body": "Hello, see you at 5pm", "moved": True}
    assert direct == expected
    assert through == expected
