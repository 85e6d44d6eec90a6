"""End to end: matrix-nio → client gateway → emulated link → server gateway → real Synapse."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
from nio import (
    AsyncClient,
    JoinResponse,
    LoginResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)

from coap_gateway.app.runner import start_client, start_server
from coap_gateway.app import WELL_KNOWN_KEY
from coap_gateway.secure import keys
from meshsim import LinkProfile, emulated_link_pair
from tests.helpers.devices import (
    FAST,
    PROFILE,
    Device,
    chat_setup,
    nio,
    register,
    until,
)

pytestmark = pytest.mark.synapse

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

            # alice's tokens: register's was bound where it was issued (it never
            # crossed back up); nio sends its login with that token, so the
            # login's token is defined once; however many requests used them
            binding = dev_a.client.gateway.binding
            assert binding.counters.token_sent == 1 and dev_a.client.gateway.counters.requests >= 9
            assert binding.tokens[login.access_token] == 1 and binding.confirmed_tokens == {0, 1}

            await _errors_reach_the_client_as_sent(synapse, dev_a, alice, room.room_id)
            await _admin_refused_and_versions_as_synapse_says(synapse, dev_a)
            await _login_answers_without_well_known(synapse, dev_a, f"alice{suffix}")
            # the bad token of the 401 test crosses once, under a handle of its
            # own; alice's stays bound under hers (no "last token" to rebind)
            assert binding.counters.token_sent == 2
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


async def _admin_refused_and_versions_as_synapse_says(synapse, dev) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/_synapse/admin/v1/server_version", "/_synapse/%61dmin/v1/server_version"):
            async with http.get(dev.client.base_url + path) as r:
                assert r.status == 403 and (await r.json())["errcode"] == "M_FORBIDDEN"
        async with http.get(dev.client.base_url + "/_matrix/client/versions") as r:
            doc = await r.json()
        async with http.get(synapse.base_url + "/_matrix/client/versions") as r:
            direct = await r.json()
    # the endpoint is announced in .well-known (app.discovery), not to clients
    # already on the link: /versions is the homeserver's own
    assert doc == direct and WELL_KNOWN_KEY not in doc


async def _login_answers_without_well_known(synapse, dev, user: str) -> None:
    """Synapse's login answer names its own base URL in ``well_known``; a
    client following it would leave its gateway, so the gateway drops it."""
    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
             "password": "password-" + user}
    answers = {}
    async with aiohttp.ClientSession() as http:
        for name, base in (("synapse", synapse.base_url), ("gateway", dev.client.base_url)):
            async with http.post(base + "/_matrix/client/v3/login", json=login) as r:
                assert r.status == 200
                answers[name] = await r.json()
    assert answers["synapse"]["well_known"]["m.homeserver"]["base_url"].startswith(synapse.base_url)
    assert "well_known" not in answers["gateway"]
    assert answers["gateway"]["user_id"] == answers["synapse"]["user_id"] and answers["gateway"]["access_token"]


async def test_w1_w2_bytes_on_the_link(synapse, server_key):
    """W1: warm send + response; W2: the other user receiving it (link level)."""
    async with Device(FAST, synapse, server_key, 3) as dev_a, Device(FAST, synapse, server_key, 4) as dev_b:
        alice, bob, room_id = await chat_setup(synapse, dev_a, dev_b)
        try:
            # the session's first request naming the room defines its handle
            # (and the transaction scope): measured, then the warm send
            f0 = dev_a.link_bytes()
            first = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "first"})
            assert first.event_id.startswith("$")
            f1 = dev_a.link_bytes()
            await _wait_for_message(bob, room_id, "first")
            print(f"\nfirst send to the room in this session (defines the room handle and txn scope): "
                  f"request {f1[0] - f0[0]} B, response {f1[1] - f0[1]} B")
            receiving = asyncio.create_task(_wait_for_message(bob, room_id, "Hello, see you at 5pm"))
            # bob's long-poll waits at his client gateway on his sync push
            # observation (registered by the long-poll that got "first"):
            # nothing crosses the link until the message is pushed
            await until(dev_b.waiting_on_push)
            a0, b0 = dev_a.link_bytes(), dev_b.link_bytes()
            fa0, fb0 = dev_a.link_frames(), dev_b.link_frames()
            sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "Hello, see you at 5pm"})
            a1, fa1 = dev_a.link_bytes(), dev_a.link_frames()
            got = await receiving
            b1, fb1 = dev_b.link_bytes(), dev_b.link_frames()
            assert got.event_id == sent.event_id
            w1 = (a1[0] - a0[0]) + (a1[1] - a0[1])
            w2 = (b1[0] - b0[0]) + (b1[1] - b0[1])
            frames_w1, frames_w2 = fa1 - fa0, fb1 - fb0
            print(f"\nW1 = {w1} B link-level in {frames_w1} frames (request {a1[0] - a0[0]} B, response "
                  f"{a1[1] - a0[1]} B), {w1 + 42 * frames_w1} B with Ethernet+IPv4+UDP; "
                  f"W2 (pushed) = {w2} B link-level in {frames_w2} frames (ACK {b1[0] - b0[0]} B, notification "
                  f"{b1[1] - b0[1]} B), {w2 + 42 * frames_w2} B with Ethernet+IPv4+UDP")
            # DESIGN's W1 target, link level (deterministic: the room handle,
            # the message type, the txn number and the event ID's size are fixed)
            assert w1 <= 94 and frames_w1 == 2  # DESIGN: <= 100
            # W2: one CON notification and its 4-byte ACK (measured 101–103 B:
            # random event, room and user IDs move deflate by a byte or two;
            # tests/gateway/test_sync_push.py has the breakdown)
            assert frames_w2 == 2 and b1[0] - b0[0] == 4 and w2 <= 104
            assert frames_w1 > 0
        finally:
            await alice.close()
            await bob.close()



SLOW = LinkProfile(rate_bps=100, delay=0.5)


async def test_two_users_chat_both_ways_at_100_bps(synapse, server_key):
    """Set up on fast links, then shape both devices' links to 100 bit/s."""
    async with Device(FAST, synapse, server_key, 5) as dev_a, Device(FAST, synapse, server_key, 6) as dev_b:
        alice, bob, room_id = await chat_setup(synapse, dev_a, dev_b)
        try:
            dev_a.reshape(SLOW)
            dev_b.reshape(SLOW)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for sender, receiver, dev_s, body in ((alice, bob, dev_a, "ping at 100 bit/s"),
                                                   (bob, alice, dev_b, "pong at 100 bit/s")):
                before = dev_s.link_bytes()
                receiving = asyncio.create_task(_wait_for_message(receiver, room_id, body))
                sent = await sender.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
                assert isinstance(sent, RoomSendResponse), sent
                after = dev_s.link_bytes()
                # physics: the send's frames alone take their bits / 100 s
                assert loop.time() - t0 >= ((after[0] - before[0]) + (after[1] - before[1])) * 8 / 100
                assert (await receiving).event_id == sent.event_id
            assert dev_a.client.endpoint.counters.retransmissions == 0  # timers followed the link
        finally:
            await alice.close()
            await bob.close()


