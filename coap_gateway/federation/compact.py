"""The compact form of a federation transaction (sans-I/O): ``PUT /send`` in a few hundred bytes.

A transaction carrying one ``m.room.message`` PDU is mostly identifiers and
signatures.  The plain mapping (``mapping``) already carries base64 as
bytes; this form goes further, for ``PUT /_matrix/federation/v1/send/{txn}``
only (everything else stays plain):

* the X-Matrix header becomes its key ID and its 64-byte signature: origin
  and destination are the pair's own names (the peers table pins which
  Noise key is which server), so they need not cross;
* the transaction and each PDU travel as positional CBOR arrays (no key
  names), the body's ``origin`` and each signature's server name implied;
* event IDs and room IDs the other gateway already holds travel as a
  short prefix of their 32 bytes (a *reference*), resolved against the
  receiver's ``KnownIds`` for this peer; the receiver checks each PDU's
  content hash after resolving, so a reference that resolves wrongly can
  never reach the homeserver: it answers 4.12 and the sender sends the
  transaction again with every ID whole;
* a transaction homeserver B accepted whole — its answer exactly
  ``{"pdus": {ID: {}}}`` for the IDs both gateways computed — is answered
  with an empty 2.04: gateway A rebuilds that answer from the IDs it
  computed itself.

Homeserver B receives a body canonically equal to what A sent (every key and
value, in the JSON it signed) and the X-Matrix header byte for byte.
docs/protocol.md, "Federation (compact transactions)", is the normative text.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2
from aiocoap import Message
from aiocoap.numbers.codes import Code

from ..codec import MAX_REQUEST_BODY, HttpResponse, Profile, json_cbor, routes
from ..errors import CodecError, RouteError
from .mapping import FederationRequest

SEND_ROUTE = "federation.v1.send"
SEND_PREFIX = "/_matrix/federation/v1/send/"
#: the shortest reference: 3 of an ID's 32 bytes (a wrong match is caught by the content hash)
MIN_REFERENCE = 3
#: IDs remembered per peer (~100 bytes each)
MAX_KNOWN_IDS = 4096
#: IDs remembered per 3-byte prefix, the oldest dropped: a reference is resolved
#: by comparing it with these (4096 random IDs share a prefix with another 1 time in
#: 8000; a peer that fills its table with IDs of one prefix makes each reference cost
#: this many comparisons, not 4096)
MAX_BUCKET = 8
#: what a transaction may carry (Synapse refuses more: 50 PDUs and 100 EDUs a
#: transaction, 20 prev_events and 10 auth_events an event), so the references
#: one transaction makes its receiver resolve are bounded too
MAX_PDUS = 50
MAX_EDUS = 100
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
#: integers a PDU's depth and times may be: canonical JSON's (Synapse's too)
MAX_SAFE_INTEGER = 2**53 - 1
#: a body scanned for IDs is at most this long, and gives at most this many
MAX_SCANNED_BODY = 1 << 20
MAX_SCANNED_IDS = 4096
#: a PDU whose content hash is what its other fields hash to carries only this
#: much of it: the receiver computes the hash and checks these bytes (a reference
#: resolved wrongly fails the check, and the transaction is sent again whole)
HASH_CHECK = 4
#: the diagnostic of a 4.12 asking for the transaction again without references
UNRESOLVED = "unresolved reference"
#: a transaction's time travels as its low 32 bits when the sender's clock says it is
#: within this many milliseconds of now; the receiver takes the value nearest its own
#: clock (exact while the two clocks are within 2**31 ms, 24 days, of each other)
TIME_WINDOW = 2**30
TIME_MODULUS = 2**32

#: Synapse's X-Matrix header, the only form carried compactly (any other goes plain)
_X_MATRIX = re.compile(r'X-Matrix origin="([^"\\]+)",key="ed25519:([A-Za-z0-9_]+)",sig="([A-Za-z0-9+/]+)",'
                       r'destination="([^"\\]+)"')
_ID_TEXT = re.compile(r"[$!][A-Za-z0-9_-]{43}")
#: PDU positions in the compact array
(P_ROOM, P_SENDER, P_TYPE, P_CONTENT, P_DEPTH, P_TS, P_PREV, P_AUTH, P_HASH, P_SIG, P_AGE, P_REST) = range(12)
PDU_FIELDS = 12
#: transaction positions
(T_TXN, T_KEY, T_XSIG, T_TS, T_PDUS, T_EDUS) = range(6)
TXN_FIELDS = 6

#: the top-level keys and content keys a redaction keeps (room versions 11 and 12)
_KEPT = {"event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures", "depth",
         "prev_events", "auth_events", "origin_server_ts"}
_KEPT_CONTENT: dict[str, tuple[str, ...] | None] = {
    "m.room.member": ("membership", "join_authorised_via_users_server", "third_party_invite"),
    "m.room.create": None,  # all of it
    "m.room.join_rules": ("join_rule", "allow"),
    "m.room.power_levels": ("ban", "events", "events_default", "invite", "kick", "redact", "state_default", "users",
                            "users_default"),
    "m.room.history_visibility": ("history_visibility",),
    "m.room.redaction": ("redacts",),
}


class Unresolved(CodecError):
    """A compact transaction this gateway cannot rebuild exactly: a reference it
    cannot resolve, or a PDU whose content hash does not match after resolving."""


# ---------------------------------------------------------------- IDs


def id_bytes(text: str, sigil: str) -> bytes | None:
    """The 32 bytes behind ``$…`` / ``!…`` (URL-safe base64 of a SHA-256), or None
    when ``text`` is not exactly that form."""
    if len(text) != 44 or text[0] != sigil or not _ID_TEXT.fullmatch(text):
        return None
    raw = base64.urlsafe_b64decode(text[1:] + "=")
    return raw if _b64url(raw) == text[1:] else None


def id_text(raw: bytes, sigil: str) -> str:
    return sigil + _b64url(raw)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _b64std(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _b64std_bytes(text: Any, length: int) -> bytes | None:
    """The bytes of unpadded standard base64 ``text`` if they are ``length`` long and
    encode back to exactly ``text``."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9+/]+", text):
        return None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        return None
    return raw if len(raw) == length and _b64std(raw) == text else None


