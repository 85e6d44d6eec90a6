"""A sender's own event as Synapse 1.163 echoes it in /sync, and the echo
context a client gateway keeps (tests of push.echo)."""

from __future__ import annotations

import json

from coap_gateway.push.echo import EchoContext, Sent
from tests.helpers.sync_bodies import ROOM

COUNTS_PART = b'"device_one_time_keys_count":{"signed_curve25519":0},"device_unused_fallback_key_types":[]'
EVENT_ID = "$RVKzMtW8w8NA4h-gByrW6TdsLjGf0K2H8SKa4YRHs4w"
SENDER = "@alice:localhost"
TXN = "lbpbifujdt.1"
SENT = Sent(ROOM, "m.room.message", TXN, {"msgtype": "m.text", "body": "Hello, see you at 5pm"}, EVENT_ID)


def synapse_echo(since: str, next_batch: str, ts: int = 1796372820279, age: int = 30,
                 counts: tuple[int, int] = (0, 0), body: str = "Hello, see you at 5pm") -> bytes:
    """The echo as Synapse 1.163 wrote it in the real run (keys of the event
    sorted; the sync response's own keys in Synapse's order)."""
    return (b'{"next_batch":"' + next_batch.encode() + b'","device_one_time_keys_count":{"signed_curve25519":0},'
            b'"device_unused_fallback_key_types":[],"rooms":{"join":{"' + ROOM.encode() + b'":{"timeline":'
            b'{"events":[{"content":{"body":' + json.dumps(body).encode() + b',"msgtype":"m.text"},'
            b'"event_id":"' + EVENT_ID.encode() + b'","origin_server_ts":%d,"sender":"' % ts + SENDER.encode()
            + b'","type":"m.room.message","unsigned":{"age":%d,"membership":"join","transaction_id":"' % age
            + TXN.encode() + b'"}}],"prev_batch":"' + since.encode() + b'","limited":false},"state":{"events":[]},'
            b'"account_data":{"events":[]},"ephemeral":{"events":[]},"unread_notifications":'
            b'{"notification_count":%d,"highlight_count":%d},"summary":{}}}}}' % counts)


def context(last_ts: int = 0, sender: str | None = None, counts: tuple[int, int] | None = None) -> EchoContext:
    ctx = EchoContext()
    ctx.last_ts, ctx.sender, ctx.counts_part = last_ts, sender, COUNTS_PART
    if counts is not None:
        ctx.counts[ROOM] = counts
    return ctx
