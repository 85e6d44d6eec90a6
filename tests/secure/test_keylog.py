"""The opt-in key log's secrets (``SessionKeys``): off by default, and enough
to read a session's frames both ways with nothing but ChaCha20 — as the
Wireshark dissector does (docs/protocol.md, "Key log format")."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from coap_gateway.secure import frame as sf
from coap_gateway.secure.events import KEYLOG_LABEL, SessionKeys, Transmit
from tests.helpers.secure_world import World, get, new_client, new_server, of, post

TAG = 16


def keystream_xor(key: bytes, nonce: int, data: bytes) -> bytes:
    """ChaCha20 as Noise's ChaChaPoly encrypts (block counter 1 on), no tag check."""
    iv = (1).to_bytes(4, "little") + b"\0\0\0\0" + nonce.to_bytes(8, "little")
    return Cipher(algorithms.ChaCha20(key, iv), mode=None).encryptor().update(data)


def parse_line(line: str) -> dict[str, str]:
    label, *fields = line.split(" ")
    assert label == KEYLOG_LABEL
    return dict(f.split("=", 1) for f in fields)


def world_with_keys(**client_kw) -> tuple[World, str]:
    world = World(new_server())
    world.server.export_keys = True
    client = world.add("A", new_client(**client_kw))
    client.export_keys = True
    return world, "A"


def test_no_secrets_unless_asked():
    world = World(new_server())
    world.add("A", new_client())
    world.client_send("A", get(0x100))
    world.client_send("A", post(0x101))
    assert not of(world.server_events, SessionKeys) and not of(world.client_events["A"], SessionKeys)


def test_ik_both_ends_log_the_same_line_and_it_reads_every_frame():
    world, addr = world_with_keys()
    world.client_send(addr, get(0x100))  # IK1 with an early GET, answered inside IK2
    world.client_send(addr, post(0x101))  # a data frame, answered piggybacked
    [server_keys] = of(world.server_events, SessionKeys)
    [client_keys] = of(world.client_events[addr], SessionKeys)
    assert server_keys == client_keys
    line = client_keys.keylog_line()
    assert "\n" not in line and client_keys.client_to_server.hex() not in repr(client_keys)
    fields = parse_line(line)
    assert fields["pattern"] == "IK" and fields["rekey"] == str(sf.DEFAULT_REKEY_INTERVAL)
    assert set(fields) == {"eph", "sid", "pattern", "c2s", "s2c", "ik1", "ik2", "rekey"}

    ups = [t.data for t in of(world.client_events[addr], Transmit)]
    downs = [t.data for t in of(world.server_events, Transmit)]
    ik1, data_up = ups
    ik2, data_down = downs
    # the capture names the handshake by its ephemeral key, in the clear after 4 bytes
    assert ik1[4:36].hex() == fields["eph"]
    # IK1: kind, profile, digest | e 32 | s 32+16 | payload: flags, minutes(3), the early GET
    early = keystream_xor(bytes.fromhex(fields["ik1"]), 0, ik1[84:-TAG])
    assert early[4:] == get(0x100)
    # IK2: kind | e 32 | payload: flags, the answer
    answer = keystream_xor(bytes.fromhex(fields["ik2"]), 0, ik2[33:-TAG])
    assert answer[0] == 0x01 and answer[1:5] == bytes([0x61, 0x45, 0x01, 0x00])
    # the request: counter 1, Seq after the 4-byte header and 1-byte token
    clear = 5
    assert data_up[clear] == 1
    request = keystream_xor(bytes.fromhex(fields["c2s"]), 1, data_up[clear + 1:-TAG])
    assert data_up[:clear] + request == post(0x101)
    # its piggybacked answer: nonce 2^63 + the request's counter
    body = keystream_xor(bytes.fromhex(fields["s2c"]), sf.piggybacked_nonce(1), data_down[clear:-TAG])
    assert body.startswith(b"\xffre:")


def test_xx_logs_the_xx3_payload_key():
    world, addr = world_with_keys(server_public=None)
    world.client_send(addr, post(0x200))  # first contact: the POST rides in XX3
    [server_keys] = of(world.server_events, SessionKeys)
    [client_keys] = of(world.client_events[addr], SessionKeys)
    assert server_keys == client_keys
    fields = parse_line(client_keys.keylog_line())
    assert fields["pattern"] == "XX" and {"xx3", "c2s", "s2c"} <= set(fields) and "ik1" not in fields
    xx1, xx3 = [t.data for t in of(world.client_events[addr], Transmit)]
    assert xx1[4:36].hex() == fields["eph"]
    # XX3: kind | s 32+16 | payload: flags, the first message
    first = keystream_xor(bytes.fromhex(fields["xx3"]), 0, xx3[49:-TAG])
    assert first[1:] == post(0x200)


def test_rekeyed_frames_follow_from_the_logged_keys():
    world = World(new_server(rekey_interval=8))
    world.server.export_keys = True
    world.add("A", new_client(rekey_interval=8))
    world.client_send("A", get(0x100))
    for i in range(12):  # counters 1 … 12: epoch 1 from counter 8
        world.client_send("A", post(0x101 + i))
    [keys] = of(world.server_events, SessionKeys)
    assert keys.rekey_interval == 8
    last = of(world.client_events["A"], Transmit)[-1].data
    assert last[5] == 12
    epoch_key = sf.noise_rekey(keys.client_to_server)
    assert last[:5] + keystream_xor(epoch_key, 12, last[6:-TAG]) == post(0x101 + 11)
