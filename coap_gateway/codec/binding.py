"""Token and handle binding: the one owner of what a server holds for a device (sans-I/O).

Access tokens and the compact form's values (room and user IDs, the
transaction scope: ``route_option``) cross the link once, not with every
request: the client gateway gives each a small *handle* and defines it
(handle and value) in a request; from then on the handle alone stands for
it.  The server gateway keeps the definitions per device (its Noise static
key; in plaintext mode, its address), so a reconnect costs none of them.

Two rules make "a request runs under another user's token" or "a handle
names another room" impossible by construction:

* **A handle never changes meaning.**  The client numbers tokens and values
  as it meets them and never gives a number to another value; a token
  handle is retired at logout, never reused.  The server resolves the
  handle *each request names* — there is no "current" or "last" token.
* **A handle travels bare only once the server has confirmed it.**  Until
  a request that carried the definition has been answered, every request
  using the handle carries the definition again (concurrent requests,
  a lost request, a reordered one).  A server that lacks a definition
  anyway (restart, eviction) refuses the request before forwarding
  anything — 4.01 Token-Unbound, 4.00 Handle-Unknown — and the client sends
  it again with the definitions.

The token options (``options``): Access-Token = the handle (CBOR uint) and
the token's bytes, a definition; Token-Handle = the handle, a bare use
(absent: handle 0, the device's first token, so the common case costs
nothing); No-Token = the request has no token.

``ClientBinding.request(http)`` builds the CoAP request;
``ClientBinding.reply(...)`` says ``Resend`` or gives the client's
``HttpResponse``.  ``ServerBinding.resolve(request)`` gives ``Resolved``
(the HTTP request and the token to forward it with) or ``Refused`` (the
reply), and ``ServerBinding.after(...)`` learns from the homeserver's
answer: a refused token takes its definitions with it (only devices with
a valid account keep state), a successful logout retires its handle.  The
shells (``gateway``) only carry this out.  docs/protocol.md §8.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

import cbor2
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption, UintOption

from ..errors import CodecError, GatewayError
from . import column, options, timeline
from .mapping import (
    HttpRequest,
    HttpResponse,
    coap_to_request,
    coap_to_response,
    compact_route_name,
    request_to_coap,
)
from .profile import Profile
from .route_option import ClientWireState, HandleUnknown, Journal, RoomsNeeded, ServerWireState, key_scope

#: attempts one request may need: once with the token, once with
#: definitions, once more with a room in full when its digest did not match
MAX_ATTEMPTS = 4
#: token handles a server keeps per device (least recently used evicted)
MAX_TOKENS_PER_DEVICE = 16
#: longest access token accepted (Synapse's are ~40 characters)
MAX_TOKEN_LENGTH = 1024
#: the format of a device's stored state (DeviceState.to_json)
STATE_VERSION = 1
#: the homeserver's answers that say "this token is not valid"
TOKEN_REFUSED = frozenset({"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"})


def is_logout(target: str) -> bool:
    """Whether a request target is a client-server logout (``/logout`` or
    ``/logout/all`` under any version of ``/_matrix/client/``): after its
    200, the token it carried is dead."""
    path = target.partition("?")[0]
    segments = path.split("/")
    return (len(segments) in (5, 6) and segments[:3] == ["", "_matrix", "client"]
            and segments[4:] in (["logout"], ["logout", "all"]))


#: the client-server endpoints whose 2xx answer holds a new access token
TOKEN_ISSUING = frozenset({"login", "register", "refresh"})


def issues_token(method: str, target: str) -> bool:
    """Whether a request is a login, a registration or a token refresh
    (``POST /_matrix/client/<version>/login|register|refresh``): its answer
    may give the device a new access token, which the server gateway binds
    on the client's request (No-Token with a handle, docs/protocol.md §8a)."""
    segments = target.partition("?")[0].split("/")
    return (method == "POST" and len(segments) == 5 and segments[:3] == ["", "_matrix", "client"]
            and segments[4] in TOKEN_ISSUING)


