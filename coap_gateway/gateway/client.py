"""The client gateway: an unchanged Matrix client talks HTTP to it locally.

Every HTTP request becomes one CoAP request to the server gateway; the
response comes back as the homeserver sent it (status, Matrix error body,
Retry-After, content type).  What crosses the link, and what the server is
believed to hold for this device (the bound token, the compact form's
handles), is decided by ``codec.binding.ClientBinding``; this shell serves
HTTP, carries its requests over the ``LinkEndpoint`` and runs the one resend
loop.  Sync long-polls go to sync push first (``push_client``).

The HTTP side serves a few Matrix clients on this machine or its LAN; each
holds a handful of connections (a /sync long-poll, sends, media) and sends a
request in milliseconds.  It is bounded accordingly (``HttpConnections``):

* ``HEADER_TIMEOUT`` (10 s): a new connection must have sent a whole
  request header by then;
* ``BODY_TIMEOUT`` (30 s): a request body must have arrived whole by then
  (50 MiB at 1.7 MB/s);
* ``IDLE_TIMEOUT`` (30 s): a keep-alive connection without a request is
  closed (clients built on aiohttp, such as matrix-nio, drop theirs after
  15 s, so the client usually closes first);
* ``MAX_CONNECTIONS`` (256) at once, far below the usual 1024 open files:
  one more closes the oldest connection that is not being served (idle, or
  still sending its request), as nginx drains idle keep-alive connections
  when it runs out; a request being served is never cut.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiohttp import web

from ..codec import (
    MAX_MEDIA_BODY,
    METHODS,
    Attempt,
    ClientBinding,
    HttpRequest,
    HttpResponse,
    Profile,
    bearer_token,
    compact_route_name,
    echo_fold,
    json_cbor,
    link_failure,
    matrix_error,
    payload,
)
from ..codec.revalidation import AnswerStore
from ..errors import CodecError, GatewayError
from ..push import Sent, SyncPushClientConfig, parse_send, sent_of
from ..secure import keys
from ..transport import LinkEndpoint, LinkFailure
from .push_client import SyncPushClient
from .stats import Histogram, timed

log = logging.getLogger(__name__)

#: what browsers need to call a homeserver (Matrix spec: CORS on every endpoint)
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}


#: low-bandwidth mode: ephemeral signals the client gateway answers itself
#: (200 {}) instead of spending the link on them — typing notifications,
#: read receipts and presence updates.  Reads (GET presence) still cross.
LOCAL_IN_LOW_BANDWIDTH = frozenset({
    ("PUT", "client.typing"), ("PUT", "client.r0.typing"),
    ("POST", "client.receipt"), ("POST", "client.r0.receipt"),
    ("PUT", "client.presence"), ("PUT", "client.r0.presence"),
})

#: sends one CoAP request: its final reply, or LinkFailure
Send = Callable[[Message], Awaitable[Message]]

#: HTTP side bounds (see the module docstring)
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
IDLE_TIMEOUT = 30.0
MAX_CONNECTIONS = 256
#: at stop, what answers still being written may take (every pending request
#: is answered 503 first; aiohttp's default waits 60 s for handlers)
STOP_GRACE = 1.0
#: a request over the link fails after this long without a frame from the
#: server gateway (at most four times this in all; LinkEndpoint.request): an
#: answer acknowledged but never sent (the server gateway restarted) no longer
#: holds the device's HTTP request until its own timeout.  Longer than the
#: server gateway's homeserver timeout (300 s) and its answer's retransmissions.
REQUEST_SILENCE = 900.0


@dataclass
class ClientGatewayCounters:
    requests: int = 0
    link_failures: int = 0
    answered_locally: int = 0
    #: requests the server answered 2.03 Valid: given from the answers held (codec.revalidation)
    revalidated: int = 0
    #: HTTP connections closed at a deadline (header, body, idle)
    connections_timed_out: int = 0
    #: HTTP connections closed because MAX_CONNECTIONS were open
    connections_shed: int = 0
    #: the wire state came back from the state directory at start
    state_restored: bool = False
    latency: Histogram = field(default_factory=Histogram)


class HttpConnections:
    """The deadline of every open HTTP connection, oldest connection first.

    aiohttp has ``keepalive_timeout``, but no header-read or body timeout
    and no connection cap (recent versions start the keep-alive timer when
    a connection opens, older ones only after a first answer): a connection
    that sends nothing, half a header or half a body stays open.  One timer
    per connection that is not being served closes it.
    """

    def __init__(self, counters: ClientGatewayCounters) -> None:
        self.counters = counters
        #: connection -> its deadline; None while a request is being served
        self._timers: dict[Any, asyncio.TimerHandle | None] = {}

    def __len__(self) -> int:
        return len(self._timers)

    def opened(self, conn: Any) -> None:
        self._timers[conn] = None
        self._wait(conn, HEADER_TIMEOUT)
        if len(self._timers) > MAX_CONNECTIONS:
            # the oldest not being served: the new one at least
            oldest = next(c for c, timer in self._timers.items() if timer is not None)
            self.counters.connections_shed += 1
            self._close(oldest)

    def closed(self, conn: Any) -> None:
        timer = self._timers.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def reading(self, conn: Any) -> None:
        """A request's header arrived: its body must follow."""
        self._wait(conn, BODY_TIMEOUT)

    def serving(self, conn: Any) -> None:
        """The request is whole: no deadline until it is answered."""
        if conn in self._timers:
            self._cancel(conn)
            self._timers[conn] = None

    def answered(self, conn: Any) -> None:
        self._wait(conn, IDLE_TIMEOUT)

    def _wait(self, conn: Any, timeout: float) -> None:
        if conn in self._timers:
            self._cancel(conn)
            self._timers[conn] = asyncio.get_running_loop().call_later(timeout, self._expired, conn)

    def _cancel(self, conn: Any) -> None:
        timer = self._timers.get(conn)
        if timer is not None:
            timer.cancel()

    def _expired(self, conn: Any) -> None:
        self.counters.connections_timed_out += 1
        self._close(conn)

    def _close(self, conn: Any) -> None:
        self.closed(conn)
        conn.force_close()  # a request it was sending fails in read(): see ClientGateway.handle


