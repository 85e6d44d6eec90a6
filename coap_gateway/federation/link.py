"""One Noise session per pair of gateways, on one link (asyncio shell).

A federation gateway is Noise initiator toward some peers and responder to
the others (``policy.initiates``: the lower static key opens the session).
``PeerLinkCodec`` puts both on one link and one CoAP endpoint: a
``SecureClientCodec`` per peer this gateway initiates to, and one
``SecureServerCodec`` for the peers that initiate to it.  Either end sends
requests in the session, so both directions of a pair share it.

A responder that has a request and no session cannot open one: it sends
WAKE (one byte, ``frame.WAKE_DATAGRAM``) to the initiator's address, again
every quarter of its wait, and the initiator pings in its session — which
opens one when there is none, and meets RESET when the responder lost it
(it restarted), so the initiator opens a new one.

CoAP remote keys: ``PeerKey(public)`` for a peer we initiate to; the
server codec's ``DeviceId`` for a peer that initiated.  ``key_for(public)``
gives the current one.  Frames from a Noise key outside the peers table
are counted and dropped: nothing of theirs reaches CoAP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from ..secure import IK_DATAGRAMS
from ..secure import frame as sf
from ..transport import (
    SERVER_KEY,
    CodecHost,
    DeviceEvent,
    DeviceId,
    LinkBudget,
    SecureClientCodec,
    SecureServerCodec,
)

#: WAKEs a responder sends while it waits for a session (spread over the wait)
WAKES_PER_WAIT = 4
#: the datagrams between a responder's WAKE and a session, in bytes: WAKE,
#: the initiator's ping, RESET (when the responder had lost the session),
#: IK1 and IK2 without a message
SESSION_SETUP_DATAGRAMS = (len(sf.WAKE_DATAGRAM), 4 + sf.SEQ_SIZE + sf.TAG_SIZE, 5, *IK_DATAGRAMS)


def session_setup_time(budget: LinkBudget) -> float:
    """How long the link takes to carry a WAKE to a session, lost nothing:
    at 100 bit/s with UDP/IP headers and 1 s of latency, 36 s."""
    return sum(budget.serialisation(size) + budget.latency for size in SESSION_SETUP_DATAGRAMS)


@dataclass(frozen=True)
class PeerKey:
    """The CoAP remote key of a peer gateway this gateway initiates to."""

    public: bytes

    def __str__(self) -> str:
        return f"peer/{self.public.hex()[:16]}"


class _ClientHost:
    """What one client codec may ask of the link, with its remote key
    (SERVER_KEY) renamed to the peer's."""

    def __init__(self, host: CodecHost, key: PeerKey):
        self.host, self.key = host, key

    def send_datagram(self, peer: Hashable, datagram: bytes) -> None:
        self.host.send_datagram(peer, datagram)

    def fail_remote(self, key: Hashable, exc: Exception) -> None:
        self.host.fail_remote(self.key if key == SERVER_KEY else key, exc)

    def forget_remote(self, key: Hashable) -> None:
        self.host.forget_remote(self.key if key == SERVER_KEY else key)

    def remembers(self, key: Hashable, message_id: int) -> bool:
        return self.host.remembers(self.key if key == SERVER_KEY else key, message_id)


