"""Sync push: the wire format both gateways share (sans-I/O).

Instead of sending every ``/sync`` long-poll across the link, the client
gateway registers a CoAP observation (RFC 7641) once; the server gateway
then runs the long-poll loop against the homeserver itself and pushes only
what changed.  This module holds what both ends must agree on, byte for
byte (docs/protocol.md, "Sync push"):

* which requests are push-eligible long-polls — ``/sync`` and sliding
  sync's, each a ``PollKind`` — and what names a *stream*
  (``parse_long_poll``);
* the empty-response *template*: Synapse's answer to an idle long-poll with
  its ``next_batch`` taken out, so the client gateway can answer idle polls
  itself (``split_next_batch``, ``expand_template``, ``is_empty_sync``);
* the notification payload: a header byte only when needed, then raw
  deflate of the body under a per-stream dictionary — the profile's preset
  dictionary, the last bodies pushed on this stream, and the ``since``
  token being answered (``DeltaState``, ``encode_notification``,
  ``decode_notification``).  Consecutive sync responses share room IDs,
  user IDs, token prefixes and structure, so the dictionary carries them;
* a payload longer than a frame, in parts (``split_parts``, ``PartBuffer``)
  for a client that registered with Push-Parts (``offer_parts``).

The body travels as CBOR (the profile's table) *in the homeserver's key
order*, and only when decoding it gives back the exact bytes the homeserver
sent; otherwise as the JSON itself.  So the client receives precisely the
JSON the homeserver produced.
"""

from __future__ import annotations

import copy
import json
import re
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from ..codec import (
    MAX_DICTIONARY_SIZE,
    CborTable,
    Profile,
    RouteTable,
    compress,
    decompress,
    json_cbor,
    options,
)
from ..errors import CodecError, GatewayError
from .compact import decode_event, encode_event
from .echo import COUNT_KEYS, EchoContext

JSON = "application/json"

#: Observe numbers are 24 bits (RFC 7641 §3.4)
OBSERVE_MODULUS = 1 << 24
#: the Observe number of a registration's first response, and only of it:
#: the notification that starts an observation's delta chain
FIRST_OBSERVE = 0

#: routes whose long-polls are pushed (client API v3 and r0)
SYNC_ROUTES = frozenset({"client.sync", "client.r0.sync"})
#: sliding sync (MSC4186, Element X's only sync): a POST that long-polls
SLIDING_ROUTES = frozenset({"client.unstable.simplified_sliding_sync"})

#: a since/next_batch token that needs no escaping in a URL or in JSON
#: (Synapse's are ``s12_3_0_…``); anything else is left to plain polling
TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,255}\Z")
#: a sliding-sync ``pos`` (Synapse's are ``1/s12_3_0_…``): the same, and
#: ``/``, which a query writes as ``%2F`` (or, legally, as it is)
POS_TOKEN = re.compile(r"[A-Za-z0-9._~/-]{1,255}\Z")
#: the longest sliding-sync request body pushed (it names the stream and
#: rides in the registration; a longer one is polled plainly)
MAX_POLL_BODY = 16 << 10

#: a pushed body expands to at most this (deflate bomb cap)
MAX_PUSH_BODY = 4 << 20
#: the longest notification payload pushed in parts (to a client that
#: registered with Push-Parts); a longer one is fetched plainly (END_FETCH).
#: Also what a client buffers per stream at most while parts come in.
MAX_PARTED = 64 << 10

#: control operations (value byte 0 of the Sync-Push option on a request;
#: the rest of the value is the observation's CoAP token)
OP_CHECK = 1  # is this observation still alive?  2.03 Valid / 4.04 Not Found
OP_CANCEL = 2  # end this observation (the server stops its loop); 2.02 Deleted
#: controls on a final response (no Observe) that ends an observation
END_FETCH = 1  # the answer is too large to push: send the long-poll as a plain request
END_CLOSED = 2  # the server ended the observation (limits, shutdown): register again if needed
END_RESEND = 3  # a delta body the server cannot read: register again without Push-Continue


def control_request(op: int, token: bytes) -> Message:
    """A check or cancel of the observation registered with CoAP ``token``."""
    message = Message(code=Code.GET)
    message.opt.add_option(OpaqueOption(options.SYNC_PUSH, bytes([op]) + token))
    return message


