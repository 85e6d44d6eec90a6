"""Block-wise requests over a lossy slow link: a block lost several times
still finds its assembly, and an assembly the server lost is started over
(in virtual time)."""

from __future__ import annotations

import asyncio
import hashlib

import aiocoap.resource as resource
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from coap_gateway.transport.coap import _assemblies, create_link_endpoint
from meshsim import LinkProfile, emulated_link_pair
from tests.helpers.secure import site_with

SLOW = LinkProfile(rate_bps=2400, delay=0.1, overhead=0)
BODY = bytes(range(256)) * 12  # 3 blocks of 1024 B on 1152-B frames


class Bodies(resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    async def render_post(self, request):
        self.bodies.append(request.payload)
        return Message(code=Code.CHANGED, payload=hashlib.sha256(request.payload).digest()[:8])


def drop_block(end, number: int, times: int) -> list[int]:
    """Lose the first ``times`` copies of block ``number`` that ``end`` receives."""
    lost = [0]
    deliver = end._deliver

    def lossy(peer, datagram):
        if datagram is not None and lost[0] < times:
            message = Message.decode(datagram)
            if message.opt.block1 is not None and message.opt.block1.block_number == number:
                lost[0] += 1
                return None
        return deliver(peer, datagram)
    end._deliver = lossy
    return lost


@pytest.mark.looptime
async def test_a_block_lost_four_times_still_finds_its_assembly():
    # 2400 bit/s: a full frame's first timeout is ~5.7 s; four losses in a
    # row put 85-128 s between block 0 and block 1 — longer than aiocoap's
    # fixed 93 s assembly lifetime (which answered 4.08 here before)
    client_link, server_link = emulated_link_pair(SLOW, max_retransmit=8)
    app = Bodies()
    server = await create_link_endpoint(server_link, site=site_with(app))
    client = await create_link_endpoint(client_link)
    lost = drop_block(server_link, 1, 4)
    try:
        answer = await client.request(Message(code=Code.POST, uri_path=["x"], payload=BODY), "server")
        assert lost == [4]
        assert answer.code == Code.CHANGED and app.bodies == [BODY]
        assert client.counters.blockwise_restarts == 0  # the assembly was still there
    finally:
        await client.shutdown()
        await server.shutdown()


class Forgetful(Bodies):
    """Loses its assemblies once, after the first block (as an expiry or a
    server restart would)."""

    def __init__(self) -> None:
        super().__init__()
        self.forgot = 0

    async def render_to_pipe(self, pipe):
        block1 = pipe.request.opt.block1
        if block1 is not None and block1.block_number == 1 and not self.forgot:
            self.forgot += 1
            _assemblies(self).clear()
        return await super().render_to_pipe(pipe)


@pytest.mark.looptime
async def test_a_lost_assembly_is_started_over_and_runs_once():
    client_link, server_link = emulated_link_pair(SLOW)
    app = Forgetful()
    server = await create_link_endpoint(server_link, site=site_with(app))
    client = await create_link_endpoint(client_link)
    try:
        answer = await client.request(Message(code=Code.POST, uri_path=["x"], payload=BODY), "server")
        assert app.forgot == 1
        assert answer.code == Code.CHANGED and answer.payload == hashlib.sha256(BODY).digest()[:8]
        assert app.bodies == [BODY]  # whole, once
        assert client.counters.blockwise_restarts == 1
        tags = {Message.decode(d).opt.request_tag for d in client_link.sent
                if Message.decode(d).opt.block1 is not None}
        assert len(tags) == 2  # the restart went under a new Request-Tag
    finally:
        await client.shutdown()
        await server.shutdown()


@pytest.mark.looptime
async def test_deduplication_state_per_peer_is_bounded_and_still_deduplicates():
    # each received CON keeps its key and answer for EXCHANGE_LIFETIME: a peer
    # sending fast could make that any size, and the stored answer used to
    # hold its request (a whole block's payload for an upload)
    from coap_gateway.transport.coap import MAX_DEDUP_PER_REMOTE

    client_link, server_link = emulated_link_pair(LinkProfile(rate_bps=1e6, delay=0.001))
    app = Bodies()
    server = await create_link_endpoint(server_link, site=site_with(app))
    client = await create_link_endpoint(client_link)
    try:
        for n in range(3 * MAX_DEDUP_PER_REMOTE):
            answer = await client.request(Message(code=Code.POST, uri_path=["x"], payload=b"%d" % n), "server")
            assert answer.code == Code.CHANGED
        mman = server.interface.mman
        assert len(mman._recent_messages) == MAX_DEDUP_PER_REMOTE
        stored = [m for m in mman._recent_messages.values() if m is not None]
        assert len(stored) == MAX_DEDUP_PER_REMOTE
        assert all(getattr(m, "request", None) is None for m in stored)  # no request (payload) kept alive
        # a repeat of the newest request is answered from the cache, not run again
        last = client_link.sent[-1]
        before = len(server_link.sent)
        client_link.send("server", last)
        await asyncio.sleep(0.1)
        assert len(app.bodies) == 3 * MAX_DEDUP_PER_REMOTE
        assert len(server_link.sent) == before + 1  # the stored answer, again
        # no timer per message: one sweep forgets everything after the exchange lifetime
        timers = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
        assert len(timers) < MAX_DEDUP_PER_REMOTE
        await asyncio.sleep(400)  # (virtual) past EXCHANGE_LIFETIME and a sweep
        assert not mman._recent_messages and not mman._dedup_keys
    finally:
        await client.shutdown()
        await server.shutdown()
