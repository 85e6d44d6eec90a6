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
    #: XX handshakes after message 2 kept per address: a spoofed XX1 from a client's
    #: address must not replace the client's own (each XX3 is tried against each)
    max_half_open_per_address: int = 2
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
        if (self.max_half_open < 1 or self.max_sessions < 1 or self.max_tracked_addresses < 1
                or self.max_half_open_per_address < 1):
            raise ValueError("table limits must be positive")

    @property
    def early_window_minutes(self) -> int:
        """The early window in the whole minutes IK1's clock is compared in."""
        return int(self.early_window // 60)

    def strike_expires(self, now: float, skew: int) -> float:
        """Until when an IK1 with clock ``minute(now) + skew`` stays acceptable
        (``skew`` within the window): its minutes + the window + 1, in seconds.
        Its strike must last that long, and no longer is needed."""
        return (int(now) // 60 + skew + self.early_window_minutes + 1) * 60.0

    def early_data_safe_from(self, start: float) -> float:
        """When a server that started at ``start`` without its predecessor's
        strike register may accept early data: once every IK1 the predecessor
        may have accepted is stale.  It accepted one at t <= start only with
        skew <= W (W = ``early_window_minutes``), struck until
        ``strike_expires(t, skew)`` <= (minute(start) + 2W + 1) · 60 — twice the
        window and a minute after the start minute, not the window once (a
        client clock up to W ahead keeps its IK1 acceptable that long)."""
        return self.strike_expires(start, self.early_window_minutes)  # the latest: skew W at ``start``


# --- strike register ----------------------------------------------------------------


class StrikeRegister:
    """Ephemeral keys of the fresh IK1s seen, until their IK1 could no longer be accepted.

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
                 on_strike: Callable[[bytes, float, float], None] | None = None,
                 admit: Callable[[bytes], bool] | None = None) -> None:
        """``early_data_from``: refuse early data before that time — a server
        that lost its strike register (a restart without persisting it) must
        not run an IK1 it may already have run, so it waits until such an IK1
        is stale (``ServerLimits.early_data_safe_from``).  ``strikes``: a
        persisted register to restore (as of ``now``); ``on_strike(key,
        expires, now)``: called for each strike (every fresh IK1 that
        decrypts) before anything of its handshake is acted on, to persist it
        first.  ``admit(client_public)``: whether a client with that static key
        may have a session at all (None: any key; a federation gateway admits
        its peers only — sessions of other keys would count against
        ``max_sessions`` and push its peers' sessions out)."""
        self._static = static_private_key
        self._profiles = dict(profiles)
        self.limits = limits or ServerLimits()
        self._rng = rng
        # least recently active first
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()
        self._by_addr: dict[Hashable, bytes] = {}
        self._by_ik1: dict[bytes, bytes] = {}
        #: XX after message 2 by (address, XX1 digest), oldest first; and the XX1 digests per address
        self._half_open: OrderedDict[tuple[Hashable, bytes], _HalfOpen] = OrderedDict()
        self._half_open_at: dict[Hashable, list[bytes]] = {}
        self._unconfirmed: OrderedDict[bytes, float] = OrderedDict()  # IK sessions not yet validated
        self._addresses: OrderedDict[Hashable, _AddressState] = OrderedDict()
        self._ik2_pending: dict[bytes, float] = {}
        self.strikes = StrikeRegister(self.limits.max_strikes)
        for key, expires in strikes:
            if expires > now:
                self.strikes.add(key, expires, now)
        self.early_data_from = early_data_from
        self._on_strike = on_strike
        self._admit = admit
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
                # its shape first: a datagram that cannot be a handshake costs the address no token
                # (else one spoofed byte a time drains a client's bucket)
                frame = sf.parse_handshake(datagram)
                if not self._take_handshake_token(now, addr):
                    out.append(Dropped("handshake rate limit", addr))
                elif kind is DatagramKind.IK1:
                    self._receive_ik1(now, addr, datagram, frame, out)
                elif kind is DatagramKind.XX1:
                    self._receive_xx1(now, addr, datagram, frame, out)
                else:
                    self._receive_xx3(now, addr, datagram, frame, out)
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
            "xx_half_open_addresses": len(self._half_open_at),
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

    def _unlimited(self, addr: Hashable, session: _Session | None) -> bool:
        # a session's own sends go by its own validation: an unvalidated one at an address
        # another session validated may have been made by a spoofed IK1
        return session.validated if session is not None else self._validated(addr)

    def _may_send(self, addr: Hashable, size: int, session: _Session | None = None) -> bool:
        if self._unlimited(addr, session):
            return True
        state = self._addresses.get(addr)
        return state is not None and state.sent + size <= self.limits.amplification_factor * state.received

    def _transmit(self, addr: Hashable, data: bytes, out: list[ServerOutput], session: _Session | None = None) -> bool:
        """Send to ``addr`` within the anti-amplification budget."""
        if not self._may_send(addr, len(data), session):
            out.append(Dropped("anti-amplification limit", addr))
            return False
        state = self._addresses.get(addr)
        if state is not None and not self._unlimited(addr, session):
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
                # the window judges a counter before decrypting, and a busy session finds most
                # Seq bytes old: its verdict speaks for the frame only if the frame is its own —
                # else a client whose session was lost never gets its RESET.  (The sender's
                # address is no proof: it may be spoofed, or reused by another device.)
                if session.channel.authenticates(datagram):
                    replayed = True
                    break
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
            # NAT rebinding, or its address was bound to another session meanwhile (a newer
            # handshake from it) or lost: only a new authenticated counter binds it
            if self._by_addr.get(addr) != session.id:
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
        if self._by_addr.get(session.addr) != session.id:
            self._bind(session, session.addr)  # proven now: it takes the address over
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

    def _receive_ik1(self, now: float, addr: Hashable, datagram: bytes, frame: sf.HandshakeFrame,
                     out: list[ServerOutput]) -> None:
        if not self._check_profile(addr, frame, out):
            return
        digest = sf.frame_digest(datagram)
        known = self._sessions.get(self._by_ik1.get(digest, b""))
        if known is not None:
            # the same IK1 again: a retransmission (IK2 lost) or a replay
            if known.addr == addr and not known.validated and known.ik2 is not None:
                self._transmit(addr, known.ik2, out, known)
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
        if self._admit is not None and not self._admit(handshake.client_public):
            out.append(Dropped("client key not admitted", addr))
            return
        # first sight of this IK1 (while fresh) or not: only a first sight may run early data
        # or act on RESTART/UNBOUND before the session is validated
        first_sight = self._strike(now, handshake)
        session = _Session(handshake.session_id, addr, handshake.client_public, "IK", now, handshake=handshake,
                           ik1_digest=digest, restart=handshake.hello.restart, unbound=handshake.hello.unbound)
        self._add_session(session, out)
        self._unconfirmed[session.id] = now
        self._by_ik1[digest] = session.id
        self._enforce_half_open(out)
        out.append(SessionEstablished(session.id, addr, session.client_public, "IK"))
        message = handshake.hello.message
        if message is not None and first_sight and self._accept_early(now, message):
            if session.restart or session.unbound:
                # this IK1 is struck off and can never run again, so its announcement is the
                # device's own and fresh — act on it before the request runs (it may define
                # what an UNBOUND reset would otherwise wipe)
                self._restarted(session, out)
            session.early = sf.parse_coap_header(message)
            session.early_message = message
            session.ik2_deadline = now + self.limits.early_answer_wait
            self._ik2_pending[session.id] = session.ik2_deadline
            out.append(Deliver(session.id, addr, message, 0, early=True))
        else:
            self._complete_ik2(now, session, None, out)

    def _strike(self, now: float, handshake: ServerSession) -> bool:
        """Strike a fresh IK1 off (every one that decrypts, whether or not its early
        data is taken): True the first time; False when stale, seen before or the
        register is full.  Striking only IK1s whose early data ran would let one
        whose early data was refused (too early after a restart, a POST) be
        replayed later and taken, its RESTART closing the device's live session."""
        assert handshake.hello is not None and handshake.hello.minutes is not None
        skew = sf.minutes_skew(handshake.hello.minutes, now)
        if abs(skew) > self.limits.early_window_minutes:
            return False  # stale: never accepted as fresh, nothing to strike
        expires = self.limits.strike_expires(now, skew)
        if not self.strikes.add(handshake.client_ephemeral, expires, now):
            return False
        if self._on_strike is not None:
            self._on_strike(handshake.client_ephemeral, expires, now)
        return True

    def _accept_early(self, now: float, message: bytes) -> bool:
        """The early-data rules of a fresh IK1 seen for the first time: idempotent, not
        over the size a client sends early, not while a lost register may miss it."""
        header = sf.parse_coap_header(message)
        if not header.is_idempotent_request or len(message) > sf.MAX_EARLY_MESSAGE:
            return False
        if self.early_data_from is not None and now < self.early_data_from:
            return False  # this IK1 may be one a previous run already accepted
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
        if answer is not None and not self._may_send(session.addr, 1 + 32 + 1 + len(answer) + sf.TAG_SIZE, session):
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
        self._transmit(session.addr, ik2, out, session)

    def _receive_xx1(self, now: float, addr: Hashable, datagram: bytes, frame: sf.HandshakeFrame,
                     out: list[ServerOutput]) -> None:
        if not self._check_profile(addr, frame, out):
            return
        digest = sf.frame_digest(datagram)
        pending = self._half_open.get((addr, digest))
        if pending is not None:
            self._transmit(addr, pending.xx2, out)  # XX2 was lost
            return
        handshake = ServerSession(self._static, frame, rng=self._rng, rekey_interval=self.limits.rekey_interval,
                                  duplicate_lifetime=self.limits.duplicate_lifetime)
        xx2 = handshake.answer()
        digests = self._half_open_at.setdefault(addr, [])
        while len(digests) >= self.limits.max_half_open_per_address:
            self._drop_half_open(addr, digests[0])
            out.append(Dropped("half-open XX handshake replaced", addr))
        digests.append(digest)
        self._half_open[(addr, digest)] = _HalfOpen(handshake, digest, xx2, now)
        self._enforce_half_open(out)
        self._transmit(addr, xx2, out)

    def _receive_xx3(self, now: float, addr: Hashable, datagram: bytes, frame: sf.HandshakeFrame,
                     out: list[ServerOutput]) -> None:
        digest = sf.frame_digest(datagram)
        own = self._sessions.get(self._by_addr.get(addr, b""))
        if own is not None and own.xx3_digest == digest:
            # XX3 again (the client's CoAP retransmission of its first message): a duplicate
            # of counter 0, within the window's limits as any other
            assert own.channel is not None
            if own.channel.window.check(0, digest, now) is not sf.Verdict.DUPLICATE:
                out.append(Dropped("XX3 repeated", addr))
            elif own.first_message is not None:
                own.channel.window.mark_duplicate(0)
                out.append(Deliver(own.id, addr, own.first_message, 0, duplicate=True))
            return
        digests = self._half_open_at.get(addr)
        if not digests:
            out.append(Dropped("XX3 without a handshake", addr))
            return
        for xx1_digest in list(digests):  # a spoofed XX1 from the address may be among them
            pending = self._half_open[(addr, xx1_digest)]
            try:
                hello = pending.handshake.finish(frame)
            except HandshakeError:
                if pending.handshake.finished:  # authenticated but malformed payload: give up on it
                    self._drop_half_open(addr, xx1_digest)
                    raise
                continue
            self._drop_half_open(addr, xx1_digest)
            self._complete_xx(now, addr, pending.handshake, hello, digest, out)
            return
        out.append(Dropped("XX3 does not decrypt", addr))

    def _complete_xx(self, now: float, addr: Hashable, handshake: ServerSession, hello: sf.HelloPayload,
                     xx3_digest: bytes, out: list[ServerOutput]) -> None:
        assert handshake.session_id is not None and handshake.client_public is not None
        assert handshake.channel is not None
        if self._admit is not None and not self._admit(handshake.client_public):
            out.append(Dropped("client key not admitted", addr))
            return
        handshake.channel.note_handshake_message_received(hello.message, xx3_digest, now)
        session = _Session(handshake.session_id, addr, handshake.client_public, "XX", now,
                           channel=handshake.channel, xx3_digest=xx3_digest,
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
        # a new session takes its address over only from one not validated (if at all): an
        # IK1 is no proof of its source, and a spoofed one would take a client's empty ACKs
        # away from its session; it binds when validated (``_validate``)
        current = self._sessions.get(self._by_addr.get(session.addr, b""))
        if current is None or not current.validated:
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
                self._drop_half_open(*xx[0])
                out.append(Dropped("half-open XX handshake evicted", xx[0][0]))
            else:
                self._remove_session(self._sessions[ik[0]], "evicted: unconfirmed IK session", out)

    def _drop_half_open(self, addr: Hashable, xx1_digest: bytes) -> None:
        del self._half_open[(addr, xx1_digest)]
        digests = self._half_open_at[addr]
        digests.remove(xx1_digest)
        if not digests:
            del self._half_open_at[addr]