def parse_control(message: Message) -> tuple[int, bytes] | None:
    """``(op or end code, token)`` of a message's Sync-Push option; None without one."""
    control = message.opt.get_option(options.SYNC_PUSH)
    if not control:
        return None
    value = control[0].value
    return (value[0], bytes(value[1:])) if value else (0, b"")


def is_push_request(request: Message) -> bool:
    """A request sync push serves: a control request, or a GET (sync) or
    FETCH (sliding sync) registering an observation."""
    return bool(request.opt.get_option(options.SYNC_PUSH)) or (
        request.opt.observe == 0 and request.code in (Code.GET, Code.FETCH))


def offer_parts(registration: Message) -> None:
    """Mark a registration: its client reassembles notifications sent in parts."""
    registration.opt.add_option(OpaqueOption(options.PUSH_PARTS, b""))


def accepts_parts(registration: Message) -> bool:
    """Whether a registration's client reassembles notifications sent in parts."""
    return bool(registration.opt.get_option(options.PUSH_PARTS))


#: Push-Continue flag: the payload is deflated against the replaced
#: observation's request body, and the CRC-32 of its CBOR follows the number
CONTINUE_DELTA = 0x01


@dataclass(frozen=True)
class ContinueOffer:
    """A registration's Push-Continue: the Observe number of the last
    notification the client took of the observation registered with CoAP
    ``token``; ``crc``: the payload is a delta body (``delta_payload``)."""

    observe: int
    token: bytes
    crc: int | None = None


def offer_continue(registration: Message, observe: int, token: bytes, crc: int | None = None) -> None:
    """Mark a registration that replaces the observation registered with
    CoAP ``token``, whose notifications the client took up to Observe number
    ``observe``: the server may go on from that observation's state.  With
    ``crc`` the payload is a delta body."""
    value = (bytes([0 if crc is None else CONTINUE_DELTA]) + (observe % OBSERVE_MODULUS).to_bytes(3, "big")
             + (b"" if crc is None else crc.to_bytes(4, "big")) + token)
    registration.opt.add_option(OpaqueOption(options.PUSH_CONTINUE, value))


def continue_offer(registration: Message) -> ContinueOffer | None:
    """A registration's Push-Continue; None without one, or a malformed one
    (then the server starts afresh; a delta body it cannot read, ``delta_payload``)."""
    option = registration.opt.get_option(options.PUSH_CONTINUE)
    value = bytes(option[0].value) if option else b""
    if len(value) < 4 or value[0] & ~CONTINUE_DELTA:
        return None
    observe, rest = int.from_bytes(value[1:4], "big"), value[4:]
    crc = None
    if value[0] & CONTINUE_DELTA:
        if len(rest) < 4:
            return None
        crc, rest = int.from_bytes(rest[:4], "big"), rest[4:]
    return ContinueOffer(observe, rest, crc) if len(rest) <= 8 else None


def _body_dictionary(old_body: bytes, profile: Profile) -> bytes:
    """The preset dictionary, then the CBOR of the replaced observation's
    request body (canonical: the same at both ends from equal JSON values)."""
    assert profile.flate is not None
    return profile.flate.data + json_cbor.json_to_cbor(old_body, profile.cbor_table)


def delta_payload(payload: bytes, old_body: bytes, profile: Profile) -> tuple[bytes, int] | None:
    """A registration's payload (deflated CBOR, no Content-Format) deflated
    instead against the replaced observation's request body, and the CRC-32
    of the CBOR; None when that is not smaller (or the payload is not that
    form).  A sliding-sync client's new request is mostly its old one."""
    if profile.flate is None or not payload:
        return None
    try:
        cbor = decompress(payload, profile.flate, MAX_POLL_BODY)
        delta = compress(cbor, _body_dictionary(old_body, profile))
    except GatewayError:  # not deflated CBOR, or an old body that is not JSON
        return None
    return (delta, zlib.crc32(cbor)) if len(delta) + 5 < len(payload) else None


def read_delta_payload(payload: bytes, old_body: bytes, crc: int, profile: Profile) -> bytes:
    """The CBOR a delta body stands for (inverse of ``delta_payload``);
    CodecError when it does not read back to the CRC-32 it names,
    CompressionError when it is not deflate or expands past the cap."""
    if profile.flate is None:
        raise CodecError("a delta body, but the profile has no compression")
    cbor = decompress(payload, _body_dictionary(old_body, profile), MAX_POLL_BODY)
    if zlib.crc32(cbor) != crc:
        raise CodecError("the delta body does not read back to its CRC-32: another old body")
    return cbor