class KnownIds:
    """The event and room IDs (their 32 bytes) a gateway believes its peer holds too.

    Filled from everything that crossed between the pair (``learn``): a belief
    that turns out wrong costs one 4.12 and a resend, never a wrong event.
    Bounded (least recently used dropped first).
    """

    def __init__(self, limit: int = MAX_KNOWN_IDS) -> None:
        self.limit = limit
        self._ids: OrderedDict[bytes, None] = OrderedDict()
        #: first MIN_REFERENCE bytes -> the IDs starting so (at most MAX_BUCKET, oldest first)
        self._by_prefix: dict[bytes, dict[bytes, None]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, raw: object) -> bool:
        return raw in self._ids

    def add(self, raw: bytes) -> None:
        if raw in self._ids:
            self._ids.move_to_end(raw)
            return
        bucket = self._by_prefix.get(raw[:MIN_REFERENCE])
        if bucket is not None and len(bucket) >= MAX_BUCKET:
            self._forget(next(iter(bucket)))
        self._ids[raw] = None
        self._by_prefix.setdefault(raw[:MIN_REFERENCE], {})[raw] = None
        while len(self._ids) > self.limit:
            self._forget(next(iter(self._ids)))

    def _forget(self, raw: bytes) -> None:
        del self._ids[raw]
        bucket = self._by_prefix[raw[:MIN_REFERENCE]]
        del bucket[raw]
        if not bucket:
            del self._by_prefix[raw[:MIN_REFERENCE]]

    def reference(self, raw: bytes) -> bytes:
        """The shortest prefix of ``raw`` no other known ID shares (``raw`` whole
        when it is not known)."""
        if raw not in self._ids:
            return raw
        self._ids.move_to_end(raw)
        others = [other for other in self._by_prefix.get(raw[:MIN_REFERENCE], ()) if other != raw]
        length = MIN_REFERENCE
        while length < len(raw) and any(other[:length] == raw[:length] for other in others):
            length += 1
        return raw[:length]

    def resolve(self, ref: bytes) -> bytes | None:
        """The one known ID starting with ``ref``; None for none or several."""
        if len(ref) < MIN_REFERENCE:
            return None
        matches = [raw for raw in self._by_prefix.get(ref[:MIN_REFERENCE], ()) if raw.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def learn(self, value: Any) -> int:
        """Add every event and room ID in a JSON value; how many were found."""
        found = 0
        for text in _strings(value):
            raw = id_bytes(text, text[0]) if text[:1] in ("$", "!") else None
            if raw is not None:
                self.add(raw)
                found += 1
                if found >= MAX_SCANNED_IDS:
                    break
        return found

    def learn_body(self, body: bytes) -> int:
        """``learn`` on a JSON body (anything else, or too long, is skipped)."""
        if not body or len(body) > MAX_SCANNED_BODY or body[:1] not in (b"{", b"["):
            return 0
        try:
            return self.learn(json.loads(body))
        except (ValueError, RecursionError):
            return 0


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 32:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item, depth + 1)


