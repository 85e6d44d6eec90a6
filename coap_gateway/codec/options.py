"""CoAP option numbers and content formats this protocol uses.

Private options sit in the experimental range 65000–65535 (RFC 7252
§12.2).  Their low bits are chosen on purpose (RFC 7252 §5.4.6):
bit 0 = critical, bit 1 = unsafe to forward, bits 2–4 = 0b111 = NoCacheKey.

All but Route are rare on the wire (only for statuses, headers and
formats the common path does not need), so their 3-byte option
header is paid seldom; Route replaces every Uri-Path option of a request.
"""

from __future__ import annotations

# RFC 7252 options used by the mapping
URI_PATH = 11
CONTENT_FORMAT = 12
MAX_AGE = 14
URI_QUERY = 15

#: Exact HTTP status when the CoAP response code alone does not give it back.
#: Elective (a plain CoAP client can use the code), safe to forward.
HTTP_STATUS = 65000
#: An HTTP header with no CoAP equivalent ("Name: value"), repeatable, in
#: order.  Elective and safe: an intermediary may forward it unseen.
HTTP_HEADER = 65004
#: A Matrix access token and the handle that stands for it from now on
#: (``binding``): the handle as a CBOR unsigned integer, then the token's
#: bytes.  Sent until the server has confirmed it, then the handle alone.
#: Critical (a server that ignored it would run the request
#: unauthenticated) and unsafe (a proxy must not forward a credential it
#: does not understand).  Never inside the compressed payload (CRIME/BREACH).
ACCESS_TOKEN = 65003
#: This request carries no access token, although some may be bound.  Empty,
#: or a uint b >= 1 on a login (``binding.issues_token``): "bind the
#: access token of your 2xx answer as token handle b - 1", so that the token
#: the homeserver gives the device never crosses the link back up.
#: Critical and unsafe for the same reasons.
NO_TOKEN = 65007
#: Empty, on a 4.01 from the server gateway: the request named a token
#: handle the server does not hold for this device (it restarted, evicted
#: it); nothing was forwarded, send it again with Access-Token.  Elective, safe.
TOKEN_UNBOUND = 65008
#: Empty, on an answer to a request whose No-Token asked for a binding: the
#: server bound the answer's access token as that handle.  Elective, safe;
#: bits 2–4 = 0b111 (NoCacheKey).
TOKEN_BOUND = 65020
#: The request line in the compact form (profile lb3): route code and
#: parameters as a CBOR sequence (``route_option``), instead of Uri-Path.
#: Critical (a server that ignored it would see a request for "/") and
#: unsafe (it names the resource, a proxy must not pass it on unread).
ROUTE = 65011
#: Empty, on a 4.00 from the server gateway: the Route option used a handle
#: or transaction scope this session was never given; nothing was forwarded,
#: send it again with definitions.  Elective, safe.
HANDLE_UNKNOWN = 65012
#: Sync push control (``push.format``, docs/protocol.md "Sync push"): on a
#: request, an operation byte and then the observation's token (check it,
#: cancel it); on a response that ends an observation, why.  Critical (a
#: server that ignored it would answer a request for "/") and unsafe.
SYNC_PUSH = 65015
#: Empty, on a sync push registration: "I reassemble a notification sent in
#: parts" (``push.format.split_parts``), so an answer too large for one frame
#: is pushed in several instead of ending the observation.  Elective (a
#: server that does not know it fetches such answers plainly, as before) and
#: unsafe (it changes what the answer's notifications carry).
PUSH_PARTS = 65014
#: On a sync push registration that replaces an observation of the same
#: stream (a sliding-sync connection's new request body): the Observe number
#: of the last notification the client took (3 bytes) and that observation's
#: CoAP token; empty on the registration's answer when the server continues
#: the old observation's state (``push.format.DeltaState.continued``).
#: Elective (a server that does not know it starts afresh, and says nothing)
#: and unsafe (it changes what the notifications are encoded against).
PUSH_CONTINUE = 65018
#: The token handle a request runs under (a CoAP uint), when it is not 0;
#: no token option at all means handle 0, the device's first token.  The
#: server resolves the handle per request: never "the last token it saw".
#: Critical and unsafe, as Access-Token.  Numbered 8 after Route so that
#: after a Route option its header is one byte.
TOKEN_HANDLE = 65019


# Content formats (CoAP Content-Formats registry)
CF_TEXT_PLAIN = 0  # text/plain;charset=utf-8
CF_LINK_FORMAT = 40
CF_XML = 41
CF_OCTET_STREAM = 42
CF_JSON = 50
CF_CBOR = 60
#: deflate(CBOR) in the timeline form (``timeline``): timestamps as differences,
#: the text dictionary after the preset one; experimental range (RFC 7252 §12.3)
CF_TIMELINE = 65001
CF_IMAGE_GIF = 21
CF_IMAGE_JPEG = 22
CF_IMAGE_PNG = 23
