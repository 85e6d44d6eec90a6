"""JSON ⇄ CBOR with versioned key and value tables (sans-I/O).

``encode(value, table)`` turns a JSON value (as ``json.loads`` returns it)
into canonical CBOR; ``decode(data, table)`` turns it back.  For every JSON
value ``decode(encode(x)) == x`` — the same types, the same numbers, the same
strings — and CBOR that no encoder of this module could have produced is
rejected rather than guessed at.

The rules (docs/protocol.md, "CBOR payloads", is the normative text):

* Object keys found in the table become their integer code, at any depth.
  Other keys stay text strings, so the key ``"8"`` stays ``"8"``.  On decode,
  when a map holds both a code and the text of the same name, the text wins
  (MSC3079's rule); any other two keys of one name (two codes of a name, a
  text and a byte string) are refused.
* Under an *enumerated* key (table v2+: ``type``, ``msgtype``,
  ``membership``…) a string value found in the key's value table becomes its
  integer code.  A genuine integer or array under such a key is wrapped in a
  one-element array, so an integer there always means a table code.
* With ``binary_fields`` (table v2+), strings that are unpadded base64 of at
  least 16 bytes (hashes, signatures, keys, event IDs of room v3+, room IDs
  of room v12) travel as a byte string ``marker || raw`` — only when
  re-encoding the bytes gives back the identical string.
* Numbers are Matrix's (canonical JSON): integers in ±(2**53 - 1), finite
  floats.  NaN, Infinity, a float beyond a double (``1e400``) and integers
  outside the range are not JSON a homeserver takes; they are refused both
  ways (``NotMatrixJson``), so nothing downstream (``json.dumps``' 4300-digit
  limit, a homeserver writing ``Infinity``) ever meets them.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import cbor2

from ..errors import CodecError
from .tables import CborTable

#: deepest nesting accepted either way; far beyond any Matrix payload, far
#: below Python's recursion limit
MAX_DEPTH = 200

#: shortest binary value carried as bytes; shorter base64 is mostly words
MIN_BINARY_LEN = 16

#: Matrix canonical JSON: integers in [-MAX_INTEGER, MAX_INTEGER] (those a
#: double holds exactly)
MAX_INTEGER = 2**53 - 1


class NotMatrixJson(CodecError):
    """A number Matrix JSON does not have: NaN, Infinity, a float beyond a
    double, an integer outside ±MAX_INTEGER.  A homeserver answers it 400
    M_NOT_JSON; the gateways answer it themselves."""


def check_number(value: float) -> None:
    """NotMatrixJson unless ``value`` is a number Matrix JSON allows."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotMatrixJson(f"{value} is not a JSON number")
    elif not -MAX_INTEGER <= value <= MAX_INTEGER:
        # never str(value): beyond 4300 digits that raises
        raise NotMatrixJson(f"integer of {value.bit_length()} bits is outside ±(2**53 - 1)")


# Marker byte at the start of a binary field: which text form to rebuild,
# as (prefix, URL-safe alphabet?).  Values are protocol constants.
MARK_BASE64 = 0x00  # unpadded standard base64: hashes, signatures, keys
MARK_EVENT_ID_URL = 0x01  # "$" + URL-safe: event IDs, room v4+
MARK_EVENT_ID_STD = 0x02  # "$" + standard: event IDs, room v3
MARK_ROOM_ID_URL = 0x03  # "!" + URL-safe: room IDs, room v12
BINARY_FORMS: dict[int, tuple[str, bool]] = {
    MARK_BASE64: ("", False),
    MARK_EVENT_ID_URL: ("$", True),
    MARK_EVENT_ID_STD: ("$", False),
    MARK_ROOM_ID_URL: ("!", True),
}
#: prefix -> markers to try, URL-safe first (a body valid in both reads the same)
_MARKS_BY_PREFIX: dict[str, list[int]] = {}
for _mark, (_prefix, _url) in sorted(BINARY_FORMS.items(), key=lambda kv: not kv[1][1]):
    _MARKS_BY_PREFIX.setdefault(_prefix, []).append(_mark)

_STD_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_URL_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_URL_TO_STD = str.maketrans("-_", "+/")
_STD_TO_URL = str.maketrans("+/", "-_")


