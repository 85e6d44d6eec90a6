"""Token and handle binding: the one owner of what a server holds for a device (sans-I/O).

The access token crosses the link once, not with every request: the server
gateway *binds* it to the device (its Noise static key; in plaintext mode,
its address), and the compact form's handles and transaction scope
(``route_option``) are bound the same way.  Both ends must agree at every
moment on what is bound, or a request runs under the wrong token or names a
room the server cannot resolve.  So every decision about it is here, on
both sides, and nowhere else:

``ClientBinding`` (client gateway)
    ``request(http)`` → the CoAP request to send: the request line and body
    (``mapping``) plus the token options (Access-Token when the server may
    not hold the token, No-Token when the request has none, neither when
    the bound token applies).  ``reply(http, message, reply)`` → ``Resend``
    (the server forwarded nothing: send again, with the token or with the
    definitions) or the ``HttpResponse`` for the client.

``ServerBinding`` (server gateway)
    ``resolve(request)`` → ``Resolved`` (the HTTP request and the token to
    forward it with) or ``Refused`` (the CoAP reply: Token-Unbound,
    Handle-Unknown, a malformed request), before anything is forwarded.
    ``after(request, resolved, response)`` unbinds a token that a
    successful logout killed.

The shells (``gateway.client``, ``gateway.server`` and sync push) only carry
out what these return.  docs/protocol.md §8 specifies the rules.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from ..errors import GatewayError
from . import options
from .mapping import (
    HttpRequest,
    HttpResponse,
    coap_to_request,
    coap_to_response,
    compact_route_name,
    request_to_coap,
)
from .profile import Profile
from .route_option import ClientWireState, HandleUnknown, ServerWireState

#: resends one request may need: once with the token, once with definitions
MAX_ATTEMPTS = 3


def is_logout(target: str) -> bool:
    """Whether a request target is a client-server logout (``/logout`` or
    ``/logout/all`` under any version of ``/_matrix/client/``): after its
    200, the token it carried is dead."""
    path = target.partition("?")[0]
    segments = path.split("/")
    return (len(segments) in (5, 6) and segments[:3] == ["", "_matrix", "client"]
            and segments[4:] in (["logout"], ["logout", "all"]))


# ------------------------------------------------------------ client side


@dataclass
class Resend:
    """The server forwarded nothing: send the request again.  ``with_token``:
    the server holds no token for this device (4.01 Token-Unbound); else it
    lacked a handle definition (4.00 Handle-Unknown)."""

    with_token: bool


@dataclass
class Attempt:
    """One request's way through resends (``ClientBinding.request/reply``)."""

    number: int = 0
    token_resent: bool = False

    @property
    def exhausted(self) -> bool:
        return self.number >= MAX_ATTEMPTS


@dataclass
class ClientBindingCounters:
    #: requests that carried the access token across the link
    token_sent: int = 0
    #: requests sent again with the token after Token-Unbound
    token_rebinds: int = 0
    #: requests sent again with definitions after Handle-Unknown
    handle_resends: int = 0


class ClientBinding:
    """What the client gateway believes the server holds for this device."""

    def __init__(self, profile: Profile):
        self.profile = profile
        #: the token the server holds for this device, as far as we know
        self.bound_token: str | None = None
        #: handles and transaction IDs of the compact form (profile lb3)
        self.wire: ClientWireState | None = ClientWireState() if profile.schemas is not None else None
        self.counters = ClientBindingCounters()

    def request(self, http: HttpRequest, attempt: Attempt | None = None) -> Message:
        """The CoAP request for ``http`` (no remote set), token options included."""
        attempt = attempt or Attempt()
        attempt.number += 1
        message = request_to_coap(http, self.profile, self.wire)
        token = http.access_token
        if token is None:
            message.opt.add_option(OpaqueOption(options.NO_TOKEN, b""))
        elif token != self.bound_token or attempt.token_resent:
            message.opt.add_option(OpaqueOption(options.ACCESS_TOKEN, token.encode("utf-8")))
            self.counters.token_sent += 1
            # bound as soon as the server reads this request; a lost request
            # leaves it unbound on the server, which says so (Token-Unbound)
            self.bound_token = token
        return message

    def resend(self, reply: Message, attempt: Attempt) -> Resend | None:
        """Whether ``reply`` says "not forwarded, send it again", updating what
        this side believes the server holds; None: it is the answer."""
        if attempt.exhausted:
            return None
        if reply.code == Code.UNAUTHORIZED and reply.opt.get_option(options.TOKEN_UNBOUND) and not attempt.token_resent:
            # the server has no token for this device: nothing was forwarded
            self.counters.token_rebinds += 1
            self.bound_token = None
            attempt.token_resent = True
            return Resend(with_token=True)
        if reply.code == Code.BAD_REQUEST and reply.opt.get_option(options.HANDLE_UNKNOWN) and self.wire is not None:
            # the server lacks our handle definitions: nothing was forwarded
            self.counters.handle_resends += 1
            self.wire.server_forgot()
            return Resend(with_token=False)
        return None

    def response(self, http: HttpRequest, message: Message, reply: Message) -> HttpResponse:
        """The client's answer to ``http``, given the server's final ``reply``
        to ``message``."""
        response = coap_to_response(reply, self.profile, compact_route_name(message, self.profile))
        response = self.restore(response)
        if response.status == 200 and http.access_token is not None and is_logout(http.target):
            self.bound_token = None
        return response

    def reply(self, http: HttpRequest, message: Message, reply: Message, attempt: Attempt) -> Resend | HttpResponse:
        """``resend`` or else ``response``: what to do with ``reply``."""
        return self.resend(reply, attempt) or self.response(http, message, reply)

    def restore(self, response: HttpResponse) -> HttpResponse:
        """A JSON answer with the homeserver's transaction IDs (``<scope>.<k>``:
        the compact form scopes them) given back as the client's own."""
        if self.wire is None or response.content_type != "application/json":
            return response
        return HttpResponse(response.status, self.wire.restore_txn_ids(response.body), response.content_type,
                            response.headers)


