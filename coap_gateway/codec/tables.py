"""Versioned key and value tables for the JSON ⇄ CBOR codec.

A table maps JSON object keys to integer codes and, for a few keys whose
values are drawn from a small vocabulary (event types, msgtypes, membership,
error codes…), string values to integer codes.  Version 1 is MSC3079's table
(keys only).  Later versions *extend* an earlier one: every code of the base
still decodes to the same name, new names get new codes, and a name of the
base may get a new, shorter code that the encoder then prefers.

Table documents live in ``dictionaries/cbor-table-vN.json``::

    {"format": "coap-gateway/cbor-table", "version": 2, "extends": 1,
     "binary_fields": true,
     "keys": [[code, name], ...],
     "values": {"membership": [[code, value], ...], ...}}

A document with a duplicated code, a name listed twice, or an alias that is
not shorter than the code it replaces fails to load: two encoders that read
the same file must produce the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Mapping

import cbor2

from ..errors import TableError
from . import datafiles

FORMAT = "coap-gateway/cbor-table"


@dataclass(frozen=True)
class CborTable:
    version: int
    #: JSON key name -> the code the encoder writes
    key_codes: Mapping[str, int]
    #: every code that decodes (inherited ones included) -> JSON key name
    key_names: Mapping[int, str]
    #: JSON key name -> {string value -> code}, for enumerated keys
    value_codes: Mapping[str, Mapping[str, int]]
    #: JSON key name -> {code -> string value}
    value_names: Mapping[str, Mapping[int, str]]
    #: whether base64 strings of binary travel as CBOR byte strings
    binary_fields: bool
    #: content hash of the resolved table; both ends compare it
    digest: str


def _cbor_len(code: int) -> int:
    return len(cbor2.dumps(code))


def _check_int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise TableError(f"{what} must be an integer, got {value!r}")
    if not -(2**31) <= value < 2**31:
        raise TableError(f"{what} {value} out of range")
    return value


def _pairs(doc: Any, what: str) -> list[tuple[int, str]]:
    if not isinstance(doc, list):
        raise TableError(f"{what} must be a list of [code, string] pairs")
    out = []
    for entry in doc:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
            raise TableError(f"{what}: bad entry {entry!r}")
        out.append((_check_int(entry[0], f"{what} code"), entry[1]))
    return out


def _merge(
    base_codes: dict[str, int],
    base_names: dict[int, str],
    pairs: list[tuple[int, str]],
    what: str,
) -> tuple[dict[str, int], dict[int, str]]:
    codes, names = dict(base_codes), dict(base_names)
    seen: set[str] = set()
    for code, name in pairs:
        if code in names:
            raise TableError(f"{what}: code {code} is used twice ({names[code]!r}, {name!r})")
        if name in seen:
            raise TableError(f"{what}: {name!r} is listed twice")
        seen.add(name)
        if name in codes and _cbor_len(code) >= _cbor_len(codes[name]):
            raise TableError(
                f"{what}: alias {code} for {name!r} is not shorter than its code {codes[name]}"
            )
        codes[name] = code
        names[code] = name
    return codes, names


def parse_cbor_table(doc: Any, base: CborTable | None = None) -> CborTable:
    """Build a table from its decoded JSON document (pure; see module doc)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TableError(f"not a {FORMAT} document")
    version = _check_int(doc.get("version"), "version")
    extends = doc.get("extends")
    if (extends is None) != (base is None) or (base is not None and base.version != extends):
        raise TableError(f"table v{version} extends {extends!r}, base given: {base and base.version}")
    binary = doc.get("binary_fields")
    if not isinstance(binary, bool):
        raise TableError("binary_fields must be true or false")
    if base is not None and base.binary_fields and not binary:
        raise TableError("an extension cannot turn binary fields off")

    key_codes, key_names = _merge(
        dict(base.key_codes) if base else {},
        dict(base.key_names) if base else {},
        _pairs(doc.get("keys"), "keys"),
        "keys",
    )
    values_doc = doc.get("values", {})
    if not isinstance(values_doc, dict):
        raise TableError("values must be an object of key name -> pairs")
    value_codes = {k: dict(v) for k, v in (base.value_codes.items() if base else ())}
    value_names = {k: dict(v) for k, v in (base.value_names.items() if base else ())}
    for key, pairs in values_doc.items():
        codes, names = _merge(
            value_codes.get(key, {}), value_names.get(key, {}), _pairs(pairs, f"values[{key}]"),
            f"values[{key}]",
        )
        if any(c < 0 for c in names):
            # negative integers would need their own escape; keep the rule simple
            raise TableError(f"values[{key}]: value codes must be non-negative")
        value_codes[key], value_names[key] = codes, names

    resolved = {
        "version": version,
        "binary_fields": binary,
        "keys": sorted(key_names.items()),
        "preferred": sorted(key_codes.items()),
        "values": {k: sorted(v.items()) for k, v in sorted(value_names.items())},
    }
    digest = datafiles.content_digest(
        json.dumps(resolved, separators=(",", ":"), ensure_ascii=False).encode()
    )
    return CborTable(version, key_codes, key_names, value_codes, value_names, binary, digest)


@cache
def load_cbor_table(version: int) -> CborTable:
    """Load ``dictionaries/cbor-table-v{version}.json`` and the tables it extends."""
    name = f"cbor-table-v{version}.json"
    doc = datafiles.read_json(name)
    if not isinstance(doc, dict) or doc.get("version") != version:
        raise TableError(f"{name} does not declare version {version}")
    extends = doc.get("extends")
    if extends is not None:
        if type(extends) is not int or not 0 < extends < version:
            raise TableError(f"{name}: extends must name an earlier version")
        base = load_cbor_table(extends)
    else:
        base = None
    return parse_cbor_table(doc, base)


LATEST_CBOR_TABLE = 2
