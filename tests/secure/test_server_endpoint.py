"""ServerEndpoint and ClientEndpoint exchanging bytes in memory, including a flood."""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.state import CipherState

from coap_gateway.errors import ProfileMismatchError, ServerKeyChanged
from coap_gateway.secure import frame as sf
from coap_gateway.secure.events import (
    Connected,
    Deliver,
    Dropped,
    Rehandshake,
    SessionClosed,
    SessionEstablished,
    Transmit,
    Woken,
)
from coap_gateway.secure.keys import public_from_private as public_key
from coap_gateway.secure.noise import ClientSession
from coap_gateway.secure.server import ServerEndpoint, StrikeRegister
from tests.helpers.secure_world import (
    DIGEST,
    NOW,
    PROFILE,
    SERVER_PUBLIC,
    SERVER_STATIC,
    World,
    coap,
    get,
    new_client,
    new_server,
    of,
    post,
)

# --- handshakes through the endpoints ---


def test_ik_early_get_is_answered_inside_ik2():
    world = World(new_server())
    world.add("A", new_client())
    world.client_send("A", get(0x100))
    ups = of(world.client_events["A"], Transmit)
    downs = of(world.server_events, Transmit)
    assert [len(t.data) for t in ups] == [104 + len(get(0x100))]  # IK1 with a 7-byte early GET
    assert [len(t.data) for t in downs] == [50 + 5 + 1 + 8]  # IK2 with the 14-byte answer
    assert [d.early for d in world.executions] == [True]
    assert of(world.server_events, SessionEstablished)[0].pattern == "IK"
    assert of(world.client_events["A"], Connected)[0].session_id == world.executions[0].session_id
    assert world.answers("A")[0].startswith(coap(sf.ACK, 0x45, 0x100, b"\x01"))
    # then a data frame: request + 17, answer + 16
    world.client_send("A", post(0x101))
    assert len(of(world.client_events["A"], Transmit)[-1].data) == len(post(0x101)) + 17
    assert len(of(world.server_events, Transmit)[-1].data) == 5 + 1 + 8 + 16
    assert len(world.executions) == 2 and world.executions[1].counter == 1


def test_xx_first_contact_carries_the_first_request_in_xx3():
    world = World(new_server())
    client = world.add("A", new_client(server_public=None))
    world.client_send("A", post(0x200))
    sizes = [len(t.data) for t in of(world.client_events["A"], Transmit)]
    assert sizes == [36, 66 + len(post(0x200))]
    assert [len(t.data) for t in of(world.server_events, Transmit)] == [97, 5 + 1 + 8 + 16]
    assert [(d.counter, d.early) for d in world.executions] == [(0, False)]
    assert client.server_public == SERVER_PUBLIC
    assert world.answers("A") and world.answers("A")[0][:5] == coap(sf.ACK, 0x45, 0x200, b"\x02")


def test_client_does_not_send_post_as_early_data():
    world = World(new_server())
    world.add("A", new_client())
    world.client_send("A", post(0x300))
    ups = of(world.client_events["A"], Transmit)
    assert len(ups[0].data) == 104  # IK1 without early data
    assert len(ups[1].data) == len(post(0x300)) + 17  # the POST after IK2
    assert [(d.counter, d.early) for d in world.executions] == [(1, False)]


def ik1_for(message: bytes, now: float = NOW, seed: str = "raw client") -> ClientSession:
    return ClientSession(hashlib.sha256(seed.encode()).digest(), PROFILE, DIGEST, now=now,
                         server_public=SERVER_PUBLIC, message=message)


@pytest.mark.parametrize("message, now", [
    (post(0x400), NOW),  # not idempotent
    (get(0x401), NOW - 11 * 60),  # client clock 11 minutes behind
    (get(0x402), NOW + 11 * 60),  # ... or ahead
])
def test_refused_early_data_is_resent_once_as_data(message, now):
    server = new_server()
    client = ik1_for(message, now)
    outs = server.receive(NOW, "A", client.datagram)
    assert not of(outs, Deliver)
    done = client.receive(of(outs, Transmit)[0].data)
    assert done.resend_early and done.answer is None
    outs = server.receive(NOW, "A", done.channel.seal(message))
    assert [(d.message, d.counter, d.early) for d in of(outs, Deliver)] == [(message, 1, False)]


