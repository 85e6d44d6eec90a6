"""W1–W5 of DESIGN.md, driven with matrix-nio, the same code for both transports.

Accounts and rooms are made directly against Synapse (not counted); every
measured exchange goes through the transport under test, inside a capture
window (bench/capture.py) that holds only that device's frames:

- **W1** warm send: alice's device (TLS session / Noise session open, token
  bound, a message sent to the room before, so a compact request names the
  room by its handle) sends the reference message; the window holds the request, the
  response and every acknowledgement, until all are settled.
- **W2** receive: bob's device runs nio's ``sync_forever`` (long-poll).
  Once his long-poll is *parked* — the homeserver holds a ``/sync`` with his
  token (seen on its plain-HTTP port) and every frame of his device is
  acknowledged (for the polling gateway: the server's empty ACK) — the
  window opens and alice sends.  It closes when his client has the message
  and the next long-poll is parked again: the response with the message plus
  the next request, with their acknowledgements.  For a gateway that pushes,
  the same window holds the push and whatever the next poll costs.
- **W3** cold start: a new device (new TCP connection + TLS 1.3 handshake;
  new client gateway + Noise IK handshake) with alice's token sends the
  reference message.
- **W4** idle: a user in a room where nothing happens runs nio's
  ``sync_forever``; the window runs from one parked long-poll to the parked
  long-poll whole cycles later, and is scaled to bytes per hour.
- **W4s** idle with sliding sync (Element X's only sync): the same, with
  raw sliding-sync long-polls of an Element X-like request.
- **W5** login + first sync of an account with one room and ten messages, on
  a new device.
- **W1x / W2x** a message with sliding sync (Element X): alice and bob each
  run a sliding-sync loop (an Element X-like request) behind fresh devices;
  W1x is alice's link from her send until her loop has her own event back
  and her long-poll is parked again (W1s for Element X), W2x bob's from
  before the send until his loop has it and is parked again (W2 for Element X).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from nio import (
    AsyncClient,
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomSendResponse,
    SyncResponse,
)

from .capture import LiveCapture, SyncWatch, WindowResult
from .devices import Device, Transport, new_nio

#: W4s: simplified sliding sync (MSC4186) and a request as Element X's room
#: list makes it (a list of rooms with their name, the extensions it enables)
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
SLIDING_REQUEST = {
    "conn_id": "room-list",
    "lists": {"all": {"ranges": [[0, 19]], "timeline_limit": 1, "required_state": [["m.room.name", ""]]}},
    "extensions": {"e2ee": {"enabled": True}, "to_device": {"enabled": True}, "account_data": {"enabled": True},
                   "receipts": {"enabled": True}, "typing": {"enabled": True}},
}

REFERENCE_BODY = "Hello, see you at 5pm"
REFERENCE = {"msgtype": "m.text", "body": REFERENCE_BODY}
WARM_UP_BODY = "warming up"

#: the ten messages of W5's room: short, varied chat lines
W5_MESSAGES = [
    "Morning! Are we still on for today?",
    "Yes, the boat leaves at half past four.",
    "Great. I'll bring the charts and the spare radio.",
    "Battery for the handheld is charged.",
    "Wind should drop after three, according to the forecast.",
    "Can you pick up water on the way?",
    "Sure, two big bottles.",
    "Meet at the north pier, by the fuel dock.",
    "Running ten minutes late, sorry.",
    "No problem, we'll wait.",
]


class WorkloadError(RuntimeError):
    pass


def _check(response: Any, kind: type, what: str) -> Any:
    if not isinstance(response, kind):
        raise WorkloadError(f"{what} failed: {response}")
    return response


@dataclass
class Account:
    localpart: str
    password: str
    user_id: str = ""
    device_id: str = ""
    access_token: str = ""


@dataclass
class Cast:
    """The accounts one transport's workloads use."""

    alice: Account
    bob: Account
    room_id: str  # alice and bob
    dave: Account  # W4: alone in his own room
    erin: Account  # W5: one room, ten messages
    erin_room: str


