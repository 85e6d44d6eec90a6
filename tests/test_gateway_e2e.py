"""End to end: matrix-nio → client gateway → emulated link → server gateway → real Synapse."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)

from coap_gateway import keys
from coap_gateway.links import emulated_link_pair
from coap_gateway.profile import load_profile
from coap_gateway.runner import advertisement_for, start_client, start_server
from coap_gateway.server_gateway import ADVERTISEMENT_KEY
from meshsim.link import LinkProfile

pytestmark = pytest.mark.synapse

PROFILE = load_profile("lb2")
FAST = LinkProfile(rate_bps=1_000_000, delay=0.002)


class Device:
    """One user's device: a client gateway on its own link to a server gateway."""

    def __init__(self, link_profile: LinkProfile, synapse, server_priv, seed: int):
        self.link_profile = link_profile
        self.synapse = synapse
        self.server_priv = server_priv
        self.seed = seed

    async def __aenter__(self):
        self.client_link, self.server_link = emulated_link_pair(self.link_profile, seed=self.seed)
        self.server = await start_server(self.server_link, homeserver=self.synapse.base_url, profile=PROFILE,
                                         static_private=self.server_priv,
                                         advertisement=advertisement_for("emulated", self.server_priv, PROFILE))
        client_priv, _ = keys.generate_keypair()
        self.client = await start_client(self.client_link, "server", profile=PROFILE, static_private=client_priv,
                                         server_public=keys.public_from_private(self.server_priv))
        return self

    async def __aexit__(self, *exc):
        await self.client.stop()
        await self.server.stop()

    def reshape(self, profile: LinkProfile) -> None:
        """Change the link at runtime (queued frames are not flushed)."""
        loop = asyncio.get_running_loop()
        for end in (self.client_link, self.server_link):
            end.models[0].set_profile(profile, loop.time())
            end.budget = type(end.budget)(rate_bps=profile.rate_bps, frame_overhead=max(0, profile.overhead),
                                          latency=profile.delay + profile.jitter, max_frame=end.budget.max_frame,
                                          max_retransmit=end.budget.max_retransmit)
        for gateway_end in (self.client.endpoint, self.server.endpoint):
            mman = gateway_end.interface.mman
            mman.budget = gateway_end.interface.link.budget
            mman.timers.clear()

    def link_bytes(self) -> tuple[int, int]:
        return sum(map(len, self.client_link.sent)), sum(map(len, self.server_link.sent))


def nio(base_url: str, user: str) -> AsyncClient:
    return AsyncClient(base_url, user, config=AsyncClientConfig(request_timeout=900, max_timeouts=0))


async def register(client: AsyncClient, name: str) -> None:
    resp = await client.register(name, "password-" + name, device_name="test")
    assert isinstance(resp, RegisterResponse), resp


@pytest.fixture
def server_key():
    return keys.generate_keypair()[0]


async def test_a_chat_through_the_gateways(synapse, server_key):
    suffix = uuid.uuid4().hex[:6]
    async with Device(FAST, synapse, server_key, 1) as dev_a, Device(FAST, synapse, server_key, 2) as dev_b:
        alice, bob = nio(dev_a.client.base_url, f"alice{suffix}"), nio(dev_b.client.base_url, f"bob{suffix}")
        try:
            await register(alice, f"alice{suffix}")
            await register(bob, f"bob{suffix}")
            # login too (register already logged in): a second device, a new token
            login = await alice.login("password-" + f"alice{suffix}", device_name="second")
            assert isinstance(login, LoginResponse)
            assert isinstance(await alice.sync(timeout=0), SyncResponse)  # initial sync

            room = await alice.room_create(name="gateway test", invite=[bob.user_id])
            assert isinstance(room, RoomCreateResponse)
            assert isinstance(await bob.join(room.room_id), JoinResponse)
            sent = await alice.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "Hello, see you at 5pm"})
            assert isinstance(sent, RoomSendResponse) and sent.event_id.startswith("$")

            # bob receives it by sync, exactly as the homeserver produced it
            got = await _wait_for_message(bob, room.room_id, "Hello, see you at 5pm")
            assert got.event_id == sent.event_id

            # state, redaction, pagination, profile, typing, receipts
            assert (await alice.room_put_state(room.room_id, "m.room.topic", {"topic": "via CoAP"})).event_id
            reply = await bob.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "on my way"})
            assert (await bob.room_redact(room.room_id, reply.event_id, reason="typo")).event_id
            history = await alice.room_messages(room.room_id, start="", limit=20)
            assert isinstance(history, RoomMessagesResponse) and any(
                getattr(e, "body", None) == "Hello, see you at 5pm" for e in history.chunk)
            await alice.set_displayname("Alice via CoAP")
            assert (await bob.get_displayname(alice.user_id)).displayname == "Alice via CoAP"
            assert type(await alice.room_typing(room.room_id, True)).__name__ == "RoomTypingResponse"
            assert type(await bob.room_read_markers(room.room_id, sent.event_id, sent.event_id)).__name__ == "RoomReadMarkersResponse"
            assert (await bob.room_leave(room.room_id)).__class__.__name__ == "RoomLeaveResponse"

            # alice's tokens crossed the link once each (register's, then login's),
            # however many requests used them
            counters = dev_a.client.gateway.counters
            assert counters.token_sent == 2 and counters.requests >= 9

            await _errors_reach_the_client_as_sent(synapse, dev_a, alice, room.room_id)
            await _admin_refused_and_versions_advertised(dev_a)
            # the bad token of the 401 test, then alice's again: two more crossings
            assert counters.token_sent == 4
        finally:
            await alice.close()
            await bob.close()


