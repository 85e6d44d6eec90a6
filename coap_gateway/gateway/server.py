"""The server gateway: CoAP from devices in, HTTP to one homeserver out.

Only the configured homeserver is ever contacted — the request line carries
a path, never a host — and admin APIs are refused unless enabled, so the
gateway is not an open proxy.  The access token arrives once (the
Access-Token option) and is bound to the device — its Noise static key,
authenticated by the handshake, so the binding outlives a session and a
reconnect costs no token; in plaintext mode, its address.  Later requests
without an option use the bound token, requests with No-Token use none, and
a request that relies on a binding the device lacks gets 4.01 +
Token-Unbound before anything is forwarded.  Each request is one aiohttp request, so a slow upstream call (a sync
long-poll) holds up nobody else.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiocoap.resource as resource
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption
from yarl import URL

from ..codec import options
from ..errors import GatewayError
from ..codec.mapping import (
    MAX_RESPONSE_BODY,
    HttpRequest,
    HttpResponse,
    coap_to_request,
    decoded_path_segments,
    matrix_error,
    response_to_coap,
)
from ..app.metrics import Histogram, timed
from ..codec.profile import Profile
from ..codec.route_option import HandleUnknown, ServerWireState
from .push_server import SyncPushServer

log = logging.getLogger(__name__)

#: decoded, lower-cased path prefixes of admin APIs: refused unless enabled
ADMIN_PREFIXES: tuple[tuple[str, ...], ...] = (
    ("_synapse", "admin"),
    ("_synapse", "metrics"),
    ("_dendrite", "admin"),
    ("_conduwuit", "admin"),
    ("_continuwuity", "admin"),
)
VERSIONS_PATH = "/_matrix/client/versions"
#: unstable key under which /versions advertises the low-bandwidth endpoint
ADVERTISEMENT_KEY = "net.coap-gateway.low_bandwidth"
LOGOUT_PATHS = {"logout", "logout/all"}


@dataclass
class ServerGatewayConfig:
    homeserver: str
    profile: Profile
    allow_admin: bool = False
    #: what /versions advertises (address, public key, profile…); None: nothing
    advertisement: dict[str, Any] | None = None
    request_timeout: float = 300.0
    #: devices whose bound token and handles are kept at most
    max_bound_tokens: int = 4096


@dataclass
class DeviceState:
    """What the server gateway keeps for one device across its sessions."""

    token: str | None = None
    wire: ServerWireState = field(default_factory=ServerWireState)


@dataclass
class ServerGatewayCounters:
    requests: int = 0
    refused_admin: int = 0
    token_unbound: int = 0
    handle_unknown: int = 0
    upstream_errors: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)


class ServerGateway(resource.Resource):
    """aiocoap resource answering every path by asking the homeserver."""

    #: holds devices' /sync loops and pushes (coap_gateway/sync_server.py); set by runner
    sync_push: SyncPushServer | None = None

    def __init__(self, config: ServerGatewayConfig, http: aiohttp.ClientSession | None = None):
        super().__init__()
        self.config = config
        self.base = config.homeserver.rstrip("/")
        self._http = http
        self._owns_http = http is None
        #: per device (client static key; in plaintext mode, its address):
        #: the bound token and the compact form's handles, least recent first
        self.devices: OrderedDict[Hashable, DeviceState] = OrderedDict()
        #: secure session (aiocoap remote) -> device key
        self.device_keys: dict[Hashable, Hashable] = {}
        self.counters = ServerGatewayCounters()

    async def close(self) -> None:
        if self.sync_push is not None:
            await self.sync_push.close()
        if self._http is not None and self._owns_http:
            await self._http.close()

    def session_started(self, remote: Hashable, device_key: Hashable) -> None:
        """A secure session of the device with static key ``device_key``: its
        bound token and handles carry over from the device's earlier sessions."""
        self.device_keys[remote] = device_key

    def forget_session(self, remote: Hashable) -> None:
        """The session is gone; the device's state stays (LRU-bounded)."""
        if self.sync_push is not None:
            self.sync_push.forget_session(remote)  # its observations went with it
        if self.device_keys.pop(remote, None) is None:
            self.devices.pop(remote, None)

    def _device(self, remote: Hashable) -> DeviceState:
        key = self.device_keys.get(remote, remote)
        state = self.devices.get(key)
        if state is None:
            state = self.devices[key] = DeviceState()
            while len(self.devices) > self.config.max_bound_tokens:
                self.devices.popitem(last=False)
        else:
            self.devices.move_to_end(key)
        return state

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.request_timeout),
                auto_decompress=False,
            )
        return self._http

    async def render_to_pipe(self, pipe: Any) -> None:
        # observations of /sync and their control requests go to sync push
        push = self.sync_push
        if push is not None and push.claims(pipe.request) and await push.render_to_pipe(pipe):
            return
        await super().render_to_pipe(pipe)

    # -- what sync push asks: a request read as render() reads it

    def request_for(self, request: Message) -> HttpRequest:
        return coap_to_request(request, self.config.profile, self._device(request.remote).wire)

    def token_for(self, request: Message) -> str | None | object:
        return self._token_for(request)

    # aiocoap calls render() for every method; the Resource default would
    # dispatch to render_get etc. and refuse the rest
    @timed(lambda self: self.counters.latency)
    async def render(self, request: Message) -> Message:
        self.counters.requests += 1
        profile = self.config.profile
        try:
            http_request = coap_to_request(request, profile, self._device(request.remote).wire)
        except HandleUnknown:
            self.counters.handle_unknown += 1
            reply = Message(code=Code.BAD_REQUEST)
            reply.opt.add_option(OpaqueOption(options.HANDLE_UNKNOWN, b""))
            return reply
        except GatewayError as exc:
            return Message(code=Code.BAD_REQUEST, payload=str(exc).encode()[:200])

        token = self._token_for(request)
        if token is _UNBOUND:
            self.counters.token_unbound += 1
            reply = Message(code=Code.UNAUTHORIZED)
            reply.opt.add_option(OpaqueOption(options.TOKEN_UNBOUND, b""))
            return reply

        if not self.config.allow_admin and self._is_admin(http_request.target):
            self.counters.refused_admin += 1
            response = matrix_error(403, "M_FORBIDDEN", "admin APIs are not reachable through the low-bandwidth gateway")
        else:
            response = await self._forward(http_request.method, http_request.target, http_request.body,
                                           http_request.content_type, token)
            self._after(request, http_request.target, response)
        self.counters.by_status[response.status] = self.counters.by_status.get(response.status, 0) + 1
        return response_to_coap(response, profile, http_request.compact_route)

    # -- tokens

    def _token_for(self, request: Message) -> str | None | object:
        device = self._device(request.remote)
        given = request.opt.get_option(options.ACCESS_TOKEN)
        if given:
            device.token = given[0].value.decode("utf-8", "replace")
            return device.token
        if request.opt.get_option(options.NO_TOKEN):
            return None
        if device.token is None:
            # neither option: the client relies on a bound token, which this
            # device does not have (server restart, eviction); ask for it and
            # forward nothing
            return _UNBOUND
        return device.token

    def _after(self, request: Message, target: str, response: HttpResponse) -> None:
        path = target.partition("?")[0]
        if response.status == 200 and path.rsplit("/_matrix/client/", 1)[-1].partition("/")[2] in LOGOUT_PATHS:
            self._device(request.remote).token = None  # the token is dead: do not use it again

    # -- upstream

    @staticmethod
    def _is_admin(target: str) -> bool:
        segments = tuple(decoded_path_segments(target))
        return any(segments[: len(p)] == p for p in ADMIN_PREFIXES)

    async def _forward(self, method: str, target: str, body: bytes, content_type: str | None,
                       token: str | None) -> HttpResponse:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        # the target is a path (routes guarantees it): the host is always ours
        url = URL(self.base + target, encoded=True)
        try:
            async with self.http.request(method, url, data=body or None, headers=headers,
                                         allow_redirects=False) as upstream:
                # read to the end, never past the cap (content.read(n) may stop early)
                data = bytearray()
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > MAX_RESPONSE_BODY:
                        return matrix_error(502, "M_UNKNOWN", "homeserver response too large for the gateway")
                content_type_out = upstream.headers.get("Content-Type")
                response = HttpResponse(upstream.status, bytes(data), _media_type(content_type_out),
                                        [(k, v) for k, v in upstream.headers.items()])
        except aiohttp.ClientConnectionError as exc:
            self.counters.upstream_errors += 1
            log.warning("homeserver unreachable: %s", exc)
            return matrix_error(502, "M_UNKNOWN", "the homeserver is unreachable from the gateway")
        except TimeoutError:
            self.counters.upstream_errors += 1
            return matrix_error(504, "M_UNKNOWN", "the homeserver did not answer in time")
        if (target.partition("?")[0] == VERSIONS_PATH and response.status == 200
                and self.config.advertisement is not None):
            response.body = _advertise(response.body, self.config.advertisement)
        return response


class _Unbound:
    pass


_UNBOUND = _Unbound()


def _media_type(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    # Synapse says "application/json"; keep any other type exactly as sent
    return content_type


def _advertise(body: bytes, advertisement: dict[str, Any]) -> bytes:
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if isinstance(doc, dict):
        doc[ADVERTISEMENT_KEY] = advertisement
        return json.dumps(doc, separators=(",", ":")).encode()
    return body
