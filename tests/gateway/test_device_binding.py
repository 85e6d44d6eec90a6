"""The token and the compact form's handles are bound to the device (its Noise
static key), not to one session: a device that reconnects sends neither again.

Real Synapse, real matrix-nio, real UDP on loopback; the server endpoint keeps
one session at a time, so a second device's handshake evicts the first's.
"""

from __future__ import annotations

import uuid

import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    RegisterResponse,
    RoomCreateResponse,
    RoomSendResponse,
)

from coap_gateway.app.runner import start_client, start_server
from coap_gateway.codec.profile import DEFAULT_PROFILE, load_profile
from coap_gateway.secure import keys
from coap_gateway.secure.frame import DatagramKind, classify
from coap_gateway.secure.server import ServerLimits
from coap_gateway.transport.links import UdpLink

pytestmark = pytest.mark.synapse

PROFILE = load_profile(DEFAULT_PROFILE)
MESSAGE = {"msgtype": "m.text", "body": "Hello, see you at 5pm"}


def recorded(link: UdpLink) -> list[bytes]:
    """Every datagram ``link`` sends, from now on."""
    sent: list[bytes] = []
    original = link.send

    def send(peer, datagram: bytes) -> None:
        sent.append(datagram)
        original(peer, datagram)

    link.send = send  # type: ignore[method-assign]
    return sent


async def test_a_reconnecting_device_sends_neither_token_nor_definitions_again(synapse, tmp_path):
    server_priv, _ = keys.generate_keypair()
    server_link = await UdpLink.open("127.0.0.1", 0)
    # a state directory: the strike register is persisted, so early data is accepted at once
    server = await start_server(server_link, homeserver=synapse.base_url, profile=PROFILE,
                                static_private=server_priv, limits=ServerLimits(max_sessions=1),
                                state_dir=tmp_path / "state")
    server_public = keys.public_from_private(server_priv)
    link_a, link_b = await UdpLink.open("127.0.0.1", 0), await UdpLink.open("127.0.0.1", 0)
    sent_a, answers = recorded(link_a), recorded(server_link)
    device_a = await start_client(link_a, server_link.local_address, profile=PROFILE,
                                  static_private=keys.generate_keypair()[0], server_public=server_public)
    device_b = await start_client(link_b, server_link.local_address, profile=PROFILE,
                                  static_private=keys.generate_keypair()[0], server_public=server_public)
    name = f"dev{uuid.uuid4().hex[:6]}"
    alice = AsyncClient(device_a.base_url, name, config=AsyncClientConfig(request_timeout=60, max_timeouts=0))
    other = AsyncClient(device_b.base_url, "x", config=AsyncClientConfig(request_timeout=60, max_timeouts=0))
    try:
        assert isinstance(await alice.register(name, "pw-" + name), RegisterResponse)
        room = await alice.room_create(name="binding")
        assert isinstance(room, RoomCreateResponse)
        assert isinstance(await alice.room_send(room.room_id, "m.room.message", MESSAGE), RoomSendResponse)
        counters = device_a.gateway.binding.counters
        tokens_before, established = counters.token_sent, server.codec.sessions_established

        await other.discovery_info()  # device B's handshake evicts device A's session (max_sessions=1)
        assert server.codec.sessions_established == established + 1

        mark_a, mark_s = len(sent_a), len(answers)
        sent = await alice.room_send(room.room_id, "m.room.message", MESSAGE)
        assert isinstance(sent, RoomSendResponse) and sent.event_id.startswith("$")
        # a new session (IK, the request as early data), and nothing sent twice
        assert server.codec.sessions_established == established + 2
        assert counters.token_sent == tokens_before
        assert counters.token_rebinds == 0 and counters.handle_resends == 0
        flights = [d for d in sent_a[mark_a:]]
        ik1 = [d for d in flights if classify(d) is DatagramKind.IK1]
        ik2 = [d for d in answers[mark_s:] if classify(d) is DatagramKind.IK2]
        assert len(ik1) == 1 and len(ik2) == 1
        total = sum(map(len, flights)) + sum(len(d) for d in answers[mark_s:])
        frames = len(flights) + len(answers[mark_s:])
        handshake = len(ik1[0]) + len(ik2[0])
        print(f"\nreconnect + send (W3 for a known device): IK1 {len(ik1[0])} B + IK2 {len(ik2[0])} B = {handshake} B "
              f"link-level, {handshake + 84} B with Ethernet+IPv4+UDP; with the stale attempt and its RESET first: "
              f"{frames} frames, {total} B, {total + 42 * frames} B with IP")
        # IK1 104 B + the warm request without Seq and tag (29 B); IK2 50 B + the 37-B answer
        assert 104 < len(ik1[0]) <= 104 + 29 and 50 < len(ik2[0]) <= 50 + 37
    finally:
        await alice.close()
        await other.close()
        await device_a.stop()
        await device_b.stop()
        await server.stop()