def mark_continued(answer: Message) -> None:
    """Mark a registration's first answer: its observation goes on from the
    state of the one it replaced."""
    answer.opt.add_option(OpaqueOption(options.PUSH_CONTINUE, b""))


def is_continued(answer: Message) -> bool:
    return bool(answer.opt.get_option(options.PUSH_CONTINUE))


def end_resend() -> Message:
    """The final answer "register again, whole": a delta body this server cannot read."""
    message = Message(code=Code.CONTENT)
    message.opt.add_option(OpaqueOption(options.SYNC_PUSH, bytes([END_RESEND])))
    return message


def end_fetch() -> Message:
    """The final answer "too large to push: poll it plainly"."""
    message = Message(code=Code.CONTENT)
    message.opt.add_option(OpaqueOption(options.SYNC_PUSH, bytes([END_FETCH])))
    return message

# Notification header byte: present only when its bits 1–2 are both set,
# which no raw deflate stream can start with (BTYPE 11 is reserved,
# RFC 1951 §3.2.3) — so the common case, an answer in the default encoding,
# costs no header byte at all.
HEADER_MARK = 0b0000_0110
H_ADOPT = 0b0000_0001  # the answer is empty-shaped: it is also the new template
H_TEMPLATE = 0b0010_0000  # a template, answering nothing
H_ENCODING_SHIFT = 3
H_RESERVED = 0b1100_0000
#: a notification that is a *part*: this byte, then a piece of the payload
#: of the notification the parts make up (both reserved bits and the mark:
#: no whole payload starts so); the next notification that is not a part
#: is the last piece
PART = 0b1100_0110

#: how the body bytes inside the deflate stream read
ENC_CBOR_ASCII = 0  # CBOR in the homeserver's key order; JSON out with \\u escapes (Synapse)
ENC_CBOR_UTF8 = 1  # the same, JSON out as raw UTF-8
ENC_JSON = 2  # the JSON bytes themselves (when neither CBOR form is exact)
ENC_EVENT = 3  # one event, as its fields (push.compact): not deflated as a whole



# ------------------------------------------------------------- long-polls


@dataclass(frozen=True)
class PollKind:
    """What differs between the two long-polls sync push serves: ``/sync``
    (v2: ``GET ?since=``, answered with ``next_batch``) and sliding sync
    (MSC4186: ``POST ?pos=`` with the request in the body, answered with
    ``pos``).  Everything else — the loop, templates, notifications, the
    history — is the same for both."""

    name: str
    routes: frozenset[str]
    #: the long-poll's HTTP method, and the CoAP code of its registration
    #: (Observe is defined for GET and FETCH, RFC 7641, RFC 8132 §2.4)
    method: str
    registration: Code
    #: the query parameter with the position asked from, and the answer's
    #: key with the next position
    param: str
    key: str
    token: re.Pattern[str]
    #: an answer (parsed) that says "nothing happened"
    says_nothing: Callable[[dict[str, Any]], bool]

    @property
    def field(self) -> bytes:
        """The answer's position as it starts in the answer's JSON."""
        return b'"' + self.key.encode("ascii") + b'":"'


def _says_nothing_sync(doc: dict[str, Any]) -> bool:
    # besides next_batch only the key counts an idle poll always carries
    # and sections without a single event
    return all(k == "next_batch" or k in COUNT_KEYS or _blank(v) for k, v in doc.items())


#: what an idle sliding-sync answer always carries, news or not: the lists'
#: counts (and Synapse's ops), the key counts, to_device's own position
_SLIDING_ALWAYS = frozenset({"pos", "lists"})
_SLIDING_EXTENSION_ALWAYS = COUNT_KEYS | {"next_batch"}


def _says_nothing_sliding(doc: dict[str, Any]) -> bool:
    extensions = doc.get("extensions", {})
    return (isinstance(extensions, dict)
            and all(k in _SLIDING_ALWAYS or k == "extensions" or _blank(v) for k, v in doc.items())
            and all(isinstance(section, dict)
                    and all(k in _SLIDING_EXTENSION_ALWAYS or _blank(v) for k, v in section.items())
                    for section in extensions.values()))


