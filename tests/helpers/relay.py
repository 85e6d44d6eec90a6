"""A TCP relay that counts the plain HTTP bytes a client exchanges with
Synapse: the baseline the client tests compare the gateways with."""

from __future__ import annotations

import asyncio


class CountingRelay:
    """A TCP relay in front of Synapse that counts what crosses it both ways:
    the HTTP bytes (requests, headers, JSON bodies) a client's connection
    carries — the least HTTPS+JSON puts on a link (TLS records, TCP and IP
    headers come on top)."""

    def __init__(self, upstream: str) -> None:
        self.host, self.port = upstream.split("//", 1)[1].rstrip("/").split(":")
        self.bytes = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> CountingRelay:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, int(self.port))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    self.bytes += len(data)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
