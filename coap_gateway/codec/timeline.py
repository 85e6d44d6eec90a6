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
state), and message texts, event IDs and Synapse's tokens leave the body
for a column after it (``column``), deflated in blocks of their own.  Such a profile uses the form for a body
with a token even without timestamps (a login's answer).  docs/protocol.md §5.1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import CodecError
from . import column as column_form
from . import json_cbor
from .compression import MAX_DICTIONARY_SIZE, FlateDictionary, compress_sections, decompress
from .profile import Profile

TS = "origin_server_ts"
#: below this many timestamps the form cannot pay for its Content-Format
MIN_TIMESTAMPS = 2

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


def column_kinds(profile: Profile) -> frozenset[str]:
    """The kinds of the profile's column (§5.1; empty without a timeline table)."""
    return profile.timeline.columns if profile.timeline is not None else frozenset()


def worth_trying(body: bytes, profile: Profile) -> bool:
    """Whether a JSON body may come out smaller in the timeline form: it has
    timestamps to write as differences, or a token for the column."""
    if body.count(b'"origin_server_ts"') >= MIN_TIMESTAMPS:
        return True
    return "token" in column_kinds(profile) and (b'"syt_' in body or b'"syr_' in body)


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


def _finish(doc: Any, key_codes: Mapping[str, int]) -> None:
    """What the decoder does after the walk, in one pass over the objects:
    every timestamp and age it wrote back must be a Matrix integer, and
    every object's members go in the plain path's order (§5.1: the same
    bytes).  The walk used canonical wire order, which puts "" before
    2-byte codes and 1-character keys before 3-byte ones; the plain
    decoder writes the members with a table code first, then the others,
    each in wire order."""
    for node in _objects(doc):
        for key in (TS, "age"):
            if _is_int(node.get(key)):
                json_cbor.check_number(node[key])
        text_seen = False
        for name in node:
            if name not in key_codes:
                text_seen = True
            elif text_seen:  # a coded member after one without a code: rare, reorder
                items = list(node.items())
                node.clear()
                node.update([kv for kv in items if kv[0] in key_codes])
                node.update([kv for kv in items if kv[0] not in key_codes])
                break


def encode(canonical_cbor: bytes, profile: Profile) -> bytes | None:
    """The timeline form of a body given as its canonical CBOR (§6), or None
    when the body has fewer than two timestamps or the profile no text
    dictionary."""
    preset = dictionary(profile)
    if preset is None:
        return None
    doc = json_cbor.decode(canonical_cbor, profile.cbor_table, ordered=True)
    few = sum(1 for node in _objects(doc) if _is_int(node.get(TS))) < MIN_TIMESTAMPS
    columns = column_kinds(profile)
    if few and "token" not in columns:
        return None
    _walk(doc, encode=True)
    try:
        sections = column_form.to_column(doc, tokens="token" in columns, texts="text" in columns,
                                         event_ids="event_id" in columns) if columns else []
        if few and not any(sections):
            return None
        data = json_cbor.encode(doc, profile.cbor_table, canonical=False)
    except CodecError:  # a difference beyond ±(2**53 - 1), a text CBOR cannot hold
        return None
    return compress_sections([data, *(s for s in sections if s)], preset)


def decode(payload: bytes, profile: Profile, max_size: int) -> bytes:
    """The JSON body a timeline-form payload stands for; ``max_size`` caps
    the inflated stream and the JSON body each (§5.2)."""
    preset = dictionary(profile)
    if preset is None:
        raise CodecError("the timeline form needs a profile with the compact form")
    data = decompress(payload, preset, max_size)
    columns = column_kinds(profile)
    if columns:
        doc, end = json_cbor.decode_prefix(data, profile.cbor_table, ordered=True, max_output=max_size)
        # the column: what follows the body
        column_form.from_column(doc, data[end:], tokens="token" in columns, texts="text" in columns,
                                event_ids="event_id" in columns)
    else:
        doc = json_cbor.decode(data, profile.cbor_table, ordered=True, max_output=max_size)
    _walk(doc, encode=False)
    _finish(doc, profile.cbor_table.key_codes)
    return json_cbor.dump_json_capped(doc, max_size)


__all__ = ["MIN_TIMESTAMPS", "column_kinds", "decode", "dictionary", "encode", "worth_trying"]
