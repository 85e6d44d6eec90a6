"""CoAP under aiocoap over our links: reliability at 100 bit/s, in virtual time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket

import aiocoap.resource as resource
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from coap_gateway.transport.coap import LinkFailure, create_link_endpoint
from coap_gateway.transport.kiss import FEND, KissDecoder, encode_frame
from coap_gateway.transport.links import SerialLink, UdpLink
from coap_gateway.transport.timing import LinkBudget, RetransmissionTimer
from meshsim import LinkProfile, emulated_link_pair


class Counting(resource.Resource):
    """Echo resource that counts how often each request body ran."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.executions: dict[bytes, int] = {}
        self.delay = delay

    async def render_post(self, request):
        self.executions[request.payload] = self.executions.get(request.payload, 0) + 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return Message(code=Code.CHANGED, payload=b"ok:" + request.payload)


def site_with(res: resource.Resource) -> resource.Site:
    site = resource.Site()
    site.add_resource(["x"], res)
    return site


async def pair(profile, *, reverse=None, seed=1, max_retransmit=4, max_frame=1152, server_res=None, budget_override=None):
    client_link, server_link = emulated_link_pair(profile, reverse=reverse, seed=seed,
                                                  max_retransmit=max_retransmit, max_frame=max_frame)
    if budget_override is not None:
        client_link.budget = server_link.budget = budget_override
    res = server_res or Counting()
    server = await create_link_endpoint(server_link, site=site_with(res))
    client = await create_link_endpoint(client_link)
    return client, server, res, client_link, server_link


async def post(client, body: bytes) -> Message:
    msg = Message(code=Code.POST, uri_path=["x"], payload=body)
    msg.remote = client.remote("server")
    return await client.context.request(msg).response


def link_bytes(*ends) -> tuple[int, int]:
    frames = sum(len(e.sent) for e in ends)
    return frames, sum(len(d) for e in ends for d in e.sent)


# ------------------------------------------------------------- at 100 bit/s

SLOW = LinkProfile(rate_bps=100, delay=1.0, overhead=0)


@pytest.mark.looptime
async def test_timers_follow_the_link_no_spurious_retransmission():
    client, server, res, cl, sl = await pair(SLOW)
    t0 = asyncio.get_running_loop().time()
    response = await post(client, b"hello")
    elapsed = asyncio.get_running_loop().time() - t0
    assert response.payload == b"ok:hello" and res.executions == {b"hello": 1}
    assert client.counters.retransmissions == 0 and server.counters.retransmissions == 0
    assert link_bytes(cl, sl)[0] == 2  # a CON request and its piggybacked ACK
    # physics: both frames serialised at 100 bit/s plus 1 s latency each way
    assert elapsed >= (len(cl.sent[0]) + len(sl.sent[0])) * 8 / 100 + 2.0
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_stock_coap_timers_would_retransmit_spuriously():
    # the same link, but the endpoints believe it is fast (aiocoap's 2 s)
    client, server, res, cl, sl = await pair(SLOW, budget_override=LinkBudget())
    response = await post(client, b"hello")
    assert response.payload == b"ok:hello" and res.executions == {b"hello": 1}
    assert client.counters.retransmissions >= 1  # nothing was lost: every retransmission is spurious
    await client.shutdown(), await server.shutdown()


LOSSY_CHAIN = [
    LinkProfile(rate_bps=100, loss=0.30, duplicate=0.20, overhead=0),
    LinkProfile(delay=1.0, jitter=0.8),  # after the serialiser: reorders
]


