"""Output events of the secure layer's sans-I/O endpoints.

Both endpoints return lists of these for the asyncio shell to act on: send a
datagram, hand a CoAP message to aiocoap, note a session, count a drop.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass

_NUMBER = re.compile(r"\b\d+\b")


def reason_label(reason: str) -> str:
    """A drop reason as a label from a fixed set: no exception text, no
    numbers a peer chose (``SecurityError: …`` → ``SecurityError``)."""
    return _NUMBER.sub("N", reason.partition(": ")[0])


@dataclass(frozen=True)
class Transmit:
    """Send ``data`` to ``addr`` (None on the client: the server)."""

    addr: Hashable | None
    data: bytes


@dataclass(frozen=True)
class Deliver:
    """An authenticated CoAP message for the CoAP layer.

    ``counter`` is None for an unsealed empty ACK (not authenticated, per the
    spec).  ``duplicate``: a byte-identical retransmission, to be answered from
    the CoAP deduplication cache, never executed again.  ``early``: it came in
    IK1 (0-RTT) and passed the early-data rules.
    """

    session_id: bytes
    addr: Hashable | None
    message: bytes
    counter: int | None
    early: bool = False
    duplicate: bool = False


@dataclass(frozen=True)
class SessionEstablished:
    session_id: bytes
    addr: Hashable
    client_static_public: bytes
    pattern: str


@dataclass(frozen=True)
class SessionClosed:
    """The endpoint forgot a session (evicted): drop its CoAP state."""

    session_id: bytes
    reason: str


@dataclass(frozen=True)
class DeviceRestarted:
    """Server: a device's new client process proved itself (its session said
    RESTART and is now validated): the device's other sessions are closed
    already; the shell forgets its CoAP exchanges and observations, and, when
    ``unbound``, its token and Route handles.  Comes before the frame that
    validated the session is delivered."""

    session_id: bytes
    client_static_public: bytes
    unbound: bool


@dataclass(frozen=True)
class Dropped:
    """A datagram (or outgoing message) was dropped: for counters and logs."""

    reason: str
    addr: Hashable | None = None


@dataclass(frozen=True)
class Connected:
    """Client: a handshake completed."""

    session_id: bytes
    server_static_public: bytes
    pattern: str


@dataclass(frozen=True)
class Rehandshake:
    """Client: the session was abandoned and a new handshake started."""

    reason: str


ServerOutput = Transmit | Deliver | SessionEstablished | SessionClosed | DeviceRestarted | Dropped
ClientOutput = Transmit | Deliver | Connected | Rehandshake | Dropped
