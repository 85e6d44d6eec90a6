"""The schema table of the compact request form (sans-I/O).

``dictionaries/schemas-v<N>.json`` says, for profiles that use the Route
option (docs/protocol.md, "Compact requests"):

* which 24 routes get one-byte codes in the Route option;
* how each route parameter travels, by its name in the route template
  (``{roomId}`` → a per-session handle, ``{eventId}`` → 32 raw bytes, …);
* on which routes a message body ``{"msgtype": M, "body": S}`` may travel as
  the bare text S, its msgtype folded into the event-type parameter;
* which routes answer ``{"event_id": …}`` and may send back the bare ID;
* the preset dictionary of message texts (``text-v1.txt``: common English
  words and chat phrases, least frequent first, by content hash).

Data, not code, because both ends must agree on it exactly: its digest is
part of the profile digest the handshake compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Mapping

from ..errors import TableError
from . import datafiles
from .compression import FlateDictionary

FORMAT = "coap-gateway/schemas"

#: parameter kinds (values of ``param_kinds``)
ROOM, USER, EVENT_ID, EVENT_TYPE, TXN = "room", "user", "event_id", "event_type", "txn"
PARAM_KINDS = frozenset({ROOM, USER, EVENT_ID, EVENT_TYPE, TXN})
#: kinds that travel as per-session handles
HANDLE_KINDS = frozenset({ROOM, USER})


@dataclass(frozen=True)
class SchemaTable:
    version: int
    #: template parameter name -> kind; parameters not listed travel as text
    param_kinds: Mapping[str, str]
    #: route names whose Route-option code is their index (one CBOR byte);
    #: every other route's option code is 24 + its route table code
    short_routes: tuple[str, ...]
    message_routes: frozenset[str]
    message_event_type: str
    event_id_routes: frozenset[str]
    #: preset dictionary for message texts (words and phrases of chat)
    text_dictionary: FlateDictionary
    digest: str


def parse_schema_table(doc: Any, digest: str = "") -> SchemaTable:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TableError(f"not a {FORMAT} document")
    version = doc.get("version")
    if type(version) is not int:
        raise TableError("version must be an integer")
    kinds = doc.get("param_kinds")
    if not isinstance(kinds, dict) or not all(isinstance(k, str) and v in PARAM_KINDS for k, v in kinds.items()):
        raise TableError(f"param_kinds must map parameter names to one of {sorted(PARAM_KINDS)}")
    lists = {}
    for name in ("message_routes", "event_id_routes"):
        value = doc.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TableError(f"{name} must be a list of route names")
        lists[name] = frozenset(value)
    short = doc.get("short_routes")
    if not isinstance(short, list) or len(short) > 24 or len(set(short)) != len(short) or not all(
            isinstance(v, str) for v in short):
        raise TableError("short_routes must be a list of at most 24 distinct route names")
    event_type = doc.get("message_event_type")
    if not isinstance(event_type, str):
        raise TableError("message_event_type must be a string")
    return SchemaTable(version, dict(kinds), tuple(short), lists["message_routes"], event_type, lists["event_id_routes"],
                       _text_dictionary(doc.get("text_dictionary")), digest)


def _text_dictionary(entry: Any) -> FlateDictionary:
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("digest"), str)):
        raise TableError("text_dictionary must be {file, digest}")
    if "/" in entry["file"] or entry["file"].startswith("."):
        raise TableError("text_dictionary.file must be a file name in dictionaries/")
    dictionary = FlateDictionary(datafiles.read_bytes(entry["file"]))
    if dictionary.digest != entry["digest"]:
        raise TableError(f"{entry['file']} has content hash {dictionary.digest}, not {entry['digest']}")
    return dictionary


@cache
def load_schema_table(version: int) -> SchemaTable:
    name = f"schemas-v{version}.json"
    raw = datafiles.read_bytes(name)
    table = parse_schema_table(datafiles.parse_json_document(raw, name), datafiles.content_digest(raw))
    if table.version != version:
        raise TableError(f"{name} declares version {table.version}")
    return table
