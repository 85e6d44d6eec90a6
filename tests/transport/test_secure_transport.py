"""CoAP inside Noise frames, end to end through aiocoap: loss, restarts, rebinding, floods."""

from __future__ import annotations

import random

import aiocoap.resource as resource
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from coap_gateway.app.demo import REFERENCE_BODY, REFERENCE_RESPONSE, REFERENCE_TARGET
from coap_gateway.codec import payload, routes
from coap_gateway.errors import ProfileMismatchError
from coap_gateway.secure.server import ServerEndpoint
from coap_gateway.transport.coap import create_link_endpoint
from coap_gateway.transport.links import UdpLink
from coap_gateway.transport.secure_codec import (
    SERVER_KEY,
    SecureServerCodec,
)
from meshsim import LinkProfile, Relay, emulated_link_pair
from tests.helpers.secure import (
    DIGEST,
    PROFILE,
    SERVER_PRIV,
    Counting,
    put,
    secure_client,
    secure_server,
    site_with,
    virtual_wall_clock,
)

# --------------------------------------------------------- in virtual time

LOSSY_CHAIN = [
    LinkProfile(rate_bps=100, loss=0.30, duplicate=0.20),
    LinkProfile(delay=1.0, jitter=0.8),
]


@pytest.mark.looptime
async def test_secure_exactly_once_at_100bps_with_loss_reordering_duplication():
    clock = virtual_wall_clock()
    cl, sl = emulated_link_pair(LOSSY_CHAIN, seed=11, max_retransmit=10)
    res = Counting()
    server, scodec = await secure_server(sl, res, clock)
    client, ccodec = await secure_client(cl, "server", clock)
    bodies = [f"m{i}".encode() for i in range(15)]
    answers = [await put(client, b) for b in bodies]
    assert [a.payload for a in answers] == [b"ok:" + b for b in bodies]
    assert res.executions == {b: 1 for b in bodies}
    assert scodec.sessions_established >= 1 and ccodec.error is None
    lost = sum(m.counters.dropped["loss"] for e in (cl, sl) for m in e.stages)
    dup = sum(m.counters.duplicated for e in (cl, sl) for m in e.stages)
    frames, wire = len(cl.sent) + len(sl.sent), sum(map(len, cl.sent + sl.sent))
    print(f"\nsecure, 15 exchanges at 100 bit/s: {frames} frames, {wire} B incl. handshake; "
          f"{client.counters.retransmissions} retransmissions, {lost} lost, {dup} duplicated")
    assert lost > 0 and dup > 0
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_reference_send_frame_sizes():
    """Request and response of the reference send, sealed, on a clean link."""
    clock = virtual_wall_clock()
    cl, sl = emulated_link_pair(LinkProfile(rate_bps=100, delay=1.0), seed=1)

    class Send(resource.Resource):
        async def render_put(self, request):
            pl = payload.body_to_payload(REFERENCE_RESPONSE, payload.JSON_TYPE, PROFILE)
            response = Message(code=Code.CONTENT, payload=pl.payload)
            if pl.content_format is not None:
                response.opt.content_format = pl.content_format
            return response

    class Everything(resource.Site):
        async def render_to_pipe(self, pipe):
            return await Send().render_to_pipe(pipe)

    server = await create_link_endpoint(sl, site=Everything(), codec=SecureServerCodec(
        ServerEndpoint(SERVER_PRIV, {PROFILE.id: DIGEST}), clock=clock))
    client, _ = await secure_client(cl, "server", clock)
    line = routes.http_to_coap("PUT", REFERENCE_TARGET, PROFILE.routes)
    pl = payload.body_to_payload(REFERENCE_BODY, payload.JSON_TYPE, PROFILE)

    async def send_once():
        msg = Message(code=Code.PUT, uri_path=line.uri_path, payload=pl.payload)
        msg.remote = client.remote(SERVER_KEY)
        return await client.context.request(msg).response

    await send_once()  # cold: IK handshake with the request as early data
    ik1, ik2 = cl.sent[0], sl.sent[0]
    cold_c, cold_s = len(cl.sent), len(sl.sent)
    assert (cold_c, cold_s) == (1, 1)  # 0-RTT: one flight each way, nothing else
    await send_once()  # warm
    request, response = cl.sent[cold_c], sl.sent[cold_s]
    plain = Message(code=Code.PUT, uri_path=line.uri_path, payload=pl.payload)
    plain.mtype, plain.mid, plain.token = Type.CON, 0, b""  # one request at a time: the empty token
    plain_request = len(plain.encode())
    assert len(request) == plain_request + 1 + 16  # Seq + tag
    print(f"\nreference send: cold IK1 {len(ik1)} B + IK2 {len(ik2)} B; warm request {len(request)} B "
          f"(plain {plain_request} B) + response {len(response)} B; link-level W1 = {len(request) + len(response)} B")
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_the_first_request_waits_for_its_handshake_without_retransmitting():
    """A login (POST: never early data) from a cold client at 100 bit/s, 1 s
    each way: IK1 and IK2 cross first (12 s of frames), then the request.
    Its timer must include the handshake, and its round trip, handshake
    included, must not be taken as a sample of the link (it made the next
    timeout 150 s)."""
    clock = virtual_wall_clock()
    cl, sl = emulated_link_pair(LinkProfile(rate_bps=100, delay=1.0), seed=1)

    class Login(resource.Resource):
        async def render_post(self, request):
            return Message(code=Code.CONTENT, payload=bytes(74))  # a login's answer: 90 B sealed

    class Everything(resource.Site):
        async def render_to_pipe(self, pipe):
            return await Login().render_to_pipe(pipe)

    server = await create_link_endpoint(sl, site=Everything(), codec=SecureServerCodec(
        ServerEndpoint(SERVER_PRIV, {PROFILE.id: DIGEST}), clock=clock))
    client, codec = await secure_client(cl, "server", clock)
    assert codec.setup_bytes("server") == 104 + 50
    timer = client.interface.mman.timer_for(client.remote(SERVER_KEY))
    for _ in range(20):  # the timeout is drawn at random: draw it many times
        msg = Message(code=Code.POST, uri_path=["login"], payload=bytes(43))
        msg.remote = client.remote(SERVER_KEY)
        await client.context.request(msg).response
        if client.counters.rtt_samples == 0:
            # the cold exchange: no sample; the handshake is done
            assert codec.setup_bytes("server") == 0 and timer.srtt is None
    assert client.counters.retransmissions == 0 and len(cl.sent) == 1 + 20
    assert client.counters.rtt_samples == 19 and timer.srtt < 3.0, timer.srtt
    await client.shutdown(), await server.shutdown()


