"""The timeline form of a JSON body: its timestamps as differences (sans-I/O).

A first sync, a page of ``/messages`` or ``/context`` holds many events,
each with an ``origin_server_ts`` (13 digits, 9 CBOR bytes) and, most, an
``unsigned.age``.  Deflate finds only the shared high bytes of those: on a
first sync with 17 events they cost ~8 B each.  Written as differences they
cost one or two:

* each ``origin_server_ts`` (an integer) becomes its difference from the
  previous one in the walk (the first: from 0);
* the ``age`` of that object's ``unsigned`` (an integer) is written as the
  change of ``origin_server_ts + age`` — the moment the homeserver wrote the
  answer, the same for every event of it — from the previous such sum (the
  first: ``age`` itself).

The walk visits objects depth first in the CBOR's own key order (an
object's own timestamp before what it contains), on the canonical CBOR
of §6, so both ends walk the same tree.  The result is CBOR in that order,
deflated against the profile's preset dictionary followed by the text
dictionary of the compact form (message texts are most of such a body).
Content-Format ``CF_TIMELINE`` says so; the server uses it only when it is
smaller, Content-Format included.

A profile with a timeline table (lb4, ``timeline_table``) adds two things:
the dictionary ends with the table's template (a first sync with neutral
values: the default push rules every first sync carries, a room's default
state), and event IDs of room v4+ leave the body for a column
of raw bytes after it, each replaced by ``"$"`` (a string of only ``$``
signs gets one more, so nothing is ambiguous).  docs/protocol.md §5.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import CodecError
from . import json_cbor
from .compression import MAX_DICTIONARY_SIZE, FlateDictionary, compress, decompress
from .profile import Profile

TS = "origin_server_ts"
#: below this many timestamps the form cannot pay for its Content-Format
MIN_TIMESTAMPS = 2

#: what stands for an event ID of the column, in the body
COLUMN_MARK = "$"
#: the binary-field marker of the event IDs the column carries (§6.4: `$` +
#: URL-safe base64, room v4+) and their raw length (a SHA-256)
_COLUMN_FORM, EVENT_ID_BYTES = 0x01, 32

#: (preset, text, timeline table digests) -> the dictionary (hashed once)
_DICTIONARIES: dict[tuple[str, str, str], FlateDictionary] = {}


def dictionary(profile: Profile) -> FlateDictionary | None:
    """The preset dictionary of the timeline form, or None when the profile
    has no compact form (no text dictionary)."""
    if profile.flate is None or profile.schemas is None:
        return None
    text = profile.schemas.text_dictionary
    table = profile.timeline
    key = (profile.flate.digest, text.digest, table.digest if table else "")
    found = _DICTIONARIES.get(key)
    if found is None:
        template = json_cbor.encode(table.template, profile.cbor_table) if table else b""
        found = _DICTIONARIES[key] = FlateDictionary((profile.flate.data + text.data + template)[-MAX_DICTIONARY_SIZE:])
    return found


def _uses_column(profile: Profile) -> bool:
    return profile.timeline is not None and profile.timeline.event_id_column


def _string_slots(doc: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key or index) of every string value (not object keys),
    depth first, members and elements in order: the column's order."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list):
            items = list(enumerate(node))
        else:
            continue
        for slot, value in items:
            if isinstance(value, str):
                yield node, slot
        stack.extend(value for _, value in reversed(items) if isinstance(value, (dict, list)))


def _only_marks(text: str) -> bool:
    return bool(text) and text.count(COLUMN_MARK) == len(text)


def _to_column(doc: Any) -> bytes:
    """Event IDs out of ``doc`` (in place) into the column it returns."""
    column = bytearray()
    for node, slot in _string_slots(doc):
        text = node[slot]
        if _only_marks(text):
            node[slot] = text + COLUMN_MARK  # escaped: one mark more
            continue
        raw = json_cbor.string_to_binary(text)
        if raw is not None and raw[0] == _COLUMN_FORM and len(raw) == 1 + EVENT_ID_BYTES:
            column += raw[1:]
            node[slot] = COLUMN_MARK
    return bytes(column)


def _from_column(doc: Any, column: bytes) -> None:
    """Undo :func:`_to_column`; every column entry must be used, once."""
    used = 0
    for node, slot in _string_slots(doc):
        text = node[slot]
        if not _only_marks(text):
            continue
        if len(text) > 1:
            node[slot] = text[1:]
            continue
        if used + EVENT_ID_BYTES > len(column):
            raise CodecError("the body names more event IDs than its column holds")
        node[slot] = json_cbor.binary_to_string(bytes([_COLUMN_FORM]) + column[used:used + EVENT_ID_BYTES])
        used += EVENT_ID_BYTES
    if used != len(column):
        raise CodecError(f"{len(column) - used} bytes after the body are not event IDs it names")


def _is_int(value: Any) -> bool:
    return type(value) is int


def _walk(doc: Any, encode: bool) -> None:
    """Timestamps to differences (``encode``) or back, in place."""
    last_ts, last_sum = 0, None
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        ts = node.get(TS)
        if _is_int(ts):
            if encode:
                node[TS] = ts - last_ts
            else:
                ts = node[TS] = last_ts + ts
            last_ts = ts
            unsigned = node.get("unsigned")
            age = unsigned.get("age") if isinstance(unsigned, dict) else None
            if _is_int(age):
                base = ts if last_sum is None else last_sum
                if encode:
                    last_sum = ts + age
                    unsigned["age"] = last_sum - base
                else:
                    last_sum = base + age
                    unsigned["age"] = last_sum - ts
        stack.extend(reversed(list(node.values())))


def _objects(doc: Any) -> Iterator[dict[str, Any]]:
    """Every object in a JSON value (in no particular order)."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            yield node
            stack.extend(node.values())


def _check(doc: Any) -> None:
    """Every timestamp and age a decoder wrote back is a Matrix integer."""
    for node in _objects(doc):
        for key in (TS, "age"):
            if _is_int(node.get(key)):
                json_cbor.check_number(node[key])


def encode(canonical_cbor: bytes, profile: Profile) -> bytes | None:
    """The timeline form of a body given as its canonical CBOR (§6), or None
    when the body has fewer than two timestamps or the profile no text
    dictionary."""
    preset = dictionary(profile)
    if preset is None:
        return None
    doc = json_cbor.decode(canonical_cbor, profile.cbor_table, ordered=True)
    if sum(1 for node in _objects(doc) if _is_int(node.get(TS))) < MIN_TIMESTAMPS:
        return None
    _walk(doc, encode=True)
    column = _to_column(doc) if _uses_column(profile) else b""
    try:
        data = json_cbor.encode(doc, profile.cbor_table, canonical=False)
    except CodecError:  # a difference beyond ±(2**53 - 1)
        return None
    return compress(data + column, preset)


def decode(payload: bytes, profile: Profile, max_size: int) -> bytes:
    """The JSON body a timeline-form payload stands for."""
    preset = dictionary(profile)
    if preset is None:
        raise CodecError("the timeline form needs a profile with the compact form")
    data = decompress(payload, preset, max_size)
    if _uses_column(profile):
        doc, end = json_cbor.decode_prefix(data, profile.cbor_table, ordered=True)
        _from_column(doc, data[end:])  # the column: what follows the body
    else:
        doc = json_cbor.decode(data, profile.cbor_table, ordered=True)
    _walk(doc, encode=False)
    _check(doc)
    return json_cbor.dump_json(doc)


__all__ = ["COLUMN_MARK", "EVENT_ID_BYTES", "MIN_TIMESTAMPS", "decode", "dictionary", "encode"]
