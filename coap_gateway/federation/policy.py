"""What federation through the gateways allows (sans-I/O, pure functions).

Not an open proxy, in both roles:

* as homeserver A's forward proxy, a ``CONNECT host:port`` is accepted only
  for a server name in the peers table (``connect_decision``); inside the
  tunnel only federation and key paths are forwarded, and the well-known
  lookup Synapse makes before federating is answered here, never sent over
  the link (``request_decision``);
* as homeserver B's front, a request from a peer gateway is served only when
  that gateway's Noise key is in the table, the path is a federation or key
  path, and an ``X-Matrix`` origin, if any, is one of that gateway's own
  server names (``peer_request_decision``).

Which gateway of a pair opens their one Noise session is decided here too
(``initiates``): both directions share it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import unquote

from .peers import Peer, PeersTable, normalise_name

#: path prefixes (decoded segments) a peer may reach on our homeserver
FEDERATION_PREFIXES: tuple[tuple[str, ...], ...] = (("_matrix", "federation"), ("_matrix", "key"))
WELL_KNOWN_PATH = "/.well-known/matrix/server"
#: the federation port (a server name without a port federates on it)
FEDERATION_PORT = 8448
#: the port of the well-known lookup (https://NAME/.well-known/matrix/server)
WELL_KNOWN_PORT = 443

#: CONNECT refusals
FORBIDDEN = 403
BAD_REQUEST = 400


@dataclass(frozen=True)
class ConnectDecision:
    """What to do with ``CONNECT authority``: ``status`` 200 to open the
    tunnel, else the refusal; ``host`` is the name the TLS certificate is
    issued for; ``well_known_only``: the tunnel serves the well-known lookup
    and nothing else (port 443)."""

    status: int
    reason: str
    host: str = ""
    port: int = 0
    peer: Peer | None = None
    server_name: str = ""
    well_known_only: bool = False

    @property
    def allowed(self) -> bool:
        return self.status == 200


def parse_authority(authority: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` → (host, port); None if malformed."""
    text = authority.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            return None
    if not host or not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    if any(c.isspace() or c in "/@?#" for c in host):
        return None
    return host.lower(), int(port_text)


def connect_decision(table: PeersTable, authority: str, own_key: bytes | None = None) -> ConnectDecision:
    """Whether the forward proxy opens a tunnel to ``authority``.  A name
    behind ``own_key`` (this gateway: one table may list every node) is
    refused too — our own homeserver is not reached through the link."""
    parsed = parse_authority(authority)
    if parsed is None:
        return ConnectDecision(BAD_REQUEST, f"not host:port: {authority[:100]!r}")
    host, port = parsed
    if host.endswith(".."):
        return ConnectDecision(BAD_REQUEST, f"not a server name: {host[:100]!r}")
    # one name, one entry (and one TLS context): "b.example." is b.example
    host = host.removesuffix(".")
    name = host if port == FEDERATION_PORT else f"{host}:{port}"
    peer = table.by_name(name)
    well_known_only = False
    if peer is None and port == WELL_KNOWN_PORT:
        name, peer, well_known_only = host, table.by_name(host), True
    if peer is None:
        return ConnectDecision(FORBIDDEN, f"{name} is not in the peers table")
    if own_key is not None and peer.public == own_key:
        return ConnectDecision(FORBIDDEN, f"{name} is this gateway's own homeserver")
    return ConnectDecision(200, "well-known" if well_known_only else "peer", host, port, peer, normalise_name(name),
                           well_known_only=well_known_only)


#: an encoded backslash: no Matrix identifier has one, and some servers and proxies read it as "/"
_ENCODED_BACKSLASH = re.compile("%5c", re.IGNORECASE)


def _dot_segment(segment: str) -> bool:
    """Whether a raw path segment is, or hides, a dot segment: decoded (as often
    as a server or proxy behind might decode it) and split at ``/`` and ``\\``."""
    for _ in range(3):
        decoded = unquote(segment)
        if decoded == segment:
            break
        segment = decoded
    return any(part in (".", "..") for part in re.split(r"[/\\]", segment))


def is_federation_path(target: str) -> bool:
    """A federation or key API path: ``/_matrix/federation/…`` or
    ``/_matrix/key/…`` written plainly (the homeserver routes on the raw
    path, so a percent-encoded prefix is refused rather than guessed at),
    no backslash, plain or encoded, and no segment that becomes a dot segment
    once decoded (``x%2F..%2F..`` too: a proxy that decodes before it
    normalises would climb out of the prefix).  An encoded slash alone is
    allowed: the event IDs of room version 3 (standard base64) carry one."""
    if not target.startswith("/") or target.startswith("//"):
        return False
    path = target.partition("?")[0]
    if "\\" in path or _ENCODED_BACKSLASH.search(path):
        return False
    raw = path.split("/")[1:]
    if any(_dot_segment(s) for s in raw):
        return False
    return any(tuple(raw[: len(p)]) == p and len(raw) > len(p) for p in FEDERATION_PREFIXES)