# ------------------------------------------------------------ real sockets


async def test_server_restart_client_rehandshakes_and_gets_one_answer():
    res = Counting()
    server_link = await UdpLink.open("127.0.0.1", 0)
    addr = server_link.local_address
    server, _ = await secure_server(server_link, res, clock=__import__("time").time)
    client_link = await UdpLink.open("127.0.0.1", 0)
    client, ccodec = await secure_client(client_link, addr, clock=__import__("time").time)
    assert (await put(client, b"before", 20)).payload == b"ok:before"
    await server.shutdown()  # the server goes away with all its sessions
    res2 = Counting()
    server_link2 = await UdpLink.open(*addr)
    server2, scodec2 = await secure_server(server_link2, res2, clock=__import__("time").time)
    answer = await put(client, b"after", 30)
    assert answer.payload == b"ok:after" and res2.executions == {b"after": 1}
    assert ccodec.rehandshakes == 1 and scodec2.sessions_established == 1
    await client.shutdown(), await server2.shutdown()


async def test_nat_rebinding_keeps_the_session():
    import time

    res = Counting()
    server_link = await UdpLink.open("127.0.0.1", 0)
    server, scodec = await secure_server(server_link, res, clock=time.time)
    fast = LinkProfile()
    relay = Relay(("127.0.0.1", 0), server_link.local_address, fast)
    await relay.start()
    nat = relay.listen_address
    client_link = await UdpLink.open("127.0.0.1", 0)
    client, ccodec = await secure_client(client_link, nat, clock=time.time)
    assert (await put(client, b"one", 20)).payload == b"ok:one"
    first_addr = scodec.endpoint.session_address(next(iter(scodec.endpoint._sessions)))
    # the NAT forgets the mapping: a new relay on the same public port, new upstream port
    await relay.stop()
    relay = Relay(nat, server_link.local_address, fast)
    await relay.start()
    assert (await put(client, b"two", 20)).payload == b"ok:two"
    second_addr = scodec.endpoint.session_address(next(iter(scodec.endpoint._sessions)))
    assert second_addr != first_addr  # the server really saw a new address …
    assert scodec.sessions_established == 1 and ccodec.handshakes == 1  # … and kept the session
    assert res.executions == {b"one": 1, b"two": 1}
    await relay.stop()
    await client.shutdown(), await server.shutdown()


