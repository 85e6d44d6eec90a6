"""Locate and read the versioned data files shipped in ``dictionaries/``.

The folder is installed as the package ``coap_gateway.dictionaries`` (see
pyproject.toml) so tables load the same from a checkout and from a wheel.
This is the only module of the core that reads files; parsers elsewhere take
the decoded documents.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any

from ..errors import TableError

PACKAGE = "coap_gateway.dictionaries"


def read_bytes(name: str) -> bytes:
    try:
        return resources.files(PACKAGE).joinpath(name).read_bytes()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise TableError(f"data file {name!r} not found in dictionaries/") from exc


def _reject_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.load silently keeps the last of two equal members; a table with a
    # duplicated member must fail to load instead.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise TableError(f"duplicate member {key!r}")
        out[key] = value
    return out


def parse_json_document(raw: bytes, name: str = "<data>") -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_reject_duplicate_members)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TableError(f"{name}: {exc}") from exc


def read_json(name: str) -> Any:
    return parse_json_document(read_bytes(name), name)


def content_digest(raw: bytes) -> str:
    """The identifier both ends compare: ``sha256:`` + hex of the exact bytes."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()
