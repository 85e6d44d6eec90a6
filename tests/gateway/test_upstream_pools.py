"""``Upstream``'s connection pools: long-polls never take a connection an
ordinary request needs (against a scripted homeserver that holds requests)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

from coap_gateway.gateway.upstream import LONG_POLL, ORDINARY, PLAIN_LONG_POLL, PoolShares, Upstream, may_be_held
from tests.helpers.scripted import ScriptedServer


def test_which_requests_may_be_held():
    assert may_be_held("GET", "/_matrix/client/v3/sync?since=s1&timeout=30000")
    assert may_be_held("GET", "/_matrix/client/v3/events?from=s1&timeout=1")
    assert may_be_held("GET", "/_matrix/client/v1/media/download/hs/abc?timeout_ms=20000")
    for target in ("/_matrix/client/v3/sync?since=s1&timeout=0", "/_matrix/client/v3/sync?timeout=000",
                   "/_matrix/client/v3/sync", "/_matrix/client/versions", "/_matrix/client/v3/sync?timeout=",
                   "/_matrix/client/v3/sync?timeout=-5", "/_matrix/client/v3/sync?timeout=1e3",
                   "/_matrix/client/v3/sync?timeout=\u0663", "/_matrix/client/v3/sync?xtimeout=5"):
        assert not may_be_held("GET", target), target
    assert not may_be_held("POST", "/_matrix/client/v3/keys/query?timeout=10000")
    # sliding sync (Element X's sync) long-polls with a POST
    for prefix in ("org.matrix.simplified_msc3575", "org.matrix.msc3575"):
        path = f"/_matrix/client/unstable/{prefix}/sync"
        assert may_be_held("POST", path + "?pos=5&timeout=30000")
        assert not may_be_held("POST", path + "?pos=5&timeout=0") and not may_be_held("POST", path)
    assert not may_be_held("POST", "/_matrix/federation/v1/sync?timeout=5")
    assert not may_be_held("PUT", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=5")
    assert may_be_held("GET", "/_matrix/client/v3/sync?timeout=" + "9" * 5000)  # no int() of it


def test_pools_by_request():
    upstream = Upstream("http://hs")
    assert upstream.pool("GET", "/_matrix/client/v3/sync?since=s&timeout=0", long_poll=True) == LONG_POLL
    assert upstream.pool("GET", "/_matrix/client/v3/sync?since=s&timeout=30000") == PLAIN_LONG_POLL
    assert upstream.pool("PUT", "/_matrix/client/v3/rooms/!r:hs/send/m.room.message/t") == ORDINARY
    with pytest.raises(ValueError):
        Upstream("http://hs", max_connections=0)


class Holding(ScriptedServer):
    """Answers /versions at once; holds GET /hold until released."""

    def __init__(self) -> None:
        self.held = 0
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/_matrix/client/versions", self.versions)
        self.app.router.add_get("/hold", self.hold)

    async def versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": []})

    async def hold(self, request: web.Request) -> web.Response:
        self.held += 1
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        return web.json_response({})

    def on_stop(self) -> None:
        self.release.set()


async def _until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_held_requests_never_take_an_ordinary_connection():
    async with Holding() as hs:
        upstream = Upstream(hs.url, max_connections=2, max_plain_long_polls=3)
        upstream.reserve_long_polls(5)
        held: list[asyncio.Task] = []
        try:
            # every long-poll the caller reserved for is held at once: none waits
            held += [asyncio.create_task(upstream.fetch("GET", "/hold?timeout=30000", long_poll=True))
                     for _ in range(5)]
            await _until(lambda: hs.held == 5)
            # plain long-polls: their own bounded pool; the fourth waits for a connection
            held += [asyncio.create_task(upstream.fetch("GET", "/hold?timeout=30000")) for _ in range(4)]
            await _until(lambda: hs.held == 8)
            await asyncio.sleep(0.2)
            assert hs.held == 8
            # ordinary requests still have both their connections, several times over
            for _ in range(4):
                answer = await asyncio.wait_for(upstream.fetch("GET", "/_matrix/client/versions"), 5)
                assert answer.status == 200
            with pytest.raises(RuntimeError):
                upstream.reserve_long_polls(6)  # the pool is in use: too late to resize it
            hs.release.set()
            assert all(r.status == 200 for r in await asyncio.gather(*held))
        finally:
            for task in held:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*held, return_exceptions=True)
            await upstream.close()


def test_each_device_has_a_share_of_a_pool_and_the_pool_a_waiting_room():
    shares = PoolShares(per_device=2, waiting=1, connections={ORDINARY: 2})
    assert shares.take(ORDINARY, "a") is None and shares.take(ORDINARY, "a") is None
    assert shares.take(ORDINARY, "a") == PoolShares.DEVICE  # its share is full
    assert shares.take(PLAIN_LONG_POLL, "a") is None  # another pool: another share (no connections: 1 may wait)
    assert shares.take(ORDINARY, "b") is None  # two connections and one waiting
    assert shares.take(ORDINARY, "c") == PoolShares.POOL
    shares.give_back(ORDINARY, "a")
    assert shares.take(ORDINARY, "c") is None and shares.held(ORDINARY) == 3 and shares.held(ORDINARY, "a") == 1
    for pool, device in ((ORDINARY, "a"), (ORDINARY, "b"), (ORDINARY, "c"), (PLAIN_LONG_POLL, "a")):
        shares.give_back(pool, device)
    assert shares.held(ORDINARY) == 0 and not shares._by_device and not shares._in_pool  # nothing left behind
    with pytest.raises(ValueError):
        PoolShares(per_device=0, waiting=1)


async def test_one_device_cannot_take_every_connection():
    """One device's requests that the homeserver holds (a publicRooms waiting
    on federation) took every ordinary connection, and another device's
    /versions waited behind them.  A device has a share of each pool (beyond
    it: 503, Retry-After → 5.03 with Max-Age on the link), and the requests
    waiting for a connection are bounded in all."""
    from coap_gateway.codec import HttpRequest, response_to_coap
    from coap_gateway.gateway.server import ServerGateway, ServerGatewayConfig
    from tests.helpers.devices import PROFILE

    async with Holding() as hs:
        upstream = Upstream(hs.url, max_connections=4)
        gateway = ServerGateway(ServerGatewayConfig(hs.url, PROFILE, max_forwarded_per_device=2,
                                                    max_forwarded_waiting=1), sync_push=None, upstream=upstream)
        held: list[asyncio.Task] = []
        try:
            held += [asyncio.create_task(gateway.forward(HttpRequest("GET", "/hold"), "tok", "greedy"))
                     for _ in range(6)]
            await _until(lambda: hs.held == 2 and sum(t.done() for t in held) == 4)
            busy = [t.result() for t in held if t.done()]
            assert all(r.status == 503 and ("Retry-After", "5") in r.headers for r in busy)
            message = response_to_coap(busy[0], PROFILE)
            assert str(message.code) == "5.03 Service Unavailable" and message.opt.max_age == 5
            # another device is answered at once
            async with asyncio.timeout(5):
                answer = await gateway.forward(HttpRequest("GET", "/_matrix/client/versions"), "tok", "honest")
            assert answer.status == 200
            # the pool's waiting room: 4 connections and 1 waiting, all devices together
            held += [asyncio.create_task(gateway.forward(HttpRequest("GET", "/hold"), "tok", device))
                     for device in ("c", "d", "e")]
            await _until(lambda: hs.held == 4 and gateway.shares.held(ORDINARY) == 5)
            full = await gateway.forward(HttpRequest("GET", "/hold"), "tok", "f")
            assert full.status == 503 and ("Retry-After", "30") in full.headers
            assert gateway.counters.refused_busy == 5
            hs.release.set()
            assert [r.status for r in await asyncio.gather(*held)].count(200) == 5
            assert gateway.shares.held(ORDINARY) == 0
        finally:
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            await upstream.close()
