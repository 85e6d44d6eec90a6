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
that event in its sync's layout (``layout``: ``/sync`` or sliding sync),
the server gateway does not push it: it appends those few bytes (the
*fold*) to the send's answer, and the client gateway rebuilds the body, byte
for byte.  The server folds only after rebuilding the body itself from what
the client knows and finding the homeserver's exact bytes, so anything else
— another event in the same answer, another layout, another homeserver — is
pushed as before.

Fold (docs/protocol.md §9a, "The sender's echo"), after the 32-byte event ID:

* one byte: bits 0–2 the Observe number (mod 8) the answer takes in the
  chain; bit 3 the body is written as UTF-8 (else with ``\\u`` escapes, as
  Synapse writes it); bit 4 the unread counts follow (else the room's last
  counts in this observation); bit 5 the sender follows (else the one this
  observation last showed as the device's own); bit 6 (sliding sync only)
  the body is written on the rest before the latest; bit 7 (sliding sync
  only) the room's place is implied (``place``);
* LEB128: ``origin_server_ts`` minus the latest ``origin_server_ts`` of this
  observation's answers so far (0 before any); ``age``;
* the new ``next_batch`` (or ``pos``) as a change of the since it answers:
  LEB128 ``2·d₀ + more`` for the first number in the token, then, if
  ``more``, a count and (index, increase) pairs for the others
  (``token_change``);
* sliding sync: the room's bump_stamp and prev_batch (``place``);
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
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

import cbor2

from ..codec import RouteTable, json_cbor
from ..errors import CodecError
from .layout import OneEvent, compact_json, is_uint, layout_body, match, one_event

#: fold flag bits
F_OBSERVE = 0b0000_0111
F_UTF8 = 0b0000_1000
F_COUNTS = 0b0001_0000
F_SENDER = 0b0010_0000
#: sliding sync: the body is written on the rest before the latest (``layout``)
F_BASE = 0b0100_0000
#: sliding sync: bump_stamp and prev_batch follow from the positions (``place``)
F_PLACE = 0b1000_0000
F_RESERVED = 0b1100_0000

#: the low bits of the Observe number a fold carries
OBSERVE_BITS = F_OBSERVE + 1

#: rooms whose unread counts an observation remembers (both ends alike)
MAX_ROOMS = 64
MAX_LEB128 = 10  # bytes: a 64-bit value
MAX_TOKEN_NUMBERS = 32
MAX_SENDER = 255
MAX_SENDERS = 16
MAX_TYPES = 8
#: the longest room ID the event form names by index (it is given as text up to 255 B)
MAX_ROOM_ID = 255
MAX_TYPE = 255
#: Megolm sessions an observation remembers for its deflate dictionary
#: (``EchoContext.sessions``), and the longest field of one that is kept
MAX_SESSIONS = 4
MAX_SESSION_FIELD = 128
MAX_SESSION_BYTES = 160
#: sliding sync: rests an observation remembers, and the longest one kept
MAX_RESTS = 2
MAX_REST = 8 << 10

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
    device's own user (the sender of an event carrying a transaction ID);
    for sliding sync (``sliding``) also the greatest ``bump_stamp`` and the
    last two *rests* (``layout``)."""

    def __init__(self, sliding: bool = False) -> None:
        self.sliding = sliding
        self.last_ts = 0
        self.counts: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self.sender: str | None = None
        #: /sync: the key counts of the latest answer, as JSON members (None: no answer yet)
        self.counts_part: bytes | None = None
        #: rooms and senders the chain showed, most recent last (≤ MAX_ROOMS / MAX_SENDERS)
        self.rooms: OrderedDict[str, None] = OrderedDict()
        self.senders: OrderedDict[str, None] = OrderedDict()
        #: event types the chain showed, most recent last (≤ MAX_TYPES)
        self.types: OrderedDict[str, None] = OrderedDict()
        #: the encrypted events' sessions the chain showed, most recent last
        #: (≤ MAX_SESSIONS): what of an m.room.encrypted content is not its
        #: ciphertext (``session_bytes``), for the deflate dictionary
        self.sessions: OrderedDict[bytes, None] = OrderedDict()
        #: sliding sync: the greatest bump_stamp the chain showed
        self.bump = 0
        #: sliding sync: the last MAX_RESTS distinct rests (an answer but its
        #: pos and rooms, compact ASCII JSON ≤ MAX_REST bytes), most recent last
        self.rests: OrderedDict[bytes, None] = OrderedDict()

    @property
    def answered(self) -> bool:
        """The chain showed an answer a layout can be written from."""
        return bool(self.rests) if self.sliding else self.counts_part is not None

    def rest(self, base: int) -> dict[str, Any] | None:
        """The rest ``base`` answers back (0: the most recent), or None."""
        rests = list(self.rests)
        return json.loads(rests[-1 - base]) if base < len(rests) else None

    def note(self, body: bytes) -> None:
        """Take in one answer of the chain (after it was folded or pushed;
        templates too)."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        if not isinstance(doc, dict):
            return
        rooms = doc.get("rooms")
        if self.sliding:
            if isinstance(doc.get("pos"), str) and isinstance(rooms, dict):
                try:
                    rest = compact_json({**doc, "pos": "", "rooms": {}}, True)
                except (ValueError, RecursionError):
                    rest = b""
                if 0 < len(rest) <= MAX_REST:
                    _recent(self.rests, rest, MAX_RESTS)
            self._note_lists(doc.get("lists"))
            sections = rooms
        else:
            # key counts change when the device uploads keys; an answer with
            # events says so before any idle answer renews the template
            self.counts_part = b",".join(compact_json({k: v}, True)[1:-1] for k, v in doc.items() if k in COUNT_KEYS)
            sections = rooms.get("join") if isinstance(rooms, dict) else None
        if not isinstance(sections, dict):
            return
        for room_id, section in sections.items():
            if not isinstance(section, dict):
                continue
            _recent(self.rooms, room_id, MAX_ROOMS)
            timeline = section.get("timeline")
            events = timeline if self.sliding else timeline.get("events") if isinstance(timeline, dict) else None
            for event in events if isinstance(events, list) else ():
                if isinstance(event, dict):
                    self._note_event(event)
            unread = section if self.sliding else section.get("unread_notifications")
            if isinstance(unread, dict):
                counts = unread.get("notification_count"), unread.get("highlight_count")
                if is_uint(counts[0]) and is_uint(counts[1]):
                    self.counts[room_id] = counts  # type: ignore[assignment]
                    self.counts.move_to_end(room_id)
                    while len(self.counts) > MAX_ROOMS:
                        self.counts.popitem(last=False)
            bump = section.get("bump_stamp") if self.sliding else None
            if is_uint(bump) and bump > self.bump:
                self.bump = bump

    def _note_lists(self, lists: Any) -> None:
        """Sliding sync: the rooms the lists show (their first MAX_ROOMS each,
        the top one most recent), so that an event form names a room the
        client has listed but not yet had an event of by its index."""
        for listed in lists.values() if isinstance(lists, dict) else ():
            ops = listed.get("ops") if isinstance(listed, dict) else None
            for op in ops if isinstance(ops, list) else ():
                room_ids = op.get("room_ids") if isinstance(op, dict) else None
                if isinstance(room_ids, list):
                    for room_id in reversed(room_ids[:MAX_ROOMS]):
                        if isinstance(room_id, str) and len(room_id.encode("utf-8")) <= MAX_ROOM_ID:
                            _recent(self.rooms, room_id, MAX_ROOMS)

    def _note_event(self, event: dict[str, Any]) -> None:
        ts = event.get("origin_server_ts")
        if is_uint(ts) and ts > self.last_ts:
            self.last_ts = ts
        unsigned = event.get("unsigned")
        sender = event.get("sender")
        kind = event.get("type")
        if isinstance(kind, str) and 0 < len(kind.encode("utf-8")) <= MAX_TYPE:
            _recent(self.types, kind, MAX_TYPES)
        if isinstance(sender, str) and len(sender.encode("utf-8")) <= MAX_SENDER:
            _recent(self.senders, sender, MAX_SENDERS)
            if isinstance(unsigned, dict) and isinstance(unsigned.get("transaction_id"), str):
                self.sender = sender
        session = session_bytes(event) if event.get("type") == "m.room.encrypted" else None
        if session:
            self.sessions[session] = None
            self.sessions.move_to_end(session)
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)


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



