"""The Route option: a request line in a few bytes (sans-I/O).

In the compact form (profile lb3, docs/protocol.md "Compact requests") a
request to a known endpoint carries, instead of Uri-Path options, one
private option whose value is a CBOR sequence: the route's option code
(0–23: the schema table's short routes, one byte; else 24 + its route
table code), then one item per template parameter, in order.  How a parameter travels depends on
its kind (``dictionaries/schemas-v1.json``):

=============  ==========================================================
any kind       text: the raw path segment, exactly as the client sent it
room, user     uint h: handle h of this session; [h, value]: define h
               (value as text, or for a room ID of room version 12 the
               32 bytes of "!" + URL-safe base64) and use it; for a room,
               [h, bytes(4)]: define h as the one room the account has
               joined whose keyed digest (``room_digest``) these are
room           bytes(32): "!" + URL-safe base64 of them, no handle
event_id       bytes(32): "$" + URL-safe base64 of them (room v4+)
event_type     uint c: the event type of code c in the CBOR table's "type"
               values; on message routes, negative −1 − (2·m + r): the
               message event type, and the payload is the bare body text
               of msgtype code m, deflated (r = 0) or raw (r = 1)
txn            uint k: transaction k of the session's scope, i.e. the
               homeserver sees ``<scope>.<k>``; [k, scope]: set the scope;
               [k]: set the scope the device's static key names (``key_scope``)
=============  ==========================================================

On a message route whose event type is ``m.room.encrypted``, one item may
follow the parameters: the body's *template*, uint h (handle h) or [h,
CBOR of the template] (define it).  The template is the body with its
ciphertext emptied (``"ciphertext":""``), so everything but the ciphertext
— algorithm, sender key, device, session: the same for every message of a
Megolm session — crosses once, and the payload is the ciphertext's bytes.
Templates are handles of their own kind in the same number space.

Handles are the client gateway's: it numbers the values it meets from 0,
never renumbers one, and defines a handle in the first request of a
session that uses it.  A handle or scope the server's session does not
know (a new session) is not guessed at: the request is refused with
4.00 + Handle-Unknown before anything is forwarded, and the client sends it
again with definitions.  Because a number never changes meaning for the
client, a late or repeated definition is always harmless.

The transaction scope makes the homeserver's transaction IDs unique per
client gateway and stable across sessions, so a client retrying the same
transaction after a session change still reaches the same Synapse
transaction (exactly once).  The client gateway maps ``<scope>.<k>`` back
to the client's own ID in responses (``restore_txn_ids``).

A new device's first request defines everything at once, so two of its
definitions have short forms that both sides compute from the device's
static public key instead of carrying the value (secure mode only):
the scope of a device whose key is new (no transaction was ever made under
it) is ``key_scope(key)``, and a room the account has joined is named by
4 bytes of a digest keyed with the device's key, which the server matches
against the account's joined rooms (a homeserver request, ``RoomsNeeded``).
The key makes the digest unpredictable to anyone who would make a room
collide with another on purpose; a digest that matches no room or two is
Handle-Unknown, and the client then defines the room in full.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import cbor2

from ..errors import CodecError, RouteError
from . import json_cbor, routes
from .routes import RouteTable, Template
from .schemas import EVENT_ID, EVENT_TYPE, HANDLE_KINDS, ROOM, TXN, SchemaTable
from .tables import CborTable

#: longest Route option value accepted (a literal segment may be long)
MAX_VALUE = 2048
#: handles one side keeps; past that, values travel literally
MAX_HANDLES = 1024
#: client transaction IDs remembered (for retries and for restoring responses)
MAX_TXNS = 4096
#: characters of handle values a server keeps per device (~350 room IDs)
MAX_DEFINITION_BYTES = 16 << 10
#: size of a room or event ID's hash in the binary forms
ID_BYTES = 32
#: what ``carried`` holds for a transaction scope definition
SCOPE = "scope"
#: the encrypted schema: the event type it applies to, the handle kind of
#: its templates, and the template's empty ciphertext
ENCRYPTED_EVENT_TYPE = "m.room.encrypted"
TEMPLATE = "template"
CIPHERTEXT_SLOT = b'"ciphertext":""'
#: bytes of a room digest on the wire; digests of 4 to 16 bytes are read
ROOM_DIGEST_BYTES = 4
MIN_ROOM_DIGEST, MAX_ROOM_DIGEST = 4, 16
#: BLAKE2s personalisations of the two key-derived values
_SCOPE_PERSON, _ROOM_PERSON = b"lb-scope", b"lb-room"


class HandleUnknown(CodecError):
    """The request uses a handle or txn scope this session was never given."""


class RoomsNeeded(CodecError):
    """A room digest is defined: decode again with the account's joined rooms."""


