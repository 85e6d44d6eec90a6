"""The timeline form's table (sans-I/O): ``dictionaries/timeline-v<N>.json``.

Version 1 of the timeline form (profile lb3) has no table: its dictionary is
the preset and the text dictionary.  From version 2 (profile lb4) a table
says what else both ends put in:

* ``template``: a JSON value whose canonical CBOR (§6) ends the form's
  deflate dictionary — a new account's first sync with neutral values
  (Synapse's default push rules: 4.4 kB of JSON that the trained preset
  holds only in fragments, ~90 B of every first sync; a room's default
  state; the sync's own structure);
* ``columns``: which random strings travel as raw bytes in a column after
  the body (``event_id``: event IDs of room v4+; ``token``: Synapse's
  access and refresh tokens; ``text``: message texts, in a section of
  their own; ``column``).

Data, not code, because both ends must agree on it exactly: its digest is
part of the profile digest the handshake compares.  docs/protocol.md §5.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from ..errors import TableError
from . import datafiles

FORMAT = "coap-gateway/timeline"
COLUMNS = frozenset({"event_id", "token", "text"})


@dataclass(frozen=True)
class TimelineTable:
    version: int
    #: JSON value whose canonical CBOR ends the form's dictionary
    template: Any
    #: what the column carries: a subset of COLUMNS
    columns: frozenset[str]
    digest: str


def parse_timeline_table(doc: Any, digest: str = "") -> TimelineTable:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TableError(f"not a {FORMAT} document")
    version = doc.get("version")
    if type(version) is not int or version < 2:
        raise TableError("version must be an integer ≥ 2 (version 1 has no table)")
    columns = doc.get("columns")
    if not isinstance(columns, list) or len(set(columns)) != len(columns) or not set(columns) <= COLUMNS:
        raise TableError(f"columns must list distinct names of {sorted(COLUMNS)}")
    if "template" not in doc:
        raise TableError("template is missing")
    return TimelineTable(version, doc["template"], frozenset(columns), digest)


@cache
def load_timeline_table(version: int) -> TimelineTable:
    name = f"timeline-v{version}.json"
    raw = datafiles.read_bytes(name)
    table = parse_timeline_table(datafiles.parse_json_document(raw, name), datafiles.content_digest(raw))
    if table.version != version:
        raise TableError(f"{name} declares version {table.version}")
    return table


__all__ = ["COLUMNS", "TimelineTable", "load_timeline_table", "parse_timeline_table"]