# ----------------------------------------------------------------- layout


def echo_event(sent: Sent, sender: str, ts: int, age: int) -> dict[str, Any]:
    """The event the homeserver gives the device back for ``sent``."""
    return {"content": sent.content, "event_id": sent.event_id, "origin_server_ts": ts, "sender": sender,
            "type": sent.event_type, "unsigned": {"age": age, "membership": "join", "transaction_id": sent.txn_id}}


def _stream_part(since: str) -> str:
    """A sliding-sync pos's stream token (``<connection>/<stream token>``)."""
    return since.rpartition("/")[2]


def _implied_place(pos: str, lead: int) -> tuple[int, str] | None:
    """``(bump_stamp, prev_batch)`` Synapse gives a room whose one new event
    is the newest of ``pos``: the pos's ``lead`` number, and the pos's stream
    token with that number one less (every other stream as the pos has it)."""
    parts = _numbers(pos)
    if parts is None or lead >= len(parts[1]) or parts[1][lead] < 1:
        return None
    text, numbers = parts
    bump = numbers[lead]
    numbers[lead] -= 1
    return bump, _stream_part(_join(text, numbers))


def place(one: OneEvent, since: str, ctx: EchoContext) -> tuple[int, bytes] | None:
    """What of ``one``'s room a sliding-sync answer adds, as flag bits and
    bytes: nothing but ``F_PLACE`` when bump_stamp is the new pos's lead
    number and prev_batch the new pos's stream token with that number one
    less (the event is the newest in the room stream, however far presence,
    receipts or typing moved meanwhile); else LEB128 bump_stamp minus the
    greatest the chain showed, then prev_batch as a change of the since's
    stream token (``token_change``).  Nothing for /sync (its prev_batch is
    the since).  None: not writable so."""
    if not ctx.sliding:
        return 0, b""
    if _implied_place(one.token, lead_number(since, ctx)) == (one.bump, one.prev_batch):
        return F_PLACE, b""
    prev = token_change(_stream_part(since), one.prev_batch)
    return None if prev is None or one.bump < ctx.bump else (0, leb128(one.bump - ctx.bump) + prev)


