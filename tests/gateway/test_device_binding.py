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
from coap_gateway.codec.profile import load_profile
from coap_gateway.secure import keys
from coap_gateway.secure.frame import DatagramKind, classify
from coap_gateway.secure.server import ServerLimits
from coap_gateway.transport.links import UdpLink

pytestmark = pytest.mark.synapse

PROFILE = load_profile("lb3")
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