def answer_token(body: bytes) -> str | None:
    """The ``access_token`` of a JSON answer, if it is one a definition could carry."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    token = doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH:
        return None
    return token if token.isascii() and token.isprintable() and " " not in token else None


def encode_token_definition(handle: int, token: str, packed: bool = False) -> bytes:
    """The Access-Token option value: the handle as a CBOR uint, then the
    token — with ``packed`` (a profile with the token column), a Synapse
    token as its column entry: 22 bytes instead of 39 for ``@alice``."""
    entry = column.token_entry(token) if packed else None
    return cbor2.dumps(handle) + (entry if entry is not None else token.encode("utf-8"))


def decode_token_definition(value: bytes) -> tuple[int, str]:
    """Inverse of ``encode_token_definition``; CodecError when malformed."""
    if not value or value[0] > 0x1B:  # major type 0 (uint) with at most an 8-byte argument
        raise CodecError("Access-Token does not start with a handle")
    size = 1 + {0x18: 1, 0x19: 2, 0x1A: 4, 0x1B: 8}.get(value[0], 0)
    handle = cbor2.loads(value[:size]) if len(value) >= size else None
    token = value[size:]
    if not isinstance(handle, int) or handle >= 1 << 32 or not token or len(token) > MAX_TOKEN_LENGTH:
        raise CodecError("Access-Token is a handle < 2^32 and a token of 1-1024 bytes")
    if token[0] < len(column.TOKEN_PREFIXES):  # a control character: no token's first, a packed one's kind
        return handle, column.read_token_entry(token)
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CodecError("an access token is ASCII") from exc
    if not text.isprintable() or " " in text:
        raise CodecError("an access token has no spaces or control characters")
    return handle, text


# ------------------------------------------------------------ client side


@dataclass
class Resend:
    """The server forwarded nothing: send the request again.  ``with_token``:
    the server holds no token for the handle (4.01 Token-Unbound); else it
    lacked a handle definition (4.00 Handle-Unknown)."""

    with_token: bool


@dataclass
class Attempt:
    """One request's way through resends (``ClientBinding.request/reply``)."""

    number: int = 0
    token_resent: bool = False
    #: the token handle the last request used, and whether it defined it
    token_handle: int | None = None
    token_defined: bool = False
    #: route definitions (handles, scope) the last request carried
    carried: set[int | str] = field(default_factory=set)
    #: the token handle reserved for the token a login's answer will hold
    bind_handle: int | None = None

    @property
    def exhausted(self) -> bool:
        return self.number >= MAX_ATTEMPTS


@dataclass
class ClientBindingCounters:
    #: requests that carried an access token (a definition) across the link
    token_sent: int = 0
    #: requests sent again with the token after Token-Unbound
    token_rebinds: int = 0
    #: requests sent again with definitions after Handle-Unknown
    handle_resends: int = 0