def read_place(flags: int, reader: FoldReader, since: str, token: str, ctx: EchoContext) -> tuple[int, str]:
    """``(bump_stamp, prev_batch)`` (inverse of ``place``) of the answer
    whose new position is ``token``."""
    if not ctx.sliding:
        return 0, ""
    if flags & F_PLACE:
        implied = _implied_place(token, lead_number(since, ctx))
        if implied is None:
            raise CodecError("the pos has no number to take the bump_stamp from")
        return implied
    bump = ctx.bump + reader.uint()
    return bump, apply_token_change(_stream_part(since), reader)


@dataclass(frozen=True)
class Head:
    """What a fold and an event form both begin with, after their flags."""

    ts: int
    age: int
    #: the answer's new next_batch or pos
    token: str
    bump: int
    prev_batch: str


def write_head(one: OneEvent, since: str, ctx: EchoContext, body: bytes, utf8: int) -> tuple[int, bytes] | None:
    """The flag bits (``utf8`` when ``body`` is written as UTF-8, ``F_BASE``,
    ``F_PLACE``) and the bytes that start a fold or an event form of
    ``one``: LEB128 ts minus the chain's latest and age, the position's
    change, the room's place.  None: ``body`` is not ``one`` written on what
    the chain showed."""
    matched, where = match(one, since, ctx, body), place(one, since, ctx)
    change = token_change(since, one.token, lead_number(since, ctx))
    if matched is None or change is None or where is None:
        return None
    (ascii_only, base), (place_flag, where) = matched, where
    flags = (0 if ascii_only else utf8) | (F_BASE if base else 0) | place_flag
    return flags, leb128(one.ts - ctx.last_ts) + leb128(one.age) + change + where


def read_head(flags: int, reader: FoldReader, since: str, ctx: EchoContext) -> Head:
    """The inverse of ``write_head``'s bytes."""
    ts = ctx.last_ts + reader.uint()
    age = reader.uint()
    token = apply_token_change(since, reader, lead_number(since, ctx))
    return Head(ts, age, token, *read_place(flags, reader, since, token, ctx))


def reserved_bits(ctx: EchoContext) -> int:
    """Flag bits a fold or an event form must leave zero: in sliding sync,
    bit 6 names the rest (``F_BASE``) and bit 7 says the place is implied
    (``F_PLACE``)."""
    return 0 if ctx.sliding else F_RESERVED


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


def token_change(since: str, new: str, lead: int = 0) -> bytes | None:
    """``new`` as increases of the numbers in ``since`` (Synapse's tokens are
    ``s<room stream>_<account data>_…``: a send moves the first; in a
    sliding-sync pos ``<connection>/s<room stream>_…`` the number after the
    connection's: ``lead``, the number given the short form); None when the
    text between the numbers differs or a number went down."""
    old_parts, new_parts = _numbers(since), _numbers(new)
    if old_parts is None or new_parts is None or old_parts[0] != new_parts[0]:
        return None
    increases = [n - o for o, n in zip(old_parts[1], new_parts[1])]
    if any(d < 0 for d in increases) or not increases:
        return None
    lead = lead if lead < len(increases) else 0
    others = [(i, d) for i, d in enumerate(increases) if i != lead and d]
    out = leb128(2 * increases[lead] + bool(others))
    if others:
        out += leb128(len(others)) + b"".join(leb128(i) + leb128(d) for i, d in others)
    return out