@dataclass(frozen=True)
class RequestDecision:
    """What the forward proxy does with one request in a tunnel:
    ``"forward"`` it over the link, answer the ``"well-known"`` lookup here,
    or ``"refuse"`` it with ``status``."""

    action: str
    status: int = 200
    reason: str = ""


def request_decision(connect: ConnectDecision, method: str, target: str) -> RequestDecision:
    """A request homeserver A sends inside a tunnel ``connect`` opened."""
    path = target.partition("?")[0]
    if path == WELL_KNOWN_PATH and method in ("GET", "HEAD"):
        return RequestDecision("well-known")
    if connect.well_known_only:
        return RequestDecision("refuse", 404, "only the well-known lookup is served on port 443")
    if not is_federation_path(target):
        return RequestDecision("refuse", 403, "only federation and key paths cross the link")
    return RequestDecision("forward")


def well_known_body(connect: ConnectDecision) -> bytes:
    """The well-known answer the gateway gives for a peer: delegation to the
    name itself with the federation port made explicit, so that homeserver A
    makes no SRV lookup and its next CONNECT names the port."""
    name = connect.server_name
    target = name if ":" in name.rpartition("]")[2] else f"{name}:{FEDERATION_PORT}"
    return json.dumps({"m.server": target}, separators=(",", ":")).encode()


#: Synapse's reading of an X-Matrix header (``_parse_auth_header``): the scheme and
#: spaces, then parameters split at commas with spaces or tabs around them
_X_MATRIX_SCHEME = re.compile(r"X-Matrix +")
_X_MATRIX_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")
_QUOTED_PAIR = re.compile(r"\\(.)")


def x_matrix_params(authorization: str) -> dict[str, str] | None:
    """The parameters of an ``X-Matrix`` Authorization value (origin,
    destination, key, sig) exactly as Synapse reads them — a name is
    lower-cased but not stripped (``origin ="x"`` is not ``origin``), a value
    starting with ``"`` loses its first and last character and its backslash
    escapes; None when it is not one, or names a parameter twice (Synapse
    would take the last: refused, so that no reading can differ)."""
    scheme = _X_MATRIX_SCHEME.match(authorization)
    if scheme is None:
        return None
    params: dict[str, str] = {}
    for part in _X_MATRIX_SEPARATOR.split(authorization[scheme.end():]):
        name, sep, value = part.partition("=")
        name = name.lower()
        if not sep or name in params:
            return None
        if value.startswith('"'):
            value = _QUOTED_PAIR.sub(lambda m: m.group(1), value[1:-1])
        params[name] = value
    return params


@dataclass(frozen=True)
class PeerRequestDecision:
    allowed: bool
    status: int = 200
    reason: str = ""


def peer_request_decision(table: PeersTable, peer_key: bytes, target: str,
                          authorizations: list[str]) -> PeerRequestDecision:
    """Whether homeserver B's gateway forwards a request that came from the
    peer gateway holding Noise key ``peer_key``."""
    peer = table.by_key(peer_key)
    if peer is None:
        return PeerRequestDecision(False, 403, "unknown gateway key")
    if not is_federation_path(target):
        return PeerRequestDecision(False, 403, "only federation and key paths are served to peer gateways")
    for value in authorizations:
        params = x_matrix_params(value)
        if params is None:
            return PeerRequestDecision(False, 403, "an Authorization other than X-Matrix")
        origin = normalise_name(params.get("origin", ""))
        if origin not in peer.servers:
            return PeerRequestDecision(False, 403, f"origin {origin!r} is not behind the sending gateway")
    return PeerRequestDecision(True)


def initiates(mine: bytes, theirs: bytes) -> bool:
    """Whether this gateway opens the pair's one Noise session (it is the
    Noise initiator, the other the responder): the lower static key does.
    Both ends compute the same answer without talking."""
    return mine < theirs


#: low-bandwidth mode: EDUs a transaction may carry that the link can do without —
#: the federation side of the client gateway's local typing, receipts and presence.
#: Device-list updates and to-device messages (E2EE) always cross.
EPHEMERAL_EDUS = frozenset({"m.typing", "m.receipt", "m.presence"})


def ephemeral_only(method: str, target: str, body: bytes) -> int:
    """How many EDUs a ``PUT /send`` carries when it carries nothing but
    ephemeral EDUs (no PDU, at least one EDU, each of ``EPHEMERAL_EDUS``);
    0 for anything else.  In low-bandwidth mode such a transaction is
    answered ``{"pdus": {}}`` by the gateway and never crosses."""
    if method != "PUT" or not target.startswith("/_matrix/federation/v1/send/") or len(body) > 1 << 20:
        return 0
    try:
        doc = json.loads(body)
    except ValueError:
        return 0
    if not isinstance(doc, dict) or doc.get("pdus") not in (None, []):
        return 0
    edus = doc.get("edus")
    if not isinstance(edus, list) or not edus:
        return 0
    if all(isinstance(e, dict) and e.get("edu_type") in EPHEMERAL_EDUS for e in edus):
        return len(edus)
    return 0
