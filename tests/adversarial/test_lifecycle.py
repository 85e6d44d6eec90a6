"""The gateways' lifetimes under attack and at the edges: half-open HTTP
connections, a server whose key changed, SIGTERM with the server gone, a
server started without its key.  Real sockets and real processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import socket
import sys
import time

import aiohttp
from aiohttp import web

from coap_gateway.app.runner import start_client, start_server
from coap_gateway.codec import DEFAULT_PROFILE, load_profile
from coap_gateway.secure import keys
from coap_gateway.transport import UdpLink
from tests.helpers.scripted import ScriptedServer

PROFILE = load_profile(DEFAULT_PROFILE)


class StubHomeserver(ScriptedServer):
    """Answers /versions: enough for an honest request to cross both gateways."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/_matrix/client/versions", self.versions)

    async def versions(self, request):
        return web.json_response({"versions": ["v1.11"]})


# ---------------------------------------------------------------- half-open

HALF_OPEN = 1200
#: what each kind of half-open connection sends, and how soon the gateway must close it
KINDS = {
    "nothing": (b"", 10 + 3),
    "half a header": (b"GET /_matrix/client/versions HTTP/1.1\r\nHost: gw\r\nUser-Agent: x", 10 + 3),
    "half a body": ((b"PUT /_matrix/client/v3/profile/@a:hs/displayname HTTP/1.1\r\nHost: gw\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"displayname\""), 30 + 3),
    "idle after an answer": (b"GET /_matrix/client/versions HTTP/1.1\r\nHost: gw\r\n\r\n", 30 + 3),
}
IDLE = "idle after an answer"


async def _half_open(port: int, data: bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
    return reader, writer, time.monotonic()


async def _open_for(reader: asyncio.StreamReader, opened: float, limit: float) -> float | None:
    """Seconds until the gateway closed the connection (None: still open after ``limit``)."""
    try:
        async with asyncio.timeout(max(0.0, opened + limit - time.monotonic())):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - opened


async def test_half_open_http_connections_are_closed_and_an_honest_request_still_succeeds():
    async with StubHomeserver() as hs:
        server_link = await UdpLink.open("127.0.0.1", 0)
        server = await start_server(server_link, homeserver=hs.url, profile=PROFILE, static_private=None)
        client = await start_client(await UdpLink.open("127.0.0.1", 0), server_link.local_address, profile=PROFILE)
        port = client.gateway.port
        conns: list[tuple[str, tuple]] = []
        try:
            names = [kind for kind in KINDS if kind != IDLE]
            for i in range(HALF_OPEN):
                kind = names[i % len(names)]
                conns.append((kind, await _half_open(port, KINDS[kind][0])))
            await asyncio.sleep(1)
            held = [c for _, c in conns if not c[0].at_eof()]
            # the attack holds at most the cap; the rest were closed at once
            assert len(held) <= 256, len(held)

            # an honest client, in the middle of it, is served
            started = time.monotonic()
            async with aiohttp.ClientSession() as http, http.get(client.base_url + "/_matrix/client/versions") as r:
                assert r.status == 200 and (await r.json())["versions"] == ["v1.11"]
            honest = time.monotonic() - started
            # a keep-alive connection that got its answer and then says nothing more
            conns.append((IDLE, await _half_open(port, KINDS[IDLE][0])))

            times = await asyncio.gather(*(_open_for(c[0], c[2], KINDS[kind][1]) for kind, c in conns))
            by_kind: dict[str, list[float | None]] = {}
            for (kind, _), t in zip(conns, times):
                by_kind.setdefault(kind, []).append(t)
            still_open = {kind: sum(t is None for t in ts) for kind, ts in by_kind.items()}
            assert still_open == {kind: 0 for kind in KINDS}, still_open
            slowest = {kind: round(max(ts), 1) for kind, ts in by_kind.items()}
            print(f"held after 1 s: {len(held)} of {HALF_OPEN}; honest request {honest * 1000:.0f} ms; "
                  f"closed within {slowest} s; counters {client.counters()}")
            assert honest < 2
        finally:
            for _, (_, writer, _) in conns:
                writer.close()
            await client.stop()
            await server.stop()


# ------------------------------------------------------------ server key changed


async def test_a_changed_server_key_is_a_matrix_error_with_the_command_that_accepts_it(tmp_path):
    """The server gateway comes back with another key: the HTTP client is told
    what happened and how to accept it (before: a generic 504 after the
    link's timeout), and accepting it while the gateway runs is enough."""
    pins = keys.PinStore(tmp_path / "config" / "pins.json")
    key1, pub1 = keys.generate_keypair()
    key2, pub2 = keys.generate_keypair()
    async with StubHomeserver() as homeserver:
        server_link = await UdpLink.open("127.0.0.1", 0)
        address = server_link.local_address
        server = await start_server(server_link, homeserver=homeserver.url, profile=PROFILE, static_private=key1,
                                    state_dir=tmp_path / "state1")
        client = await start_client(await UdpLink.open("127.0.0.1", 0), address, profile=PROFILE,
                                    static_private=keys.generate_keypair()[0], pins=pins, server_name="hs.example")
        try:
            async with aiohttp.ClientSession() as http:
                async def versions():
                    async with http.get(client.gateway.base_url + "/_matrix/client/versions") as r:
                        return r.status, await r.json()

                assert (await versions())[0] == 200
                assert pins.get("hs.example") == pub1
                await server.stop()
                server = await start_server(await UdpLink.open(*address), homeserver=homeserver.url, profile=PROFILE,
                                            static_private=key2, state_dir=tmp_path / "state2")
                asked = time.monotonic()
                status, body = await versions()
                print(body)
                assert time.monotonic() - asked < 15  # two handshakes, not the link's whole timeout
                assert status == 502 and body["errcode"] == "M_UNKNOWN", body
                assert keys.fingerprint(pub1) in body["error"] and keys.fingerprint(pub2) in body["error"]
                command = re.search(r"`coap-gateway (pins accept [^`]+)`", body["error"]).group(1)
                assert pins.get("hs.example") == pub1  # nothing was accepted behind the user's back
                assert (await versions())[0] == 502  # and it stays refused

                proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "coap_gateway", *command.split())
                assert await proc.wait() == 0
                assert pins.get("hs.example") == pub2
                assert (await versions())[0] == 200  # no restart needed
        finally:
            await client.stop()
            await server.stop()


