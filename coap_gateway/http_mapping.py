"""HTTP request/response ⇄ CoAP message: the codec layers put together (sans-I/O).

Both gateways use this module: the client gateway turns an HTTP request into
a CoAP request and a CoAP response back into HTTP; the server gateway does
the opposite.  Which HTTP headers cross the link is an allowlist, because
every byte costs 80 ms at 100 bit/s and most headers (User-Agent, Accept,
Host…) mean nothing to the other side.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from urllib.parse import unquote
from dataclasses import dataclass, field

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption, UintOption

from . import options, payload, routes, status
from .compression import DEFAULT_MAX_SIZE
from .errors import CodecError
from .profile import Profile

#: response headers that cross the link (besides Content-Type and Retry-After)
FORWARDED_RESPONSE_HEADERS = ("Content-Disposition", "Location")
#: a response body may be a whole initial sync
MAX_RESPONSE_BODY = 64 << 20
#: a JSON request body may expand to this (deflate bomb cap)
MAX_REQUEST_BODY = DEFAULT_MAX_SIZE
#: media and other bodies carried verbatim: Synapse's default max_upload_size
MAX_MEDIA_BODY = 50 << 20


@dataclass
class HttpRequest:
    method: str
    target: str  # raw path and query, exactly as the client sent them
    body: bytes = b""
    content_type: str | None = None
    access_token: str | None = None


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header (case-insensitive scheme)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _header_options(msg: Message) -> list[tuple[str, str]]:
    return [payload.decode_header(o.value) for o in msg.opt.get_option(options.HTTP_HEADER)]


def _add_header(msg: Message, name: str, value: str) -> None:
    msg.opt.add_option(OpaqueOption(options.HTTP_HEADER, payload.encode_header(name, value)))


# ----------------------------------------------------------------- requests


def request_to_coap(req: HttpRequest, profile: Profile) -> Message:
    """The CoAP request for an HTTP request (without token options: the
    token state is the client gateway's, see ``client_gateway``)."""
    line = routes.http_to_coap(req.method, req.target, profile.routes)
    pl = payload.body_to_payload(req.body, req.content_type, profile)
    msg = Message(code=Code(line.method), uri_path=line.uri_path, uri_query=line.uri_query, payload=pl.payload)
    if pl.content_format is not None:
        msg.opt.content_format = pl.content_format
    if pl.content_type_header is not None:
        _add_header(msg, "Content-Type", pl.content_type_header)
    return msg


def coap_to_request(msg: Message, profile: Profile) -> HttpRequest:
    """The HTTP request a CoAP request stands for (token handling aside)."""
    method, target = routes.coap_to_http(int(msg.code), msg.opt.uri_path, msg.opt.uri_query, profile.routes)
    header_type = next((v for n, v in _header_options(msg) if n.lower() == "content-type"), None)
    body, content_type = payload.payload_to_body(msg.payload, msg.opt.content_format, profile, header_type,
                                                 max_size=MAX_REQUEST_BODY, max_verbatim=MAX_MEDIA_BODY)
    return HttpRequest(method, target, body, content_type)


# ---------------------------------------------------------------- responses


def response_to_coap(resp: HttpResponse, profile: Profile) -> Message:
    retry_after = next((v for n, v in resp.headers if n.lower() == "retry-after"), None)
    st = status.http_to_coap(resp.status, retry_after)
    pl = payload.body_to_payload(resp.body, resp.content_type, profile)
    msg = Message(code=Code(st.code), payload=pl.payload)
    if pl.content_format is not None:
        msg.opt.content_format = pl.content_format
    if st.http_status is not None:
        msg.opt.add_option(UintOption(options.HTTP_STATUS, st.http_status))
    if st.max_age is not None:
        msg.opt.max_age = st.max_age
    if st.retry_after_header is not None:
        _add_header(msg, "Retry-After", st.retry_after_header)
    if pl.content_type_header is not None:
        _add_header(msg, "Content-Type", pl.content_type_header)
    wanted = {h.lower() for h in FORWARDED_RESPONSE_HEADERS}
    for name, value in resp.headers:
        if name.lower() in wanted:
            try:
                _add_header(msg, name, value)
            except CodecError:
                pass  # an odd header is not worth failing the response
    return msg


def coap_to_response(msg: Message, profile: Profile) -> HttpResponse:
    http_status_opts = msg.opt.get_option(options.HTTP_STATUS)
    http_status = http_status_opts[0].value if http_status_opts else None
    code, retry_after = status.coap_to_http(int(msg.code), http_status, msg.opt.max_age)
    headers = _header_options(msg)
    header_type = next((v for n, v in headers if n.lower() == "content-type"), None)
    body, content_type = payload.payload_to_body(msg.payload, msg.opt.content_format, profile, header_type,
                                                 max_size=MAX_RESPONSE_BODY)
    out = [(n, v) for n, v in headers if n.lower() != "content-type"]
    if retry_after is not None:
        out.append(("Retry-After", retry_after))
    return HttpResponse(code, body, content_type, out)


def matrix_error(http_status: int, errcode: str, error: str, extra: Iterable[tuple[str, object]] = ()) -> HttpResponse:
    """A Matrix error response made by a gateway itself (link down, refused…)."""
    body = {"errcode": errcode, "error": error, **dict(extra)}
    return HttpResponse(http_status, json.dumps(body).encode(), payload.JSON_TYPE)


def decoded_path_segments(target: str) -> Sequence[str]:
    """Percent-decoded, lower-cased path segments, to check prefixes robustly."""
    path = target.partition("?")[0]
    return [unquote(s).lower() for s in path.split("/")[1:]]