class _HttpServer(web.Server):
    """aiohttp's low-level server, telling ``HttpConnections`` when a
    connection opens and closes (the one hook aiohttp has for it)."""

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                 connections: HttpConnections, **kwargs: Any) -> None:
        super().__init__(handler, request_factory=self._request, **kwargs)
        self.tracked = connections

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.tracked.opened(handler)

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.tracked.closed(handler)

    @staticmethod
    def _request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=MAX_MEDIA_BODY)


#: the client gateway's wire state across restarts, in its state directory (beside the key)
CLIENT_STATE = "client-state.json"
#: the tagged answers it holds (codec.revalidation), beside the wire state
CLIENT_ANSWERS = "client-answers.cbor"


def write_private(path: Path, data: bytes) -> bool:
    """Replace ``path`` with ``data`` atomically, mode 0600 (it holds tokens);
    False, with a warning, when the file system refuses."""
    try:
        keys.replace_private_file(path, data)
    except OSError as exc:
        log.warning("cannot keep %s: %s", path, exc)
        return False
    return True


class ClientGateway:
    def __init__(self, endpoint: LinkEndpoint, server_key: Hashable, profile: Profile, *,
                 host: str = "127.0.0.1", port: int = 0, request_timeout: float | None = REQUEST_SILENCE,
                 low_bandwidth: bool = False, sync_push: SyncPushClientConfig | None = None,
                 state_path: Path | None = None, revalidate: bool = True,
                 device_key: bytes | None = None, fresh_key: bool = False):
        """``device_key``: the device's static public key (secure mode);
        ``fresh_key``: it was made for this gateway's state (codec.binding)."""
        self.endpoint = endpoint
        self.server_key = server_key
        self.profile = profile
        self.host, self.port = host, port
        self.request_timeout = request_timeout
        self.low_bandwidth = low_bandwidth
        self.binding = ClientBinding(profile, device_key, fresh_key)
        self.counters = ClientGatewayCounters()
        #: where the binding's state is kept across restarts (None: not kept)
        self.state_path = state_path
        self._saved: str | None = None
        if state_path is not None and state_path.exists():
            self._restore(state_path)
        #: answers /sync long-polls from pushes (None: every poll crosses the link)
        self.sync_push = (SyncPushClient(self, sync_push)
                          if sync_push is not None and (sync_push.enabled or sync_push.keepalive) else None)
        self.connections = HttpConnections(self.counters)
        #: tagged answers to GETs (and POSTs that only read), sent again as 2.03 Valid when unchanged (None: not kept);
        #: kept beside the wire state, so a device that restarts asks its start-up requests with their ETags
        self.answers = AnswerStore() if revalidate else None
        self.answers_path = state_path.with_name(CLIENT_ANSWERS) if state_path is not None and revalidate else None
        if self.answers_path is not None and self.answers_path.exists():
            try:
                self.answers = AnswerStore.from_cbor(self.answers_path.read_bytes())
            except (OSError, CodecError) as exc:
                log.warning("%s is unreadable (%s): holding no answers", self.answers_path, exc)
        self._runner: web.ServerRunner | None = None
        #: handler tasks of the requests being served (stop() answers them)
        self._serving: set[asyncio.Task] = set()
        self._stopping = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self.sync_push is not None:
            await self.sync_push.start()
        # every path goes to handle(): aiohttp's low-level server, no router
        # a client that closes its connection gave the request up: its handler
        # is cancelled (an aborted long-poll must not keep acting for it)
        server = _HttpServer(self._serve, self.connections, access_log=None,  # never log tokens or bodies
                             keepalive_timeout=IDLE_TIMEOUT, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=STOP_GRACE)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Answer every pending request 503 now (not when the link gives up on
        it: minutes on a slow link, or never with the server gone), then close."""
        self._stopping = True
        for task in list(self._serving):
            task.cancel()  # see _serve
        if self.sync_push is not None:
            await self.sync_push.close()  # waiting long-polls end now, not at their timeout
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def session_changed(self, session_id: bytes) -> None:
        """A secure session was established (the first, or after a server restart)."""
        if self.sync_push is not None:
            self.sync_push.on_session(session_id)

    # -- HTTP side

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        self.connections.reading(request.protocol)
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            if not self._stopping:
                return await self.handle(request)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task.uncancel()  # stop() cancelled the request's work, not its answer
        finally:
            self._serving.discard(task)
            self.connections.answered(request.protocol)
        return self._http(matrix_error(503, "M_UNKNOWN", "the client gateway is shutting down"))

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=CORS_HEADERS)
        if request.method not in METHODS:
            return self._http(matrix_error(405, "M_UNRECOGNIZED", f"method {request.method} is not supported"))
        try:
            body = await request.read()
        except ConnectionError:  # closed while it sent the body (BODY_TIMEOUT, or shed): nobody to answer
            return web.Response(status=408)
        self.connections.serving(request.protocol)
        self.counters.requests += 1
        if self.low_bandwidth and self._answered_locally(request.method, request.raw_path):
            self.counters.answered_locally += 1
            return self._http(HttpResponse(200, b"{}", "application/json"))
        http_request = HttpRequest(
            method=request.method,
            target=request.raw_path,
            body=body,
            content_type=request.headers.get("Content-Type"),
            access_token=bearer_token(request.headers.get("Authorization")),
        )
        return self._http(await self.serve(http_request))

    async def serve(self, http_request: HttpRequest) -> HttpResponse:
        """The answer to one client request, as the HTTP side gives it (also
        the entry of in-process callers: simulations in virtual time)."""
        refusal = _not_matrix_json(http_request)
        if refusal is not None:
            return refusal
        try:
            # a /sync long-poll may be answered from what the server pushed
            pushed = await self.sync_push.handle(http_request) if self.sync_push is not None else None
            return pushed if pushed is not None else await self.exchange(http_request)
        except GatewayError as exc:
            return matrix_error(400, "M_UNRECOGNIZED", f"the gateway cannot carry this request: {exc}")

    def _answered_locally(self, method: str, target: str) -> bool:
        found = self.profile.routes.match_target(target)
        return found is not None and (method, found[0].name) in LOCAL_IN_LOW_BANDWIDTH

    @staticmethod
    def _http(response: HttpResponse) -> web.Response:
        headers = dict(CORS_HEADERS)
        for name, value in response.headers:
            headers[name] = value
        if response.content_type is not None:
            headers["Content-Type"] = response.content_type
        return web.Response(status=response.status, body=response.body, headers=headers)

    # -- CoAP side

    @timed(lambda self: self.counters.latency)
    async def exchange(self, http_request: HttpRequest) -> HttpResponse:
        """Carry one HTTP request over the link; the client's answer."""
        echo_target = self.sync_push.echo_target(http_request) if self.sync_push is not None else None
        held = self.answers.get(http_request) if self.answers is not None else None
        send = self._send if held is None else functools.partial(self._send_tagged, held[0])
        try:
            message, reply = await self.round_trip(http_request, send)
        except LinkFailure as exc:
            return link_failure(exc)
        if reply.code == Code.VALID:
            if held is not None and reply.opt.etag == held[0]:
                self.counters.revalidated += 1
                return held[1]
            log.warning("the server answered 2.03 Valid to a request without that ETag")
            return matrix_error(502, "M_UNKNOWN", "the server gateway answered with an unknown ETag")
        response = self.binding.response(http_request, message, reply)
        if self.answers is not None:
            changed = self.answers.put(http_request, reply.opt.etag if reply.code == Code.CONTENT else None, response)
            if changed and self.answers_path is not None:
                write_private(self.answers_path, self.answers.to_cbor())
        fold = echo_fold(reply, self.profile, compact_route_name(message, self.profile))
        if fold is not None and self.sync_push is not None:
            # the answer carries the send's echo (push.echo); a fold we did not
            # expect still moved the server's chain: the push client sorts it out
            target = echo_target or self.sync_push.state.echo_target(http_request.access_token or "")
            if target is not None:
                self.sync_push.on_echo(target, self._sent(http_request, response), fold)
        return response

    def _sent(self, http_request: HttpRequest, response: HttpResponse) -> Sent | None:
        """What the server saw of a send we carried (its transaction ID as the homeserver's)."""
        wire, schemas = self.binding.wire, self.profile.schemas
        send = (parse_send(http_request.target, self.profile.routes, schemas.message_routes)
                if wire is not None and schemas is not None else None)
        k = wire.txns.get(send[2]) if send is not None and wire is not None else None
        if send is None or k is None or wire is None:
            return None
        return sent_of(send[0], send[1], f"{wire.scope}.{k}", http_request.body, response.body)

    async def round_trip(self, http_request: HttpRequest, send: Send) -> tuple[Message, Message]:
        """The one resend loop: send the request as the binding builds it
        until a reply is the answer (not "send it again with the token / the
        definitions"); the last request sent and its reply.  ``send``
        carries one request (a plain exchange, or an observation's
        registration); LinkFailure when the link did not deliver."""
        attempt = Attempt()
        while True:
            message = self.binding.request(http_request, attempt)
            self._persist()
            try:
                reply = await send(message)
            except LinkFailure as exc:
                self.counters.link_failures += 1
                # the path only: a query may hold an access token
                log.warning("%s %s over the link failed: %s", http_request.method,
                            http_request.target.partition("?")[0], exc)
                raise
            if self.binding.resend(reply, attempt) is None:
                self._persist()
                return message, reply

    def _restore(self, path: Path) -> None:
        try:
            text = path.read_text()
            self.binding.load_json(text)
        except (OSError, CodecError) as exc:
            log.warning("%s is unreadable (%s): starting as a new device", path, exc)
            return
        self._saved = text
        self.counters.state_restored = True

    def _persist(self) -> None:
        """Write the binding's state when it changed: before a request leaves
        (a transaction ID or handle it took must never be given to another
        request after a crash) and once its answer is in (what the server now
        holds).  Atomic, mode 0600: it holds access tokens."""
        if self.state_path is None:
            return
        text = self.binding.to_json()
        if text == self._saved:
            return
        if write_private(self.state_path, text.encode("utf-8")):
            self._saved = text

    async def _send(self, message: Message) -> Message:
        return await self.endpoint.request(message, self.server_key, self.request_timeout)

    async def _send_tagged(self, tag: bytes, message: Message) -> Message:
        # "I hold the answer tagged so": RFC 7252 §5.10.6
        message.opt.etags = (tag,)
        return await self._send(message)


def _not_matrix_json(http_request: HttpRequest) -> HttpResponse | None:
    """400 M_NOT_JSON for a JSON body with numbers Matrix JSON does not have
    (NaN, Infinity, 1e400, integers outside ±(2**53 - 1)), as a homeserver
    answers it: the codec cannot carry them, and such a body is not worth
    the link.  A body that is not JSON at all still crosses: the homeserver
    sees it as sent and decides (an endpoint may not read its body)."""
    if not http_request.body or not payload.is_json_type(http_request.content_type):
        return None
    try:
        json_cbor.parse_json(http_request.body)
    except json_cbor.NotMatrixJson as exc:
        return matrix_error(400, "M_NOT_JSON", f"Content not JSON: {exc}")
    except GatewayError:
        pass
    return None


__all__ = ["BODY_TIMEOUT", "CORS_HEADERS", "HEADER_TIMEOUT", "IDLE_TIMEOUT", "MAX_CONNECTIONS", "ClientGateway",
           "ClientGatewayCounters", "HttpConnections"]
