"""The secure layer as a FrameCodec: sans-I/O endpoints driven by asyncio.

``SecureServerCodec`` and ``SecureClientCodec`` plug the Noise endpoints
(``secure.server``, ``secure.client``) into ``coap``'s
LinkMessageInterface.  aiocoap sees one remote per *device* on the server
(its static key: deduplication survives NAT rebinding, the early-data
resend and any re-handshake) and one remote, ``"server"``, on the client
(so a re-handshake keeps requests in flight).  Handshake replies go straight to the link; the endpoints' timers
are armed on the loop; drops are counted by reason.

``clock`` must be wall time (Unix seconds): early data carries the client's
clock in minutes and the server compares it with its own.

``KeyLog`` is the opt-in key log (``--keylog FILE``, ``COAP_GATEWAY_KEYLOG``;
docs/wireshark.md): a codec given one turns on its endpoint's
``export_keys`` and appends one line per session it completes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from ..codec import Profile
from ..errors import KeyFileError, SecurityError, ServerKeyChanged
from ..secure import (
    ClientEndpoint,
    Connected,
    Deliver,
    DeviceRestarted,
    Dropped,
    PinStore,
    Rehandshake,
    ServerEndpoint,
    SessionClosed,
    SessionEstablished,
    SessionKeys,
    Transmit,
    Woken,
    reason_label,
)
from ..secure import frame as sf
from .coap import CodecHost

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SERVER_KEY = "server"

#: the environment variable that turns the key log on, like TLS's SSLKEYLOGFILE
KEYLOG_ENV = "COAP_GATEWAY_KEYLOG"


class KeyLog:
    """An append-only key log file: one line per secure session
    (``SessionKeys.keylog_line``), enough to decrypt its frames both ways.

    Opt-in only: whoever reads the file reads the sessions it lists.  The file
    is created with mode 0600 and refused when it exists group- or
    world-readable; each line is flushed at once, so a capture can be read
    while the gateway runs.  Lines already written by this object are not
    written again (both gateways of one process may share it).
    """

    REMEMBERED = 4096  # recent lines, for the duplicate check

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise KeyFileError(f"cannot open key log {self.path}: {exc.strerror}") from None
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) and mode & 0o077:
            os.close(fd)
            raise KeyFileError(f"key log {self.path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                               f"chmod 600 it or choose a new file")
        self._file = os.fdopen(fd, "a", encoding="ascii")
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.lines = 0

    @classmethod
    def from_settings(cls, path: str | os.PathLike[str] | None,
                      environ: dict[str, str] | None = None) -> KeyLog | None:
        """The key log ``path`` names, else the one ``COAP_GATEWAY_KEYLOG``
        names, else None (the default: no key log)."""
        chosen = path if path else (os.environ if environ is None else environ).get(KEYLOG_ENV)
        if not chosen:
            return None
        return cls(chosen)

    def write(self, keys: SessionKeys) -> None:
        line = keys.keylog_line()
        if self._file.closed or line in self._seen:
            return
        self._seen[line] = None
        while len(self._seen) > self.REMEMBERED:
            self._seen.popitem(last=False)
        self._file.write(line + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class DeviceId:
    """The CoAP remote key of a device: its static key, and how many times a
    new client process of it started (so the CoAP state of an old process —
    message IDs it used, exchanges, observations — can never match the new
    one's; aiocoap expires it on its own)."""

    public: bytes
    epoch: int = 0

    def __str__(self) -> str:
        return f"{self.public.hex()[:16]}/{self.epoch}"


@dataclass(frozen=True)
class DeviceEvent:
    """What the server codec tells the gateway about a device: ``"session"`` —
    a session of it was established; ``"gone"`` — its last session closed;
    ``"restarted"`` — a new client process of it proved itself (``unbound``:
    without its binding state; ``previous``: the remote key of the old one)."""

    key: DeviceId
    kind: str
    unbound: bool = False
    previous: DeviceId | None = None
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
                             profile.schemas.digest if profile.schemas else None,
                             profile.timeline.digest if profile.timeline else None)


def _at_least_default(lifetime: Callable[[], float]) -> Callable[[], float]:
    return lambda: max(sf.DEFAULT_DUPLICATE_LIFETIME, lifetime())