class ClientBinding:
    """The client gateway's half: its handles and what the server confirmed."""

    def __init__(self, profile: Profile, device_key: bytes | None = None, fresh_key: bool = False):
        """``device_key``: the device's static public key (secure mode): rooms
        may then be defined by digest; ``fresh_key``: the key was made for
        this state (no transaction was ever made under it), so the scope
        the key names is new and is used."""
        self.profile = profile
        self.device_key = device_key
        #: access token -> its handle (never renumbered; retired at logout)
        self.tokens: dict[str, int] = {}
        self.next_token_handle = 0
        #: token handles the server has confirmed
        self.confirmed_tokens: set[int] = set()
        #: handles and transaction IDs of the compact form (profile lb3)
        self.wire: ClientWireState | None = None
        if profile.schemas is not None:
            self.wire = ClientWireState(digest_key=device_key)
            if device_key is not None and fresh_key:
                self.wire.scope = key_scope(device_key)
        #: a profile with the token column (lb4) defines Synapse tokens packed
        self.packs_tokens = "token" in timeline.column_kinds(profile)
        self.counters = ClientBindingCounters()

    def to_json(self) -> str:
        """What a restarted client gateway needs to go on as before: its token
        handles and what the server confirmed, the compact form's handles, scope
        and transaction IDs (docs/operator.md: stored beside the key, 0600)."""
        doc: dict = {"v": STATE_VERSION, "tokens": sorted(self.tokens.items(), key=lambda kv: kv[1]),
                     "next_token_handle": self.next_token_handle, "confirmed_tokens": sorted(self.confirmed_tokens)}
        wire = self.wire
        if wire is not None:
            doc["wire"] = {"scope": wire.scope, "scope_confirmed": wire.scope_confirmed,
                           "full_rooms": sorted(wire.full_rooms),
                           "handles": [[k, v, h] for (k, v), h in wire.handles.items()],
                           "confirmed": sorted(wire.confirmed), "txns": list(wire.txns.items()),
                           "next_txn": wire.next_txn}
        return json.dumps(doc, separators=(",", ":"))

    def load_json(self, text: str) -> None:
        """Take back what ``to_json`` wrote; CodecError (and nothing changed) for
        anything else (the gateway then starts as a new device would)."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
                raise ValueError("unknown state version")
            tokens = {str(t): int(h) for t, h in doc["tokens"]}
            next_token_handle = int(doc["next_token_handle"])
            confirmed_tokens = {int(h) for h in doc["confirmed_tokens"]}
            wire = None
            if self.wire is not None and "wire" in doc:
                w = doc["wire"]
                wire = ClientWireState(scope=str(w["scope"]), scope_confirmed=bool(w["scope_confirmed"]),
                                       handles={(str(k), str(v)): int(h) for k, v, h in w["handles"]},
                                       confirmed={int(h) for h in w["confirmed"]}, next_txn=int(w["next_txn"]),
                                       digest_key=self.device_key, full_rooms={int(h) for h in w.get("full_rooms", ())})
                for raw, k in w["txns"]:
                    wire.txns[str(raw)] = int(k)
                    wire.originals[int(k)] = unquote(str(raw))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise CodecError(f"stored client state: {exc}") from None
        self.tokens, self.next_token_handle, self.confirmed_tokens = tokens, next_token_handle, confirmed_tokens
        if wire is not None:
            self.wire = wire

    def token_handle(self, token: str) -> int:
        handle = self.tokens.get(token)
        if handle is None:
            handle = self.tokens[token] = self.next_token_handle
            self.next_token_handle += 1
        return handle

    def request(self, http: HttpRequest, attempt: Attempt | None = None) -> Message:
        """The CoAP request for ``http`` (no remote set), token options included."""
        attempt = attempt or Attempt()
        attempt.number += 1
        attempt.carried = set()
        message = request_to_coap(http, self.profile, self.wire, attempt.carried)
        token = http.access_token
        attempt.token_handle, attempt.token_defined = None, False
        if token is None:
            if attempt.bind_handle is None and issues_token(http.method, http.target):
                # reserved now, so that no other token is given this number
                # while the login is under way (rule 1)
                attempt.bind_handle = self.next_token_handle
                self.next_token_handle += 1
            if attempt.bind_handle is None:
                message.opt.add_option(OpaqueOption(options.NO_TOKEN, b""))
            else:
                message.opt.add_option(UintOption(options.NO_TOKEN, attempt.bind_handle + 1))
            return message
        handle = attempt.token_handle = self.token_handle(token)
        if handle not in self.confirmed_tokens or attempt.token_resent:
            message.opt.add_option(OpaqueOption(options.ACCESS_TOKEN,
                                                encode_token_definition(handle, token, self.packs_tokens)))
            self.counters.token_sent += 1
            attempt.token_defined = True
        elif handle != 0:
            message.opt.add_option(UintOption(options.TOKEN_HANDLE, handle))
        return message

    def resend(self, reply: Message, attempt: Attempt) -> Resend | None:
        """Whether ``reply`` says "not forwarded, send it again", updating what
        this side believes the server holds; None: it is the answer (and
        the definitions the request carried are confirmed)."""
        if not attempt.exhausted:
            if (reply.code == Code.UNAUTHORIZED and reply.opt.get_option(options.TOKEN_UNBOUND)
                    and not attempt.token_resent):
                # the server has no token for this handle: nothing was forwarded
                self.counters.token_rebinds += 1
                self.confirmed_tokens.discard(attempt.token_handle)  # type: ignore[arg-type]
                attempt.token_resent = True
                return Resend(with_token=True)
            if reply.code == Code.BAD_REQUEST and reply.opt.get_option(options.HANDLE_UNKNOWN) and self.wire is not None:
                # the server lacks a handle definition: nothing was forwarded
                self.counters.handle_resends += 1
                self.wire.server_forgot(attempt.carried)
                return Resend(with_token=False)
        if not _refused(reply):
            # the server processed the request: what it defined is held
            if attempt.token_defined and attempt.token_handle is not None:
                self.confirmed_tokens.add(attempt.token_handle)
            if self.wire is not None:
                self.wire.confirm(attempt.carried)
        return None

    def response(self, http: HttpRequest, message: Message, reply: Message) -> HttpResponse:
        """The client's answer to ``http``, given the server's final ``reply``
        to ``message``."""
        response = coap_to_response(reply, self.profile, compact_route_name(message, self.profile))
        response = self.restore(response)
        bind = message.opt.get_option(options.NO_TOKEN)
        if bind and bind[0].value:
            self._learn_bound(_uint(bind[0].value) - 1, reply, response)
        token = http.access_token
        if token is not None:
            if response.status == 200 and is_logout(http.target):
                self._retire(token)  # the token is dead: its handle is never used again
            elif response.status == 401 and _errcode(response) in TOKEN_REFUSED and token in self.tokens:
                # the server keeps no definitions of a refused token: define it again if it is used again
                self.confirmed_tokens.discard(self.tokens[token])
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

    def _learn_bound(self, handle: int, reply: Message, response: HttpResponse) -> None:
        """A login asked the server to bind its answer's token as ``handle``:
        with Token-Bound the token is held (confirmed) under that handle."""
        if handle in self.tokens.values():
            return  # never two tokens on one handle, whatever a late reply says
        token = answer_token(response.body) if reply.opt.get_option(options.TOKEN_BOUND) else None
        if token is not None and token not in self.tokens:
            self.tokens[token] = handle
            self.confirmed_tokens.add(handle)
        elif token is None and self.next_token_handle == handle + 1:
            # the server bound nothing for the one request that carried the
            # number: the next token may have it (were the server to hold it
            # after all, e.g. it answered a retransmission again after a
            # restart, that token's first use defines the handle anew)
            self.next_token_handle = handle

    def _retire(self, token: str) -> None:
        handle = self.tokens.pop(token, None)
        if handle is not None:
            self.confirmed_tokens.discard(handle)


def _refused(reply: Message) -> bool:
    """A reply the server gateway made without processing the request."""
    return (reply.code == Code.UNAUTHORIZED and bool(reply.opt.get_option(options.TOKEN_UNBOUND))) or (
        reply.code == Code.BAD_REQUEST and bool(reply.opt.get_option(options.HANDLE_UNKNOWN)))


def _errcode(response: HttpResponse) -> str | None:
    """The ``errcode`` of a JSON answer, if it is a string (the body is the
    homeserver's, or on the client side the server gateway's: any JSON)."""
    try:
        doc = json.loads(response.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    errcode = doc.get("errcode") if isinstance(doc, dict) else None
    return errcode if isinstance(errcode, str) else None


# ------------------------------------------------------------ server side


@dataclass
class DeviceState:
    """What the server gateway keeps for one device across its sessions."""

    #: token handle -> access token, least recently used first
    tokens: OrderedDict[int, str] = field(default_factory=OrderedDict)
    wire: ServerWireState = field(default_factory=ServerWireState)

    def token_bytes(self) -> int:
        return sum(len(t) for t in self.tokens.values())

    def to_json(self) -> str:
        """What a restarted server gateway needs to serve the device as before
        (docs/operator.md says what is stored where): its token handles, its
        handles and its transaction scope."""
        return json.dumps({"v": STATE_VERSION, "tokens": list(self.tokens.items()),
                           "handles": list(self.wire.handles.items()), "scope": self.wire.scope},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DeviceState:
        """The state ``to_json`` wrote; CodecError for anything else (the device
        then defines everything again, as after a restart without a store)."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
                raise ValueError("unknown state version")
            state = cls()
            for handle, token in doc["tokens"][-MAX_TOKENS_PER_DEVICE:]:
                if type(handle) is not int or not isinstance(token, str):
                    raise ValueError("bad token entry")
                state.tokens[handle] = token
            for handle, value in doc["handles"]:
                if type(handle) is not int or not isinstance(value, str):
                    raise ValueError("bad handle entry")
                state.wire.define(handle, value)
            scope = doc["scope"]
            if scope is not None:
                if not isinstance(scope, str):
                    raise ValueError("bad scope")
                state.wire.define_scope(scope)
            return state
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise CodecError(f"stored device state: {exc}") from None


