"""The client gateway: an unchanged Matrix client talks HTTP to it locally.

Every HTTP request becomes one CoAP request to the server gateway; the
response comes back as the homeserver sent it (status, Matrix error body,
Retry-After, content type).  The access token crosses the link once: with
the first request that carries it (Access-Token option), and again only if
it changes or the server lost the session (it answers 4.01 + Token-Unbound,
and the request is sent again with the token — it was not forwarded).
Requests without a token carry No-Token, so "no option" always means "the
bound token".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from dataclasses import dataclass, field

from aiocoap import Message, error
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption
from aiohttp import web

from ..codec import options
from ..transport.coap import LinkEndpoint
from ..errors import GatewayError
from ..codec.mapping import (
    MAX_MEDIA_BODY,
    HttpRequest,
    HttpResponse,
    bearer_token,
    coap_to_response,
    compact_route_name,
    matrix_error,
    request_to_coap,
)
from ..app.metrics import Histogram, timed
from ..codec.profile import Profile
from ..codec.route_option import ClientWireState
from ..codec.routes import METHODS, split_target
from .push_client import SyncPushClient

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


@dataclass
class ClientGatewayCounters:
    requests: int = 0
    token_sent: int = 0
    token_rebinds: int = 0
    link_failures: int = 0
    answered_locally: int = 0
    #: requests sent again with handle definitions (Handle-Unknown)
    handle_resends: int = 0
    latency: Histogram = field(default_factory=Histogram)


class ClientGateway:
    #: answers /sync long-polls from pushes (coap_gateway/sync_client.py); set by runner
    sync_push: SyncPushClient | None = None

    def __init__(self, endpoint: LinkEndpoint, server_key: Hashable, profile: Profile, *,
                 host: str = "127.0.0.1", port: int = 0, request_timeout: float | None = None,
                 low_bandwidth: bool = False):
        self.endpoint = endpoint
        self.server_key = server_key
        self.profile = profile
        self.host, self.port = host, port
        self.request_timeout = request_timeout
        self.low_bandwidth = low_bandwidth
        #: the token the server holds for this session, as far as we know
        self.bound_token: str | None = None
        #: handles and transaction IDs of the compact form (profile lb3)
        self.wire: ClientWireState | None = ClientWireState() if profile.schemas is not None else None
        self.counters = ClientGatewayCounters()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_MEDIA_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)  # never log tokens or bodies
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.sync_push is not None:
            await self.sync_push.close()  # waiting long-polls end now, not at their timeout
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- HTTP side

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(status=204, headers=CORS_HEADERS)
        if request.method not in METHODS:
            return self._http(matrix_error(405, "M_UNRECOGNIZED", f"method {request.method} is not supported"))
        self.counters.requests += 1
        if self.low_bandwidth and self._answered_locally(request.method, request.raw_path):
            self.counters.answered_locally += 1
            return self._http(HttpResponse(200, b"{}", "application/json"))
        http_request = HttpRequest(
            method=request.method,
            target=request.raw_path,
            body=await request.read(),
            content_type=request.headers.get("Content-Type"),
            access_token=bearer_token(request.headers.get("Authorization")),
        )
        try:
            # a /sync long-poll may be answered from what the server pushed
            pushed = await self.sync_push.handle(http_request) if self.sync_push is not None else None
            response = pushed if pushed is not None else await self.exchange(http_request)
        except GatewayError as exc:
            response = matrix_error(400, "M_UNRECOGNIZED", f"the gateway cannot carry this request: {exc}")
        return self._http(response)

    def _answered_locally(self, method: str, target: str) -> bool:
        try:
            segments, _ = split_target(target)
        except GatewayError:
            return False
        template = self.profile.routes.match(segments)
        return template is not None and (method, template.name) in LOCAL_IN_LOW_BANDWIDTH

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
        resend_token = False
        for _attempt in range(3):
            message = self._coap_request(http_request, resend_token=resend_token)
            reply = await self._send(message)
            if reply is None:
                return matrix_error(504, "M_UNKNOWN", "the low-bandwidth link did not deliver the request")
            resend = self.resend_for(reply, resend_token)
            if resend is None:
                break
            resend_token = resend_token or resend == "token"
        response = coap_to_response(reply, self.profile, compact_route_name(message, self.profile))
        if self.wire is not None and response.content_type == "application/json":
            response.body = self.wire.restore_txn_ids(response.body)
        if response.status == 200 and http_request.access_token is not None and _is_logout(http_request.target):
            self.bound_token = None
        return response

    def resend_for(self, reply: Message, token_resent: bool) -> str | None:
        """Whether a reply says "not forwarded, send it again", and with what:
        "token" (4.01 Token-Unbound), "handles" (4.00 Handle-Unknown), or None.
        Updates what this gateway believes the server holds."""
        if reply.code == Code.UNAUTHORIZED and reply.opt.get_option(options.TOKEN_UNBOUND) and not token_resent:
            # the server has no token for this device: nothing was forwarded
            self.counters.token_rebinds += 1
            self.bound_token = None
            return "token"
        if reply.code == Code.BAD_REQUEST and reply.opt.get_option(options.HANDLE_UNKNOWN) and self.wire is not None:
            # the server lacks our handle definitions: nothing was forwarded
            self.counters.handle_resends += 1
            self.wire.server_forgot()
            return "handles"
        return None

    def coap_request(self, http_request: HttpRequest, *, resend_token: bool = False) -> Message:
        """The CoAP request for ``http_request``, token options included
        (sync push builds its registrations with it)."""
        return self._coap_request(http_request, resend_token)

    def _coap_request(self, http_request: HttpRequest, resend_token: bool) -> Message:
        message = request_to_coap(http_request, self.profile, self.wire)
        token = http_request.access_token
        if token is None:
            message.opt.add_option(OpaqueOption(options.NO_TOKEN, b""))
        elif token != self.bound_token or resend_token:
            message.opt.add_option(OpaqueOption(options.ACCESS_TOKEN, token.encode("utf-8")))
            self.counters.token_sent += 1
            # bound as soon as the server reads this request; a lost request
            # leaves it unbound on the server, which says so (Token-Unbound)
            self.bound_token = token
        message.remote = self.endpoint.remote(self.server_key)
        return message

    async def _send(self, message: Message) -> Message | None:
        try:
            request = self.endpoint.context.request(message)
            return await asyncio.wait_for(request.response, self.request_timeout)
        except (error.Error, TimeoutError, GatewayError) as exc:
            self.counters.link_failures += 1
            log.warning("request over the link failed: %s", type(exc).__name__)
            return None


def _is_logout(target: str) -> bool:
    path = target.partition("?")[0]
    return path.endswith("/logout") or path.endswith("/logout/all")
