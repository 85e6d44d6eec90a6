"""matrix-nio's end-to-end encryption (vodozemac) through the gateways.

Two nio devices, each with its own crypto store and its own client gateway
(secure, the default profile, sync push) on its own emulated link to a
server gateway in front of one real Synapse, each running nio's own sync
loop (``sync_forever``: it uploads, queries and claims keys as nio does for
its users). Alice creates an encrypted room and invites bob; each sends a
message the other decrypts. Every request either client makes goes to its
client gateway — there is no other way to the homeserver — so keys/upload,
keys/query, keys/claim, sendToDevice, to-device events and device-list
changes in sync all crossed the link. Synapse itself is then asked what it
holds: ciphertext only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import aiohttp
import pytest
from nio import AsyncClient, AsyncClientConfig, MegolmEvent, RegisterResponse, RoomMessageText
from nio.crypto import ENCRYPTION_ENABLED

from meshsim import LinkProfile
from tests.helpers.devices import FAST, Device, until
from tests.helpers.relay import CountingRelay

pytestmark = pytest.mark.synapse

SLOW = LinkProfile(rate_bps=2400, delay=0.05)
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


class E2eeUser:
    """A nio client with a crypto store, its sync loop and what it decrypted."""

    def __init__(self, base_url: str, store: Path) -> None:
        store.mkdir()
        self.client = AsyncClient(base_url, store_path=str(store),
                                  config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True,
                                                           request_timeout=900, max_timeouts=0))
        self.decrypted: list[RoomMessageText] = []
        self.undecryptable: list[MegolmEvent] = []
        self.client.add_event_callback(self._on_text, RoomMessageText)
        self.client.add_event_callback(self._on_megolm, MegolmEvent)
        self.loop: asyncio.Task | None = None

    async def _on_text(self, room, event: RoomMessageText) -> None:
        if event.decrypted:
            self.decrypted.append(event)

    async def _on_megolm(self, room, event: MegolmEvent) -> None:
        self.undecryptable.append(event)

    async def register(self, name: str) -> None:
        response = await self.client.register(name, "pw-" + name, device_name="nio-e2ee")
        assert isinstance(response, RegisterResponse), response
        assert self.client.olm is not None, "nio did not load its crypto store"

    def start(self) -> None:
        self.loop = asyncio.create_task(self.client.sync_forever(timeout=30_000, full_state=True))

    async def stop(self) -> None:
        if self.loop is not None:
            self.loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop
        await self.client.close()

    def bodies(self) -> list[str]:
        return [event.body for event in self.decrypted]


def alice_idle(user: E2eeUser) -> bool:
    """Nothing of this device's crypto bookkeeping is waiting to be sent or answered."""
    client = user.client
    return not (client.should_upload_keys or client.should_query_keys or client.should_claim_keys
                or client.outgoing_to_device_messages)


async def converse(alice: E2eeUser, bob: E2eeUser, alice_bytes, suffix: str, alice_parked=lambda: True) -> dict:
    """Register, start both sync loops, an encrypted room, a message each way
    and a warm one; returns the event IDs and the bytes on alice's path.
    ``alice_parked()`` says her sync loop's next long-poll is waiting (so the
    previous answer's bookkeeping has run)."""
    await alice.register(f"alice{suffix}")
    await bob.register(f"bob{suffix}")
    alice.start()
    bob.start()
    # each loop uploaded its device's identity and one-time keys
    await until(lambda: alice.client.olm.account.shared and bob.client.olm.account.shared, timeout=300)

    room = await alice.client.room_create(invite=[bob.client.user_id], initial_state=[ENCRYPTION])
    room_id = room.room_id
    await until(lambda: room_id in bob.client.invited_rooms, timeout=300)
    await bob.client.join(room_id)
    await until(lambda: room_id in alice.client.rooms
                and bob.client.user_id in alice.client.rooms[room_id].users
                and room_id in bob.client.rooms and bob.client.rooms[room_id].encrypted, timeout=300)

    before = alice_bytes()
    # nio asks for bob's devices (keys/query), claims a one-time key
    # (keys/claim) and shares the Megolm session (sendToDevice) first
    sent = await alice.client.room_send(room_id, "m.room.message",
                                        {"msgtype": "m.text", "body": "Hello, see you at 5pm"},
                                        ignore_unverified_devices=True)
    await until(lambda: "Hello, see you at 5pm" in bob.bodies(), timeout=300)
    first = alice_bytes() - before

    reply = await bob.client.room_send(room_id, "m.room.message",
                                       {"msgtype": "m.text", "body": "Fine, at the station"},
                                       ignore_unverified_devices=True)
    await until(lambda: "Fine, at the station" in alice.bodies(), timeout=300)

    # a warm encrypted send: the session is shared, only the message crosses.
    # Bob's reply claimed one of alice's one-time keys, so her sync loop
    # uploads a new one (keys/upload) beside its next sync; wait until that
    # is answered and nothing else of hers is pending, or its bytes would
    # land in the warm send's count.
    await until(lambda: alice_parked() and alice_idle(alice), timeout=300)
    before = alice_bytes()
    await alice.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "Bring the map"},
                                 ignore_unverified_devices=True)
    await until(lambda: "Bring the map" in bob.bodies(), timeout=300)
    warm = alice_bytes() - before

    assert not alice.undecryptable and not bob.undecryptable
    assert [e.event_id for e in bob.decrypted if e.body == "Hello, see you at 5pm"] == [sent.event_id]
    assert [e.event_id for e in alice.decrypted if e.body == "Fine, at the station"] == [reply.event_id]
    # bob decrypted it with the session alice's device shared: her identity key
    # and device reached him (keys/query, to-device)
    event = next(e for e in bob.decrypted if e.event_id == sent.event_id)
    assert event.sender == alice.client.user_id
    assert event.sender_key == alice.client.olm.account.identity_keys["curve25519"]
    assert alice.client.device_id in bob.client.device_store[alice.client.user_id]
    return {"room_id": room_id, "events": (sent.event_id, reply.event_id), "first": first, "warm": warm}


