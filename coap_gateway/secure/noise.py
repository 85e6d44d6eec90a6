"""Noise handshakes (IK, XX) and the data phase of one secure session.

Sans-I/O: bytes in, bytes out.  Randomness comes from an injected
``rng(n) -> bytes`` (ephemeral keys); time from ``now`` arguments.  The
Noise state machine is noiseprotocol's; after the handshake the keys of
``Split()`` are used with explicit nonces (docs/protocol.md, Part III):

- :class:`ClientSession` — the initiator: IK when the server key is pinned,
  XX otherwise;
- :class:`ServerSession` — the responder side of one handshake;
- :class:`SecureChannel` — both ends after the handshake: ``seal``/``open``.
"""

from __future__ import annotations

import os
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from noise import exceptions as noise_errors
from noise.backends.default.ciphers import ChaCha20Cipher
from noise.connection import Keypair, NoiseConnection
from noise.state import CipherState

from ..errors import (
    AuthenticationError,
    FrameError,
    HandshakeError,
    NonceError,
    ProfileMismatchError,
    ReplayError,
    ServerKeyChanged,
    ServerKeyMismatchError,
)
from . import frame as sf
from .events import SessionKeys
from .frame import DatagramKind, FrameShape
from .keys import (
    fingerprint,  # a pure helper; keys.py's file functions are not used here
)

Rng = Callable[[int], bytes]

PROTOCOL_NAMES = {
    "IK": b"Noise_IK_25519_ChaChaPoly_BLAKE2s",
    "XX": b"Noise_XX_25519_ChaChaPoly_BLAKE2s",
}
#: how far behind its newest request counter a side can still answer piggybacked
PIGGYBACK_REACH = 256
MAX_MIDS = 256  # Message IDs of requests sent, remembered for their piggybacked answers
#: Message IDs of requests received, remembered to answer them piggybacked: as
#: many as the replay window spans (an older request cannot be opened again,
#: so remembering it guards no nonce), and a device cannot make the server
#: hold more (a 256-block upload kept 256 before)
MAX_RECEIVED_MIDS = sf.ReplayWindow.SIZE
MAX_COUNTERS_PER_MID = 4  # the same request resent with new counters
SEAL_CACHE_SIZE = 16  # recent sealed frames, resent byte-identical on CoAP retransmission

#: what noiseprotocol and cryptography raise on bad input: a tag that does not
#: verify, a malformed key, DH with a low-order point (ValueError), a misuse
_LIBRARY_ERRORS = (
    InvalidTag,
    ValueError,
    noise_errors.NoiseValueError,
    noise_errors.NoiseHandshakeError,
    noise_errors.NoiseInvalidMessage,
    noise_errors.NoiseMaxNonceError,
    noise_errors.NoiseValidationError,
)


# --- the Noise handshake, with failed reads undone --------------------------------


