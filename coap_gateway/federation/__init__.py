"""Federation through the gateways: stock homeservers talking CoAP (issue 12).

Each homeserver has a gateway.  Homeserver A's outbound federation goes to
its gateway as to a forward proxy (``https_proxy``: CONNECT, then TLS to
the destination's name, ended with a certificate from the gateway's own CA);
each request crosses the link as CoAP + CBOR + Flate in the pair's one
Noise session to the destination's gateway, which hands it to homeserver
B's federation listener; the answer comes back the same way.  Nothing is
stripped: the X-Matrix header crosses verbatim, bodies arrive canonically
equal, so homeserver B verifies every signature as usual.

Sans-I/O core (pure functions and plain objects): ``peers`` (the peers
table: server name → gateway address + pinned Noise key; TOML), ``policy``
(which CONNECTs, paths and peers are allowed — not an open proxy — and
which gateway of a pair opens its session), ``mapping`` (a federation
request and answer ⇄ CoAP, the X-Matrix option).  ``ca`` makes and keeps
the CA (key 0600) and issues leaf certificates.  Asyncio shells, thin:
``proxy`` (CONNECT + TLS + h11), ``link`` (one Noise session per pair on
one link, either end sending), ``gateway`` (outbound ``forward``, inbound
``render`` through ``gateway.Upstream``).  Wiring and the command are in
``app.federation``.
"""

from .ca import CA_CERT, CA_KEY, FederationCA
from .gateway import FederationConfig, FederationCounters, FederationGateway
from .link import PeerKey, PeerLinkCodec
from .mapping import X_MATRIX, FederationRequest, coap_to_federation, federation_to_coap
from .peers import Peer, PeersError, PeersTable, dump_peers, load_peers, normalise_name, parse_peers
from .policy import (
    EPHEMERAL_EDUS,
    ConnectDecision,
    connect_decision,
    ephemeral_only,
    initiates,
    is_federation_path,
    peer_request_decision,
    request_decision,
)
from .proxy import FederationProxy, ProxyCounters

__all__ = [
    "CA_CERT",
    "EPHEMERAL_EDUS",
    "CA_KEY",
    "X_MATRIX",
    "ConnectDecision",
    "FederationCA",
    "FederationConfig",
    "FederationCounters",
    "FederationGateway",
    "FederationProxy",
    "FederationRequest",
    "Peer",
    "PeerKey",
    "PeerLinkCodec",
    "PeersError",
    "PeersTable",
    "ProxyCounters",
    "coap_to_federation",
    "connect_decision",
    "dump_peers",
    "federation_to_coap",
    "ephemeral_only",
    "initiates",
    "is_federation_path",
    "load_peers",
    "normalise_name",
    "parse_peers",
    "peer_request_decision",
    "request_decision",
]