async def test_a_restarted_server_gateway_costs_a_device_a_reconnect(synapse, tmp_path):
    """Issue 15, item 3: the server gateway keeps each device's bound token and
    handles in its store (SQLite, 0600, beside its key): after a restart a device
    reconnects (IK with the request) and sends neither its token nor a definition."""
    import os
    import stat as stat_module

    from coap_gateway.app.store import FILENAME

    server_priv, _ = keys.generate_keypair()
    server_public = keys.public_from_private(server_priv)
    state = tmp_path / "state"
    server_link = await UdpLink.open("127.0.0.1", 0)
    address = server_link.local_address
    server = await start_server(server_link, homeserver=synapse.base_url, profile=PROFILE,
                                static_private=server_priv, state_dir=state)
    link = await UdpLink.open("127.0.0.1", 0)
    sent = recorded(link)
    device = await start_client(link, address, profile=PROFILE, static_private=keys.generate_keypair()[0],
                                server_public=server_public)
    name = f"rst{uuid.uuid4().hex[:6]}"
    alice = AsyncClient(device.base_url, name, config=AsyncClientConfig(request_timeout=60, max_timeouts=0))
    try:
        assert isinstance(await alice.register(name, "pw-" + name), RegisterResponse)
        room = await alice.room_create(name="restart")
        assert isinstance(room, RoomCreateResponse)
        assert isinstance(await alice.room_send(room.room_id, "m.room.message", MESSAGE), RoomSendResponse)
        assert server.store is not None and server.store.devices() == 1
        assert stat_module.S_IMODE(os.stat(state / FILENAME).st_mode) == 0o600  # tokens at rest

        # the server gateway restarts: same key, same state directory, same address
        await server.stop()
        await server_link.close()
        server_link = await UdpLink.open(*address)
        answers = recorded(server_link)
        server = await start_server(server_link, homeserver=synapse.base_url, profile=PROFILE,
                                    static_private=server_priv, state_dir=state)
        counters = device.gateway.binding.counters
        tokens_before = counters.token_sent
        mark = len(sent)
        again = await alice.room_send(room.room_id, "m.room.message", MESSAGE)
        assert isinstance(again, RoomSendResponse) and again.event_id.startswith("$")
        # the device's state came back: no Token-Unbound, no Handle-Unknown, nothing defined again
        assert server.gateway.counters.devices_restored == 1
        assert server.gateway.counters.token_unbound == 0 and server.gateway.counters.handle_unknown == 0
        assert counters.token_sent == tokens_before and counters.handle_resends == 0 and counters.token_rebinds == 0
        flights, back = sent[mark:], answers
        ik1 = [d for d in flights if classify(d) is DatagramKind.IK1]
        ik2 = [d for d in back if classify(d) is DatagramKind.IK2]
        assert len(ik1) == 1 and len(ik2) == 1
        assert len(ik1[0]) <= 104 + 29 and len(ik2[0]) <= 50 + 37  # the warm request and answer, nothing more
        total = sum(map(len, flights)) + sum(map(len, back))
        frames = len(flights) + len(back)
        print(f"\nserver restart, then send: {frames} frames, {total} B link level, {total + 42 * frames} B with "
              f"Ethernet+IPv4+UDP (IK1 {len(ik1[0])} B + IK2 {len(ik2[0])} B = "
              f"{len(ik1[0]) + len(ik2[0]) + 84} B with headers; the rest is the stale attempt and its RESET)")
    finally:
        await alice.close()
        await device.stop()
        await server.stop()