class _NoiseHandshake:
    """A noiseprotocol handshake whose ``read`` leaves the state untouched on failure.

    noiseprotocol consumes the message pattern before decrypting, so one
    garbage datagram would otherwise kill a handshake in progress.
    """

    def __init__(self, pattern: str, initiator: bool, prologue: bytes, static_private: bytes,
                 ephemeral_private: bytes, remote_static: bytes | None = None) -> None:
        conn = NoiseConnection.from_name(PROTOCOL_NAMES[pattern])
        conn.set_as_initiator() if initiator else conn.set_as_responder()
        conn.set_prologue(prologue)
        conn.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
        # the ephemeral comes from the injected rng, so tests are deterministic
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral_private)
        if remote_static is not None:
            conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote_static)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ephemeral set: testing only" — it is ours, from rng
            conn.start_handshake()
        self._conn = conn
        # held past the end: noiseprotocol drops its own reference when the handshake finishes
        self._state = conn.noise_protocol.handshake_state
        #: per message written or read, the key its payload was encrypted with
        #: (None before the first DH); for the opt-in key log (``SessionKeys``)
        self.payload_keys: list[bytes | None] = []

    def _note_payload_key(self) -> None:
        cs = self._state.symmetric_state.cipher_state
        self.payload_keys.append(bytes(cs.k) if cs.has_key() else None)

    def write(self, payload: bytes) -> bytes:
        try:
            message = bytes(self._conn.write_message(payload))
        except _LIBRARY_ERRORS as exc:  # e.g. DH with the peer's low-order point (XX2 after XX1)
            raise HandshakeError(f"cannot write handshake message ({type(exc).__name__})") from None
        self._note_payload_key()
        return message

    def read(self, message: bytes) -> bytes:
        hs = self._state
        ss = hs.symmetric_state
        saved = (list(hs.message_patterns), ss.h, ss.ck, ss.cipher_state.k, ss.cipher_state.n, hs.re, hs.rs,
                 self._conn._next_fn)
        try:
            payload = bytes(self._conn.read_message(message))
        except _LIBRARY_ERRORS as exc:
            patterns, h, ck, k, n, re, rs, next_fn = saved
            hs.message_patterns, ss.h, ss.ck, hs.re, hs.rs = patterns, h, ck, re, rs
            ss.cipher_state.initialize_key(k)
            ss.cipher_state.n = n
            self._conn._next_fn = next_fn
            self._conn.handshake_finished = False
            raise HandshakeError(f"handshake message does not decrypt ({type(exc).__name__})") from None
        self._note_payload_key()
        return payload

    @property
    def finished(self) -> bool:
        return self._conn.handshake_finished

    @property
    def hash(self) -> bytes:
        """The handshake hash h so far (the final one once finished)."""
        return bytes(self._state.symmetric_state.h)

    @property
    def remote_static(self) -> bytes | None:
        return getattr(self._state.rs, "public_bytes", None)

    def split_keys(self) -> tuple[bytes, bytes]:
        """(send key, receive key) from Split()."""
        p = self._conn.noise_protocol
        return bytes(p.cipher_state_encrypt.k), bytes(p.cipher_state_decrypt.k)

    def session_keys(self, pattern: str, initiator: bool, client_ephemeral: bytes, session_id: bytes,
                     rekey_interval: int) -> SessionKeys:
        """What decrypts this finished session's frames (the opt-in key log)."""
        send_key, receive_key = self.split_keys()
        c2s, s2c = (send_key, receive_key) if initiator else (receive_key, send_key)
        kinds = ("IK1", "IK2") if pattern == "IK" else ("XX1", "XX2", "XX3")
        carried = {"IK1", "IK2", "XX3"}  # the messages that may carry a payload
        payload_keys = tuple((kind, key) for kind, key in zip(kinds, self.payload_keys, strict=False)
                             if kind in carried and key is not None)
        return SessionKeys(session_id, client_ephemeral, pattern, c2s, s2c, payload_keys, rekey_interval)


# --- the data phase -----------------------------------------------------------------

_CHACHA = types.SimpleNamespace(cipher_class=ChaCha20Cipher)


def _cipher_state(key: bytes) -> CipherState:
    cs = CipherState(_CHACHA)
    cs.initialize_key(key)
    return cs


class _KeySchedule:
    """One direction's keys by epoch: epoch e uses REKEY^e(k), k from Split().

    Keys below ``first`` are erased (forward secrecy across rekeys); at most
    ``max_keys`` consecutive epochs are held.
    """

    def __init__(self, key: bytes, max_keys: int) -> None:
        self.first = 0
        self._states = [_cipher_state(key)]
        self._max_keys = max_keys

    def get(self, epoch: int) -> CipherState | None:
        if epoch < self.first or epoch - self.first >= self._max_keys:
            return None
        while self.first + len(self._states) <= epoch:
            self._states.append(_cipher_state(sf.noise_rekey(self._states[-1].k)))
        return self._states[epoch - self.first]

    def forget_before(self, epoch: int) -> None:
        if epoch <= self.first:
            return
        while self.first + len(self._states) <= epoch:  # derive forward before erasing
            self._states.append(_cipher_state(sf.noise_rekey(self._states[-1].k)))
        del self._states[: epoch - self.first]
        self.first = epoch

    def __len__(self) -> int:
        return len(self._states)


@dataclass(slots=True)
class _ReceivedRequest:
    """A CON request received, which this side may answer piggybacked."""

    counter: int
    answer_digest: bytes | None = None  # what was sealed under 2^63 + counter


@dataclass(slots=True)
class _SentRequest:
    """A CON request sent, whose piggybacked answer this side may receive."""

    request: bytes
    counters: list[int] = field(default_factory=list)
    answers: dict[int, bytes] = field(default_factory=dict)  # counter -> digest of the answer frame


