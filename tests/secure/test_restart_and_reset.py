"""Forged RESETs, restarted clients and replayed handshakes, sans-I/O (secure endpoints in memory)."""

from __future__ import annotations

import hashlib

import pytest

from coap_gateway.errors import HandshakeError
from coap_gateway.secure import frame as sf
from coap_gateway.secure.events import (
    Deliver,
    DeviceRestarted,
    Dropped,
    Rehandshake,
    SessionClosed,
    Transmit,
    Woken,
)
from coap_gateway.secure.noise import ClientSession
from coap_gateway.secure.server import ServerEndpoint, ServerLimits
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


def frames_up(world: World, addr: str) -> list[bytes]:
    return [t.data for t in of(world.client_events[addr], Transmit)]


def test_a_forged_reset_of_an_answered_request_changes_nothing():
    world = World(new_server())
    client = world.add("A", new_client())
    world.client_send("A", get(0x100))  # IK, early data
    world.client_send("A", post(0x101))  # a data frame, answered
    sealed = frames_up(world, "A")[-1]
    before = len(world.client_events["A"])
    # anyone who saw the frame knows its 4 clear header bytes: that is all a RESET needs
    outs = client.receive(NOW, sf.build_reset(sealed[:4]))
    assert of(outs, Dropped) and not of(outs, Rehandshake) and not of(outs, Transmit)
    assert client.channel is not None and len(world.client_events["A"]) == before
    assert [d.message for d in world.executions].count(post(0x101)) == 1


def test_a_forged_reset_of_a_pending_request_resends_the_same_message():
    """Unanswered, the request is sent again (a new handshake, the same CoAP
    message and message ID): the server's CoAP layer, which keys its
    deduplication by device rather than session, recognises it."""
    world = World(new_server())
    client = world.add("A", new_client())
    world.client_send("A", get(0x200))
    world.answering = False
    world.client_send("A", post(0x201))  # executed, answer lost
    sealed = frames_up(world, "A")[-1]
    outs = client.receive(NOW, sf.build_reset(sealed[:4]))
    assert of(outs, Rehandshake)
    resent = [t.data for t in of(outs, Transmit)]
    assert resent and sf.classify(resent[0]) is sf.DatagramKind.IK1
    # POST is not early data: it follows IK2, byte-identical inside
    assert client.handshake is not None and client.handshake.message is None
    assert post(0x201) in list(client._queue)


@pytest.mark.parametrize("early", [True, False], ids=["with-early-data", "after-ik2"])
def test_restart_flags_take_effect_before_the_first_request_runs(early):
    """With early data (struck off: that IK1 can never run again) the server acts on
    the flags at IK1; without (a POST), when the session is validated — either way
    before the device's first request is delivered."""
    world = World(new_server())
    world.add("A", new_client(seed="device"))
    world.client_send("A", get(0x300))
    world.client_send("A", get(0x301))
    old_sessions = {d.session_id for d in world.executions}
    assert len(old_sessions) == 1
    # the device's client process restarts: same static key, new state
    restarted = world.add("B", new_client(seed="device", restart=True, unbound=True))
    first = get(0x310) if early else post(0x310)
    world.client_send("B", first)
    ik1 = frames_up(world, "B")[0]
    assert sf.classify(ik1) is sf.DatagramKind.IK1
    assert (len(ik1) > 104) is early  # the request rides in IK1 unless it is not early-data material
    events = world.server_events
    restarts = of(events, DeviceRestarted)
    assert len(restarts) == 1 and restarts[0].unbound
    closed = of(events, SessionClosed)
    assert {c.session_id for c in closed} == old_sessions  # the old process's session is gone
    # the restart came before the request that validated the session was delivered
    order = [e for e in events if isinstance(e, (DeviceRestarted, Deliver)) and getattr(e, "counter", 1) is not None]
    assert isinstance(order[-2], DeviceRestarted) and order[-1].message == first
    # the flags are said until an answer authenticates in that session, then never again
    assert not restarted.announce_restart and not restarted.announce_unbound


def test_a_replayed_restart_handshake_does_nothing():
    world = World(new_server())
    world.add("A", new_client(seed="device"))
    world.client_send("A", get(0x400))
    world.client_send("A", get(0x401))
    flagged = ClientSession(hashlib.sha256(b"device").digest(), PROFILE, DIGEST, now=NOW,
                            server_public=SERVER_PUBLIC, restart=True, unbound=True)
    outs = world.server.receive(NOW, "attacker", flagged.datagram)  # IK1 replayed by someone without the keys
    assert not of(outs, DeviceRestarted) and not of(outs, SessionClosed)
    world.client_send("A", get(0x402))  # the device's own session still works
    assert world.executions[-1].message == get(0x402)