def _b64decode_exact(text: str, urlsafe: bool) -> bytes | None:
    """Raw bytes of unpadded base64 ``text``, or None unless ``text`` is in
    the alphabet and encoding the bytes again yields exactly ``text`` (a
    string with non-zero trailing bits would not)."""
    if len(text) % 4 == 1 or not (_URL_CHARS if urlsafe else _STD_CHARS).fullmatch(text):
        return None
    std = text.translate(_URL_TO_STD) if urlsafe else text
    raw = base64.b64decode(std + "=" * (-len(std) % 4), validate=True)
    return raw if _b64encode(raw, urlsafe) == text else None


def _b64encode(raw: bytes, urlsafe: bool) -> str:
    text = base64.b64encode(raw).decode("ascii").rstrip("=")
    return text.translate(_STD_TO_URL) if urlsafe else text


def string_to_binary(text: str) -> bytes | None:
    """The byte-string form of ``text`` if it is a binary field, else None.

    URL-safe base64 without a prefix is left alone: in Matrix that shape is
    mostly tokens (syt_…, s33_14_…) that deflate handles better as text.
    """
    if len(text) < 22:  # 16 bytes of base64
        return None
    prefix = text[0] if text[0] in "$!" else ""
    for mark in _MARKS_BY_PREFIX.get(prefix, ()):
        raw = _b64decode_exact(text[len(prefix):], BINARY_FORMS[mark][1])
        if raw is not None and len(raw) >= MIN_BINARY_LEN:
            return bytes([mark]) + raw
    return None


def binary_to_string(data: bytes) -> str:
    if len(data) < 1 + MIN_BINARY_LEN:
        raise CodecError(f"binary field of {len(data)} bytes is shorter than allowed")
    form = BINARY_FORMS.get(data[0])
    if form is None:
        raise CodecError(f"unknown binary field marker 0x{data[0]:02x}")
    prefix, urlsafe = form
    return prefix + _b64encode(data[1:], urlsafe)


# ---------------------------------------------------------------- encoding


def _encode_string(text: str, table: CborTable) -> str | bytes:
    if table.binary_fields:
        binary = string_to_binary(text)
        if binary is not None:
            return binary
    return text


def _encode_enum(value: Any, codes: Mapping[str, int], table: CborTable, depth: int) -> Any:
    if isinstance(value, str):
        code = codes.get(value)
        return code if code is not None else _encode_string(value, table)
    if type(value) is int or isinstance(value, list):
        # an integer here must mean a table code: escape genuine ones
        return [_to_cbor(value, table, depth + 1)]
    return _to_cbor(value, table, depth)


