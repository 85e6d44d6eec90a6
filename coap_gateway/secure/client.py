"""The client side of the secure layer (sans-I/O), talking to one server.

It chooses IK (server key pinned) or XX (first contact), puts the first
request into the handshake, resends an early request the server did not
answer, re-handshakes on a RESET that echoes a frame it sent, and asks its
shell for a ping on a WAKE (a federation responder with a request and no
session, a server gateway that restarted).
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from collections.abc import Callable

from ..errors import (
    FrameError,
    HandshakeError,
    ProfileMismatchError,
    SecurityError,
    ServerKeyChanged,
    ServerKeyMismatchError,
)
from . import frame as sf
from .events import ClientOutput, Connected, Deliver, Dropped, Rehandshake, Transmit, Woken
from .frame import DatagramKind, FrameShape
from .noise import ClientSession, Rng, SecureChannel

RECENT_HEADERS = 16  # frames a RESET may echo
#: at most one ping per this many seconds for WAKEs: WAKE is not
#: authenticated, and a forged one must not buy more than a small share of a
#: 100-bit/s link (a ping and its RST in the session: 42 B)
WAKE_INTERVAL = 30.0


#: the handshake datagrams without a message (docs/protocol.md §10, measured
#: sizes; tests/secure assert them)
IK_DATAGRAMS = (104, 50)
IK_SETUP_BYTES = sum(IK_DATAGRAMS)
XX_SETUP_BYTES = 36 + 97 + 66


class ClientEndpoint:
    """The client side of the secure layer, talking to one server.

    ``send(now, message)`` starts a handshake when there is no session (IK with
    a known server key and the message as early data if it is an idempotent
    request; XX otherwise, the message in XX3), queues messages while a
    handshake is under way and seals them afterwards.  ``receive(now,
    datagram)`` returns :class:`Deliver` for the CoAP layer.  A handshake that
    cannot succeed raises ProfileMismatchError or ServerKeyChanged.
    """

    def __init__(self, static_private: bytes, profile_id: int, profile_digest: bytes, *,
                 server_public: bytes | None = None, rng: Rng = os.urandom,
                 rekey_interval: int = sf.DEFAULT_REKEY_INTERVAL,
                 duplicate_lifetime: float = sf.DEFAULT_DUPLICATE_LIFETIME, max_queued: int = 8,
                 restart: bool = False, unbound: bool = False) -> None:
        self._static = static_private
        self._profile = (profile_id, profile_digest)
        self.server_public = server_public
        self._rng = rng
        self._rekey_interval = rekey_interval
        #: a float, or a function of the link (set by the transport: ``follow_duplicate_lifetime``)
        self.duplicate_lifetime: float | Callable[[], float] = duplicate_lifetime
        self._max_queued = max_queued
        self.handshake: ClientSession | None = None
        self.channel: SecureChannel | None = None
        self._queue: deque[bytes] = deque()
        #: requests sealed recently and not yet answered: frame header -> message
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()
        self._unconfirmed_xx3: tuple[bytes, bytes] | None = None  # (first message, XX3)
        #: handshake flags said until the server answers in a session that carried
        #: them (``frame.FLAG_RESTART``, ``frame.FLAG_UNBOUND``)
        self.announce_restart, self.announce_unbound = restart, unbound
        self._announced_in: bytes | None = None
        #: emit ``SessionKeys`` for each completed handshake (an opt-in key log); off by default
        self.export_keys = False
        self.wake_interval = WAKE_INTERVAL
        self._woken_at: float | None = None

    def trust(self, server_public: bytes) -> None:
        """Use ``server_public`` from now on (the user accepted the server's
        new key): the next message starts a handshake with it."""
        self.server_public = server_public
        self.handshake = self.channel = None
        self._unconfirmed_xx3 = None

    def setup_bytes(self) -> int:
        """Handshake bytes still to cross before a message can be sealed: 0
        with a session, else a whole IK (a pinned key) or XX — the datagrams
        without a message (IK1 104 + IK2 50; XX1 36 + XX2 97 + XX3 66)."""
        if self.channel is not None:
            return 0
        return IK_SETUP_BYTES if self.server_public is not None else XX_SETUP_BYTES

    @property
    def session_id(self) -> bytes | None:
        return self.channel.session_id if self.channel else None

    def connect(self, now: float) -> list[ClientOutput]:
        """Start a handshake without a message (no-op when one exists)."""
        if self.channel or self.handshake:
            return []
        return self._start(now, None, [])

    def send(self, now: float, message: bytes) -> list[ClientOutput]:
        message = bytes(message)
        sf.validate_message(message)
        out: list[ClientOutput] = []
        if self.channel is not None:
            if self._unconfirmed_xx3 is not None and message == self._unconfirmed_xx3[0]:
                out.append(Transmit(None, self._unconfirmed_xx3[1]))  # XX3 may be lost: resend it
            else:
                self._seal_and_send(message, out)
        elif self.handshake is not None:
            if message == self.handshake.message or message in self._queue:
                # CoAP retransmits a request the handshake has not let through:
                # the handshake frame (or its answer) may be what was lost —
                # IK1 carries no request when the first is not early-data
                # material — so repeat it, byte-identical (the server answers
                # a repeated IK1 with the same IK2)
                out.append(Transmit(None, self.handshake.datagram))
            else:
                self._enqueue(message, out)
        else:
            self._start(now, message, out)
        return out

    def receive(self, now: float, datagram: bytes) -> list[ClientOutput]:
        datagram = bytes(datagram)
        out: list[ClientOutput] = []
        kind = sf.classify(datagram)
        try:
            if kind is DatagramKind.DATA:
                self._receive_data(now, datagram, out)
            elif kind in (DatagramKind.IK2, DatagramKind.XX2, DatagramKind.REFUSE):
                self._receive_handshake(now, datagram, out)
            elif kind is DatagramKind.RESET:
                self._receive_reset(now, sf.parse_reset(datagram), out)
            elif kind is DatagramKind.WAKE:
                self._receive_wake(now, datagram, out)
            else:
                out.append(Dropped(f"{kind.name} is not for a client"))
        except (ProfileMismatchError, ServerKeyChanged):
            self.handshake = None
            raise
        except SecurityError as exc:
            out.append(Dropped(f"{type(exc).__name__}: {exc}"))
        return out

    # -- internals --

    def _start(self, now: float, message: bytes | None, out: list[ClientOutput],
               force_xx: bool = False) -> list[ClientOutput]:
        self.channel = None
        self._unconfirmed_xx3 = None
        use_ik = self.server_public is not None and not force_xx
        announcing = self.announce_restart or self.announce_unbound
        carried = message
        if use_ik and message is not None:
            header = sf.parse_coap_header(message)
            if not header.is_idempotent_request or len(message) > sf.MAX_EARLY_MESSAGE:
                # the server would refuse it: send it after IK2 instead.  (Announcing
                # RESTART/UNBOUND is no reason: a server that accepts the early data acts
                # on the announcement first, and one that does not takes it after IK2.)
                carried = None
                self._queue.appendleft(message)
        self.handshake = ClientSession(
            self._static, *self._profile, now=now, server_public=self.server_public if use_ik else None,
            expected_server_public=self.server_public, message=carried, rng=self._rng,
            rekey_interval=self._rekey_interval, duplicate_lifetime=self.duplicate_lifetime,
            restart=self.announce_restart, unbound=self.announce_unbound)
        out.append(Transmit(None, self.handshake.datagram))
        return out

    def _enqueue(self, message: bytes, out: list[ClientOutput]) -> None:
        if message in self._queue:
            return
        self._queue.append(message)
        while len(self._queue) > self._max_queued:
            self._queue.popleft()
            out.append(Dropped("queue full while handshaking"))

    def _seal_and_send(self, message: bytes, out: list[ClientOutput]) -> None:
        assert self.channel is not None
        frame = self.channel.seal(message)
        header = sf.parse_coap_header(message)
        if sf.message_shape(header) is FrameShape.SEQUENCED and (header.is_request or _is_ping(header)):
            self._recent[frame[:4]] = message
            self._recent.move_to_end(frame[:4])
            while len(self._recent) > RECENT_HEADERS:
                self._recent.popitem(last=False)
        out.append(Transmit(None, frame))

    def _receive_data(self, now: float, datagram: bytes, out: list[ClientOutput]) -> None:
        if self.channel is None:
            out.append(Dropped("data frame without a session"))
            return
        opened = self.channel.open(datagram, now)
        if opened.authenticated:
            self._unconfirmed_xx3 = None  # the server has the session
            if self._announced_in == self.channel.session_id:
                # the server validated the session that said RESTART/UNBOUND: said once is enough
                self.announce_restart = self.announce_unbound = False
            self._answered(sf.parse_coap_header(opened.message))
        out.append(Deliver(self.channel.session_id, None, opened.message, opened.counter,
                           duplicate=opened.is_retransmission))

    def _receive_handshake(self, now: float, datagram: bytes, out: list[ClientOutput]) -> None:
        handshake = self.handshake
        if handshake is None:
            out.append(Dropped("handshake message without a handshake"))
            return
        try:
            done = handshake.receive(datagram)
        except ServerKeyMismatchError as exc:
            if handshake.pattern != "IK":
                raise
            # the pinned key did not work: learn the server's key with XX, which checks it against the pin
            out.append(Rehandshake(f"IK refused: {exc}"))
            self._start(now, handshake.message, out, force_xx=True)
            return
        self.handshake = None
        self.channel = done.channel
        self.server_public = done.server_public
        if handshake.restart or handshake.unbound:
            self._announced_in = done.channel.session_id
        out.append(Connected(done.channel.session_id, done.server_public, handshake.pattern))
        if self.export_keys:
            out.append(handshake.session_keys())
        if done.transmit is not None:
            out.append(Transmit(None, done.transmit))
            if handshake.message is not None:
                self._unconfirmed_xx3 = (handshake.message, done.transmit)
        if done.answer is not None:
            if handshake.restart or handshake.unbound:
                # the early message was answered: the server took it, and the flags with it
                self.announce_restart = self.announce_unbound = False
            out.append(Deliver(done.channel.session_id, None, done.answer, 0))
        if done.resend_early and handshake.message is not None:
            self._seal_and_send(handshake.message, out)
        while self._queue:
            self._seal_and_send(self._queue.popleft(), out)

    def _answered(self, header: sf.CoapHeader) -> None:
        """An authenticated response: the request it answers is no longer
        pending, so no RESET can make us send it again; a ping's is its RST."""
        if header.type == sf.RST and header.code == sf.EMPTY_CODE:
            for frame_header, message in list(self._recent.items()):
                ping = sf.parse_coap_header(message)
                if _is_ping(ping) and ping.message_id == header.message_id:
                    del self._recent[frame_header]
            return
        if not header.is_response:
            return
        for frame_header, message in list(self._recent.items()):
            request = sf.parse_coap_header(message)
            if (request.message_id == header.message_id if header.type == sf.ACK
                    else request.token == header.token):
                del self._recent[frame_header]

    def _receive_wake(self, now: float, datagram: bytes, out: list[ClientOutput]) -> None:
        # WAKE is not authenticated either: all it buys is a ping in the
        # session (answered in it, or met by RESET when the server lost it),
        # at most one per wake_interval
        if datagram != sf.WAKE_DATAGRAM:
            raise FrameError("malformed WAKE")
        if self.server_public is None:
            raise HandshakeError("WAKE but no pinned server key to open a session with")
        if self._woken_at is not None and now - self._woken_at < self.wake_interval:
            out.append(Dropped("WAKE within its interval"))
            return
        self._woken_at = now
        out.append(Woken())

    def _receive_reset(self, now: float, echoed: bytes, out: list[ClientOutput]) -> None:
        # RESET is not authenticated (anyone who saw a frame's clear header can
        # forge it): act only when it echoes a request sent recently and still
        # unanswered, so a forged RESET can never make us send an answered
        # request again; the server deduplicates an unanswered one across the
        # device's sessions
        message = self._recent.get(echoed)
        if self.channel is None or message is None:
            raise FrameError("RESET does not echo a recent frame")
        if self.server_public is None:
            raise HandshakeError("RESET but no server key to re-handshake with")
        self._recent.clear()
        out.append(Rehandshake("server has no session (RESET)"))
        self._start(now, message, out)


def _is_ping(header: sf.CoapHeader) -> bool:
    """A CoAP ping (RFC 7252 §4.3): an empty CON.  A RESET may echo it too:
    it runs nothing when sent again, and it is how a ping finds a lost session."""
    return header.type == sf.CON and header.code == sf.EMPTY_CODE