def test_early_data_within_the_window_is_accepted():
    server = new_server()
    client = ik1_for(get(0x410), NOW - 9 * 60)
    assert [d.early for d in of(server.receive(NOW, "A", client.datagram), Deliver)] == [True]


def test_replayed_ik1_never_delivers_twice():
    server = new_server(max_half_open=1)
    client = ik1_for(get(0x500))
    first = server.receive(NOW, "A", client.datagram)
    assert len(of(first, Deliver)) == 1
    answer = coap(sf.ACK, 0x45, 0x500, b"\x01", b"\xff" + b"ok")
    ik2 = of(server.send(NOW, of(first, Deliver)[0].session_id, answer), Transmit)[0].data
    # the same IK1 again from the same address: IK2 was lost, resend it byte-identical
    assert of(server.receive(NOW + 1, "A", client.datagram), Transmit)[0].data == ik2
    # from another address: dropped
    assert of(server.receive(NOW + 1, "B", client.datagram), Dropped) and \
        not of(server.receive(NOW + 1, "B", client.datagram), Deliver)
    # the session is evicted (half-open bound 1) by another IK1; the replay makes a new
    # session, but the strike register refuses its early data
    server.receive(NOW + 2, "C", ik1_for(None, seed="other").datagram)
    outs = server.receive(NOW + 3, "D", client.datagram)
    assert of(outs, SessionEstablished) and not of(outs, Deliver)
    assert sf.decode_ik2_payload  # IK2 tells the (absent) client to resend
    assert len(server.strikes) == 2  # every fresh IK1 is struck, with early data or not


def test_strike_register_full_refuses_early_data():
    server = new_server(max_strikes=2)
    delivered = []
    for i in range(4):
        outs = server.receive(NOW, f"A{i}", ik1_for(get(0x600 + i), seed=f"c{i}").datagram)
        delivered.append(bool(of(outs, Deliver)))
    assert delivered == [True, True, False, False]
    assert len(server.strikes) == 2
    # after the entries expire (minutes + window), early data is accepted again
    later = NOW + 22 * 60
    outs = server.receive(later, "B", ik1_for(get(0x610), later, seed="late").datagram)
    assert of(outs, Deliver) and len(server.strikes) == 1


def test_strike_register_unit():
    reg = StrikeRegister(2)
    assert reg.add(b"a", 10, 0) and not reg.add(b"a", 10, 0)
    assert reg.add(b"b", 20, 0) and not reg.add(b"c", 20, 0)
    assert reg.add(b"c", 30, 10) and b"a" not in reg and len(reg) == 2


def test_ik2_waits_for_the_answer_then_goes_without():
    world = World(new_server(early_answer_wait=1.5))
    world.answering = False
    world.add("A", new_client())
    world.client_send("A", get(0x700))
    assert not of(world.server_events, Transmit)
    assert world.server.next_timer() == NOW + 1.5
    world.now += 1.5
    world.answering = True
    world.timers()
    # IK2 said "resend": the client resent as data; the app answered from its cache
    assert len(world.executions) == 1
    assert world.answers("A")[-1][:5] == coap(sf.ACK, 0x45, 0x700, b"\x01")
    assert world.server.next_timer() is None


def test_big_early_answer_respects_anti_amplification():
    world = World(new_server(), answer_size=600)
    world.add("A", new_client())
    world.client_send("A", get(0x800))
    # 112 bytes in; IK2 with a 617-byte answer would exceed 3x: IK2 says resend, the
    # resent request validates the address, and the answer follows from the cache
    assert len(world.executions) == 1
    assert any(len(a) > 600 for a in world.answers("A"))
    assert of(world.server_events, Transmit)[0].data[0] == sf.DatagramKind.IK2
    assert len(of(world.server_events, Transmit)[0].data) == 50


