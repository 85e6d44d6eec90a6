"""Sync push: a notification that is one event, as its fields (sans-I/O).

Most pushes are one message from someone else in one room, in a layout of
``layout`` (``/sync``'s or sliding sync's).  Deflated against the previous bodies such an
answer still costs ~72 B: the event ID (32 random bytes) and the text are
most of it, and the rest — timestamp, ``age``, tokens, counts, sender, room —
is a few bytes each that deflate spends ~25 B on.  Sent as fields instead,
against what the chain showed (``echo.EchoContext``), the rest takes ~6 B.
The server uses this form only when rebuilding the body from the fields
gives the homeserver's exact bytes, and only when it is the smaller one.

Event form (docs/protocol.md §9a, "Notification payload", encoding 3):

* one byte of flags: bit 0 the body is raw UTF-8 (else ``\\u`` escapes);
  bits 1–2 the room's unread counts: 0 as the room last showed, 1 its
  notification count plus one, 2 given; bit 3 the sender is given (else an
  index among the senders the chain showed, most recent 0); bit 4 the room
  is given (else an index likewise); bit 5 the type is given (else
  ``m.room.message``; given as an empty text and an index among the types
  the chain showed when it is one of them); in sliding sync, bit 6 the body is written on the
  rest before the latest and bit 7 the room's place is implied
  (``echo.place``), else bits 6–7 zero;
* LEB128: ``origin_server_ts`` minus the chain's latest, ``age``; the new
  ``next_batch`` or ``pos`` as a change of the since (``echo.token_change``);
  for sliding sync then the room's bump_stamp and prev_batch (``echo.place``);
* the counts (two LEB128) when given; the sender and the room: LEB128
  length and UTF-8, or LEB128 index; the type: LEB128 length and UTF-8;
* the event ID: 32 bytes (``$`` + URL-safe base64 of them);
* the content: raw deflate of its CBOR (the profile's table), against the
  observation's notification dictionary — the same dictionary a deflated
  notification would use.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

from ..codec import CborTable, compress, decompress, json_cbor
from ..codec.route_option import binary_id
from ..errors import CodecError, GatewayError
from .echo import F_BASE, MAX_SENDER, EchoContext, FoldReader, leb128, read_head, reserved_bits, write_head
from .layout import OneEvent, layout_body, one_event

F_UTF8 = 0b0000_0001
F_COUNTS = 0b0000_0110
F_SENDER = 0b0000_1000
F_ROOM = 0b0001_0000
F_TYPE = 0b0010_0000
COUNTS_SAME, COUNTS_PLUS_ONE, COUNTS_GIVEN = 0, 1, 2
COUNTS_SHIFT = 1

DEFAULT_TYPE = "m.room.message"
EVENT_ID_BYTES = 32
MAX_TEXT = 255
#: the content expands to at most this (deflate bomb cap)
MAX_CONTENT = 64 << 10


def _index(seen: Any, value: str) -> int | None:
    """``value``'s place among ``seen`` (an ordered map, most recent last), most recent 0."""
    if value not in seen:
        return None
    keys = list(seen)
    return len(keys) - 1 - keys.index(value)


def _by_index(seen: Any, index: int) -> str:
    keys = list(seen)
    if index >= len(keys):
        raise CodecError("the event form names a room, sender or type the chain never showed")
    return keys[len(keys) - 1 - index]


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > MAX_TEXT:
        raise CodecError("text too long for the event form")
    return leb128(len(raw)) + raw