def test_a_replayed_restart_ik1_with_early_data_does_nothing_again():
    """The restart acted on at IK1 is the device's own: the IK1 is struck off, so its
    replay is refused before anything happens (no second restart, nothing run twice)."""
    world = World(new_server())
    world.add("A", new_client(seed="device"))
    world.client_send("A", get(0x600))
    world.add("B", new_client(seed="device", restart=True, unbound=True))
    world.client_send("B", get(0x610))
    ik1 = frames_up(world, "B")[0]
    assert len(of(world.server_events, DeviceRestarted)) == 1
    executed = len(world.executions)
    outs = world.server.receive(NOW, "attacker", ik1)  # the same IK1 from elsewhere
    assert not of(outs, DeviceRestarted) and not of(outs, SessionClosed) and not of(outs, Deliver)
    assert len(world.executions) == executed


def test_an_ik1_whose_early_data_was_refused_is_never_taken_later():
    """Every fresh IK1 that decrypts is struck, early data or not: before, one
    whose early data was refused (a server just restarted without its register)
    was replayed once its session was gone and the refusal period over — its
    early request ran, and its RESTART closed the device's live session."""
    start = NOW
    server = ServerEndpoint(SERVER_STATIC, {PROFILE: DIGEST}, limits=ServerLimits(max_sessions=3),
                            early_data_from=start + 600, now=start)
    struck = []
    server._on_strike = lambda key, expires, now: struck.append(key)
    world = World(server)
    world.now = start + 300
    captured: list[bytes] = []
    world.drop = lambda d, data: (d == "up" and data[0] == sf.DatagramKind.IK1 and captured.append(data)) and False
    victim = world.add("A", new_client(seed="victim", restart=True, unbound=True))
    world.client_send("A", get(0x10))  # early data refused (too soon), resent as data
    assert [d.early for d in world.executions] == [False] and len(struck) == 1  # struck all the same
    for i in range(3):  # the victim's session falls out of the table
        world.add(("o", i), new_client(seed=f"other{i}"))
        world.client_send(("o", i), get(0x20))
    assert server.session_address(victim.session_id) is None
    world.now = start + 601
    world.client_send("A", get(0x11))  # RESET, a new session (no flags now: the server answered)
    live = victim.session_id
    assert server.session_address(live) == "A"
    outs = server.receive(world.now, ("attacker", 1), captured[0])  # the first IK1, replayed
    assert not of(outs, DeviceRestarted) and not of(outs, Deliver)
    assert live not in {c.session_id for c in of(outs, SessionClosed)} and server.session_address(live) == "A"


@pytest.mark.parametrize("ahead", [0, 5, 10])
def test_a_server_without_its_register_waits_until_the_last_runs_ik1s_are_stale(ahead):
    """An IK1 stays acceptable until its minutes + the window + 1 minute, and its
    minutes may be the window ahead of the server: a server that lost its
    register waits twice the window and a minute (before: the window once,
    and a replay with a client clock 10 minutes ahead ran again for 11 minutes)."""
    limits = ServerLimits()
    start = 28_333_333 * 60.0  # a minute boundary
    ik1 = ClientSession(hashlib.sha256(b"dev").digest(), PROFILE, DIGEST, now=start + 1 + 60 * ahead,
                        server_public=SERVER_PUBLIC, message=get(0x77)).datagram
    first = ServerEndpoint(SERVER_STATIC, {PROFILE: DIGEST}, limits=limits, now=start)
    assert [d.early for d in of(first.receive(start + 1, "A", ik1), Deliver)] == [True]
    restart = start + 2  # the register is lost
    safe = limits.early_data_safe_from(restart)
    assert safe == restart - 2 + 2 * limits.early_window + 60
    taken = []
    for t in range(int(restart), int(safe) + 30 * 60, 10):
        # a new server each time: the attacker replays once, at t (a replay it saw would be struck)
        after = ServerEndpoint(SERVER_STATIC, {PROFILE: DIGEST}, limits=limits, early_data_from=safe, now=restart)
        if [d for d in of(after.receive(float(t), "X", ik1), Deliver) if d.early]:
            taken.append(t)
    assert taken == []
    fresh = ClientSession(hashlib.sha256(b"dev").digest(), PROFILE, DIGEST, now=safe, server_public=SERVER_PUBLIC,
                          message=get(0x78)).datagram
    after = ServerEndpoint(SERVER_STATIC, {PROFILE: DIGEST}, limits=limits, early_data_from=safe, now=restart)
    assert [d.early for d in of(after.receive(safe, "A", fresh), Deliver)] == [True]  # not a second later


def test_xx3_carries_the_flags():
    world = World(new_server())
    world.add("A", new_client(server_public=None, restart=True, unbound=False))
    world.client_send("A", post(0x500))
    restarts = of(world.server_events, DeviceRestarted)
    assert len(restarts) == 1 and not restarts[0].unbound


