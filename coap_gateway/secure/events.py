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


#: the first word of a key log line (docs/protocol.md, "Key log format")
KEYLOG_LABEL = "COAP_GATEWAY_SESSION"


@dataclass(frozen=True)
class SessionKeys:
    """A session's secrets, emitted only when the endpoint's ``export_keys``
    is set (an opt-in key log, like TLS's SSLKEYLOGFILE): whoever holds them
    reads the session's frames both ways.  Comes when the handshake is
    complete (server: IK2 written or XX3 read; client: IK2 read or XX3
    written).  ``client_ephemeral`` names the handshake in a capture (IK1 and
    XX1 carry it in the clear); ``payload_keys`` are the handshake keys the
    payloads of IK1, IK2 and XX3 were encrypted with (nonce 0);
    ``client_to_server``/``server_to_client`` are Split()'s keys, epoch 0."""

    session_id: bytes
    client_ephemeral: bytes
    pattern: str
    client_to_server: bytes
    server_to_client: bytes
    payload_keys: tuple[tuple[str, bytes], ...]
    rekey_interval: int

    def keylog_line(self) -> str:
        """One line of the key log, without the newline."""
        fields = [KEYLOG_LABEL, f"eph={self.client_ephemeral.hex()}", f"sid={self.session_id.hex()}",
                  f"pattern={self.pattern}", f"c2s={self.client_to_server.hex()}",
                  f"s2c={self.server_to_client.hex()}"]
        fields += [f"{kind.lower()}={key.hex()}" for kind, key in self.payload_keys]
        fields.append(f"rekey={self.rekey_interval}")
        return " ".join(fields)

    def __repr__(self) -> str:  # never the keys themselves in logs or test output
        return f"SessionKeys(session_id={self.session_id.hex()}, pattern={self.pattern})"


@dataclass(frozen=True)
class Rehandshake:
    """Client: the session was abandoned and a new handshake started."""

    reason: str


@dataclass(frozen=True)
class Woken:
    """Client: the server asked for the session (WAKE): the shell pings it
    (a CoAP ping, which opens a session when there is none and meets RESET
    when the server lost it)."""


ServerOutput = Transmit | Deliver | SessionEstablished | SessionClosed | DeviceRestarted | Dropped | SessionKeys
ClientOutput = Transmit | Deliver | Connected | Rehandshake | Dropped | SessionKeys | Woken