# ------------------------------------------------------------ session state


def new_scope() -> str:
    """A transaction scope: 'lb' + 8 base32 characters (40 random bits)."""
    return "lb" + base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


def key_scope(device_key: bytes) -> str:
    """The transaction scope a device's static public key names: 'lb' + 8
    base32 characters of its BLAKE2s digest (personalised ``lb-scope``).
    Only a device whose key is new may use it: its transactions are then
    the first ever made under the scope."""
    digest = hashlib.blake2s(device_key, digest_size=5, person=_SCOPE_PERSON).digest()
    return "lb" + base64.b32encode(digest).decode("ascii").lower()


def room_digest(device_key: bytes, room_id: str, size: int = ROOM_DIGEST_BYTES) -> bytes:
    """``size`` bytes of BLAKE2s over the room ID's UTF-8, keyed with the
    device's static public key (personalised ``lb-room``)."""
    return hashlib.blake2s(room_id.encode("utf-8"), digest_size=size, key=device_key, person=_ROOM_PERSON).digest()


@dataclass
class ClientWireState:
    """What the client gateway's encoder remembers, for its whole life."""

    scope: str = field(default_factory=new_scope)
    handles: dict[tuple[str, str], int] = field(default_factory=dict)
    #: handles whose definition the server has confirmed (answered a request
    #: that carried it); every other use carries the definition again, so a
    #: bare handle never reaches a server that lacks it or holds another value
    confirmed: set[int] = field(default_factory=set)
    scope_confirmed: bool = False
    #: raw txn segment -> k, oldest first
    txns: OrderedDict[str, int] = field(default_factory=OrderedDict)
    #: k -> the client's own transaction ID (decoded), to restore responses
    originals: dict[int, str] = field(default_factory=dict)
    next_txn: int = 0
    #: the device's static public key (secure mode): rooms may be defined by
    #: digest, and the scope, when it is the key's, as [k]
    digest_key: bytes | None = None
    #: room handles whose last definition went as a digest, and those whose
    #: digest the server could not match: they are defined in full from then on
    digested: set[int] = field(default_factory=set)
    full_rooms: set[int] = field(default_factory=set)

    @property
    def scope_from_key(self) -> bool:
        """The scope is the one the device's key names (``key_scope``)."""
        return self.digest_key is not None and self.scope == key_scope(self.digest_key)

    def server_forgot(self, carried: Iterable[int | str] = ()) -> None:
        """The server lost our definitions (or could not match a digest that
        ``carried`` held): send them again, rooms of a failed digest in full."""
        self.full_rooms.update(h for h in carried if isinstance(h, int) and h in self.digested)
        self.confirmed.clear()
        self.scope_confirmed = False

    def confirm(self, carried: set[int | str]) -> None:
        """The server processed a request carrying these definitions
        (handles, and ``SCOPE`` for the transaction scope)."""
        self.confirmed.update(h for h in carried if isinstance(h, int))
        if SCOPE in carried:
            self.scope_confirmed = True

    def handle_for(self, kind: str, value: str) -> tuple[int | None, bool]:
        """(handle, needs definition); handle None when the table is full."""
        key = (kind, value)
        handle = self.handles.get(key)
        if handle is None:
            if len(self.handles) >= MAX_HANDLES:
                return None, False
            handle = self.handles[key] = len(self.handles)
        return handle, handle not in self.confirmed

    def txn_for(self, raw: str) -> int:
        k = self.txns.get(raw)
        if k is None:
            k = self.next_txn
            self.next_txn += 1
            self.txns[raw] = k
            self.originals[k] = unquote(raw)
            while len(self.txns) > MAX_TXNS:
                _, old = self.txns.popitem(last=False)
                self.originals.pop(old, None)
        else:
            self.txns.move_to_end(raw)
        return k

    def restore_txn_ids(self, body: bytes) -> bytes:
        """``body`` (JSON) with ``"<scope>.<k>"`` strings put back as the client's IDs."""
        marker = self.scope.encode("ascii")
        if marker not in body:
            return body
        pattern = re.compile(rb'"' + re.escape(marker) + rb'\.(\d{1,18})"')

        def original(match: re.Match[bytes]) -> bytes:
            own = self.originals.get(int(match.group(1)))
            return match.group(0) if own is None else json.dumps(own, ensure_ascii=False).encode("utf-8")

        return pattern.sub(original, body)


