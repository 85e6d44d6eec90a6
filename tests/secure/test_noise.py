"""Handshakes and the data phase (coap_gateway.secure.noise), with fixed test vectors.

Regenerate tests/vectors/secure_frames.json (only after a deliberate wire change):
    COAP_GATEWAY_WRITE_VECTORS=1 .venv/bin/python -m pytest tests/secure/test_noise.py -k vectors
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.errors import (
    AuthenticationError,
    HandshakeError,
    NonceError,
    ProfileMismatchError,
    ReplayError,
    SecurityError,
    ServerKeyChanged,
    ServerKeyMismatchError,
)
from coap_gateway.secure import frame as sf
from coap_gateway.secure.frame import FrameShape
from coap_gateway.secure.keys import fingerprint
from coap_gateway.secure.keys import public_from_private as public_key
from coap_gateway.secure.noise import ClientSession, SecureChannel, ServerSession

VECTORS = Path(__file__).parents[1] / "vectors" / "secure_frames.json"
PROFILE, DIGEST = 2, b"\x12\x34"
NOW = 1_700_000_000.0


def coap(type_: int, code: int, mid: int, token: bytes = b"", rest: bytes = b"") -> bytes:
    return bytes([0x40 | type_ << 4 | len(token), code]) + mid.to_bytes(2, "big") + token + rest


def fixed_rng(*chunks: bytes):
    queue = list(chunks)

    def rng(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n
        return chunk
    return rng


def key(label: str) -> bytes:
    """A fixed 32-byte key for vectors: SHA-256 of a label."""
    import hashlib
    return hashlib.sha256(label.encode()).digest()


CLIENT_STATIC, SERVER_STATIC = key("client static"), key("server static")
CLIENT_EPHEMERAL, SERVER_EPHEMERAL = key("client ephemeral"), key("server ephemeral")
SERVER_PUBLIC = public_key(SERVER_STATIC)

#: a 40-byte early request: CON GET, 1-byte token, Uri-Path "7" (sync), a 31-byte Uri-Query
EARLY = coap(sf.CON, 0x01, 0x0101, b"\x01", b"\xb1" + b"7" + b"\x4d\x12" + b"since=s72594_4483_1934&timeout=")
assert len(EARLY) == 40
#: a 40-byte piggybacked answer: ACK 2.05, same MID and token, payload
ANSWER = coap(sf.ACK, 0x45, 0x0101, b"\x01", b"\xc1\x3c\xff" + b"\xa1\x07\x78\x1c" + b"x" * 28)
assert len(ANSWER) == 40


def handshake(pattern: str, message: bytes | None = None, answer: bytes | None = None, *,
              client_rng=None, server_rng=None, rekey_interval: int = sf.DEFAULT_REKEY_INTERVAL,
              now: float = NOW):
    """Run a whole handshake in memory; returns (client, server, client result, datagrams)."""
    client = ClientSession(CLIENT_STATIC, PROFILE, DIGEST, now=now,
                           server_public=SERVER_PUBLIC if pattern == "IK" else None, message=message,
                           rng=client_rng or os.urandom, rekey_interval=rekey_interval)
    first = client.datagram
    server = ServerSession(SERVER_STATIC, sf.parse_handshake(first), rng=server_rng or os.urandom,
                           rekey_interval=rekey_interval)
    if pattern == "IK":
        assert server.hello is not None and server.hello.message == message
        second = server.answer(answer)
        done = client.receive(second)
        assert server.channel is not None
        server.channel.note_handshake_message_received(message, sf.frame_digest(first), now)
        return client, server, done, [first, second]
    second = server.answer()
    done = client.receive(second)
    assert done.transmit is not None
    hello = server.finish(sf.parse_handshake(done.transmit))
    assert hello.message == message
    assert server.channel is not None
    server.channel.note_handshake_message_received(message, sf.frame_digest(done.transmit), now)
    return client, server, done, [first, second, done.transmit]


# --- handshake sizes ---


@pytest.mark.parametrize("pattern, message, answer, sizes", [
    ("IK", None, None, [104, 50]),
    ("IK", EARLY, None, [144, 50]),
    ("IK", EARLY, ANSWER, [144, 90]),
    ("XX", None, None, [36, 97, 66]),
    ("XX", EARLY, None, [36, 97, 106]),
])
def test_handshake_sizes(pattern, message, answer, sizes):
    client, server, done, datagrams = handshake(pattern, message, answer)
    assert [len(d) for d in datagrams] == sizes
    assert client.session_id == server.session_id == done.channel.session_id
    assert server.client_public == public_key(CLIENT_STATIC)
    assert done.server_public == SERVER_PUBLIC
    assert done.answer == answer


def test_data_frame_overhead():
    _, server, done, _ = handshake("IK")
    c, s = done.channel, server.channel
    request = coap(sf.CON, 0x02, 0x2000, b"\x07", b"\xb1" + b"9" + b"\xff" + b"p" * 26)
    frame = c.seal(request)
    assert len(frame) == len(request) + 1 + 16  # Seq + tag
    assert frame[:5] == request[:5]  # header and token in clear
    opened = s.open(frame, NOW)
    assert (opened.message, opened.counter, opened.is_retransmission) == (request, 1, False)
    answer = coap(sf.ACK, 0x44, 0x2000, b"\x07")
    piggy = s.seal(answer)
    assert len(piggy) == len(answer) + 16  # tag only
    assert c.open(piggy, NOW) == sf_opened(answer, 1, False, FrameShape.PIGGYBACKED)
    empty_ack = coap(sf.ACK, 0, 0x2000)
    assert s.seal(empty_ack) == empty_ack  # not sealed: 4 bytes
    assert c.open(empty_ack, NOW).counter is None and not c.open(empty_ack, NOW).authenticated
    rst = coap(sf.RST, 0, 0x3000)
    assert len(c.seal(rst)) == 4 + 1 + 16  # RSTs are sealed: a peer never acts on an unauthenticated one
    ping = coap(sf.CON, 0, 0x3001)
    assert s.open(c.seal(ping), NOW).message == ping


def sf_opened(message, counter, duplicate, shape):
    from coap_gateway.secure.noise import Opened
    return Opened(message, counter, duplicate, shape)


def test_counters_start_where_the_spec_says():
    _, server, done, _ = handshake("XX", EARLY)
    c, s = done.channel, server.channel
    assert s.open(c.seal(coap(sf.NON, 1, 1)), NOW).counter == 1  # client's 0 was XX3
    assert c.open(s.seal(coap(sf.NON, 0x45, 2)), NOW).counter == 0  # server starts at 0
    # the XX3 message can be answered piggybacked: nonce 2^63 + 0
    answer = coap(sf.ACK, 0x45, 0x0101, b"\x01")
    assert c.open(s.seal(answer), NOW).counter == 0


# --- failures ---


def test_wrong_pinned_server_key_fails_cleanly():
    wrong = public_key(key("someone else"))
    client = ClientSession(CLIENT_STATIC, PROFILE, DIGEST, now=NOW, server_public=wrong, message=EARLY)
    with pytest.raises(HandshakeError):
        ServerSession(SERVER_STATIC, sf.parse_handshake(client.datagram))
    # the server answers REFUSE(3) echoing the ephemeral; the client reports the pinned key
    refuse = sf.build_refuse(sf.RefuseReason.UNDECRYPTABLE, client.datagram[4:8])
    with pytest.raises(ServerKeyMismatchError, match=fingerprint(wrong)):
        client.receive(refuse)


def test_xx_with_changed_server_key_names_both_fingerprints():
    old = public_key(key("old server key"))
    client = ClientSession(CLIENT_STATIC, PROFILE, DIGEST, now=NOW, expected_server_public=old)
    server = ServerSession(SERVER_STATIC, sf.parse_handshake(client.datagram))
    with pytest.raises(ServerKeyChanged) as err:
        client.receive(server.answer())
    assert fingerprint(old) in str(err.value) and fingerprint(SERVER_PUBLIC) in str(err.value)
    assert isinstance(err.value, SecurityError)


def test_profile_mismatch_names_both_digests():
    client = ClientSession(CLIENT_STATIC, PROFILE, DIGEST, now=NOW, server_public=SERVER_PUBLIC)
    refuse = sf.build_refuse(sf.RefuseReason.PROFILE_MISMATCH, client.datagram[4:8], b"\xbe\xef")
    with pytest.raises(ProfileMismatchError, match="1234.*beef"):
        client.receive(refuse)
    # a REFUSE that does not echo this handshake is just dropped
    client = ClientSession(CLIENT_STATIC, PROFILE, DIGEST, now=NOW, server_public=SERVER_PUBLIC)
    with pytest.raises(HandshakeError) as err:
        client.receive(sf.build_refuse(sf.RefuseReason.PROFILE_MISMATCH, b"nope", b"\xbe\xef"))
    assert type(err.value) is HandshakeError


def test_prologue_binds_the_clear_profile_bytes():
    client = ClientSession(CLIENT_STATIC, PROFILE, DIGEST, now=NOW, server_public=SERVER_PUBLIC)
    tampered = client.datagram[:2] + b"\x99\x99" + client.datagram[4:]
    with pytest.raises(HandshakeError):
        ServerSession(SERVER_STATIC, sf.parse_handshake(tampered))


def test_garbage_does_not_kill_a_handshake_in_progress():
    # client waiting for IK2
    client = ClientSession(CLIENT_STATIC, PROFILE, DIGEST, now=NOW, server_public=SERVER_PUBLIC, message=EARLY)
    server = ServerSession(SERVER_STATIC, sf.parse_handshake(client.datagram))
    ik2 = server.answer(ANSWER)
    for bad in (ik2[:-1] + bytes([ik2[-1] ^ 1]), b"\x02" + bytes(49), b"\x02" + os.urandom(60), b"\x04" + ik2[1:]):
        with pytest.raises(HandshakeError):
            client.receive(bad)
    assert client.receive(ik2).answer == ANSWER
    # server waiting for XX3, client waiting for XX2
    client = ClientSession(CLIENT_STATIC, PROFILE, DIGEST, now=NOW, message=EARLY)
    server = ServerSession(SERVER_STATIC, sf.parse_handshake(client.datagram))
    xx2 = server.answer()
    with pytest.raises(HandshakeError):
        client.receive(xx2[:40] + bytes([xx2[40] ^ 4]) + xx2[41:])
    xx3 = client.receive(xx2).transmit
    assert xx3 is not None
    for bad in (xx3[:-1] + bytes([xx3[-1] ^ 1]), b"\x05" + os.urandom(80)):
        with pytest.raises(HandshakeError):
            server.finish(sf.parse_handshake(bad))
    assert server.finish(sf.parse_handshake(xx3)).message == EARLY


def test_low_order_ephemeral_is_a_handshake_error():
    client = ClientSession(CLIENT_STATIC, PROFILE, DIGEST, now=NOW, server_public=SERVER_PUBLIC)
    with pytest.raises(HandshakeError):
        client.receive(b"\x02" + bytes(32) + bytes(17))
    ik1 = bytearray(client.datagram)
    ik1[4:36] = bytes(32)
    with pytest.raises(HandshakeError):
        ServerSession(SERVER_STATIC, sf.parse_handshake(bytes(ik1)))


# --- the data phase ---


@pytest.fixture
def channels():
    _, server, done, _ = handshake("IK", rekey_interval=8)
    return done.channel, server.channel


def test_retransmission_is_byte_identical_and_a_duplicate(channels):
    c, s = channels
    request = coap(sf.CON, 0x03, 0x10, b"t", b"\xff" + b"body")
    first = c.seal(request)
    assert c.seal(request) == first
    assert not s.open(first, NOW).is_retransmission
    again = s.open(first, NOW + 10)
    assert again.is_retransmission and again.message == request
    with pytest.raises(ReplayError):  # after EXCHANGE_LIFETIME it is a replay
        s.open(first, NOW + 1000)
    # the same answer sealed twice is the same frame (same nonce, same plaintext)
    answer = coap(sf.ACK, 0x44, 0x10, b"t")
    assert s.seal(answer) == s.seal(answer)
    with pytest.raises(NonceError):  # a different answer under the same nonce is refused
        s.seal(coap(sf.ACK, 0x45, 0x10, b"t"))
    with pytest.raises(NonceError):
        s.seal(coap(sf.ACK, 0x45, 0x11, b"t"))  # no such request


def test_authenticates_tells_a_replay_of_its_own_frame_from_another_sessions_frame(channels):
    """The window refuses an old counter before decrypting; ``authenticates``
    says whether the frame is this session's at all (a server deciding on a
    RESET asks it), and changes nothing."""
    c, s = channels
    frames = [c.seal(coap(sf.NON, 0x02, i, b"", b"\xff" + bytes([i]))) for i in range(3)]
    for frame in frames:
        s.open(frame, NOW)
    with pytest.raises(ReplayError):
        s.open(frames[0], NOW + 1000)  # too late for a duplicate
    assert s.authenticates(frames[0])
    _, _, stranger_done, _ = handshake("IK", rekey_interval=8)
    stranger = stranger_done.channel.seal(coap(sf.NON, 0x02, 0, b"", b"\xff\x00"))  # counter 1 too
    with pytest.raises(ReplayError):
        s.open(stranger, NOW)  # this window finds counter 1 used
    assert not s.authenticates(stranger)
    request = s.seal(coap(sf.CON, 0x01, 0x77, b"r"))
    c.open(request, NOW)
    answer = c.seal(coap(sf.ACK, 0x45, 0x77, b"r", b"\xff!"))
    s.open(answer, NOW)
    assert s.authenticates(answer) and not s.authenticates(answer[:-1] + bytes([answer[-1] ^ 1]))
    assert not s.authenticates(coap(sf.ACK, 0, 1)) and not s.authenticates(b"\x41")
    assert s.window.highest == 3 and s.open(frames[2], NOW).is_retransmission  # the window is as it was


def test_old_frames_beyond_window_and_reordering(channels):
    c, s = channels
    frames = [c.seal(coap(sf.NON, 0x02, i, b"", b"\xff" + bytes([i]))) for i in range(100)]
    for i in (5, 3, 4, 0, 1, 2):  # reordering within the window
        assert s.open(frames[i], NOW).counter == i + 1
    s.open(frames[90], NOW)
    with pytest.raises(ReplayError):
        s.open(frames[10], NOW)  # 81 below the highest
    for i in range(30, 90):
        assert s.open(frames[i], NOW).counter == i + 1
    with pytest.raises(ReplayError):
        s.open(frames[30] + b"", NOW + 300)


def test_seq_wraparound_across_256_and_rekeys_with_loss_and_reordering():
    _, server, done, _ = handshake("IK", rekey_interval=8)
    c, s = done.channel, server.channel
    rnd = random.Random(7)
    sent = []
    for i in range(1500):
        msg = coap(sf.NON, 0x02, i & 0xFFFF, b"", b"\xff" + i.to_bytes(2, "big"))
        sent.append((i + 1, msg, c.seal(msg)))
    # lose ~30 %, never more than 100 in a row, and swap neighbours now and then
    kept = [x for x in sent if rnd.random() > 0.3]
    for j in range(0, len(kept) - 1, 7):
        kept[j], kept[j + 1] = kept[j + 1], kept[j]
    for counter, msg, frame in kept:
        opened = s.open(frame, NOW)
        assert (opened.counter, opened.message) == (counter, msg)
    assert s.window.highest == kept[-1][0] or s.window.highest == max(k[0] for k in kept)
    assert s.sizes()["keys"] <= 4 * ((256 + 128 + 256) // 8 + 3)
    assert s.sizes()["window"] <= 64
    # the other direction, across its own epochs, with piggybacked answers in between
    for i in range(300):
        note = coap(sf.CON, 0x45, (0x8000 + i) & 0xFFFF, b"n", b"\xff" + bytes([i & 0xFF]))
        assert c.open(s.seal(note), NOW).counter == i
        request = coap(sf.CON, 0x01, (0x4000 + i) & 0xFFFF, b"r")
        assert s.open(c.seal(request), NOW).message == request
        answer = coap(sf.ACK, 0x45, (0x4000 + i) & 0xFFFF, b"r", b"\xff!")
        assert c.open(s.seal(answer), NOW).message == answer


def test_more_than_127_lost_frames_are_undecryptable(channels):
    c, s = channels
    frames = {i + 1: c.seal(coap(sf.NON, 0x02, i)) for i in range(400)}
    s.open(frames[200], NOW)
    with pytest.raises(SecurityError):
        s.open(frames[350], NOW)  # 149 ahead: reconstructed as 350 - 256
    assert s.open(frames[250], NOW).counter == 250


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_bit_flip_or_truncation_is_rejected(data):
    # fresh channels per example: shared ones would make examples depend on each other
    _c, _s, done, _ = handshake("IK")
    c, s = done.channel, _s.channel
    request = coap(sf.CON, 0x02, data.draw(st.integers(0, 0xFFFF)), b"tk", b"\xff" + b"payload")
    frame = c.seal(request)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    flipped = bytearray(frame)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SecurityError):
        s.open(bytes(flipped), NOW)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(SecurityError):
        s.open(frame[:cut], NOW)
    assert s.open(frame, NOW).message == request


def test_channel_rejects_unknown_piggyback_and_bad_interval(channels):
    c, _ = channels
    with pytest.raises(AuthenticationError):
        c.open(coap(sf.ACK, 0x45, 0x7777, b"", bytes(16)), NOW)
    with pytest.raises(ValueError):
        SecureChannel(bytes(32), bytes(32), session_id=b"x" * 8, is_initiator=True, rekey_interval=4)


def test_bounded_mid_maps(channels):
    c, s = channels
    for i in range(2000):
        s.open(c.seal(coap(sf.CON, 0x01, i, b"t")), NOW)
    sizes = c.sizes() | {"server_" + k: v for k, v in s.sizes().items()}
    assert sizes["sent_mids"] <= 256 and sizes["server_received_mids"] <= 256
    assert sizes["sealed_cache"] <= 16 and sizes["server_window"] <= 64


# --- test vectors ---


def build_vectors() -> dict:
    """Every byte is fixed: static and ephemeral keys, clock, messages."""
    hexed = bytes.hex
    v: dict = {
        "description": "Fixed-key vectors for docs/protocol.md, Part III. Keys are SHA-256 of the labels "
                       "'client static', 'server static', 'client ephemeral', 'server ephemeral'. "
                       "Split keys: c2s = client to server, s2c = server to client.",
        "profile": {"id": PROFILE, "digest": DIGEST.hex()},
        "now": NOW,
        "keys": {
            "client_static_private": hexed(CLIENT_STATIC),
            "client_static_public": hexed(public_key(CLIENT_STATIC)),
            "server_static_private": hexed(SERVER_STATIC),
            "server_static_public": hexed(SERVER_PUBLIC),
            "client_ephemeral_private": hexed(CLIENT_EPHEMERAL),
            "server_ephemeral_private": hexed(SERVER_EPHEMERAL),
        },
    }
    # IK with early data, answered in IK2
    _, server, done, (ik1, ik2) = handshake(
        "IK", EARLY, ANSWER, client_rng=fixed_rng(CLIENT_EPHEMERAL), server_rng=fixed_rng(SERVER_EPHEMERAL))
    c, s = done.channel, server.channel
    request = coap(sf.CON, 0x03, 0x0102, b"\x02", b"\xb1" + b"9" + b"\xff" + b"hello")
    frame_request = c.seal(request)
    assert s.open(frame_request, NOW).message == request
    answer = coap(sf.ACK, 0x44, 0x0102, b"\x02")
    frame_answer = s.seal(answer)
    notification = coap(sf.NON, 0x45, 0x9001, b"\x05", b"\x61\x01\xff" + b"event")
    frame_notification = s.seal(notification)
    v["ik"] = {
        "early_request": hexed(EARLY), "ik1": hexed(ik1),
        "early_answer": hexed(ANSWER), "ik2": hexed(ik2),
        "session_id": hexed(done.channel.session_id),
        "split_c2s": hexed(c._send_seq.get(0).k), "split_s2c": hexed(c._recv_seq.get(0).k),
        "request_counter_1": hexed(request), "frame_request_counter_1": hexed(frame_request),
        "answer_to_counter_1": hexed(answer), "frame_answer_nonce_2^63+1": hexed(frame_answer),
        "notification_counter_0": hexed(notification), "frame_notification_counter_0": hexed(frame_notification),
    }
    # XX without a message in XX3, then a first request
    _, server, done, (xx1, xx2, xx3) = handshake(
        "XX", None, client_rng=fixed_rng(CLIENT_EPHEMERAL), server_rng=fixed_rng(SERVER_EPHEMERAL))
    first = coap(sf.CON, 0x01, 0x0001, b"", b"\xb1" + b"0")
    v["xx"] = {"xx1": hexed(xx1), "xx2": hexed(xx2), "xx3": hexed(xx3),
               "session_id": hexed(done.channel.session_id),
               "request_counter_1": hexed(first), "frame_request_counter_1": hexed(done.channel.seal(first))}
    # rekey: interval 8, counter 8 is the first of epoch 1 (REKEY of the c2s key)
    c2s = bytes.fromhex(v["ik"]["split_c2s"])
    ch = SecureChannel(c2s, bytes(32), session_id=b"\0" * 8, is_initiator=True, rekey_interval=8)
    frames = [ch.seal(coap(sf.NON, 0x02, n, b"", b"\xff" + bytes([n]))) for n in range(1, 9)]
    v["rekey"] = {"interval": 8, "key_epoch_0": hexed(c2s), "key_epoch_1": hexed(sf.noise_rekey(c2s)),
                  "message_counter_8": hexed(coap(sf.NON, 0x02, 8, b"", b"\xff\x08")),
                  "frame_counter_8": hexed(frames[-1])}
    return v


def test_vectors_are_reproduced():
    vectors = build_vectors()
    if os.environ.get("COAP_GATEWAY_WRITE_VECTORS"):
        VECTORS.write_text(json.dumps(vectors, indent=1) + "\n")
    assert json.loads(VECTORS.read_text()) == vectors


def test_vectors_replay_through_fresh_objects():
    v = json.loads(VECTORS.read_text())
    h = bytes.fromhex
    # server side: the stored IK1 yields the stored early request and, with its ephemeral, IK2
    server = ServerSession(h(v["keys"]["server_static_private"]), sf.parse_handshake(h(v["ik"]["ik1"])),
                           rng=fixed_rng(h(v["keys"]["server_ephemeral_private"])))
    assert server.hello.message == h(v["ik"]["early_request"])
    assert server.client_public == h(v["keys"]["client_static_public"])
    assert server.answer(h(v["ik"]["early_answer"])) == h(v["ik"]["ik2"])
    assert server.session_id.hex() == v["ik"]["session_id"]
    server.channel.note_handshake_message_received(server.hello.message, sf.frame_digest(h(v["ik"]["ik1"])), NOW)
    assert server.channel.open(h(v["ik"]["frame_request_counter_1"]), NOW).message == h(v["ik"]["request_counter_1"])
    assert server.channel.seal(h(v["ik"]["answer_to_counter_1"])) == h(v["ik"]["frame_answer_nonce_2^63+1"])
    # client side: the stored IK2 yields the answer; the notification opens
    client = ClientSession(h(v["keys"]["client_static_private"]), v["profile"]["id"], h(v["profile"]["digest"]),
                           now=v["now"], server_public=h(v["keys"]["server_static_public"]),
                           message=h(v["ik"]["early_request"]), rng=fixed_rng(h(v["keys"]["client_ephemeral_private"])))
    assert client.datagram == h(v["ik"]["ik1"])
    done = client.receive(h(v["ik"]["ik2"]))
    assert done.answer == h(v["ik"]["early_answer"])
    assert done.channel.open(h(v["ik"]["frame_notification_counter_0"]), NOW).message == \
        h(v["ik"]["notification_counter_0"])
    # XX: the server reads the stored XX3 after writing the stored XX2
    server = ServerSession(h(v["keys"]["server_static_private"]), sf.parse_handshake(h(v["xx"]["xx1"])),
                           rng=fixed_rng(h(v["keys"]["server_ephemeral_private"])))
    assert server.answer() == h(v["xx"]["xx2"])
    assert server.finish(sf.parse_handshake(h(v["xx"]["xx3"]))).message is None
    server.channel.note_handshake_message_received(None, sf.frame_digest(h(v["xx"]["xx3"])), NOW)
    assert server.session_id.hex() == v["xx"]["session_id"]
    assert server.channel.open(h(v["xx"]["frame_request_counter_1"]), NOW).message == h(v["xx"]["request_counter_1"])
    # rekey
    assert sf.noise_rekey(h(v["rekey"]["key_epoch_0"])) == h(v["rekey"]["key_epoch_1"])
    receiver = SecureChannel(bytes(32), h(v["rekey"]["key_epoch_0"]), session_id=b"\0" * 8, is_initiator=False,
                             rekey_interval=v["rekey"]["interval"])
    receiver.note_handshake_message_received(None, b"", NOW)
    receiver.window.mark(7, b"", NOW)
    opened = receiver.open(h(v["rekey"]["frame_counter_8"]), NOW)
    assert (opened.counter, opened.message) == (8, h(v["rekey"]["message_counter_8"]))
