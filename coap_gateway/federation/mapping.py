"""A federation request and its answer as CoAP (sans-I/O): the plain mapping.

The request line, the body and the answer go through the codec exactly as a
client's do (``codec.request_to_coap``: Uri-Path/Uri-Query, the JSON body as
CBOR under the profile's table and deflated with its dictionary; the answer
by ``codec.response_to_coap``).  What federation adds is the request's
``Authorization: X-Matrix …`` header, carried verbatim in one X-Matrix
option (65023) per header: homeserver B verifies its signature over the
method, path, origin, destination and the canonical JSON of the body, so
none of these may change on the way, and the body need only arrive
canonically equal (CBOR keeps every JSON value; keys may come in another
order).  docs/protocol.md, "Federation (plain mapping)".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiocoap import Message
from aiocoap.optiontypes import OpaqueOption

from ..codec import (
    HttpRequest,
    HttpResponse,
    Profile,
    coap_to_request,
    coap_to_response,
    request_to_coap,
    response_to_coap,
)
from ..errors import CodecError

#: Authorization (X-Matrix) of a federation request, verbatim, UTF-8;
#: repeatable.  Critical (odd: a peer that ignored it would forward the
#: request unauthenticated, and homeserver B would refuse it for a reason
#: nobody sees) and unsafe (bit 1: a proxy must not forward a credential it
#: does not understand).
X_MATRIX = 65023
#: longest X-Matrix option accepted (Synapse's is ~200 bytes)
MAX_X_MATRIX = 2048


@dataclass
class FederationRequest:
    """One request homeserver A sent to homeserver B."""

    method: str
    target: str  # raw path and query, exactly as homeserver A sent them
    body: bytes = b""
    content_type: str | None = None
    #: every Authorization header, verbatim, in order
    authorizations: list[str] = field(default_factory=list)


def federation_to_coap(req: FederationRequest, profile: Profile) -> Message:
    """The CoAP request gateway A sends to gateway B."""
    for value in req.authorizations:
        if len(value.encode("utf-8")) > MAX_X_MATRIX or any(c in value for c in "\r\n\0"):
            raise CodecError("an Authorization header that cannot be carried")
    msg = request_to_coap(HttpRequest(req.method, req.target, req.body, req.content_type), profile)
    for value in req.authorizations:
        msg.opt.add_option(OpaqueOption(X_MATRIX, value.encode("utf-8")))
    return msg


def coap_to_federation(msg: Message, profile: Profile) -> FederationRequest:
    """The federation request a CoAP request from a peer gateway stands for."""
    http = coap_to_request(msg, profile)
    authorizations = []
    for option in msg.opt.get_option(X_MATRIX):
        if len(option.value) > MAX_X_MATRIX:
            raise CodecError("X-Matrix option too long")
        try:
            value = option.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError("X-Matrix option is not UTF-8") from exc
        if any(c in value for c in "\r\n\0"):
            raise CodecError("X-Matrix option with a line break")
        authorizations.append(value)
    return FederationRequest(http.method, http.target, http.body, http.content_type, authorizations)


def answer_to_coap(resp: HttpResponse, profile: Profile) -> Message:
    """Homeserver B's answer, as gateway B sends it back."""
    return response_to_coap(resp, profile)


def coap_to_answer(msg: Message, profile: Profile) -> HttpResponse:
    """The answer gateway A gives homeserver A."""
    return coap_to_response(msg, profile)