@dataclass
class Journal:
    """What one request's definitions changed in a ``ServerWireState``, so
    they can be taken back (the homeserver refused the request's token:
    definitions are kept only for a device with a valid account), and
    whether one *changed* a value (a client that lost its state)."""

    previous: list[tuple[int | str, str | None]] = field(default_factory=list)
    changed: bool = False


class ServerWireState:
    """One device's handles and transaction scope, on the server gateway.

    Bounded: at most ``max_handles`` definitions and ``max_bytes`` of their
    values, least recently used evicted first.  Evicting is always safe: a
    handle is only ever given one value by its client, which answers
    Handle-Unknown by defining it again.
    """

    def __init__(self, max_handles: int = MAX_HANDLES, max_bytes: int = MAX_DEFINITION_BYTES):
        self.handles: OrderedDict[int, str] = OrderedDict()
        self.scope: str | None = None
        #: the device's static public key (secure mode): what its key scope
        #: and room digests are computed from
        self.device_key: bytes | None = None
        self.max_handles = max_handles
        self.max_bytes = max_bytes
        self.bytes = 0

    def lookup(self, handle: int) -> str | None:
        value = self.handles.get(handle)
        if value is not None:
            self.handles.move_to_end(handle)
        return value

    def define(self, handle: int, value: str, journal: Journal | None = None) -> None:
        old = self.handles.get(handle)
        if old == value:
            self.handles.move_to_end(handle)
            return
        if journal is not None:
            journal.previous.append((handle, old))
            journal.changed |= old is not None
        self._put(handle, value)

    def define_scope(self, scope: str, journal: Journal | None = None) -> None:
        if scope == self.scope:
            return
        if journal is not None:
            journal.previous.append((SCOPE, self.scope))
            journal.changed |= self.scope is not None
        self.scope = scope

    def undo(self, journal: Journal) -> None:
        for key, old in reversed(journal.previous):
            if key == SCOPE:
                self.scope = old
            elif old is None:
                self._drop(key)  # type: ignore[arg-type]
            else:
                self._put(key, old)  # type: ignore[arg-type]
        journal.previous.clear()

    def _put(self, handle: int, value: str) -> None:
        self._drop(handle)
        self.handles[handle] = value
        self.bytes += len(value)
        while len(self.handles) > self.max_handles or self.bytes > self.max_bytes:
            self._drop(next(iter(self.handles)))

    def _drop(self, handle: int) -> None:
        value = self.handles.pop(handle, None)
        if value is not None:
            self.bytes -= len(value)


# ----------------------------------------------------------------- encoding


@dataclass(frozen=True)
class MessageBody:
    """A message body that travels as bare text (the message schema)."""

    msgtype_code: int
    text: bytes  # UTF-8
    deflated: bool


@dataclass(frozen=True)
class EncryptedBody:
    """An ``m.room.encrypted`` body that travels as its template's handle
    and its ciphertext's bytes (the encrypted schema)."""

    template: bytes  # the body's JSON with "ciphertext":""
    template_cbor: bytes  # the template as it is defined on the wire
    ciphertext: bytes  # raw (the body has it as unpadded standard base64)


def encrypted_body(body: bytes, cbor_table: CborTable) -> EncryptedBody | None:
    """The encrypted schema of a request body, when rebuilding it from the
    template and the ciphertext gives back exactly these bytes."""
    try:
        doc = json_cbor.parse_json(body)
    except CodecError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("ciphertext"), str):
        return None
    binary = json_cbor.string_to_binary(doc["ciphertext"])
    if binary is None or binary[0] != json_cbor.MARK_BASE64:
        return None
    doc["ciphertext"] = ""
    try:
        template = json_cbor.dump_json(doc)
        template_cbor = json_cbor.encode(doc, cbor_table, canonical=False)
        back = json_cbor.dump_json(json_cbor.decode(template_cbor, cbor_table, ordered=True))
    except CodecError:
        return None
    ciphertext = binary[1:]
    if back != template or fill_template(template, ciphertext) != body:
        return None
    return EncryptedBody(template, template_cbor, ciphertext)


def fill_template(template: bytes, ciphertext: bytes) -> bytes:
    """The body a template and a ciphertext stand for."""
    text = base64.b64encode(ciphertext).rstrip(b"=")
    return template.replace(CIPHERTEXT_SLOT, b'"ciphertext":"' + text + b'"', 1)