def _to_cbor(value: Any, table: CborTable, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        return _encode_string(value, table)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        check_number(value)
        return value
    if isinstance(value, list):
        return [_to_cbor(item, table, depth + 1) for item in value]
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError(f"object key {key!r} is not a string")
            code = table.key_codes.get(key)
            out_key: Any = code if code is not None else _encode_string(key, table)
            enum = table.value_codes.get(key)
            if enum is not None:
                out[out_key] = _encode_enum(item, enum, table, depth + 1)
            else:
                out[out_key] = _to_cbor(item, table, depth + 1)
        return out
    raise CodecError(f"{type(value).__name__} is not a JSON value")


def encode(value: Any, table: CborTable, *, canonical: bool = True) -> bytes:
    """Canonical CBOR of a JSON value under ``table``.

    ``canonical=False`` keeps every map in the JSON value's own key order
    (sync push rebuilds the homeserver's JSON byte for byte, key order
    included; ``decode(..., ordered=True)`` reads it back).
    """
    model = _to_cbor(value, table, 0)
    try:
        return cbor2.dumps(model, canonical=canonical)
    except (UnicodeEncodeError, ValueError, cbor2.CBOREncodeError) as exc:
        # e.g. a lone surrogate from "\ud800": JSON allows it, CBOR text does not
        raise CodecError(f"not representable in CBOR: {exc}") from exc


# ---------------------------------------------------------------- decoding


class _RejectTags(Mapping):
    """Make cbor2 refuse every tag but ``allowed``: JSON has no dates,
    sets, shared references or decimal fractions to rebuild."""

    def __init__(self, allowed: tuple[int, ...] = ()):
        self._allowed = allowed

    def __getitem__(self, tag: int):
        if tag in self._allowed:
            raise KeyError(tag)

        def reject(*_args: Any) -> Any:  # (decoder) or, in cbor2 6, (decoder, value)
            raise CodecError(f"CBOR tag {tag} is not allowed")

        return reject

    def __contains__(self, tag: object) -> bool:
        return tag not in self._allowed

    def get(self, tag, default=None):
        try:
            return self[tag]
        except KeyError:
            return default

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


#: bodies (§6.6): bignums (2, 3) pass, so that one reads as the number it is
#: and is refused as NotMatrixJson like any integer out of range
_BODY_TAGS = _RejectTags((2, 3))
#: the Route option, the column, compact federation (§7a, §11a.2): no tag at all
_NO_TAGS = _RejectTags()


def _reject_unknown_tag(_decoder: Any, tag: Any) -> Any:
    raise CodecError(f"CBOR tag {tag.tag} is not allowed")


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` for an error message: at most ``limit`` characters, and
    safe for any integer a peer sends (``str`` of one beyond 4300 digits
    raises ValueError, and costs quadratic time before that)."""
    if type(value) is int and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, (str, bytes)):
        value = value[:limit]  # no need to repr a megabyte to show 40 characters of it
    try:
        text = repr(value)
    except ValueError:  # a container holding such an integer
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


class BodyTooLarge(CodecError):
    """The JSON a body decodes to would exceed the cap (§5.2): a few bytes of
    table codes stand for up to ~40 bytes of JSON each, so capping the
    inflated CBOR alone does not cap the output."""


#: no cap on the output (callers that bound their input otherwise)
NO_LIMIT = 1 << 62


def _decode_string(value: Any, table: CborTable) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes) and table.binary_fields:
        return binary_to_string(value)
    raise CodecError(f"expected a string, got {type(value).__name__}")


def _decode_enum(value: Any, names: Mapping[int, str], table: CborTable, depth: int, ordered: bool,
                 budget: list[int]) -> Any:
    if type(value) is int:
        try:
            return names[value]
        except KeyError:
            raise CodecError(f"unknown value code {short_repr(value)}") from None
    if isinstance(value, list):
        if len(value) != 1:
            raise CodecError("escaped value must be a one-element array")
        inner = _from_cbor(value[0], table, depth + 1, ordered, budget)
        if not (type(inner) is int or isinstance(inner, list)):
            raise CodecError("only integers and arrays are escaped under an enumerated key")
        return inner
    return _from_cbor(value, table, depth, ordered, budget)


def _from_cbor(value: Any, table: CborTable, depth: int, ordered: bool, budget: list[int]) -> Any:
    """The JSON value of a cbor2 model.  ``budget[0]``: bytes of JSON still
    allowed.  Each container charges a lower bound of what it will write:
    its punctuation and the names its codes stand for (a byte of CBOR
    becomes up to ~40 bytes of JSON), so a bomb of table codes or of empty
    containers stops long before its JSON is built.  What is not counted
    (strings, digits, ``false``) writes at most a few times its CBOR size:
    the caller checks the JSON's length (``dump_json_capped``)."""
    if depth > MAX_DEPTH:
        raise CodecError(f"nesting deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        check_number(value)  # a bignum of 9600 digits, a NaN: no JSON has them
        return value
    if isinstance(value, bytes):
        return _decode_string(value, table)
    if isinstance(value, list):
        budget[0] -= len(value) + 1  # brackets and commas
        if budget[0] < 0:
            raise BodyTooLarge("the body's JSON would exceed the cap")
        return [_from_cbor(item, table, depth + 1, ordered, budget) for item in value]
    if isinstance(value, dict):
        key_names, value_names = table.key_names, table.value_names
        from_codes: dict[str, Any] = {}
        # ordered: one map in wire order; a name given both as code and as
        # text is then an error (no encoder of this module writes that)
        from_text: dict[str, Any] = from_codes if ordered else {}
        # a lower bound: braces, commas, and per member its name's quotes and
        # colon; a value charges for itself (a container) or not at all
        cost = 1 + 4 * len(value)
        for key, item in value.items():
            if type(key) is int:
                try:
                    name = key_names[key]
                except KeyError:
                    raise CodecError(f"unknown key code {short_repr(key)}") from None
                cost += len(name)
                target = from_codes
            elif isinstance(key, (str, bytes)):
                name = key if type(key) is str else _decode_string(key, table)
                target = from_text
            else:
                raise CodecError(f"map key of type {type(key).__name__} is not allowed")
            names = value_names.get(name)
            if names is None:
                target[name] = _from_cbor(item, table, depth + 1, ordered, budget)
            else:
                out = target[name] = _decode_enum(item, names, table, depth + 1, ordered, budget)
                if type(out) is str:
                    cost += len(out) + 2
        budget[0] -= cost
        if budget[0] < 0:
            raise BodyTooLarge("the body's JSON would exceed the cap")
        if from_text is from_codes:
            if len(from_codes) != len(value):
                raise CodecError("a map gives a key twice (as a code and as text, or in two forms)")
        elif len(from_codes) + len(from_text) != len(value):
            # two keys of one name (aliases of a code, a text and a byte
            # string): the one pair allowed is a code and its text (MSC3079)
            raise CodecError("a map gives a key twice (two codes or two strings of one name)")
        elif from_text:
            from_codes.update(from_text)  # a text key wins over its code (MSC3079)
        return from_codes
    raise CodecError(f"CBOR item of type {type(value).__name__} has no JSON equivalent")


def strict_decoder(stream: Any, max_depth: int) -> cbor2.CBORDecoder:
    """A CBOR decoder for untrusted input: no tags at all (so no bignums,
    dates or other objects a peer could make us build) and at most
    ``max_depth`` levels."""
    return cbor2.CBORDecoder(stream, tag_hook=_reject_unknown_tag, semantic_decoders=_NO_TAGS,
                             max_depth=max_depth)


def decode_prefix(data: bytes, table: CborTable, *, ordered: bool = False,
                  max_output: int = NO_LIMIT) -> tuple[Any, int]:
    """The JSON value of the CBOR item at the start of ``data`` and where it
    ends; CodecError if invalid, BodyTooLarge when its JSON would clearly
    exceed ``max_output`` bytes.  What follows is the caller's."""
    stream = io.BytesIO(data)
    try:
        model = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_BODY_TAGS,
            tag_hook=_reject_unknown_tag,
            allow_duplicate_keys=False,
            max_depth=MAX_DEPTH + 2,
        ).decode()
    except CodecError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, CodecError) else exc
        raise CodecError(f"invalid CBOR: {cause}") from exc
    return _from_cbor(model, table, 0, ordered, [max_output]), stream.tell()


def decode(data: bytes, table: CborTable, *, ordered: bool = False, max_output: int = NO_LIMIT) -> Any:
    """The JSON value of CBOR ``data`` under ``table``; CodecError if invalid.

    ``ordered``: maps keep their wire order (see ``encode(canonical=False)``).
    ``max_output``: see ``decode_prefix`` (``cbor_to_json`` checks exactly).
    """
    value, end = decode_prefix(data, table, ordered=ordered, max_output=max_output)
    if end != len(data):
        # cbor2.loads would ignore them (cbor2 6): a body is one item, nothing after it
        raise CodecError(f"invalid CBOR: {len(data) - end} bytes after the item")
    return value


# ------------------------------------------------------- JSON text helpers


def _reject_constant(name: str) -> Any:
    raise NotMatrixJson(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: json.loads would make it Infinity
        raise NotMatrixJson(f"{text[:20]} is beyond a double")
    return value


def _parse_int(text: str) -> int:
    # 2**53 has 16 digits: longer is out of range without converting (int()
    # of more than 4300 digits raises, and costs quadratic time before that)
    if len(text.lstrip("-")) > 16:
        raise NotMatrixJson(f"integer of {len(text)} characters is outside ±(2**53 - 1)")
    value = int(text)
    check_number(value)
    return value


def parse_json(body: bytes) -> Any:
    """Parse a JSON body as Matrix sends it (UTF-8); CodecError if not JSON,
    NotMatrixJson if it is JSON with numbers Matrix does not allow."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_parse_float,
                          parse_int=_parse_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"not JSON: {exc}") from exc


def dump_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as Synapse writes it (CodecError for what is not
    JSON: ``decode`` never returns it, but a caller might build it)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:
        raise CodecError(f"not JSON: {exc}") from exc


def json_to_cbor(body: bytes, table: CborTable) -> bytes:
    return encode(parse_json(body), table)


def dump_json_capped(value: Any, max_output: int) -> bytes:
    """``dump_json``, BodyTooLarge beyond ``max_output`` bytes (the decoders'
    budget is a lower bound: escapes and number digits are not counted)."""
    out = dump_json(value)
    if len(out) > max_output:
        raise BodyTooLarge(f"the body's JSON of {len(out)} bytes exceeds the cap of {max_output}")
    return out


def cbor_to_json(data: bytes, table: CborTable, max_output: int = NO_LIMIT) -> bytes:
    """The JSON body of CBOR ``data``; BodyTooLarge if it exceeds ``max_output`` bytes."""
    return dump_json_capped(decode(data, table, max_output=max_output), max_output)