@pytest.mark.looptime
async def test_exactly_once_at_100bps_30pct_loss_reordering_duplication():
    client, server, res, cl, sl = await pair(LOSSY_CHAIN, seed=7, max_retransmit=10)
    bodies = [f"m{i}".encode() for i in range(20)]
    answers = [await post(client, body) for body in bodies]
    assert [a.payload for a in answers] == [b"ok:" + b for b in bodies]
    assert res.executions == {b: 1 for b in bodies}  # executed exactly once each
    # the link really was that bad
    dropped = sum(m.counters.dropped["loss"] for e in (cl, sl) for m in e.stages)
    duplicated = sum(m.counters.duplicated for e in (cl, sl) for m in e.stages)
    assert dropped > 0 and duplicated > 0 and client.counters.retransmissions > 0
    frames, wire = link_bytes(cl, sl)
    print(f"\n20 exchanges: {frames} frames, {wire} B on the link "
          f"({client.counters.retransmissions} client retransmissions, {dropped} lost, {duplicated} duplicated)")
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_slow_upstream_gets_an_empty_ack_and_a_separate_response():
    client, server, res, cl, sl = await pair(SLOW, server_res=Counting(delay=120.0))
    response = await post(client, b"slow")
    assert response.payload == b"ok:slow" and res.executions == {b"slow": 1}
    server_frames = [Message.decode(d) for d in sl.sent]
    assert server_frames[0].mtype == Type.ACK and server_frames[0].code == Code.EMPTY
    assert any(m.mtype == Type.CON and m.code == Code.CHANGED for m in server_frames)
    assert client.counters.retransmissions == 0
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_duplicated_requests_run_once():
    both_dup = LinkProfile(rate_bps=100, delay=1.0, duplicate=1.0)
    client, server, res, cl, sl = await pair(both_dup)
    for body in (b"a", b"b", b"c"):
        assert (await post(client, body)).payload == b"ok:" + body
    assert res.executions == {b"a": 1, b"b": 1, b"c": 1}
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_empty_token_for_one_request_at_a_time_one_byte_tokens_beside_it():
    client, server, res, cl, sl = await pair(SLOW)
    await post(client, b"t")
    await post(client, b"u")
    # sequential requests: the empty token each time, in the request and its answer
    assert [Message.decode(d).token for d in cl.sent] == [b"", b""]
    assert [Message.decode(d).token for d in sl.sent] == [b"", b""]
    # concurrent requests: one has the empty token, the others one byte each
    await asyncio.gather(*(post(client, b) for b in (b"a", b"b", b"c")))
    tokens = [Message.decode(d).token for d in cl.sent[2:]]
    assert sorted(map(len, tokens)) == [0, 1, 1] and len(set(tokens)) == 3
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_empty_token_rests_after_an_exchange_that_got_no_answer():
    client, server, res, cl, sl = await pair(SLOW, max_retransmit=0)
    cl.stages[0].set_profile(LinkProfile(rate_bps=100, delay=1.0, loss=1.0), asyncio.get_running_loop().time())
    with pytest.raises(Exception):
        await post(client, b"lost")
    cl.stages[0].set_profile(SLOW, asyncio.get_running_loop().time())
    await post(client, b"next")
    # a late answer to "lost" could still come with the empty token: "next" gets another
    assert Message.decode(cl.sent[0]).token == b"" and len(Message.decode(cl.sent[-1]).token) == 1
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_duplicated_responses_never_reach_a_newer_request():
    """Every frame duplicated: with the empty token reused at once, a duplicate
    of an earlier answer would otherwise be taken as the answer to the next."""
    dup = LinkProfile(rate_bps=1000, delay=0.2, duplicate=1.0)
    client, server, res, cl, sl = await pair(dup, seed=3)
    answers = [await post(client, f"m{i}".encode()) for i in range(6)]
    assert [a.payload for a in answers] == [f"ok:m{i}".encode() for i in range(6)]
    assert client.counters.duplicate_responses >= 5
    await client.shutdown(), await server.shutdown()


class Big(resource.Resource):
    async def render_get(self, request):
        return Message(code=Code.CONTENT, payload=bytes(range(256)) * 4)


@pytest.mark.looptime
async def test_a_get_is_budgeted_for_a_full_frame_answer():
    """A 1 kB answer at 2400 bit/s takes 3.6 s to serialise: budgeting the
    usual 256 B for it would retransmit the request; a GET gets a full frame."""
    link = LinkProfile(rate_bps=2400, delay=0.05)
    client, server, _, cl, sl = await pair(link, server_res=Big())
    msg = Message(code=Code.GET, uri_path=["x"])
    msg.remote = client.remote("server")
    response = await client.context.request(msg).response
    assert len(response.payload) == 1024
    assert client.counters.retransmissions == 0 and len(cl.sent) == 1
    await client.shutdown(), await server.shutdown()


class Bigger(resource.Resource):
    async def render_get(self, request):
        return Message(code=Code.CONTENT, payload=bytes(range(256)) * 12)


