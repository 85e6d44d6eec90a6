"""matrix-js-sdk (Element's SDK) through the gateways, with its real sync loop.

Two js-sdk clients in Node (tests/js/driver.mjs), each behind its own client
gateway (secure, the default profile, sync push — the defaults) on its own emulated
link to a server gateway in front of one real Synapse: register, create a
room, invite, join, send and receive through the sync loop, edit, react,
redact, name and topic, typing, read receipt, upload and download, leave.
Afterwards Synapse itself is asked what it holds.  Node and the npm packages
come from `make js` (a dependency of `make test`); in CI a missing Node fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path

import aiohttp
import pytest

from meshsim import LinkProfile
from tests.helpers.devices import Device
from tests.helpers.js import run_marked
from tests.helpers.relay import CountingRelay

pytestmark = pytest.mark.synapse

JS = Path(__file__).resolve().parent.parent / "js"
FAST = LinkProfile(rate_bps=1_000_000, delay=0.002)


def node() -> str:
    path = shutil.which("node")
    if path is None or not (JS / "node_modules" / "matrix-js-sdk").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or tests/js/node_modules is missing: `make js` must run in CI")
        pytest.skip("node or matrix-js-sdk is not installed (make js)")
    return path


async def run_driver(a: str, b: str, timeout: float) -> dict:
    process = await asyncio.create_subprocess_exec(
        node(), str(JS / "driver.mjs"), json.dumps({"a": a, "b": b, "suffix": uuid.uuid4().hex[:6]}),
        cwd=JS, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        raise
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    assert lines, (out.decode()[-2000:], err.decode()[-2000:])
    return json.loads(lines[-1])


async def synapse_get(synapse, token: str, path: str, **params) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{synapse.base_url}{path}", params=params,
                            headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def test_two_js_sdk_clients_through_their_own_gateways(synapse, server_key):
    async with Device(FAST, synapse, server_key, seed=5) as alice, Device(FAST, synapse, server_key, seed=6) as bob:
        result = await run_driver(alice.client.base_url, bob.client.base_url, timeout=600)
        assert result["ok"], result
        steps = result["steps"]
        print("\njs-sdk through the gateways: " + ", ".join(f"{k} {v['ms']} ms" for k, v in steps.items()))
        sent = steps["send_and_receive"]
        assert sent["received_id"] == sent["event_id"]
        assert sent["sender"] == steps["register_alice"]["user_id"]
        # js-sdk's own events (the message, the edit; bob's reaction) came back
        # to it folded into its sends' answers, and its sync loop took them
        folded = alice.server.gateway.sync_push.counters.folded + bob.server.gateway.sync_push.counters.folded
        echoes = alice.client.gateway.sync_push.counters.echoes + bob.client.gateway.sync_push.counters.echoes
        print(f"echoes folded into send answers: {folded}")
        assert folded >= 2 and echoes == folded
        assert steps["media"] == steps["media"] | {"status": 200, "same": True, "size": 3000}
        assert steps["redact"]["redacts"] == steps["react"]["event_id"]
        assert steps["name_and_topic"]["name"] == "js-sdk room"
        # what Synapse holds, asked directly (not through a gateway)
        login = {"type": "m.login.password", "password": "pw-" + steps["register_alice"]["user_id"][1:].split(":")[0],
                 "identifier": {"type": "m.id.user", "user": steps["register_alice"]["user_id"]}}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{synapse.base_url}/_matrix/client/v3/login", json=login) as r:
                token = (await r.json())["access_token"]
        room = result["room_id"]
        events = (await synapse_get(synapse, token, f"/_matrix/client/v3/rooms/{room}/messages",
                                    dir="b", limit="100"))["chunk"]
        by_id = {e["event_id"]: e for e in events}
        assert by_id[sent["event_id"]]["content"]["body"] == "Hello from js-sdk"
        assert by_id[steps["edit"]["event_id"]]["content"]["m.relates_to"]["rel_type"] == "m.replace"
        assert by_id[steps["react"]["event_id"]]["content"] == {}  # redacted
        state = {(e["type"], e.get("state_key")): e for e in events if "state_key" in e}
        assert state[("m.room.name", "")]["content"]["name"] == "js-sdk room"
        assert state[("m.room.topic", "")]["content"]["topic"] == "tested by js"
        bob_id = steps["register_bob"]["user_id"]
        members = await synapse_get(synapse, token, f"/_matrix/client/v3/rooms/{room}/members")
        assert {m["state_key"]: m["content"]["membership"] for m in members["chunk"]}[bob_id] == "leave"


async def test_two_js_sdk_accounts_on_one_gateway_at_2400_bps(synapse, server_key):
    # both accounts behind the same client gateway, on a slow link: every
    # request must run as its own account while both sync loops run
    slow = LinkProfile(rate_bps=2400, delay=0.1)
    async with Device(slow, synapse, server_key, seed=7, max_retransmit=8) as device:
        result = await run_driver(device.client.base_url, device.client.base_url, timeout=1200)
        assert result["ok"], result
        steps = result["steps"]
        print(f"\njs-sdk, 2 accounts on one gateway at 2400 bit/s: {device.link_frames()} frames, "
              f"{sum(device.link_bytes())} B; " + ", ".join(f"{k} {v['ms']} ms" for k, v in steps.items()))
        sent = steps["send_and_receive"]
        assert sent["received_id"] == sent["event_id"]
        assert sent["sender"] == steps["register_alice"]["user_id"]  # not bob's account
        # both accounts' own events came back folded into their sends' answers
        folded = device.server.gateway.sync_push.counters.folded
        print(f"echoes folded into send answers: {folded}")
        assert folded >= 2 and device.client.gateway.sync_push.counters.echoes == folded
        assert steps["redact"]["redacts"] == steps["react"]["event_id"]  # bob redacted his own reaction
        assert steps["media"] == steps["media"] | {"status": 200, "same": True, "size": 3000}


async def run_e2ee(url_a: str, url_b: str, bytes_a, bytes_b) -> tuple[dict, dict[str, tuple[int, int]]]:
    """tests/js/e2ee.mjs with its devices at ``url_a`` and ``url_b``: its
    result, and the bytes each device's path carried in each phase
    (``bytes_a()``/``bytes_b()`` read them at the driver's marks)."""
    result, phases = await run_marked(node(), JS / "e2ee.mjs", {"a": url_a, "b": url_b, "suffix": uuid.uuid4().hex[:6]},
                                      bytes_a, bytes_b)
    assert result["ok"], result
    steps = result["steps"]
    for name in ("first_encrypted_send", "encrypted_send", "encrypted_reply"):
        assert steps[name]["received_id"] == steps[name]["event_id"]
    assert steps["first_encrypted_send"]["body"] == "secret one"
    assert steps["encrypted_send"]["body"] == "Hello, see you at 5pm"
    assert steps["encrypted_reply"]["body"] == "secret reply"
    return result, phases


async def test_end_to_end_encryption_with_rust_crypto(synapse, server_key):
    """Two js-sdk devices (initRustCrypto) in an encrypted room: a message each
    way, decrypted; the link bytes of each phase, per device."""
    async with Device(FAST, synapse, server_key, seed=8) as alice, Device(FAST, synapse, server_key, seed=9) as bob:
        result, phases = await run_e2ee(alice.client.base_url, bob.client.base_url,
                                        lambda: sum(alice.link_bytes()), lambda: sum(bob.link_bytes()))
        steps = result["steps"]
        print("\nE2EE link bytes (alice's link, bob's link): "
              + ", ".join(f"{k} {a} B + {b} B" for k, (a, b) in phases.items()))
        # the encrypted messages' echoes rode in their sends' answers (W1e: 763 B → 422 B
        # on alice's link), rebuilt from the key counts of the latest answer — js-sdk's
        # key upload changes them while the idle template still has the old ones
        folded = alice.server.gateway.sync_push.counters.folded + bob.server.gateway.sync_push.counters.folded
        assert folded >= 1, folded  # the warm one at least (the first ones come with key sharing)
        # a warm encrypted send carries only its ciphertext: the session's keys,
        # device and algorithm cross once, as a body template (docs/protocol.md
        # §7a, "The encrypted schema"; 423 B → 325 B on alice's link)
        assert phases["encrypted_send"][0] <= 340, phases["encrypted_send"]
        # js-sdk asks the same keys/query again and again while it sets up the
        # room: unchanged answers come back as 2.03 Valid (codec.revalidation)
        revalidated = alice.client.gateway.counters.revalidated
        print(f"answers revalidated on alice's link: {revalidated}")
        assert revalidated >= 1 and alice.server.gateway.counters.revalidated == revalidated
        # Synapse holds only ciphertext
        async with aiohttp.ClientSession() as http:
            login = {"type": "m.login.password", "password": "pw-" + steps["register"]["alice"][1:].split(":")[0],
                     "identifier": {"type": "m.id.user", "user": steps["register"]["alice"]}}
            async with http.post(f"{synapse.base_url}/_matrix/client/v3/login", json=login) as r:
                token = (await r.json())["access_token"]
        events = (await synapse_get(synapse, token, f"/_matrix/client/v3/rooms/{result['room_id']}/messages",
                                    dir="b", limit="100"))["chunk"]
        stored = {e["event_id"]: e for e in events}
        event = stored[steps["encrypted_send"]["event_id"]]
        assert event["type"] == "m.room.encrypted" and "5pm" not in json.dumps(event)


async def test_end_to_end_encryption_over_plain_http_for_comparison(synapse):
    """The same two js-sdk devices straight to Synapse, each through a relay
    that counts its HTTP bytes: what issue 13 compares the gateways with."""
    async with CountingRelay(synapse.base_url) as a, CountingRelay(synapse.base_url) as b:
        _, phases = await run_e2ee(a.url, b.url, lambda: a.bytes, lambda: b.bytes)
    print("\nE2EE HTTP bytes without TLS, TCP or IP (alice's path, bob's path): "
          + ", ".join(f"{k} {x} B + {y} B" for k, (x, y) in phases.items()))
    # what the gateways put on the link for the same phases (the test above:
    # 325 B + 344 B for a warm encrypted message) is a fraction of it
    alice, bob = phases["encrypted_send"]
    assert alice > 3 * 340 and bob > 3 * 344, phases["encrypted_send"]
