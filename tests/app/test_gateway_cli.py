"""The gateway commands as a user runs them: `up`, and `server` + `client` over UDP."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import uuid

import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    RegisterResponse,
    RoomSendResponse,
    SyncResponse,
)

pytestmark = pytest.mark.synapse


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start(*args: str, ready: str, env=None):
    """Start a coap-gateway command; return it once ``ready`` (a regex) is printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coap_gateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    seen = []
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), 120)
        if not line:
            raise AssertionError("exited before it was ready:\n" + "".join(seen))
        seen.append(line.decode())
        match = re.search(ready, line.decode())
        if match:
            return proc, match


async def stop(proc) -> bytes:
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return err


async def chat(base_url: str) -> None:
    name = "u" + uuid.uuid4().hex[:8]
    client = AsyncClient(base_url, name, config=AsyncClientConfig(request_timeout=300, max_timeouts=0))
    try:
        assert isinstance(await client.register(name, "pw-" + name), RegisterResponse)
        room = await client.room_create(name="cli test")
        sent = await client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "via the CLI"})
        assert isinstance(sent, RoomSendResponse)
        sync = await client.sync(timeout=0)
        assert isinstance(sync, SyncResponse)
        bodies = [getattr(e, "body", None) for e in sync.rooms.join[room.room_id].timeline.events]
        assert "via the CLI" in bodies
    finally:
        await client.close()


async def test_up_runs_everything_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    proc, match = await start("up", "--data-dir", str(tmp_path / "up"), "--listen", f"127.0.0.1:{port}",
                              "--rate", "200kbit", "--delay", "5ms", ready=r"(http://127\.0\.0\.1:\d+)")
    try:
        await chat(match.group(1))
    finally:
        err = await stop(proc)
    assert b"stopped: client gateway, server gateway, Synapse" in err
    # nothing left listening: Synapse is gone too
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


async def test_server_and_client_commands_over_udp_with_tofu(synapse, tmp_path):
    key = tmp_path / "server.key"
    keygen = await asyncio.create_subprocess_exec(sys.executable, "-m", "coap_gateway", "keygen", str(key),
                                                  stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await keygen.communicate()
    assert keygen.returncode == 0
    udp = free_port(socket.SOCK_DGRAM)
    config = tmp_path / "server.toml"
    config.write_text(f'homeserver = "{synapse.base_url}"\nlisten = "udp://127.0.0.1:{udp}"\nkey = "{key}"\n')
    server, _ = await start("server", "--config", str(config), ready=r"server gateway on")
    http = free_port()
    pins = tmp_path / "pins.json"
    client, match = await start("client", "--server", f"udp://127.0.0.1:{udp}", "--pins", str(pins),
                                "--server-name", "test-hs", "--listen", f"127.0.0.1:{http}",
                                ready=r"(http://127\.0\.0\.1:\d+)")
    try:
        await chat(match.group(1))
        assert out.decode().strip() in pins.read_text()  # trusted on first use, pinned
    finally:
        await stop(client)
        await stop(server)


async def test_bad_configuration_is_one_line_and_exit_2(tmp_path):
    for args in (["server"], ["server", "--homeserver", "http://x", "--listen", "tcp://nope"],
                 ["client", "--server", "udp://127.0.0.1:1", "--key", str(tmp_path / "missing.key")],
                 ["server", "--config", str(tmp_path / "missing.toml")]):
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "coap_gateway", *args,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2, (args, err)
        assert err.decode().count("\n") == 1 and "Traceback" not in err.decode(), (args, err)