@pytest.mark.looptime
async def test_blockwise_state_outlives_a_block_at_50_bps():
    """A 1024-B block takes 166 s at 50 bit/s; aiocoap would drop the cached
    response after its fixed 93-186 s and answer the next block 4.08."""
    slow = LinkProfile(rate_bps=50, delay=0.5)
    client, server, _, cl, sl = await pair(slow, server_res=Bigger())
    msg = Message(code=Code.GET, uri_path=["x"])
    msg.remote = client.remote("server")
    response = await client.context.request(msg).response
    assert response.code == Code.CONTENT and response.payload == bytes(range(256)) * 12
    assert sum(Message.decode(d).opt.block2 is not None for d in sl.sent) == 3
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
@pytest.mark.parametrize("max_frame,blockwise", [(1152, False), (200, True)])
async def test_blockwise_only_when_a_message_does_not_fit(max_frame, blockwise):
    fast = LinkProfile(rate_bps=100_000, delay=0.01)
    client, server, _, cl, sl = await pair(fast, max_frame=max_frame, server_res=Big())
    msg = Message(code=Code.GET, uri_path=["x"])
    msg.remote = client.remote("server")
    response = await client.context.request(msg).response
    assert response.payload == bytes(range(256)) * 4
    used_block2 = any(Message.decode(d).opt.block2 is not None for d in sl.sent)
    assert used_block2 == blockwise
    assert max(len(d) for d in sl.sent) <= (max_frame if blockwise else 1152)
    await client.shutdown(), await server.shutdown()


class Clock(resource.ObservableResource):
    def __init__(self):
        super().__init__()
        self.value = 0

    def tick(self):
        self.value += 1
        self.updated_state()

    async def render_get(self, request):
        return Message(code=Code.CONTENT, payload=str(self.value).encode())


@pytest.mark.looptime
async def test_observe_notifications_cross_the_slow_link():
    clock = Clock()
    client, server, _, cl, sl = await pair(SLOW, server_res=clock)
    msg = Message(code=Code.GET, uri_path=["x"], observe=0)
    msg.remote = client.remote("server")
    request = client.context.request(msg)
    first = await request.response
    assert first.payload == b"0"
    seen = []
    clock.tick()
    async for note in request.observation:
        seen.append(note.payload)
        if len(seen) == 2:
            break
        clock.tick()  # the next change only once the last one has arrived
    assert seen == [b"1", b"2"]
    request.observation.cancel()
    await client.shutdown(), await server.shutdown()


# aiocoap: a random request that another with its token replaces in the same
# loop turn is cancelled before its render coroutine starts (run_driving_pipe)
@pytest.mark.looptime
@pytest.mark.filterwarnings("ignore:coroutine 'Context._render_to_pipe' was never awaited:RuntimeWarning")
async def test_malformed_datagrams_are_dropped_and_counted():
    client, server, res, cl, sl = await pair(LinkProfile(rate_bps=100_000))
    rng = random.Random(3)
    good = cl.sent  # nothing sent yet
    iface = server.interface
    for _ in range(2000):
        iface._datagram_received("client", bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40))))
    assert server.counters.dropped_malformed > 1000
    # and the endpoint still works
    assert (await post(client, b"still")).payload == b"ok:still"
    assert good is cl.sent
    await client.shutdown(), await server.shutdown()


# --------------------------------------------------------------- real links


async def _serve_and_ask(server_link, client_link, client_key):
    res = Counting()
    server = await create_link_endpoint(server_link, site=site_with(res))
    client = await create_link_endpoint(client_link)
    msg = Message(code=Code.POST, uri_path=["x"], payload=b"real")
    msg.remote = client.remote(client_key)
    response = await asyncio.wait_for(client.context.request(msg).response, 30)
    await client.shutdown(), await server.shutdown()
    return response, res


async def test_udp_ipv4():
    server_link = await UdpLink.open("127.0.0.1", 0)
    client_link = await UdpLink.open("127.0.0.1", 0)
    response, res = await _serve_and_ask(server_link, client_link, server_link.local_address)
    assert response.payload == b"ok:real" and res.executions == {b"real": 1}


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")
async def test_udp_ipv6():
    server_link = await UdpLink.open("::1", 0)
    client_link = await UdpLink.open("::1", 0)
    response, res = await _serve_and_ask(server_link, client_link, server_link.local_address)
    assert response.payload == b"ok:real"