SYNC = PollKind("sync", SYNC_ROUTES, "GET", Code.GET, "since", "next_batch", TOKEN, _says_nothing_sync)
SLIDING = PollKind("sliding", SLIDING_ROUTES, "POST", Code.FETCH, "pos", "pos", POS_TOKEN, _says_nothing_sliding)
KINDS = (SYNC, SLIDING)


@dataclass(frozen=True)
class LongPoll:
    """A long-poll request, split into what names its stream and what not.

    ``query`` holds the raw parameters in order; the position (``since``
    or ``pos``, the token as the answers write it: ``since``) and
    ``timeout`` are found at ``since_at`` and ``timeout_at``.  Parameters
    stay raw (exactly as the client wrote them), like everywhere else on the
    link.  A sliding-sync poll also has its ``body`` (the request itself)
    and ``connection`` (its ``conn_id``): one connection, one stream.
    """

    path: str
    query: tuple[str, ...]
    since_at: int
    timeout_at: int
    since: str
    timeout_ms: int
    kind: PollKind = SYNC
    body: bytes = b""
    connection: str = ""

    @property
    def params(self) -> tuple[str, ...]:
        """What names the stream: the parameters but position and timeout
        (and a sliding-sync connection's ID).  The body does not: a new
        request on the same connection replaces the old one's stream, for
        the homeserver keeps one state per connection."""
        params = tuple(p for i, p in enumerate(self.query) if i not in (self.since_at, self.timeout_at))
        return params + (("\0conn_id=" + self.connection,) if self.kind is SLIDING else ())

    def target(self, since: str | None = None, timeout_ms: int | None = None) -> str:
        """The request target with the position and/or ``timeout`` replaced."""
        query = list(self.query)
        if since is not None:
            # a pos's "/" goes as %2F (no other character of a token needs escaping)
            query[self.since_at] = self.kind.param + "=" + since.replace("/", "%2F")
        if timeout_ms is not None:
            query[self.timeout_at] = f"timeout={timeout_ms}"
        return self.path + "?" + "&".join(query)


def parse_long_poll(method: str, target: str, routes: RouteTable, body: bytes = b"") -> LongPoll | None:
    """The long-poll a request is, or None when it is not one we push:
    not a GET of a sync route or a POST (FETCH, registered) of a sliding-sync
    route, no position (an initial sync), no numeric ``timeout``,
    ``full_state`` other than false, the token in the query, a parameter
    given twice, a position with characters to escape, or (sliding sync) a
    body that is not a JSON object of at most MAX_POLL_BODY bytes."""
    path, sep, query_text = target.partition("?")
    if not sep:
        return None
    kind = next((k for k in KINDS if method in (k.method, k.registration.name)), None)
    if kind is None or routes.match_path(path, kind.routes) is None:
        return None
    query = tuple(query_text.split("&"))
    names = [p.partition("=")[0] for p in query]
    if len(set(names)) != len(names) or "access_token" in names:
        return None
    found: dict[str, tuple[int, str]] = {n: (i, p.partition("=")[2]) for i, (n, p) in enumerate(zip(names, query))}
    if kind.param not in found or "timeout" not in found:
        return None
    if found.get("full_state", (0, "false"))[1] != "false":
        return None
    since_at, since = found[kind.param]
    if kind is SLIDING:
        since = re.sub("%2[Ff]", "/", since)
    timeout_at, timeout_text = found["timeout"]
    if not kind.token.match(since) or not timeout_text.isascii() or not timeout_text.isdigit() or len(timeout_text) > 9:
        return None
    connection = ""
    if kind is SLIDING:
        if len(body) > MAX_POLL_BODY:
            return None
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(request, dict) or not isinstance(request.get("conn_id", ""), str):
            return None
        connection = request.get("conn_id", "")
    elif body:
        return None
    return LongPoll(path, query, since_at, timeout_at, since, int(timeout_text), kind, body, connection)


# -------------------------------------------------------------- templates


