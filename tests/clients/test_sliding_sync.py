"""Sliding sync (MSC4186, "simplified sliding sync") through the gateways.

It is Element X's only way to sync, so it must work through the gateways as it
works against Synapse: the first request lists the rooms, a later one with
``pos`` and ``timeout`` is held by the homeserver until there is news and
brings it.  Element X itself (the Rust SDK) is not run here; these are its
requests, by raw HTTP, as MSC4186 defines them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import uuid

import aiohttp
import pytest

from coap_gateway.push import Status
from tests.helpers.devices import FAST, Device, PushDevice, until

pytestmark = pytest.mark.synapse

SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
REQUEST = {"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1,
                             "required_state": [["m.room.name", ""]]}}}


async def _conversation(base: str) -> dict[str, object]:
    """Register, create a room, sync it, then long-poll while a message is sent."""
    name = f"ss{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/_matrix/client/v3/register", json={
                "username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"}}) as answer:
            assert answer.status == 200, await answer.text()
            auth = {"Authorization": f"Bearer {(await answer.json())['access_token']}"}
        async with http.post(f"{base}/_matrix/client/v3/createRoom", json={"name": "sliding"},
                             headers=auth) as answer:
            room_id = (await answer.json())["room_id"]
        async with http.post(f"{base}{SLIDING_SYNC}", json=REQUEST, headers=auth) as answer:
            assert answer.status == 200, await answer.text()
            first = await answer.json()

        async def long_poll() -> dict:
            async with http.post(f"{base}{SLIDING_SYNC}?pos={first['pos']}&timeout=30000", json=REQUEST,
                                 headers=auth) as answer:
                assert answer.status == 200, await answer.text()
                return await answer.json()

        polling = asyncio.ensure_future(long_poll())
        async with http.put(f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                            json={"msgtype": "m.text", "body": "Hello, see you at 5pm"}, headers=auth) as answer:
            assert answer.status == 200
            event_id = (await answer.json())["event_id"]
        news = await asyncio.wait_for(polling, 60)
    return {
        "listed": first["lists"]["all"]["count"],
        "named": first["rooms"][room_id]["name"],
        "news": [e["event_id"] for e in news["rooms"][room_id]["timeline"]] == [event_id],
        "body": news["rooms"][room_id]["timeline"][0]["content"]["body"],
        "moved": news["pos"] != first["pos"],
    }


async def test_sliding_sync_through_the_gateways_as_against_synapse(synapse, server_key):
    direct = await _conversation(synapse.base_url)
    async with Device(FAST, synapse, server_key, 1) as device:  # secure, lb4, sync push: the defaults
        through = await _conversation(device.client.base_url)
    expected = {"listed": 1, "named": "sliding", "news": True, "body": "Hello, see you at 5pm", "moved": True}
    assert direct == expected
    assert through == expected


# -- sliding sync pushed: an idle connection costs nothing on the link

ELEMENT_X_LIKE = {"conn_id": "room-list", "lists": {"all": {
    "ranges": [[0, 19]], "timeline_limit": 1, "required_state": [["m.room.name", ""]]}},
    "extensions": {"e2ee": {"enabled": True}, "to_device": {"enabled": True}, "account_data": {"enabled": True},
                   "receipts": {"enabled": True}, "typing": {"enabled": True}}}


class Connection:
    """One sliding-sync connection of a user, by raw HTTP to ``base``."""

    def __init__(self, http: aiohttp.ClientSession, base: str, auth: dict[str, str], request: dict):
        self.http, self.base, self.auth, self.request = http, base, auth, request
        self.pos: str | None = None

    async def poll(self, timeout_ms: int, pos: str | None = None, request: dict | None = None) -> bytes:
        """One request (from ``pos``, or the connection's); its answer's bytes."""
        pos = pos or self.pos
        query = "" if pos is None else f"?pos={pos.replace('/', '%2F')}&timeout={timeout_ms}"
        async with self.http.post(f"{self.base}{SLIDING_SYNC}{query}", json=request or self.request,
                                  headers=self.auth) as answer:
            assert answer.status == 200, await answer.text()
            body = await answer.read()
        self.pos = json.loads(body)["pos"]
        return body


def _stream_token_aside(body: bytes) -> bytes:
    """A sliding-sync answer with its pos's stream token (after the connection position) left out."""
    aside, count = re.subn(rb'"pos":"(\d+)/[^"]*"', rb'"pos":"\1/"', body)
    assert count == 1, body
    return aside


async def _account(http: aiohttp.ClientSession, base: str) -> tuple[dict[str, str], str, str]:
    """A new user: its Authorization header, user ID and device ID."""
    name = f"sp{uuid.uuid4().hex[:6]}"
    async with http.post(f"{base}/_matrix/client/v3/register", json={
            "username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"}}) as answer:
        assert answer.status == 200, await answer.text()
        login = await answer.json()
    return {"Authorization": f"Bearer {login['access_token']}"}, login["user_id"], login["device_id"]


