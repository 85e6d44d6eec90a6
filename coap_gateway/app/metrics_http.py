"""The metrics endpoint: GET /metrics, the thin aiohttp shell over ``metrics``.

Bound to 127.0.0.1 unless told otherwise: peer addresses and session ids are
for the operator, not for the link's other users.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from .metrics import CONTENT_TYPE, Collector, scrape

DEFAULT_HOST = "127.0.0.1"


async def serve_metrics(host: str = DEFAULT_HOST, port: int = 0,
                        collectors: Sequence[Collector] = ()) -> web.AppRunner:
    """Serve ``collectors`` at ``http://host:port/metrics`` (port 0: a free one,
    read back from ``bound_port(runner)``); ``await runner.cleanup()`` stops it."""
    collectors = list(collectors)

    async def metrics(_request: web.Request) -> web.Response:
        # read the live counters now: a scrape sees them as they are
        return web.Response(body=scrape(collectors).encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]


def metrics_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