class PeerLinkCodec:
    """A FrameCodec for a gateway's peers: initiator to some, responder to the rest."""

    frame_overhead = SecureServerCodec.frame_overhead

    def __init__(self, server: SecureServerCodec, clients: dict[bytes, SecureClientCodec],
                 known: Callable[[bytes], bool]):
        self.server = server
        self.clients = clients
        self.known = known
        self._by_address = {codec.server_addr: public for public, codec in clients.items()}
        self.refused: Counter[str] = Counter()
        self.wakes_sent = 0
        self._host: CodecHost | None = None
        #: when each peer was last sent WAKE (requests waiting together send one)
        self._woken: dict[bytes, float] = {}
        #: peers (public keys) that have a session with us as responder
        self._sessions: dict[bytes, asyncio.Event] = {}
        chained = server.on_device

        def on_device(event: DeviceEvent) -> None:
            if chained is not None:
                chained(event)
            self._on_device(event)

        server.on_device = on_device

    def bind(self, host: CodecHost) -> None:
        self._host = host
        self.server.bind(host)
        for public, codec in self.clients.items():
            codec.bind(_ClientHost(host, PeerKey(public)))

    def failure(self) -> Exception | None:
        return None  # failures are per peer (fail_remote)

    def setup_bytes(self, key: Hashable) -> int:
        # a handshake to make only where we initiate; as responder the peer makes it
        codec = self.clients.get(key.public) if isinstance(key, PeerKey) else None
        return codec.setup_bytes(SERVER_KEY) if codec is not None else 0

    # -- keys

    def key_for(self, public: bytes) -> Hashable | None:
        """The CoAP remote key for peer ``public`` now; None while a peer that
        initiates has no session with us."""
        if public in self.clients:
            return PeerKey(public)
        if self.server.device_address(self.server.device_key(public)) is None:
            return None
        return self.server.device_key(public)

    def on_wake(self, ping: Callable[[PeerKey], None]) -> None:
        """``ping(PeerKey(public))`` when a peer we initiate to sends WAKE."""
        for public, codec in self.clients.items():
            codec.on_wake = lambda key=PeerKey(public): ping(key)

    async def wait_for_session(self, public: bytes, timeout: float, address: Hashable | None = None
                               ) -> Hashable | None:
        """``key_for(public)``, waiting up to ``timeout`` for the peer to open
        its session (a responder cannot open it); with the peer's ``address``,
        WAKE asks it to, ``WAKES_PER_WAIT`` times over the wait (one may be lost)."""
        key = self.key_for(public)
        if key is not None:
            return key
        event = self._sessions.setdefault(public, asyncio.Event())
        loop = asyncio.get_running_loop()
        interval = timeout / WAKES_PER_WAIT
        try:
            async with asyncio.timeout(timeout):
                while not event.is_set():
                    # several requests waiting for one peer: one WAKE per interval between them
                    if address is not None and self._host is not None and \
                            loop.time() - self._woken.get(public, -interval) >= interval:
                        self._woken[public] = loop.time()
                        self.wakes_sent += 1
                        self._host.send_datagram(address, sf.WAKE_DATAGRAM)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await event.wait()
        except TimeoutError:
            return None
        return self.key_for(public)

    @staticmethod
    def public_of(key: Hashable) -> bytes | None:
        """The peer's static key behind a CoAP remote key."""
        if isinstance(key, (PeerKey, DeviceId)):
            return key.public
        return None

    def _on_device(self, event: DeviceEvent) -> None:
        public = event.key.public
        if not self.known(public):
            self.refused["unknown key: session"] += 1
            return
        waiter = self._sessions.setdefault(public, asyncio.Event())
        if event.kind == "gone":
            waiter.clear()
        else:
            waiter.set()

    # -- FrameCodec

    def outgoing(self, key: Hashable, message: bytes) -> list[tuple[Hashable, bytes]]:
        if isinstance(key, PeerKey):
            codec = self.clients.get(key.public)
            return codec.outgoing(SERVER_KEY, message) if codec is not None else []
        if isinstance(key, DeviceId) and self.known(key.public):
            return self.server.outgoing(key, message)
        self.refused["unknown key: outgoing"] += 1
        return []

    def incoming(self, peer: Hashable, datagram: bytes) -> list[tuple[Hashable, bytes]]:
        public = self._by_address.get(peer)
        if public is not None:
            return [(PeerKey(public) if key == SERVER_KEY else key, message)
                    for key, message in self.clients[public].incoming(peer, datagram)]
        delivered = []
        for key, message in self.server.incoming(peer, datagram):
            if isinstance(key, DeviceId) and self.known(key.public):
                delivered.append((key, message))
            else:
                self.refused["unknown key: frame"] += 1
        return delivered
