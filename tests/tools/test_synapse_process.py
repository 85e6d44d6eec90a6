"""LocalSynapse: a real homeserver that nio can use, restartable in place."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from coap_gateway.tools.synapse_process import LocalSynapse, SynapseStartError

nio = pytest.importorskip("nio")

pytestmark = pytest.mark.synapse


def unique(name: str) -> str:
    # The session homeserver is shared: keep usernames from colliding.
    return f"{name}-{os.urandom(3).hex()}"


async def test_register_login_send_and_sync(synapse: LocalSynapse) -> None:
    username = unique("ann")
    registrar = nio.AsyncClient(synapse.base_url)
    client = nio.AsyncClient(synapse.base_url, f"@{username}:{synapse.server_name}")
    try:
        registered = await registrar.register(username, "secret-pw", "phone")
        assert isinstance(registered, nio.RegisterResponse), registered
        assert registered.user_id == f"@{username}:localhost"

        logged_in = await client.login("secret-pw", "laptop")
        assert isinstance(logged_in, nio.LoginResponse), logged_in

        room = await client.room_create(name="harness")
        assert isinstance(room, nio.RoomCreateResponse), room
        sent = await client.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello, homeserver"})
        assert isinstance(sent, nio.RoomSendResponse), sent

        synced = await client.sync(timeout=0)
        assert isinstance(synced, nio.SyncResponse), synced
        timeline = synced.rooms.join[room.room_id].timeline.events
        assert any(getattr(event, "body", None) == "hello, homeserver" for event in timeline)
    finally:
        await registrar.close()
        await client.close()


async def test_restart_in_same_directory_keeps_accounts(tmp_path: Path) -> None:
    data_dir = tmp_path / "hs"
    async with LocalSynapse(data_dir) as first:
        pid = first.pid
        client = nio.AsyncClient(first.base_url)
        try:
            assert isinstance(await client.register("keeper", "pw-1", "d"), nio.RegisterResponse)
        finally:
            await client.close()
    assert first.pid is None and not first.running

    async with LocalSynapse(data_dir) as second:
        assert second.pid != pid
        client = nio.AsyncClient(second.base_url, "@keeper:localhost")
        try:
            assert isinstance(await client.login("pw-1"), nio.LoginResponse)
        finally:
            await client.close()
    await second.stop()  # idempotent


async def test_early_exit_reports_log_tail(tmp_path: Path) -> None:
    broken = LocalSynapse(tmp_path / "hs", extra_config={"database": {"name": "no-such-engine"}})
    with pytest.raises(SynapseStartError) as raised:
        await broken.start()
    assert "exited" in str(raised.value)
    assert "homeserver.out" in str(raised.value)
    assert not broken.running


async def test_override_ratelimit_gives_a_real_429(synapse: LocalSynapse) -> None:
    username = unique("flood")
    client = nio.AsyncClient(
        synapse.base_url, config=nio.AsyncClientConfig(max_limit_exceeded=0)
    )
    try:
        registered = await client.register(username, "pw", "bot")
        room = await client.room_create()
        await synapse.override_ratelimit(registered.user_id, messages_per_second=1, burst_count=1)
        # The room creation already spent the one-event burst, so the first
        # or the second quick send is refused.
        content = {"msgtype": "m.text", "body": "beep"}
        headers = {"Authorization": f"Bearer {client.access_token}"}
        statuses = []
        async with aiohttp.ClientSession() as session:
            for txn in ("t1", "t2"):
                path = f"/_matrix/client/v3/rooms/{room.room_id}/send/m.room.message/{txn}"
                async with session.put(synapse.base_url + path, json=content, headers=headers) as response:
                    statuses.append(response.status)
                    if response.status == 429:
                        body = await response.json()
                        assert body["errcode"] == "M_LIMIT_EXCEEDED"
                        assert body["retry_after_ms"] > 0
                        assert int(response.headers["Retry-After"]) >= 1
                        break
        assert statuses[-1] == 429, statuses
    finally:
        await client.close()
