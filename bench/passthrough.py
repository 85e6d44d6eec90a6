"""A plain aiohttp reverse proxy: the yardstick for the server gateway's CPU cost.

``python -m bench.passthrough --upstream http://127.0.0.1:8008 --listen 127.0.0.4:0``
forwards every request as it is (method, path and query, headers, body) over
one keep-alive client session and returns the answer as it is: the least a
Python HTTP front end can do, on the same event loop (uvloop) and the same
aiohttp as the gateway.  Prints ``ready http://HOST:PORT`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
from aiohttp import web
from yarl import URL

#: headers that belong to one connection, not to the message (RFC 9110 §7.6.1)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "host", "content-length"})


def make_app(upstream: str) -> web.Application:
    base = upstream.rstrip("/")
    state: dict[str, aiohttp.ClientSession] = {}

    async def on_startup(app: web.Application) -> None:
        state["http"] = aiohttp.ClientSession(auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=300),
                                              connector=aiohttp.TCPConnector(limit=256))

    async def on_cleanup(app: web.Application) -> None:
        await state["http"].close()

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with state["http"].request(request.method, URL(base + request.raw_path, encoded=True),
                                         headers=headers, data=body or None, allow_redirects=False) as upstream_resp:
            data = await upstream_resp.read()
            out = {k: v for k, v in upstream_resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream_resp.status, body=data, headers=out)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve(upstream: str, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(upstream), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    print(f"ready http://{bound[0]}:{bound[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        runner(serve(args.upstream, host, int(port)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