def test_flag_bytes():
    assert sf.encode_ik1_payload(None, 5, restart=True, unbound=True)[0] == 0x0C
    assert sf.encode_xx3_payload(get(1), restart=True) [0] == 0x05
    hello = sf.decode_xx3_payload(sf.encode_xx3_payload(get(1), restart=True, unbound=True))
    assert (hello.restart, hello.unbound, hello.message) == (True, True, get(1))
    # early data with RESTART (and UNBOUND): allowed since the server acts on it only
    # when it accepts the early data (docs/protocol.md Part III)
    assert sf.encode_ik1_payload(get(1), 5, restart=True)[0] == 0x05
    hello = sf.decode_ik1_payload(bytes([0x0D, 0, 0, 5]) + get(1))
    assert (hello.restart, hello.unbound, hello.message) == (True, True, get(1))
    with pytest.raises(HandshakeError):
        sf.decode_ik2_payload(bytes([0x04]))  # not an IK2 flag
    with pytest.raises(HandshakeError):
        sf.decode_xx3_payload(bytes([0x10]))  # reserved


def test_early_data_waits_for_a_restored_register_or_the_window():
    first = new_server()
    seen = []
    first._on_strike = lambda key, expires, now: seen.append((key, expires))
    ik1 = ClientSession(hashlib.sha256(b"c").digest(), PROFILE, DIGEST, now=NOW, server_public=SERVER_PUBLIC,
                        message=get(0x600))
    assert of(first.receive(NOW, "A", ik1.datagram), Deliver)  # early data runs, its strike recorded
    assert len(seen) == 1 and seen == first.strikes.entries()
    # a restart that restores the register: the same IK1 is a replay
    restored = new_server()
    restored.__init__(restored._static, restored._profiles, strikes=seen, now=NOW + 60)
    assert not [d for d in of(restored.receive(NOW + 60, "B", ik1.datagram), Deliver) if d.early]
    # a restart that lost it refuses early data until the window has passed
    lost = new_server()
    lost.early_data_from = NOW + lost.limits.early_window
    assert not [d for d in of(lost.receive(NOW + 60, "B", ik1.datagram), Deliver) if d.early]


# --- pings and WAKE: how a session lost on the other side is found


def ping(mid: int) -> bytes:
    return coap(sf.CON, 0x00, mid)


def test_a_ping_finds_a_server_that_lost_the_session():
    """The server restarted: a ping sealed in the old session meets RESET,
    which echoes it, and the client opens a new session and pings in it (a
    ping runs nothing, so sending it again is always safe)."""
    world = World(new_server())
    client = world.add("A", new_client())
    world.client_send("A", get(0x400))
    old = client.session_id
    world.server = new_server()  # restarted: no session
    world.client_send("A", ping(0x401))
    assert len(of(world.client_events["A"], Rehandshake)) == 1
    assert client.session_id not in (None, old)
    assert [d.message for d in of(world.server_events, Deliver)][-1] == ping(0x401)


def test_a_forged_reset_of_an_answered_ping_changes_nothing():
    world = World(new_server())
    client = world.add("A", new_client())
    world.client_send("A", get(0x410))
    world.client_send("A", ping(0x411))
    sealed = frames_up(world, "A")[-1]
    world._server_outputs(world.server.send(world.now, client.session_id, coap(sf.RST, 0x00, 0x411)))  # its answer
    outs = client.receive(NOW, sf.build_reset(sealed[:4]))
    assert of(outs, Dropped) and not of(outs, Rehandshake) and not of(outs, Transmit)


def test_a_wake_asks_for_one_ping_per_interval():
    """WAKE (a responder with a request and no session) is not authenticated:
    it buys at most one ping per interval, and only from a client that can
    open a session (a pinned server key)."""
    client = new_client()
    assert of(client.receive(NOW, sf.WAKE_DATAGRAM), Woken)
    too_soon = client.receive(NOW + client.wake_interval - 1, sf.WAKE_DATAGRAM)
    assert of(too_soon, Dropped) and not of(too_soon, Woken)
    malformed = client.receive(NOW + 100, sf.WAKE_DATAGRAM + b"\0")
    assert of(malformed, Dropped) and not of(malformed, Woken)
    assert of(client.receive(NOW + 100, sf.WAKE_DATAGRAM), Woken)  # a malformed one did not use the interval
    assert not of(new_client(server_public=None).receive(NOW, sf.WAKE_DATAGRAM), Woken)
    assert of(new_server().receive(NOW, "A", sf.WAKE_DATAGRAM), Dropped)  # for clients only
    assert sf.classify(sf.WAKE_DATAGRAM) is sf.DatagramKind.WAKE and sf.classify(b"\x09") is sf.DatagramKind.INVALID