def _template_text(data: Any, cbor_table: CborTable) -> str:
    """A template definition's JSON, checked: an object whose ciphertext is empty."""
    if not isinstance(data, bytes):
        raise RouteError("a template definition is [handle, CBOR bytes]")
    try:
        doc = json_cbor.decode(data, cbor_table, ordered=True)
        text = json_cbor.dump_json(doc)
    except CodecError as exc:
        raise RouteError(f"template: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("ciphertext") != "" or text.count(CIPHERTEXT_SLOT) != 1:
        raise RouteError("a template is an object with an empty ciphertext")
    return text.decode("utf-8")


def binary_id(text: str, prefix: str) -> bytes | None:
    """32 bytes when ``text`` is prefix + exact unpadded URL-safe base64 of 32 bytes."""
    if len(text) != 44 or not text.startswith(prefix):
        return None
    binary = json_cbor.string_to_binary(text)
    expected = json_cbor.MARK_ROOM_ID_URL if prefix == "!" else json_cbor.MARK_EVENT_ID_URL
    if binary is None or binary[0] != expected or len(binary) != 1 + ID_BYTES:
        return None
    return binary[1:]


def _literal(kind: str, raw: str) -> str | bytes:
    if kind == ROOM:
        return binary_id(raw, "!") or raw
    if kind == EVENT_ID:
        return binary_id(raw, "$") or raw
    return raw


def _encode_param(kind: str | None, raw: str, state: ClientWireState, cbor_table: CborTable,
                  carried: set[int | str], joined: bool = False) -> Any:
    if kind in HANDLE_KINDS:
        handle, define = state.handle_for(kind, raw)
        if handle is None:
            return _literal(kind, raw)
        if define:
            carried.add(handle)
            if kind == ROOM and joined and state.digest_key is not None and handle not in state.full_rooms:
                state.digested.add(handle)
                return [handle, room_digest(state.digest_key, unquote(raw))]
            state.digested.discard(handle)
            return [handle, _literal(kind, raw)]
        return handle
    if kind == EVENT_TYPE:
        code = cbor_table.value_codes.get("type", {}).get(raw)
        return raw if code is None else code
    if kind == TXN and "%" not in raw:
        k = state.txn_for(raw)
        if not state.scope_confirmed:
            carried.add(SCOPE)
            return [k] if state.scope_from_key else [k, state.scope]
        return k
    if kind is not None:
        return _literal(kind, raw)
    return raw


def event_type_param(template: Template, params: list[str], schemas: SchemaTable) -> str | None:
    """The raw event-type parameter of a request line, if its route has one."""
    for name, raw in zip(_param_names(template), params):
        if schemas.param_kinds.get(name) == EVENT_TYPE:
            return raw
    return None


def message_param(body: MessageBody) -> int:
    """The event-type item that says "message event, bare text payload"."""
    return -1 - (2 * body.msgtype_code + (0 if body.deflated else 1))


def encode_route(template: Template, params: list[str], schemas: SchemaTable, cbor_table: CborTable,
                 state: ClientWireState, message: MessageBody | None = None,
                 carried: set[int | str] | None = None, encrypted: tuple[int, EncryptedBody] | None = None) -> bytes:
    """The Route option value for ``template`` with raw ``params``; the
    definitions it carries are added to ``carried`` (confirm them with
    ``ClientWireState.confirm`` once the server answered).  ``encrypted``:
    (the template's handle, the body) for the encrypted schema.

    A room is defined by digest only on message routes: a client sends
    only to rooms it has joined, so the digest matches (elsewhere — a join,
    an invite the account accepts — it may well not)."""
    carried = set() if carried is None else carried
    items: list[Any] = [option_code(template, schemas)]
    names = _param_names(template)
    joined = template.name in schemas.message_routes
    for name, raw in zip(names, params):
        kind = schemas.param_kinds.get(name)
        if message is not None and kind == EVENT_TYPE:
            items.append(message_param(message))
        else:
            items.append(_encode_param(kind, raw, state, cbor_table, carried, joined))
    if encrypted is not None:
        handle, body = encrypted
        if handle in state.confirmed:
            items.append(handle)
        else:
            carried.add(handle)
            items.append([handle, body.template_cbor])
    value = b"".join(cbor2.dumps(item) for item in items)
    if len(value) > MAX_VALUE:
        raise RouteError(f"Route option of {len(value)} bytes exceeds {MAX_VALUE}")
    return value


#: Route-option codes below this stand for the schema table's short routes
SHORT_CODES = 24


def option_code(template: Template, schemas: SchemaTable) -> int:
    """A route's code in the Route option: its index among the short routes
    (one CBOR byte), else 24 + its route table code."""
    try:
        return schemas.short_routes.index(template.name)
    except ValueError:
        return SHORT_CODES + template.code


def template_for(code: int, table: RouteTable, schemas: SchemaTable) -> Template | None:
    if code < SHORT_CODES:
        if code >= len(schemas.short_routes):
            return None
        return table.by_name.get(schemas.short_routes[code])
    return table.by_code.get(code - SHORT_CODES)


def _param_names(template: Template) -> list[str]:
    return [seg[1:-1] for seg in template.template[1:].split("/") if seg.startswith("{")]


# ----------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodedRoute:
    template: Template
    params: list[str]
    #: (msgtype code, deflated) when the payload is a bare message text
    message: tuple[int, bool] | None = None
    #: the template, when the payload is an encrypted body's ciphertext
    encrypted_template: bytes | None = None


def _items(value: bytes) -> list[Any]:
    if not value or len(value) > MAX_VALUE:
        raise RouteError(f"Route option of {len(value)} bytes")
    stream = io.BytesIO(value)
    decoder = json_cbor.strict_decoder(stream, max_depth=3)
    items = []
    try:
        while stream.tell() < len(value):
            items.append(decoder.decode())
            if len(items) > 32:
                raise RouteError("Route option with more than 32 items")
    except CodecError as exc:
        raise RouteError(str(exc)) from exc
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, CodecError) else exc  # a tag: cbor2 wraps our refusal
        raise RouteError(f"Route option is not a CBOR sequence: {cause}") from exc
    return items