@dataclass(frozen=True)
class Opened:
    """A data frame opened: the whole CoAP message and how it came."""

    message: bytes
    #: the sender's counter (Seq frames), the answered request's counter
    #: (piggybacked), or None (an unsealed empty ACK: not authenticated)
    counter: int | None
    is_retransmission: bool
    shape: FrameShape

    @property
    def authenticated(self) -> bool:
        return self.shape is not FrameShape.UNSEALED


class SecureChannel:
    """The data phase of a session, used by both ends after the handshake.

    Counters per direction: the client's data frames start at 1 (counter 0
    was its message in IK1/XX3, even when it sent none), the server's at 0.
    """

    def __init__(self, send_key: bytes, receive_key: bytes, *, session_id: bytes, is_initiator: bool,
                 rekey_interval: int = sf.DEFAULT_REKEY_INTERVAL,
                 duplicate_lifetime: float | Callable[[], float] = sf.DEFAULT_DUPLICATE_LIFETIME) -> None:
        if rekey_interval < sf.MIN_REKEY_INTERVAL:
            raise ValueError(f"rekey_interval must be >= {sf.MIN_REKEY_INTERVAL}")
        self.session_id = session_id
        self.rekey_interval = rekey_interval
        max_keys = (PIGGYBACK_REACH + 2 * sf.ReplayWindow.SIZE + 256) // rekey_interval + 3
        # two cursors per key: Seq nonces n and piggyback nonces 2^63 + n advance separately
        self._send_seq = _KeySchedule(send_key, max_keys)
        self._send_piggy = _KeySchedule(send_key, max_keys)
        self._recv_seq = _KeySchedule(receive_key, max_keys)
        self._recv_piggy = _KeySchedule(receive_key, max_keys)
        self.next_counter = 1 if is_initiator else 0
        self.window = sf.ReplayWindow(duplicate_lifetime)
        self._received: OrderedDict[int, _ReceivedRequest] = OrderedDict()
        self._sent: OrderedDict[int, _SentRequest] = OrderedDict()
        self._sealed: OrderedDict[bytes, bytes] = OrderedDict()

    # -- the message carried by the handshake (counter 0 of the client) --

    def note_handshake_message_sent(self, message: bytes | None) -> None:
        """Client: its IK1/XX3 message was counter 0."""
        if message is not None:
            self._remember_sent(sf.parse_coap_header(message), message, 0)

    def note_handshake_message_received(self, message: bytes | None, handshake_digest: bytes, now: float) -> None:
        """Server: counter 0 is used up; ``message`` (if delivered) may be answered piggybacked."""
        self.window.mark(0, handshake_digest, now)
        if message is not None:
            self._remember_received(sf.parse_coap_header(message), 0)

    # -- sealing --

    def seal(self, message: bytes) -> bytes:
        """The data frame carrying CoAP ``message``; an empty ACK is returned as is.

        Sealing the same bytes again (a CoAP retransmission) returns the same
        frame, so the peer sees a duplicate, not a fresh counter.
        """
        header = sf.validate_message(message)
        shape = sf.message_shape(header)
        if shape is FrameShape.UNSEALED:
            return bytes(message)
        clear = header.raw
        plaintext = bytes(message[len(clear):])
        if shape is FrameShape.PIGGYBACKED:
            return self._seal_piggybacked(header, plaintext)
        cached = self._sealed.get(bytes(message))
        if cached is not None:
            self._sealed.move_to_end(bytes(message))
            return cached
        n = self.next_counter
        if n >= sf.COUNTER_LIMIT:
            raise NonceError("counter space exhausted: re-handshake")
        epoch = sf.rekey_epoch(n, self.rekey_interval)
        self._send_seq.forget_before(epoch)
        cs = self._send_seq.get(epoch)
        assert cs is not None
        ad = clear + bytes([n & 0xFF])
        cs.set_nonce(sf.sequenced_nonce(n))
        frame = ad + cs.encrypt_with_ad(ad, plaintext)
        self.next_counter = n + 1
        if header.type == sf.CON and header.is_request:
            self._remember_sent(header, bytes(message), n)
        self._sealed[bytes(message)] = frame
        while len(self._sealed) > SEAL_CACHE_SIZE:
            self._sealed.popitem(last=False)
        return frame

    def _seal_piggybacked(self, header: sf.CoapHeader, plaintext: bytes) -> bytes:
        request = self._received.get(header.message_id)
        if request is None:
            raise NonceError(f"no recent request with MID {header.message_id} to answer piggybacked")
        digest = sf.frame_digest(header.raw + plaintext)
        if request.answer_digest is not None and request.answer_digest != digest:
            # same nonce, different bytes: would break ChaChaPoly; send a separate response
            raise NonceError(f"request counter {request.counter} was already answered with other bytes")
        cs = self._send_piggy.get(sf.rekey_epoch(request.counter, self.rekey_interval))
        if cs is None:
            raise NonceError(f"request counter {request.counter} is too old to answer piggybacked")
        cs.set_nonce(sf.piggybacked_nonce(request.counter))
        frame = header.raw + cs.encrypt_with_ad(header.raw, plaintext)
        request.answer_digest = digest
        return frame

    def _remember_sent(self, header: sf.CoapHeader, message: bytes, counter: int) -> None:
        entry = self._sent.get(header.message_id)
        if entry is None or entry.request != message:  # a new request reusing the MID replaces the old
            entry = _SentRequest(message)
            self._sent[header.message_id] = entry
        entry.counters.append(counter)
        del entry.counters[:-MAX_COUNTERS_PER_MID]
        self._sent.move_to_end(header.message_id)
        floor = max(0, counter - PIGGYBACK_REACH)
        while self._sent and (len(self._sent) > MAX_MIDS or next(iter(self._sent.values())).counters[-1] < floor):
            self._sent.popitem(last=False)
        self._recv_piggy.forget_before(sf.rekey_epoch(floor, self.rekey_interval))

    def _remember_received(self, header: sf.CoapHeader, counter: int) -> None:
        entry = self._received.get(header.message_id)
        if entry is None or entry.counter != counter:
            self._received[header.message_id] = _ReceivedRequest(counter)
        self._received.move_to_end(header.message_id)
        floor = max(0, self.window.highest - PIGGYBACK_REACH)
        while self._received and (len(self._received) > MAX_RECEIVED_MIDS
                                  or next(iter(self._received.values())).counter < floor):
            self._received.popitem(last=False)
        self._send_piggy.forget_before(sf.rekey_epoch(floor, self.rekey_interval))

    # -- opening --

    def open(self, datagram: bytes, now: float) -> Opened:
        """Authenticate and decrypt a data frame; SecurityError when it does not open.

        Nothing changes unless the frame authenticates.
        """
        header = sf.parse_coap_header(datagram)
        shape = sf.frame_shape(header, len(datagram))
        if shape is FrameShape.UNSEALED:
            return Opened(bytes(datagram), None, False, shape)
        digest = sf.frame_digest(datagram)
        if shape is FrameShape.PIGGYBACKED:
            return self._open_piggybacked(header, datagram, digest)
        clear = header.raw
        seq = datagram[len(clear)]
        n = sf.reconstruct_counter(self.window.highest, seq)
        if n >= sf.COUNTER_LIMIT:
            raise ReplayError("counter beyond the limit")
        verdict = self.window.check(n, digest, now)
        if verdict in (sf.Verdict.REPLAY, sf.Verdict.TOO_OLD):
            raise ReplayError(f"counter {n}: {verdict.value}")
        cs = self._recv_seq.get(sf.rekey_epoch(n, self.rekey_interval))
        if cs is None:
            raise ReplayError(f"counter {n}: key epoch no longer held")
        ad = bytes(datagram[: len(clear) + 1])
        plaintext = _decrypt(cs, sf.sequenced_nonce(n), ad, bytes(datagram[len(clear) + 1:]))
        duplicate = verdict is sf.Verdict.DUPLICATE
        if duplicate:
            self.window.mark_duplicate(n)
        else:
            self.window.mark(n, digest, now)
            self._recv_seq.forget_before(sf.rekey_epoch(self.window.floor, self.rekey_interval))
            if header.type == sf.CON and header.is_request:
                self._remember_received(header, n)
        return Opened(clear + plaintext, n, duplicate, shape)

    def authenticates(self, datagram: bytes) -> bool:
        """Whether a sealed data frame was sealed in this session, whatever the
        replay window says of it; changes nothing.

        ``open`` refuses a replay before decrypting (cheap, and the window's
        verdict is all the receiver needs); this tells a replay of this
        session's frame from a frame of another session that only happens to
        look old here."""
        try:
            header = sf.parse_coap_header(datagram)
            shape = sf.frame_shape(header, len(datagram))
        except FrameError:
            return False
        clear = header.raw
        if shape is FrameShape.UNSEALED:
            return False
        if shape is FrameShape.PIGGYBACKED:
            request = self._sent.get(header.message_id)
            keys = [(self._recv_piggy.get(sf.rekey_epoch(n, self.rekey_interval)), sf.piggybacked_nonce(n))
                    for n in (request.counters if request else ())]
            ad, sealed = clear, bytes(datagram[len(clear):])
        else:
            n = sf.reconstruct_counter(self.window.highest, datagram[len(clear)])
            if n >= sf.COUNTER_LIMIT:
                return False
            keys = [(self._recv_seq.get(sf.rekey_epoch(n, self.rekey_interval)), sf.sequenced_nonce(n))]
            ad, sealed = bytes(datagram[: len(clear) + 1]), bytes(datagram[len(clear) + 1:])
        for cs, nonce in keys:
            if cs is None:
                continue  # erased: what it sealed can no longer be told apart
            try:
                _decrypt(cs, nonce, ad, sealed)
            except AuthenticationError:
                continue
            return True
        return False

    def _open_piggybacked(self, header: sf.CoapHeader, datagram: bytes, digest: bytes) -> Opened:
        request = self._sent.get(header.message_id)
        if request is None:
            raise AuthenticationError(f"piggybacked frame for unknown MID {header.message_id}")
        sealed = bytes(datagram[len(header.raw):])
        for n in reversed(request.counters):
            cs = self._recv_piggy.get(sf.rekey_epoch(n, self.rekey_interval))
            if cs is None:
                continue
            try:
                plaintext = _decrypt(cs, sf.piggybacked_nonce(n), header.raw, sealed)
            except AuthenticationError:
                continue
            duplicate = n in request.answers
            if duplicate and request.answers[n] != digest:  # only if the peer reused a nonce
                raise ReplayError(f"second, different answer to request counter {n}")
            request.answers[n] = digest
            return Opened(header.raw + plaintext, n, duplicate, FrameShape.PIGGYBACKED)
        raise AuthenticationError(f"piggybacked frame for MID {header.message_id} does not authenticate")

    def sizes(self) -> dict[str, int]:
        """Sizes of the bounded structures (tests assert the bounds)."""
        return {
            "window": len(self.window),
            "received_mids": len(self._received),
            "sent_mids": len(self._sent),
            "sealed_cache": len(self._sealed),
            "keys": len(self._send_seq) + len(self._send_piggy) + len(self._recv_seq) + len(self._recv_piggy),
        }