# ----------------------------------------------------------- SIGTERM, server gone


def _unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _command(*args: str, home, ready: str):
    """A coap-gateway command as a user runs it; (process, first match of ``ready`` on stderr)."""
    env = {**os.environ, "HOME": str(home)}
    env.pop("XDG_CONFIG_HOME", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coap_gateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    seen = []
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "exited before it was ready:\n" + "".join(seen)
        seen.append(line)
        match = re.search(ready, line)
        if match:
            return proc, match


async def test_sigterm_with_the_server_unreachable_answers_pending_requests_and_exits_at_once(tmp_path):
    _, server_public = keys.generate_keypair()
    # a slow link's timers: the link gives a request up only after ~2 minutes
    proc, match = await _command("client", "--server", f"udp://127.0.0.1:{_unused_udp_port()}",
                                 "--server-key", keys.encode_key(server_public), "--listen", "127.0.0.1:0",
                                 "--link-rate", "1200bit", "--link-latency", "500ms",
                                 home=tmp_path, ready=r"(http://127\.0\.0\.1:\d+)")
    url = match.group(1)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            async def ask(method, path, **kw):
                async with http.request(method, url + path, headers={"Authorization": "Bearer t"}, **kw) as r:
                    return r.status, await r.json()

            pending = [asyncio.create_task(ask("GET", "/_matrix/client/versions")),
                       asyncio.create_task(ask("PUT", "/_matrix/client/v3/rooms/!r:hs/send/m.room.message/t1",
                                               json={"msgtype": "m.text", "body": "hi"})),
                       asyncio.create_task(ask("GET", "/_matrix/client/v3/sync?since=s1&timeout=30000"))]
            await asyncio.sleep(2)  # all three are waiting on the link
            assert not any(t.done() for t in pending)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            _, err = await asyncio.wait_for(proc.communicate(), 300)
            exited = time.monotonic() - signalled
            answers = await asyncio.gather(*pending, return_exceptions=True)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    print(f"exit {exited:.1f} s after SIGTERM; answers {answers}")
    assert exited < 10, (exited, err.decode()[-2000:])
    assert proc.returncode == 0, err.decode()[-2000:]
    for answer in answers:
        assert not isinstance(answer, BaseException), answers  # each got an answer, not a reset
        status, body = answer
        assert status in (503, 504) and body["errcode"] and "shutting down" in body["error"], answers


# ------------------------------------------------------- server without its key


async def test_a_server_without_its_key_says_how_to_create_it_and_generate_key_does(tmp_path):
    key = tmp_path / "etc" / "server.key"
    args = ("server", "--homeserver", "http://127.0.0.1:9", "--listen", f"udp://127.0.0.1:{_unused_udp_port()}",
            "--key", str(key))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "coap_gateway", *args,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and err.decode().count("\n") == 1, err  # one line, no traceback
    assert f"no private key at {key}" in err.decode() and "--generate-key" in err.decode()
    assert f"coap-gateway keygen {key}" in err.decode()
    assert not key.exists()

    proc, match = await _command(*args, "--generate-key", home=tmp_path, ready=r"--server-key (\S+)")
    try:
        public = keys.decode_key(match.group(1))
        await _command_ready(proc, r"server gateway on")
        assert keys.public_from_private(keys.read_private_key(key)) == public
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        # its replay protection is kept beside the key, so a restart keeps it
        assert stat.S_IMODE(os.stat(key.parent / "server-state.sqlite3").st_mode) == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0

    # the next start uses the key it made, and never makes another
    proc, _ = await _command(*args, "--generate-key", home=tmp_path, ready=r"server gateway on")
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert b"generated" not in err and keys.public_from_private(keys.read_private_key(key)) == public


async def _command_ready(proc, ready: str) -> None:
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "exited before it was ready"
        if re.search(ready, line):
            return
