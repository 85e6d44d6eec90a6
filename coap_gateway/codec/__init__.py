"""Codec (sans-I/O): what crosses the link, byte for byte.

Everything here is a pure function or a plain state object: JSON and CBOR
under versioned key/value tables (``json_cbor``, ``tables``), the route
table and the compact Route option (``routes``, ``route_option``,
``schemas``), the HTTP⇄CoAP status map (``status``), raw deflate with
preset dictionaries (``compression``), payloads and content formats
(``payload``), answers revalidated by ETag (``revalidation``), the CoAP
option numbers (``options``), the profiles that tie
a table set together (``profile``), HTTP request/response ⇄ CoAP message
(``mapping``), and — the one owner of what a server holds for a device —
token and handle binding (``binding``).  Nothing here opens a socket, reads
a clock or needs an event loop.
"""

from . import column, json_cbor, options, payload, revalidation, route_option, routes, status, timeline
from .binding import (
    Attempt,
    ClientBinding,
    ClientBindingCounters,
    DeviceState,
    Refused,
    Resend,
    Resolved,
    RoomsWanted,
    ServerBinding,
    is_logout,
    issues_token,
)
from .compression import (
    DEFAULT_MAX_SIZE,
    MAX_DICTIONARY_SIZE,
    FlateDictionary,
    compress,
    decompress,
    load_flate_dictionary,
)
from .mapping import (
    MAX_MEDIA_BODY,
    MAX_REQUEST_BODY,
    MAX_RESPONSE_BODY,
    HttpRequest,
    HttpResponse,
    bearer_token,
    coap_to_request,
    bare_event_id,
    coap_to_response,
    compact_route_name,
    decoded_path_segments,
    echo_fold,
    link_failure,
    matrix_error,
    request_to_coap,
    response_to_coap,
)
from .profile import DEFAULT_PROFILE, Profile, load_profile, profile_names
from .routes import METHODS, RouteTable, Template, load_route_table, split_target
from .tables import LATEST_CBOR_TABLE, CborTable, load_cbor_table

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_PROFILE",
    "LATEST_CBOR_TABLE",
    "MAX_DICTIONARY_SIZE",
    "MAX_MEDIA_BODY",
    "MAX_REQUEST_BODY",
    "MAX_RESPONSE_BODY",
    "METHODS",
    "Attempt",
    "CborTable",
    "ClientBinding",
    "ClientBindingCounters",
    "DeviceState",
    "FlateDictionary",
    "HttpRequest",
    "HttpResponse",
    "Profile",
    "Refused",
    "Resend",
    "Resolved",
    "RoomsWanted",
    "RouteTable",
    "ServerBinding",
    "Template",
    "bearer_token",
    "coap_to_request",
    "bare_event_id",
    "coap_to_response",
    "compact_route_name",
    "compress",
    "decoded_path_segments",
    "echo_fold",
    "decompress",
    "is_logout",
    "issues_token",
    "json_cbor",
    "link_failure",
    "load_cbor_table",
    "load_flate_dictionary",
    "load_profile",
    "load_route_table",
    "matrix_error",
    "options",
    "payload",
    "revalidation",
    "profile_names",
    "request_to_coap",
    "response_to_coap",
    "route_option",
    "routes",
    "split_target",
    "status",
]
