"""Frame layout, counters, nonces and the replay window (coap_gateway.secure.frame)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.backends.default.ciphers import ChaCha20Cipher
from noise.state import CipherState

from coap_gateway.errors import FrameError, HandshakeError, SecurityError
from coap_gateway.secure import frame as sf
from coap_gateway.secure.frame import DatagramKind, FrameShape, Verdict


def coap(type_: int, code: int, mid: int, token: bytes = b"", rest: bytes = b"") -> bytes:
    return bytes([0x40 | type_ << 4 | len(token), code]) + mid.to_bytes(2, "big") + token + rest


# --- kinds and headers ---


def test_classify_every_first_byte():
    assert sf.classify(b"") is DatagramKind.INVALID
    for first in range(256):
        kind = sf.classify(bytes([first]))
        if 0x40 <= first <= 0x7F:
            assert kind is DatagramKind.DATA
        elif 1 <= first <= 8:
            assert kind == first
        else:
            assert kind is DatagramKind.INVALID


def test_parse_coap_header():
    h = sf.parse_coap_header(coap(sf.CON, 0x01, 0x1234, b"\xaa\xbb", b"\xb1x"))
    assert (h.type, h.code, h.message_id, h.token) == (sf.CON, 1, 0x1234, b"\xaa\xbb")
    assert h.raw == bytes([0x42, 0x01, 0x12, 0x34, 0xAA, 0xBB])
    assert h.is_request and h.is_idempotent_request and not h.is_response
    assert sf.parse_coap_header(coap(sf.ACK, 0x45, 1)).is_response


@pytest.mark.parametrize("frame, why", [
    (b"", "shorter"),
    (b"\x40\x01\x00", "shorter"),
    (b"\x80\x01\x00\x00", "version 2"),
    (b"\x00\x01\x00\x00", "version 0"),
    (b"\x49\x01\x00\x00" + b"t" * 9, "token length 9"),
    (b"\x44\x01\x00\x00tok", "shorter than its 4-byte token"),
])
def test_parse_coap_header_rejects(frame, why):
    with pytest.raises(FrameError, match=why):
        sf.parse_coap_header(frame)


def test_frame_shapes():
    empty_ack = coap(sf.ACK, 0, 7)
    assert sf.frame_shape(sf.parse_coap_header(empty_ack), 4) is FrameShape.UNSEALED
    piggy = sf.parse_coap_header(coap(sf.ACK, 0x45, 7, b"t"))
    assert sf.frame_shape(piggy, 5 + 16) is FrameShape.PIGGYBACKED
    with pytest.raises(FrameError):
        sf.frame_shape(piggy, 5 + 15)
    con = sf.parse_coap_header(coap(sf.CON, 1, 7, b"t"))
    assert sf.frame_shape(con, 5 + 1 + 16) is FrameShape.SEQUENCED
    with pytest.raises(FrameError):
        sf.frame_shape(con, 5 + 16)
    # RSTs are always sealed: a 4-byte RST is not a valid frame
    rst = sf.parse_coap_header(coap(sf.RST, 0, 7))
    assert sf.message_shape(rst) is FrameShape.SEQUENCED
    with pytest.raises(FrameError):
        sf.frame_shape(rst, 4)
    with pytest.raises(FrameError):  # an empty ACK has no token
        sf.frame_shape(sf.parse_coap_header(coap(sf.ACK, 0, 7, b"t")), 5)


def test_validate_message_rejects_empty_with_body():
    with pytest.raises(FrameError):
        sf.validate_message(coap(sf.ACK, 0, 1) + b"\xff")
    assert sf.validate_message(coap(sf.ACK, 0, 1)).code == 0


# --- handshake frames and payloads ---


def test_handshake_frames_round_trip():
    ik1 = sf.build_handshake(DatagramKind.IK1, b"n" * 100, 2, b"\x12\x34")
    assert ik1[:4] == b"\x01\x02\x12\x34"
    frame = sf.parse_handshake(ik1)
    assert (frame.kind, frame.profile_id, frame.profile_digest, frame.noise_message) == (
        DatagramKind.IK1, 2, b"\x12\x34", b"n" * 100)
    assert frame.prologue == b"coap-gateway/1\x01\x02\x12\x34"
    assert frame.ephemeral_echo == b"nnnn"
    xx2 = sf.build_handshake(DatagramKind.XX2, b"m" * 96)
    assert sf.parse_handshake(xx2).noise_message == b"m" * 96
    with pytest.raises(ValueError):
        sf.build_handshake(DatagramKind.XX1, b"e" * 32)


@pytest.mark.parametrize("kind", sorted(sf.HANDSHAKE_KINDS))
def test_short_handshake_messages_rejected(kind):
    clear = 4 if kind in sf.HELLO_KINDS else 1
    shortest = bytes([kind]) + b"\0" * (clear - 1 + sf.MIN_NOISE_MESSAGE[kind])
    sf.parse_handshake(shortest)
    for cut in range(len(shortest)):
        with pytest.raises(HandshakeError):
            sf.parse_handshake(shortest[:cut])


def test_payloads_round_trip():
    msg = coap(sf.CON, 1, 9, b"t", b"\xb1x")
    assert sf.decode_ik1_payload(sf.encode_ik1_payload(msg, 0xABCDEF)) == sf.HelloPayload(msg, 0xABCDEF)
    assert sf.encode_ik1_payload(None, 5) == b"\x00\x00\x00\x05"
    assert sf.decode_xx3_payload(sf.encode_xx3_payload(msg)).message == msg
    assert sf.decode_xx3_payload(b"\x00") == sf.HelloPayload(None)
    assert sf.decode_ik2_payload(sf.encode_ik2_payload(msg, False)) == sf.AnswerPayload(msg, False)
    assert sf.decode_ik2_payload(b"\x02") == sf.AnswerPayload(None, True)
    assert sf.decode_ik2_payload(b"\x00") == sf.AnswerPayload(None, False)
    for bad in (b"\x03" + msg, b"\x04", b"\x00junk", b"\x01\x40"):
        with pytest.raises(SecurityError):
            sf.decode_ik2_payload(bad)
    with pytest.raises(HandshakeError):
        sf.decode_ik1_payload(b"\x00\x00\x00")


def test_minutes():
    now = 1_700_000_000.0
    m = sf.clock_minutes(now)
    assert m == (1_700_000_000 // 60) % (1 << 24)
    assert sf.minutes_skew(m, now) == 0
    assert sf.minutes_skew((m + 10) % (1 << 24), now) == 10
    assert sf.minutes_skew((m - 10) % (1 << 24), now) == -10
    assert sf.minutes_skew(m, now + 600) == -10
    # across the modulus
    assert sf.minutes_skew(3, (1 << 24) * 60 - 120) == 5


def test_reset_and_refuse():
    assert sf.parse_reset(sf.build_reset(b"\x41\x01\x12\x34")) == b"\x41\x01\x12\x34"
    with pytest.raises(FrameError):
        sf.parse_reset(b"\x06\x41\x01")
    r = sf.parse_refuse(sf.build_refuse(sf.RefuseReason.PROFILE_MISMATCH, b"abcd", b"\xbe\xef"))
    assert r == sf.Refusal(sf.RefuseReason.PROFILE_MISMATCH, b"abcd", b"\xbe\xef")
    assert len(sf.build_refuse(sf.RefuseReason.PROFILE_MISMATCH, b"abcd", b"\xbe\xef")) == 8
    r = sf.parse_refuse(sf.build_refuse(sf.RefuseReason.UNDECRYPTABLE, b"abcd"))
    assert r.reason is sf.RefuseReason.UNDECRYPTABLE and r.server_digest is None
    for bad in (b"\x07\x09abcd", b"\x07\x01abcd", b"\x07\x02abcdXY", b"\x07"):
        with pytest.raises(FrameError):
            sf.parse_refuse(bad)


def test_profile_digest():
    d = sf.profile_digest("sha256:" + "0" * 64, "sha256:" + "1" * 64, None)
    assert len(d) == 2
    assert d == sf.profile_digest("sha256:" + "0" * 64, "sha256:" + "1" * 64, "none")
    assert d != sf.profile_digest("sha256:" + "0" * 64, "sha256:" + "1" * 64, "sha256:" + "2" * 64)


# --- Seq reconstruction ---


def test_reconstruct_counter_examples():
    assert sf.reconstruct_counter(-1, 0) == 0
    assert sf.reconstruct_counter(-1, 5) == 5
    assert sf.reconstruct_counter(0, 1) == 1
    assert sf.reconstruct_counter(254, 0xFF) == 255
    assert sf.reconstruct_counter(255, 0x00) == 256  # across 256
    assert sf.reconstruct_counter(255, 0xFE) == 254  # late frame from before the wrap
    assert sf.reconstruct_counter(300, 0x10) == 272
    assert sf.reconstruct_counter(300, 0xAC) == 428  # +127 ahead
    assert sf.reconstruct_counter(300, 0xAD) == 173  # -128 behind
    assert sf.reconstruct_counter(10, 0xF0) == 240  # never negative


@given(highest=st.integers(-1, 1 << 40), delta=st.integers(-128, 127))
def test_reconstruct_counter_inverts_the_low_byte(highest, delta):
    counter = highest + 1 + delta
    if counter < 0:
        return
    assert sf.reconstruct_counter(highest, counter & 0xFF) == counter


# --- nonces and rekey ---


def test_nonce_spaces_are_disjoint_and_below_rekey_nonce():
    assert sf.sequenced_nonce(0) == 0
    assert sf.piggybacked_nonce(0) == 1 << 63
    top = sf.COUNTER_LIMIT - 1
    assert sf.sequenced_nonce(top) < sf.piggybacked_nonce(0)
    assert sf.piggybacked_nonce(top) < sf.REKEY_NONCE
    for bad in (-1, sf.COUNTER_LIMIT):
        with pytest.raises(ValueError):
            sf.sequenced_nonce(bad)


def test_rekey_epoch():
    assert [sf.rekey_epoch(n, 8) for n in (0, 7, 8, 15, 16)] == [0, 0, 1, 1, 2]
    assert sf.rekey_epoch(sf.piggybacked_nonce(17), 8) == 2  # the piggyback space uses n's epoch
    assert sf.rekey_epoch(65535, sf.DEFAULT_REKEY_INTERVAL) == 0
    assert sf.rekey_epoch(65536, sf.DEFAULT_REKEY_INTERVAL) == 1


def test_noise_rekey_matches_noise_spec_and_library():
    key = bytes(range(32))
    cs = CipherState(type("P", (), {"cipher_class": ChaCha20Cipher})())
    cs.initialize_key(key)
    cs.rekey()
    assert sf.noise_rekey(key) == cs.k
    assert len(sf.noise_rekey(key)) == 32 and sf.noise_rekey(key) != key


def test_session_id():
    assert len(sf.session_id_from_hash(b"h" * 32)) == 8


# --- replay window ---

D1, D2 = b"1" * 8, b"2" * 8


def test_replay_window_basics():
    w = sf.ReplayWindow(duplicate_lifetime=100)
    assert w.check(0, D1, 0) is Verdict.FRESH
    w.mark(0, D1, 0)
    assert w.check(0, D1, 50) is Verdict.DUPLICATE  # identical retransmission
    assert w.check(0, D2, 50) is Verdict.REPLAY  # other bytes, same counter
    assert w.check(0, D1, 101) is Verdict.REPLAY  # too late for a retransmission
    w.mark(5, D1, 1)
    assert w.check(3, D1, 1) is Verdict.FRESH  # reordering within the window
    w.mark(3, D1, 1)
    assert w.check(3, D1, 1) is Verdict.DUPLICATE
    w.mark(100, D1, 2)
    assert w.check(37, D1, 2) is Verdict.FRESH  # lowest still in the window: 100 - 63
    assert w.check(36, D1, 2) is Verdict.TOO_OLD
    assert w.check(5, D1, 2) is Verdict.TOO_OLD
    assert w.floor == 37 and len(w) <= 64


def test_replay_window_passes_a_few_duplicates_on_not_every_replayed_copy():
    """A genuine peer's k-th retransmission comes at least 2^k − 1 s after the
    first copy (ACK_TIMEOUT ≥ 1 s, doubling); copies faster than that are a
    replayer's, and each would make CoAP resend its answer."""
    w = sf.ReplayWindow()
    w.mark(7, D1, 0)
    for _ in range(sf.MAX_DUPLICATES):  # at once: CoAP's MAX_RETRANSMIT
        assert w.check(7, D1, 0) is Verdict.DUPLICATE
        w.mark_duplicate(7)
    assert w.check(7, D1, 0) is Verdict.REPLAY
    w.mark(8, D1, 0)  # per counter
    assert w.check(8, D1, 0) is Verdict.DUPLICATE
    # a peer on a lossy slow link: 10 retransmissions, ACK_TIMEOUT 20 s, each wait doubled
    w = sf.ReplayWindow(duplicate_lifetime=50_000)
    w.mark(1, D1, 0)
    for k in range(1, 11):
        assert w.check(1, D1, 20.0 * (2**k - 1)) is Verdict.DUPLICATE, k
        w.mark_duplicate(1)
    # a replayer sending copy after copy for the default duplicate lifetime
    w = sf.ReplayWindow()
    w.mark(2, D1, 0)
    passed = 0
    for t in range(248):
        for _ in range(10):
            if w.check(2, D1, t) is Verdict.DUPLICATE:
                w.mark_duplicate(2)
                passed += 1
    assert passed == 12  # below 4 + log2(1 + 247) ≈ 11.95, not 2 480