def _forgotten(host: CodecHost | None, key: Hashable, message: bytes) -> bool:
    """A byte-identical copy of a request whose exchange CoAP no longer
    deduplicates (its lifetime over for that peer, or pushed out by the
    per-peer bound) would run again: the secure layer's duplicate lifetime
    and CoAP's are not one clock, so CoAP's memory decides.  Responses are
    not deduplicated by message ID (aiocoap: RFC 7252 §4.5; Observe numbers
    and the push layer's sequence do it): a repeated notification still
    goes up, to be acknowledged."""
    header = sf.parse_coap_header(message)
    if not header.is_request or host is None:
        return False
    return not host.remembers(key, header.message_id)


class SecureServerCodec:
    """The server's codec: sessions below, one CoAP remote per *device* above.

    aiocoap talks to a device (its Noise static key), not to a session: a
    device that re-handshakes — after a timeout, a NAT change, a RESET
    genuine or forged — keeps its CoAP state, so a request it sends again in
    the new session is recognised as the same request (message-ID
    deduplication) and never runs twice.  Outgoing messages go in the
    device's current session: the one its latest authenticated frame came
    in.  A device whose new client process proved itself (``DeviceRestarted``)
    starts over: its CoAP exchanges are forgotten, its older sessions closed.
    """

    frame_overhead = sf.SEQ_SIZE + sf.TAG_SIZE

    def __init__(self, endpoint: ServerEndpoint, *, clock: Clock = time.time,
                 on_device: Callable[[DeviceEvent], None] | None = None, key_log: KeyLog | None = None):
        self.endpoint = endpoint
        self.clock = clock
        self.on_device = on_device
        self.key_log = key_log
        endpoint.export_keys = key_log is not None
        self.dropped: Counter[str] = Counter()
        self.sessions_established = 0
        self.device_restarts = 0
        #: session -> device static key; device -> its open sessions, current one last
        self._device_of: dict[bytes, bytes] = {}
        self._sessions_of: dict[bytes, list[bytes]] = {}
        #: device -> how many new processes of it proved themselves (absent: 0);
        #: and the restarted devices without a session, with when they went, oldest first
        self._epoch: dict[bytes, int] = {}
        self._gone: OrderedDict[bytes, float] = OrderedDict()
        self._host: CodecHost | None = None
        self._timer: asyncio.TimerHandle | None = None

    def bind(self, host: CodecHost) -> None:
        self._host = host

    def follow_duplicate_lifetime(self, lifetime: Callable[[], float]) -> None:
        """Sessions made from now on pass a retransmitted frame on as a
        duplicate as long as ``lifetime()`` says (never less than the default)."""
        self.endpoint.limits = dataclasses.replace(self.endpoint.limits, duplicate_lifetime=_at_least_default(lifetime))

    def device_key(self, public: bytes) -> DeviceId:
        return DeviceId(public, self._epoch.get(public, 0))

    def sizes(self) -> dict[str, int]:
        """Sizes of the codec's own tables (tests assert them against the limits)."""
        return {"devices": len(self._sessions_of), "sessions": len(self._device_of), "epochs": len(self._epoch),
                "gone_restarted": len(self._gone)}

    def device_address(self, key: Hashable) -> Hashable | None:
        """The network address of a device's current session."""
        sessions = self._sessions_of.get(key.public) if isinstance(key, DeviceId) else None
        return self.endpoint.session_address(sessions[-1]) if sessions else None

    def failure(self) -> None:
        return None  # a server's failures are per device, never the whole endpoint's

    def setup_bytes(self, key: Hashable) -> int:
        return 0  # a server never waits for a handshake of its own: the device makes them

    def outgoing(self, key: Hashable, message: bytes) -> list[tuple[Hashable, bytes]]:
        sessions = self._sessions_of.get(key.public) if isinstance(key, DeviceId) else None
        if not sessions or key != self.device_key(key.public):  # type: ignore[union-attr]
            count_drop(self.dropped, "no session for the device")
            return []
        outs = self.endpoint.send(self.clock(), sessions[-1], message)
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
                device = self._device_of.get(out.session_id)
                if device is None:
                    count_drop(self.dropped, "frame of an unknown session")
                    continue
                if not out.duplicate and out.counter is not None:
                    self._make_current(device, out.session_id)
                elif out.duplicate and _forgotten(self._host, self.device_key(device), out.message):
                    count_drop(self.dropped, "duplicate of an exchange CoAP has forgotten")
                    continue
                if deliver is not None:
                    deliver.append((self.device_key(device), out.message))
            elif isinstance(out, Dropped):
                count_drop(self.dropped, out.reason)
            elif isinstance(out, SessionEstablished):
                self.sessions_established += 1
                device = out.client_static_public
                self._device_of[out.session_id] = device
                sessions = self._sessions_of.setdefault(device, [])
                # an IK session is current only once a frame authenticates in it
                # (a replayed IK1 must not take the device's answers away)
                sessions.insert(0 if out.pattern == "IK" and sessions else len(sessions), out.session_id)
                self._gone.pop(device, None)
                self._tell(DeviceEvent(self.device_key(device), "session"))
            elif isinstance(out, SessionClosed):
                device = self._device_of.pop(out.session_id, None)
                if device is not None:
                    sessions = self._sessions_of.get(device, [])
                    if out.session_id in sessions:
                        sessions.remove(out.session_id)
                    if not sessions:
                        # the device is gone: its CoAP timers go too
                        self._sessions_of.pop(device, None)
                        if self._host is not None:
                            self._host.forget_remote(self.device_key(device))
                        self._tell(DeviceEvent(self.device_key(device), "gone"))
                        self._went(device)
            elif isinstance(out, SessionKeys):
                if self.key_log is not None:
                    self.key_log.write(out)
            elif isinstance(out, DeviceRestarted):
                # a new process: its message IDs start over, nothing of the old one may match
                self.device_restarts += 1
                public = out.client_static_public
                previous = self.device_key(public)
                self._epoch[public] = previous.epoch + 1
                if self._host is not None:
                    self._host.forget_remote(previous)
                self._tell(DeviceEvent(self.device_key(public), "restarted", out.unbound, previous))
        self._arm_timer()
        return transmits

    def _went(self, device: bytes) -> None:
        """Bound the epochs: one per device with a session (at most ``max_sessions``),
        and the ``max_sessions`` restarted devices gone most recently.  A gone
        device's epoch is forgotten once CoAP can no longer hold anything of it
        (every message of it came in a session: after the duplicate lifetime
        its exchanges are forgotten), so coming back at epoch 0 matches nothing
        of an older process; before that only when over the bound (a flood of
        restarting keys), as any bounded cache must."""
        if device not in self._epoch:
            return
        now = self.clock()
        self._gone[device] = now
        lifetime = self.endpoint.limits.duplicate_lifetime
        lifetime = lifetime() if callable(lifetime) else lifetime
        while self._gone:
            oldest, went = next(iter(self._gone.items()))
            if went + lifetime > now and len(self._gone) <= self.endpoint.limits.max_sessions:
                break
            del self._gone[oldest]
            del self._epoch[oldest]

    def _make_current(self, device: bytes, session_id: bytes) -> None:
        sessions = self._sessions_of.get(device)
        if sessions and sessions[-1] != session_id and session_id in sessions:
            sessions.remove(session_id)
            sessions.append(session_id)

    def _tell(self, event: DeviceEvent) -> None:
        if self.on_device is not None:
            self.on_device(event)

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

    frame_overhead = sf.SEQ_SIZE + sf.TAG_SIZE

    def __init__(self, endpoint: ClientEndpoint, server_addr: Hashable, *, clock: Clock = time.time,
                 on_connected: Callable[[Connected], None] | None = None,
                 explain: Callable[[SecurityError], SecurityError] | None = None,
                 recover: Callable[[SecurityError], bool] | None = None, key_log: KeyLog | None = None):
        self.endpoint = endpoint
        self.key_log = key_log
        endpoint.export_keys = key_log is not None
        #: ``explain(error)``: the error as the user should read it;
        #: ``recover(error)``: True when what caused it was put right (a new key accepted)
        self.explain, self.recover = explain, recover
        self.server_addr = server_addr
        self.clock = clock
        self.on_connected = on_connected
        self.dropped: Counter[str] = Counter()
        self.handshakes = 0
        self.rehandshakes = 0
        #: the server asked for the session (WAKE): ``on_wake()`` pings it
        #: (set by a shell that can; a federation initiator's)
        self.on_wake: Callable[[], None] | None = None
        self.wakes = 0
        #: a handshake that cannot succeed (wrong profile, changed server key)
        self.error: SecurityError | None = None
        self._host: CodecHost | None = None

    def bind(self, host: CodecHost) -> None:
        self._host = host

    def follow_duplicate_lifetime(self, lifetime: Callable[[], float]) -> None:
        """Sessions made from now on pass a retransmitted frame on as a
        duplicate as long as ``lifetime()`` says (never less than the default)."""
        self.endpoint.duplicate_lifetime = _at_least_default(lifetime)

    def failure(self) -> SecurityError | None:
        if self.error is not None and self.recover is not None and self.recover(self.error):
            log.warning("secure session with %r: %s put right, connecting again", self.server_addr,
                        type(self.error).__name__)
            self.error = None
        return self.error

    def outgoing(self, key: Hashable, message: bytes) -> list[tuple[Hashable, bytes]]:
        failure = self.failure()
        if failure is not None:
            raise failure
        return self._handle(self.endpoint.send(self.clock(), message), deliver=None)

    def setup_bytes(self, key: Hashable) -> int:
        return self.endpoint.setup_bytes()

    def incoming(self, peer: Hashable, datagram: bytes) -> list[tuple[Hashable, bytes]]:
        if peer != self.server_addr:
            count_drop(self.dropped, "not from the server")
            return []
        delivered: list[tuple[Hashable, bytes]] = []
        try:
            outs = self.endpoint.receive(self.clock(), datagram)
        except SecurityError as exc:  # ProfileMismatchError, ServerKeyChanged: fatal, reported
            self._fail(exc)
            return []
        for addr, data in self._handle(outs, deliver=delivered):
            if self._host is not None:
                self._host.send_datagram(addr, data)
        return delivered

    def _fail(self, exc: SecurityError) -> None:
        if self.explain is not None:
            exc = self.explain(exc)
        self.error = exc
        log.error("secure session with %r failed: %s", self.server_addr, exc)
        if self._host is not None:
            asyncio.get_running_loop().call_soon(self._host.fail_remote, SERVER_KEY, exc)

    def _handle(self, outs, deliver: list | None) -> list[tuple[Hashable, bytes]]:
        transmits = []
        for out in outs:
            if isinstance(out, Transmit):
                transmits.append((self.server_addr, out.data))
            elif isinstance(out, Deliver):
                if out.duplicate and _forgotten(self._host, SERVER_KEY, out.message):
                    count_drop(self.dropped, "duplicate of an exchange CoAP has forgotten")
                    continue
                if deliver is not None:
                    deliver.append((SERVER_KEY, out.message))
            elif isinstance(out, Dropped):
                count_drop(self.dropped, out.reason)
            elif isinstance(out, Connected):
                self.handshakes += 1
                if self.on_connected is not None:
                    try:
                        self.on_connected(out)
                    except SecurityError as exc:  # the pin could not be stored: trust nothing
                        self._fail(exc)
            elif isinstance(out, Rehandshake):
                self.rehandshakes += 1
            elif isinstance(out, SessionKeys):
                if self.key_log is not None:
                    self.key_log.write(out)
            elif isinstance(out, Woken):
                if self.on_wake is None:
                    count_drop(self.dropped, "WAKE: nothing here pings")
                else:
                    self.wakes += 1
                    # after this datagram's turn: the ping goes down through this codec
                    asyncio.get_running_loop().call_soon(self.on_wake)
        return transmits