def apply_token_change(since: str, reader: FoldReader, lead: int = 0) -> str:
    parts = _numbers(since)
    if parts is None or not parts[1]:
        raise CodecError("the since token has no numbers to change")
    text, numbers = parts
    lead = lead if lead < len(numbers) else 0
    first = reader.uint()
    numbers[lead] += first >> 1
    if first & 1:
        count = reader.uint()
        if not 0 < count < len(numbers):
            raise CodecError("echo fold changes more numbers than the token has")
        for _ in range(count):
            index = reader.uint()
            if index == lead or index >= len(numbers):
                raise CodecError("echo fold changes a number the token does not have")
            numbers[index] += reader.uint()
    return _join(text, numbers)


def lead_number(since: str, ctx: EchoContext) -> int:
    """Which number of the since a send moves (``token_change``): the first
    of a sliding-sync pos's stream token, the first of a /sync token."""
    return len(_DIGITS.findall(since.rpartition("/")[0])) if ctx.sliding else 0


# -------------------------------------------------------------- fold/unfold


def fold(body: bytes, since: str, sent: Sent, ctx: EchoContext, observe: int) -> bytes | None:
    """The fold standing for ``body`` — the homeserver's answer to ``since``
    that is to take Observe number ``observe`` — or None when ``body`` is
    not exactly the echo of ``sent`` in the layout (then it is pushed)."""
    one = one_event(body, ctx.sliding)
    if (one is None or one.room_id != sent.room_id or one.ts < ctx.last_ts
            or len(one.sender.encode("utf-8")) > MAX_SENDER):
        return None
    one = replace(one, event=echo_event(sent, one.sender, one.ts, one.age))
    head = write_head(one, since, ctx, body, F_UTF8)
    if head is None:
        return None
    flags, tail = head
    flags |= observe % OBSERVE_BITS
    if ctx.counts.get(one.room_id) != one.counts:
        flags |= F_COUNTS
        tail += leb128(one.counts[0]) + leb128(one.counts[1])
    if ctx.sender != one.sender:
        flags |= F_SENDER
        raw = one.sender.encode("utf-8")
        tail += leb128(len(raw)) + raw
    return bytes([flags]) + tail


def takes_place(data: bytes, observe: int) -> bool:
    """Whether the fold ``data`` takes the Observe number ``observe``, as far
    as its 3 bits tell: with NSTART 4, at most 3 other sends' answers can
    overtake it, so a mismatch is such an overtaking (a gap), never a fold
    read at the wrong place."""
    return bool(data) and data[0] & F_OBSERVE == observe % OBSERVE_BITS


def unfold(data: bytes, since: str, sent: Sent, ctx: EchoContext, observe: int) -> bytes:
    """The body ``data`` stands for (inverse of ``fold``), answering ``since``
    as the notification numbered ``observe``; CodecError when it cannot be
    read here (then the observation registers again and the server replays
    the body itself)."""
    if not data:
        raise CodecError("empty echo fold")
    flags = data[0]
    if flags & reserved_bits(ctx):
        raise CodecError(f"echo fold flags {flags:#04x} have reserved bits set")
    if flags & F_OBSERVE != observe % OBSERVE_BITS:
        raise CodecError("the echo fold belongs to another place in the chain")
    reader = FoldReader(data, 1)
    head = read_head(flags, reader, since, ctx)
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
    one = OneEvent(head.token, sent.room_id, echo_event(sent, sender, head.ts, head.age), counts, head.bump,
                   head.prev_batch)
    body = layout_body(one, since, ctx, not flags & F_UTF8, 1 if flags & F_BASE else 0)
    if body is None:
        raise CodecError("the echo fold came before any answer it can be written on")
    return body


__all__ = ["COUNT_KEYS", "F_BASE", "F_PLACE", "EchoContext", "FoldReader", "Head", "Sent", "apply_token_change",
           "echo_event", "fold", "is_uint", "lead_number", "leb128", "parse_send", "place", "read_head", "read_place",
           "reserved_bits", "sent_of", "takes_place", "token_change", "unfold", "write_head"]
