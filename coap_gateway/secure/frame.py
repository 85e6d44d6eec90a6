"""Secure frame layout: datagram kinds, clear headers, counters, replay window.

Pure functions and small value types only (docs/protocol.md, Part III).  Nothing
here holds a key except :func:`noise_rekey`, and nothing reads a clock: the
caller passes ``now`` where time matters.

Two nonce spaces per direction (both < 2^64 - 1, the REKEY nonce):

- a frame with a Seq byte uses the sender's counter ``n`` (``n < 2^63 - 1``);
- a piggybacked response uses ``2^63 + n``, ``n`` the counter of the request
  it answers.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import FrameError, HandshakeError

# --- datagram kinds ---------------------------------------------------------


class DatagramKind(enum.IntEnum):
    """What a datagram is, from its first byte (its CoAP version bits)."""

    INVALID = 0
    IK1 = 1
    IK2 = 2
    XX1 = 3
    XX2 = 4
    XX3 = 5
    RESET = 6
    REFUSE = 7
    WAKE = 8
    DATA = 0x40  # Ver = 1: not a byte value that occurs; a marker


HANDSHAKE_KINDS = frozenset({DatagramKind.IK1, DatagramKind.IK2, DatagramKind.XX1, DatagramKind.XX2, DatagramKind.XX3})


def classify(datagram: bytes) -> DatagramKind:
    """The kind of ``datagram``; INVALID for empty input and unknown first bytes."""
    if not datagram:
        return DatagramKind.INVALID
    first = datagram[0]
    if first >> 6 == 1:
        return DatagramKind.DATA
    if 1 <= first <= 8:
        return DatagramKind(first)
    return DatagramKind.INVALID


# --- the clear CoAP header of a data frame ------------------------------------

CON, NON, ACK, RST = 0, 1, 2, 3
EMPTY_CODE = 0
#: GET, PUT, DELETE, FETCH, iPATCH (RFC 7252, RFC 8132): safe to run twice
IDEMPOTENT_METHODS = frozenset({1, 3, 4, 5, 7})
TAG_SIZE = 16
SEQ_SIZE = 1


@dataclass(frozen=True)
class CoapHeader:
    """The 4-byte CoAP header and the token: the clear part of a data frame."""

    type: int
    code: int
    message_id: int
    token: bytes
    raw: bytes  # header + token, exactly as on the wire

    @property
    def is_request(self) -> bool:
        return 1 <= self.code <= 31  # class 0, not empty

    @property
    def is_response(self) -> bool:
        return self.code >> 5 in (2, 4, 5)

    @property
    def is_idempotent_request(self) -> bool:
        return self.code in IDEMPOTENT_METHODS


def parse_coap_header(message: bytes) -> CoapHeader:
    """The header and token of a CoAP message or data frame (version 1, TKL <= 8)."""
    if len(message) < 4:
        raise FrameError(f"{len(message)}-byte frame is shorter than a CoAP header")
    first = message[0]
    if first >> 6 != 1:
        raise FrameError(f"CoAP version {first >> 6}, not 1")
    tkl = first & 0x0F
    if tkl > 8:
        raise FrameError(f"token length {tkl} > 8")
    if len(message) < 4 + tkl:
        raise FrameError(f"{len(message)}-byte frame is shorter than its {tkl}-byte token")
    return CoapHeader(
        type=(first >> 4) & 0x03,
        code=message[1],
        message_id=int.from_bytes(message[2:4], "big"),
        token=bytes(message[4 : 4 + tkl]),
        raw=bytes(message[: 4 + tkl]),
    )


class FrameShape(enum.Enum):
    """How a CoAP message is carried in a data frame."""

    UNSEALED = "unsealed"  # empty ACK: 4 bytes, as in plain CoAP
    PIGGYBACKED = "piggybacked"  # ACK with a code: header + token + sealed rest, no Seq
    SEQUENCED = "sequenced"  # everything else: header + token + Seq + sealed rest


def message_shape(header: CoapHeader) -> FrameShape:
    """The shape a sender gives a CoAP message (validated by the caller)."""
    if header.type == ACK:
        return FrameShape.UNSEALED if header.code == EMPTY_CODE else FrameShape.PIGGYBACKED
    return FrameShape.SEQUENCED


def frame_shape(header: CoapHeader, frame_length: int) -> FrameShape:
    """The shape of a received data frame; FrameError when the lengths do not fit it."""
    shape = message_shape(header)
    clear = len(header.raw)
    if shape is FrameShape.UNSEALED:
        # an empty message has no token and nothing after the header (RFC 7252 §4.1)
        if frame_length != 4 or clear != 4:
            raise FrameError("empty ACK with a token or a body")
    elif shape is FrameShape.PIGGYBACKED:
        if frame_length < clear + TAG_SIZE:
            raise FrameError("piggybacked frame shorter than its tag")
    elif frame_length < clear + SEQ_SIZE + TAG_SIZE:
        raise FrameError("sequenced frame shorter than Seq + tag")
    return shape


def validate_message(message: bytes) -> CoapHeader:
    """Check a CoAP message handed to the secure layer for sending."""
    header = parse_coap_header(message)
    if header.code == EMPTY_CODE and len(message) != 4:
        raise FrameError("an empty CoAP message is exactly 4 bytes (no token, no body)")
    return header


# --- handshake frames -------------------------------------------------------

PROLOGUE_LABEL = b"coap-gateway/1"
HELLO_KINDS = frozenset({DatagramKind.IK1, DatagramKind.XX1})
DH_SIZE = 32


@dataclass(frozen=True)
class HandshakeFrame:
    """A handshake datagram: kind, (for IK1/XX1) the profile, and the Noise message."""

    kind: DatagramKind
    noise_message: bytes
    profile_id: int | None = None
    profile_digest: bytes | None = None

    @property
    def prologue(self) -> bytes:
        """The clear bytes of the first message, bound into the Noise handshake."""
        assert self.profile_id is not None and self.profile_digest is not None
        return handshake_prologue(self.kind, self.profile_id, self.profile_digest)

    @property
    def ephemeral_echo(self) -> bytes:
        """First 4 bytes of the sender's ephemeral key (IK1/XX1): echoed by REFUSE."""
        return self.noise_message[:4]


