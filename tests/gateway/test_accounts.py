"""Several accounts on one client gateway, at once, over a slow lossy link:
every request runs under its own account (the defect: with overlapping
requests a message was stored with another account as sender, and a
redaction of one's own event was refused 403).

matrix-nio × 4 → one client gateway → slow lossy link → server gateway →
real Synapse.  Each account runs its sync loop, sends, uploads and redacts
concurrently with the others; afterwards Synapse itself is asked who sent
what.  In CI: 2400 bit/s with 15 % loss from the first request (about 2.5
minutes; it also found a lost IK1 never repeated and block-wise assemblies
expiring between retransmitted blocks).  ``make soak``: 100 bit/s with 20 %
loss each way after setup on a fast link.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from dataclasses import dataclass

import aiohttp
import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    RegisterResponse,
    RoomRedactResponse,
    RoomSendResponse,
    UploadResponse,
)

from meshsim import LinkProfile
from tests.helpers.devices import Device

pytestmark = pytest.mark.synapse

ACCOUNTS = 4


@dataclass(frozen=True)
class Conditions:
    label: str
    #: the link while registering, creating the room and joining
    setup: LinkProfile
    #: the link while the accounts send, upload, redact and sync at once
    run: LinkProfile
    upload: int  # bytes per account
    long_text: int  # random bytes (sent as hex) in each account's second message
    request_timeout: float


#: 2400 bit/s with loss: retransmissions reorder requests, and a long message
#: goes block by block — its last block (when the server resolves its token)
#: arrives after other accounts' requests
LOSSY_2400 = LinkProfile(rate_bps=2400, delay=0.1, loss=0.15)
CI = Conditions("2400 bit/s, 15 % loss", setup=LOSSY_2400, run=LOSSY_2400, upload=1500, long_text=700, request_timeout=600)
SOAK = Conditions("100 bit/s, 20 % loss", setup=LinkProfile(rate_bps=1_000_000, delay=0.002),
                  run=LinkProfile(rate_bps=100, delay=1.0, loss=0.2), upload=300, long_text=60,
                  request_timeout=7200)


def nio(base_url: str, user: str, conditions: Conditions) -> AsyncClient:
    return AsyncClient(base_url, user, config=AsyncClientConfig(request_timeout=conditions.request_timeout,
                                                                max_timeouts=0))


async def account_life(client: AsyncClient, room_id: str, name: str, conditions: Conditions) -> dict:
    """Sends, an upload and a redaction, overlapping one another."""
    blob = os.urandom(conditions.upload)  # a few blocks at 2400 bit/s's frame size

    async def send(n: int) -> RoomSendResponse:
        # message 1 is long (at 2400 bit/s it goes in blocks)
        body = f"{name}:{n}" + (" " + os.urandom(conditions.long_text).hex() if n == 1 else "")
        return await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})

    async def upload() -> UploadResponse:
        response, _ = await client.upload(lambda *_: blob, content_type="application/octet-stream",
                                          filename=f"{name}.bin", filesize=len(blob))
        return response

    results = await asyncio.gather(send(0), upload(), send(1), send(2))
    sent = [r for r in results if isinstance(r, RoomSendResponse)]
    assert len(sent) == 3, results
    redacted = await client.room_redact(room_id, sent[0].event_id, reason="mine")
    return {"sent": sent, "upload": results[1], "blob": blob, "redaction": redacted}


async def test_four_accounts_on_one_gateway_never_act_as_each_other(synapse, server_key):
    await four_accounts(synapse, server_key, CI)


@pytest.mark.soak
@pytest.mark.timeout(5400)
async def test_four_accounts_at_100_bps_with_20_percent_loss(synapse, server_key):
    await four_accounts(synapse, server_key, SOAK)


async def four_accounts(synapse, server_key, conditions: Conditions) -> None:
    async with Device(conditions.setup, synapse, server_key, seed=71, max_retransmit=8) as device:
        suffix = uuid.uuid4().hex[:6]
        names = [f"acct{n}{suffix}" for n in range(ACCOUNTS)]
        clients = [nio(device.client.base_url, name, conditions) for name in names]
        try:
            registered = await asyncio.gather(*(c.register(n, "pw-" + n) for c, n in zip(clients, names)))
            assert all(isinstance(r, RegisterResponse) for r in registered), registered
            owner = clients[0]
            room = await owner.room_create(invite=[c.user_id for c in clients[1:]])
            await asyncio.gather(*(c.join(room.room_id) for c in clients[1:]))
            if conditions.run != conditions.setup:
                device.reshape(conditions.run)
            loops = [asyncio.create_task(c.sync_forever(timeout=30000)) for c in clients]
            try:
                lives = await asyncio.gather(*(account_life(c, room.room_id, n, conditions)
                                             for c, n in zip(clients, names)))
            finally:
                for loop in loops:
                    loop.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
            for life in lives:
                assert isinstance(life["redaction"], RoomRedactResponse), life["redaction"]  # not a 403
                assert isinstance(life["upload"], UploadResponse), life["upload"]
            counters = device.client.gateway.binding.counters
            print(f"\n{ACCOUNTS} accounts, {conditions.label}: {device.link_frames()} frames, "
                  f"{sum(device.link_bytes())} B on the link; tokens defined {counters.token_sent} times, "
                  f"Token-Unbound resends {counters.token_rebinds}, Handle-Unknown resends {counters.handle_resends}")
        finally:
            await asyncio.gather(*(c.close() for c in clients))

        # Synapse, asked directly: every message has the sender that sent it,
        # every redaction hit its own author's first message, every upload is whole
        tokens = {r.user_id: r.access_token for r in registered}
        async with aiohttp.ClientSession() as http:
            token = tokens[registered[0].user_id]
            url = f"{synapse.base_url}/_matrix/client/v3/rooms/{room.room_id}/messages"
            async with http.get(url, params={"dir": "b", "limit": "100"},
                                headers={"Authorization": f"Bearer {token}"}) as r:
                chunk = (await r.json())["chunk"]
            messages = [e for e in chunk if e["type"] == "m.room.message"]
            by_id = {e["event_id"]: e for e in chunk}
            wrong = []
            for name, reg, life in zip(names, registered, lives):
                for n, sent in enumerate(life["sent"]):
                    event = by_id[sent.event_id]
                    if event["sender"] != reg.user_id:
                        wrong.append((name, n, event["sender"]))
                    if n == 0:
                        assert "redacted_because" in event.get("unsigned", {}), event  # redacted by its author
                    else:
                        assert event["content"]["body"].split(" ")[0] == f"{name}:{n}"
                uri = life["upload"].content_uri.removeprefix("mxc://")
                async with http.get(f"{synapse.base_url}/_matrix/client/v1/media/download/{uri}",
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                    assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(life["blob"]).digest()
            assert wrong == []
            assert len(messages) == 3 * ACCOUNTS
