"""Trust on first use from a fresh HOME: the pin is stored (directory created
0700) and outlives a restart; a pin that cannot be stored is a loud error."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time

import aiohttp

from coap_gateway.secure import keys
from coap_gateway.transport import UdpLink
from tests.helpers.secure import Counting, secure_server


async def client_process(home, server_addr, *extra):
    env = {**os.environ, "HOME": str(home)}
    env.pop("XDG_CONFIG_HOME", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coap_gateway", "client", "--server", f"udp://{server_addr[0]}:{server_addr[1]}",
        "--listen", "127.0.0.1:0", "--profile", "lb2", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)


async def listening_url(proc) -> str:
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "the client gateway exited"
        if "http://127.0.0.1:" in line:
            return "http://" + line.split("http://", 1)[1].split()[0].rstrip(".,")


async def stop(proc) -> None:
    proc.terminate()
    await asyncio.wait_for(proc.communicate(), 60)


async def test_first_contact_from_a_fresh_home_pins_and_refuses_an_impersonator(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    server_link = await UdpLink.open("127.0.0.1", 0)
    addr = server_link.local_address
    real, real_public = keys.generate_keypair()
    server, _ = await secure_server(server_link, Counting(), time.time, static=real)
    proc = await client_process(home, addr)
    try:
        url = await listening_url(proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/_matrix/client/versions") as r:
                await r.read()  # any answer: the handshake (XX, first contact) happened
        pins = home / ".config" / "coap-gateway" / "pins.json"
        for _ in range(100):
            if pins.exists():
                break
            await asyncio.sleep(0.05)
        store = keys.PinStore(pins)
        assert [store.get(name) for name in store.servers()] == [real_public]
        assert stat.S_IMODE(os.stat(pins.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(pins).st_mode) == 0o600
    finally:
        await stop(proc)
        await server.shutdown()
    # an impersonator on the same address after a restart of the client: refused
    server_link = await UdpLink.open(*addr)
    impostor, _ = keys.generate_keypair()
    server, codec = await secure_server(server_link, Counting(), time.time, static=impostor)
    proc = await client_process(home, addr)
    try:
        url = await listening_url(proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/_matrix/client/versions") as r:
                assert r.status >= 500  # the request never reached the impostor
        assert codec.sessions_established == 0  # XX stopped at XX2: the key is not the pinned one
    finally:
        await stop(proc)
        await server.shutdown()


async def test_a_pin_that_cannot_be_stored_stops_the_client_at_once(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".config").write_text("not a directory")  # ~/.config cannot hold coap-gateway/
    server_link = await UdpLink.open("127.0.0.1", 0)
    proc = await client_process(home, server_link.local_address)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2
        assert "cannot store server key pins" in err.decode()
    finally:
        await server_link.close()
