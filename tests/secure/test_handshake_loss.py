"""A lost handshake frame is repeated when CoAP retransmits (sans-I/O).

The defect this guards: an IK1 that carries no request (the first request is
not idempotent) was sent once; when it was
lost, CoAP's retransmissions of the queued request only re-queued it, so the
device waited for the whole retransmission back-off (minutes at 2400 bit/s)
and then failed — four accounts registering at once over a lossy link never
got past the first request.
"""

from __future__ import annotations

import pytest

from coap_gateway.secure import frame as sf
from coap_gateway.secure.events import Transmit
from tests.helpers.secure_world import World, get, new_client, new_server, of, post


def lose_first(kind: sf.DatagramKind, direction: str):
    lost = [1]

    def drop(d: str, data: bytes) -> bool:
        if d == direction and sf.classify(data) is kind and lost[0]:
            lost[0] -= 1
            return True
        return False
    return drop


def handshakes_up(world: World, addr: str, kind: sf.DatagramKind) -> list[bytes]:
    return [t.data for t in of(world.client_events[addr], Transmit) if sf.classify(t.data) is kind]


@pytest.mark.parametrize("announce", [False, True], ids=["post-first", "restart-announced"])
def test_a_lost_ik1_without_early_data_is_repeated_by_the_retransmission(announce):
    world = World(new_server())
    world.drop = lose_first(sf.DatagramKind.IK1, "up")
    client = world.add("A", new_client())
    client.announce_restart = announce
    request = post(0x500)
    world.client_send("A", request)  # IK1 without the request (not early-data material): lost
    assert client.channel is None and not world.executions
    world.client_send("A", request)  # CoAP retransmits the request: IK1 goes again
    ik1s = handshakes_up(world, "A", sf.DatagramKind.IK1)
    assert len(ik1s) == 2 and ik1s[0] == ik1s[1]  # the same handshake, not a new one
    assert client.channel is not None
    assert len(world.executions) == 1 and world.answers("A")  # run once, answered
    world.client_send("A", request)  # a late retransmission is a duplicate, not a second run
    assert len(world.executions) == 1


def test_a_lost_ik2_is_answered_again_from_the_server_cache():
    world = World(new_server())
    world.drop = lose_first(sf.DatagramKind.IK2, "down")
    client = world.add("A", new_client())
    world.client_send("A", post(0x600))  # IK1; IK2 lost
    assert client.channel is None
    world.client_send("A", post(0x600))  # repeated IK1: the same IK2 again
    assert client.channel is not None
    assert len(world.executions) == 1


def test_every_queued_request_waits_for_one_handshake():
    world = World(new_server())
    world.drop = lose_first(sf.DatagramKind.IK1, "up")
    client = world.add("A", new_client())
    for mid in (0x700, 0x701, 0x702):  # three requests while the handshake is lost
        world.client_send("A", post(mid, bytes([mid & 0xFF])))
    assert client.channel is None
    world.client_send("A", post(0x701, b"\x01"))  # one retransmission repeats IK1
    assert client.channel is not None
    assert len(handshakes_up(world, "A", sf.DatagramKind.IK1)) == 2
    assert sorted(sf.parse_coap_header(d.message).message_id for d in world.executions) == [0x700, 0x701, 0x702]