@pytest.mark.parametrize("link", [FAST, SLOW], ids=["fast", "2400bps"])
async def test_matrix_nio_end_to_end_encryption_through_the_gateways(synapse, server_key, tmp_path, link):
    assert ENCRYPTION_ENABLED, "matrix-nio's e2e extra (vodozemac) is a test dependency"
    async with Device(link, synapse, server_key, seed=21) as dev_a, \
            Device(link, synapse, server_key, seed=22) as dev_b:
        alice = E2eeUser(dev_a.client.base_url, tmp_path / "alice")
        bob = E2eeUser(dev_b.client.base_url, tmp_path / "bob")
        try:
            result = await converse(alice, bob, lambda: sum(dev_a.link_bytes()), uuid.uuid4().hex[:6],
                                    alice_parked=dev_a.waiting_on_push)
        finally:
            await alice.stop()
            await bob.stop()
    first, warm = result["first"], result["warm"]
    print(f"\nnio E2EE, alice's link: first encrypted send with its key share {first} B, warm send {warm} B")
    # the warm send (with alice's own echo, folded): the ciphertext and little else;
    # plain HTTP straight to Synapse needs ~3 kB for it (the test below)
    assert warm <= 340, warm
    assert first > 4 * warm, (first, warm)  # the key share crossed in the first one

    # Synapse holds only ciphertext
    async with aiohttp.ClientSession() as http:
        login = {"type": "m.login.password", "password": "pw-" + alice.client.user_id[1:].split(":")[0],
                 "identifier": {"type": "m.id.user", "user": alice.client.user_id}}
        async with http.post(f"{synapse.base_url}/_matrix/client/v3/login", json=login) as r:
            token = (await r.json())["access_token"]
        async with http.get(f"{synapse.base_url}/_matrix/client/v3/rooms/{result['room_id']}/messages",
                            params={"dir": "b", "limit": "100"}, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, await r.text()
            chunk = (await r.json())["chunk"]
    stored = {e["event_id"]: e for e in chunk}
    for event_id in result["events"]:
        assert stored[event_id]["type"] == "m.room.encrypted"
        assert "5pm" not in json.dumps(stored[event_id]) and "station" not in json.dumps(stored[event_id])


async def test_matrix_nio_end_to_end_encryption_over_plain_http_for_comparison(synapse, tmp_path):
    """The same conversation straight to Synapse through a relay that counts
    the HTTP bytes (no TLS, TCP or IP): the baseline of the test above."""
    async with CountingRelay(synapse.base_url) as relay_a, CountingRelay(synapse.base_url) as relay_b:
        alice = E2eeUser(relay_a.url, tmp_path / "alice")
        bob = E2eeUser(relay_b.url, tmp_path / "bob")
        try:
            result = await converse(alice, bob, lambda: relay_a.bytes, uuid.uuid4().hex[:6])
        finally:
            await alice.stop()
            await bob.stop()
    print(f"\nnio E2EE over plain HTTP, alice's path: first encrypted send with its key share {result['first']} B, "
          f"warm send {result['warm']} B")
    assert result["warm"] > 3 * 340, result