async def test_a_restarted_client_gateway_costs_a_reconnect_and_never_reuses_a_transaction(synapse, tmp_path):
    """Issue 15, item 3: the client gateway keeps its wire state beside its key
    (0600): restarted, it reconnects (IK, RESTART but not UNBOUND) and sends neither
    its token nor a definition again; and a transaction ID it gave out before the
    restart is never given to another message (Synapse would take it for a retry)."""
    import os
    import stat as stat_module

    import aiohttp

    from coap_gateway.gateway import CLIENT_ANSWERS, CLIENT_STATE

    VERSIONS = "/_matrix/client/versions"

    server_priv, _ = keys.generate_keypair()
    server_public = keys.public_from_private(server_priv)
    server_link = await UdpLink.open("127.0.0.1", 0)
    server = await start_server(server_link, homeserver=synapse.base_url, profile=PROFILE,
                                static_private=server_priv, state_dir=tmp_path / "server")
    device_priv = keys.generate_keypair()[0]
    state = tmp_path / "device"
    state.mkdir()
    link = await UdpLink.open("127.0.0.1", 0)
    device = await start_client(link, server_link.local_address, profile=PROFILE, static_private=device_priv,
                                server_public=server_public, state_dir=state)
    name = f"crs{uuid.uuid4().hex[:6]}"
    alice = AsyncClient(device.base_url, name, config=AsyncClientConfig(request_timeout=60, max_timeouts=0))
    again = None
    try:
        assert isinstance(await alice.register(name, "pw-" + name), RegisterResponse)
        room = await alice.room_create(name="client restart")
        assert isinstance(room, RoomCreateResponse)
        first = await alice.room_send(room.room_id, "m.room.message", MESSAGE, tx_id="before-restart")
        assert isinstance(first, RoomSendResponse)
        assert stat_module.S_IMODE(os.stat(state / CLIENT_STATE).st_mode) == 0o600
        assert not device.gateway.counters.state_restored
        # a start-up request whose answer the gateway holds, tagged (codec.revalidation)
        async with aiohttp.ClientSession() as http, http.get(device.base_url + VERSIONS) as r:
            assert r.status == 200
            versions = await r.read()
        assert stat_module.S_IMODE(os.stat(state / CLIENT_ANSWERS).st_mode) == 0o600

        # the client gateway's process restarts: same key, same state directory, a new port
        await device.stop()
        await link.close()
        link = await UdpLink.open("127.0.0.1", 0)
        sent = recorded(link)
        device = await start_client(link, server_link.local_address, profile=PROFILE, static_private=device_priv,
                                    server_public=server_public, state_dir=state)
        assert device.gateway.counters.state_restored
        again = AsyncClient(device.base_url, name, config=AsyncClientConfig(request_timeout=60, max_timeouts=0))
        again.restore_login(alice.user_id, alice.device_id, alice.access_token)
        answers = recorded(server_link)
        second = await again.room_send(room.room_id, "m.room.message", MESSAGE, tx_id="after-restart")
        assert isinstance(second, RoomSendResponse) and second.event_id != first.event_id
        counters = device.gateway.binding.counters
        assert counters.token_sent == 0 and counters.handle_resends == 0 and counters.token_rebinds == 0
        assert server.gateway.counters.token_unbound == 0 and server.gateway.counters.handle_unknown == 0
        ik1 = [d for d in sent if classify(d) is DatagramKind.IK1]
        ik2 = [d for d in answers if classify(d) is DatagramKind.IK2]
        assert len(ik1) == 1 and len(ik2) == 1
        assert len(ik1[0]) <= 104 + 29 and len(ik2[0]) <= 50 + 37  # the warm request and answer, nothing more
        frames, total = len(sent) + len(answers), sum(map(len, sent)) + sum(map(len, answers))
        # issue 15: a restart then a send <= 300 B with Ethernet+IPv4+UDP (the request rides in IK1)
        assert frames == 2 and total + 42 * frames <= 300, (frames, total)
        print(f"\nclient restart, then send: {[(classify(d).name, len(d)) for d in sent + answers]}: {frames} frames, {total} B link level, {total + 42 * frames} B with "
              f"Ethernet+IPv4+UDP")
        # the same transaction ID as before the restart is the same message, as Synapse has it
        retried = await again.room_send(room.room_id, "m.room.message", MESSAGE, tx_id="before-restart")
        assert isinstance(retried, RoomSendResponse) and retried.event_id == first.event_id
        # the answers it held came back with it: asked again, /versions crosses as its ETag
        async with aiohttp.ClientSession() as http, http.get(device.base_url + VERSIONS) as r:
            assert r.status == 200 and await r.read() == versions
        assert device.gateway.counters.revalidated == 1
    finally:
        await alice.close()
        if again is not None:
            await again.close()
        await device.stop()
        await server.stop()