def _decrypt(cs: CipherState, nonce: int, ad: bytes, sealed: bytes) -> bytes:
    cs.set_nonce(nonce)
    try:
        return bytes(cs.decrypt_with_ad(ad, sealed))
    except InvalidTag:
        raise AuthenticationError("frame does not authenticate") from None


# --- the two ends of a handshake ---------------------------------------------------


@dataclass(frozen=True)
class ClientHandshakeDone:
    """What the client learned from IK2 / XX2."""

    channel: SecureChannel
    server_public: bytes
    #: XX3 to send (XX only)
    transmit: bytes | None = None
    #: the server's answer to the early message, carried in IK2
    answer: bytes | None = None
    #: the early message was not answered in IK2: send it again as a data frame
    resend_early: bool = False


class ClientSession:
    """The initiator of one handshake: IK with a pinned server key, XX otherwise.

    ``datagram`` is the handshake message to (re)transmit — byte-identical on
    each retransmission, which the shell times.  ``message`` travels as early
    data in IK1 (counter 0) or in XX3.
    """

    def __init__(self, static_private: bytes, profile_id: int, profile_digest: bytes, *, now: float,
                 server_public: bytes | None = None, message: bytes | None = None,
                 expected_server_public: bytes | None = None, rng: Rng = os.urandom,
                 rekey_interval: int = sf.DEFAULT_REKEY_INTERVAL,
                 duplicate_lifetime: float | Callable[[], float] = sf.DEFAULT_DUPLICATE_LIFETIME,
                 restart: bool = False, unbound: bool = False) -> None:
        if message is not None:
            sf.validate_message(message)
        self.pattern = "IK" if server_public is not None else "XX"
        self.message = message
        self.restart, self.unbound = restart, unbound
        self.profile_id = profile_id
        self.profile_digest = profile_digest
        self.expected_server_public = expected_server_public if server_public is None else server_public
        self._rekey_interval = rekey_interval
        self._duplicate_lifetime = duplicate_lifetime
        kind = DatagramKind.IK1 if self.pattern == "IK" else DatagramKind.XX1
        self._noise = _NoiseHandshake(self.pattern, True, sf.handshake_prologue(kind, profile_id, profile_digest),
                                      static_private, rng(32), server_public)
        payload = (sf.encode_ik1_payload(message, sf.clock_minutes(now), restart=restart, unbound=unbound)
                   if self.pattern == "IK" else b"")
        noise_message = self._noise.write(payload)
        self._echo = noise_message[:4]
        self.ephemeral_public = noise_message[:sf.DH_SIZE]
        self.datagram = sf.build_handshake(kind, noise_message, profile_id, profile_digest)
        self.session_id = sf.session_id_from_hash(self._noise.hash) if self.pattern == "IK" else None
        self.result: ClientHandshakeDone | None = None

    @property
    def complete(self) -> bool:
        return self.result is not None

    def session_keys(self) -> SessionKeys:
        """The finished session's secrets, for the opt-in key log."""
        if self.result is None or self.session_id is None:
            raise HandshakeError("handshake not complete")
        return self._noise.session_keys(self.pattern, True, self.ephemeral_public, self.session_id,
                                        self._rekey_interval)

    def receive(self, datagram: bytes) -> ClientHandshakeDone:
        """Take IK2 / XX2 / REFUSE.  SecurityError: drop it, except the subclasses
        ProfileMismatchError, ServerKeyMismatchError and ServerKeyChanged, which end
        this handshake."""
        if self.result is not None:
            raise HandshakeError("handshake already complete")
        kind = sf.classify(datagram)
        if kind is DatagramKind.REFUSE:
            self._refused(sf.parse_refuse(datagram))
        expected = DatagramKind.IK2 if self.pattern == "IK" else DatagramKind.XX2
        if kind is not expected:
            raise HandshakeError(f"expected {expected.name}, got {kind.name}")
        frame = sf.parse_handshake(datagram)
        payload = self._noise.read(frame.noise_message)
        if self.pattern == "IK":
            answer = sf.decode_ik2_payload(payload)
            if (answer.answer is not None or answer.resend) and self.message is None:
                raise HandshakeError("IK2 answers an early message that was not sent")
            server_public = self.expected_server_public
            assert server_public is not None
            result = ClientHandshakeDone(self._channel(), server_public, None, answer.answer,
                                         answer.resend)
        else:
            if payload:
                raise HandshakeError("XX2 payload must be empty")
            server_public = self._noise.remote_static
            assert server_public is not None
            if self.expected_server_public is not None and server_public != self.expected_server_public:
                raise ServerKeyChanged(
                    f"server key changed: pinned {fingerprint(self.expected_server_public)}, "
                    f"server presented {fingerprint(server_public)}; if the server's key was replaced "
                    f"on purpose, accept the new key (PinStore.accept_change)",
                    pinned=self.expected_server_public, presented=server_public)
            xx3 = sf.build_handshake(DatagramKind.XX3, self._noise.write(
                sf.encode_xx3_payload(self.message, restart=self.restart, unbound=self.unbound)))
            self.session_id = sf.session_id_from_hash(self._noise.hash)
            self.datagram = xx3
            result = ClientHandshakeDone(self._channel(), server_public, xx3)
        self.result = result
        return result

    def _channel(self) -> SecureChannel:
        send_key, receive_key = self._noise.split_keys()
        assert self.session_id is not None
        channel = SecureChannel(send_key, receive_key, session_id=self.session_id, is_initiator=True,
                                rekey_interval=self._rekey_interval, duplicate_lifetime=self._duplicate_lifetime)
        channel.note_handshake_message_sent(self.message)
        return channel

    def _refused(self, refusal: sf.Refusal) -> None:
        if refusal.echo != self._echo:
            raise HandshakeError("REFUSE for another handshake")
        name = f"profile {self.profile_id}"
        if refusal.reason is sf.RefuseReason.PROFILE_MISMATCH:
            assert refusal.server_digest is not None
            raise ProfileMismatchError(
                f"{name}: this end has digest {self.profile_digest.hex()}, the server has "
                f"{refusal.server_digest.hex()}; both ends need the same CBOR table, route table "
                f"and Flate dictionary")
        if refusal.reason is sf.RefuseReason.UNKNOWN_PROFILE:
            raise ProfileMismatchError(f"the server does not hold {name} (digest {self.profile_digest.hex()})")
        if self.pattern != "IK" or self.expected_server_public is None:
            raise HandshakeError("REFUSE (undecryptable) answers only IK1")
        raise ServerKeyMismatchError(
            f"the server could not decrypt IK1: its key is probably not the pinned "
            f"{fingerprint(self.expected_server_public)}")