def route_code(value: bytes) -> int | None:
    """The Route-option code a value starts with (None if it does not)."""
    try:
        code = cbor2.loads(value[: 1 + 8]) if value and value[0] < 0x1C else None
    except (cbor2.CBORDecodeError, ValueError, EOFError):
        return None
    return code if _is_uint(code) else None


def _text_form(kind: str | None, item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes) and len(item) == ID_BYTES and kind in (ROOM, EVENT_ID):
        return ("!" if kind == ROOM else "$") + base64.urlsafe_b64encode(item).decode("ascii").rstrip("=")
    raise RouteError(f"a {kind or 'text'} parameter cannot be {type(item).__name__} of this form")


def _is_uint(item: Any) -> bool:
    return type(item) is int and 0 <= item < 1 << 32


def _match_digest(digest: bytes, state: ServerWireState, rooms: Sequence[str] | None) -> str:
    """The one joined room whose digest under the device's key is ``digest``."""
    if state.device_key is None:
        raise RouteError("a room digest needs a secure session (the device's static key)")
    if rooms is None:
        raise RoomsNeeded("a room digest: the account's joined rooms are needed")
    found = [room for room in rooms if room_digest(state.device_key, room, len(digest)) == digest]
    if len(found) != 1:
        raise HandleUnknown(f"a room digest matches {len(found)} joined rooms")
    # a path segment, as a client writes the ID (RFC 3986 pchar kept)
    return quote(found[0], safe="!$&'()*+,;=:@")


def _decode_param(kind: str | None, item: Any, state: ServerWireState, cbor_table: CborTable,
                  journal: Journal | None, rooms: Sequence[str] | None = None) -> str:
    if kind in HANDLE_KINDS and type(item) in (int, list):
        if isinstance(item, list):
            if len(item) != 2 or not _is_uint(item[0]) or item[0] >= MAX_HANDLES:
                raise RouteError("a handle definition is [handle < 1024, value]")
            if kind == ROOM and isinstance(item[1], bytes) and MIN_ROOM_DIGEST <= len(item[1]) <= MAX_ROOM_DIGEST:
                value = _match_digest(item[1], state, rooms)
            else:
                value = _text_form(kind, item[1])
            state.define(item[0], value, journal)
            return value
        if not _is_uint(item):
            raise RouteError(f"handle {json_cbor.short_repr(item)} is not an unsigned integer")
        value = state.lookup(item)
        if value is None:
            raise HandleUnknown(f"handle {item} is not defined for this device")
        return value
    if kind == EVENT_TYPE and type(item) is int:
        name = cbor_table.value_names.get("type", {}).get(item) if item >= 0 else None
        if name is None:
            raise RouteError(f"event type code {json_cbor.short_repr(item)} is not in table v{cbor_table.version}")
        return name
    if kind == TXN and type(item) in (int, list):
        if isinstance(item, list) and len(item) == 1:
            if state.device_key is None:
                raise RouteError("a key's scope [k] needs a secure session (the device's static key)")
            state.define_scope(key_scope(state.device_key), journal)
            item = item[0]
        elif isinstance(item, list):
            if len(item) != 2 or not isinstance(item[1], str) or not re.fullmatch(r"[a-z0-9]{1,32}", item[1]):
                raise RouteError("a txn scope definition is [k, scope of 1-32 a-z0-9] or [k]")
            state.define_scope(item[1], journal)
            item = item[0]
        if not _is_uint(item):
            raise RouteError(f"transaction {json_cbor.short_repr(item)} is not an unsigned integer")
        if state.scope is None:
            raise HandleUnknown("no transaction scope for this device")
        return f"{state.scope}.{item}"
    return _text_form(kind, item)