async def test_a_new_device_defines_its_room_by_digest_and_its_scope_by_its_key(synapse, tmp_path):
    """W3 (a new device's handshake + first send) with its short definitions
    (docs/protocol.md §7a): the room as 4 bytes of a digest keyed with the
    device's key, matched by the server against the account's joined rooms;
    the transaction scope named by the new key.  A room the account has not
    joined falls back to its full ID, and the homeserver's answer comes through."""
    from nio import LoginResponse, RoomSendError

    from coap_gateway.codec.route_option import key_scope

    name = "a" + uuid.uuid4().hex[:4]  # 5 characters, as the benchmark's "alice"
    direct = AsyncClient(synapse.base_url, name, config=AsyncClientConfig(request_timeout=60, max_timeouts=0))
    stranger = AsyncClient(synapse.base_url, "s" + name, config=AsyncClientConfig(request_timeout=60, max_timeouts=0))
    server_priv = keys.generate_keypair()[0]
    server_link = await UdpLink.open("127.0.0.1", 0)
    server = await start_server(server_link, homeserver=synapse.base_url, profile=PROFILE,
                                static_private=server_priv, state_dir=tmp_path / "state")
    link = await UdpLink.open("127.0.0.1", 0)
    sent, answers = recorded(link), recorded(server_link)
    device_priv = keys.generate_keypair()[0]
    device = await start_client(link, server_link.local_address, profile=PROFILE, static_private=device_priv,
                                server_public=keys.public_from_private(server_priv), fresh_key=True)
    alice = AsyncClient(device.base_url, name, config=AsyncClientConfig(request_timeout=60, max_timeouts=0))
    try:
        assert isinstance(await direct.register(name, "pw-" + name), RegisterResponse)
        assert isinstance(await stranger.register("s" + name, "pw-s" + name), RegisterResponse)
        first, second = [(await direct.room_create(name=n)).room_id for n in ("one", "two")]
        elsewhere = (await stranger.room_create(name="not alice's")).room_id
        # the same account and device as `direct` (its token), through a new client gateway
        alice.restore_login(direct.user_id, direct.device_id, direct.access_token)

        answer = await alice.room_send(second, "m.room.message", MESSAGE)
        assert isinstance(answer, RoomSendResponse)
        binding, counters = device.gateway.binding, server.gateway.counters
        assert binding.wire is not None and binding.wire.scope == key_scope(keys.public_from_private(device_priv))
        assert binding.wire.scope_confirmed and binding.counters.handle_resends == 0
        assert counters.room_lookups == 1 and counters.handle_unknown == 0
        ik1 = [d for d in sent if classify(d) is DatagramKind.IK1]
        ik2 = [d for d in answers if classify(d) is DatagramKind.IK2]
        assert len(ik1) == len(ik2) == 1 and len(sent) == len(answers) == 1  # the send rode in the handshake
        print(f"\nnew device + send (W3): IK1 {len(ik1[0])} B + IK2 {len(ik2[0])} B, "
              f"{len(ik1[0]) + len(ik2[0]) + 84} B with Ethernet+IPv4+UDP")
        assert len(ik1[0]) + len(ik2[0]) + 84 <= 340  # DESIGN's W3
        # the homeserver saw the key's scope (its own /sync shows the device its transaction ID)
        sync = await direct.sync(timeout=0)
        timeline = sync.rooms.join[second].timeline.events
        ours = [e for e in timeline if getattr(e, "event_id", None) == answer.event_id]
        assert ours and ours[0].source["unsigned"]["transaction_id"] == binding.wire.scope + ".0"

        refused = await alice.room_send(elsewhere, "m.room.message", MESSAGE)
        # not joined: the digest matched nothing, the room went again in full, Synapse said no
        assert isinstance(refused, RoomSendError) and refused.status_code == "M_FORBIDDEN"
        assert binding.counters.handle_resends == 1 and counters.handle_unknown == 1
        assert counters.room_lookups == 2
        again = await alice.room_send(first, "m.room.message", MESSAGE)
        assert isinstance(again, RoomSendResponse) and counters.room_lookups == 3
    finally:
        for client in (alice, direct, stranger):
            await client.close()
        await device.stop()
        await server.stop()