@dataclass
class Resolved:
    """A request the server gateway may forward, and the token to forward it with."""

    http: HttpRequest
    token: str | None
    #: the token handle used (None: No-Token)
    handle: int | None = None
    #: definitions this request made, to be taken back if its token is refused
    journal: Journal = field(default_factory=Journal)
    #: (handle, previous token) when this request defined a token handle
    token_defined: tuple[int, str | None] | None = None
    #: the handle under which to bind the access token of the answer (a login's No-Token)
    bind_as: int | None = None

    @property
    def redefined(self) -> bool:
        """A definition gave a handle a new value: the client lost its state,
        and sessions it had before belong to a dead instance."""
        return self.journal.changed or (self.token_defined is not None and self.token_defined[1] is not None
                                        and self.token_defined[1] != self.token)


@dataclass
class RoomsWanted:
    """The request defines a room by digest: resolve it again with the
    joined rooms of ``token``'s account (``GET …/joined_rooms``)."""

    token: str


@dataclass
class Refused:
    """A request answered without forwarding anything; ``reason`` for counters."""

    reply: Message
    reason: str  # "token_unbound" | "handle_unknown" | "malformed"


class ServerBinding:
    """The server gateway's half: per device (client static key; in
    plaintext mode, its address) its token handles and the compact form's
    definitions, least recently used first, at most ``max_devices``."""

    def __init__(self, profile: Profile, max_devices: int = 4096, *,
                 loader: Callable[[bytes], DeviceState | None] | None = None,
                 on_change: Callable[[bytes, DeviceState | None], None] | None = None):
        self.profile = profile
        self.max_devices = max_devices
        self.devices: OrderedDict[Hashable, DeviceState] = OrderedDict()
        #: secure session (aiocoap remote) -> device key
        self.device_keys: dict[Hashable, Hashable] = {}
        #: a store across restarts (the shell's): the state of a device (static
        #: key) not in the table, and each change of one (None: forgotten).
        #: Plaintext devices (keyed by address) are never stored.
        self.loader = loader
        self.on_change = on_change

    def _changed(self, key: Hashable, state: DeviceState | None) -> None:
        if self.on_change is not None and isinstance(key, bytes):
            self.on_change(key, state)

    def session_started(self, remote: Hashable, device_key: Hashable) -> None:
        """A secure session of the device with static key ``device_key``: its
        bound tokens and handles carry over from the device's earlier sessions."""
        self.device_keys[remote] = device_key

    def reset_device(self, device_key: Hashable) -> None:
        """The device started without its binding state (its handshake said
        UNBOUND, and the secure layer closed its older sessions): nothing it
        defined before may be used again."""
        self.devices.pop(device_key, None)
        self._changed(device_key, None)

    def forget_session(self, remote: Hashable) -> None:
        """The session is gone; the device's state stays (LRU-bounded).  A
        plaintext remote is its own device: its state goes with it."""
        if self.device_keys.pop(remote, None) is None:
            self.devices.pop(remote, None)

    def device_key(self, remote: Hashable) -> Hashable:
        return self.device_keys.get(remote, remote)

    def device(self, remote: Hashable) -> DeviceState:
        key = self.device_key(remote)
        state = self.devices.get(key)
        if state is None:
            loaded = self.loader(key) if self.loader is not None and isinstance(key, bytes) else None
            state = self.devices[key] = loaded if loaded is not None else DeviceState()
            # a secure device is its static public key: what key scopes and room digests are made from
            state.wire.device_key = key if isinstance(key, bytes) else None
            while len(self.devices) > self.max_devices:
                self.devices.popitem(last=False)
        else:
            self.devices.move_to_end(key)
        return state

    def resolve(self, request: Message, rooms: Sequence[str] | None = None) -> Resolved | Refused | RoomsWanted:
        """The HTTP request ``request`` stands for and its token, or the reply
        that refuses it.  Definitions it carries are bound on the way (and
        taken back by ``after`` if the homeserver refuses the token).
        ``RoomsWanted``: nothing was bound; call again with ``rooms``, the
        account's joined rooms (a room defined by digest is matched
        against them; none if the homeserver gave none)."""
        device = self.device(request.remote)
        try:
            token, handle, defined = self._token(request, device)
            bind_as = _bind_as(request)
        except CodecError as exc:
            return _malformed(exc)
        if handle is not None and token is None:
            # a handle the device never defined (or this server lost): ask
            # for the token and forward nothing
            reply = Message(code=Code.UNAUTHORIZED)
            reply.opt.add_option(OpaqueOption(options.TOKEN_UNBOUND, b""))
            return Refused(reply, "token_unbound")
        journal = Journal()
        try:
            try:
                http = coap_to_request(request, self.profile, device.wire, journal, () if token is None else rooms)
            except BaseException:
                # whatever refuses the request, definitions it made before
                # the refusal are taken back (nothing is forwarded)
                device.wire.undo(journal)
                raise
        except RoomsNeeded:
            assert token is not None
            return RoomsWanted(token)
        except HandleUnknown:
            reply = Message(code=Code.BAD_REQUEST)
            reply.opt.add_option(OpaqueOption(options.HANDLE_UNKNOWN, b""))
            return Refused(reply, "handle_unknown")
        except GatewayError as exc:
            return _malformed(exc)
        previous = None
        if defined:
            assert handle is not None and token is not None
            previous = device.tokens.get(handle)
            device.tokens[handle] = token
            device.tokens.move_to_end(handle)
            while len(device.tokens) > MAX_TOKENS_PER_DEVICE:
                device.tokens.popitem(last=False)
        elif handle is not None:
            device.tokens.move_to_end(handle)
        if (defined and previous != token) or journal.previous:
            self._changed(self.device_key(request.remote), device)
        return Resolved(http, token, handle, journal, (handle, previous) if defined else None,  # type: ignore[arg-type]
                        bind_as)

    def _token(self, request: Message, device: DeviceState) -> tuple[str | None, int | None, bool]:
        """(token, handle, defined here) of a request; (None, h, False) when
        handle h is unknown; (None, None, False) for No-Token."""
        given = request.opt.get_option(options.ACCESS_TOKEN)
        bare = request.opt.get_option(options.TOKEN_HANDLE)
        no_token = request.opt.get_option(options.NO_TOKEN)
        if len(given) + len(bare) + len(no_token) > 1:
            raise CodecError("a request has at most one of Access-Token, Token-Handle and No-Token")
        if given:
            handle, token = decode_token_definition(given[0].value)
            return token, handle, True
        if no_token:
            return None, None, False
        handle = _uint(bare[0].value) if bare else 0
        return device.tokens.get(handle), handle, False

    def after(self, request: Message, resolved: Resolved, response: HttpResponse) -> bool:
        """Learn from the homeserver's answer to a forwarded request.  True:
        the answer's access token was bound as the login asked (the answer
        then carries Token-Bound)."""
        device = self.device(request.remote)
        handle = resolved.handle
        if resolved.bind_as is not None and 200 <= response.status < 300:
            return self._bind_answer(request, device, resolved.bind_as, response)
        if response.status == 401 and resolved.token is not None and _errcode(response) in TOKEN_REFUSED:
            # not a valid account: keep nothing this request defined
            device.wire.undo(resolved.journal)
            if handle is not None and device.tokens.get(handle) == resolved.token:
                del device.tokens[handle]
                if resolved.token_defined is not None and resolved.token_defined[1] is not None:
                    device.tokens[handle] = resolved.token_defined[1]
            self._changed(self.device_key(request.remote), device)
        elif response.status == 200 and handle is not None and is_logout(resolved.http.target):
            # the token is dead: its handle is retired
            if device.tokens.get(handle) == resolved.token:
                del device.tokens[handle]
                self._changed(self.device_key(request.remote), device)
        return False

    def _bind_answer(self, request: Message, device: DeviceState, handle: int, response: HttpResponse) -> bool:
        token = answer_token(response.body)
        if token is None:
            return False
        held = device.tokens.get(handle)
        if held is not None and held != token:
            return False  # a handle never changes meaning (rule 1): the client defines it itself
        device.tokens[handle] = token
        device.tokens.move_to_end(handle)
        while len(device.tokens) > MAX_TOKENS_PER_DEVICE:
            device.tokens.popitem(last=False)
        if held is None:
            self._changed(self.device_key(request.remote), device)
        return True

    def sizes(self) -> dict[str, int]:
        """What the table holds (tests assert it against the limits)."""
        return {
            "devices": len(self.devices),
            "tokens": sum(len(d.tokens) for d in self.devices.values()),
            "token_bytes": sum(d.token_bytes() for d in self.devices.values()),
            "handles": sum(len(d.wire.handles) for d in self.devices.values()),
            "handle_bytes": sum(d.wire.bytes for d in self.devices.values()),
        }