async def _user(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    return (await _account(http, base))[0]


async def test_sliding_sync_is_pushed_and_idle_polls_cross_nothing(synapse, server_key):
    async with PushDevice(synapse, server_key, 7) as device, aiohttp.ClientSession() as http:
        base = device.client.base_url
        auth = await _user(http, base)
        async with http.post(f"{base}/_matrix/client/v3/createRoom", json={"name": "pushed"},
                             headers=auth) as answer:
            room_id = (await answer.json())["room_id"]
        conn = Connection(http, base, auth, ELEMENT_X_LIKE)
        await conn.poll(0)  # the initial request: plain
        caught_up = await conn.poll(1000)  # the first long-poll registers the connection's observation
        push = device.push_client
        assert push.counters.registrations == 1
        stream, = push.state.streams.values()
        assert stream.status is Status.ACTIVE and stream.template is not None

        # idle: answered at the client gateway, exactly as Synapse answers it
        before, idle_answers = device.link_bytes(), push.counters.answered_idle
        idle = await conn.poll(1000)
        assert device.link_bytes() == before
        assert push.counters.answered_idle == idle_answers + 1
        async with http.post(f"{synapse.base_url}{SLIDING_SYNC}?pos={conn.pos}&timeout=0", json=ELEMENT_X_LIKE,
                             headers=auth) as answer:
            direct = await answer.read()
        assert idle == caught_up
        # byte-exact but for the stream token in pos: on this shared homeserver other tests' leftovers
        # (presence going offline…) may move Synapse's streams on, while its connection position stays
        assert _stream_token_aside(direct) == _stream_token_aside(idle)

        # news: pushed
        pushed: list[bytes] = []
        push.answer_observers.append(lambda _request, response: pushed.append(response.body))
        waiting = asyncio.ensure_future(conn.poll(30000))
        await until(device.waiting_on_push)
        async with http.put(f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
                            json={"msgtype": "m.text", "body": "Hello, see you at 5pm"}, headers=auth) as answer:
            event_id = (await answer.json())["event_id"]
        news = await asyncio.wait_for(waiting, 60)
        assert [e["event_id"] for e in json.loads(news)["rooms"][room_id]["timeline"]] == [event_id]
        # the device's own message: its echo rode in the send's answer, and is
        # the homeserver's own bytes, but for the client's transaction ID (the link carries a shorter one)
        assert push.counters.echoes == 1
        assert pushed[-1] in device.upstream
        event, = json.loads(news)["rooms"][room_id]["timeline"]
        assert event["unsigned"]["transaction_id"] == "t1"
        assert push.counters.registrations == 1

        # another request on the connection: the observation follows it
        narrower = {**ELEMENT_X_LIKE, "lists": {"all": {**ELEMENT_X_LIKE["lists"]["all"], "timeline_limit": 2}}}
        before = device.link_bytes()
        await conn.poll(1000, request=narrower)
        assert push.counters.registrations == 2
        assert len(device.push_server.observations) == 1
        # it went on from the old observation's state (Push-Continue): its first
        # answer (the room again, with two events) deflated against what the
        # chain showed — 377 B down without, 137 B with, measured — and the
        # new request went as a delta against the old one (183 B up without)
        assert device.push_server.counters.continued == 1 and device.push_server.counters.delta_bodies == 1
        up, down = (after - b for after, b in zip(device.link_bytes(), before))
        print(f"a new request body: {up} B up, {down} B down")
        assert up <= 110 and down <= 200, (up, down)


async def test_a_long_poll_the_client_gave_up_stops_at_the_gateway(synapse, server_key):
    """js-sdk aborts its long-poll when its room list grows and asks again at
    once with the new list.  The aborted request's handler must stop: left
    running it registered its own body over the new one's, and the two took
    turns for good (thousands of registrations a minute; a read receipt never
    reached the client)."""
    async with PushDevice(synapse, server_key, 23) as device, aiohttp.ClientSession() as http:
        base = device.client.base_url
        conn = Connection(http, base, await _user(http, base), ELEMENT_X_LIKE)
        await conn.poll(0)
        await conn.poll(1000)
        push = device.push_client
        assert push.counters.registrations == 1
        given_up = asyncio.ensure_future(conn.poll(30000))
        await until(device.waiting_on_push)
        given_up.cancel()  # the client closes its connection
        with contextlib.suppress(asyncio.CancelledError):
            await given_up
        stream, = push.state.streams.values()
        await until(lambda: stream.waiting == 0, timeout=5)  # not when its 30 s are up
        wider = {**ELEMENT_X_LIKE, "lists": {"all": {**ELEMENT_X_LIKE["lists"]["all"], "timeline_limit": 2}}}
        await conn.poll(1000, request=wider)
        await conn.poll(1000, request=wider)  # idle: answered at the client gateway
        assert push.counters.registrations == 2, push.counters
        assert push.counters.answered_idle >= 1


async def test_a_conversation_costs_each_side_one_exchange(synapse, server_key):
    """Element X in a conversation, behind its client gateway: its own
    message's echo rides in the send's answer (the fold, in sliding sync's
    layout), and a message from someone else comes as one event form — each
    2 frames, each rebuilt to the homeserver's exact bytes.  An answer with
    other extension data between (a read receipt) does not stop the next
    fold: it is written on the rest before."""
    async with PushDevice(synapse, server_key, 17) as device, aiohttp.ClientSession() as http:
        base = device.client.base_url
        auth, _, _ = await _account(http, base)
        other, them, _ = await _account(http, synapse.base_url)
        async with http.post(f"{base}/_matrix/client/v3/createRoom", json={"name": "talk", "invite": [them]},
                             headers=auth) as answer:
            room_id = (await answer.json())["room_id"]
        async with http.post(f"{synapse.base_url}/_matrix/client/v3/join/{room_id}", json={}, headers=other) as answer:
            assert answer.status == 200
        conn = Connection(http, base, auth, ELEMENT_X_LIKE)
        await conn.poll(0)
        await conn.poll(1000)
        push = device.push_client
        pushed: list[bytes] = []
        push.answer_observers.append(lambda _request, response: pushed.append(response.body))

        async def message(n: int, mine: bool) -> tuple[int, int, str]:
            """One message (mine: through the gateway); the link bytes and
            frames it cost, and the event ID."""
            waiting = asyncio.ensure_future(conn.poll(30000))
            await until(device.waiting_on_push)
            before, frames = device.link_bytes(), device.link_frames()
            async with http.put(f"{base if mine else synapse.base_url}/_matrix/client/v3/rooms/{room_id}/send/"
                                f"m.room.message/t{n}", json={"msgtype": "m.text", "body": "Hello, see you at 5pm"},
                                headers=auth if mine else other) as answer:
                event_id = (await answer.json())["event_id"]
            news = json.loads(await asyncio.wait_for(waiting, 60))
            assert [e["event_id"] for e in news["rooms"][room_id]["timeline"]] == [event_id]
            assert pushed[-1] in device.upstream  # the homeserver's bytes (before the client's txn ID goes back in)
            after = device.link_bytes()
            return sum(after) - sum(before), device.link_frames() - frames, event_id

        for n in range(2):  # the first of each kind in an observation names the sender, room and counts
            await message(2 * n, mine=False)
            await message(2 * n + 1, mine=True)
        echoes = push.counters.echoes
        for n in range(2, 4):
            link, frames, _ = await message(2 * n, mine=False)
            assert frames == 2 and link <= 74, link  # event form 68 B + ACK 4 B (was 90 B: deflated)
            link, frames, mine = await message(2 * n + 1, mine=True)
            assert frames == 2 and link <= 100, link  # send 41 B + answer with the fold 57 B (was 187 B in 4)
        assert push.counters.echoes == echoes + 2

        # someone reads it: the receipt comes as an answer with other extensions
        waiting = asyncio.ensure_future(conn.poll(30000))
        await until(device.waiting_on_push)
        async with http.post(f"{synapse.base_url}/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{mine}",
                             json={}, headers=other) as answer:
            assert answer.status == 200
        receipt = json.loads(await asyncio.wait_for(waiting, 60))
        assert receipt["extensions"]["receipts"]["rooms"], receipt
        link, frames, _ = await message(20, mine=True)
        assert frames == 2 and link <= 100 and push.counters.echoes == echoes + 3


async def test_to_device_messages_come_once_as_the_request_moves_its_position(synapse, server_key):
    """The to-device extension's position is in the request body: each batch
    taken makes a new body, so the observation registers again — and the
    batch must neither come again nor be lost (Synapse deletes it once the
    later position is used)."""
    async with PushDevice(synapse, server_key, 8) as device, aiohttp.ClientSession() as http:
        auth, _, _ = await _account(http, device.client.base_url)
        sender, _, _ = await _account(http, synapse.base_url)
        async with http.get(f"{synapse.base_url}/_matrix/client/v3/account/whoami", headers=auth) as answer:
            me = await answer.json()
        request = json.loads(json.dumps(ELEMENT_X_LIKE))
        conn = Connection(http, device.client.base_url, auth, request)
        await conn.poll(0)
        await conn.poll(1000)  # registered, idle
        got: list[str] = []
        for n in range(3):
            waiting = asyncio.ensure_future(conn.poll(30000, request=request))
            await until(device.waiting_on_push)
            async with http.put(f"{synapse.base_url}/_matrix/client/v3/sendToDevice/m.test/tx{n}", headers=sender,
                                json={"messages": {me["user_id"]: {me["device_id"]: {"n": n}}}}) as answer:
                assert answer.status == 200
            to_device = json.loads(await asyncio.wait_for(waiting, 60))["extensions"]["to_device"]
            got += [e["content"]["n"] for e in to_device["events"]]
            request["extensions"]["to_device"]["since"] = to_device["next_batch"]
        # one more request from the last position: nothing comes again
        after = json.loads(await conn.poll(1000, request=request))
        assert got == [0, 1, 2] and after["extensions"]["to_device"]["events"] == []
        assert device.push_client.counters.registrations == 4  # the first, then one per batch taken
        # after each batch the server's loop waits for the next request
        # instead of polling the same batch again: each registration goes
        # on from the one before (it did 2 of 3 times on a loaded machine
        # while the loop polled on, and the batch was sometimes pushed twice)
        assert device.push_server.counters.holds == 3
        assert device.push_server.counters.continued == 3
        assert device.push_server.counters.delta_bodies == 3  # each request written against the one before
        assert device.push_client.counters.plain == 0


async def test_a_request_longer_than_a_frame_is_polled_plainly(synapse, server_key):
    """A registration goes in one frame: a sliding-sync request longer than
    that (random state types: nothing shortens them) is not registered but
    polled the plain way, block-wise, as every request too long for a frame."""
    async with PushDevice(synapse, server_key, 9) as device, aiohttp.ClientSession() as http:
        auth = await _user(http, device.client.base_url)
        long = json.loads(json.dumps(ELEMENT_X_LIKE))
        long["lists"]["all"]["required_state"] += [[f"m.x.{uuid.uuid4().hex}", uuid.uuid4().hex] for _ in range(80)]
        conn = Connection(http, device.client.base_url, auth, long)
        await conn.poll(0)
        first = await conn.poll(1000)
        push = device.push_client
        assert push.counters.unregistrable == 1 and push.counters.registrations == 1
        assert device.push_server.counters.registrations == 0
        assert device.client.gateway.endpoint.counters.frames_out > 0
        async with http.post(f"{synapse.base_url}{SLIDING_SYNC}?pos={conn.pos}&timeout=0", json=long,
                             headers=auth) as answer:
            direct = json.loads(await answer.read())
        # the plain path's JSON: keys reordered (the pos may have moved meanwhile: other tests share Synapse)
        assert {k: v for k, v in direct.items() if k != "pos"} == {k: v for k, v in json.loads(first).items()
                                                                  if k != "pos"}
        before = device.link_bytes()
        await conn.poll(1000)  # plain: it crosses the link
        assert device.link_bytes()[0] - before[0] > 1000
        assert push.counters.unregistrable == 1  # not tried again for a while


async def test_a_conversation_over_lossy_links_delivers_every_message_once(synapse, server_key):
    """Two Element X-like users, each behind its own gateways on a link
    losing 30 % of frames each way: every message reaches both loops (the
    sender's as its echo, folded or pushed) exactly once and in order, and
    every answer is the homeserver's own bytes.  One of them changes its
    request body at every poll (its list's range), so each of its polls
    registers again, going on from the observation before (Push-Continue)."""
    from meshsim import LinkProfile

    lossy = LinkProfile(rate_bps=20_000, delay=0.05, loss=0.30)
    async with Device(FAST, synapse, server_key, 71, max_retransmit=10) as dev_a, \
            Device(FAST, synapse, server_key, 72, max_retransmit=10) as dev_b, aiohttp.ClientSession() as http:
        auth_a, _, _ = await _account(http, dev_a.client.base_url)
        auth_b, user_b, _ = await _account(http, dev_b.client.base_url)
        async with http.post(f"{dev_a.client.base_url}/_matrix/client/v3/createRoom",
                             json={"name": "lossy", "invite": [user_b]}, headers=auth_a) as answer:
            room_id = (await answer.json())["room_id"]
        async with http.post(f"{dev_b.client.base_url}/_matrix/client/v3/join/{room_id}", json={},
                             headers=auth_b) as answer:
            assert answer.status == 200
        upstream: list[bytes] = []
        answers: list[bytes] = []
        for dev in (dev_a, dev_b):
            dev.server.gateway.sync_push.upstream_observers.append(lambda _since, r: upstream.append(r.body))
            dev.client.gateway.sync_push.answer_observers.append(lambda _req, r: answers.append(r.body))
        seen: dict[str, list[str]] = {"a": [], "b": []}

        async def run(name: str, conn: Connection) -> None:
            await conn.poll(0)
            for n in itertools.count():
                request = conn.request
                if name == "a":  # another body each time: a range one room longer, then back
                    request = {**request, "lists": {"all": {**request["lists"]["all"], "ranges": [[0, 19 + n % 2]]}}}
                doc = json.loads(await conn.poll(30000, request=request))
                seen[name] += [e["event_id"] for e in doc.get("rooms", {}).get(room_id, {}).get("timeline", [])]

        loops = [asyncio.create_task(run(n, Connection(http, d.client.base_url, auth, ELEMENT_X_LIKE)))
                 for n, d, auth in (("a", dev_a, auth_a), ("b", dev_b, auth_b))]
        try:
            await until(dev_a.waiting_on_push)
            await until(dev_b.waiting_on_push)
            for dev in (dev_a, dev_b):
                dev.reshape(lossy)
            sent: list[str] = []
            for n in range(8):
                dev, auth = (dev_a, auth_a) if n % 2 == 0 else (dev_b, auth_b)
                async with http.put(f"{dev.client.base_url}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/"
                                    f"lossy{n}", json={"msgtype": "m.text", "body": f"message {n}"},
                                    headers=auth) as answer:
                    assert answer.status == 200, await answer.text()
                    sent.append((await answer.json())["event_id"])
                await until(lambda: all(sent[-1] in s for s in seen.values()), timeout=120)
            for name in ("a", "b"):  # each once, in order (the room's earlier events came before)
                assert [e for e in seen[name] if e in sent] == sent, name
                assert len(set(seen[name])) == len(seen[name]), name
            for dev in (dev_a, dev_b):
                assert dev.client.gateway.sync_push.state.undecodable == 0
            for body in answers:
                if json.loads(body)["rooms"]:
                    assert body in upstream  # byte for byte
            lost = sum(m.counters.dropped["loss"] for dev in (dev_a, dev_b)
                       for end in (dev.client_link, dev.server_link) for m in end.stages)
            assert lost > 0
            assert dev_a.client.gateway.sync_push.counters.echoes + dev_b.client.gateway.sync_push.counters.echoes > 0
            assert dev_a.server.gateway.sync_push.counters.continued > 0
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)