def test_unvalidated_address_gets_at_most_three_times_and_held_frames_are_released():
    server = new_server()
    client = ik1_for(None)
    outs = server.receive(NOW, "A", client.datagram)
    session_id = of(outs, SessionEstablished)[0].session_id
    done = client.receive(of(outs, Transmit)[0].data)
    sent = len(of(outs, Transmit)[0].data)
    transmitted = 0
    for i in range(3):  # 3 x 218 bytes: only one fits in 3 x 104 - 50
        for t in of(server.send(NOW, session_id, coap(sf.NON, 0x45, i, b"", b"\xff" + b"z" * 200)), Transmit):
            sent += len(t.data)
            transmitted += 1
    assert sent <= 3 * len(client.datagram)
    assert transmitted == 1 and server.sizes()["held_frames"] == 2
    released = server.receive(NOW, "A", done.channel.seal(coap(sf.NON, 0x01, 5)))
    assert len(of(released, Transmit)) == 2 and server.sizes()["held_frames"] == 0


def test_address_migration_without_handshake_and_replay_does_not_move():
    world = World(new_server())
    world.add("A", new_client())
    world.client_send("A", get(0x900))
    session_id = world.executions[0].session_id
    world.move("A", "B")  # NAT rebinding
    world.client_send("B", post(0x901))
    assert world.server.session_address(session_id) == "B"
    assert len(of(world.server_events, SessionEstablished)) == 1
    assert world.answers("B")[-1][:5] == coap(sf.ACK, 0x45, 0x901, b"\x02")
    # an attacker replays the client's last frame from C: not moved, no RESET to C
    last = of(world.client_events["B"], Transmit)[-1].data
    outs = world.to_server("C", last)
    assert world.server.session_address(session_id) == "B"
    assert of(outs, Dropped) and not of(outs, Deliver) and not of(outs, Transmit)
    world.now += 1000  # beyond the duplicate lifetime: a plain replay
    outs = world.to_server("C", last)
    assert of(outs, Dropped) and not of(outs, Deliver) and not of(outs, Transmit)
    assert len(world.executions) == 2


def test_identical_retransmission_is_a_duplicate_answered_from_cache():
    world = World(new_server())
    world.add("A", new_client())
    world.client_send("A", get(0xA00))
    world.client_send("A", post(0xA01))
    frame = of(world.client_events["A"], Transmit)[-1].data
    world.client_send("A", post(0xA01))  # CoAP retransmission: same bytes
    assert of(world.client_events["A"], Transmit)[-1].data == frame
    dups = [d for d in of(world.server_events, Deliver) if d.duplicate]
    assert len(dups) == 1 and len(world.executions) == 2
    answers = [e for e in of(world.client_events["A"], Deliver) if e.counter is not None]
    assert answers[-1].duplicate and answers[-1].message == answers[-2].message


def test_server_restart_rehandshakes_with_the_request_in_flight():
    world = World(new_server())
    world.add("A", new_client())
    world.client_send("A", get(0xB00))
    world.server = new_server()  # restart: same static key, no sessions
    world.client_send("A", get(0xB01, b"\x09"))
    events = world.client_events["A"]
    assert of(events, Rehandshake)
    assert [d.message for d in world.executions] == [get(0xB00), get(0xB01, b"\x09")]
    assert world.executions[1].early
    assert world.answers("A")[-1][:5] == coap(sf.ACK, 0x45, 0xB01, b"\x09")
    resets = [t for t in of(world.server_events, Transmit) if t.data[0] == sf.DatagramKind.RESET]
    assert len(resets) == 1 and len(resets[0].data) == 5
    # the same with a POST: not early, sent after IK2, still executed once
    world.server = new_server()
    world.client_send("A", post(0xB02))
    assert [d.message for d in world.executions][-1] == post(0xB02)
    assert sum(d.message == post(0xB02) for d in world.executions) == 1