def is_empty_sync(body: bytes, kind: PollKind = SYNC) -> bool:
    """Whether a 200 answer says "nothing happened": besides its position
    only what an idle poll always carries (``kind.says_nothing``).  Such a
    body, with its position emptied, is a template."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    if not isinstance(doc, dict) or not isinstance(doc.get(kind.key), str):
        return False
    return kind.says_nothing(doc)


def moves_to_device(body: bytes, kind: PollKind = SYNC) -> bool:
    """Whether a sliding-sync answer carries to-device events: the client's
    next request then names their ``next_batch`` (its body changes), and
    the same request polled again would get the same events back."""
    if kind is not SLIDING:
        return False  # /sync: the since itself moves past them
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    extensions = doc.get("extensions") if isinstance(doc, dict) else None
    to_device = extensions.get("to_device") if isinstance(extensions, dict) else None
    return isinstance(to_device, dict) and bool(to_device.get("events"))


def next_batch_of(body: bytes, kind: PollKind = SYNC) -> str | None:
    """The top-level position of an answer (``next_batch``, ``pos``; None if
    there is none)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    token = doc.get(kind.key) if isinstance(doc, dict) else None
    return token if isinstance(token, str) else None


def split_next_batch(body: bytes, kind: PollKind = SYNC) -> tuple[bytes, str] | None:
    """``(template, token)``: the body with its position's value emptied,
    and that value — when ``"next_batch":"…"`` (``"pos":"…"``) occurs
    exactly once (a quote inside a JSON string is escaped, so it cannot fake
    one) and holds a plain token."""
    field = kind.field
    start = body.find(field)
    if start < 0 or body.find(field, start + 1) >= 0:
        return None
    value_at = start + len(field)
    end = body.find(b'"', value_at)
    if end < 0:
        return None
    token = body[value_at:end].decode("ascii", "replace")
    if not kind.token.match(token):
        return None
    return body[:value_at] + body[end:], token


def expand_template(template: bytes, since: str, kind: PollKind = SYNC) -> bytes:
    """The idle answer: the template with its position = ``since``."""
    at = template.index(kind.field + b'"') + len(kind.field)
    return template[:at] + since.encode("ascii") + template[at:]


def is_template(template: bytes, kind: PollKind = SYNC) -> bool:
    """A template has exactly one empty position (``"next_batch":""``)."""
    probe = kind.field + b'"'
    at = template.find(probe)
    return at >= 0 and template.find(kind.field, at + 1) < 0


def _blank(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_blank(v) for v in value.values())
    return isinstance(value, list) and not value


# ------------------------------------------------------------ body coding


def _dump(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":")).encode("utf-8")


def encode_body(body: bytes, table: CborTable) -> tuple[int, bytes]:
    """``(encoding, bytes)``: ordered CBOR when it decodes back to exactly
    ``body`` (Synapse writes compact JSON with ``\\u`` escapes), else the
    JSON as it is."""
    try:
        value = json.loads(body)
        data = json_cbor.encode(value, table, canonical=False)
        back = json_cbor.decode(data, table, ordered=True)
    except (ValueError, UnicodeDecodeError, RecursionError, CodecError):
        return ENC_JSON, body
    for encoding, ascii_only in ((ENC_CBOR_ASCII, True), (ENC_CBOR_UTF8, False)):
        if _dump(back, ascii_only) == body:
            return encoding, data
    return ENC_JSON, body


def decode_body(encoding: int, data: bytes, table: CborTable) -> bytes:
    if encoding == ENC_JSON:
        return data
    if encoding in (ENC_CBOR_ASCII, ENC_CBOR_UTF8):
        return _dump(json_cbor.decode(data, table, ordered=True), encoding == ENC_CBOR_ASCII)
    raise CodecError(f"unknown body encoding {encoding}")


# ------------------------------------------------------------ delta state


def push_preset(profile: Any) -> bytes:
    """The fixed front of every stream's dictionary: the profile's preset
    dictionary, then (compact profiles) its text dictionary, which knows the
    words of the messages the pushes mostly carry."""
    preset = profile.flate.data if profile.flate is not None else b""
    if getattr(profile, "schemas", None) is not None:
        preset += profile.schemas.text_dictionary.data
    return preset


