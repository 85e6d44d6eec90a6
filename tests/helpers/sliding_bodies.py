"""Synapse's sliding-sync (MSC4186) answers, as the push tests need them:
Synapse 1.163's own bodies for an Element X-like request (the end-to-end
test, tests/clients/test_sliding_sync.py, runs the real one)."""

from __future__ import annotations

import json

from coap_gateway.push.echo import Sent

PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
ROOM = "!V9LRwtTvV8Y6a-ERLLavNbj53031cR5R1YkKZavYRCo"
REQUEST = json.dumps({"conn_id": "room-list", "lists": {"all": {"ranges": [[0, 19]], "timeline_limit": 1}},
                      "extensions": {"e2ee": {"enabled": True}, "to_device": {"enabled": True}}}).encode()
LISTS = '"lists":{"all":{"count":1,"ops":[{"op":"SYNC","range":[0,19],"room_ids":["' + ROOM + '"]}]}}'
EXTENSIONS = ('"extensions":{"to_device":{"next_batch":"1","events":[]},"e2ee":{"device_one_time_keys_count":'
              '{"signed_curve25519":%d},"device_unused_fallback_key_types":[],"device_lists":{"changed":[],'
              '"left":[]}},"account_data":{"global":[],"rooms":{}},"receipts":{"rooms":{}},"typing":{"rooms":{}}}')


def pos(n: int, connection: int = 1) -> str:
    return f"{connection}/s{n}_1_0_1_1_1_1_3_0_1_1_1_1_1"


def idle(n: int, keys: int = 0) -> bytes:
    """Synapse's answer to an idle poll."""
    return ('{"pos":"' + pos(n) + '",' + LISTS + ',"rooms":{},' + EXTENSIONS % keys + "}").encode()


def news(n: int, text: str = "Hello, see you at 5pm") -> bytes:
    """Synapse's answer with one new message."""
    event = {"content": {"body": text, "msgtype": "m.text"}, "event_id": f"$e{n}", "origin_server_ts": 1796433817888 + n,
             "sender": "@bob:localhost", "type": "m.room.message", "unsigned": {"age": 34, "membership": "join"}}
    room = {"notification_count": 1, "highlight_count": 0, "bump_stamp": n, "timeline": [event], "limited": False,
            "prev_batch": f"s{n - 1}_2_0", "num_live": 1}
    rooms = json.dumps({ROOM: room}, separators=(",", ":"))
    return ('{"pos":"' + pos(n, 2) + '",' + LISTS + ',"rooms":' + rooms + "," + EXTENSIONS % 0 + "}").encode()


ME, BOB = "@alice:localhost", "@bob:localhost"
RECEIPTS = '"receipts":{"rooms":{}}'


def stream_token(n: int, account: int = 3) -> str:
    return f"s{n}_{account}_0_1_1_1_1_3_0_1_1_1_1_1"


def one(n: int, sender: str = BOB, txn: str | None = None, text: str = "Hello, see you at 5pm",
        receipts: str = RECEIPTS, lists: str = LISTS) -> bytes:
    """Synapse 1.163's answer with one new event in a room the connection
    knows (its exact layout, as tests/clients/test_sliding_sync.py sees it)."""
    unsigned = {"age": 43, "membership": "join"} | ({"transaction_id": txn} if txn else {})
    event = {"content": {"body": text, "msgtype": "m.text"}, "event_id": f"$EVENT{n:022d}ABCDEFGHIJKLMNOQ",
             "origin_server_ts": 1796450061397 + 400 * n, "sender": sender, "type": "m.room.message",
             "unsigned": unsigned}
    room = {"notification_count": 0, "highlight_count": 0, "bump_stamp": n, "timeline": [event], "limited": False,
            "prev_batch": stream_token(n - 1), "num_live": 1}
    rooms = json.dumps({ROOM: room}, separators=(",", ":"))
    return ('{"pos":"1/' + stream_token(n) + '",' + lists + ',"rooms":' + rooms + ","
            + (EXTENSIONS % 0).replace(RECEIPTS, receipts) + "}").encode()


def quiet(n: int, receipts: str = RECEIPTS) -> bytes:
    """An answer without room events (idle, or only a receipt)."""
    return ('{"pos":"1/' + stream_token(n) + '",' + LISTS + ',"rooms":{},'
            + (EXTENSIONS % 0).replace(RECEIPTS, receipts) + "}").encode()


def sent(n: int) -> Sent:
    return Sent(room_id=ROOM, event_type="m.room.message", txn_id=f"t{n}",
                content={"msgtype": "m.text", "body": "Hello, see you at 5pm"},
                event_id=f"$EVENT{n:022d}ABCDEFGHIJKLMNOQ")