def test_rehandshake_from_a_validated_address_gets_its_ik2():
    world = World(new_server())
    world.add("A", new_client())
    world.client_send("A", get(0xC10))
    world.client_send("A", get(0xC11))  # validates "A"
    again = ClientSession(hashlib.sha256(b"client").digest(), PROFILE, DIGEST, now=NOW,
                          server_public=SERVER_PUBLIC, message=get(0xC12))
    outs = world.server.receive(NOW, "A", again.datagram)
    assert of(outs, Deliver) and of(world.server.send(NOW, of(outs, Deliver)[0].session_id,
                                                      coap(sf.ACK, 0x45, 0xC12, b"\x01")), Transmit)


def test_reset_that_echoes_nothing_sent_is_ignored():
    world = World(new_server())
    client = world.add("A", new_client())
    world.client_send("A", get(0xC00))
    outs = client.receive(NOW, sf.build_reset(b"\x41\x01\x99\x99"))
    assert of(outs, Dropped) and client.channel is not None


def test_wrong_pinned_key_falls_back_to_xx_and_reports_the_change():
    world = World(new_server())
    world.add("A", new_client(server_public=public_key(hashlib.sha256(b"old").digest())))
    with pytest.raises(ServerKeyChanged, match="SHA256:.*SHA256:"):
        world.client_send("A", get(0xD00))
    assert not world.executions


def test_profile_mismatch_and_unknown_profile():
    server = ServerEndpoint(SERVER_STATIC, {PROFILE: b"\xbe\xef"})
    client = new_client()
    outs = client.send(NOW, get(1))
    refuse = of(server.receive(NOW, "A", outs[0].data), Transmit)[0].data
    with pytest.raises(ProfileMismatchError, match="1234.*beef"):
        client.receive(NOW, refuse)
    server = ServerEndpoint(SERVER_STATIC, {7: b"\xbe\xef"})
    client = new_client(server_public=None)
    refuse = of(server.receive(NOW, "A", client.send(NOW, get(1))[0].data), Transmit)[0].data
    with pytest.raises(ProfileMismatchError, match="does not hold profile 2"):
        client.receive(NOW, refuse)


def test_xx_retransmissions():
    server = new_server()
    world = World(server)
    lost = {sf.DatagramKind.XX2: 1, sf.DatagramKind.DATA: 1}  # the first XX2 and the first answer

    def drop(direction: str, data: bytes) -> bool:
        kind = sf.classify(data)
        if direction == "down" and lost.get(kind):
            lost[kind] -= 1
            return True
        return False
    world.drop = drop
    client = world.add("A", new_client(server_public=None))
    world.client_send("A", post(0xE00))  # XX1; XX2 lost
    assert client.channel is None
    world.client_send("A", post(0xE00))  # CoAP retransmission: identical XX1, cached XX2
    xx1s = [t.data for t in of(world.client_events["A"], Transmit) if t.data[0] == sf.DatagramKind.XX1]
    assert len(xx1s) == 2 and xx1s[0] == xx1s[1]
    assert len(world.executions) == 1
    # XX3 retransmitted (its answer was lost): a duplicate, answered from the cache
    world.client_send("A", post(0xE00))
    assert [d.duplicate for d in of(world.server_events, Deliver)] == [False, True]
    assert len(world.executions) == 1


def test_handshake_rate_limit_per_address():
    server = new_server()
    xx1 = new_client(server_public=None).send(NOW, get(1))[0].data

    def limited(outs) -> bool:
        return any(d.reason == "handshake rate limit" for d in of(outs, Dropped))
    assert [limited(server.receive(NOW, "A", xx1[:4] + os.urandom(32))) for _ in range(12)] == [False] * 8 + [True] * 4
    assert not limited(server.receive(NOW + 0.25, "A", xx1))  # one token back after 1/4 s
    assert limited(server.receive(NOW + 0.25, "A", xx1))


def test_reset_rate_limit():
    server = new_server()
    garbage = coap(sf.CON, 0x01, 0x1234, b"", b"\x00" + bytes(20))
    resets = [of(server.receive(NOW + i * 0.2, "A", garbage), Transmit) for i in range(10)]
    assert [bool(r) for r in resets] == [True, False, False, False, False] * 2