def encode_event(body: bytes, since: str, ctx: EchoContext, table: CborTable, dictionary: bytes) -> bytes | None:
    """The event form of ``body`` (the answer to ``since``), or None when the
    body is not one event of someone else's in the layout."""
    one = one_event(body, ctx.sliding)
    if (one is None or one.ts < ctx.last_ts or not ctx.answered or set(one.event["unsigned"]) != {"age", "membership"}
            or not one.event["type"]):  # an empty text stands for a type's index
        return None
    event = one.event
    one = replace(one, event={"content": event["content"], "event_id": event["event_id"], "origin_server_ts": one.ts,
                              "sender": one.sender, "type": event["type"],
                              "unsigned": {"age": one.age, "membership": "join"}})
    raw_id, head = binary_id(event["event_id"], "$"), write_head(one, since, ctx, body, F_UTF8)
    if raw_id is None or head is None:
        return None
    flags, tail = head
    try:
        last = ctx.counts.get(one.room_id)
        if last == one.counts:
            pass
        elif last is not None and one.counts == (last[0] + 1, last[1]):
            flags |= COUNTS_PLUS_ONE << COUNTS_SHIFT
        else:
            flags |= COUNTS_GIVEN << COUNTS_SHIFT
            tail += leb128(one.counts[0]) + leb128(one.counts[1])
        for value, seen, flag in ((one.sender, ctx.senders, F_SENDER), (one.room_id, ctx.rooms, F_ROOM)):
            index = _index(seen, value)
            if index is None:
                flags |= flag
                tail += _text(value)
            else:
                tail += leb128(index)
        if event["type"] != DEFAULT_TYPE:
            flags |= F_TYPE
            index = _index(ctx.types, event["type"])
            # a type the chain showed: an empty text, then its index (m.room.encrypted is 17 B)
            tail += _text(event["type"]) if index is None else b"\x00" + leb128(index)
        content_cbor = json_cbor.encode(event["content"], table, canonical=False)
        back = json_cbor.decode(content_cbor, table, ordered=True)
    except (CodecError, GatewayError, RecursionError):
        return None
    # what the client will read must give the same bytes
    if layout_body(replace(one, event={**one.event, "content": back}), since, ctx, not flags & F_UTF8,
                   1 if flags & F_BASE else 0) != body:
        return None
    return bytes([flags]) + tail + raw_id + compress(content_cbor, dictionary)


def decode_event(data: bytes, since: str, ctx: EchoContext, table: CborTable, dictionary: bytes) -> bytes:
    """The body ``data`` stands for (inverse of ``encode_event``)."""
    if not data:
        raise CodecError("empty event form")
    flags = data[0]
    counts_mode = (flags & F_COUNTS) >> COUNTS_SHIFT
    if flags & reserved_bits(ctx) or counts_mode > COUNTS_GIVEN:
        raise CodecError(f"event form flags {flags:#04x} are not valid")
    if not ctx.answered:
        raise CodecError("an event form before any answer of this observation")
    reader = FoldReader(data, 1)
    head = read_head(flags, reader, since, ctx)
    given = (reader.uint(), reader.uint()) if counts_mode == COUNTS_GIVEN else None
    sender = reader.text(MAX_SENDER) if flags & F_SENDER else _by_index(ctx.senders, reader.uint())
    room_id = reader.text(MAX_TEXT) if flags & F_ROOM else _by_index(ctx.rooms, reader.uint())
    kind = (reader.text(MAX_TEXT) or _by_index(ctx.types, reader.uint())) if flags & F_TYPE else DEFAULT_TYPE
    if given is not None:
        counts = given
    else:
        last = ctx.counts.get(room_id)
        if last is None:
            raise CodecError("the event form leaves out counts the room never showed")
        counts = last if counts_mode == COUNTS_SAME else (last[0] + 1, last[1])
    if reader.at + EVENT_ID_BYTES > len(data):
        raise CodecError("the event form ends inside the event ID")
    raw_id = data[reader.at:reader.at + EVENT_ID_BYTES]
    event_id = "$" + base64.urlsafe_b64encode(raw_id).decode("ascii").rstrip("=")
    content = json_cbor.decode(decompress(data[reader.at + EVENT_ID_BYTES:], dictionary, MAX_CONTENT), table,
                               ordered=True)
    if not isinstance(content, dict):
        raise CodecError("the event form's content is not an object")
    event = {"content": content, "event_id": event_id, "origin_server_ts": head.ts, "sender": sender, "type": kind,
             "unsigned": {"age": head.age, "membership": "join"}}
    body = layout_body(OneEvent(head.token, room_id, event, counts, head.bump, head.prev_batch), since, ctx,
                       not flags & F_UTF8, 1 if flags & F_BASE else 0)
    if body is None:
        raise CodecError("the event form names a rest the chain never showed")
    return body


__all__ = ["decode_event", "encode_event"]
