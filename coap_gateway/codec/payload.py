"""HTTP body + Content-Type ⇄ CoAP payload + Content-Format (sans-I/O).

JSON bodies become CBOR under the profile's table and are then deflated
with the profile's preset dictionary — or not, when deflate would not make
the message smaller.  The Content-Format option tells which:

=================  ===========================================
Content-Format     payload
=================  ===========================================
(absent)           deflate(CBOR) — the common case costs 0 bytes
60 (cbor)          CBOR, not compressed (2 bytes of option)
65001 (timeline)  deflate(CBOR) in the timeline form (``timeline``):
                  a body with many events, its timestamps as
                  differences; in lb4 also one with a token
                  (3 bytes of option)
50 (json)          the JSON body verbatim (it was not valid JSON,
                   or not representable in CBOR)
other registered   the body verbatim (0 text/plain, 42 octets,
                   21–23 images…)
=================  ===========================================

An empty payload is an empty body.  A content type that has no registered
Content-Format travels verbatim in an HTTP-Header option.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..errors import CodecError
from . import json_cbor, options, timeline
from .compression import DEFAULT_MAX_SIZE, compress, decompress
from .profile import Profile

JSON_TYPE = "application/json"

#: exact Content-Type text -> Content-Format; the reverse gives it back
CONTENT_FORMATS: dict[str, int] = {
    "text/plain; charset=utf-8": options.CF_TEXT_PLAIN,
    "application/link-format": options.CF_LINK_FORMAT,
    "application/xml": options.CF_XML,
    "application/octet-stream": options.CF_OCTET_STREAM,
    "image/gif": options.CF_IMAGE_GIF,
    "image/jpeg": options.CF_IMAGE_JPEG,
    "image/png": options.CF_IMAGE_PNG,
    JSON_TYPE: options.CF_JSON,
    "application/cbor": options.CF_CBOR,
}
_TYPE_OF_FORMAT = {cf: ct for ct, cf in CONTENT_FORMATS.items()}

#: bytes the Content-Format option costs for a one-byte value, and for the timeline form's two
_CF_OPTION_COST = 2
_TIMELINE_OPTION_COST = 3


def is_json_type(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";")[0].strip().lower() == JSON_TYPE


@dataclass(frozen=True)
class CoapPayload:
    payload: bytes
    content_format: int | None
    #: Content-Type to send in an HTTP-Header option, when no format says it
    content_type_header: str | None = None


#: JSON bodies encoded lately, per profile: a homeserver says the same bytes
#: again and again (/versions, capabilities, push rules, ``{}``), and
#: JSON → CBOR → deflate was the largest part of the server gateway's CPU per
#: such answer (make bench's profile).  The encoding is a pure function of
#: (profile, body, allow_deflate); bounded in entries and in body size.
_ENCODED_MAX_ENTRIES = 256
_ENCODED_MAX_BODY = 16 << 10
#: id(profile) -> (the profile, kept alive so its id is never reused; its entries)
_ENCODED: dict[int, tuple[Profile, OrderedDict[tuple[bytes, bool], CoapPayload]]] = {}


def body_to_payload(body: bytes, content_type: str | None, profile: Profile,
                    allow_deflate: bool = True) -> CoapPayload:
    """``allow_deflate=False``: JSON travels as CBOR with its Content-Format
    even when deflate would be smaller (where "no Content-Format" means
    something else, see ``mapping.response_to_coap``)."""
    if not body:
        return CoapPayload(b"", None)
    if is_json_type(content_type) and len(body) <= _ENCODED_MAX_BODY:
        entries = _ENCODED.setdefault(id(profile), (profile, OrderedDict()))[1]
        key = (body, allow_deflate)
        encoded = entries.get(key)
        if encoded is None:
            encoded = entries[key] = _json_payload(body, profile, allow_deflate)
            while len(entries) > _ENCODED_MAX_ENTRIES:
                entries.popitem(last=False)
        else:
            entries.move_to_end(key)
        return encoded
    if is_json_type(content_type):
        return _json_payload(body, profile, allow_deflate)
    if content_type is None:
        return CoapPayload(body, options.CF_OCTET_STREAM, None)
    cf = CONTENT_FORMATS.get(content_type)
    if cf is not None and cf not in (options.CF_JSON, options.CF_CBOR):
        return CoapPayload(body, cf)
    return CoapPayload(body, options.CF_OCTET_STREAM, content_type)


def _json_payload(body: bytes, profile: Profile, allow_deflate: bool) -> CoapPayload:
    try:
        cbor = json_cbor.json_to_cbor(body, profile.cbor_table)
    except CodecError:
        # the homeserver must see what the client sent (and answer M_NOT_JSON)
        return CoapPayload(body, options.CF_JSON)
    if profile.flate is not None and allow_deflate:
        deflated = compress(cbor, profile.flate)
        form = timeline.encode(cbor, profile) if timeline.worth_trying(body, profile) else None
        if form is not None and len(form) + _TIMELINE_OPTION_COST < min(len(deflated), len(cbor) + _CF_OPTION_COST):
            return CoapPayload(form, options.CF_TIMELINE)
        if len(deflated) < len(cbor) + _CF_OPTION_COST:
            return CoapPayload(deflated, None)
    return CoapPayload(cbor, options.CF_CBOR)


def payload_to_body(
    payload: bytes,
    content_format: int | None,
    profile: Profile,
    content_type_header: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    max_verbatim: int | None = None,
) -> tuple[bytes, str | None]:
    """The HTTP body and Content-Type a CoAP payload stands for.

    ``max_size`` caps what a JSON body may expand to (the bomb cap): the
    inflated CBOR and the JSON it stands for, each (a byte of table code
    is up to ~40 bytes of JSON; §5.2); ``max_verbatim`` (default: the same)
    caps bodies carried as they are, such as media, which arrive already
    whole and cannot expand.
    """
    if not payload:
        return b"", content_type_header
    if content_format is None:
        if profile.flate is None:
            raise CodecError("payload without Content-Format, but the profile has no compression")
        cbor = decompress(payload, profile.flate, max_size)
        return json_cbor.cbor_to_json(cbor, profile.cbor_table, max_size), JSON_TYPE
    if content_format == options.CF_CBOR:
        return json_cbor.cbor_to_json(payload, profile.cbor_table, max_size), JSON_TYPE
    if content_format == options.CF_TIMELINE:
        return timeline.decode(payload, profile, max_size), JSON_TYPE
    limit = max_size if max_verbatim is None else max_verbatim
    if len(payload) > limit:
        raise CodecError(f"payload of {len(payload)} bytes exceeds {limit}")
    if content_type_header is not None:
        return payload, content_type_header
    content_type = _TYPE_OF_FORMAT.get(content_format)
    if content_type is None:
        raise CodecError(f"unknown Content-Format {content_format}")
    return payload, content_type


# ------------------------------------------------------- HTTP-Header option

MAX_HEADER_OPTION = 1024


def encode_header(name: str, value: str) -> bytes:
    if not name or any(c in name for c in ":\r\n \t") or any(c in value for c in "\r\n\0"):
        raise CodecError(f"header {name!r} cannot be carried")
    data = f"{name}: {value}".encode("utf-8")
    if len(data) > MAX_HEADER_OPTION:
        raise CodecError(f"header {name} is longer than {MAX_HEADER_OPTION} bytes")
    return data


def decode_header(data: bytes) -> tuple[str, str]:
    if len(data) > MAX_HEADER_OPTION:
        raise CodecError("HTTP-Header option too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError("HTTP-Header option is not UTF-8") from exc
    name, sep, value = text.partition(": ")
    if not sep:
        raise CodecError("HTTP-Header option lacks ': '")
    encode_header(name, value)  # same validation both ways
    return name, value