class DeltaState:
    """The per-observation deflate dictionary, kept identically at both ends.

    ``dictionary(since)`` = the preset dictionary, the Megolm sessions the
    chain showed (``EchoContext.sessions``: sender key, session ID, device
    of each, which every message of a session repeats and a message from
    another sender or a receipt in between would push out of the last
    bodies), the since token being
    answered, then the encoded bodies of the last ``keep`` notifications of
    this observation — most similar last, as deflate's distance codes grow
    with distance (the last body holds the since too, as its next_batch) —
    cut to the 32 KiB window.  Notifications arrive reliably and in order
    (CON, one at a time) or the observation ends, so both ends always agree.
    """

    def __init__(self, preset: bytes, keep: int = 2, kind: PollKind | None = None):
        self.preset = preset
        self.recent: deque[bytes] = deque(maxlen=keep)
        #: what the chain's answers showed, for the echo fold and the event form
        self.echo = EchoContext(sliding=kind is SLIDING)

    def dictionary(self, since: str) -> bytes:
        sessions = b"".join(self.echo.sessions)
        return (self.preset + sessions + since.encode("ascii") + b"".join(self.recent))[-MAX_DICTIONARY_SIZE:]

    def remember(self, encoded: bytes) -> None:
        self.recent.append(encoded[-MAX_DICTIONARY_SIZE:])

    def continued(self, template: bytes | None, table: CborTable) -> DeltaState:
        """The state an observation starts with when it continues this one
        (Push-Continue: the same stream, a new request body): all of it, and
        the idle template the client held as the most recent body — the new
        request's template is mostly the old one.  Both ends build it from
        the same notifications, so they agree."""
        state = copy.deepcopy(self)
        if template is not None:
            state.remember(encode_body(template, table)[1])
        return state


# ----------------------------------------------------------- notifications


@dataclass(frozen=True)
class Notification:
    """What one notification says.

    ``template``: the body is the new empty-response template (its position,
    ``"next_batch"`` or ``"pos"``, empty) and answers nothing.  Otherwise it is the homeserver's answer to
    the stream's current since, exactly as sent; ``adopt`` marks an answer
    that is itself empty-shaped, whose template the client takes over.
    """

    body: bytes
    template: bool = False
    adopt: bool = False


def encode_notification(n: Notification, since: str, delta: DeltaState, table: CborTable,
                        kind: PollKind = SYNC) -> bytes:
    """The payload for ``n``, answering (or, for a template, sent at) ``since``.
    Advances ``delta``: call it only for a notification that is sent."""
    if n.template and (n.adopt or not is_template(n.body, kind)):
        raise CodecError("a template answers nothing and has an empty next_batch")
    encoding, data = encode_body(n.body, table)
    dictionary = delta.dictionary(since)
    stream = compress(data, dictionary)
    event = None if n.template or n.adopt else encode_event(n.body, since, delta.echo, table, dictionary)
    delta.remember(data)
    delta.echo.note(n.body)
    if event is not None and len(event) + 1 < len(stream) + (encoding != ENC_CBOR_ASCII):
        return bytes([HEADER_MARK | (ENC_EVENT << H_ENCODING_SHIFT)]) + event
    if not n.template and not n.adopt and encoding == ENC_CBOR_ASCII:
        return stream
    header = HEADER_MARK | (encoding << H_ENCODING_SHIFT)
    header |= (H_TEMPLATE if n.template else 0) | (H_ADOPT if n.adopt else 0)
    return bytes([header]) + stream