# ---------------------------------------------------------------- hashes


def canonical_json(value: Any) -> bytes:
    """Matrix canonical JSON: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def content_hash(pdu: dict[str, Any]) -> bytes:
    """SHA-256 of the PDU without the keys its content hash leaves out."""
    rest = {k: v for k, v in pdu.items()
            if k not in ("unsigned", "signatures", "hashes", "age_ts", "outlier", "destinations")}
    return hashlib.sha256(canonical_json(rest)).digest()


def event_id(pdu: dict[str, Any]) -> str:
    """The event ID of a PDU of room version 11 or 12: ``$`` + the reference hash
    (the redacted event without signatures and unsigned).  Other room versions
    redact differently; a wrong ID is caught where Synapse's answer names the
    true one (``answer_to_compact``)."""
    redacted = {k: v for k, v in pdu.items() if k in _KEPT and k != "signatures"}
    content = pdu.get("content")
    kind = pdu.get("type")
    if isinstance(content, dict):
        # (a type that is not a string is kept nothing of: no room version's rules name it)
        kept = _KEPT_CONTENT.get(kind, ()) if isinstance(kind, str) else ()
        redacted["content"] = dict(content) if kept is None else {k: v for k, v in content.items() if k in kept}
        if kind == "m.room.member" and isinstance(content.get("third_party_invite"), dict):
            signed = content["third_party_invite"].get("signed")
            redacted["content"]["third_party_invite"] = {"signed": signed} if signed is not None else {}
    return "$" + _b64url(hashlib.sha256(canonical_json(redacted)).digest())


# ---------------------------------------------------------------- encoding


@dataclass
class SentTransaction:
    """What gateway A keeps of a compact transaction until its answer."""

    #: the PDUs' event IDs as A computed them, in order
    event_ids: list[str]
    #: every ID (32 bytes) the transaction carried, learnt once it is accepted
    ids: list[bytes] = field(default_factory=list)


def is_send(req: FederationRequest) -> bool:
    return req.method == "PUT" and req.target.startswith(SEND_PREFIX) and "?" not in req.target


def encode_send(req: FederationRequest, profile: Profile, *, origin: str, destination: str,
                known: KnownIds | None, now_ms: int, known_keys: frozenset[str] | set[str] = frozenset()
                ) -> tuple[Message, SentTransaction] | None:
    """The compact CoAP request for ``PUT /send/{txn}`` from ``origin`` to
    ``destination``; ``known`` None: every ID whole; ``known_keys``: the key
    IDs of ours the peer has learnt (when it is exactly the one signing this
    request, the key ID need not cross).  None when the
    request is not in the one shape this form carries exactly (it then goes
    plain)."""
    if not is_send(req) or len(req.authorizations) != 1 or not req.body:
        return None
    header = _X_MATRIX.fullmatch(req.authorizations[0])
    if header is None or header.group(1) != origin or header.group(4) != destination:
        return None
    key_id, sig = header.group(2), _b64std_bytes(header.group(3), 64)
    txn = req.target[len(SEND_PREFIX):]
    if sig is None or not txn or not _txn_segment(txn):
        return None
    try:
        body = json_cbor.parse_json(req.body)
    except (CodecError, RecursionError):
        return None
    if not isinstance(body, dict) or body.get("origin") != origin or not set(body) <= {"origin", "origin_server_ts",
                                                                                       "pdus", "edus"}:
        return None
    pdus, edus = body.get("pdus"), body.get("edus", [])
    # what the receiver refuses (and Synapse would too) goes plain, for Synapse to answer
    if (not isinstance(pdus, list) or not all(isinstance(p, dict) for p in pdus) or len(pdus) > MAX_PDUS
            or not isinstance(edus, list) or len(edus) > MAX_EDUS):
        return None
    table = profile.cbor_table
    ts = body.get("origin_server_ts")
    # PDU times are relative to the transaction's when it is a recent integer
    base = ts if type(ts) is int and ts >= 0 and abs(ts - now_ms) < TIME_WINDOW else None
    try:
        sent = SentTransaction([event_id(p) for p in pdus])
        encoded = [_encode_pdu(p, origin, key_id, known, table, sent.ids, base) for p in pdus]
        if base is not None:
            ts_field: Any = base % TIME_MODULUS
        elif "origin_server_ts" in body:
            ts_field = [_json(ts, table)]  # as it is (any JSON value), wrapped
        else:
            ts_field = None
        edus = _json(body["edus"], table) if "edus" in body else None
        txn_field: Any = txn
        if txn.isdigit() and str(int(txn)) == txn and int(txn) < 2**63:
            # Synapse counts transactions from its start time: near the transaction's own
            txn_field = int(txn) - base if base is not None else int(txn)
        key_field = None if set(known_keys) == {key_id} else key_id
        payload = cbor2.dumps([txn_field, key_field, sig, ts_field, encoded, edus])
    except (CodecError, ValueError, TypeError, RecursionError):
        return None
    msg = Message(code=Code.PUT, uri_path=(chr(profile.routes.by_name[SEND_ROUTE].code),), payload=payload)
    return msg, sent


def _json(value: Any, table: Any) -> bytes:
    return json_cbor.encode(value, table)


def _txn_segment(txn: str) -> bool:
    """Whether a txnId is one path segment the plain path would carry too (no
    query, fragment, space or control character, not a dot segment)."""
    try:
        routes.check_segment(txn)
    except RouteError:
        return False
    return True


def _safe_integer(value: Any) -> bool:
    return type(value) is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


def _id_field(text: Any, sigil: str, known: KnownIds | None, ids: list[bytes]) -> Any:
    if not isinstance(text, str):
        raise CodecError("an ID that is not a string")
    raw = id_bytes(text, sigil)
    if raw is None:
        return text
    ids.append(raw)
    return known.reference(raw) if known is not None else raw


def _encode_pdu(pdu: dict[str, Any], origin: str, key_id: str, known: KnownIds | None, table: Any,
                ids: list[bytes], base: int | None) -> list[Any]:
    rest = dict(pdu)
    out: list[Any] = [None] * PDU_FIELDS
    room = rest.get("room_id")
    if isinstance(room, str):
        out[P_ROOM] = _id_field(rest.pop("room_id"), "!", known, ids)
    sender = rest.get("sender")
    if isinstance(sender, str) and sender.startswith("@"):
        # a sender not starting with "@" stays in field 11: field 1 would make it "@…:origin"
        rest.pop("sender")
        suffix = ":" + origin
        local = sender[1:-len(suffix)] if sender.endswith(suffix) else None
        out[P_SENDER] = local if local and not local.startswith("@") else sender
    kind = rest.get("type")
    if isinstance(kind, str):
        rest.pop("type")
        code = table.value_codes.get("type", {}).get(kind)
        out[P_TYPE] = code if code is not None else kind
    content = rest.get("content")
    if isinstance(content, dict):
        del rest["content"]
        text = content.get("body")
        # the commonest content, {"msgtype": "m.text", "body": S}, as S alone
        plain_text = set(content) == {"body", "msgtype"} and content["msgtype"] == "m.text" and isinstance(text, str)
        out[P_CONTENT] = text if plain_text else _json(content, table)
    for key in ("depth", "origin_server_ts"):
        if type(rest.get(key)) is int and not _safe_integer(rest[key]):
            raise CodecError(f"{key} beyond canonical JSON's integers")  # the receiver refuses it: plain
    if type(rest.get("depth")) is int:
        out[P_DEPTH] = rest.pop("depth")
    if type(rest.get("origin_server_ts")) is int:
        ts = rest.pop("origin_server_ts")
        out[P_TS] = ts - base if base is not None else ts
    for position, key, most in ((P_PREV, "prev_events", MAX_PREV_EVENTS), (P_AUTH, "auth_events", MAX_AUTH_EVENTS)):
        value = rest.get(key)
        if isinstance(value, list) and len(value) <= most and all(isinstance(v, str) for v in value):
            out[position] = [_id_field(v, "$", known, ids) for v in rest.pop(key)]
    hashes = rest.get("hashes")
    if isinstance(hashes, dict) and set(hashes) == {"sha256"}:
        raw = _b64std_bytes(hashes["sha256"], 32)
        if raw is not None:
            # the receiver recomputes a hash that is right; a wrong one must cross as it is
            out[P_HASH] = raw[:HASH_CHECK] if raw == content_hash(pdu) else raw
            del rest["hashes"]
    signatures = rest.get("signatures")
    if isinstance(signatures, dict) and set(signatures) == {origin}:
        mine = signatures[origin]
        if isinstance(mine, dict) and set(mine) == {"ed25519:" + key_id}:
            raw = _b64std_bytes(mine["ed25519:" + key_id], 64)
            if raw is not None:
                out[P_SIG] = raw
                del rest["signatures"]
    unsigned = rest.get("unsigned")
    if (isinstance(unsigned, dict) and set(unsigned) == {"age_ts"} and _safe_integer(unsigned["age_ts"])
            and type(pdu.get("origin_server_ts")) is int):
        out[P_AGE] = unsigned["age_ts"] - pdu["origin_server_ts"]
        del rest["unsigned"]
    if rest:
        out[P_REST] = _json(rest, table)
    return out


# ---------------------------------------------------------------- decoding


@dataclass
class ReceivedTransaction:
    """What gateway B keeps of a compact transaction until its homeserver answers."""

    event_ids: list[str]
    ids: list[bytes] = field(default_factory=list)


def is_compact_send(msg: Message, profile: Profile) -> bool:
    """A compact transaction: the send route's code alone, no parameter."""
    template = profile.routes.by_name.get(SEND_ROUTE)
    return (template is not None and msg.code == Code.PUT and tuple(msg.opt.uri_path) == (chr(template.code),)
            and not msg.opt.uri_query)