def decode_route(value: bytes, table: RouteTable, schemas: SchemaTable, cbor_table: CborTable,
                 state: ServerWireState, journal: Journal | None = None,
                 rooms: Sequence[str] | None = None) -> DecodedRoute:
    """Template and raw parameters of a Route option; HandleUnknown or
    RouteError.  ``rooms``: the account's joined rooms, to match a room
    digest against (None: RoomsNeeded when one is met)."""
    items = _items(value)
    code = items[0]
    if not _is_uint(code):
        raise RouteError("the Route option does not start with a route code")
    template = template_for(code, table, schemas)
    if template is None:
        raise RouteError(f"unknown Route option code {code} (route table v{table.version})")
    names = _param_names(template)
    extra = len(items) - 1 - len(names)
    if extra not in (0, 1) or (extra and not _encrypted_send(template, names, items, schemas, cbor_table)):
        raise RouteError(f"route {template.name} takes {len(names)} parameters, got {len(items) - 1}")
    params: list[str] = []
    message = None
    for name, item in zip(names, items[1:]):
        kind = schemas.param_kinds.get(name)
        if kind == EVENT_TYPE and type(item) is int and item < 0:
            if template.name not in schemas.message_routes or item < -64:
                raise RouteError(f"message schema {json_cbor.short_repr(item)} on route {template.name}")
            m, raw = divmod(-1 - item, 2)
            if m not in cbor_table.value_names.get("msgtype", {}):
                raise RouteError(f"msgtype code {m} is not in table v{cbor_table.version}")
            message = (m, raw == 0)
            params.append(schemas.message_event_type)
            continue
        params.append(routes.check_segment(_decode_param(kind, item, state, cbor_table, journal, rooms)))
    encrypted = _decode_template(items[-1], state, cbor_table, journal) if extra else None
    return DecodedRoute(template, params, message, encrypted)


def _encrypted_send(template: Template, names: list[str], items: list[Any], schemas: SchemaTable,
                    cbor_table: CborTable) -> bool:
    """Whether a Route option names a message route with the event type
    m.room.encrypted (the one place a body template may follow)."""
    kinds = [schemas.param_kinds.get(name) for name in names]
    if template.name not in schemas.message_routes or EVENT_TYPE not in kinds:
        return False
    item = items[1 + kinds.index(EVENT_TYPE)]
    code = cbor_table.value_codes.get("type", {}).get(ENCRYPTED_EVENT_TYPE)
    return item == ENCRYPTED_EVENT_TYPE if isinstance(item, str) else (type(item) is int and item == code)


def _decode_template(item: Any, state: ServerWireState, cbor_table: CborTable, journal: Journal | None) -> bytes:
    if isinstance(item, list):
        if len(item) != 2 or not _is_uint(item[0]) or item[0] >= MAX_HANDLES:
            raise RouteError("a template definition is [handle < 1024, CBOR bytes]")
        text = _template_text(item[1], cbor_table)
        state.define(item[0], text, journal)
        return text.encode("utf-8")
    if not _is_uint(item):
        raise RouteError(f"template handle {json_cbor.short_repr(item)} is not an unsigned integer")
    value = state.lookup(item)
    if value is None:
        raise HandleUnknown(f"handle {item} is not defined for this device")
    text = value.encode("utf-8")
    if not text.startswith(b"{") or text.count(CIPHERTEXT_SLOT) != 1:
        raise RouteError(f"handle {item} is not a body template")
    return text
