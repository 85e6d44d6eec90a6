"""Sans-I/O endpoints of the secure layer: many clients on a server, one server for a client.

``ServerEndpoint.receive(now, addr, datagram)`` and ``send(now, session_id,
message)`` return lists of output events (:class:`Transmit`, :class:`Deliver`,
…) for the asyncio shell to act on; ``handle_timer(now)`` runs what is due
at ``next_timer()``.  Every structure that unauthenticated peers can grow is
bounded (``sizes()``), and nothing but :class:`Dropped` comes out of bad input.

The client's counterpart is ``client.ClientEndpoint``; the output
events both share are in ``events``.
"""

from __future__ import annotations

import heapq
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import HandshakeError, ReplayError, SecurityError
from . import frame as sf
from .events import (
    Deliver,
    DeviceRestarted,
    Dropped,
    ServerOutput,
    SessionClosed,
    SessionEstablished,
    Transmit,
)
from .frame import DatagramKind, FrameShape
from .noise import Opened, Rng, SecureChannel, ServerSession

# --- limits ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerLimits:
    max_sessions: int = 1024
    #: XX after message 2, plus IK sessions whose client has not yet sent a data frame
    max_half_open: int = 256
    #: sessions tried, most recently active first, when the address finds none
    max_trial_sessions: int = 64
    #: per-address state kept for addresses without a validated session
    max_tracked_addresses: int = 4096
    handshake_rate: float = 4.0  # per second and address
    handshake_burst: float = 8.0
    reset_interval: float = 1.0  # at most one RESET per address per interval
    amplification_factor: int = 3
    early_window: float = 600.0  # seconds of clock skew accepted for early data
    max_strikes: int = 65536
    #: how long IK2 waits for the answer to the early message before it goes without
    early_answer_wait: float = 1.0
    #: frames held for an address not yet validated, when over the amplification budget
    max_held_frames: int = 4
    rekey_interval: int = sf.DEFAULT_REKEY_INTERVAL
    #: a float, or a function of the link (the transport sets it: ``follow_duplicate_lifetime``)
    duplicate_lifetime: float | Callable[[], float] = sf.DEFAULT_DUPLICATE_LIFETIME

    def __post_init__(self) -> None:
        if self.rekey_interval < sf.MIN_REKEY_INTERVAL:
            raise ValueError(f"rekey_interval must be >= {sf.MIN_REKEY_INTERVAL}")
        if self.max_half_open < 1 or self.max_sessions < 1 or self.max_tracked_addresses < 1:
            raise ValueError("table limits must be positive")


# --- strike register ----------------------------------------------------------------