class Setup:
    """Accounts and rooms straight on Synapse (plain HTTP, not captured)."""

    def __init__(self, homeserver: str) -> None:
        self.homeserver = homeserver
        self._clients: list[AsyncClient] = []

    def _client(self, account: Account) -> AsyncClient:
        client = new_nio(self.homeserver, account.localpart)
        if account.access_token:
            client.restore_login(account.user_id, account.device_id, account.access_token)
        self._clients.append(client)
        return client

    async def register(self, localpart: str) -> Account:
        account = Account(localpart, "pw-" + secrets.token_hex(8))
        client = self._client(account)
        resp = _check(await client.register(localpart, account.password, device_name="bench setup"),
                      RegisterResponse, f"registering {localpart}")
        account.user_id, account.device_id, account.access_token = resp.user_id, resp.device_id, resp.access_token
        client.restore_login(resp.user_id, resp.device_id, resp.access_token)
        return account

    async def cast(self, tag: str) -> Cast:
        """``tag`` makes the names unique per run and transport; every
        transport's names have the same length, so the events do too."""
        alice, bob, dave, erin = await asyncio.gather(*(self.register(f"{n}-{tag}")
                                                        for n in ("alice", "bob", "dave", "erin")))
        a, b, d, e = (self._client(x) for x in (alice, bob, dave, erin))
        room = _check(await a.room_create(name="Boat trip", invite=[bob.user_id]), RoomCreateResponse,
                      "creating alice's room")
        _check(await b.join(room.room_id), JoinResponse, "bob joining")
        _check(await d.room_create(name="Notes"), RoomCreateResponse, "creating dave's room")
        erin_room = _check(await e.room_create(name="Harbour"), RoomCreateResponse, "creating erin's room")
        for i, text in enumerate(W5_MESSAGES):
            _check(await e.room_send(erin_room.room_id, "m.room.message", {"msgtype": "m.text", "body": text},
                                     tx_id=f"setup-{i}"), RoomSendResponse, "sending W5's messages")
        return Cast(alice, bob, room.room_id, dave, erin, erin_room.room_id)

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


@dataclass
class RoleIps:
    """One loopback address per device role (``base`` is e.g. "127.0.0.1" + "1" → 127.0.0.11…)."""

    alice: str
    bob: str
    cold: str
    dave: str
    erin: str

    @classmethod
    def numbered(cls, prefix: str) -> RoleIps:
        return cls(*(f"{prefix}{i}" for i in range(1, 6)))


def _logged_in(device: Device, account: Account) -> AsyncClient:
    client = device.nio(account.localpart)
    client.restore_login(account.user_id, account.device_id, account.access_token)
    return client


class SlidingLoop:
    """A device's simplified sliding-sync loop, by raw HTTP as Element X
    makes its requests: the first request, then long-polls one after the
    other.  ``events`` holds every timeline event of the answers, in order."""

    def __init__(self, client: AsyncClient, request: dict[str, Any], timeout_ms: int) -> None:
        self.client, self.request, self.timeout_ms = client, request, timeout_ms
        self.pos: str | None = None
        self.events: list[dict[str, Any]] = []
        self.answered = asyncio.Event()  # set at each answer (the waiter clears it)
        self._session: aiohttp.ClientSession | None = None

    async def poll(self, timeout_ms: int | None) -> None:
        """One request, from the loop's pos (``timeout_ms`` None: the first)."""
        client = self.client
        # the device's own HTTP session (bound to its address, TLS for HTTPS+JSON)
        if self._session is None:
            self._session = client.client_session or aiohttp.ClientSession()
        query = "" if self.pos is None else f"?pos={quote(self.pos, safe='')}&timeout={timeout_ms}"
        async with self._session.post(client.homeserver + SLIDING_SYNC + query, json=self.request, ssl=client.ssl,
                                      headers={"Authorization": f"Bearer {client.access_token}"}) as answer:
            if answer.status != 200:
                raise WorkloadError(f"sliding sync: {answer.status} {await answer.text()}")
            doc = await answer.json()
        self.pos = doc["pos"]
        for room in doc.get("rooms", {}).values():
            self.events += room.get("timeline", [])
        self.answered.set()

    async def run(self) -> None:
        """The first request, then long-polls for ever."""
        await self.poll(None)
        while True:
            await self.poll(self.timeout_ms)

    def has(self, event_id: str) -> bool:
        return any(e.get("event_id") == event_id for e in self.events)

    def has_body(self, body: str) -> bool:
        return any(e.get("content", {}).get("body") == body for e in self.events)

    async def close(self) -> None:
        if self._session is not None and self._session is not self.client.client_session:
            await self._session.close()


