"""The secure layer as a FrameCodec: sans-I/O endpoints driven by asyncio.

``SecureServerCodec`` and ``SecureClientCodec`` plug the Noise endpoints
(``secure.server``, ``secure.client``) into ``coap``'s
LinkMessageInterface.  aiocoap sees one remote per *session* on the server
(so deduplication survives NAT rebinding and the early-data resend) and one
remote, ``"server"``, on the client (so a re-handshake keeps requests in
flight).  Handshake replies go straight to the link; the endpoints' timers
are armed on the loop; drops are counted by reason.

``clock`` must be wall time (Unix seconds): early data carries the client's
clock in minutes and the server compares it with its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable

from ..codec import Profile
from ..errors import SecurityError
from ..secure import (
    ClientEndpoint,
    Connected,
    Deliver,
    Dropped,
    PinStore,
    Rehandshake,
    ServerEndpoint,
    SessionClosed,
    SessionEstablished,
    Transmit,
    reason_label,
)
from ..secure import frame as sf
from .coap import CodecHost

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SERVER_KEY = "server"
#: distinct drop reasons counted; reasons carry peer-chosen text, so both the
#: text (normalised) and the number of keys are bounded
MAX_DROP_REASONS = 64


def count_drop(dropped: Counter[str], reason: str) -> None:
    label = reason_label(reason)
    if label not in dropped and len(dropped) >= MAX_DROP_REASONS - 1:  # one slot kept for "other"
        label = "other"
    dropped[label] += 1


def profile_wire_digest(profile: Profile) -> bytes:
    """The 2-byte digest of a profile's tables that the handshake compares."""
    return sf.profile_digest(profile.cbor_table.digest, profile.routes.digest,
                             profile.flate.digest if profile.flate else None,
                             profile.schemas.digest if profile.schemas else None)


class SecureServerCodec:
    def __init__(self, endpoint: ServerEndpoint, *, clock: Clock = time.time,
                 on_session: Callable[[SessionEstablished | SessionClosed], None] | None = None):
        self.endpoint = endpoint
        self.clock = clock
        self.on_session = on_session
        self.dropped: Counter[str] = Counter()
        self.sessions_established = 0
        self._host: CodecHost | None = None
        self._timer: asyncio.TimerHandle | None = None

    def bind(self, host: CodecHost) -> None:
        self._host = host

    def outgoing(self, key: Hashable, message: bytes) -> list[tuple[Hashable, bytes]]:
        outs = self.endpoint.send(self.clock(), key, message)  # type: ignore[arg-type]
        return self._handle(outs, deliver=None)

    def incoming(self, peer: Hashable, datagram: bytes) -> list[tuple[Hashable, bytes]]:
        delivered: list[tuple[Hashable, bytes]] = []
        outs = self.endpoint.receive(self.clock(), peer, datagram)
        for addr, data in self._handle(outs, deliver=delivered):
            self._transmit(addr, data)
        return delivered

    def _handle(self, outs, deliver: list | None) -> list[tuple[Hashable, bytes]]:
        transmits = []
        for out in outs:
            if isinstance(out, Transmit):
                transmits.append((out.addr, out.data))
            elif isinstance(out, Deliver):
                if deliver is not None:
                    deliver.append((out.session_id, out.message))
            elif isinstance(out, Dropped):
                count_drop(self.dropped, out.reason)
            elif isinstance(out, (SessionEstablished, SessionClosed)):
                if isinstance(out, SessionEstablished):
                    self.sessions_established += 1
                elif self._host is not None:
                    self._host.forget_remote(out.session_id)
                if self.on_session is not None:
                    self.on_session(out)
        self._arm_timer()
        return transmits

    def _transmit(self, addr: Hashable, data: bytes) -> None:
        if self._host is not None:
            self._host.send_datagram(addr, data)
    def _arm_timer(self) -> None:
        deadline = self.endpoint.next_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - self.clock())
            self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for addr, data in self._handle(self.endpoint.handle_timer(self.clock()), deliver=None):
            self._transmit(addr, data)


class SecureClientCodec:
    """The client's codec: one server, at ``server_addr`` on the link."""

    def __init__(self, endpoint: ClientEndpoint, server_addr: Hashable, *, clock: Clock = time.time,
                 on_connected: Callable[[Connected], None] | None = None):
        self.endpoint = endpoint
        self.server_addr = server_addr
        self.clock = clock
        self.on_connected = on_connected
        self.dropped: Counter[str] = Counter()
        self.handshakes = 0
        self.rehandshakes = 0
        #: a handshake that cannot succeed (wrong profile, changed server key)
        self.error: SecurityError | None = None
        self._host: CodecHost | None = None

    def bind(self, host: CodecHost) -> None:
        self._host = host

    def outgoing(self, key: Hashable, message: bytes) -> list[tuple[Hashable, bytes]]:
        if self.error is not None:
            raise self.error
        return self._handle(self.endpoint.send(self.clock(), message), deliver=None)

    def incoming(self, peer: Hashable, datagram: bytes) -> list[tuple[Hashable, bytes]]:
        if peer != self.server_addr:
            count_drop(self.dropped, "not from the server")
            return []
        delivered: list[tuple[Hashable, bytes]] = []
        try:
            outs = self.endpoint.receive(self.clock(), datagram)
        except SecurityError as exc:  # ProfileMismatchError, ServerKeyChanged: fatal, reported
            self.error = exc
            log.error("secure session with %r failed: %s", self.server_addr, exc)
            if self._host is not None:
                asyncio.get_running_loop().call_soon(self._host.fail_remote, SERVER_KEY, exc)
            return []
        for addr, data in self._handle(outs, deliver=delivered):
            if self._host is not None:
                self._host.send_datagram(addr, data)
        return delivered

    def _handle(self, outs, deliver: list | None) -> list[tuple[Hashable, bytes]]:
        transmits = []
        for out in outs:
            if isinstance(out, Transmit):
                transmits.append((self.server_addr, out.data))
            elif isinstance(out, Deliver):
                if deliver is not None:
                    deliver.append((SERVER_KEY, out.message))
            elif isinstance(out, Dropped):
                count_drop(self.dropped, out.reason)
            elif isinstance(out, Connected):
                self.handshakes += 1
                if self.on_connected is not None:
                    self.on_connected(out)
            elif isinstance(out, Rehandshake):
                self.rehandshakes += 1
        return transmits


def pinned_client_codec(server_name: str, server_addr: Hashable, static_private: bytes, profile: Profile,
                        pins: PinStore, *, clock: Clock = time.time) -> SecureClientCodec:
    """A client codec that trusts the server key on first use.

    No pin for ``server_name``: XX, and the key the server proves is pinned.
    A pin: IK with that key; a server that now holds another key fails the
    handshake with ServerKeyChanged naming both fingerprints — until the
    operator accepts the new key (``coap-gateway pins accept``).
    """
    pinned = pins.get(server_name)
    endpoint = ClientEndpoint(static_private, profile.id, profile_wire_digest(profile), server_public=pinned)

    def on_connected(event: Connected) -> None:
        if pins.check(server_name, event.server_static_public) == "new":
            pins.pin(server_name, event.server_static_public)

    return SecureClientCodec(endpoint, server_addr, clock=clock, on_connected=on_connected)
