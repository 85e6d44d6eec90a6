"""``Upstream``'s connection pools: long-polls never take a connection an
ordinary request needs (against a scripted homeserver that holds requests)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

from coap_gateway.gateway.upstream import LONG_POLL, ORDINARY, PLAIN_LONG_POLL, Upstream, may_be_held
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