async def test_flood_of_malformed_datagrams_through_the_shell():
    import time

    res = Counting()
    server_link = await UdpLink.open("127.0.0.1", 0)
    server, scodec = await secure_server(server_link, res, clock=time.time)
    client_link = await UdpLink.open("127.0.0.1", 0)
    client, _ = await secure_client(client_link, server_link.local_address, clock=time.time)
    assert (await put(client, b"a", 20)).payload == b"ok:a"
    rng = random.Random(5)
    sent_by_server_before = server.counters.bytes_out
    received = 0
    for i in range(10_000):
        kind = rng.randrange(4)
        if kind == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        elif kind == 1:
            data = bytes([0x01, 2]) + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))  # fake IK1
        elif kind == 2:
            data = bytes([0x40 | rng.randrange(64)]) + bytes(rng.getrandbits(8) for _ in range(rng.randrange(3, 60)))
        else:
            data = bytes([rng.randrange(8)])
        peer = ("127.0.0.%d" % rng.randrange(2, 250), rng.randrange(1024, 65535))
        received += len(data)
        server.interface._datagram_received(peer, data)
    sizes = scodec.endpoint.sizes()
    assert sizes["half_open"] <= scodec.endpoint.limits.max_half_open
    assert sum(scodec.dropped.values()) > 5000
    # anti-amplification: what the flood made the server send is bounded by 3x what it got
    assert server.counters.bytes_out - sent_by_server_before <= 3 * received
    # the real client still works, and nothing ran twice
    assert (await put(client, b"b", 20)).payload == b"ok:b"
    assert res.executions == {b"a": 1, b"b": 1}
    await client.shutdown(), await server.shutdown()


async def test_profile_mismatch_is_a_clear_error():
    import time

    server_link = await UdpLink.open("127.0.0.1", 0)
    server, _ = await secure_server(server_link, Counting(), clock=time.time)
    client_link = await UdpLink.open("127.0.0.1", 0)
    client, ccodec = await secure_client(client_link, server_link.local_address, clock=time.time, digest=b"\xde\xad")
    with pytest.raises(Exception):
        await put(client, b"x", 10)
    assert isinstance(ccodec.error, ProfileMismatchError)
    assert DIGEST.hex() in str(ccodec.error) and "dead" in str(ccodec.error)
    await client.shutdown(), await server.shutdown()


async def test_evicted_sessions_leave_no_coap_state_behind():
    import time

    from coap_gateway.secure.server import ServerLimits

    server_link = await UdpLink.open("127.0.0.1", 0)
    codec = SecureServerCodec(ServerEndpoint(SERVER_PRIV, {PROFILE.id: DIGEST}, limits=ServerLimits(max_sessions=2)),
                              clock=time.time)
    server = await create_link_endpoint(server_link, site=site_with(Counting()), codec=codec)
    clients = []
    for i in range(5):
        link = await UdpLink.open("127.0.0.1", 0)
        client, _ = await secure_client(link, server_link.local_address, clock=time.time)
        assert (await put(client, b"c%d" % i, 20)).payload == b"ok:c%d" % i
        clients.append(client)
    # five sessions came, at most two are kept: the server's per-remote timers follow
    assert codec.sessions_established == 5
    assert len(server.interface.mman.timers) <= 2
    for client in clients:
        await client.shutdown()
    await server.shutdown()


def test_drop_reasons_are_bounded():
    from collections import Counter

    from coap_gateway.transport.secure_codec import MAX_DROP_REASONS, count_drop

    dropped: Counter[str] = Counter()
    for i in range(10_000):
        count_drop(dropped, f"SecurityError: bad tag from peer {i} with text {i * 7}")
        # distinct texts a peer could provoke (letters: not folded like numbers)
        count_drop(dropped, "reason-" + chr(97 + i % 26) + chr(97 + i // 26 % 26))
    assert dropped["SecurityError"] == 10_000  # exception text stripped
    assert len(dropped) <= MAX_DROP_REASONS and dropped["other"] > 0