def test_xx1_carries_no_payload():
    xx1 = sf.build_handshake(DatagramKind.XX1, b"e" * 32, 2, b"\x12\x34")
    assert sf.parse_handshake(xx1).noise_message == b"e" * 32
    with pytest.raises(HandshakeError):
        sf.parse_handshake(xx1 + b"\0")


def test_replay_window_duplicate_lifetime_follows_the_link():
    """On a slow lossy link a peer retransmits for longer than the default
    247 s (found in virtual time at 100 bit/s, 30 % loss: a notification
    re-sent 278 s after its first copy arrived was refused as a replay,
    never acknowledged, and the observation died); the lifetime is the
    link's, asked when a duplicate comes."""
    link = {"lifetime": 100.0}
    w = sf.ReplayWindow(duplicate_lifetime=lambda: link["lifetime"])
    w.mark(0, D1, 0)
    assert w.check(0, D1, 101) is Verdict.REPLAY
    link["lifetime"] = 1000.0  # the link was reshaped slower: its timers, and this, grow
    assert w.check(0, D1, 101) is Verdict.DUPLICATE and w.check(0, D1, 999) is Verdict.DUPLICATE
    assert w.check(0, D2, 101) is Verdict.REPLAY  # other bytes stay a replay whatever the lifetime


def test_the_transport_gives_the_secure_layer_its_link_lifetime():
    from coap_gateway.transport.coap import LinkAwareMessageManager, LinkTuning
    from coap_gateway.transport.timing import LinkBudget, RetransmissionTimer

    slow = LinkBudget(rate_bps=100, latency=2.5, max_retransmit=10)
    mman = LinkAwareMessageManager.__new__(LinkAwareMessageManager)
    mman.budget, mman._longest_peer_lifetime = slow, 0.0
    expected = LinkTuning(RetransmissionTimer(slow)).EXCHANGE_LIFETIME
    assert mman.duplicate_lifetime() == expected > 10 * sf.DEFAULT_DUPLICATE_LIFETIME