def handshake_prologue(kind: DatagramKind, profile_id: int, profile_digest: bytes) -> bytes:
    return PROLOGUE_LABEL + bytes([kind, profile_id]) + profile_digest


def build_handshake(kind: DatagramKind, noise_message: bytes, profile_id: int | None = None,
                    profile_digest: bytes | None = None) -> bytes:
    if kind in HELLO_KINDS:
        if profile_id is None or profile_digest is None or not 0 <= profile_id <= 255 or len(profile_digest) != 2:
            raise ValueError("IK1/XX1 need a profile number (0-255) and a 2-byte profile digest")
        return bytes([kind, profile_id]) + profile_digest + noise_message
    return bytes([kind]) + noise_message


#: the shortest Noise message of each kind (empty payloads; 25519, 16-byte tags)
MIN_NOISE_MESSAGE = {
    DatagramKind.IK1: 32 + 48 + 4 + 16,
    DatagramKind.IK2: 32 + 1 + 16,
    DatagramKind.XX1: 32,
    DatagramKind.XX2: 32 + 48 + 16,
    DatagramKind.XX3: 48 + 1 + 16,
}


def parse_handshake(datagram: bytes) -> HandshakeFrame:
    """Split a handshake datagram; HandshakeError when it is too short for its
    kind (or, XX1, longer than its fixed size: it carries no payload)."""
    kind = classify(datagram)
    if kind not in HANDSHAKE_KINDS:
        raise HandshakeError(f"not a handshake message (first byte {datagram[:1].hex() or 'none'})")
    if kind in HELLO_KINDS:
        clear, frame = 4, HandshakeFrame(kind, bytes(datagram[4:]), datagram[1] if len(datagram) > 1 else None,
                                         bytes(datagram[2:4]))
    else:
        clear, frame = 1, HandshakeFrame(kind, bytes(datagram[1:]))
    if len(datagram) < clear + MIN_NOISE_MESSAGE[kind]:
        raise HandshakeError(f"{kind.name} of {len(datagram)} bytes is too short")
    if kind is DatagramKind.XX1 and len(datagram) != clear + MIN_NOISE_MESSAGE[kind]:
        raise HandshakeError(f"XX1 of {len(datagram)} bytes: it is {clear + MIN_NOISE_MESSAGE[kind]}, no payload")
    return frame


