"""Key files and trust-on-first-use pins (coap_gateway.keys)."""

from __future__ import annotations

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from coap_gateway.errors import KeyFileError, SecurityError, ServerKeyChanged
from coap_gateway.secure import keys


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generate_keypair():
    private, public = keys.generate_keypair()
    assert len(private) == len(public) == 32
    assert keys.public_from_private(private) == public == X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    assert keys.generate_keypair()[0] != private


def test_text_forms():
    public = bytes(range(32))
    text = keys.encode_key(public)
    assert len(text) == 43 and "=" not in text
    assert keys.decode_key(text) == public and keys.decode_key(text + "=\n") == public
    fp = keys.fingerprint(public)
    assert fp.startswith("SHA256:") and len(fp) == 7 + 16
    assert fp != keys.fingerprint(bytes(32))
    for bad in ("not base64!", keys.encode_key(bytes(31)), ""):
        with pytest.raises(KeyFileError):
            keys.decode_key(bad)


def test_private_key_file_round_trip_and_mode(tmp_path):
    private, _ = keys.generate_keypair()
    path = tmp_path / "server.key"
    old_umask = os.umask(0)  # even with a permissive umask the file is 0600
    try:
        keys.write_private_key(path, private)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert keys.read_private_key(path) == private
    assert path.read_text().strip() == keys.encode_key(private)


def test_private_key_is_not_overwritten_unless_forced(tmp_path):
    path = tmp_path / "k"
    first, _ = keys.generate_keypair()
    second, _ = keys.generate_keypair()
    keys.write_private_key(path, first)
    with pytest.raises(FileExistsError):
        keys.write_private_key(path, second)
    assert keys.read_private_key(path) == first
    keys.write_private_key(path, second, force=True)
    assert keys.read_private_key(path) == second and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temporary file left


def test_readable_private_key_is_refused(tmp_path):
    path = tmp_path / "k"
    keys.write_private_key(path, keys.generate_keypair()[0])
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600") as err:
        keys.read_private_key(path)
    assert isinstance(err.value, SecurityError) and "0640" in str(err.value)


def test_malformed_or_missing_private_key(tmp_path):
    with pytest.raises(KeyFileError, match="no private key"):
        keys.read_private_key(tmp_path / "missing")
    path = tmp_path / "bad"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"\xff\xfe garbage")
    os.close(fd)
    with pytest.raises(KeyFileError, match="does not hold a private key"):
        keys.read_private_key(path)


def test_pin_store_trust_on_first_use(tmp_path):
    store = keys.PinStore(tmp_path / "pins.json")
    first, second = keys.generate_keypair()[1], keys.generate_keypair()[1]
    assert store.check("hs.example:5683", first) == "new"
    store.pin("hs.example:5683", first)
    assert mode(store.path) == 0o600
    assert store.check("hs.example:5683", first) == "match"
    assert store.check("other", second) == "new"
    with pytest.raises(ServerKeyChanged) as err:
        store.check("hs.example:5683", second)
    message = str(err.value)
    assert keys.fingerprint(first) in message and keys.fingerprint(second) in message
    assert "pins accept" in message
    with pytest.raises(ServerKeyChanged):
        store.pin("hs.example:5683", second)  # pin never replaces silently
    store.accept_change("hs.example:5683", second)
    assert keys.PinStore(store.path).check("hs.example:5683", second) == "match"
    doc = json.loads(store.path.read_text())
    assert doc["format"] == "coap-gateway/pins" and doc["pins"] == {"hs.example:5683": keys.encode_key(second)}


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"format": "x", "pins": {}}', b'{"format": "coap-gateway/pins", "pins": {"a": 1}}'])
def test_corrupt_pin_file(tmp_path, content):
    path = tmp_path / "pins.json"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        keys.PinStore(path).check("a", bytes(32))
