"""Transport: CoAP (aiocoap) over datagram links, with link-aware timers.

The asyncio layer under the gateways.  ``coap`` wires aiocoap's token and
message managers onto our own message interface (every use of aiocoap's
private members is in that one module, hence the exact pin); ``links`` and
``emulated`` are the datagram links (UDP v4/v6, KISS over a serial line or
pty, an in-memory link); ``secure_codec`` plugs the Noise endpoints
(``coap_gateway.secure``) in between; ``timing`` derives retransmission
timers from the link's rate and latency; ``units`` reads tc-netem rates and
times.  The contracts between these pieces are in ``interfaces``.
"""

from .coap import (
    BULK_SLICE,
    LinkAddress,
    LinkEndpoint,
    LinkFailure,
    Observation,
    PeerCounters,
    PlainCodec,
    TransportCounters,
    assembly_bytes,
    drop_assemblies,
    create_link_endpoint,
    release_assemblies,
)
from .emulated import EmulatedLinkEnd, connect
from .interfaces import CodecHost, DatagramLink, FrameCodec, LinkStage, Receiver
from .links import SerialLink, UdpLink
from .secure_codec import (
    KEYLOG_ENV,
    SERVER_KEY,
    DeviceEvent,
    DeviceId,
    KeyLog,
    SecureClientCodec,
    SecureServerCodec,
    pinned_client_codec,
    profile_wire_digest,
)
from .timing import LinkBudget, RetransmissionTimer
from .units import (
    format_netem_percent,
    format_netem_rate,
    format_netem_time,
    parse_netem_percent,
    parse_netem_rate,
    parse_netem_time,
)

__all__ = [
    "BULK_SLICE",
    "KEYLOG_ENV",
    "SERVER_KEY",
    "CodecHost",
    "DatagramLink",
    "DeviceEvent",
    "DeviceId",
    "KeyLog",
    "EmulatedLinkEnd",
    "FrameCodec",
    "LinkAddress",
    "LinkBudget",
    "LinkEndpoint",
    "LinkFailure",
    "LinkStage",
    "Observation",
    "PeerCounters",
    "PlainCodec",
    "Receiver",
    "SecureClientCodec",
    "SecureServerCodec",
    "RetransmissionTimer",
    "SerialLink",
    "TransportCounters",
    "UdpLink",
    "assembly_bytes",
    "drop_assemblies",
    "connect",
    "create_link_endpoint",
    "format_netem_percent",
    "format_netem_rate",
    "format_netem_time",
    "parse_netem_percent",
    "parse_netem_rate",
    "parse_netem_time",
    "pinned_client_codec",
    "release_assemblies",
    "profile_wire_digest",
]