def test_replay_window_large_jump():
    w = sf.ReplayWindow()
    w.mark(1, D1, 0)
    w.mark(1000, D1, 0)
    assert w.check(1, D1, 0) is Verdict.TOO_OLD
    assert w.check(999, D1, 0) is Verdict.FRESH
    assert len(w) == 1


@settings(max_examples=200)
@given(st.lists(st.integers(0, 400), max_size=120))
def test_replay_window_matches_a_model(counters):
    """Accepts each counter once, exactly when within 64 of the highest accepted."""
    w = sf.ReplayWindow()
    accepted: set[int] = set()
    for c in counters:
        verdict = w.check(c, c.to_bytes(8, "big"), 0)
        highest = max(accepted, default=-1)
        if c in accepted:
            expected = Verdict.TOO_OLD if c <= highest - 64 else Verdict.DUPLICATE
        elif c <= highest - 64:
            expected = Verdict.TOO_OLD
        else:
            expected = Verdict.FRESH
        assert verdict is expected, (c, highest)
        if verdict is Verdict.FRESH:
            w.mark(c, c.to_bytes(8, "big"), 0)
            accepted.add(c)
        # it holds exactly the accepted counters still in the window
        assert len(w) == len({a for a in accepted if a >= w.floor}) <= 64


def test_frame_digest_differs():
    a = os.urandom(40)
    b = bytes([a[0] ^ 1]) + a[1:]
    assert sf.frame_digest(a) == sf.frame_digest(bytes(a)) != sf.frame_digest(b)
