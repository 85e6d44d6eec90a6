"""Sync push: an answer that is one event in one room, as the homeserver writes it (sans-I/O).

The sender's echo (``echo.fold``) and the event form (``compact``) send such
an answer as its few fields the client gateway cannot know, and the client
gateway writes the homeserver's bytes again.  What surrounds the event
depends on the sync (docs/protocol.md §9a, "The sender's echo"):

* ``/sync`` (``sync_body``): ``next_batch``, the key counts of the chain's
  latest answer, then ``rooms.join.ROOM`` with the event as the timeline,
  ``prev_batch`` = the since, empty state, account data and ephemeral
  sections, the unread counts and an empty summary (Synapse 1.163).
* sliding sync (``sliding_body``): one of the last two *rests* the chain
  showed — an answer's members but ``pos`` and ``rooms`` (the lists and the
  extensions, in the answer's order) — with ``pos`` and ``rooms`` put in,
  the room being ``{notification_count, highlight_count, bump_stamp,
  timeline: [EVENT], limited: false, prev_batch, num_live: 1}``: what
  Synapse writes for a room the connection already knows.

Events are written with keys sorted at every depth, as Synapse keeps them.
Nothing here is assumed of a homeserver: the server gateway uses a layout
only after writing the body from the fields gives the homeserver's exact
bytes (``match``), and pushes the body itself otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol


class Shown(Protocol):
    """What the chain's answers showed (``echo.EchoContext``)."""

    sliding: bool
    counts_part: bytes | None

    def rest(self, base: int) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class OneEvent:
    """An answer that is one event in one room: the event and what is around it."""

    token: str  # the new next_batch (/sync) or pos (sliding sync)
    room_id: str
    event: dict[str, Any]
    counts: tuple[int, int]  # the room's notification and highlight counts
    bump: int = 0  # sliding sync: the room's bump_stamp
    prev_batch: str = ""  # sliding sync: the timeline's prev_batch (/sync: the since)

    @property
    def ts(self) -> int:
        return self.event["origin_server_ts"]

    @property
    def age(self) -> int:
        return self.event["unsigned"]["age"]

    @property
    def sender(self) -> str:
        return self.event["sender"]


def is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def one_event(body: bytes, sliding: bool) -> OneEvent | None:
    """``body`` read as one event in one room, or None when it is not that
    shape (whether it is exactly a layout is for ``match`` to say)."""
    try:
        doc = json.loads(body)
        if sliding:
            token = doc["pos"]
            (room_id, section), = doc["rooms"].items()
            event, = section["timeline"]
            counts = (section["notification_count"], section["highlight_count"])
            bump, prev_batch = section["bump_stamp"], section["prev_batch"]
        else:
            token = doc["next_batch"]
            (room_id, section), = doc["rooms"]["join"].items()
            event, = section["timeline"]["events"]
            unread = section["unread_notifications"]
            counts = (unread["notification_count"], unread["highlight_count"])
            bump, prev_batch = 0, ""
        ts, age = event["origin_server_ts"], event["unsigned"]["age"]
        fields = (event["sender"], event["type"], event["event_id"])
        content = event["content"]
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError, AttributeError):
        return None
    if (not all(is_uint(v) for v in (ts, age, bump, *counts)) or not isinstance(content, dict)
            or not all(isinstance(v, str) for v in (token, room_id, prev_batch, *fields)) or not token.isascii()):
        return None
    return OneEvent(token, room_id, event, counts, bump, prev_batch)  # type: ignore[arg-type]


def compact_json(value: Any, ascii_only: bool, sort_keys: bool = False) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"), sort_keys=sort_keys).encode("utf-8")


def sync_body(counts_part: bytes, since: str, next_batch: str, room_id: str, event: dict[str, Any],
              counts: tuple[int, int], ascii_only: bool) -> bytes:
    """A ``/sync`` answer that is one event in one joined room, as Synapse
    writes it: ``next_batch``, the key counts every answer carries
    (``counts_part``: as the chain's latest answer had them), and a
    ``rooms`` section whose timeline is the one event, ``prev_batch`` the since."""
    section = (b'{"timeline":{"events":[' + compact_json(event, ascii_only, sort_keys=True)
               + b'],"prev_batch":' + compact_json(since, ascii_only) + b',"limited":false},'
               b'"state":{"events":[]},"account_data":{"events":[]},"ephemeral":{"events":[]},'
               b'"unread_notifications":{"notification_count":%d,"highlight_count":%d},"summary":{}}'
               % counts)
    return (b'{"next_batch":' + compact_json(next_batch, ascii_only) + b","
            + (counts_part + b"," if counts_part else b"")
            + b'"rooms":{"join":{' + compact_json(room_id, ascii_only) + b":" + section + b"}}}")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def sliding_body(rest: dict[str, Any], one: OneEvent, ascii_only: bool) -> bytes:
    """A sliding-sync answer that is ``one`` in a room the connection knows:
    ``rest`` (an earlier answer's members, ``pos`` and ``rooms`` among them
    in their places) with the new ``pos`` and the one room."""
    room = {"notification_count": one.counts[0], "highlight_count": one.counts[1], "bump_stamp": one.bump,
            "timeline": [_sorted(one.event)], "limited": False, "prev_batch": one.prev_batch, "num_live": 1}
    return compact_json({**rest, "pos": one.token, "rooms": {one.room_id: room}}, ascii_only)


def layout_body(one: OneEvent, since: str, shown: Shown, ascii_only: bool, base: int = 0) -> bytes | None:
    """The body ``one`` stands for in its sync's layout; None when the chain
    showed too little to write it (no answer yet, no such rest)."""
    if shown.sliding:
        rest = shown.rest(base)
        return None if rest is None else sliding_body(rest, one, ascii_only)
    if shown.counts_part is None or base:
        return None
    return sync_body(shown.counts_part, since, one.token, one.room_id, one.event, one.counts, ascii_only)


def match(one: OneEvent, since: str, shown: Shown, body: bytes) -> tuple[bool, int] | None:
    """``(ascii_only, base)`` with which the layout writes exactly ``body``, or None."""
    for base in (0, 1) if shown.sliding else (0,):
        for ascii_only in (True, False):
            if layout_body(one, since, shown, ascii_only, base) == body:
                return ascii_only, base
    return None


__all__ = ["OneEvent", "Shown", "compact_json", "is_uint", "layout_body", "match", "one_event", "sliding_body",
           "sync_body"]