async def test_kiss_over_a_pty_pair():
    master, slave = os.openpty()
    slave_path = os.ttyname(slave)
    budget = LinkBudget(rate_bps=9600, frame_overhead=3)
    server_link = SerialLink(master, budget, "pty-master")
    client_link = await SerialLink.open(slave_path, budget)
    # noise on the line before and between frames is ignored
    os.write(slave, b"\x01\x02garbage")
    try:
        response, res = await _serve_and_ask(server_link, client_link, SerialLink.PEER)
        assert response.payload == b"ok:real"
    finally:
        os.close(slave)


def test_kiss_framing_escapes_and_survives_garbage():
    data = bytes([0xC0, 0xDB, 0x00, 0xDC, 0xDD])
    frame = encode_frame(data)
    assert frame == bytes([0xC0, 0x00, 0xDB, 0xDC, 0xDB, 0xDD, 0x00, 0xDC, 0xDD, 0xC0])
    dec = KissDecoder(max_frame=16)
    stream = b"noise" + frame + bytes([FEND, 0x00, 0xDB, 0x01, FEND]) + encode_frame(bytes(40)) + encode_frame(b"ok")
    out = []
    for i in range(0, len(stream), 3):  # any chunking
        out += dec.feed(stream[i : i + 3])
    assert out == [data, b"ok"]
    assert dec.dropped_bad_escape == 1 and dec.dropped_oversize == 1


def test_retransmission_timer_math():
    b = LinkBudget(rate_bps=100, latency=1.0, max_response=50)
    t = RetransmissionTimer(b)
    # request 30 B (2.4 s) + response budget 50 B (4 s) + initial residual 3.5 s
    assert t.ack_timeout(30) == pytest.approx(2.4 + 4.0 + 3.5)
    assert t.ack_timeout(30, queued_bytes=100) == pytest.approx(8 + 2.4 + 4.0 + 3.5)
    t.on_sample(2.4 + 2.0 + 2.1, request_size=30, response_size=25)  # residual 2.1
    assert t.srtt == pytest.approx(2.1) and t.ack_timeout(30) == pytest.approx(2.4 + 4.0 + 2.1 + 4 * 1.05)
    with pytest.raises(ValueError):
        LinkBudget(rate_bps=0)


@pytest.mark.looptime
async def test_per_remote_state_is_bounded(monkeypatch):
    import coap_gateway.transport.coap as ct

    monkeypatch.setattr(ct, "MAX_REMOTES", 8)
    client, server, res, cl, sl = await pair(LinkProfile(rate_bps=100_000))
    mman = server.interface.mman
    for i in range(50):  # fifty plaintext peers come and go
        mman.tuning_for(server.remote(("127.0.0.%d" % (i + 2), 5683)))
    assert len(mman.timers) <= 8 and len(mman._tunings) <= 8
    await client.shutdown(), await server.shutdown()


def test_retransmissions_back_off_the_residual_only():
    b = LinkBudget(rate_bps=100, latency=2.0, max_response=50)
    t = RetransmissionTimer(b)
    wire = b.serialisation(30) + b.serialisation(50)
    assert t.residual() == pytest.approx(6.5)
    # residual 6.5 s > 3 s: × 1.5 per attempt (CoCoA); the 6.4 s of serialisation stays as it is
    assert t.retransmit_timeout(30, 0, None, 1) == pytest.approx(wire + 6.5 * 1.5)
    assert t.retransmit_timeout(30, 0, None, 3) == pytest.approx(wire + 6.5 * 1.5 ** 3)
    fast = RetransmissionTimer(LinkBudget(rate_bps=None, latency=0.1))
    assert fast.residual() == pytest.approx(1.0)  # the floor
    # below 3 s the residual doubles, as stock CoAP does: 1, 2, 4 (then × 1.5)
    assert [fast.retransmit_timeout(30, 0, None, k) for k in (1, 2, 3)] == pytest.approx([2.0, 4.0, 6.0])


def lose_the_next_frame(end) -> list[bytes]:
    """Make a link end lose the next frame it is handed; the list gets it."""
    dropped: list[bytes] = []
    real_send = end.send

    def send(peer, datagram):
        if not dropped:
            dropped.append(datagram)
            return
        real_send(peer, datagram)

    end.send = send
    return dropped