async def test_a_delta_body_the_server_cannot_read_registers_again_whole(synapse, server_key, monkeypatch):
    """A new request written against an old body the server does not hold
    as the client thinks (here: a wrong CRC-32) is not forwarded: the server
    says *resend*, and the client registers again whole, at once — the long
    poll gets its answer all the same."""
    import coap_gateway.gateway.push_client as push_client_module

    real = push_client_module.delta_payload

    def spoiled(*args):
        delta = real(*args)
        return None if delta is None else (delta[0], delta[1] ^ 1)

    async with PushDevice(synapse, server_key, 19) as device, aiohttp.ClientSession() as http:
        auth = await _user(http, device.client.base_url)
        conn = Connection(http, device.client.base_url, auth, ELEMENT_X_LIKE)
        await conn.poll(0)
        await conn.poll(1000)  # registered
        monkeypatch.setattr(push_client_module, "delta_payload", spoiled)
        wider = {**ELEMENT_X_LIKE, "lists": {"all": {**ELEMENT_X_LIKE["lists"]["all"], "ranges": [[0, 39]]}}}
        answer = json.loads(await conn.poll(1000, request=wider))
        assert answer["lists"]["all"]["count"] == 0
        async with http.post(f"{synapse.base_url}{SLIDING_SYNC}?pos={conn.pos}&timeout=0", json=wider,
                             headers=auth) as direct:
            assert json.loads(await direct.read())["lists"] == answer["lists"]
        server = device.push_server.counters
        assert server.delta_bodies == 0 and server.registrations == 2  # the first, then the whole one
        assert device.push_client.counters.registrations == 3  # the first, the refused delta, the whole one
        assert len(device.push_server.observations) == 1