def test_unauthenticated_empty_ack_is_passed_only_on_a_session_address():
    world = World(new_server())
    world.add("A", new_client())
    world.client_send("A", get(0xF00))
    outs = world.to_server("A", coap(sf.ACK, 0, 0x1234))
    assert of(outs, Deliver)[0].counter is None
    assert of(world.to_server("Z", coap(sf.ACK, 0, 0x1234)), Dropped)


@pytest.mark.parametrize("point", [bytes(32), (1).to_bytes(32, "little"), bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")])
def test_low_order_ephemeral_in_xx1_or_ik1_is_dropped(point):
    server = new_server()
    outs = server.receive(NOW, "A", b"\x03\x02\x12\x34" + point)
    assert of(outs, Dropped) and not of(outs, Transmit)
    outs = server.receive(NOW, "A", b"\x01\x02\x12\x34" + point + bytes(68))
    assert of(outs, Dropped)


def test_session_table_is_bounded():
    world = World(new_server(max_sessions=3, max_half_open=8))
    for i in range(6):
        world.add(f"A{i}", new_client(seed=f"c{i}"))
        world.client_send(f"A{i}", get(i))
    assert world.server.sizes()["sessions"] == 3
    assert len(of(world.server_events, SessionClosed)) == 3


def test_a_client_whose_session_was_lost_gets_its_reset_while_other_sessions_are_busy():
    """The replay window judges a counter before decrypting, and a busy session
    finds most Seq bytes old: only a frame that authenticates in a session may
    count as its replay (before: the orphaned client got no RESET, ever)."""
    world = World(new_server(max_sessions=1))
    orphan = world.add("O", new_client(seed="orphan"))
    world.client_send("O", post(0x10))
    world.add("B", new_client(seed="busy"))  # the orphan's session is evicted (LRU)
    for i in range(300):
        world.client_send("B", post(0x1000 + i))
    assert world.server.session_address(orphan.session_id) is None
    resets = 0
    for i in range(20):
        frame = of(orphan.send(world.now, post(0x20 + i)), Transmit)[0].data
        outs = world.server.receive(world.now + 2 * i, "O", frame)  # 2 s apart: within the RESET rate
        resets += sum(t.data[0] == sf.DatagramKind.RESET for t in of(outs, Transmit))
    assert resets == 20
    # a replay of the busy session's own frame is still no reason for a RESET
    old = of(world.client_events["B"], Transmit)[-1].data
    outs = world.server.receive(world.now + 1000, "B", old)
    assert of(outs, Dropped) and not of(outs, Transmit)


def test_a_spoofed_ik1_does_not_take_a_validated_address_over():
    world = World(new_server(max_half_open=4), answer_size=600)
    victim = world.add("A", new_client(seed="victim"))
    world.client_send("A", post(0x10))
    # off-path: any static key, the victim's address as source, an early GET of a big answer
    spoofed = ClientSession(hashlib.sha256(b"attacker").digest(), PROFILE, DIGEST, now=NOW,
                            server_public=SERVER_PUBLIC, message=get(0x99))
    sent = world.sent["A"]
    world.to_server("A", spoofed.datagram)
    # its session is not validated: its IK2 keeps to the budget, although "A" is validated
    assert world.sent["A"] - sent <= 3 * len(spoofed.datagram)
    empty_ack = coap(sf.ACK, 0, 0x4242)
    assert [d.session_id for d in of(world.to_server("A", empty_ack), Deliver)] == [victim.session_id]
    for i in range(6):  # the spoofed session is evicted by other unconfirmed ones
        world.to_server(("flood", i), ik1_for(None, seed=f"flood{i}").datagram)
    assert [d.session_id for d in of(world.to_server("A", empty_ack), Deliver)] == [victim.session_id]


def test_an_address_whose_binding_was_lost_is_bound_again_by_its_sessions_next_frame():
    world = World(new_server())
    victim = world.add("A", new_client(seed="victim"))
    world.client_send("A", post(0x10))
    other = world.add("B", new_client(seed="other"))
    world.client_send("B", post(0x20))
    # the other device's next frame comes from "A" (a NAT reusing the mapping): "A" is its address now
    world.server.receive(world.now, "A", of(other.send(world.now, post(0x21)), Transmit)[0].data)
    world.server.close_sessions_of(public_key(hashlib.sha256(b"other").digest()))
    assert of(world.to_server("A", coap(sf.ACK, 0, 0x4242)), Dropped)  # "A" is bound to nothing
    world.client_send("A", post(0x11))  # the victim's session, from its own address
    assert [d.session_id for d in of(world.to_server("A", coap(sf.ACK, 0, 0x4243)), Deliver)] == \
        [victim.session_id]


def test_a_replayed_duplicate_is_passed_on_at_most_max_duplicates_times():
    """A captured frame replayed from the session's own (spoofed) address: each
    duplicate makes CoAP resend its cached answer to the client (before: 100
    replays of a 27-byte frame sent it 62 kB)."""
    world = World(new_server(), answer_size=600)
    world.add("A", new_client())
    world.client_send("A", get(0x10))
    world.client_send("A", get(0x11, path=b"sync"))
    frame = of(world.client_events["A"], Transmit)[-1].data
    sent = world.sent["A"]
    duplicates = 0
    for _ in range(100):
        world.now += 1
        duplicates += sum(d.duplicate for d in of(world.to_server("A", frame), Deliver))
    # CoAP's MAX_RETRANSMIT, and one more per doubling of the time: 11 of 100 over 100 s
    assert duplicates == 11 == math.ceil(sf.duplicates_allowed(100))
    assert world.sent["A"] - sent <= duplicates * 700 and len(world.executions) == 2


def test_a_repeated_xx3_is_a_duplicate_at_most_max_duplicates_times():
    world = World(new_server())
    world.add("A", new_client(server_public=None))
    world.client_send("A", post(0xE10))
    xx3 = [t.data for t in of(world.client_events["A"], Transmit) if t.data[0] == sf.DatagramKind.XX3][0]
    duplicates = 0
    for _ in range(10):
        world.now += 1  # handshake tokens come back
        duplicates += sum(d.duplicate for d in of(world.to_server("A", xx3), Deliver))
    assert duplicates == 8 == math.ceil(sf.duplicates_allowed(10)) and len(world.executions) == 1  # of 10


def test_a_spoofed_xx1_does_not_replace_the_clients_half_open_handshake():
    world = World(new_server())
    world.add("A", new_client(server_public=None, seed="victim"))
    held: list[bytes] = []
    world.drop = lambda d, data: d == "up" and data[0] == sf.DatagramKind.XX3 and (held.append(data) or True)
    world.client_send("A", post(0x10))
    world.server.receive(world.now, "A", bytes([3, PROFILE]) + DIGEST + os.urandom(32))  # off-path, 36 bytes
    world.drop = lambda d, data: False
    world.to_server("A", held[0])  # the client's XX3, late
    assert [d.message for d in world.executions] == [post(0x10)]
    for _ in range(5):  # XX1s from one address: a few kept, not one each
        world.server.receive(world.now, "B", bytes([3, PROFILE]) + DIGEST + os.urandom(32))
    assert world.server.sizes()["xx_half_open"] == 1 + 2


def test_datagrams_that_cannot_be_handshakes_cost_no_handshake_token():
    """Spoofed one-byte "IK1"s from a client's address used up its handshake tokens."""
    world = World(new_server())
    for junk in (b"\x01", b"\x03", b"\x05", bytes([3, PROFILE]) + DIGEST + bytes(33)):  # the last: XX1 + 1 byte
        for _ in range(20):
            assert of(world.server.receive(NOW, "A", junk), Dropped)
    client = world.add("A", new_client())
    world.client_send("A", get(0x10))
    assert client.session_id is not None and [d.message for d in world.executions] == [get(0x10)]


def test_an_ik1_with_reserved_flag_bits_is_dropped_not_refused_as_undecryptable(monkeypatch):
    """It decrypted, so the client's pinned key is right: REFUSE 3 would send it to XX."""
    real = sf.encode_ik1_payload

    def with_reserved_bit(*args, **kwargs) -> bytes:
        payload = real(*args, **kwargs)
        return bytes([payload[0] | 0x10]) + payload[1:]
    monkeypatch.setattr(sf, "encode_ik1_payload", with_reserved_bit)
    outs = new_server().receive(NOW, "A", ik1_for(get(0x10)).datagram)
    assert of(outs, Dropped) and not of(outs, Transmit) and not of(outs, SessionEstablished)


def test_an_early_request_over_the_early_size_limit_is_not_run_early():
    server = new_server()
    for size, early in ((sf.MAX_EARLY_MESSAGE, True), (sf.MAX_EARLY_MESSAGE + 1, False)):
        message = coap(sf.CON, 0x01, size & 0xFFFF, b"\x01", b"\xff")
        message += b"x" * (size - len(message))
        outs = server.receive(NOW, ("A", size), ik1_for(message, seed=f"big{size}").datagram)
        assert [d.early for d in of(outs, Deliver)] == ([True] if early else [])


# --- no nonce reuse, across retransmissions, rekeys and a re-handshake ---


def test_no_key_nonce_pair_is_ever_reused(monkeypatch):
    used: dict[tuple[bytes, int], tuple[bytes, bytes]] = {}
    original = CipherState.encrypt_with_ad

    def recording(self, ad, plaintext):
        if self.has_key():
            pair = (bytes(self.k), self.n)
            record = (bytes(ad or b""), bytes(plaintext))
            assert used.setdefault(pair, record) == record, f"nonce {self.n} reused with other bytes"
        return original(self, ad, plaintext)

    monkeypatch.setattr(CipherState, "encrypt_with_ad", recording)
    rnd = random.Random(1)
    server = new_server(rekey_interval=8)
    world = World(server)
    world.drop = lambda direction, data: rnd.random() < 0.2
    client = world.add("A", new_client(server_public=None, rekey_interval=8))
    mid = 0
    for round_ in range(2):
        for i in range(300):
            mid += 1
            message = (get if i % 3 else post)(mid, bytes([mid & 0xFF]))
            for _attempt in range(8):  # CoAP retransmits until answered
                before = len(world.answers("A"))
                world.client_send("A", message)
                world.timers()
                if any(a[2:4] == message[2:4] for a in world.answers("A")[before:]):
                    break
            if i % 10 == 0 and client.session_id:
                world._server_outputs(server.send(world.now, client.session_id,
                                                  coap(sf.NON, 0x45, 0x8000 + i, b"n", b"\xff" + bytes([i & 0xFF]))))
            world.now += 0.5
        if round_ == 0:  # restart the server: RESET, then IK with the request in flight
            server = world.server = new_server(rekey_interval=8)
    assert of(world.client_events["A"], Rehandshake)
    keys = {k for k, _ in used}
    assert len(used) > 1000 and len(keys) > 60  # many epochs and both sessions were exercised
    # each request ran once per server, whatever the losses
    per_server = Counter((d.session_id, sf.parse_coap_header(d.message).message_id) for d in world.executions)
    assert max(per_server.values()) == 1


# --- the flood ---


def test_flood_of_malformed_and_hostile_datagrams():
    limits = {"max_half_open": 16, "max_strikes": 32, "max_sessions": 64, "max_tracked_addresses": 512}
    server = new_server(**limits)
    world = World(server)
    good = world.add("good", new_client())
    for i in range(5):
        world.client_send("good", get(0x100 + i))
    world.client_send("good", post(0x200))
    captured = [t.data for t in of(world.client_events["good"], Transmit)]
    captured += [t.data for t in of(world.server_events, Transmit)]
    xx_client = World(new_server())  # handshake messages of another server, for variety
    xx_client.add("x", new_client(server_public=None, seed="xx"))
    xx_client.client_send("x", get(1))
    captured += [t.data for t in of(xx_client.client_events["x"], Transmit)]

    rnd = random.Random(20240601)
    evil = [("evil", i) for i in range(2000)]
    early_ik1 = [ik1_for(get(i), seed=f"flood{i}").datagram for i in range(300)]
    xx1s = [ClientSession(hashlib.sha256(b"f%d" % i).digest(), PROFILE, DIGEST, now=NOW).datagram for i in range(300)]

    def hostile() -> bytes:
        r = rnd.random()
        base = rnd.choice(captured)
        if r < 0.25:
            return rnd.randbytes(rnd.randrange(0, 200))
        if r < 0.40:
            return base[: rnd.randrange(0, len(base))]
        if r < 0.65:
            flipped = bytearray(base)
            for _ in range(rnd.randrange(1, 4)):
                flipped[rnd.randrange(len(flipped))] ^= 1 << rnd.randrange(8)
            return bytes(flipped)
        if r < 0.80:
            return base
        if r < 0.90:
            return rnd.choice(early_ik1)
        if r < 0.97:
            return rnd.choice(xx1s)
        return bytes([rnd.randrange(1, 8)]) + rnd.randbytes(rnd.randrange(0, 150))

    count = 0
    for n in range(10_500):
        addr = rnd.choice(evil)
        world.now += 0.001
        world.to_server(addr, hostile())  # any exception fails the test
        count += 1
        if n % 250 == 0:
            world.timers()
            sizes = server.sizes()
            assert sizes["half_open"] <= 16 and sizes["strikes"] <= 32
            assert sizes["sessions"] <= 64 and sizes["addresses"] <= 512
            assert sizes["ik1_index"] <= sizes["sessions"] and sizes["held_frames"] <= 4 * sizes["sessions"]
    assert count >= 10_000
    # anti-amplification: no evil address ever validated, each got at most 3x what it sent
    for addr in evil:
        assert world.sent[addr] <= 3 * world.received[addr], addr
    # the legitimate session still works, and a newcomer completes both handshakes
    before = len(world.executions)
    world.client_send("good", post(0x300))
    assert len(world.executions) == before + 1 and world.answers("good")[-1][2:4] == b"\x03\x00"
    for pattern_key in (None, SERVER_PUBLIC):
        world.now += 2  # handshake tokens
        newcomer = world.add(("new", pattern_key is None), new_client(server_public=pattern_key, seed="new"))
        world.client_send(("new", pattern_key is None), get(0x400))
        assert newcomer.channel is not None
        world.client_send(("new", pattern_key is None), post(0x401))
        assert world.answers(("new", pattern_key is None))[-1][2:4] == b"\x04\x01"
    assert good.channel is not None and good.channel.sizes()["window"] <= 64


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.binary(max_size=120)), max_size=20))
def test_random_datagrams_never_raise(datagrams):
    server = FUZZ_SERVER
    for addr, data in datagrams:
        for out in server.receive(NOW, addr, data):
            assert isinstance(out, (Transmit, Dropped, Deliver, SessionEstablished, SessionClosed))