def _uint(value: bytes | int) -> int:
    """A CoAP uint option value (aiocoap hands unknown options over as bytes)."""
    if isinstance(value, int):
        return value
    if len(value) > 4:
        raise CodecError("Token-Handle is a uint of at most 4 bytes")
    return int.from_bytes(value, "big")


def _bind_as(request: Message) -> int | None:
    """The handle a login's No-Token asks the answer's token to be bound as."""
    no_token = request.opt.get_option(options.NO_TOKEN)
    value = _uint(no_token[0].value) if no_token else 0
    if value > 1 << 32:
        raise CodecError("No-Token names a handle beyond 2^32")
    return value - 1 if value else None


def _malformed(exc: Exception) -> Refused:
    # a diagnostic text says so (Content-Format 0): without the option a
    # payload means deflated CBOR (docs/protocol.md §5.1)
    reply = Message(code=Code.BAD_REQUEST, payload=str(exc).encode()[:200])
    reply.opt.content_format = options.CF_TEXT_PLAIN
    return Refused(reply, "malformed")


__all__ = [
    "MAX_TOKENS_PER_DEVICE",
    "Attempt",
    "ClientBinding",
    "ClientBindingCounters",
    "DeviceState",
    "Refused",
    "Resend",
    "Resolved",
    "RoomsWanted",
    "ServerBinding",
    "decode_token_definition",
    "answer_token",
    "encode_token_definition",
    "is_logout",
    "issues_token",
]