# ------------------------------------------------------------ server side


@dataclass
class DeviceState:
    """What the server gateway keeps for one device across its sessions."""

    token: str | None = None
    wire: ServerWireState = field(default_factory=ServerWireState)


@dataclass
class Resolved:
    """A request the server gateway may forward, and the token to forward it with."""

    http: HttpRequest
    token: str | None


@dataclass
class Refused:
    """A request answered without forwarding anything; ``reason`` for counters."""

    reply: Message
    reason: str  # "token_unbound" | "handle_unknown" | "malformed"


class ServerBinding:
    """Per device (client static key; in plaintext mode, its address): the
    bound token and the compact form's handles, least recently used first,
    at most ``max_devices`` of them."""

    def __init__(self, profile: Profile, max_devices: int = 4096):
        self.profile = profile
        self.max_devices = max_devices
        self.devices: OrderedDict[Hashable, DeviceState] = OrderedDict()
        #: secure session (aiocoap remote) -> device key
        self.device_keys: dict[Hashable, Hashable] = {}

    def session_started(self, remote: Hashable, device_key: Hashable) -> None:
        """A secure session of the device with static key ``device_key``: its
        bound token and handles carry over from the device's earlier sessions."""
        self.device_keys[remote] = device_key

    def forget_session(self, remote: Hashable) -> None:
        """The session is gone; the device's state stays (LRU-bounded).  A
        plaintext remote is its own device: its state goes with it."""
        if self.device_keys.pop(remote, None) is None:
            self.devices.pop(remote, None)

    def device(self, remote: Hashable) -> DeviceState:
        key = self.device_keys.get(remote, remote)
        state = self.devices.get(key)
        if state is None:
            state = self.devices[key] = DeviceState()
            while len(self.devices) > self.max_devices:
                self.devices.popitem(last=False)
        else:
            self.devices.move_to_end(key)
        return state

    def resolve(self, request: Message) -> Resolved | Refused:
        """The HTTP request ``request`` stands for and its token, or the
        reply that refuses it.  Definitions it carries (token, handles,
        scope) are bound on the way; they are idempotent, so resolving the
        same request twice is harmless."""
        device = self.device(request.remote)
        try:
            http = coap_to_request(request, self.profile, device.wire)
        except HandleUnknown:
            reply = Message(code=Code.BAD_REQUEST)
            reply.opt.add_option(OpaqueOption(options.HANDLE_UNKNOWN, b""))
            return Refused(reply, "handle_unknown")
        except GatewayError as exc:
            return Refused(Message(code=Code.BAD_REQUEST, payload=str(exc).encode()[:200]), "malformed")
        given = request.opt.get_option(options.ACCESS_TOKEN)
        if given:
            device.token = given[0].value.decode("utf-8", "replace")
            return Resolved(http, device.token)
        if request.opt.get_option(options.NO_TOKEN):
            return Resolved(http, None)
        if device.token is None:
            # neither option: the client relies on a bound token, which this
            # device does not have (server restart, eviction); ask for it and
            # forward nothing
            reply = Message(code=Code.UNAUTHORIZED)
            reply.opt.add_option(OpaqueOption(options.TOKEN_UNBOUND, b""))
            return Refused(reply, "token_unbound")
        return Resolved(http, device.token)

    def after(self, request: Message, resolved: Resolved, response: HttpResponse) -> None:
        """Learn from the homeserver's answer: a successful logout killed the
        token, which must not be used again."""
        if response.status == 200 and resolved.token is not None and is_logout(resolved.http.target):
            device = self.device(request.remote)
            if device.token == resolved.token:
                device.token = None


__all__ = [
    "Attempt",
    "ClientBinding",
    "ClientBindingCounters",
    "DeviceState",
    "Refused",
    "Resend",
    "Resolved",
    "ServerBinding",
    "is_logout",
]
