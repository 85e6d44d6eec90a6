"""Sync bodies as Synapse writes them, for the sync-push tests."""

from __future__ import annotations

import base64
import hashlib
import json

from coap_gateway.codec import load_profile
from coap_gateway.push import push_preset

PROFILE = load_profile("lb3")
TABLE = PROFILE.cbor_table
PRESET = push_preset(PROFILE)

# What Synapse 1.163 answers (bytes as it wrote them): an idle long-poll, and
# one message in a room — the shapes sync push must carry byte for byte.
EMPTY = (b'{"next_batch":"s9_2_0_1_1_1_1_3_0_1_1_1_1_1","device_one_time_keys_count":{"signed_curve25519":0},'
         b'"device_unused_fallback_key_types":[]}')
ROOM = "!Z_3p6J2e5-kYV4J1fal9-sgzkAvoytJ1NYsGTdpIa3g"


def message_body(since: str, next_batch: str, n: int, text: str = "Hello, see you at 5pm") -> bytes:
    event = {"content": {"body": text, "msgtype": "m.text"},
             "event_id": "$" + base64.urlsafe_b64encode(hashlib.sha256(b"%d" % n).digest()).decode().rstrip("="),
             "origin_server_ts": 1795364412749 + 1000 * n, "sender": "@alice:localhost", "type": "m.room.message",
             "unsigned": {"age": 32 + n, "membership": "join"}}
    return event_body(since, next_batch, event, (n, 0))


def event_body(since: str, next_batch: str, event: dict, counts: tuple[int, int]) -> bytes:
    """A sync answer with ``event`` in the room's timeline, as Synapse writes it."""
    room = {"timeline": {"events": [event], "prev_batch": since, "limited": False}, "state": {"events": []},
            "account_data": {"events": []}, "ephemeral": {"events": []},
            "unread_notifications": {"notification_count": counts[0], "highlight_count": counts[1]}, "summary": {}}
    doc = {"next_batch": next_batch, "device_one_time_keys_count": {"signed_curve25519": 0},
           "device_unused_fallback_key_types": [], "rooms": {"join": {ROOM: room}}}
    return json.dumps(doc, separators=(",", ":")).encode()


def token(n: int) -> str:
    return f"s{n}_2_0_1_1_1_1_3_0_1_1_1_1_1"


def empty_body(n: int, keys: int = 0) -> bytes:
    return EMPTY.replace(b"s9_2_0", f"s{n}_2_0".encode()).replace(b'"signed_curve25519":0',
                                                                  f'"signed_curve25519":{keys}'.encode())