# --- handshake payloads (inside the Noise messages) -----------------------------

FLAG_MESSAGE = 0x01  # IK1/XX3: a CoAP message follows; IK2: an answer to it follows
FLAG_RESEND = 0x02  # IK2: early message not answered here; send it again as data
#: IK1/XX3: this client starts afresh (a new process): once the session is
#: validated, the server closes the device's other sessions and forgets its
#: CoAP exchanges (message IDs start over).  An IK1 with it carries no early data.
FLAG_RESTART = 0x04
#: IK1/XX3: the client holds no binding state: the server forgets the
#: device's token and Route handles (§8a) once the session is validated
FLAG_UNBOUND = 0x08
HELLO_FLAGS = FLAG_MESSAGE | FLAG_RESTART | FLAG_UNBOUND
MINUTES_MODULUS = 1 << 24  # 31.9 years: an IK1 never becomes acceptable again
#: the largest early message (IK1's CoAP message) a server accepts; a client
#: sends a longer request after IK2 instead (docs/protocol.md, early data)
MAX_EARLY_MESSAGE = 512


@dataclass(frozen=True)
class HelloPayload:
    """IK1 (with minutes) or XX3 (without) payload: flags, [minutes], [message]."""

    message: bytes | None
    minutes: int | None = None
    restart: bool = False
    unbound: bool = False


def _hello_flags(message: bytes | None, restart: bool, unbound: bool) -> int:
    return ((FLAG_MESSAGE if message is not None else 0) | (FLAG_RESTART if restart else 0)
            | (FLAG_UNBOUND if unbound else 0))


@dataclass(frozen=True)
class AnswerPayload:
    """IK2 payload: flags, [answer]."""

    answer: bytes | None
    resend: bool


