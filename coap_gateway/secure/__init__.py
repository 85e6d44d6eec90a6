"""The secure layer (sans-I/O): Noise sessions and frames, keys and pins.

``frame`` is the byte layout (handshake frames told apart from CoAP by the
version bits, sealed data frames, RESET and REFUSE); ``noise`` wraps the
Noise handshakes (IK with 0-RTT early data, XX on first contact) and the
per-direction ciphers with explicit sequence numbers and replay windows;
``server`` and ``client`` are the endpoints' state machines: datagrams plus
``now`` in, typed ``events`` out, ``next_timer()``/``handle_timer(now)``,
bounded tables with ``sizes()``; with ``export_keys`` set (off by default)
they also emit ``SessionKeys``, a session's secrets for a key log.  ``keys`` stores static keys (0600) and
the trust-on-first-use pins.  The asyncio side is
``transport.secure_codec``.
"""

from . import events, frame, keys
from .client import IK_DATAGRAMS, ClientEndpoint
from .events import (
    ClientOutput,
    Connected,
    Deliver,
    DeviceRestarted,
    Dropped,
    Rehandshake,
    ServerOutput,
    SessionClosed,
    SessionEstablished,
    SessionKeys,
    Transmit,
    Woken,
    reason_label,
)
from .frame import DatagramKind, classify
from .keys import PinStore
from .server import ServerEndpoint, ServerLimits

__all__ = [
    "IK_DATAGRAMS",
    "ClientEndpoint",
    "ClientOutput",
    "Connected",
    "DatagramKind",
    "Deliver",
    "DeviceRestarted",
    "Dropped",
    "PinStore",
    "Rehandshake",
    "ServerEndpoint",
    "ServerLimits",
    "ServerOutput",
    "SessionClosed",
    "SessionEstablished",
    "SessionKeys",
    "Transmit",
    "Woken",
    "classify",
    "events",
    "frame",
    "keys",
    "reason_label",
]