@pytest.mark.looptime
async def test_a_request_waits_for_the_answer_its_kind_gets_not_a_full_frame():
    """A lost answer at 100 bit/s, 2 s each way: the retransmission comes
    after the request, the answer this kind of request got before and the
    round trip — not after a 256-B answer's worth (24 s more)."""
    link = LinkProfile(rate_bps=100, delay=2.0, overhead=0)
    client, server, res, cl, sl = await pair(link)
    loop = asyncio.get_running_loop()
    assert (await post(client, b"warm")).payload == b"ok:warm"  # learns this kind's answer
    sent_at: list[float] = []
    cl.on_send.append(lambda d: sent_at.append(loop.time()))
    dropped = lose_the_next_frame(sl)
    assert (await post(client, b"next")).payload == b"ok:next" and res.executions[b"next"] == 1
    assert len(sent_at) == 2 and dropped  # the request, its retransmission
    timer = client.interface.mman.timer_for(client.remote("server"))
    size, answer = len(cl.sent[-1]), len(dropped[0])
    learned = timer.ack_timeout(size, 0, answer) * 1.5  # ACK_RANDOM_FACTOR
    assert sent_at[1] - sent_at[0] <= learned < timer.ack_timeout(size) - 10
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_a_lost_answer_does_not_hold_up_the_next_request():
    """NSTART > 1: at 100 bit/s, 2 s each way, request A's answer is lost;
    request B, sent just after, is answered long before A's retransmission
    (aiocoap's NSTART = 1 kept B in the backlog until A was answered)."""
    link = LinkProfile(rate_bps=100, delay=2.0, overhead=0)
    client, server, res, cl, sl = await pair(link)
    loop = asyncio.get_running_loop()
    assert (await post(client, b"warm")).payload == b"ok:warm"
    dropped = lose_the_next_frame(sl)
    t0 = loop.time()
    a = asyncio.create_task(post(client, b"a"))
    await asyncio.sleep(0)
    b_answer = await post(client, b"b")
    t_b = loop.time() - t0
    a_answer = await a
    t_a = loop.time() - t0
    assert b_answer.payload == b"ok:b" and a_answer.payload == b"ok:a" and dropped
    assert res.executions[b"a"] == res.executions[b"b"] == 1
    assert client.counters.retransmissions == 1  # A's; B went at once and was answered
    assert t_b < t_a / 2, (t_b, t_a)
    await client.shutdown(), await server.shutdown()


def test_the_timer_counts_our_own_frames_still_serialising():
    t = RetransmissionTimer(LinkBudget(rate_bps=100, latency=1.0))
    t.on_sent(10.0, 100)  # 8 s on the link
    assert t.queued_bytes(10.0) == 100 and t.queued_bytes(14.0) == 50 and t.queued_bytes(18.5) == 0
    t.on_sent(12.0, 50)  # queued behind the first: done at 22 s
    assert t.busy_until == pytest.approx(22.0) and t.queued_bytes(20.0) == 25


async def _chatter(client, every: float) -> None:
    """Quick exchanges with the same peer: frames from it keep arriving."""
    n = 0
    while True:
        msg = Message(code=Code.POST, uri_path=["quick"], payload=f"chat{n}".encode())
        msg.remote = client.remote("server")
        await client.context.request(msg).response
        n += 1
        await asyncio.sleep(every)


@pytest.mark.looptime
@pytest.mark.parametrize("answer_after, chatter, answered", [
    (100.0, True, True),  # a busy peer's late answer is waited for (was: given up at 30 s)
    (100.0, False, False),  # a silent peer: given up 30 s after the last frame from it (its empty ACK)
    (200.0, True, False),  # heard, but no answer within 4 × 30 s: given up all the same
])
async def test_a_request_waits_while_its_peer_is_heard(answer_after, chatter, answered):
    client_link, server_link = emulated_link_pair(LinkProfile(rate_bps=1000, delay=0.1, overhead=0), seed=1)
    site = resource.Site()
    site.add_resource(["slow"], Counting(delay=answer_after))
    site.add_resource(["quick"], Counting())
    server = await create_link_endpoint(server_link, site=site)
    client = await create_link_endpoint(client_link)
    loop = asyncio.get_running_loop()
    talk = asyncio.create_task(_chatter(client, 5.0)) if chatter else None
    msg = Message(code=Code.POST, uri_path=["slow"], payload=b"slow")
    t0 = loop.time()
    try:
        if answered:
            response = await client.request(msg, "server", timeout=30.0)
            assert response.payload == b"ok:slow"
            assert loop.time() - t0 >= answer_after
        else:
            with pytest.raises(LinkFailure):
                await client.request(msg, "server", timeout=30.0)
            waited = loop.time() - t0
            assert (30.0 <= waited < 35.0) if not chatter else (120.0 <= waited < 121.0), waited
    finally:
        if talk is not None:
            talk.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talk
        await client.shutdown(), await server.shutdown()