class ServerSession:
    """The responder side of one handshake, created from IK1 or XX1.

    IK: ``hello`` holds the IK1 payload; the endpoint decides about early data,
    then ``answer()`` writes IK2.  XX: ``answer()`` writes XX2, ``finish()``
    reads XX3.  ``channel`` exists once the handshake is complete.
    """

    def __init__(self, static_private: bytes, first: sf.HandshakeFrame, *, rng: Rng = os.urandom,
                 rekey_interval: int = sf.DEFAULT_REKEY_INTERVAL,
                 duplicate_lifetime: float | Callable[[], float] = sf.DEFAULT_DUPLICATE_LIFETIME) -> None:
        if first.kind not in sf.HELLO_KINDS:
            raise HandshakeError(f"a handshake starts with IK1 or XX1, not {first.kind.name}")
        self.pattern = "IK" if first.kind is DatagramKind.IK1 else "XX"
        self._rekey_interval = rekey_interval
        self._duplicate_lifetime = duplicate_lifetime
        try:
            self._noise = _NoiseHandshake(self.pattern, False, first.prologue, static_private, rng(32))
        except _LIBRARY_ERRORS as exc:  # malformed key material
            raise HandshakeError(f"cannot start handshake ({type(exc).__name__})") from None
        payload = self._noise.read(first.noise_message)
        self.client_ephemeral = first.noise_message[:sf.DH_SIZE]
        self.hello: sf.HelloPayload | None = None
        self.client_public: bytes | None = None
        self.session_id: bytes | None = None
        if self.pattern == "IK":
            try:
                self.hello = sf.decode_ik1_payload(payload)
            except HandshakeError as exc:
                # it decrypted: the client's pinned key is right, and a HandshakeError here
                # would tell it otherwise (REFUSE 3 sends it to XX); a malformed frame is dropped
                raise FrameError(f"IK1 payload: {exc}") from None
            self.client_public = self._noise.remote_static
            # named at IK1, so the endpoint can route the early message before IK2 exists
            self.session_id = sf.session_id_from_hash(self._noise.hash)
        elif payload:
            raise HandshakeError("XX1 payload must be empty")
        self.channel: SecureChannel | None = None
        self.finished = False

    def answer(self, answer: bytes | None = None, resend: bool = False) -> bytes:
        """IK: write IK2 (and complete); XX: write XX2."""
        if self.pattern == "IK":
            if answer is not None:
                sf.validate_message(answer)
            ik2 = sf.build_handshake(DatagramKind.IK2, self._noise.write(sf.encode_ik2_payload(answer, resend)))
            self.finished = True
            self.channel = self._make_channel()
            return ik2
        return sf.build_handshake(DatagramKind.XX2, self._noise.write(b""))

    def finish(self, xx3: sf.HandshakeFrame) -> sf.HelloPayload:
        """XX: read XX3; on failure the handshake is left as it was."""
        if self.pattern != "XX" or xx3.kind is not DatagramKind.XX3 or self.finished:
            raise HandshakeError("unexpected XX3")
        payload = self._noise.read(xx3.noise_message)
        # the Noise handshake is over even if the payload is malformed: the session is unusable then
        self.finished = True
        hello = sf.decode_xx3_payload(payload)
        self.client_public = self._noise.remote_static
        self.session_id = sf.session_id_from_hash(self._noise.hash)
        self.hello = hello
        self.channel = self._make_channel()
        return hello

    def session_keys(self) -> SessionKeys:
        """The finished session's secrets, for the opt-in key log."""
        if self.channel is None or self.session_id is None:
            raise HandshakeError("handshake not complete")
        return self._noise.session_keys(self.pattern, False, self.client_ephemeral, self.session_id,
                                        self._rekey_interval)

    def _make_channel(self) -> SecureChannel:
        send_key, receive_key = self._noise.split_keys()
        assert self.session_id is not None
        return SecureChannel(send_key, receive_key, session_id=self.session_id, is_initiator=False,
                             rekey_interval=self._rekey_interval, duplicate_lifetime=self._duplicate_lifetime)
