"""The gateways' lifetimes under attack and at the edges: half-open HTTP
connections.  Real sockets and real processes."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from coap_gateway.app.runner import start_client, start_server
from coap_gateway.codec import load_profile
from coap_gateway.transport import UdpLink

PROFILE = load_profile("lb3")


class StubHomeserver:
    """Answers /versions: enough for an honest request to cross both gateways."""

    async def __aenter__(self):
        app = web.Application()
        app.router.add_get("/_matrix/client/versions", self.versions)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def versions(self, request):
        return web.json_response({"versions": ["v1.11"]})

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


# ---------------------------------------------------------------- half-open

HALF_OPEN = 1200
#: what each kind of half-open connection sends, and how soon the gateway must close it
KINDS = {
    "nothing": (b"", 10 + 3),
    "half a header": (b"GET /_matrix/client/versions HTTP/1.1\r\nHost: gw\r\nUser-Agent: x", 10 + 3),
    "half a body": ((b"PUT /_matrix/client/v3/profile/@a:hs/displayname HTTP/1.1\r\nHost: gw\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"displayname\""), 30 + 3),
    "idle after an answer": (b"GET /_matrix/client/versions HTTP/1.1\r\nHost: gw\r\n\r\n", 30 + 3),
}
IDLE = "idle after an answer"


async def _half_open(port: int, data: bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
    return reader, writer, time.monotonic()


async def _open_for(reader: asyncio.StreamReader, opened: float, limit: float) -> float | None:
    """Seconds until the gateway closed the connection (None: still open after ``limit``)."""
    try:
        async with asyncio.timeout(max(0.0, opened + limit - time.monotonic())):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - opened


async def test_half_open_http_connections_are_closed_and_an_honest_request_still_succeeds():
    async with StubHomeserver() as hs:
        server_link = await UdpLink.open("127.0.0.1", 0)
        server = await start_server(server_link, homeserver=hs.url, profile=PROFILE, static_private=None)
        client = await start_client(await UdpLink.open("127.0.0.1", 0), server_link.local_address, profile=PROFILE)
        port = client.gateway.port
        conns: list[tuple[str, tuple]] = []
        try:
            names = [kind for kind in KINDS if kind != IDLE]
            for i in range(HALF_OPEN):
                kind = names[i % len(names)]
                conns.append((kind, await _half_open(port, KINDS[kind][0])))
            await asyncio.sleep(1)
            held = [c for _, c in conns if not c[0].at_eof()]
            # the attack holds at most the cap; the rest were closed at once
            assert len(held) <= 256, len(held)

            # an honest client, in the middle of it, is served
            started = time.monotonic()
            async with aiohttp.ClientSession() as http, http.get(client.base_url + "/_matrix/client/versions") as r:
                assert r.status == 200 and (await r.json())["versions"] == ["v1.11"]
            honest = time.monotonic() - started
            # a keep-alive connection that got its answer and then says nothing more
            conns.append((IDLE, await _half_open(port, KINDS[IDLE][0])))

            times = await asyncio.gather(*(_open_for(c[0], c[2], KINDS[kind][1]) for kind, c in conns))
            by_kind: dict[str, list[float | None]] = {}
            for (kind, _), t in zip(conns, times):
                by_kind.setdefault(kind, []).append(t)
            still_open = {kind: sum(t is None for t in ts) for kind, ts in by_kind.items()}
            assert still_open == {kind: 0 for kind in KINDS}, still_open
            slowest = {kind: round(max(ts), 1) for kind, ts in by_kind.items()}
            print(f"held after 1 s: {len(held)} of {HALF_OPEN}; honest request {honest * 1000:.0f} ms; "
                  f"closed within {slowest} s; counters {client.counters()}")
            assert honest < 2
        finally:
            for _, (_, writer, _) in conns:
                writer.close()
            await client.stop()
            await server.stop()

