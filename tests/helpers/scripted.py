"""A scripted HTTP server for tests of one layer (a homeserver stand-in):
an aiohttp application served on 127.0.0.1, at a free port, for the length
of an ``async with``."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web

S = TypeVar("S", bound="ScriptedServer")


class ScriptedServer:
    """Subclasses build ``self.app``; ``url`` is set once it listens.
    ``on_stop`` runs before the server stops (release what requests wait for)."""

    app: web.Application
    url: str

    async def __aenter__(self: S) -> S:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    def on_stop(self) -> None:
        pass

    async def __aexit__(self, *exc: Any) -> None:
        self.on_stop()
        await self.runner.cleanup()
