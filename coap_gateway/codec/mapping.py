"""HTTP request/response ⇄ CoAP message: the codec layers put together (sans-I/O).

Both gateways use this module: the client gateway turns an HTTP request into
a CoAP request and a CoAP response back into HTTP; the server gateway does
the opposite.  Which HTTP headers cross the link is an allowlist, because
every byte costs 80 ms at 100 bit/s and most headers (User-Agent, Accept,
Host…) mean nothing to the other side.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption, UintOption

from ..errors import CodecError, CompressionError, RouteError, SecurityError
from . import json_cbor, options, payload, route_option, routes, status
from .compression import DEFAULT_MAX_SIZE, compress, decompress
from .profile import Profile
from .route_option import ClientWireState, Journal, MessageBody, ServerWireState

#: response headers that cross the link (besides Content-Type and Retry-After)
FORWARDED_RESPONSE_HEADERS = ("Content-Disposition", "Location")
#: a response body may be a whole initial sync
MAX_RESPONSE_BODY = 64 << 20
#: the longest diagnostic text a response without Content-Format is shown as
MAX_DIAGNOSTIC = 1024
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
    #: the route's name when the request came in the compact form (its
    #: response may then use the route's response schema)
    compact_route: str | None = None


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


def request_to_coap(req: HttpRequest, profile: Profile, wire: ClientWireState | None = None,
                    carried: set[int | str] | None = None) -> Message:
    """The CoAP request for an HTTP request (without token options: the
    token options are ``binding``'s).

    With ``wire`` and a profile of the compact form, a known endpoint's
    request line travels as the Route option (``route_option``)."""
    line = routes.http_to_coap(req.method, req.target, profile.routes)
    if wire is not None and profile.schemas is not None and line.template is not None:
        return _compact_request(req, line, profile, wire, carried)
    pl = payload.body_to_payload(req.body, req.content_type, profile)
    msg = Message(code=Code(line.method), uri_path=line.uri_path, uri_query=line.uri_query, payload=pl.payload)
    _add_payload_options(msg, pl)
    return msg


def _add_payload_options(msg: Message, pl: payload.CoapPayload) -> None:
    if pl.content_format is not None:
        msg.opt.content_format = pl.content_format
    if pl.content_type_header is not None:
        _add_header(msg, "Content-Type", pl.content_type_header)


def _compact_request(req: HttpRequest, line: routes.CoapRequestLine, profile: Profile,
                     wire: ClientWireState, carried: set[int | str] | None) -> Message:
    assert line.template is not None and profile.schemas is not None
    segments, _ = routes.split_target(req.target)
    params = [s for s, lit in zip(segments, line.template.segments) if lit is None]
    event_type = route_option.event_type_param(line.template, params, profile.schemas)
    message = _message_body(req, line.template.name, event_type, profile)
    encrypted = _encrypted_body(req, line.template.name, event_type, profile, wire) if message is None else None
    value = route_option.encode_route(line.template, params, profile.schemas, profile.cbor_table, wire, message,
                                      carried, encrypted)
    if message is not None:
        msg = Message(code=Code(line.method), uri_query=line.uri_query, payload=message.text)
    elif encrypted is not None:
        msg = Message(code=Code(line.method), uri_query=line.uri_query, payload=encrypted[1].ciphertext)
    else:
        pl = payload.body_to_payload(req.body, req.content_type, profile)
        msg = Message(code=Code(line.method), uri_query=line.uri_query, payload=pl.payload)
        _add_payload_options(msg, pl)
    msg.opt.add_option(OpaqueOption(options.ROUTE, value))
    return msg


def _message_body(req: HttpRequest, route_name: str, event_type: str | None, profile: Profile) -> MessageBody | None:
    """The bare-text form of a message body, when the schema applies exactly:
    ``{"msgtype": M, "body": S}`` and nothing else, M in the msgtype table."""
    schemas = profile.schemas
    assert schemas is not None
    if route_name not in schemas.message_routes or event_type != schemas.message_event_type:
        return None
    if not payload.is_json_type(req.content_type) or len(req.body) > MAX_REQUEST_BODY:
        return None
    try:
        doc = json_cbor.parse_json(req.body)
    except CodecError:
        return None
    # any JSON may come: a msgtype that is a list or an object is no table
    # key (and unhashable), so it takes the plain path
    if not (isinstance(doc, dict) and doc.keys() == {"msgtype", "body"} and isinstance(doc["body"], str)
            and isinstance(doc["msgtype"], str)):
        return None
    code = profile.cbor_table.value_codes.get("msgtype", {}).get(doc["msgtype"])
    try:
        text = doc["body"].encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: let the generic path refuse it
        return None
    if code is None or code > 30:
        return None
    deflated = compress(text, schemas.text_dictionary)
    if len(deflated) < len(text):
        return MessageBody(code, deflated, True)
    return MessageBody(code, text, False)


def _encrypted_body(req: HttpRequest, route_name: str, event_type: str | None, profile: Profile,
                    wire: ClientWireState) -> tuple[int, route_option.EncryptedBody] | None:
    """The encrypted schema of a send (``route_option``): its template's
    handle and the body, when it applies exactly."""
    schemas = profile.schemas
    assert schemas is not None
    if (route_name not in schemas.message_routes or event_type != route_option.ENCRYPTED_EVENT_TYPE
            or not payload.is_json_type(req.content_type) or len(req.body) > MAX_REQUEST_BODY):
        return None
    body = route_option.encrypted_body(req.body, profile.cbor_table)
    if body is None:
        return None
    handle, _ = wire.handle_for(route_option.TEMPLATE, body.template.decode("utf-8"))
    return None if handle is None else (handle, body)


def coap_to_request(msg: Message, profile: Profile, wire: ServerWireState | None = None,
                    journal: Journal | None = None, rooms: Sequence[str] | None = None) -> HttpRequest:
    """The HTTP request a CoAP request stands for (token handling aside).

    A request in the compact form needs the session's ``wire`` state; it
    raises ``route_option.HandleUnknown`` when that lacks a definition, and
    ``route_option.RoomsNeeded`` when it defines a room by digest and
    ``rooms`` (the account's joined rooms) is None."""
    compact = msg.opt.get_option(options.ROUTE)
    if compact:
        return _compact_to_request(msg, compact, profile, wire, journal, rooms)
    method, target = routes.coap_to_http(int(msg.code), msg.opt.uri_path, msg.opt.uri_query, profile.routes)
    header_type = next((v for n, v in _header_options(msg) if n.lower() == "content-type"), None)
    body, content_type = payload.payload_to_body(msg.payload, msg.opt.content_format, profile, header_type,
                                                 max_size=MAX_REQUEST_BODY, max_verbatim=MAX_MEDIA_BODY)
    return HttpRequest(method, target, body, content_type)


def _compact_to_request(msg: Message, compact: Sequence[OpaqueOption], profile: Profile,
                        wire: ServerWireState | None, journal: Journal | None,
                        rooms: Sequence[str] | None) -> HttpRequest:
    if profile.schemas is None or wire is None:
        raise RouteError("the Route option is not part of this profile")
    if len(compact) != 1 or msg.opt.uri_path:
        raise RouteError("a request has one Route option and then no Uri-Path")
    method = routes.METHOD_NAMES.get(int(msg.code))
    if method is None:
        raise RouteError(f"CoAP code {int(msg.code)} is not a request method")
    decoded = route_option.decode_route(compact[0].value, profile.routes, profile.schemas, profile.cbor_table, wire,
                                        journal, rooms)
    target = decoded.template.expand(decoded.params)
    if msg.opt.uri_query:
        target += "?" + "&".join(routes.check_query_param(p) for p in routes.join_chunks(msg.opt.uri_query))
    if decoded.message is not None:
        if msg.opt.content_format is not None:
            raise CodecError("a bare message text has no Content-Format")
        code, deflated = decoded.message
        text = decompress(msg.payload, profile.schemas.text_dictionary, MAX_REQUEST_BODY) if deflated else msg.payload
        try:
            body_text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError("message text is not UTF-8") from exc
        msgtype = profile.cbor_table.value_names["msgtype"][code]
        body = json_cbor.dump_json({"msgtype": msgtype, "body": body_text})
        return HttpRequest(method, target, body, payload.JSON_TYPE, compact_route=decoded.template.name)
    if decoded.encrypted_template is not None:
        if msg.opt.content_format is not None or not msg.payload or len(msg.payload) > MAX_REQUEST_BODY:
            raise CodecError("an encrypted body's ciphertext is 1 byte or more, without Content-Format")
        body = route_option.fill_template(decoded.encrypted_template, msg.payload)
        return HttpRequest(method, target, body, payload.JSON_TYPE, compact_route=decoded.template.name)
    header_type = next((v for n, v in _header_options(msg) if n.lower() == "content-type"), None)
    body, content_type = payload.payload_to_body(msg.payload, msg.opt.content_format, profile, header_type,
                                                 max_size=MAX_REQUEST_BODY, max_verbatim=MAX_MEDIA_BODY)
    return HttpRequest(method, target, body, content_type, compact_route=decoded.template.name)


def compact_route_name(msg: Message, profile: Profile) -> str | None:
    """The route a request we encoded names in its Route option, if any."""
    compact = msg.opt.get_option(options.ROUTE)
    code = route_option.route_code(compact[0].value) if compact and profile.schemas else None
    if code is None or profile.schemas is None:
        return None
    template = route_option.template_for(code, profile.routes, profile.schemas)
    return template.name if template is not None else None


# ---------------------------------------------------------------- responses


#: the code of a bare event ID followed by the fold of its echo (push.echo)
ECHO_CODE = status.coap_code(2, 4)


def response_to_coap(resp: HttpResponse, profile: Profile, compact_route: str | None = None,
                     echo: bytes | None = None) -> Message:
    """The CoAP response for an HTTP response.

    ``compact_route``: the route of a request that came in the compact form;
    on a route with the event-ID schema a 200 ``{"event_id": E}`` travels as
    E alone (32 bytes for "$" + URL-safe base64, else its text), with no
    Content-Format; every other body on such a route then carries one.
    ``echo``: the fold of the send's echo (``push.echo``), which follows the
    32-byte form under code 2.04 (a 204 has no body, anything else on these
    routes a Content-Format or HTTP-Status)."""
    event_route = (compact_route is not None and profile.schemas is not None
                   and compact_route in profile.schemas.event_id_routes)
    if event_route and resp.status == 200:
        bare = bare_event_id(resp)
        if bare is not None:
            if echo and len(bare) == route_option.ID_BYTES:
                msg = Message(code=Code(ECHO_CODE), payload=bare + echo)
            else:
                msg = Message(code=Code(status.DIRECT[200]), payload=bare)
            _add_forwarded_headers(msg, resp)
            return msg
    retry_after = next((v for n, v in resp.headers if n.lower() == "retry-after"), None)
    st = status.http_to_coap(resp.status, retry_after)
    pl = payload.body_to_payload(resp.body, resp.content_type, profile, allow_deflate=not event_route)
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
    _add_forwarded_headers(msg, resp)
    return msg


def _add_forwarded_headers(msg: Message, resp: HttpResponse) -> None:
    wanted = {h.lower() for h in FORWARDED_RESPONSE_HEADERS}
    for name, value in resp.headers:
        if name.lower() in wanted:
            try:
                _add_header(msg, name, value)
            except CodecError:
                pass  # an odd header is not worth failing the response


def bare_event_id(resp: HttpResponse) -> bytes | None:
    """A 200 ``{"event_id": E}`` exactly as Synapse writes it, as the bytes that carry E alone."""
    if not payload.is_json_type(resp.content_type) or len(resp.body) > 1024:
        return None
    try:
        doc = json_cbor.parse_json(resp.body)
    except CodecError:
        return None
    if not (isinstance(doc, dict) and doc.keys() == {"event_id"} and isinstance(doc["event_id"], str)):
        return None
    if json_cbor.dump_json(doc) != resp.body:
        return None  # not as Synapse writes it: the generic path keeps it exact
    binary = route_option.binary_id(doc["event_id"], "$")
    if binary is not None:
        return binary
    text = doc["event_id"].encode("utf-8")
    # 32 bytes would read as the binary form; empty as an empty body
    return text if 0 < len(text) != route_option.ID_BYTES else None


def _bare_form(msg: Message, profile: Profile, compact_route: str | None) -> bool:
    return (compact_route is not None and profile.schemas is not None
            and compact_route in profile.schemas.event_id_routes and bool(msg.payload)
            and msg.opt.content_format is None and not msg.opt.get_option(options.HTTP_STATUS)
            and (int(msg.code) == status.DIRECT[200]
                 or (int(msg.code) == ECHO_CODE and len(msg.payload) > route_option.ID_BYTES)))


def echo_fold(msg: Message, profile: Profile, compact_route: str | None = None) -> bytes | None:
    """The fold of the send's echo an answer carries after its event ID (``push.echo``), if any."""
    if int(msg.code) == ECHO_CODE and _bare_form(msg, profile, compact_route):
        return bytes(msg.payload[route_option.ID_BYTES:])
    return None


def coap_to_response(msg: Message, profile: Profile, compact_route: str | None = None) -> HttpResponse:
    if _bare_form(msg, profile, compact_route):
        raw = msg.payload if int(msg.code) != ECHO_CODE else msg.payload[:route_option.ID_BYTES]
        if len(raw) == route_option.ID_BYTES:
            event_id = "$" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        else:
            try:
                event_id = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CodecError("bare event ID is not UTF-8") from exc
        headers = [(n, v) for n, v in _header_options(msg) if n.lower() != "content-type"]
        return HttpResponse(200, json_cbor.dump_json({"event_id": event_id}), payload.JSON_TYPE, headers)
    http_status_opts = msg.opt.get_option(options.HTTP_STATUS)
    http_status = http_status_opts[0].value if http_status_opts else None
    code, retry_after = status.coap_to_http(int(msg.code), http_status, msg.opt.max_age)
    headers = _header_options(msg)
    header_type = next((v for n, v in headers if n.lower() == "content-type"), None)
    try:
        body, content_type = payload.payload_to_body(msg.payload, msg.opt.content_format, profile, header_type,
                                                     max_size=MAX_RESPONSE_BODY)
    except (CodecError, CompressionError):
        if not (int(msg.code) >= 0x80 and http_status is None and msg.opt.content_format is None):
            raise
        # a CoAP library's own error with a diagnostic text and no
        # Content-Format (§5.1): shown as the text it is
        body, content_type = bytes(msg.payload[:MAX_DIAGNOSTIC]), "text/plain; charset=utf-8"
    out = [(n, v) for n, v in headers if n.lower() != "content-type"]
    if retry_after is not None:
        out.append(("Retry-After", retry_after))
    return HttpResponse(code, body, content_type, out)


def matrix_error(http_status: int, errcode: str, error: str, extra: Iterable[tuple[str, object]] = ()) -> HttpResponse:
    """A Matrix error response made by a gateway itself (link down, refused…)."""
    body = {"errcode": errcode, "error": error, **dict(extra)}
    return HttpResponse(http_status, json.dumps(body).encode(), payload.JSON_TYPE)


def link_failure(cause: BaseException | None = None) -> HttpResponse:
    """What the client hears when the link did not deliver its request.

    A handshake that cannot succeed (the server's key changed, or it holds
    another profile) is said as it is, with what to do: retrying will not
    help until someone acts, and "gateway timeout" would hide that."""
    while cause is not None:
        if isinstance(cause, SecurityError):
            return matrix_error(502, "M_UNKNOWN", f"the gateway cannot connect securely: {cause}")
        cause = cause.__cause__ or cause.__context__
    return matrix_error(504, "M_UNKNOWN", "the low-bandwidth link did not deliver the request")


def decoded_path_segments(target: str) -> Sequence[str]:
    """Percent-decoded, lower-cased path segments, to check prefixes robustly."""
    path = target.partition("?")[0]
    return [unquote(s).lower() for s in path.split("/")[1:]]