async def test_exactly_once_delivery_with_20pct_loss(synapse, server_key):
    lossy = LinkProfile(rate_bps=20_000, delay=0.05, loss=0.20)
    async with Device(FAST, synapse, server_key, 7, max_retransmit=10) as dev_a, \
            Device(FAST, synapse, server_key, 8, max_retransmit=10) as dev_b:
        alice, bob, room_id = await chat_setup(synapse, dev_a, dev_b)
        try:
            dev_a.reshape(lossy)
            dev_b.reshape(lossy)
            bodies = [f"lossy {i}" for i in range(8)]
            for body in bodies:
                sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
                assert isinstance(sent, RoomSendResponse), sent
            history = await bob.room_messages(room_id, start="", limit=50)
            seen = [e.body for e in history.chunk if getattr(e, "body", "").startswith("lossy ")]
            assert sorted(seen) == sorted(bodies)  # each exactly once in the room
            lost = sum(m.counters.dropped["loss"] for end in (dev_a.client_link, dev_a.server_link) for m in end.stages)
            assert lost > 0 and dev_a.client.endpoint.counters.retransmissions > 0
        finally:
            await alice.close()
            await bob.close()


async def test_media_upload_and_download_blockwise(synapse, server_key):
    """A 40 kB image crosses in CoAP blocks both ways, content type intact."""
    import io
    import os as _os

    image = b"\x89PNG\r\n\x1a\n" + _os.urandom(40_000)
    async with Device(FAST, synapse, server_key, 9) as dev:
        name = "m" + uuid.uuid4().hex[:8]
        client = nio(dev.client.base_url, name)
        try:
            await register(client, name)
            uploaded, _ = await client.upload(io.BytesIO(image), content_type="image/png", filename="pic.png",
                                              filesize=len(image))
            assert uploaded.content_uri.startswith("mxc://"), uploaded
            downloaded = await client.download(uploaded.content_uri)
            assert len(downloaded.body) == len(image)  # a 16 KiB cut once hid here (a short read)
            assert downloaded.body == image
            assert downloaded.content_type == "image/png"
            assert downloaded.filename == "pic.png"  # Content-Disposition crossed the link
            # both directions really went blockwise: no frame beyond the link's size
            assert max(map(len, dev.client_link.sent + dev.server_link.sent)) <= 1152 + 64
        finally:
            await client.close()


