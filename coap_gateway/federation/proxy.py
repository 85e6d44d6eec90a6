"""Homeserver A's forward proxy (asyncio shell): CONNECT, TLS, HTTP/1.1 inside.

Synapse sends its outbound federation through ``https_proxy``: ``CONNECT
b.example:8448`` (and ``b.example:443`` for the well-known lookup), then TLS
to that name inside the tunnel.  ``FederationProxy`` accepts the CONNECT
only when ``policy.connect_decision`` says so (a peer's server name), ends
the TLS with a leaf certificate from ``ca.FederationCA``, and reads the
HTTP/1.1 requests inside; each one ``policy.request_decision`` lets through
is handed to ``forward`` (the link), the well-known lookup is answered here.

HTTP parsing is h11's (sans-I/O, kept, already a dependency through
aiohttp/httpcore): both the CONNECT request on the plain stream and the
requests in the tunnel, keep-alive included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

from ..codec import MAX_REQUEST_BODY, HttpResponse, matrix_error
from .ca import FederationCA
from .mapping import FederationRequest
from .peers import PeersTable
from .policy import ConnectDecision, connect_decision, request_decision, well_known_body

log = logging.getLogger(__name__)

Forward = Callable[[ConnectDecision, FederationRequest], Awaitable[HttpResponse]]

#: a tunnel idle this long is closed (Synapse keeps pooled connections 2 min)
IDLE_TIMEOUT = 300.0
#: bytes read at a time
CHUNK = 1 << 16


@dataclass
class ProxyCounters:
    connects: int = 0
    connects_refused: int = 0
    requests: int = 0
    requests_refused: int = 0
    well_known: int = 0
    tls_failures: int = 0
    #: requests whose homeserver closed the connection before their answer (its timeout)
    abandoned: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class FederationProxy:
    """The forward proxy homeserver A's ``https_proxy`` points at."""

    def __init__(self, table: PeersTable, ca: FederationCA, forward: Forward, *, own_key: bytes | None = None,
                 max_connections: int = 64, max_body: int = MAX_REQUEST_BODY):
        self.table = table
        self.own_key = own_key
        self.ca = ca
        self.forward = forward
        self.max_connections = max_connections
        self.max_body = max_body
        self.counters = ProxyCounters()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._connection, host, port)
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if len(self._tasks) > self.max_connections:
                await _respond(h11.Connection(h11.SERVER), writer, 503, b"", None, close=True)
                return
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, h11.ProtocolError, asyncio.IncompleteReadError) as exc:
            log.debug("federation proxy connection ended: %r", exc)
        except asyncio.CancelledError:
            pass  # close(): the connection ends with the proxy
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request = await _next_event(conn, reader, (h11.Request,))
        if request is None:
            return
        target = request.target.decode("ascii", "replace")
        if request.method != b"CONNECT":
            self.counters.connects_refused += 1
            await _respond(conn, writer, 405, b"only CONNECT to a peer homeserver\n", "text/plain", close=True)
            return
        decision = connect_decision(self.table, target, self.own_key)
        if not decision.allowed:
            self.counters.connects_refused += 1
            log.info("CONNECT %s refused: %s", target[:100], decision.reason)
            await _respond(conn, writer, decision.status, decision.reason.encode() + b"\n", "text/plain", close=True)
            return
        self.counters.connects += 1
        writer.write(conn.send(h11.Response(status_code=200, headers=[], reason=b"Connection established")))
        await writer.drain()
        if conn.trailing_data[0]:
            return  # the client must wait for the 200 before its TLS hello
        try:
            await writer.start_tls(self.ca.server_context(decision.host), ssl_handshake_timeout=30)
        except (OSError, TimeoutError) as exc:
            self.counters.tls_failures += 1
            log.info("TLS with homeserver for %s failed: %r", decision.host, exc)
            return
        await self._tunnel(decision, reader, writer)

    async def _tunnel(self, decision: ConnectDecision, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 << 10)
        while True:
            request = await _next_event(conn, reader, (h11.Request,))
            if request is None:
                return
            body = bytearray()
            while True:
                event = await _next_event(conn, reader, (h11.Data, h11.EndOfMessage))
                if event is None:
                    return
                if isinstance(event, h11.EndOfMessage):
                    break
                body += event.data
                if len(body) > self.max_body:
                    await _respond(conn, writer, 413, b"", None, close=True)
                    return
            response = await self._answer_unless_closed(self._handle(decision, request, bytes(body)), conn, reader)
            if response is None:
                self.counters.abandoned += 1
                return
            self.counters.by_status[response.status] = self.counters.by_status.get(response.status, 0) + 1
            await _respond(conn, writer, response.status, response.body, response.content_type,
                           head=request.method == b"HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    @staticmethod
    async def _answer_unless_closed(answer: Awaitable[HttpResponse], conn: h11.Connection,
                                    reader: asyncio.StreamReader) -> HttpResponse | None:
        """``answer``, or None if the homeserver closes the connection first.
        It does at its own timeout (``make_join`` 20 s, whatever the link):
        its wait must end then, so that the gateway knows nobody has the
        answer and keeps it for the homeserver's retry (``FederationGateway.forward``)."""
        task = asyncio.ensure_future(answer)
        watch = asyncio.ensure_future(reader.read(CHUNK))
        try:
            await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
            if not watch.done():
                watch.cancel()
                await asyncio.wait((watch,))  # its wait on the reader ends before the connection reads again
            data = None if watch.cancelled() else b"" if watch.exception() is not None else watch.result()
            if data == b"" and not task.done():  # end of stream (or reset): the homeserver gave up
                task.cancel()
                await asyncio.wait((task,))
                return None
            if data:
                conn.receive_data(data)  # a pipelined request: h11 holds it for the next cycle
            return await task
        except asyncio.CancelledError:
            task.cancel()
            watch.cancel()
            raise

    async def _handle(self, decision: ConnectDecision, request: h11.Request, body: bytes) -> HttpResponse:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        action = request_decision(decision, method, target)
        if action.action == "well-known":
            self.counters.well_known += 1
            return HttpResponse(200, well_known_body(decision), "application/json")
        if action.action == "refuse":
            self.counters.requests_refused += 1
            return matrix_error(action.status, "M_FORBIDDEN", action.reason)
        self.counters.requests += 1
        headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in request.headers]
        fed = FederationRequest(method, target, body, next((v for n, v in headers if n == "content-type"), None),
                                [v for n, v in headers if n == "authorization"])
        return await self.forward(decision, fed)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, wanted: tuple[type, ...]):
    """The next h11 event of a wanted kind; None when the peer closed."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            async with asyncio.timeout(IDLE_TIMEOUT):
                data = await reader.read(CHUNK)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        if isinstance(event, wanted):
            return event


async def _respond(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes,
                   content_type: str | None, *, close: bool = False, head: bool = False) -> None:
    headers = [("Content-Length", str(len(body)))]
    if content_type:
        headers.append(("Content-Type", content_type))
    if close:
        headers.append(("Connection", "close"))
    try:
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        if body and not head:
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
    except h11.LocalProtocolError:
        return
    await writer.drain()