def lose_first_answers(link, count: int, *, requests_too: bool = False) -> list[int]:
    """Make ``link`` lose every transmission of the first ``count`` CON
    answers it sends (and, with ``requests_too``, of its own CON requests);
    the message IDs of the answers lost."""
    lost: list[int] = []
    real_send = link.send

    def send(peer, datagram):
        m = Message.decode(datagram)
        if requests_too and m.mtype == Type.CON and m.code.is_request():
            return
        if m.mtype == Type.CON and m.code.is_response():
            if len(lost) < count and m.mid not in lost:
                lost.append(m.mid)
            if m.mid in lost:
                return  # lost, and every retransmission of it
        real_send(peer, datagram)

    link.send = send
    return lost


async def ask_or_none(client, body: bytes) -> bytes | None:
    """A POST's answer, or None when the link failed it."""
    msg = Message(code=Code.POST, uri_path=["x"], payload=body)
    try:
        return (await client.request(msg, "server", timeout=60.0)).payload
    except LinkFailure:
        return None


@pytest.mark.looptime
async def test_answers_queued_behind_one_that_timed_out_still_go():
    """Six slow requests at once: the server answers each separately, four
    exchanges in flight (NSTART) and two queued.  The first four answers
    are lost, every transmission of them, until the server gives up on
    them; the two queued must go out then — aiocoap dropped the peer's
    whole backlog, and their requests, acknowledged long before, waited for
    ever."""
    client, server, res, cl, sl = await pair(LinkProfile(rate_bps=10_000, delay=0.1, overhead=0), max_retransmit=1,
                                             server_res=Counting(delay=5.0))
    first_four = lose_first_answers(sl, 4)
    bodies = [f"r{i}".encode() for i in range(6)]
    answers = await asyncio.gather(*(ask_or_none(client, b) for b in bodies))
    assert res.executions == {b: 1 for b in bodies} and len(first_four) == 4
    assert server.counters.timeouts == 4
    # the four lost answers: their requests give up (60 s without a word from
    # the server); the two queued behind them arrive
    answered = [a for a in answers if a is not None]
    assert len(answered) == 2 and all(a.startswith(b"ok:r") for a in answered), answers
    await client.shutdown(), await server.shutdown()


@pytest.mark.looptime
async def test_answers_queued_when_a_request_to_the_same_peer_times_out_still_go():
    """An endpoint that both asks and answers (a federation gateway): its
    own request to the peer runs out of retransmissions while answers to
    that peer wait in its queue.  aiocoap takes the peer for unreachable,
    fails the request and drops the queue; the queued answers must still go
    (their requests were acknowledged long before and wait for them)."""
    random.seed(3)  # the timers' jitter
    client, server, res, cl, sl = await pair(LinkProfile(rate_bps=10_000, delay=0.1, overhead=0), max_retransmit=1,
                                             server_res=Counting(delay=4.0))
    # the server's own request and the three answers in flight beside it: every transmission lost
    lost_answers = lose_first_answers(sl, 3, requests_too=True)
    # the server's request takes one of four slots (NSTART) from the start;
    # when the six answers are ready (4 s), three go and three wait in the
    # queue; the request runs out at about 6 s, the answers at about 7.5 s
    own = asyncio.create_task(server.request(Message(code=Code.GET, uri_path=["y"]), "client", timeout=60.0))
    await asyncio.sleep(0)
    bodies = [f"r{i}".encode() for i in range(6)]
    answers = await asyncio.gather(*(ask_or_none(client, b) for b in bodies))
    with pytest.raises(LinkFailure):
        await own
    assert res.executions == {b: 1 for b in bodies} and len(lost_answers) == 3
    assert server.counters.timeouts == 4  # the request, then the three answers in flight
    answered = [a for a in answers if a is not None]
    assert len(answered) == 3 and all(a.startswith(b"ok:r") for a in answered), answers
    await client.shutdown(), await server.shutdown()