async def test_idle_cost_of_the_sync_loop(synapse, server_key):
    """W4: what an idle client's sync loop costs on the link — with sync push
    (the default), and polling every long-poll across for comparison."""
    async with Device(FAST, synapse, server_key, 10) as dev_a, \
            Device(FAST, synapse, server_key, 11, sync_push=False) as dev_b:
        alice, bob, _room = await chat_setup(synapse, dev_a, dev_b)
        try:
            cycles = 3
            # push: the first long-poll registers the observation (once per
            # stream); then the client gateway answers idle polls itself
            await alice.sync(timeout=0)
            r0, rf0 = dev_a.link_bytes(), dev_a.link_frames()
            await alice.sync(timeout=1000)
            r1, rf1 = dev_a.link_bytes(), dev_a.link_frames()
            await until(dev_a.push_has_template)  # (a template push may trail an answer)
            for _ in range(cycles):
                resp = await alice.sync(timeout=1000)  # nothing happens: an empty long-poll
                assert isinstance(resp, SyncResponse)
            r2, rf2 = dev_a.link_bytes(), dev_a.link_frames()
            registration = (r1[0] - r0[0]) + (r1[1] - r0[1])
            pushed_idle = (r2[0] - r1[0]) + (r2[1] - r1[1])
            # polling: bob's client gateway has push off
            await bob.sync(timeout=0)
            before, frames_before = dev_b.link_bytes(), dev_b.link_frames()
            for _ in range(cycles):
                resp = await bob.sync(timeout=1000)
                assert isinstance(resp, SyncResponse)
            after, frames_after = dev_b.link_bytes(), dev_b.link_frames()
            per_cycle = ((after[0] - before[0]) + (after[1] - before[1])) / cycles
            frames = (frames_after - frames_before) / cycles
            per_hour = per_cycle * 3600 / 30  # nio's default 30 s long-poll
            with_ip = (per_cycle + 42 * frames) * 3600 / 30
            print(f"\nidle with sync push: {pushed_idle} B for {cycles} empty long-polls (0 bit/s), after one "
                  f"registration of {registration} B in {rf1 - rf0} frames; without push: {per_cycle:.0f} B in "
                  f"{frames:.0f} frames per empty sync cycle = {per_hour / 1000:.1f} kB/h = {per_hour * 8 / 3600:.2f} "
                  f"bit/s link-level, {with_ip * 8 / 3600:.2f} bit/s with Ethernet+IPv4+UDP, at one 30 s long-poll")
            assert pushed_idle == 0 and rf2 == rf1
            assert registration <= 140
            assert per_cycle <= 200  # regression bound of the plain path
        finally:
            await alice.close()
            await bob.close()


async def test_low_bandwidth_mode_keeps_typing_receipts_and_presence_off_the_link(synapse, server_key):
    client_link, server_link = emulated_link_pair(FAST, seed=12)
    server = await start_server(server_link, homeserver=synapse.base_url, profile=PROFILE, static_private=server_key)
    client = await start_client(client_link, "server", profile=PROFILE, static_private=keys.generate_keypair()[0],
                                server_public=keys.public_from_private(server_key), low_bandwidth=True)
    name = "lb" + uuid.uuid4().hex[:8]
    nio_client = nio(client.base_url, name)
    try:
        await register(nio_client, name)
        room = await nio_client.room_create()
        sent = await nio_client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "x"})
        before = client_link.sent_frames
        assert type(await nio_client.room_typing(room.room_id, True)).__name__ == "RoomTypingResponse"
        assert type(await nio_client.update_receipt_marker(room.room_id, sent.event_id)).__name__ == "UpdateReceiptMarkerResponse"
        assert type(await nio_client.set_presence("online")).__name__ == "PresenceSetResponse"
        assert client_link.sent_frames == before  # none of them crossed the link
        assert client.gateway.counters.answered_locally == 3
        # reads still cross: the presence of a user comes from the homeserver
        assert type(await nio_client.get_presence(nio_client.user_id)).__name__ == "PresenceGetResponse"
        assert client_link.sent_frames > before
    finally:
        await nio_client.close()
        await client.stop()
        await server.stop()