def pinned_client_codec(server_name: str, server_addr: Hashable, static_private: bytes, profile: Profile,
                        pins: PinStore, *, clock: Clock = time.time, restart: bool = True,
                        unbound: bool = True, key_log: KeyLog | None = None) -> SecureClientCodec:
    """A client codec that trusts the server key on first use.

    No pin for ``server_name``: XX, and the key the server proves is pinned.
    A pin: IK with that key; a server that now holds another key fails the
    handshake with ServerKeyChanged naming both fingerprints — until the
    operator accepts the new key (``coap-gateway pins accept``).
    """
    pins.prepare()  # fail now, not after the first handshake, if no pin could be stored
    pinned = pins.get(server_name)
    endpoint = ClientEndpoint(static_private, profile.id, profile_wire_digest(profile), server_public=pinned,
                              restart=restart, unbound=unbound)

    def on_connected(event: Connected) -> None:
        if pins.check(server_name, event.server_static_public) == "new":
            pins.pin(server_name, event.server_static_public)

    def explain(exc: SecurityError) -> SecurityError:
        # the handshake knows both keys; the pin store knows the command that accepts the new one
        if isinstance(exc, ServerKeyChanged) and exc.pinned is not None and exc.presented is not None:
            return pins.key_changed(server_name, exc.pinned, exc.presented)
        return exc

    def recover(exc: SecurityError) -> bool:
        # `coap-gateway pins accept` while running: the next request uses the accepted key
        if isinstance(exc, ServerKeyChanged) and exc.presented is not None and pins.get(server_name) == exc.presented:
            endpoint.trust(exc.presented)
            return True
        return False

    return SecureClientCodec(endpoint, server_addr, clock=clock, on_connected=on_connected, explain=explain,
                             recover=recover, key_log=key_log)