class Workloads:
    """W1–W5 for one transport (the module docstring says what each counts)."""

    def __init__(self, capture: LiveCapture, watch: SyncWatch, transport: Transport, cast: Cast, ips: RoleIps, *,
                 sync_timeout_ms: int = 30_000) -> None:
        self.capture = capture
        self.watch = watch
        self._sync_timeout_ms = sync_timeout_ms
        self.transport = transport
        self.cast = cast
        self.ips = ips
        self._devices: list[Device] = []
        self.alice: AsyncClient | None = None
        self.bob: AsyncClient | None = None
        self.dave: AsyncClient | None = None
        self.devices: dict[str, Device] = {}
        #: link counters of each gateway device around each window (for the capture check)
        self.link_checks: list[dict[str, Any]] = []

    async def _device(self, role: str, ip: str) -> Device:
        device = await self.transport.device(ip)
        self._devices.append(device)
        self.devices[role] = device
        return device

    async def warm_up(self) -> None:
        """alice, bob and dave: their devices up, sessions open, tokens bound,
        caught up with a first sync and a second one."""
        c = self.cast
        for role, account, ip in (("alice", c.alice, self.ips.alice), ("bob", c.bob, self.ips.bob),
                                  ("dave", c.dave, self.ips.dave)):
            device = await self._device(role, ip)
            client = _logged_in(device, account)
            for _ in range(2):
                _check(await client.sync(timeout=0), SyncResponse, f"{role}'s warm-up sync")
            setattr(self, role, client)

    async def close(self) -> None:
        for device in self._devices:
            await device.close()
        self._devices.clear()

    def _link_snapshot(self, device: Device | None) -> dict[str, int] | None:
        return device.link_counters() if device is not None else None

    def _note_link(self, name: str, before: dict[str, int] | None, after: dict[str, int] | None,
                   result: WindowResult) -> None:
        if before is None or after is None:
            return
        delta = {k: after[k] - before[k] for k in after}
        self.link_checks.append({
            "workload": name,
            "link_frames": delta["frames_out"] + delta["frames_in"],
            "link_bytes": delta["bytes_out"] + delta["bytes_in"],
            "capture_frames": result.frames,
            "capture_payload_bytes": result.payload_bytes,
        })

    # ------------------------------------------------------------ sync loops

    async def parked(self, account: Account, ip: str, timeout: float = 60.0) -> bool:
        """The device's long-poll is in place: the homeserver holds a ``/sync``
        with its token, and every frame the device sent or got is acknowledged
        (for the polling gateway that includes the server's empty ACK)."""
        await self.capture.barrier()
        return await self.capture.until(
            lambda: self.watch.pending(account.access_token) and self.capture.settled([ip]), timeout)

    def _sync_loop(self, client: AsyncClient, on_response: Any) -> tuple[asyncio.Task[None], Any]:
        """nio's own ``sync_forever``, with ``on_response`` called for each sync."""
        async def callback(response: SyncResponse) -> None:
            on_response(response)

        client.add_response_callback(callback, SyncResponse)
        task = asyncio.create_task(client.sync_forever(timeout=self._sync_timeout_ms))
        return task, callback

    async def _stop_loop(self, client: AsyncClient, task: asyncio.Task[None], callback: Any) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        client.response_callbacks = [cb for cb in client.response_callbacks if cb.func is not callback]

    @staticmethod
    async def _until(event: asyncio.Event, loop_task: asyncio.Task[None], timeout: float, what: str) -> None:
        """Wait for ``event``; fail if the sync loop ends first or it takes too long."""
        waiter = asyncio.create_task(event.wait())
        try:
            done, _ = await asyncio.wait({waiter, loop_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if loop_task in done:
            loop_task.result()
            raise WorkloadError(f"the sync loop stopped while waiting for {what}")
        if not event.is_set():
            raise WorkloadError(f"timed out waiting for {what}")

    # ------------------------------------------------------------ W1 + W2

    async def w1_w2(self) -> tuple[WindowResult, WindowResult, dict[str, Any]]:
        """W1 (alice sends) inside W2 (bob's running sync loop receives it)."""
        assert self.alice is not None and self.bob is not None
        cap, ips, bob = self.capture, self.ips, self.bob
        alice_dev, bob_dev = self.devices["alice"], self.devices["bob"]
        first, received, warmed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        state: dict[str, Any] = {"responses": 0, "event_id": None}

        def on_sync(response: SyncResponse) -> None:
            state["responses"] += 1
            first.set()
            room = response.rooms.join.get(self.cast.room_id)
            for event in room.timeline.events if room else ():
                if getattr(event, "body", None) == WARM_UP_BODY:
                    warmed.set()
                if getattr(event, "body", None) == REFERENCE_BODY:
                    state["event_id"] = event.event_id
                    state["delivered_in"] = state["responses"]
                    received.set()

        loop_task, callback = self._sync_loop(bob, on_sync)
        try:
            await self._until(first, loop_task, 60, "bob's first sync")
            # warm means warm for both users' devices: alice has sent to this
            # room before (the compact form has defined its handle) and bob has
            # received a message through his running loop (a pushing gateway
            # has a previous push to deflate against)
            _check(await self.alice.room_send(self.cast.room_id, "m.room.message",
                                              {"msgtype": "m.text", "body": WARM_UP_BODY}),
                   RoomSendResponse, "alice's warm-up send")
            await self._until(warmed, loop_task, self._sync_timeout_ms / 1000 + 60, "bob to receive the warm-up")
            parked_before = await self.parked(self.cast.bob, ips.bob)
            bob_before = self._link_snapshot(bob_dev)
            w2 = await cap.open(f"{self.transport.name}:W2", [ips.bob])
            state["responses_at_open"] = state["responses"]

            alice_before = self._link_snapshot(alice_dev)
            w1 = await cap.open(f"{self.transport.name}:W1", [ips.alice])
            sent = _check(await self.alice.room_send(self.cast.room_id, "m.room.message", dict(REFERENCE)),
                          RoomSendResponse, "alice's send")
            r1 = await cap.close(w1)
            self._note_link("W1", alice_before, self._link_snapshot(alice_dev), r1)

            await self._until(received, loop_task, self._sync_timeout_ms / 1000 + 60, "bob to receive the message")
            # nio's next long-poll is in place again: "the response plus the next request"
            parked_after = await self.parked(self.cast.bob, ips.bob)
            r2 = await cap.close(w2)
            self._note_link("W2", bob_before, self._link_snapshot(bob_dev), r2)
        finally:
            await self._stop_loop(bob, loop_task, callback)
        if state["event_id"] != sent.event_id:
            raise WorkloadError("bob received another event than alice sent")
        return r1, r2, {"parked": parked_before and parked_after,
                        "sync_responses": state["delivered_in"] - state["responses_at_open"],
                        "event_id_length": len(sent.event_id)}

    # ------------------------------------------------------------ W1s

    async def w1_sender(self) -> WindowResult:
        """W1s, the sender per message: alice sends the reference message with
        her own sync loop running, as every client does — the send, its
        answer and her own event coming back to her through /sync (the
        echo), until her next long-poll is parked again."""
        assert self.alice is not None
        cap, ips, alice = self.capture, self.ips, self.alice
        alice_dev = self.devices["alice"]
        first, warmed, echoed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        wanted: dict[str, str | None] = {"event_id": None}
        seen: set[str] = set()

        def on_sync(response: SyncResponse) -> None:
            first.set()
            room = response.rooms.join.get(self.cast.room_id)
            for event in room.timeline.events if room else ():
                seen.add(event.event_id)
                if getattr(event, "body", None) == WARM_UP_BODY:
                    warmed.set()
                if event.event_id == wanted["event_id"]:
                    echoed.set()

        loop_task, callback = self._sync_loop(alice, on_sync)
        try:
            await self._until(first, loop_task, 60, "alice's first sync")
            # warm: her loop has had her own events back twice — the first may
            # come in the answer to the loop's registration, before a pushing
            # gateway holds the idle template; a loop that has run a while has both
            for _ in range(2):
                warmed.clear()
                _check(await alice.room_send(self.cast.room_id, "m.room.message",
                                             {"msgtype": "m.text", "body": WARM_UP_BODY}),
                       RoomSendResponse, "alice's warm-up send")
                await self._until(warmed, loop_task, self._sync_timeout_ms / 1000 + 60, "alice's own warm-up")
                if not await self.parked(self.cast.alice, ips.alice):
                    raise WorkloadError("alice's long-poll was not parked before her send")
            before = self._link_snapshot(alice_dev)
            window = await cap.open(f"{self.transport.name}:W1s", [ips.alice])
            sent = _check(await alice.room_send(self.cast.room_id, "m.room.message", dict(REFERENCE)),
                          RoomSendResponse, "alice's send")
            wanted["event_id"] = sent.event_id
            if sent.event_id in seen:  # her loop had the echo before nio returned from the send
                echoed.set()
            await self._until(echoed, loop_task, self._sync_timeout_ms / 1000 + 60, "alice's own echo")
            if not await self.parked(self.cast.alice, ips.alice):
                raise WorkloadError("alice's long-poll was not parked again after her echo")
            result = await cap.close(window)
            self._note_link("W1s", before, self._link_snapshot(alice_dev), result)
        finally:
            await self._stop_loop(alice, loop_task, callback)
        return result

    # ------------------------------------------------------------ W3

    async def w3(self) -> WindowResult:
        cap, ip = self.capture, self.ips.cold
        window = await cap.open(f"{self.transport.name}:W3", [ip])
        device = await self._device("cold", ip)
        client = _logged_in(device, self.cast.alice)
        _check(await client.room_send(self.cast.room_id, "m.room.message", dict(REFERENCE)), RoomSendResponse,
               "the cold send")
        before = {"frames_out": 0, "bytes_out": 0, "frames_in": 0, "bytes_in": 0}
        result = await cap.close(window)
        self._note_link("W3", before if device.link_counters() is not None else None, device.link_counters(),
                        result)
        return result

    # ------------------------------------------------------------ W4

    async def w4(self, cycles: int) -> tuple[WindowResult, dict[str, Any]]:
        """``cycles`` whole long-poll cycles of nio's ``sync_forever``, from one
        parked long-poll to another (module docstring)."""
        client = self.dave
        assert client is not None
        cap, ip = self.capture, self.ips.dave
        device = self.devices["dave"]
        state = {"responses": 0, "with_news": 0, "target": 1}
        reached = asyncio.Event()

        def on_sync(response: SyncResponse) -> None:
            state["responses"] += 1
            if state["responses"] > 1 and (response.rooms.join or response.rooms.invite or response.rooms.leave
                                           or response.presence_events):
                state["with_news"] += 1
            if state["responses"] >= state["target"]:
                reached.set()

        loop_task, callback = self._sync_loop(client, on_sync)
        try:
            await self._until(reached, loop_task, 60, "dave's first sync")  # sync_forever's catch-up (timeout 0)
            parked_before = await self.parked(self.cast.dave, ip)
            before = self._link_snapshot(device)
            window = await cap.open(f"{self.transport.name}:W4", [ip], keep_frames=False)
            state["target"] = state["responses"] + cycles
            reached.clear()
            await self._until(reached, loop_task, cycles * (self._sync_timeout_ms / 1000 + 15) + 60,
                              f"{cycles} long-poll cycles")
            parked_after = await self.parked(self.cast.dave, ip)
            result = await cap.close(window)
            self._note_link("W4", before, self._link_snapshot(device), result)
        finally:
            await self._stop_loop(client, loop_task, callback)
        return result, {"cycles": cycles, "sync_timeout_ms": self._sync_timeout_ms,
                        "cycles_with_news": state["with_news"], "parked": parked_before and parked_after}

    # ------------------------------------------------------------ W4s

    async def w4_sliding(self, cycles: int) -> tuple[WindowResult, dict[str, Any]]:
        """W4 for sliding sync (Element X's only sync): dave's device
        long-polls with an Element X-like request, ``cycles`` whole cycles
        from one parked long-poll to another, as W4 (module docstring)."""
        cap, ip = self.capture, self.ips.dave
        # a fresh device on dave's address: W4's device still holds nio's /sync
        # observation, whose cancellation (3 timeouts after the loop stopped)
        # would fall into this window; closing it sends the cancel now
        await self.devices["dave"].close()
        device = await self._device("dave", ip)
        client = _logged_in(device, self.cast.dave)
        assert client.access_token
        # both transports log dave in with one device ID: one connection each
        loop = SlidingLoop(client, {**SLIDING_REQUEST, "conn_id": f"room-list-{self.transport.name}"},
                           self._sync_timeout_ms)
        try:
            await loop.poll(None)  # the first request lists the rooms
            await loop.poll(1000)  # the first long-poll (the gateway registers the connection)
            parked = asyncio.create_task(loop.poll(self._sync_timeout_ms))
            parked_before = await self.parked(self.cast.dave, ip)
            before = self._link_snapshot(device)
            window = await cap.open(f"{self.transport.name}:W4s", [ip], keep_frames=False)
            for _ in range(cycles):
                await parked
                parked = asyncio.create_task(loop.poll(self._sync_timeout_ms))
            parked_after = await self.parked(self.cast.dave, ip)
            result = await cap.close(window)
            self._note_link("W4s", before, self._link_snapshot(device), result)
            parked.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await parked
        finally:
            await loop.close()
        return result, {"cycles": cycles, "sync_timeout_ms": self._sync_timeout_ms,
                        "parked": parked_before and parked_after}

    # ------------------------------------------------------------ W1x + W2x

    async def sliding_conversation(self) -> tuple[WindowResult, WindowResult, dict[str, Any]]:
        """W1x and W2x (module docstring): the reference message from alice
        to bob, both syncing as Element X does."""
        cap, ips, c = self.capture, self.ips, self.cast
        loops: dict[str, SlidingLoop] = {}
        tasks: dict[str, asyncio.Task[None]] = {}
        for role, account, ip in (("alice", c.alice, ips.alice), ("bob", c.bob, ips.bob)):
            # fresh devices: the earlier ones still hold nio's /sync
            # observations, whose cancellation would fall into the windows
            await self.devices[role].close()
            client = _logged_in(await self._device(role, ip), account)
            loops[role] = SlidingLoop(client, {**SLIDING_REQUEST, "conn_id": f"bench-{self.transport.name}"},
                                      self._sync_timeout_ms)
            tasks[role] = asyncio.create_task(loops[role].run())
        alice, bob = loops["alice"], loops["bob"]
        sender = alice.client

        async def until(role: str, seen: Any, what: str) -> None:
            loop = loops[role]
            while not seen(loop):
                loop.answered.clear()
                await self._until(loop.answered, tasks[role], self._sync_timeout_ms / 1000 + 60, what)

        try:
            # warm, as for W1s and W2: her own events back twice, his loop has had one of hers
            for n in range(2):
                body = f"{WARM_UP_BODY} {n}"
                _check(await sender.room_send(c.room_id, "m.room.message", {"msgtype": "m.text", "body": body}),
                       RoomSendResponse, "alice's warm-up send")
                await until("alice", lambda loop, body=body: loop.has_body(body), "alice's own warm-up")
                await until("bob", lambda loop, body=body: loop.has_body(body), "bob to receive the warm-up")
            parked_before = (await self.parked(c.alice, ips.alice)) and (await self.parked(c.bob, ips.bob))
            bob_before, alice_before = self._link_snapshot(self.devices["bob"]), self._link_snapshot(
                self.devices["alice"])
            w2 = await cap.open(f"{self.transport.name}:W2x", [ips.bob])
            w1 = await cap.open(f"{self.transport.name}:W1x", [ips.alice])
            sent = _check(await sender.room_send(c.room_id, "m.room.message", dict(REFERENCE)),
                          RoomSendResponse, "alice's send")
            await until("alice", lambda loop: loop.has(sent.event_id), "alice's own echo")
            parked_alice = await self.parked(c.alice, ips.alice)
            r1 = await cap.close(w1)
            self._note_link("W1x", alice_before, self._link_snapshot(self.devices["alice"]), r1)
            await until("bob", lambda loop: loop.has(sent.event_id), "bob to receive the message")
            parked_bob = await self.parked(c.bob, ips.bob)
            r2 = await cap.close(w2)
            self._note_link("W2x", bob_before, self._link_snapshot(self.devices["bob"]), r2)
        finally:
            for task in tasks.values():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for loop in loops.values():
                await loop.close()
        return r1, r2, {"parked": parked_before and parked_alice and parked_bob}

    # ------------------------------------------------------------ W5

    async def w5(self) -> tuple[WindowResult, dict[str, Any]]:
        cap, ip = self.capture, self.ips.erin
        window = await cap.open(f"{self.transport.name}:W5", [ip])
        device = await self._device("erin", ip)
        client = device.nio(self.cast.erin.localpart)
        _check(await client.login(self.cast.erin.password, device_name="bench W5"), LoginResponse, "W5 login")
        sync = _check(await client.sync(timeout=0), SyncResponse, "W5 first sync")
        result = await cap.close(window)
        counters = device.link_counters()
        if counters is not None:
            self._note_link("W5", dict.fromkeys(counters, 0), counters, result)
        room = sync.rooms.join.get(self.cast.erin_room)
        bodies = [getattr(e, "body", None) for e in room.timeline.events] if room else []
        missing = [m for m in W5_MESSAGES if m not in bodies]
        if missing:
            raise WorkloadError(f"W5's first sync lacks {len(missing)} of the ten messages")
        return result, {"timeline_events": len(bodies), "state_events": len(room.state) if room else 0}
