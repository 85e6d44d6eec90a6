"""Profiles: the set of tables both ends must agree on.

A profile names a CBOR key/value table version, a route table version, a
preset Flate dictionary (by content hash) and, for the compact form, the
schema table and (lb4) the timeline form's table.  ``dictionaries/profiles.json``
lists them; the handshake (and, for plaintext CoAP, configuration) selects
one by number, and the digests let both ends check they hold the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ..errors import TableError
from . import datafiles
from .compression import EMPTY_DICTIONARY, FlateDictionary, load_flate_dictionary
from .routes import RouteTable, load_route_table
from .schemas import SchemaTable, load_schema_table
from .tables import CborTable, load_cbor_table
from .timeline_table import TimelineTable, load_timeline_table

FORMAT = "coap-gateway/profiles"


@dataclass(frozen=True)
class Profile:
    id: int
    name: str
    cbor_table: CborTable
    routes: RouteTable
    #: None: payloads are never deflated (MSC3079 has no compression)
    flate: FlateDictionary | None
    #: the compact request form's table (Route option); None: Uri-Path form
    schemas: SchemaTable | None = None
    #: the timeline form's table (version 2+); None: version 1 (lb3) or no form
    timeline: TimelineTable | None = None


def _entries() -> list[dict]:
    doc = datafiles.read_json("profiles.json")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("profiles"), list):
        raise TableError(f"profiles.json is not a {FORMAT} document")
    return doc["profiles"]


@cache
def load_profile(key: int | str) -> Profile:
    """A profile by number or name."""
    for entry in _entries():
        if key in (entry.get("id"), entry.get("name")):
            flate_id = entry.get("flate")
            if flate_id is None:
                flate = None
            elif flate_id == "empty":
                flate = EMPTY_DICTIONARY
            else:
                flate = load_flate_dictionary(flate_id)
            return Profile(
                id=entry["id"],
                name=entry["name"],
                cbor_table=load_cbor_table(entry["cbor_table"]),
                routes=load_route_table(entry["routes"]),
                flate=flate,
                schemas=load_schema_table(entry["schemas"]) if entry.get("schemas") is not None else None,
                timeline=load_timeline_table(entry["timeline"]) if entry.get("timeline") is not None else None,
            )
    raise TableError(f"no profile {key!r} in profiles.json")


def profile_names() -> list[str]:
    return [e["name"] for e in _entries()]


DEFAULT_PROFILE = "lb4"