def decode_send(msg: Message, profile: Profile, *, origin: str, destination: str,
                known: KnownIds | None, now_ms: int, origin_keys: frozenset[str] | set[str] = frozenset()
                ) -> tuple[FederationRequest, ReceivedTransaction]:
    """The federation request a compact transaction stands for; ``origin_keys``:
    the signing key IDs learnt for ``origin``, ``now_ms`` this gateway's clock.
    ``Unresolved`` when a reference or an omitted key ID does not resolve, or a
    PDU's content hash does not match (answer 4.12: the sender resends with
    everything whole); ``CodecError`` when it is malformed."""
    table = profile.cbor_table
    try:
        reader = io.BytesIO(msg.payload)
        value = json_cbor.strict_decoder(reader, 16).decode()
        if reader.tell() != len(msg.payload):
            raise ValueError("bytes after the transaction")
    except (cbor2.CBORDecodeError, ValueError, RecursionError, EOFError) as exc:
        raise CodecError(f"compact transaction: {exc}") from exc
    if not isinstance(value, list) or len(value) != TXN_FIELDS:
        raise CodecError("compact transaction: not an array of six")
    txn, key_id, sig, ts_field, pdus, edus = value
    if not (type(txn) is int and -2**63 < txn < 2**63 or isinstance(txn, str) and txn and _txn_segment(txn)):
        raise CodecError("compact transaction: bad transaction ID")
    if key_id is None:
        if len(origin_keys) != 1:
            raise Unresolved(f"no one signing key learnt for {origin}")
        (key_id,) = origin_keys
    if not isinstance(key_id, str) or not re.fullmatch(r"[A-Za-z0-9_]+", key_id):
        raise CodecError("compact transaction: bad key ID")
    if not isinstance(sig, bytes) or len(sig) != 64 or not isinstance(pdus, list) or len(pdus) > MAX_PDUS:
        raise CodecError("compact transaction: bad signature or PDUs")
    body: dict[str, Any] = {"origin": origin}
    base = None
    if type(ts_field) is int:
        if not 0 <= ts_field < TIME_MODULUS:
            raise CodecError("compact transaction: bad time")
        # the value with these low 32 bits nearest this gateway's clock
        base = now_ms + (ts_field - now_ms + TIME_MODULUS // 2) % TIME_MODULUS - TIME_MODULUS // 2
        body["origin_server_ts"] = base
    elif isinstance(ts_field, list) and len(ts_field) == 1 and isinstance(ts_field[0], bytes):
        body["origin_server_ts"] = json_cbor.decode(ts_field[0], table)
    elif ts_field is not None:
        raise CodecError("compact transaction: bad time")
    if type(txn) is int:
        txn += base if base is not None else 0
        if not 0 <= txn < 2**63:
            raise CodecError("compact transaction: bad transaction ID")
    received = ReceivedTransaction([])
    rebuilt = [_decode_pdu(p, origin, key_id, known, table, received.ids, base) for p in pdus]
    body["pdus"] = rebuilt
    if edus is not None:
        if not isinstance(edus, bytes):
            raise CodecError("compact transaction: bad EDUs")
        body["edus"] = json_cbor.decode(edus, table, max_output=MAX_REQUEST_BODY)
        if not isinstance(body["edus"], list) or len(body["edus"]) > MAX_EDUS:
            raise CodecError("compact transaction: EDUs are not an array of at most 100")
    for pdu, item in zip(rebuilt, pdus):
        check = item[P_HASH]
        if check is not None and len(check) == HASH_CHECK:
            computed = content_hash(pdu)
            if computed[:HASH_CHECK] != check:
                raise Unresolved("a PDU's content hash does not match it")
            pdu["hashes"] = {"sha256": _b64std(computed)}
    received.event_ids = [event_id(p) for p in rebuilt]
    header = f'X-Matrix origin="{origin}",key="ed25519:{key_id}",sig="{_b64std(sig)}",destination="{destination}"'
    target = SEND_PREFIX + str(txn)
    rebuilt_body = json_cbor.dump_json(body)
    if len(rebuilt_body) > MAX_REQUEST_BODY:  # the plain path's cap, on what the homeserver would get
        raise CodecError(f"compact transaction: {len(rebuilt_body)} bytes of JSON, over {MAX_REQUEST_BODY}")
    request = FederationRequest("PUT", target, rebuilt_body, "application/json", [header])
    return request, received


def _resolve(item: Any, sigil: str, known: KnownIds | None, ids: list[bytes]) -> str:
    if isinstance(item, str):
        return item
    if not isinstance(item, bytes) or not MIN_REFERENCE <= len(item) <= 32:
        raise CodecError("compact transaction: bad ID")
    raw = item if len(item) == 32 else (known.resolve(item) if known is not None else None)
    if raw is None:
        raise Unresolved(f"reference {item.hex()} does not resolve")
    ids.append(raw)
    return id_text(raw, sigil)


def _decode_pdu(value: Any, origin: str, key_id: str, known: KnownIds | None, table: Any,
                ids: list[bytes], base: int | None) -> dict[str, Any]:
    if not isinstance(value, list) or len(value) != PDU_FIELDS:
        raise CodecError("compact transaction: a PDU is not an array of twelve")
    pdu: dict[str, Any] = {}
    rest = value[P_REST]
    if rest is not None:
        if not isinstance(rest, bytes):
            raise CodecError("compact transaction: bad PDU rest")
        pdu = json_cbor.decode(rest, table)
        if not isinstance(pdu, dict):
            raise CodecError("compact transaction: PDU rest is not an object")
    def put(key: str, item: Any) -> None:
        if key in pdu:
            raise CodecError(f"compact transaction: {key} twice")
        pdu[key] = item
    if value[P_ROOM] is not None:
        put("room_id", _resolve(value[P_ROOM], "!", known, ids))
    sender = value[P_SENDER]
    if sender is not None:
        if not isinstance(sender, str) or not sender:
            raise CodecError("compact transaction: bad sender")
        put("sender", sender if sender.startswith("@") else f"@{sender}:{origin}")
    kind = value[P_TYPE]
    if kind is not None:
        if type(kind) is int:
            name = table.value_names.get("type", {}).get(kind)
            if name is None:
                raise CodecError(f"compact transaction: unknown type code {kind}")
            kind = name
        if not isinstance(kind, str):
            raise CodecError("compact transaction: bad type")
        put("type", kind)
    content = value[P_CONTENT]
    if isinstance(content, str):
        put("content", {"body": content, "msgtype": "m.text"})
    elif content is not None:
        if not isinstance(content, bytes):
            raise CodecError("compact transaction: bad content")
        content = json_cbor.decode(content, table)
        if not isinstance(content, dict):
            raise CodecError("compact transaction: content is not an object")
        put("content", content)
    for position, key in ((P_DEPTH, "depth"), (P_TS, "origin_server_ts")):
        if value[position] is not None:
            item = value[position]
            if type(item) is int and key == "origin_server_ts" and base is not None:
                item += base
            if not _safe_integer(item):
                raise CodecError(f"compact transaction: bad {key}")
            put(key, item)
    for position, key, most in ((P_PREV, "prev_events", MAX_PREV_EVENTS), (P_AUTH, "auth_events", MAX_AUTH_EVENTS)):
        if value[position] is not None:
            if not isinstance(value[position], list) or len(value[position]) > most:
                raise CodecError(f"compact transaction: bad {key}")
            put(key, [_resolve(item, "$", known, ids) for item in value[position]])
    if value[P_HASH] is not None:
        if not isinstance(value[P_HASH], bytes) or len(value[P_HASH]) not in (HASH_CHECK, 32):
            raise CodecError("compact transaction: bad hash")
        if len(value[P_HASH]) == 32:
            put("hashes", {"sha256": _b64std(value[P_HASH])})
        elif "hashes" in pdu:
            raise CodecError("compact transaction: hashes twice")
        # (a hash check: the hash is computed once the whole PDU is rebuilt)
    if value[P_SIG] is not None:
        if not isinstance(value[P_SIG], bytes) or len(value[P_SIG]) != 64:
            raise CodecError("compact transaction: bad signature")
        put("signatures", {origin: {"ed25519:" + key_id: _b64std(value[P_SIG])}})
    if value[P_AGE] is not None:
        age = value[P_AGE]
        ts = pdu.get("origin_server_ts")
        if type(age) is not int or type(ts) is not int or not _safe_integer(ts + age):
            raise CodecError("compact transaction: bad age")
        put("unsigned", {"age_ts": ts + age})
    return pdu


# ---------------------------------------------------------------- the answer


def answer_to_compact(resp: HttpResponse, received: ReceivedTransaction) -> bool:
    """Whether homeserver B's answer is exactly "every PDU accepted" for the IDs
    both gateways computed — then it crosses as an empty 2.04."""
    if resp.status != 200 or not resp.body:
        return False
    try:
        answer = json.loads(resp.body)
    except ValueError:
        return False
    return (isinstance(answer, dict) and set(answer) == {"pdus"} and isinstance(answer["pdus"], dict)
            and all(v == {} for v in answer["pdus"].values())
            and sorted(answer["pdus"]) == sorted(received.event_ids)
            and len(set(received.event_ids)) == len(received.event_ids))


def accepted_answer(sent: SentTransaction) -> HttpResponse:
    """The answer an empty 2.04 stands for: every PDU accepted, by the IDs A computed."""
    body = json.dumps({"pdus": {event: {} for event in sent.event_ids}}, separators=(",", ":")).encode()
    return HttpResponse(200, body, "application/json")


def is_accepted(msg: Message) -> bool:
    return msg.code == Code.CHANGED and not msg.payload


def server_keys(body: bytes) -> tuple[str, frozenset[str]] | None:
    """The server name and ed25519 key IDs (without ``ed25519:``) of a
    ``/_matrix/key/v2/server`` answer; None for anything else."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("server_name"), str) or not isinstance(doc.get("verify_keys"), dict):
        return None
    keys = frozenset(k[len("ed25519:"):] for k in doc["verify_keys"] if isinstance(k, str) and k.startswith("ed25519:"))
    return doc["server_name"], keys


@dataclass
class PeerWire:
    """What a federation gateway knows of the compact state shared with one peer."""

    ids: KnownIds = field(default_factory=KnownIds)
    #: the peer's homeserver's signing key IDs, from its key answers that crossed
    their_keys: frozenset[str] = frozenset()
    #: ours the peer has fetched (our homeserver's key answers to it)
    our_keys: frozenset[str] = frozenset()
