"""The column of the timeline form (sans-I/O): random strings as raw bytes.

Event IDs and access tokens are random; message texts are English.
Deflate codes random bytes at more than 8 bits each when they sit between
the structure's codes, and base64 or letters carry 6 or 5.7 bits in 8.  So, in profiles whose timeline table asks
for it (lb4), they leave the body for a column of raw bytes after it, each
replaced by a one-character mark:

* ``$``: an event ID of room v4+ (``$`` + URL-safe base64 of 32 bytes) →
  its 32 bytes;
* ``%``: a Synapse access or refresh token,
  ``syt_<localpart, base64>_<20 letters>_<CRC-32 of the rest, base62>`` (or
  ``syr_``) → kind (0 ``syt``, 1 ``syr``), the localpart's length and bytes,
  the 20 letters as one base-52 number in 15 bytes; the CRC is computed
  again.  (Synapse's format, synapse/handlers/auth.py; a token of any other
  shape stays in the body.)
* ``&``: a message text — any string value of a member ``body`` → a CBOR
  text string.  The texts form the column's first section, the random
  strings its second, each deflated as blocks of their own (English and
  random bytes want different Huffman codes than the body's structure).

A string made only of one mark gets one mark more, so nothing is ambiguous.
Strings are visited as ``_string_slots`` says (object keys never).
docs/protocol.md §5.1.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
import zlib
from collections.abc import Iterator
from typing import Any

import cbor2

from ..errors import CodecError
from . import json_cbor

EVENT_ID_MARK, TOKEN_MARK, TEXT_MARK = "$", "%", "&"
MARKS = (EVENT_ID_MARK, TOKEN_MARK, TEXT_MARK)
#: the member whose string values are message texts (``content.body``)
TEXT_KEY = "body"
#: the binary-field form (§6.4) of the event IDs the column carries, and their raw length
_EVENT_ID_FORM, EVENT_ID_BYTES = json_cbor.MARK_EVENT_ID_URL, 32

#: Synapse's token kinds, by their number in the column
TOKEN_PREFIXES = ("syt", "syr")
_TOKEN = re.compile(r"(syt|syr)_([A-Za-z0-9+/]+)_([A-Za-z]{20})_([0-9A-Za-z]{6})")
#: stringutils.random_string's alphabet, in the order the base-52 number uses
_LETTERS = string.ascii_letters
_LETTER_VALUE = {c: i for i, c in enumerate(_LETTERS)}
#: stringutils.base62_encode's alphabet
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
TOKEN_RANDOM_BYTES = 15  # 52**20 < 2**114
_RANDOM_LIMIT = 52**20
MAX_LOCALPART_BYTES = 255


def _crc(base: str) -> str:
    num, out = zlib.crc32(base.encode("ascii")), ""
    while num:
        num, rem = divmod(num, 62)
        out = _BASE62[rem] + out
    return out.rjust(6, "0")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def token_entry(text: str) -> bytes | None:
    """The column entry of a Synapse token, or None if ``text`` is not one
    that the entry gives back exactly."""
    match = _TOKEN.fullmatch(text)
    if match is None:
        return None
    prefix, b64local, letters, crc = match.groups()
    try:
        local = base64.b64decode(b64local + "=" * (-len(b64local) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not 0 < len(local) <= MAX_LOCALPART_BYTES or _b64(local) != b64local:
        return None
    if _crc(f"{prefix}_{b64local}_{letters}") != crc:
        return None
    number = 0
    for c in letters:
        number = number * 52 + _LETTER_VALUE[c]
    return bytes([TOKEN_PREFIXES.index(prefix), len(local)]) + local + number.to_bytes(TOKEN_RANDOM_BYTES, "big")


def _read_token(column: bytes, at: int) -> tuple[str, int]:
    """The token whose entry starts at ``at``, and where the next entry starts."""
    if at + 2 > len(column):
        raise CodecError("the column ends inside a token")
    kind, size = column[at], column[at + 1]
    end = at + 2 + size + TOKEN_RANDOM_BYTES
    if kind >= len(TOKEN_PREFIXES) or size == 0 or end > len(column):
        raise CodecError("a malformed token in the column")
    number = int.from_bytes(column[at + 2 + size:end], "big")
    if number >= _RANDOM_LIMIT:
        raise CodecError("a token's random part is out of range")
    letters = []
    for _ in range(20):
        number, digit = divmod(number, 52)
        letters.append(_LETTERS[digit])
    base = f"{TOKEN_PREFIXES[kind]}_{_b64(column[at + 2:at + 2 + size])}_{''.join(reversed(letters))}"
    return f"{base}_{_crc(base)}", end


def read_token_entry(entry: bytes) -> str:
    """The token of a whole column entry (``token_entry``'s inverse);
    CodecError when malformed or followed by anything."""
    token, end = _read_token(entry, 0)
    if end != len(entry):
        raise CodecError("bytes after a token's entry")
    return token


def _string_slots(doc: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key or index) of every string value (not object keys) in
    the column's order: at each object or array its own string values, in
    order, then the objects and arrays it holds, in order, each the same way."""
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
    return bool(text) and text[0] in MARKS and text.count(text[0]) == len(text)


def to_column(doc: Any, tokens: bool, texts: bool = False, event_ids: bool = True) -> list[bytes]:
    """Random strings (and, with ``texts``, message texts) out of ``doc``,
    in place, into the column's sections it returns: the texts, then the
    event IDs (with ``event_ids``) and tokens (with ``tokens``)."""
    text_section, random_section = bytearray(), bytearray()
    for node, slot in _string_slots(doc):
        text = node[slot]
        if _only_marks(text):
            node[slot] = text + text[0]  # escaped: one mark more
            continue
        if texts and slot == TEXT_KEY:
            try:
                text_section += cbor2.dumps(text)
            except (UnicodeEncodeError, ValueError) as exc:  # a lone surrogate: no CBOR text
                raise CodecError(f"not representable in CBOR: {exc}") from exc
            node[slot] = TEXT_MARK
            continue
        raw = json_cbor.string_to_binary(text) if event_ids and text[:1] == "$" else None
        if raw is not None and raw[0] == _EVENT_ID_FORM and len(raw) == 1 + EVENT_ID_BYTES:
            random_section += raw[1:]
            node[slot] = EVENT_ID_MARK
            continue
        entry = token_entry(text) if tokens and text[:2] == "sy" else None
        if entry is not None:
            random_section += entry
            node[slot] = TOKEN_MARK
    return [bytes(text_section), bytes(random_section)]


#: a text entry's header byte with a length argument (major type 3) -> the
#: least length it may give (§5.1: shortest length; 0x7f, indefinite, is none)
_TEXT_HEADER_MIN = {0x78: 24, 0x79: 1 << 8, 0x7A: 1 << 16, 0x7B: 1 << 32}


def _read_text(column: bytes, at: int) -> tuple[str, int]:
    """The text entry at ``at`` (§5.1: a CBOR text string of definite,
    shortest length; read here, not by cbor2, which takes any length form)
    and where the next entry starts."""
    if at >= len(column):
        raise CodecError("the body names more texts than its column holds")
    first = column[at]
    if not 0x60 <= first <= 0x7B:
        raise CodecError("a text entry of the column is not a CBOR text string of definite length")
    start = at + 1
    size = first - 0x60
    if first >= 0x78:
        start += 1 << (first - 0x78)
        size = int.from_bytes(column[at + 1:start], "big")
        if start > len(column) or size < _TEXT_HEADER_MIN[first]:
            raise CodecError("a text entry of the column is truncated or not of its shortest length")
    end = start + size
    if end > len(column):
        raise CodecError("the column ends inside a text")
    try:
        return column[start:end].decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise CodecError(f"a text in the column is not UTF-8: {exc}") from exc


def from_column(doc: Any, column: bytes, tokens: bool, texts: bool = False, event_ids: bool = True) -> None:
    """Undo :func:`to_column`; every byte of the column must be used, once,
    and every mark must be of a kind the profile's column has (§5.1)."""
    # the marks as the body has them, before any is replaced: a text put
    # back may itself read like a mark
    marked = [(node, slot, node[slot]) for node, slot in _string_slots(doc) if _only_marks(node[slot])]
    at = 0
    for node, slot, text in marked:  # the texts' section comes first
        if text == TEXT_MARK:
            if not texts:
                raise CodecError("a text mark where the profile carries no texts in the column")
            node[slot], at = _read_text(column, at)
    for node, slot, text in marked:
        if len(text) > 1:
            node[slot] = text[1:]
        elif text == EVENT_ID_MARK:
            if not event_ids:
                raise CodecError("an event-ID mark where the profile carries no event IDs in the column")
            if at + EVENT_ID_BYTES > len(column):
                raise CodecError("the body names more event IDs than its column holds")
            node[slot] = json_cbor.binary_to_string(bytes([_EVENT_ID_FORM]) + column[at:at + EVENT_ID_BYTES])
            at += EVENT_ID_BYTES
        elif text == TOKEN_MARK:
            if not tokens:
                raise CodecError("a token mark where the profile carries no tokens in the column")
            node[slot], at = _read_token(column, at)
    if at != len(column):
        raise CodecError(f"{len(column) - at} bytes after the body are not column entries it names")


__all__ = ["EVENT_ID_BYTES", "EVENT_ID_MARK", "MARKS", "TEXT_KEY", "TEXT_MARK", "TOKEN_MARK", "TOKEN_PREFIXES", "TOKEN_RANDOM_BYTES",
           "from_column", "to_column", "token_entry"]
