"""The server gateway: CoAP from devices in, HTTP to one homeserver out.

Only the configured homeserver is ever contacted (``Upstream``: the request
line carries a path, never a host) and admin APIs are refused unless
enabled, so the gateway is not an open proxy.  Which token a request runs
under, and what its handles name, is decided by
``codec.binding.ServerBinding`` before anything is forwarded.  Each request
is one upstream request, so a slow answer (a sync long-poll) holds up nobody
else; observations of ``/sync`` go to sync push (``push_server``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from ..codec import (
    DeviceState,
    HttpRequest,
    HttpResponse,
    Profile,
    Refused,
    RoomsWanted,
    ServerBinding,
    bare_event_id,
    decoded_path_segments,
    issues_token,
    matrix_error,
    options,
    response_to_coap,
    revalidation,
)
from ..errors import CodecError
from ..codec.route_option import ID_BYTES
from ..push import SLIDING, SyncPushServerConfig, parse_send, sent_of
from ..transport import LinkEndpoint, drop_assemblies
from .push_server import EchoWait, SyncPushServer
from .stats import Histogram, timed
from .uploads import BoundedUploads, UploadLimits, assembled
from .upstream import PoolShares, Upstream, UpstreamError, pool_of

log = logging.getLogger(__name__)

#: decoded, lower-cased path prefixes of admin APIs: refused unless enabled
ADMIN_PREFIXES: tuple[tuple[str, ...], ...] = (
    ("_synapse", "admin"),
    ("_synapse", "metrics"),
    ("_dendrite", "admin"),
    ("_conduwuit", "admin"),
    ("_continuwuity", "admin"),
)


@dataclass
class ServerGatewayConfig:
    homeserver: str
    profile: Profile
    allow_admin: bool = False
    request_timeout: float = 300.0
    #: devices whose bound token and handles are kept at most
    max_bound_tokens: int = 4096
    #: the largest request body that may arrive block by block (an upload)
    max_upload: int = 256 << 10
    #: request bytes one device may have in block-wise assembly at once
    #: (aiocoap keeps each for the blockwise lifetime); they wait on disk, in
    #: ``spool_dir``, not in memory
    max_upload_per_device: int = 256 << 10
    #: request bytes all devices together may have in assembly: without it,
    #: devices that each stay within their own share (or new device keys, one
    #: after another) could make the server hold any amount
    max_upload_total: int = 64 << 20
    #: where uploads wait while their blocks arrive (anonymous files, gone when
    #: closed; None: the system's temporary directory)
    spool_dir: Path | None = None
    #: requests one device may have forwarded to the homeserver at once, in
    #: each pool (``upstream``: ordinary, held): a client starting makes ~10
    #: at once, a browser opens 6 connections to a host, a device serves up to
    #: 16 accounts; so 32 is never met by clients, and leaves a device a third
    #: of the 100 ordinary connections at most (then 5.03, Max-Age)
    max_forwarded_per_device: int = 32
    #: forwarded requests that may wait for a homeserver connection at once,
    #: in each pool, all devices together (Envoy's default max_pending_requests)
    max_forwarded_waiting: int = 1024


#: where the homeserver lists the rooms an account has joined
JOINED_ROOMS = "/_matrix/client/v3/joined_rooms"
#: Max-Age of a 5.03 for a device over its share of a pool: a place frees
#: when one of its own requests is answered
DEVICE_BUSY_RETRY = 5
#: …and for a pool whose waiting room is full: the homeserver is a thousand
#: requests behind
POOL_BUSY_RETRY = 30


@dataclass
class ServerGatewayCounters:
    requests: int = 0
    refused_admin: int = 0
    #: requests whose path has a '.' or '..' segment (refused, 400)
    refused_paths: int = 0
    token_unbound: int = 0
    handle_unknown: int = 0
    #: definitions that gave a handle a new value (a client bug; counted, logged)
    redefinitions: int = 0
    #: devices whose bound state came back from the store (after a restart)
    devices_restored: int = 0
    #: blocks refused: an upload too large, or too much held for one device
    refused_uploads: int = 0
    upstream_errors: int = 0
    #: requests answered 2.03 Valid: the device held the same answer (codec.revalidation)
    revalidated: int = 0
    #: joined-room lists asked of the homeserver, to match a room digest
    room_lookups: int = 0
    #: requests answered 5.03 without forwarding: the device's share of a
    #: homeserver pool was full, or the pool's waiting room
    refused_busy: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)


class DeviceStore(Protocol):
    """Where a server gateway keeps its devices' bound state across restarts
    (``app.store.ServerStore``: SQLite, 0600, beside the key)."""

    def load_device(self, key: bytes) -> str | None: ...

    def save_device(self, key: bytes, state: str) -> None: ...

    def delete_device(self, key: bytes) -> None: ...


class ServerGateway(BoundedUploads):
    """aiocoap resource answering every path by asking the homeserver."""

    def __init__(self, config: ServerGatewayConfig, *, sync_push: SyncPushServerConfig | None = None,
                 device_store: DeviceStore | None = None, upstream: Upstream | None = None):
        super().__init__()
        self.config = config
        #: ``upstream``: another homeserver client with Upstream's methods (an
        #: in-memory one lets a simulation run in virtual time)
        self.upstream = upstream or Upstream(config.homeserver, timeout=config.request_timeout)
        #: each device's share of the homeserver connections (an in-memory
        #: upstream has no pools: then only the waiting room bounds them)
        self.shares = PoolShares(config.max_forwarded_per_device, config.max_forwarded_waiting,
                                 getattr(self.upstream, "limits", None))
        self.device_store = device_store
        self.binding = ServerBinding(config.profile, config.max_bound_tokens,
                                     loader=self._load_device if device_store is not None else None,
                                     on_change=self._save_device if device_store is not None else None)
        self.counters = ServerGatewayCounters()
        #: a CoAP remote's network address; the runner sets it where the remote
        #: is a secure session (the address is then the session's, which moves)
        self.address_of: Callable[[Hashable], Hashable | None] = lambda remote: getattr(remote, "key", None)
        #: holds devices' /sync loops and pushes (None: every poll is forwarded as it comes)
        self.sync_push = (SyncPushServer(self.upstream, self.binding, config.profile, sync_push,
                                         count_request=self._count_request, forwarded_for=self.forwarded_for)
                          if sync_push is not None else None)

    def attach(self, endpoint: LinkEndpoint) -> None:
        """The endpoint this gateway serves on: pushes wait for its ACKs."""
        if self.sync_push is not None:
            self.sync_push.attach(endpoint)

    async def close(self) -> None:
        if self.sync_push is not None:
            await self.sync_push.close()
        await self.upstream.close()

    def session_started(self, remote: Hashable, device_key: Hashable) -> None:
        """A secure session of the device with static key ``device_key``."""
        self.binding.session_started(remote, device_key)

    def device_restarted(self, previous: Hashable, device_key: Hashable, *, unbound: bool) -> None:
        """A new client process of the device proved itself: what its old one
        (CoAP remote ``previous``) observed or had in assembly is gone, and,
        ``unbound``, so is what it had bound."""
        drop_assemblies(self, previous)
        if self.sync_push is not None:
            self.sync_push.forget_session(previous)
        self.binding.forget_session(previous)
        if unbound:
            self.binding.reset_device(device_key)

    def forget_session(self, remote: Hashable) -> None:
        """The device's last session is gone (its observations and unfinished
        uploads with it: no block of them can arrive any more); its bound
        state stays (LRU-bounded)."""
        drop_assemblies(self, remote)
        if self.sync_push is not None:
            self.sync_push.forget_session(remote)
        self.binding.forget_session(remote)

    def forwarded_for(self, remote: Hashable) -> str | None:
        """The device's IP address, as the homeserver is told it
        (X-Forwarded-For); None where it has none (a serial line, a simulated link)."""
        address = self.address_of(remote)
        if not (isinstance(address, tuple) and address and isinstance(address[0], str)):
            return None
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            return None
        # a dual-stack socket ("::") sees IPv4 peers as ::ffff:a.b.c.d
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return str(mapped or ip)

    def _load_device(self, key: bytes) -> DeviceState | None:
        assert self.device_store is not None
        text = self.device_store.load_device(key)
        if text is None:
            return None
        try:
            state = DeviceState.from_json(text)
        except CodecError as exc:
            log.warning("a device's stored state is unreadable (%s): it defines everything again", exc)
            return None
        self.counters.devices_restored += 1
        return state

    def _save_device(self, key: bytes, state: DeviceState | None) -> None:
        assert self.device_store is not None
        if state is None:
            self.device_store.delete_device(key)
        else:
            self.device_store.save_device(key, state.to_json())

    def _count_request(self) -> None:
        self.counters.requests += 1

    async def render_to_pipe(self, pipe: Any) -> None:
        # observations of /sync and their control requests go to sync push
        push = self.sync_push
        if push is not None and push.claims(pipe.request) and await push.render_to_pipe(pipe):
            return
        await super().render_to_pipe(pipe)  # block-wise uploads bounded, on disk (BoundedUploads)

    def upload_limits(self) -> UploadLimits:
        c = self.config
        return UploadLimits(c.max_upload, c.max_upload_per_device, c.max_upload_total, c.spool_dir)

    def upload_refused(self) -> None:
        self.counters.refused_uploads += 1

    # aiocoap calls render() for every method; the Resource default would
    # dispatch to render_get etc. and refuse the rest
    @timed(lambda self: self.counters.latency)
    async def render(self, request: Message) -> Message:
        self.counters.requests += 1
        assembled(request)  # a body assembled from blocks (render_to_pipe)
        resolved = self.binding.resolve(request)
        if isinstance(resolved, RoomsWanted):
            resolved = self.binding.resolve(request, await self.joined_rooms(resolved.token, request.remote))
        assert not isinstance(resolved, RoomsWanted)
        if isinstance(resolved, Refused):
            if resolved.reason == "token_unbound":
                self.counters.token_unbound += 1
            elif resolved.reason == "handle_unknown":
                self.counters.handle_unknown += 1
            return resolved.reply
        http_request = resolved.http
        if request.code == SLIDING.registration and request.opt.observe == 0:
            # a sliding-sync registration that sync push declined (over its
            # limits): the homeserver gets the plain long-poll it also is
            http_request = replace(http_request, method=SLIDING.method)
        if resolved.redefined:
            # a client never gives a handle another value: one that lost its
            # state says so in its handshake (secure layer, RESTART/UNBOUND)
            self.counters.redefinitions += 1
            log.warning("a device redefined a handle without announcing it had lost its state")
        if _moves_up(http_request.target):
            self.counters.refused_paths += 1
            response = matrix_error(400, "M_UNRECOGNIZED", "a path segment '.' or '..' is refused by the gateway")
        elif not self.config.allow_admin and _is_admin(http_request.target):
            self.counters.refused_admin += 1
            response = matrix_error(403, "M_FORBIDDEN", "admin APIs are not reachable through the low-bandwidth gateway")
        else:
            wait = self._expect_echo(request, http_request, resolved.token)
            try:
                response = await self.forward(http_request, resolved.token, request.remote)
            except BaseException:  # cancelled: the observation must not wait for this send's echo
                if wait is not None:
                    SyncPushServer.release_echo(wait)
                raise
            bound = self.binding.after(request, resolved, response)
            if wait is not None:
                echo = await self._fold_echo(wait, http_request, response)
                return self._answer(response, http_request, echo)
            if bound:
                # the login's token is held: the client uses its handle at once
                answer = self._answer(response, http_request)
                answer.opt.add_option(OpaqueOption(options.TOKEN_BOUND, b""))
                return answer
        answer = self._answer(response, http_request)
        if not revalidation.tagged(http_request.method, self._route_name(http_request), response.status):
            return answer
        tag = revalidation.etag(int(answer.code), answer.opt.encode(), answer.payload)
        if tag in request.opt.etags:
            # the device holds these very bytes (codec.revalidation)
            self.counters.revalidated += 1
            valid = Message(code=Code.VALID)
            valid.opt.etag = tag
            return valid
        answer.opt.etag = tag
        return answer

    def _route_name(self, http_request: HttpRequest) -> str | None:
        if http_request.method not in ("GET", "POST"):
            return None  # only these are revalidated: no need to look
        if http_request.compact_route is not None:
            return http_request.compact_route
        found = self.config.profile.routes.match_target(http_request.target)
        return found[0].name if found is not None else None

    def _answer(self, response: HttpResponse, http_request: HttpRequest, echo: bytes | None = None) -> Message:
        self.counters.by_status[response.status] = self.counters.by_status.get(response.status, 0) + 1
        return response_to_coap(response, self.config.profile, http_request.compact_route, echo)

    # -- the sender's echo (push.echo)

    def _expect_echo(self, request: Message, http_request: HttpRequest, token: str | None) -> EchoWait | None:
        """A send in the compact form by a device whose sync is pushed: its
        echo may ride in the answer."""
        schemas = self.config.profile.schemas
        if (self.sync_push is None or not isinstance(token, str) or schemas is None
                or http_request.compact_route not in schemas.message_routes or http_request.method != "PUT"):
            return None
        send = parse_send(http_request.target, self.config.profile.routes, schemas.message_routes)
        if send is None:
            return None
        room_id, event_type, txn = send
        return self.sync_push.expect_echo(request.remote, token, room_id, event_type, unquote(txn))

    async def _fold_echo(self, wait: EchoWait, http_request: HttpRequest, response: HttpResponse) -> bytes | None:
        bare = bare_event_id(response) if response.status == 200 else None
        sent = (sent_of(wait.room_id, wait.event_type, wait.txn_id, http_request.body, response.body)
                if bare is not None and len(bare) == ID_BYTES else None)
        assert self.sync_push is not None
        return await self.sync_push.echo_answer(wait, sent)

    # -- upstream

    async def joined_rooms(self, token: str, remote: Hashable) -> list[str]:
        """The rooms ``token``'s account has joined, to match a room digest
        against (docs/protocol.md §7a); none when the homeserver gives no list
        (the device then defines the room in full)."""
        self.counters.room_lookups += 1
        response = await self.forward(HttpRequest("GET", JOINED_ROOMS), token, remote)
        try:
            rooms = json.loads(response.body)["joined_rooms"] if response.status == 200 else []
        except (ValueError, KeyError, TypeError):
            rooms = []
        return [room for room in rooms if isinstance(room, str)] if isinstance(rooms, list) else []

    async def forward(self, http_request: HttpRequest, token: str | None, remote: Hashable) -> HttpResponse:
        """The homeserver's answer to the device ``remote``'s request, or the
        Matrix error that stands for none."""
        pool = pool_of(http_request.method, http_request.target)
        refused = self.shares.take(pool, remote)
        if refused is not None:
            self.counters.refused_busy += 1
            return _busy(refused)
        try:
            response = await self.upstream.fetch(http_request.method, http_request.target, body=http_request.body,
                                                 content_type=http_request.content_type, token=token,
                                                 forwarded_for=self.forwarded_for(remote))
        except UpstreamError as exc:
            self.counters.upstream_errors += 1
            return exc.as_response()
        finally:
            self.shares.give_back(pool, remote)
        if response.status == 200 and issues_token(http_request.method, http_request.target):
            response.body = _without_well_known(response.body)
        return response


def _busy(refused: str) -> HttpResponse:
    """The 503 (5.03 with Max-Age on the link) for a request ``PoolShares`` refused."""
    if refused == PoolShares.DEVICE:
        response = matrix_error(503, "M_UNKNOWN", "too many of this device's requests are at the homeserver")
        retry = DEVICE_BUSY_RETRY
    else:
        response = matrix_error(503, "M_UNKNOWN", "the homeserver is behind with every device's requests")
        retry = POOL_BUSY_RETRY
    response.headers.append(("Retry-After", str(retry)))
    return response


def _path_pieces(target: str) -> list[str]:
    """The path's decoded, lower-cased segments, each cut again at the
    slashes and backslashes it had encoded (%2F, %5C): what a front proxy
    that decodes them sees.  Matrix needs encoded slashes (a room v3 event
    ID, a state key: Synapse's reverse-proxy guide has Apache keep them), so
    they are not refused; only what they could smuggle is."""
    return [piece for segment in decoded_path_segments(target) for piece in re.split(r"[/\\]", segment)]


def _moves_up(target: str) -> bool:
    """A ``.`` or ``..`` segment, however encoded: the homeserver takes it
    literally, a normalising proxy in front of it walks up the path with it
    (``/_matrix/client/v3/rooms/%2e%2e/…/_synapse/admin``)."""
    return any(piece in (".", "..") for piece in _path_pieces(target))


def _is_admin(target: str) -> bool:
    # without empty pieces: a proxy that merges slashes (nginx does by default)
    # reads //_synapse//admin as /_synapse/admin
    pieces = tuple(piece for piece in _path_pieces(target) if piece)
    return any(pieces[: len(p)] == p for p in ADMIN_PREFIXES)


def _without_well_known(body: bytes) -> bytes:
    """A login's answer without ``well_known``: it names the homeserver's own
    base URL, and a client that follows it (Element does: "clients SHOULD use
    the provided object to reconfigure themselves") would leave its client
    gateway for a server it cannot reach over its link.  The member is
    optional; without it a client keeps the URL it logged in through."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body
    if not isinstance(doc, dict) or "well_known" not in doc:
        return body
    del doc["well_known"]
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


__all__ = ["ADMIN_PREFIXES", "ServerGateway", "ServerGatewayConfig", "ServerGatewayCounters"]