def split_parts(payload: bytes, max_payload: int) -> list[bytes]:
    """The notifications that carry ``payload`` when each holds at most
    ``max_payload`` bytes: ``[payload]`` when it fits, else parts — PART and
    at most ``max_payload - 1`` bytes each — and the rest, 1 to
    ``max_payload`` bytes, as the last notification.

    The client takes the first notification that is not a part as the last
    piece, so the rest must not begin with the PART byte (deflate output
    does, once in 256 parted payloads): the C6 bytes it would begin with go
    as one more part."""
    if max_payload < 2:
        raise ValueError("a part holds at least one byte")
    if payload[:1] == bytes([PART]):
        raise CodecError("a whole notification payload never begins with the PART byte")
    if len(payload) <= max_payload:
        return [payload]
    if len(payload) > MAX_PARTED:
        raise CodecError(f"a notification of {len(payload)} B is too long to push in parts")
    piece = max_payload - 1
    cut = -(-(len(payload) - max_payload) // piece) * piece  # full pieces, until the rest fits
    while cut < len(payload) and payload[cut] == PART:
        cut += 1
    if cut == len(payload):
        raise CodecError("a payload ending in PART bytes cannot be pushed in parts")
    parts = [bytes([PART]) + payload[i:min(i + piece, cut)] for i in range(0, cut, piece)]
    return parts + [payload[cut:]]


class PartBuffer:
    """The pieces of a notification sent in parts, on the client (sans-I/O).

    ``feed`` takes each notification's payload in Observe order and gives
    back the payload to decode: the notification's own, or — after parts —
    the parts' pieces and this last one, joined.  A wrong shape (an empty
    part, an empty last piece, more than ``limit`` bytes) raises CodecError;
    the caller then drops the observation and clears the buffer."""

    def __init__(self, limit: int = MAX_PARTED):
        self.limit = limit
        self.pieces = bytearray()

    @property
    def pending(self) -> bool:
        """Parts came in, the last piece has not (a part is never empty)."""
        return bool(self.pieces)

    def feed(self, payload: bytes) -> bytes | None:
        """None while parts come in; else the whole payload."""
        if payload[:1] == bytes([PART]):
            if len(payload) < 2:
                raise CodecError("an empty notification part")
            if len(self.pieces) + len(payload) - 1 > self.limit:
                raise CodecError(f"notification parts over {self.limit} B")
            self.pieces += payload[1:]
            return None
        if not self.pending:
            return payload
        if not payload or len(self.pieces) + len(payload) > self.limit:
            raise CodecError("the last piece of a notification in parts is empty or too long")
        whole = bytes(self.pieces) + payload
        self.clear()
        return whole

    def clear(self) -> None:
        self.pieces = bytearray()


def decode_notification(payload: bytes, since: str, delta: DeltaState, table: CborTable,
                        max_size: int = MAX_PUSH_BODY, kind: PollKind = SYNC) -> Notification | None:
    """Inverse of ``encode_notification``; None for the empty payload (a
    registration accepted with nothing to say yet).  Advances ``delta``
    only when the payload decodes."""
    if not payload:
        return None
    header, stream = 0, payload
    if payload[0] & HEADER_MARK == HEADER_MARK:
        header, stream = payload[0], payload[1:]
        if header & H_RESERVED:
            raise CodecError(f"notification header {header:#04x} has reserved bits set")
    encoding = (header >> H_ENCODING_SHIFT) & 0b11
    template, adopt = bool(header & H_TEMPLATE), bool(header & H_ADOPT)
    if template and adopt:
        raise CodecError("a template cannot also be adopted")
    if encoding == ENC_EVENT:
        if template or adopt:
            raise CodecError("an event form is neither a template nor adopted")
        body = decode_event(stream, since, delta.echo, table, delta.dictionary(since))
        data = encode_body(body, table)[1]
    else:
        data = decompress(stream, delta.dictionary(since), max_size)
        body = decode_body(encoding, data, table)
    if template and not is_template(body, kind):
        raise CodecError(f"a template must have exactly one empty {kind.key}")
    delta.remember(data)
    delta.echo.note(body)
    return Notification(body, template, adopt)


__all__ = [
    "COUNT_KEYS",
    "JSON",
    "KINDS",
    "MAX_POLL_BODY",
    "SLIDING",
    "SLIDING_ROUTES",
    "SYNC",
    "PollKind",
    "FIRST_OBSERVE",
    "OBSERVE_MODULUS",
    "accepts_parts",
    "control_request",
    "offer_parts",
    "offer_continue",
    "continue_offer",
    "delta_payload",
    "read_delta_payload",
    "CONTINUE_DELTA",
    "ContinueOffer",
    "END_RESEND",
    "end_resend",
    "mark_continued",
    "is_continued",
    "end_fetch",
    "is_push_request",
    "parse_control",
    "ENC_CBOR_ASCII",
    "ENC_CBOR_UTF8",
    "ENC_EVENT",
    "ENC_JSON",
    "END_CLOSED",
    "END_FETCH",
    "MAX_PARTED",
    "MAX_PUSH_BODY",
    "PART",
    "OP_CANCEL",
    "OP_CHECK",
    "SYNC_ROUTES",
    "DeltaState",
    "LongPoll",
    "Notification",
    "PartBuffer",
    "decode_body",
    "decode_notification",
    "encode_body",
    "encode_notification",
    "expand_template",
    "is_empty_sync",
    "is_template",
    "moves_to_device",
    "next_batch_of",
    "parse_long_poll",
    "split_next_batch",
    "split_parts",
]