def clock_minutes(now: float) -> int:
    """Whole minutes since the Unix epoch, modulo 2^24."""
    return (int(now) // 60) % MINUTES_MODULUS


def minutes_skew(minutes: int, now: float) -> int:
    """Signed distance in minutes from the server clock to ``minutes``."""
    d = (minutes - clock_minutes(now)) % MINUTES_MODULUS
    return d - MINUTES_MODULUS if d >= MINUTES_MODULUS // 2 else d


def encode_ik1_payload(message: bytes | None, minutes: int, *, restart: bool = False, unbound: bool = False) -> bytes:
    return bytes([_hello_flags(message, restart, unbound)]) + minutes.to_bytes(3, "big") + (message or b"")


def decode_ik1_payload(payload: bytes) -> HelloPayload:
    if len(payload) < 4:
        raise HandshakeError("IK1 payload shorter than flags + minutes")
    flags, minutes, rest = payload[0], int.from_bytes(payload[1:4], "big"), bytes(payload[4:])
    return HelloPayload(_flagged_message(flags, rest, "IK1", HELLO_FLAGS), minutes,
                        bool(flags & FLAG_RESTART), bool(flags & FLAG_UNBOUND))


def encode_xx3_payload(message: bytes | None, *, restart: bool = False, unbound: bool = False) -> bytes:
    return bytes([_hello_flags(message, restart, unbound)]) + (message or b"")


def decode_xx3_payload(payload: bytes) -> HelloPayload:
    if len(payload) < 1:
        raise HandshakeError("XX3 payload has no flags")
    flags = payload[0]
    return HelloPayload(_flagged_message(flags, bytes(payload[1:]), "XX3", HELLO_FLAGS), None,
                        bool(flags & FLAG_RESTART), bool(flags & FLAG_UNBOUND))


def _flagged_message(flags: int, rest: bytes, name: str, allowed: int = FLAG_MESSAGE) -> bytes | None:
    if flags & ~allowed:
        raise HandshakeError(f"{name} flags {flags:#04x} has reserved bits set")
    if not flags & FLAG_MESSAGE:
        if rest:
            raise HandshakeError(f"{name} carries bytes but no message flag")
        return None
    validate_message(rest)
    return rest


def encode_ik2_payload(answer: bytes | None, resend: bool) -> bytes:
    flags = (FLAG_MESSAGE if answer is not None else 0) | (FLAG_RESEND if resend else 0)
    return bytes([flags]) + (answer or b"")


def decode_ik2_payload(payload: bytes) -> AnswerPayload:
    if len(payload) < 1:
        raise HandshakeError("IK2 payload has no flags")
    flags, rest = payload[0], bytes(payload[1:])
    if flags & ~(FLAG_MESSAGE | FLAG_RESEND) or flags == FLAG_MESSAGE | FLAG_RESEND:
        raise HandshakeError(f"IK2 flags {flags:#04x} are invalid")
    answer = _flagged_message(flags & FLAG_MESSAGE, rest, "IK2")
    return AnswerPayload(answer, bool(flags & FLAG_RESEND))


# --- RESET and REFUSE ---------------------------------------------------------


class RefuseReason(enum.IntEnum):
    PROFILE_MISMATCH = 1  # followed by the server's 2-byte digest of that profile
    UNKNOWN_PROFILE = 2
    UNDECRYPTABLE = 3  # IK1 did not decrypt: the client's pinned server key is wrong


@dataclass(frozen=True)
class Refusal:
    reason: RefuseReason
    echo: bytes  # first 4 bytes of the refused message's ephemeral key
    server_digest: bytes | None = None


def build_reset(frame_header: bytes) -> bytes:
    """RESET echoing the 4-byte CoAP header of the frame no session authenticated."""
    return bytes([DatagramKind.RESET]) + frame_header[:4]


def parse_reset(datagram: bytes) -> bytes:
    """The echoed CoAP header of a RESET."""
    if len(datagram) != 5 or datagram[0] != DatagramKind.RESET:
        raise FrameError("malformed RESET")
    return bytes(datagram[1:5])


#: WAKE, the whole datagram: a responder that has a request for its
#: initiator and no session asks it to open or check the session
WAKE_DATAGRAM = bytes([DatagramKind.WAKE])


def build_refuse(reason: RefuseReason, echo: bytes, server_digest: bytes | None = None) -> bytes:
    body = bytes([DatagramKind.REFUSE, reason]) + echo[:4].ljust(4, b"\0")
    if reason is RefuseReason.PROFILE_MISMATCH:
        assert server_digest is not None and len(server_digest) == 2
        body += server_digest
    return body


def parse_refuse(datagram: bytes) -> Refusal:
    if len(datagram) < 6 or datagram[0] != DatagramKind.REFUSE:
        raise FrameError("malformed REFUSE")
    try:
        reason = RefuseReason(datagram[1])
    except ValueError:
        raise FrameError(f"REFUSE with unknown reason {datagram[1]}") from None
    expected = 8 if reason is RefuseReason.PROFILE_MISMATCH else 6
    if len(datagram) != expected:
        raise FrameError(f"REFUSE reason {reason.name} of {len(datagram)} bytes")
    return Refusal(reason, bytes(datagram[2:6]), bytes(datagram[6:8]) if expected == 8 else None)


# --- counters and nonces ------------------------------------------------------

PIGGYBACK_BASE = 1 << 63
#: counters stay below 2^63 - 1 so that 2^63 + n never reaches 2^64 - 1, the REKEY nonce
COUNTER_LIMIT = (1 << 63) - 1
REKEY_NONCE = (1 << 64) - 1
#: the wire format's rekey interval; not negotiated, both ends must use the same
DEFAULT_REKEY_INTERVAL = 1 << 16
MIN_REKEY_INTERVAL = 8
SEQ_REACH_BACK = 128  # Seq reconstruction: −128 … +127 around highest + 1
SEQ_REACH_AHEAD = 127


def reconstruct_counter(highest_seen: int, seq_byte: int) -> int:
    """The counter with low byte ``seq_byte`` closest to ``highest_seen + 1``.

    ``highest_seen`` is −1 before anything was received.  The result lies in
    ``highest_seen + 1 - 128 … highest_seen + 1 + 127`` and is never negative.
    """
    expected = highest_seen + 1
    candidate = (expected & ~0xFF) | (seq_byte & 0xFF)
    if candidate - expected > SEQ_REACH_AHEAD:
        candidate -= 256
    elif candidate - expected < -SEQ_REACH_BACK:
        candidate += 256
    if candidate < 0:
        candidate += 256
    return candidate


def sequenced_nonce(counter: int) -> int:
    if not 0 <= counter < COUNTER_LIMIT:
        raise ValueError(f"counter {counter} outside 0 … 2^63 - 2")
    return counter


def piggybacked_nonce(request_counter: int) -> int:
    return PIGGYBACK_BASE + sequenced_nonce(request_counter)


def rekey_epoch(counter: int, rekey_interval: int) -> int:
    """The key epoch of counter ``n`` (either nonce space): ``n // rekey_interval``.

    Epoch ``e`` uses ``REKEY^e(k)``, ``k`` the key from Noise ``Split()``.
    """
    return (counter & (PIGGYBACK_BASE - 1)) // rekey_interval


def noise_rekey(key: bytes) -> bytes:
    """Noise §11.3 REKEY(k): the first 32 bytes of ENCRYPT(k, 2^64 − 1, ε, 32 zero bytes)."""
    nonce = b"\0\0\0\0" + REKEY_NONCE.to_bytes(8, "little")
    return ChaCha20Poly1305(key).encrypt(nonce, b"\0" * 32, b"")[:32]


def frame_digest(datagram: bytes) -> bytes:
    """Short digest to recognise a byte-identical retransmission."""
    return hashlib.blake2s(datagram, digest_size=8).digest()


def session_id_from_hash(handshake_hash: bytes) -> bytes:
    """``BLAKE2s(handshake_hash)[:8]``: names a session in logs and tables."""
    return hashlib.blake2s(handshake_hash).digest()[:8]


def profile_digest(cbor_table_digest: str, route_table_digest: str, flate_digest: str | None,
                   schemas_digest: str | None = None, timeline_digest: str | None = None) -> bytes:
    """The 2-byte profile digest sent in IK1/XX1.

    SHA-256 over the content identifiers (``sha256:<hex>``, ``none`` for
    a profile without a Flate dictionary), each followed by a newline: the
    CBOR table, the route table, the dictionary, — only for profiles of
    the compact form — the schema table and — only for profiles with one
    (lb4) — the timeline form's table.
    """
    if timeline_digest and not schemas_digest:
        raise ValueError("a timeline table belongs to a profile of the compact form")
    extra = tuple(d for d in (schemas_digest, timeline_digest) if d)
    ids = (cbor_table_digest, route_table_digest, flate_digest or "none") + extra
    text = "".join(f"{d}\n" for d in ids)
    return hashlib.sha256(text.encode("ascii")).digest()[:2]


# --- replay window ------------------------------------------------------------


class Verdict(enum.Enum):
    FRESH = "fresh"
    DUPLICATE = "duplicate"  # byte-identical retransmission of a frame already accepted
    REPLAY = "replay"  # counter already used by other bytes, or duplicate too late
    TOO_OLD = "too old"  # below the window


#: CoAP EXCHANGE_LIFETIME (RFC 7252 §4.8.2): how long the peer's CoAP layer
#: still answers a duplicate from its cache; later a duplicate is a replay
DEFAULT_DUPLICATE_LIFETIME = 247.0
#: duplicates of one frame passed on at once: CoAP's MAX_RETRANSMIT (RFC 7252
#: §4.8), plus one more for each doubling of the time since the first copy
#: (``duplicates_allowed``).  Each copy makes the receiver's CoAP resend its
#: cached answer to the (maybe spoofed) sender, so a replayer must not get
#: one per datagram; but a peer on a lossy slow link may retransmit more
#: often than 4 times (meshsim's lossy scenarios: 10), each after twice the
#: wait before, and every one of those must still be answered
MAX_DUPLICATES = 4


def duplicates_allowed(elapsed: float) -> float:
    """How many copies of a frame first seen ``elapsed`` seconds ago may have
    been passed on: a genuine k-th retransmission comes at least
    ACK_TIMEOUT × (2^k − 1) ≥ 2^k − 1 s after the first (ACK_TIMEOUT ≥ 1 s
    on every link this layer serves; faster ones need at most the 4), so
    4 + log2(1 + elapsed) covers it; a replayer gets ~12 within 247 s."""
    return MAX_DUPLICATES + math.log2(1.0 + max(0.0, elapsed))


class ReplayWindow:
    """The last 64 counters accepted, as a bitmap (RFC 4303 §3.4.3, RFC 6479).

    Bit ``i`` of the bitmap stands for counter ``highest - i``.  Next to it, the
    digest and arrival time of the first frame accepted with each counter in
    the window, so that a byte-identical retransmission can be told apart
    from a replay: it is passed on as a duplicate (CoAP answers it from its
    cache) for ``duplicate_lifetime`` seconds and at most
    ``duplicates_allowed`` times, then refused.  The lifetime
    may be a function: the link's, which follows its timers (a peer on a
    100 bit/s link retransmits for many minutes; a retransmission refused as
    a replay is never acknowledged, and the peer's exchange fails).
    """

    SIZE = 64

    def __init__(self, duplicate_lifetime: float | Callable[[], float] = DEFAULT_DUPLICATE_LIFETIME) -> None:
        self.highest = -1
        self._bitmap = 0
        #: counter -> (digest, arrival time, duplicates passed on)
        self._first_seen: dict[int, tuple[bytes, float, int]] = {}
        self.duplicate_lifetime = duplicate_lifetime

    def check(self, counter: int, digest: bytes, now: float) -> Verdict:
        """What accepting ``counter`` would mean; does not change the window."""
        if counter > self.highest:
            return Verdict.FRESH
        offset = self.highest - counter
        if offset >= self.SIZE:
            return Verdict.TOO_OLD
        if not self._bitmap >> offset & 1:
            return Verdict.FRESH
        first = self._first_seen.get(counter)
        lifetime = self.duplicate_lifetime() if callable(self.duplicate_lifetime) else self.duplicate_lifetime
        if (first is not None and first[0] == digest and now - first[1] <= lifetime
                and first[2] < duplicates_allowed(now - first[1])):
            return Verdict.DUPLICATE
        return Verdict.REPLAY

    def mark(self, counter: int, digest: bytes, now: float) -> None:
        """Record an authenticated fresh frame."""
        if counter > self.highest:
            shift = counter - self.highest
            if shift < self.SIZE:
                self._bitmap = (self._bitmap << shift | 1) & ((1 << self.SIZE) - 1)
                # every counter held is >= the old floor: forget the ones the
                # window slid past, not a scan of all 64 on every frame
                old_floor = self.highest - self.SIZE + 1
                for passed in range(max(0, old_floor), old_floor + shift):
                    self._first_seen.pop(passed, None)
            else:
                self._bitmap = 1
                self._first_seen.clear()
            self.highest = counter
        else:
            offset = self.highest - counter
            if offset >= self.SIZE:
                return
            self._bitmap |= 1 << offset
        self._first_seen.setdefault(counter, (digest, now, 0))

    def mark_duplicate(self, counter: int) -> None:
        """A duplicate of ``counter`` (verdict DUPLICATE) was passed on."""
        first = self._first_seen.get(counter)
        if first is not None:
            self._first_seen[counter] = (first[0], first[1], first[2] + 1)

    def __len__(self) -> int:
        return len(self._first_seen)

    @property
    def floor(self) -> int:
        """The lowest counter the window can still accept."""
        return max(0, self.highest - self.SIZE + 1)
