"""Trust on first use through the whole stack, and the key commands."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from coap_gateway.codec.profile import load_profile
from coap_gateway.errors import ServerKeyChanged
from coap_gateway.secure import keys
from coap_gateway.transport.coap import create_link_endpoint
from coap_gateway.transport.links import UdpLink
from coap_gateway.transport.secure_codec import pinned_client_codec
from tests.helpers.secure import Counting, put, secure_server

PROFILE = load_profile("lb2")


async def connect(pins, server_addr):
    link = await UdpLink.open("127.0.0.1", 0)
    client_priv, _ = keys.generate_keypair()
    codec = pinned_client_codec("hs.example", server_addr, client_priv, PROFILE, pins)
    return await create_link_endpoint(link, codec=codec), codec


async def test_first_contact_pins_then_ik_then_a_changed_key_is_refused_until_accepted(tmp_path):
    pins = keys.PinStore(tmp_path / "pins.json")
    key1, pub1 = keys.generate_keypair()
    server_link = await UdpLink.open("127.0.0.1", 0)
    addr = server_link.local_address
    server, _ = await secure_server(server_link, Counting(), time.time, static=key1)

    client, codec = await connect(pins, addr)
    assert (await put(client, b"first", 20)).payload == b"ok:first"
    assert codec.endpoint.channel is not None and pins.get("hs.example") == pub1  # XX, then pinned
    assert stat.S_IMODE(os.stat(tmp_path / "pins.json").st_mode) == 0o600
    await client.shutdown()

    client, codec = await connect(pins, addr)  # a restarted client: the pin makes it IK
    assert (await put(client, b"second", 20)).payload == b"ok:second"
    await client.shutdown()

    # the server comes back with another key: refused, with both fingerprints
    await server.shutdown()
    key2, pub2 = keys.generate_keypair()
    server_link = await UdpLink.open(*addr)
    server, _ = await secure_server(server_link, Counting(), time.time, static=key2)
    client, codec = await connect(pins, addr)
    with pytest.raises(Exception):
        await put(client, b"third", 10)
    assert isinstance(codec.error, ServerKeyChanged)
    assert keys.fingerprint(pub1) in str(codec.error) and keys.fingerprint(pub2) in str(codec.error)
    assert pins.get("hs.example") == pub1  # nothing changed behind the operator's back
    await client.shutdown()

    pins.accept_change("hs.example", pub2)  # the operator accepts it
    client, codec = await connect(pins, addr)
    assert (await put(client, b"fourth", 20)).payload == b"ok:fourth"
    await client.shutdown(), await server.shutdown()


def run(*args):
    return subprocess.run([sys.executable, "-m", "coap_gateway", *args], capture_output=True, text=True, timeout=60)


def test_keygen_and_pins_commands(tmp_path):
    key = tmp_path / "server.key"
    proc = run("keygen", str(key))
    assert proc.returncode == 0, proc.stderr
    public = keys.decode_key(proc.stdout.strip())
    assert keys.public_from_private(keys.read_private_key(key)) == public
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "SHA256:" in proc.stderr
    again = run("keygen", str(key))
    assert again.returncode == 2 and again.stderr.count("\n") == 1  # never overwritten silently

    pin_file = str(tmp_path / "pins.json")
    proc = run("pins", "accept", "--pins", pin_file, "hs.example", proc.stdout.strip())
    assert proc.returncode == 0 and "now pinned" in proc.stdout
    listing = run("pins", "list", "--pins", pin_file)
    assert "hs.example" in listing.stdout and keys.fingerprint(public) in listing.stdout
    assert run("pins", "accept", "--pins", pin_file, "hs.example", "not-a-key").returncode == 2
    assert run("pins", "forget", "--pins", pin_file, "hs.example").returncode == 0
    assert run("pins", "forget", "--pins", pin_file, "hs.example").returncode == 2