class StrikeRegister:
    """Ephemeral keys of accepted early data, until their IK1 could no longer be accepted.

    Bounded: when full (after expiry) it refuses new entries rather than
    evicting one, so a replay can never be accepted because of a flood.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __contains__(self, key: bytes) -> bool:
        return key in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]

    def add(self, key: bytes, expires: float, now: float) -> bool:
        """Remember ``key`` until ``expires``; False when full or already present."""
        self.expire(now)
        if key in self._expiry or len(self._expiry) >= self.capacity:
            return False
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))
        return True

    def entries(self) -> list[tuple[bytes, float]]:
        """What is remembered: (key, expires), to persist across a restart."""
        return list(self._expiry.items())


# --- server ------------------------------------------------------------------------


@dataclass
class _AddressState:
    """What the server knows about an address without a validated session."""

    received: int = 0
    sent: int = 0
    tokens: float = 0.0
    refilled: float | None = None
    last_reset: float | None = None


@dataclass
class _HalfOpen:
    """An XX handshake after message 2."""

    handshake: ServerSession
    xx1_digest: bytes
    xx2: bytes
    created: float


@dataclass
class _Session:
    id: bytes
    addr: Hashable
    client_public: bytes
    pattern: str
    created: float
    channel: SecureChannel | None = None
    #: IK, until IK2 is written
    handshake: ServerSession | None = None
    #: an authenticated data frame (or XX3) came from ``addr``
    validated: bool = False
    ik1_digest: bytes | None = None
    ik2: bytes | None = None
    early: sf.CoapHeader | None = None  # the delivered early message, awaiting its answer
    early_message: bytes | None = None
    ik2_deadline: float | None = None
    xx3_digest: bytes | None = None
    first_message: bytes | None = None  # the XX3 message, re-delivered as duplicate
    held: deque[bytes] = field(default_factory=deque)
    #: the handshake said RESTART / UNBOUND: applied when the session is validated
    restart: bool = False
    unbound: bool = False


class ServerEndpoint:
    """The server side of the secure layer for any number of clients."""

    def __init__(self, static_private_key: bytes, profiles: Mapping[int, bytes], *,
                 limits: ServerLimits | None = None, rng: Rng = os.urandom,
                 early_data_from: float | None = None,
                 strikes: Iterable[tuple[bytes, float]] = (), now: float = 0.0,
                 on_strike: Callable[[bytes, float], None] | None = None) -> None:
        """``early_data_from``: refuse early data before that time — a server
        that lost its strike register (a restart without persisting it) must
        not run an IK1 it may already have run, so it waits out the early
        window.  ``strikes``: a persisted register to restore (as of ``now``);
        ``on_strike(key, expires)``: called before early data is delivered, to
        persist the strike first."""
        self._static = static_private_key
        self._profiles = dict(profiles)
        self.limits = limits or ServerLimits()
        self._rng = rng
        # least recently active first
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()
        self._by_addr: dict[Hashable, bytes] = {}
        self._by_ik1: dict[bytes, bytes] = {}
        self._half_open: OrderedDict[Hashable, _HalfOpen] = OrderedDict()
        self._unconfirmed: OrderedDict[bytes, float] = OrderedDict()  # IK sessions not yet validated
        self._addresses: OrderedDict[Hashable, _AddressState] = OrderedDict()
        self._ik2_pending: dict[bytes, float] = {}
        self.strikes = StrikeRegister(self.limits.max_strikes)
        for key, expires in strikes:
            if expires > now:
                self.strikes.add(key, expires, now)
        self.early_data_from = early_data_from
        self._on_strike = on_strike
        #: emit ``SessionKeys`` for each completed handshake (an opt-in key log); off by default
        self.export_keys = False

    # -- public API --

    def receive(self, now: float, addr: Hashable, datagram: bytes) -> list[ServerOutput]:
        out: list[ServerOutput] = []
        datagram = bytes(datagram)
        kind = sf.classify(datagram)
        # handshakes always count: the new session may replace a validated one at this address
        self._account_received(addr, len(datagram), kind in sf.HANDSHAKE_KINDS)
        try:
            if kind is DatagramKind.DATA:
                self._receive_data(now, addr, datagram, out)
            elif kind in (DatagramKind.IK1, DatagramKind.XX1, DatagramKind.XX3):
                if not self._take_handshake_token(now, addr):
                    out.append(Dropped("handshake rate limit", addr))
                elif kind is DatagramKind.IK1:
                    self._receive_ik1(now, addr, datagram, out)
                elif kind is DatagramKind.XX1:
                    self._receive_xx1(now, addr, datagram, out)
                else:
                    self._receive_xx3(now, addr, datagram, out)
            else:
                out.append(Dropped(f"{kind.name} is not for a server", addr))
        except SecurityError as exc:
            out.append(Dropped(f"{type(exc).__name__}: {exc}", addr))
        self.strikes.expire(now)
        return out

    def send(self, now: float, session_id: bytes, message: bytes) -> list[ServerOutput]:
        """Seal ``message`` for a session.  Raises FrameError/NonceError on a
        message the layer cannot carry (a shell bug), never on peer input."""
        session = self._sessions.get(session_id)
        if session is None:
            return [Dropped("no such session")]
        out: list[ServerOutput] = []
        header = sf.validate_message(message)
        if session.channel is None:  # IK2 is waiting for the answer to the early message
            if self._answers_early(session, header):
                self._complete_ik2(now, session, message, out)
                return out
            self._complete_ik2(now, session, None, out)
        assert session.channel is not None
        self._transmit_session(session, session.channel.seal(message), out)
        self._sessions.move_to_end(session_id)
        return out

    def next_timer(self) -> float | None:
        return min(self._ik2_pending.values(), default=None)

    def handle_timer(self, now: float) -> list[ServerOutput]:
        out: list[ServerOutput] = []
        for session_id, deadline in list(self._ik2_pending.items()):
            if deadline <= now:
                self._complete_ik2(now, self._sessions[session_id], None, out)
        self.strikes.expire(now)
        return out

    def close_sessions_of(self, client_public: bytes, keep: bytes | None = None) -> list[ServerOutput]:
        """Close every session of the device with static key ``client_public``
        but ``keep``: a device that lost its state (it redefined its handles)
        is a new instance, and frames still arriving in its old sessions —
        late, or replayed — must not run under its new definitions."""
        out: list[ServerOutput] = []
        for session in [s for s in self._sessions.values() if s.client_public == client_public and s.id != keep]:
            self._remove_session(session, "closed: the device started over", out)
        return out

    def session_address(self, session_id: bytes) -> Hashable | None:
        session = self._sessions.get(session_id)
        return session.addr if session else None

    def sizes(self) -> dict[str, int]:
        """Sizes of every table (tests assert them against the limits)."""
        return {
            "sessions": len(self._sessions),
            "half_open": len(self._half_open) + len(self._unconfirmed),
            "xx_half_open": len(self._half_open),
            "ik_unconfirmed": len(self._unconfirmed),
            "addresses": len(self._addresses),
            "strikes": len(self.strikes),
            "ik1_index": len(self._by_ik1),
            "address_index": len(self._by_addr),
            "ik2_pending": len(self._ik2_pending),
            "held_frames": sum(len(s.held) for s in self._sessions.values()),
        }

    # -- accounting --

    def _validated(self, addr: Hashable) -> bool:
        session_id = self._by_addr.get(addr)
        return session_id is not None and self._sessions[session_id].validated

    def _account_received(self, addr: Hashable, size: int, always: bool) -> None:
        if not always and self._validated(addr):
            return
        state = self._address(addr)
        state.received += size

    def _address(self, addr: Hashable) -> _AddressState:
        state = self._addresses.get(addr)
        if state is None:
            state = self._addresses[addr] = _AddressState(tokens=self.limits.handshake_burst)
            while len(self._addresses) > self.limits.max_tracked_addresses:
                self._addresses.popitem(last=False)
        else:
            self._addresses.move_to_end(addr)
        return state

    def _may_send(self, addr: Hashable, size: int, session: _Session | None = None) -> bool:
        if (session is not None and session.validated) or self._validated(addr):
            return True
        state = self._addresses.get(addr)
        return state is not None and state.sent + size <= self.limits.amplification_factor * state.received

    def _transmit(self, addr: Hashable, data: bytes, out: list[ServerOutput], session: _Session | None = None) -> bool:
        """Send to ``addr`` within the anti-amplification budget."""
        if not self._may_send(addr, len(data), session):
            out.append(Dropped("anti-amplification limit", addr))
            return False
        state = self._addresses.get(addr)
        if state is not None and not self._validated(addr):
            state.sent += len(data)
        out.append(Transmit(addr, data))
        return True

    def _transmit_session(self, session: _Session, data: bytes, out: list[ServerOutput]) -> None:
        if self._may_send(session.addr, len(data), session):
            self._transmit(session.addr, data, out, session)
            return
        # hold it: the client's next data frame validates the address
        session.held.append(data)
        while len(session.held) > self.limits.max_held_frames:
            session.held.popleft()
            out.append(Dropped("held frame overflow", session.addr))

    def _take_handshake_token(self, now: float, addr: Hashable) -> bool:
        state = self._address(addr)
        if state.refilled is not None:
            state.tokens = min(self.limits.handshake_burst,
                               state.tokens + max(0.0, now - state.refilled) * self.limits.handshake_rate)
        state.refilled = now
        if state.tokens < 1.0:
            return False
        state.tokens -= 1.0
        return True

    # -- data frames --

    def _receive_data(self, now: float, addr: Hashable, datagram: bytes, out: list[ServerOutput]) -> None:
        header = sf.parse_coap_header(datagram)
        shape = sf.frame_shape(header, len(datagram))
        own_id = self._by_addr.get(addr)
        own = self._sessions.get(own_id) if own_id is not None else None
        if shape is FrameShape.UNSEALED:
            if own is None or own.channel is None:
                out.append(Dropped("empty ACK from an address without a session", addr))
            else:
                out.append(Deliver(own.id, addr, datagram, None))
            return
        candidates = [own] if own is not None else []
        for session in reversed(self._sessions.values()):
            if len(candidates) >= self.limits.max_trial_sessions:
                break
            if session is not own:
                candidates.append(session)
        replayed = False
        for session in candidates:
            if session.channel is None:
                continue
            try:
                opened = session.channel.open(datagram, now)
            except ReplayError:
                replayed = True
                continue
            except SecurityError:
                continue
            self._accept(now, session, addr, opened, out)
            return
        if replayed:
            out.append(Dropped("replayed or too old", addr))
            return
        out.append(Dropped("no session authenticates the frame", addr))
        state = self._address(addr)
        due = state.last_reset is None or now - state.last_reset >= self.limits.reset_interval
        if due and self._transmit(addr, sf.build_reset(datagram[:4]), out):
            state.last_reset = now

    def _accept(self, now: float, session: _Session, addr: Hashable, opened: Opened, out: list[ServerOutput]) -> None:
        if opened.is_retransmission and session.addr != addr:
            # its answer would go to the session's address anyway: passing it on would
            # only let a replayer make the server resend answers to the client
            out.append(Dropped("duplicate from another address", addr))
            return
        if not opened.is_retransmission:
            if session.addr != addr:  # NAT rebinding: only a new authenticated counter moves it
                self._bind(session, addr)
            if not session.validated:
                self._validate(session, out)
        self._sessions.move_to_end(session.id)
        out.append(Deliver(session.id, addr, opened.message, opened.counter, duplicate=opened.is_retransmission))

    def _restarted(self, session: _Session, out: list[ServerOutput]) -> None:
        """The device's new process proved itself: its other sessions are closed."""
        for other in [s for s in self._sessions.values()
                      if s.client_public == session.client_public and s.id != session.id]:
            self._remove_session(other, "closed: the device restarted", out)
        out.append(DeviceRestarted(session.id, session.client_public, session.unbound))
        session.restart = session.unbound = False

    def _bind(self, session: _Session, addr: Hashable) -> None:
        if self._by_addr.get(session.addr) == session.id:
            del self._by_addr[session.addr]
        session.addr = addr
        self._by_addr[addr] = session.id

    def _validate(self, session: _Session, out: list[ServerOutput]) -> None:
        if session.restart or session.unbound:
            # only now: a replayed IK1 never gets here (the replayer has no keys)
            self._restarted(session, out)
        session.validated = True
        self._unconfirmed.pop(session.id, None)
        self._addresses.pop(session.addr, None)
        session.ik2 = None  # the client has IK2: a repeated IK1 is a replay now
        while session.held:
            self._transmit(session.addr, session.held.popleft(), out, session)

    # -- handshakes --

    def _check_profile(self, addr: Hashable, frame: sf.HandshakeFrame, out: list[ServerOutput]) -> bool:
        held = self._profiles.get(frame.profile_id) if frame.profile_id is not None else None
        if held == frame.profile_digest:
            return True
        if held is None:
            refuse = sf.build_refuse(sf.RefuseReason.UNKNOWN_PROFILE, frame.ephemeral_echo)
        else:
            refuse = sf.build_refuse(sf.RefuseReason.PROFILE_MISMATCH, frame.ephemeral_echo, held)
        self._transmit(addr, refuse, out)
        out.append(Dropped(f"profile {frame.profile_id} refused", addr))
        return False

    def _receive_ik1(self, now: float, addr: Hashable, datagram: bytes, out: list[ServerOutput]) -> None:
        frame = sf.parse_handshake(datagram)
        if not self._check_profile(addr, frame, out):
            return
        digest = sf.frame_digest(datagram)
        known = self._sessions.get(self._by_ik1.get(digest, b""))
        if known is not None:
            # the same IK1 again: a retransmission (IK2 lost) or a replay
            if known.addr == addr and not known.validated and known.ik2 is not None:
                self._transmit(addr, known.ik2, out)
            else:
                out.append(Dropped("IK1 repeated", addr))
            return
        try:
            handshake = ServerSession(self._static, frame, rng=self._rng, rekey_interval=self.limits.rekey_interval,
                                      duplicate_lifetime=self.limits.duplicate_lifetime)
        except HandshakeError:
            self._transmit(addr, sf.build_refuse(sf.RefuseReason.UNDECRYPTABLE, frame.ephemeral_echo), out)
            out.append(Dropped("IK1 does not decrypt", addr))
            return
        assert handshake.session_id is not None and handshake.hello is not None
        assert handshake.client_public is not None
        if handshake.session_id in self._sessions:  # cannot differ from the digest check; be safe
            out.append(Dropped("IK1 repeated", addr))
            return
        session = _Session(handshake.session_id, addr, handshake.client_public, "IK", now, handshake=handshake,
                           ik1_digest=digest, restart=handshake.hello.restart, unbound=handshake.hello.unbound)
        self._add_session(session, out)
        self._unconfirmed[session.id] = now
        self._by_ik1[digest] = session.id
        self._enforce_half_open(out)
        out.append(SessionEstablished(session.id, addr, session.client_public, "IK"))
        message = handshake.hello.message
        if message is not None and self._accept_early(now, handshake, message):
            if session.restart or session.unbound:
                # accepted early data is struck off: this IK1 can never run again, so its
                # announcement is the device's own and fresh — act on it before the request
                # runs (it may define what an UNBOUND reset would otherwise wipe)
                self._restarted(session, out)
            session.early = sf.parse_coap_header(message)
            session.early_message = message
            session.ik2_deadline = now + self.limits.early_answer_wait
            self._ik2_pending[session.id] = session.ik2_deadline
            out.append(Deliver(session.id, addr, message, 0, early=True))
        else:
            self._complete_ik2(now, session, None, out)

    def _accept_early(self, now: float, handshake: ServerSession, message: bytes) -> bool:
        """The early-data rules: idempotent, fresh clock, ephemeral not seen."""
        header = sf.parse_coap_header(message)
        if not header.is_idempotent_request:
            return False
        assert handshake.hello is not None and handshake.hello.minutes is not None
        window = int(self.limits.early_window // 60)
        skew = sf.minutes_skew(handshake.hello.minutes, now)
        if abs(skew) > window:
            return False
        if self.early_data_from is not None and now < self.early_data_from:
            return False  # this IK1 may be one a previous run already accepted
        # strike until the server clock passes minutes + window: then IK1 is stale anyway
        expires = (int(now) // 60 + skew + window + 1) * 60.0
        if not self.strikes.add(handshake.client_ephemeral, expires, now):
            return False
        if self._on_strike is not None:
            self._on_strike(handshake.client_ephemeral, expires)
        return True

    @staticmethod
    def _answers_early(session: _Session, header: sf.CoapHeader) -> bool:
        early = session.early
        if early is None or not header.is_response or header.token != early.token:
            return False
        return header.type != sf.ACK or header.message_id == early.message_id

    def _complete_ik2(self, now: float, session: _Session, answer: bytes | None, out: list[ServerOutput]) -> None:
        """Write IK2: with the answer when it fits the budget, else telling the client to resend."""
        handshake = session.handshake
        assert handshake is not None and handshake.hello is not None
        sent_early = handshake.hello.message is not None
        if answer is not None and not self._may_send(session.addr, 1 + 32 + 1 + len(answer) + sf.TAG_SIZE):
            answer = None  # too big for an unvalidated address: the client resends as data, CoAP dedups
            out.append(Dropped("early answer over the anti-amplification limit", session.addr))
        ik2 = handshake.answer(answer, resend=sent_early and answer is None)
        if self.export_keys:
            out.append(handshake.session_keys())
        channel = handshake.channel
        assert channel is not None and session.ik1_digest is not None
        channel.note_handshake_message_received(session.early_message, session.ik1_digest, now)
        session.channel, session.handshake, session.ik2 = channel, None, ik2
        session.early = None
        self._ik2_pending.pop(session.id, None)
        self._transmit(session.addr, ik2, out)

    def _receive_xx1(self, now: float, addr: Hashable, datagram: bytes, out: list[ServerOutput]) -> None:
        frame = sf.parse_handshake(datagram)
        if not self._check_profile(addr, frame, out):
            return
        digest = sf.frame_digest(datagram)
        pending = self._half_open.get(addr)
        if pending is not None and pending.xx1_digest == digest:
            self._transmit(addr, pending.xx2, out)  # XX2 was lost
            return
        handshake = ServerSession(self._static, frame, rng=self._rng, rekey_interval=self.limits.rekey_interval,
                                  duplicate_lifetime=self.limits.duplicate_lifetime)
        xx2 = handshake.answer()
        self._half_open.pop(addr, None)
        self._half_open[addr] = _HalfOpen(handshake, digest, xx2, now)
        self._enforce_half_open(out)
        self._transmit(addr, xx2, out)

    def _receive_xx3(self, now: float, addr: Hashable, datagram: bytes, out: list[ServerOutput]) -> None:
        frame = sf.parse_handshake(datagram)
        pending = self._half_open.get(addr)
        if pending is None:
            own = self._sessions.get(self._by_addr.get(addr, b""))
            if own is not None and own.xx3_digest == sf.frame_digest(datagram):
                # XX3 again (the client's CoAP retransmission of its first message)
                if own.first_message is not None:
                    out.append(Deliver(own.id, addr, own.first_message, 0, duplicate=True))
                return
            out.append(Dropped("XX3 without a handshake", addr))
            return
        try:
            hello = pending.handshake.finish(frame)
        except HandshakeError:
            if pending.handshake.finished:  # authenticated but malformed payload: give up on it
                del self._half_open[addr]
            raise
        del self._half_open[addr]
        handshake = pending.handshake
        assert handshake.session_id is not None and handshake.client_public is not None
        assert handshake.channel is not None
        handshake.channel.note_handshake_message_received(hello.message, sf.frame_digest(datagram), now)
        session = _Session(handshake.session_id, addr, handshake.client_public, "XX", now,
                           channel=handshake.channel, xx3_digest=sf.frame_digest(datagram),
                           first_message=hello.message, restart=hello.restart, unbound=hello.unbound)
        self._add_session(session, out)
        out.append(SessionEstablished(session.id, addr, session.client_public, "XX"))
        if self.export_keys:
            out.append(handshake.session_keys())
        self._validate(session, out)  # XX3 needs XX2's keys: the address answered
        if hello.message is not None:
            out.append(Deliver(session.id, addr, hello.message, 0))

    # -- tables --

    def _add_session(self, session: _Session, out: list[ServerOutput]) -> None:
        self._sessions[session.id] = session
        self._bind(session, session.addr)
        while len(self._sessions) > self.limits.max_sessions:
            oldest = next(iter(self._sessions.values()))
            self._remove_session(oldest, "evicted: too many sessions", out)

    def _remove_session(self, session: _Session, reason: str, out: list[ServerOutput]) -> None:
        del self._sessions[session.id]
        if self._by_addr.get(session.addr) == session.id:
            del self._by_addr[session.addr]
        if session.ik1_digest is not None and self._by_ik1.get(session.ik1_digest) == session.id:
            del self._by_ik1[session.ik1_digest]
        self._unconfirmed.pop(session.id, None)
        self._ik2_pending.pop(session.id, None)
        out.append(SessionClosed(session.id, reason))

    def _enforce_half_open(self, out: list[ServerOutput]) -> None:
        while len(self._half_open) + len(self._unconfirmed) > self.limits.max_half_open:
            xx = next(iter(self._half_open.items()), None)
            ik = next(iter(self._unconfirmed.items()), None)
            if ik is None or (xx is not None and xx[1].created <= ik[1]):
                assert xx is not None
                del self._half_open[xx[0]]
                out.append(Dropped("half-open XX handshake evicted", xx[0]))
            else:
                self._remove_session(self._sessions[ik[0]], "evicted: unconfirmed IK session", out)


