"""Sync push: a device's own event, folded into its send's answer (sans-I/O).

Synapse gives every device its own events back through ``/sync``
(``unsigned.transaction_id`` tells the client that an event is the echo of
its send, and clients rely on it).  Pushed like any other answer, the echo
costs the sender's link a notification and its ACK — as much as the send
itself — although the client gateway knows nearly all of it already: the
room, type, content and transaction ID it sent, and the event ID it was
answered.  What it cannot know: the event's ``origin_server_ts`` and
``age``, the sync chain's new ``next_batch``, the room's unread counts, and
(the first time) the user's ID.

So when the homeserver's next answer on the device's observation is exactly
that event in the layout ``echo_body`` writes, the server gateway does not
push it: it appends those few bytes (the *fold*) to the send's answer, and
the client gateway rebuilds the body, byte for byte.  The server folds only
after rebuilding the body itself from what the client knows and finding the
homeserver's exact bytes, so anything else — another event in the same
answer, another layout, another homeserver — is pushed as before.

Fold (docs/protocol.md §9a, "The sender's echo"), after the 32-byte event ID:

The body is rebuilt from the key counts of the chain's latest answer (not
the idle template: a device's key upload changes them, and the template
learns so only at the next idle answer).

* one byte: bits 0–2 the Observe number (mod 8) the answer takes in the
  chain; bit 3 the body is written as UTF-8 (else with ``\\u`` escapes, as
  Synapse writes it); bit 4 the unread counts follow (else the room's last
  counts in this observation); bit 5 the sender follows (else the one this
  observation last showed as the device's own); bits 6–7 zero;
* LEB128: ``origin_server_ts`` minus the latest ``origin_server_ts`` of this
  observation's answers so far (0 before any); ``age``;
* the new ``next_batch`` as a change of the since it answers: LEB128
  ``2·d₀ + more`` for the first number in the token, then, if ``more``, a
  count and (index, increase) pairs for the others (``token_change``);
* when flagged: notification count, highlight count (LEB128); the sender's
  length (LEB128) and UTF-8 bytes.

LEB128 is written here by hand: CBOR, used everywhere else, spends 3 bytes
on a 65-second timestamp difference and 5 on a longer one (and 2 on an age
of 24–255 ms); LEB128 spends 3 up to 35 minutes, 1 below 128 ms.  No kept
library does LEB128 alone.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import cbor2

from ..codec import RouteTable, json_cbor
from ..errors import CodecError

#: fold flag bits
F_OBSERVE = 0b0000_0111
F_UTF8 = 0b0000_1000
F_COUNTS = 0b0001_0000
F_SENDER = 0b0010_0000
F_RESERVED = 0b1100_0000

#: the low bits of the Observe number a fold carries
OBSERVE_BITS = F_OBSERVE + 1

#: rooms whose unread counts an observation remembers (both ends alike)
MAX_ROOMS = 64
MAX_LEB128 = 10  # bytes: a 64-bit value
MAX_TOKEN_NUMBERS = 32
MAX_SENDER = 255
MAX_SENDERS = 16
#: Megolm sessions an observation remembers for its deflate dictionary
#: (``EchoContext.sessions``), and the longest field of one that is kept
MAX_SESSIONS = 4
MAX_SESSION_FIELD = 128
MAX_SESSION_BYTES = 160

#: top-level keys of a sync answer that even an idle one carries (Synapse)
COUNT_KEYS = frozenset({
    "device_one_time_keys_count",
    "device_unused_fallback_key_types",
    "org.matrix.msc2732.device_unused_fallback_key_types",
})


@dataclass(frozen=True)
class Sent:
    """What both gateways know of one send (``PUT …/rooms/{roomId}/send/{eventType}/{txnId}``)
    once it is answered: ``txn_id`` is the homeserver's (``<scope>.<k>``),
    ``content`` the JSON value of the body."""

    room_id: str
    event_type: str
    txn_id: str
    content: Any
    event_id: str


def parse_send(target: str, routes: RouteTable, send_routes: frozenset[str]) -> tuple[str, str, str] | None:
    """``(room ID, event type, raw txn segment)`` of a request target on one
    of ``send_routes`` (``…/rooms/{roomId}/send/{eventType}/{txnId}``)."""
    path, _, query = target.partition("?")
    matched = None if query else routes.match_path(path, send_routes)
    if matched is None or len(matched[1]) != 3:
        return None
    room_id, event_type, txn = matched[1]
    return unquote(room_id), unquote(event_type), txn


def sent_of(room_id: str, event_type: str, txn_id: str, body: bytes, answer: bytes) -> Sent | None:
    """The ``Sent`` of a send whose JSON ``body`` was answered ``answer``
    (``{"event_id": …}``); None for anything else."""
    try:
        content, doc = json.loads(body), json.loads(answer)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(content, dict) or not isinstance(doc, dict) or not isinstance(doc.get("event_id"), str):
        return None
    return Sent(room_id, event_type, txn_id, content, doc["event_id"])


class EchoContext:
    """What an observation's answers have shown so far, kept identically at
    both ends (it is part of the chain's state, like ``DeltaState``):
    the latest ``origin_server_ts``, each room's last unread counts, and the
    device's own user (the sender of an event carrying a transaction ID)."""

    def __init__(self) -> None:
        self.last_ts = 0
        self.counts: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self.sender: str | None = None
        #: the key counts of the latest answer, as JSON members (None: no answer yet)
        self.counts_part: bytes | None = None
        #: rooms and senders the chain showed, most recent last (≤ MAX_ROOMS / MAX_SENDERS)
        self.rooms: OrderedDict[str, None] = OrderedDict()
        self.senders: OrderedDict[str, None] = OrderedDict()
        #: the encrypted events' sessions the chain showed, most recent last
        #: (≤ MAX_SESSIONS): what of an m.room.encrypted content is not its
        #: ciphertext (``session_bytes``), for the deflate dictionary
        self.sessions: OrderedDict[bytes, None] = OrderedDict()

    def note(self, body: bytes) -> None:
        """Take in one answer of the chain (after it was folded or pushed;
        templates too)."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        if not isinstance(doc, dict):
            return
        # key counts change when the device uploads keys; an answer with
        # events says so before any idle answer renews the template
        self.counts_part = b",".join(_dump({k: v}, True)[1:-1] for k, v in doc.items() if k in COUNT_KEYS)
        rooms = doc.get("rooms")
        join = rooms.get("join") if isinstance(rooms, dict) else None
        if not isinstance(join, dict):
            return
        for room_id, section in join.items():
            if not isinstance(section, dict):
                continue
            _recent(self.rooms, room_id, MAX_ROOMS)
            timeline = section.get("timeline")
            events = timeline.get("events") if isinstance(timeline, dict) else None
            for event in events if isinstance(events, list) else ():
                if not isinstance(event, dict):
                    continue
                ts = event.get("origin_server_ts")
                if is_uint(ts) and ts > self.last_ts:
                    self.last_ts = ts
                unsigned = event.get("unsigned")
                sender = event.get("sender")
                if isinstance(sender, str) and len(sender.encode("utf-8")) <= MAX_SENDER:
                    _recent(self.senders, sender, MAX_SENDERS)
                if (isinstance(unsigned, dict) and isinstance(unsigned.get("transaction_id"), str)
                        and isinstance(sender, str) and len(sender.encode("utf-8")) <= MAX_SENDER):
                    self.sender = sender
                session = session_bytes(event) if event.get("type") == "m.room.encrypted" else None
                if session:
                    self.sessions[session] = None
                    self.sessions.move_to_end(session)
                    while len(self.sessions) > MAX_SESSIONS:
                        self.sessions.popitem(last=False)
            unread = section.get("unread_notifications")
            if isinstance(unread, dict):
                counts = unread.get("notification_count"), unread.get("highlight_count")
                if is_uint(counts[0]) and is_uint(counts[1]):
                    self.counts[room_id] = counts  # type: ignore[assignment]
                    self.counts.move_to_end(room_id)
                    while len(self.counts) > MAX_ROOMS:
                        self.counts.popitem(last=False)


def session_bytes(event: dict[str, Any]) -> bytes:
    """An encrypted event's session as the CBOR items its content's string
    fields other than the ciphertext are written as (binary fields as their
    bytes): the sender key, session ID and device ID recur in every message
    of a Megolm session, the ciphertext never.  Empty when there is none."""
    content = event.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("ciphertext"), str):
        return b""
    items, size = [], 0
    for key, value in content.items():
        if key == "ciphertext" or not isinstance(value, str) or len(value) > MAX_SESSION_FIELD:
            continue
        try:
            item = cbor2.dumps(json_cbor.string_to_binary(value) or value)
        except (cbor2.CBOREncodeError, UnicodeEncodeError, ValueError):
            continue
        size += len(item)
        if size > MAX_SESSION_BYTES:  # not a Megolm message's few fields: remember nothing of it
            return b""
        items.append(item)
    return b"".join(items)


def _recent(seen: OrderedDict[str, None], value: str, limit: int) -> None:
    seen[value] = None
    seen.move_to_end(value)
    while len(seen) > limit:
        seen.popitem(last=False)


def is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ----------------------------------------------------------------- layout


def _dump(value: Any, ascii_only: bool, sort_keys: bool = False) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"), sort_keys=sort_keys).encode("utf-8")


def sync_body(counts_part: bytes, since: str, next_batch: str, room_id: str, event: dict[str, Any],
              counts: tuple[int, int], ascii_only: bool) -> bytes:
    """A sync answer that is one event in one joined room, as Synapse writes
    it: ``next_batch``, the key counts every answer carries (``counts_part``:
    as the chain's latest answer had them), and a ``rooms`` section whose
    timeline is the one event (keys sorted at every depth, as Synapse keeps
    events), ``prev_batch`` the since."""
    section = (b'{"timeline":{"events":[' + _dump(event, ascii_only, sort_keys=True)
               + b'],"prev_batch":' + _dump(since, ascii_only) + b',"limited":false},'
               b'"state":{"events":[]},"account_data":{"events":[]},"ephemeral":{"events":[]},'
               b'"unread_notifications":{"notification_count":%d,"highlight_count":%d},"summary":{}}'
               % counts)
    return (b'{"next_batch":' + _dump(next_batch, ascii_only) + b"," + (counts_part + b"," if counts_part else b"")
            + b'"rooms":{"join":{' + _dump(room_id, ascii_only) + b":" + section + b"}}}")


def echo_body(counts_part: bytes, since: str, next_batch: str, sent: Sent, sender: str, ts: int, age: int,
              counts: tuple[int, int], ascii_only: bool) -> bytes:
    """The sync answer that is nothing but the echo of ``sent``."""
    event = {"content": sent.content, "event_id": sent.event_id, "origin_server_ts": ts, "sender": sender,
             "type": sent.event_type,
             "unsigned": {"age": age, "membership": "join", "transaction_id": sent.txn_id}}
    return sync_body(counts_part, since, next_batch, sent.room_id, event, counts, ascii_only)


# ------------------------------------------------------------------ LEB128


def leb128(value: int) -> bytes:
    if value < 0:
        raise CodecError("LEB128 of a negative number")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class FoldReader:
    """Reads a fold's LEB128 numbers and texts, refusing what runs past its end."""

    def __init__(self, data: bytes, at: int = 0) -> None:
        self.data, self.at = data, at

    def uint(self) -> int:
        value = shift = 0
        for _ in range(MAX_LEB128):
            if self.at >= len(self.data):
                raise CodecError("echo fold ends inside a number")
            byte = self.data[self.at]
            self.at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
        raise CodecError("echo fold number longer than 10 bytes")

    def text(self, limit: int) -> str:
        length = self.uint()
        if length > limit or self.at + length > len(self.data):
            raise CodecError("echo fold text too long")
        raw = self.data[self.at:self.at + length]
        self.at += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError("echo fold text is not UTF-8") from exc


# ---------------------------------------------------------------- tokens

_DIGITS = re.compile(r"\d+")


def _numbers(token: str) -> tuple[list[str], list[int]] | None:
    """The token as its text between numbers and its numbers, when writing
    the numbers back in decimal gives the token again (no leading zeros)."""
    numbers = _DIGITS.findall(token)
    if len(numbers) > MAX_TOKEN_NUMBERS or any(len(n) > 1 and n[0] == "0" for n in numbers):
        return None
    return _DIGITS.split(token), [int(n) for n in numbers]


def _join(text: list[str], numbers: list[int]) -> str:
    return "".join(t + (str(n) if i < len(numbers) else "") for i, (t, n) in
                   enumerate(zip(text, [*numbers, 0])))


def token_change(since: str, new: str) -> bytes | None:
    """``new`` as increases of the numbers in ``since`` (Synapse's tokens are
    ``s<room stream>_<account data>_…``: a send moves the first); None when
    the text between the numbers differs or a number went down."""
    old_parts, new_parts = _numbers(since), _numbers(new)
    if old_parts is None or new_parts is None or old_parts[0] != new_parts[0]:
        return None
    increases = [n - o for o, n in zip(old_parts[1], new_parts[1])]
    if any(d < 0 for d in increases) or not increases:
        return None
    others = [(i, d) for i, d in enumerate(increases) if i and d]
    out = leb128(2 * increases[0] + bool(others))
    if others:
        out += leb128(len(others)) + b"".join(leb128(i) + leb128(d) for i, d in others)
    return out


def apply_token_change(since: str, reader: FoldReader) -> str:
    parts = _numbers(since)
    if parts is None or not parts[1]:
        raise CodecError("the since token has no numbers to change")
    text, numbers = parts
    first = reader.uint()
    numbers[0] += first >> 1
    if first & 1:
        count = reader.uint()
        if not 0 < count < len(numbers):
            raise CodecError("echo fold changes more numbers than the token has")
        for _ in range(count):
            index = reader.uint()
            if not 0 < index < len(numbers):
                raise CodecError("echo fold changes a number the token does not have")
            numbers[index] += reader.uint()
    return _join(text, numbers)


# -------------------------------------------------------------- fold/unfold


def fold(body: bytes, since: str, sent: Sent, ctx: EchoContext, observe: int) -> bytes | None:
    """The fold standing for ``body`` — the homeserver's answer to ``since``
    that is to take Observe number ``observe`` — or None when ``body`` is
    not exactly the echo of ``sent`` in the layout (then it is pushed)."""
    try:
        doc = json.loads(body)
        (room_id, section), = doc["rooms"]["join"].items()
        event, = section["timeline"]["events"]
        ts, age = event["origin_server_ts"], event["unsigned"]["age"]
        sender, next_batch = event["sender"], doc["next_batch"]
        unread = section["unread_notifications"]
        counts = (unread["notification_count"], unread["highlight_count"])
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError, AttributeError):
        return None
    if (room_id != sent.room_id or not all(is_uint(v) for v in (ts, age, *counts)) or ts < ctx.last_ts
            or not isinstance(sender, str) or len(sender.encode("utf-8")) > MAX_SENDER
            or not isinstance(next_batch, str) or not next_batch.isascii()):
        return None
    change = token_change(since, next_batch)
    if change is None or ctx.counts_part is None:
        return None
    for ascii_only in (True, False):
        if echo_body(ctx.counts_part, since, next_batch, sent, sender, ts, age, counts, ascii_only) == body:
            break
    else:
        return None
    flags = observe % OBSERVE_BITS | (0 if ascii_only else F_UTF8)
    tail = b""
    if ctx.counts.get(room_id) != counts:
        flags |= F_COUNTS
        tail += leb128(counts[0]) + leb128(counts[1])
    if ctx.sender != sender:
        flags |= F_SENDER
        raw = sender.encode("utf-8")
        tail += leb128(len(raw)) + raw
    return bytes([flags]) + leb128(ts - ctx.last_ts) + leb128(age) + change + tail


def unfold(data: bytes, since: str, sent: Sent, ctx: EchoContext, observe: int) -> bytes:
    """The body ``data`` stands for (inverse of ``fold``), answering ``since``
    as the notification numbered ``observe``; CodecError when it cannot be
    read here (then the observation registers again and the server replays
    the body itself)."""
    if not data:
        raise CodecError("empty echo fold")
    flags = data[0]
    if flags & F_RESERVED:
        raise CodecError(f"echo fold flags {flags:#04x} have reserved bits set")
    if flags & F_OBSERVE != observe % OBSERVE_BITS:
        raise CodecError("the echo fold belongs to another place in the chain")
    reader = FoldReader(data, 1)
    ts = ctx.last_ts + reader.uint()
    age = reader.uint()
    next_batch = apply_token_change(since, reader)
    if flags & F_COUNTS:
        counts = (reader.uint(), reader.uint())
    else:
        known = ctx.counts.get(sent.room_id)
        if known is None:
            raise CodecError("the echo fold leaves out unread counts this observation never showed")
        counts = known
    if flags & F_SENDER:
        sender = reader.text(MAX_SENDER)
    elif ctx.sender is not None:
        sender = ctx.sender
    else:
        raise CodecError("the echo fold leaves out a sender this observation never showed")
    if reader.at != len(data):
        raise CodecError("trailing bytes after the echo fold")
    if ctx.counts_part is None:
        raise CodecError("the echo fold came before any answer of this observation")
    return echo_body(ctx.counts_part, since, next_batch, sent, sender, ts, age, counts, not flags & F_UTF8)


__all__ = ["COUNT_KEYS", "EchoContext", "FoldReader", "Sent", "apply_token_change", "echo_body", "fold", "is_uint",
           "leb128", "parse_send", "sent_of", "sync_body", "token_change", "unfold"]