FUZZ_SERVER = new_server()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=10), st.booleans())
def test_random_datagrams_never_raise_in_the_client(datagrams, established):
    client = new_client()
    if established:
        world = World(new_server())
        world.add("A", client)
        world.client_send("A", get(1))
    else:
        client.send(NOW, get(1))
    for data in datagrams:
        for out in client.receive(NOW, data):
            assert isinstance(out, (Transmit, Dropped, Deliver, Connected, Rehandshake, Woken))


def test_a_key_the_server_does_not_admit_gets_no_session_by_ik_or_xx():
    """A federation gateway admits its peers only: another key's session would
    count against ``max_sessions`` and push a peer's out."""
    peer = public_key(hashlib.sha256(b"peer").digest())
    server = ServerEndpoint(SERVER_STATIC, {PROFILE: DIGEST}, admit=lambda public: public == peer)
    world = World(server)
    world.add("A", new_client(seed="peer"))
    world.client_send("A", get(0x100))
    for name, client in (("B", new_client(seed="b")), ("C", new_client(server_public=None, seed="c"))):  # IK, XX
        world.add(name, client)
        world.client_send(name, post(0x200))
    assert server.sizes()["sessions"] == 1 and len(world.executions) == 1
    assert [d.reason for d in of(world.server_events, Dropped)].count("client key not admitted") == 2