async def _wait_for_message(client: AsyncClient, room_id: str, body: str, rounds: int = 10):
    for _ in range(rounds):
        resp = await client.sync(timeout=30000)
        assert isinstance(resp, SyncResponse), resp
        room = resp.rooms.join.get(room_id)
        for event in room.timeline.events if room else ():
            if getattr(event, "body", None) == body:
                return event
    raise AssertionError(f"{body!r} never arrived")


async def _errors_reach_the_client_as_sent(synapse, dev, alice: AsyncClient, room_id: str) -> None:
    base = dev.client.base_url
    headers = {"Authorization": f"Bearer {alice.access_token}"}
    async with aiohttp.ClientSession() as http:
        async def call(method, path, **kw):
            async with http.request(method, base + path, **kw) as r:
                return r.status, r.headers, await r.read()

        # 404 with the homeserver's Matrix error body
        status, _, body = await call("GET", "/_matrix/client/v3/directory/room/%23nope%3Alocalhost", headers=headers)
        assert status == 404 and json.loads(body)["errcode"] == "M_NOT_FOUND"
        # 403: another user's room state is forbidden
        status, _, body = await call("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/x1",
                                     headers={"Authorization": "Bearer not-a-token"}, json={"body": "x"})
        assert status == 401 and json.loads(body)["errcode"] == "M_UNKNOWN_TOKEN"
        status, _, body = await call("PUT", "/_matrix/client/v3/rooms/!nope:localhost/send/m.room.message/x2",
                                     headers=headers, json={"msgtype": "m.text", "body": "x"})
        assert status == 403 and json.loads(body)["errcode"] == "M_FORBIDDEN"
        # 429 with Retry-After: throttle this user, then send twice quickly
        await synapse.override_ratelimit(alice.user_id, messages_per_second=1, burst_count=1)
        statuses = []
        for i in range(4):
            status, hdrs, body = await call("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/rl{i}",
                                            headers=headers, json={"msgtype": "m.text", "body": f"{i}"})
            statuses.append((status, hdrs.get("Retry-After"), json.loads(body)))
        limited = [s for s in statuses if s[0] == 429]
        assert limited, statuses
        assert limited[0][2]["errcode"] == "M_LIMIT_EXCEEDED" and limited[0][1] is not None
        assert "retry_after_ms" in limited[0][2]


async def _admin_refused_and_versions_advertised(dev) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/_synapse/admin/v1/server_version", "/_synapse/%61dmin/v1/server_version"):
            async with http.get(dev.client.base_url + path) as r:
                assert r.status == 403 and (await r.json())["errcode"] == "M_FORBIDDEN"
        async with http.get(dev.client.base_url + "/_matrix/client/versions") as r:
            doc = await r.json()
        advert = doc[ADVERTISEMENT_KEY]
        assert advert["profile"] == PROFILE.id and advert["noise_public_key"]
        assert "versions" in doc
