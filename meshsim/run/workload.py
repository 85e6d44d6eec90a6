"""The Matrix side of a run: matrix-nio clients that register, make rooms, send and sync.

Setup registers every user, creates and joins the rooms (a member on another
homeserver joins over federation, through the inviter's server) and has each
client sync until it sees every member of its rooms; only then do the
clients' own sync loops start.  A message is *received* when the receiver's sync returns
it (matched by its body, which the scenario keeps unique); its latency runs
from the start of the send.  A send that fails is retried with the same
transaction ID, so the homeserver never stores it twice.

matrix-nio is an optional dependency (the ``matrix`` extra): it is imported
where it is used, so the rest of meshsim runs without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..model import Node, Topology
from .console import PhaseProgress
from .record import RunError, RunRecord
from .scenario import RoomSpec, Scenario, Send

#: how long a setup sync waits for news (a join, an invite) before asking again
SETUP_SYNC_TIMEOUT_MS = 5000
#: pause after a failed sync before the loop tries again (a retry back-off, not synchronisation)
SYNC_RETRY_PAUSE = 1.0


@dataclass
class Client:
    """One user: a matrix-nio client on a device node."""

    user: str
    user_id: str
    node: Node
    password: str
    nio: Any = None
    sync_task: asyncio.Task[None] | None = None


@dataclass
class Message:
    """One message to send, and who has received it so far."""

    send: Send
    phase: str
    recipients: frozenset[str]
    received_by: set[str] = field(default_factory=set)
    delivered: asyncio.Event = field(default_factory=asyncio.Event)


class Workload:
    """The scenario's users, rooms and messages, played through matrix-nio."""

    def __init__(self, scenario: Scenario, topology: Topology, record: RunRecord, progress: PhaseProgress) -> None:
        self.scenario = scenario
        self.record = record
        self.progress = progress
        self.clients: dict[str, Client] = {
            c.user: Client(c.user, scenario.user_id(c.user), topology.node(c.node), "pw-" + secrets.token_hex(8))
            for c in scenario.clients
        }
        self.messages: dict[str, Message] = {}
        self.by_body: dict[str, Message] = {}
        for phase in scenario.phases:
            for send in phase.sends:
                message = Message(send, phase.name, frozenset(scenario.recipients(send)))
                self.messages[send.id] = message
                self.by_body[send.body] = message
        #: room name -> room ID, once created
        self.room_ids: dict[str, str] = {}

    def connect(self, user: str, base_url: str) -> None:
        """`user`'s nio client, talking HTTP to `base_url` (its client gateway)."""
        from nio import AsyncClient, AsyncClientConfig

        config = AsyncClientConfig(request_timeout=self.scenario.matrix.request_timeout, max_timeouts=0)
        self.clients[user].nio = AsyncClient(base_url, user, config=config)

    async def close(self) -> None:
        for client in self.clients.values():
            if client.nio is not None:
                with contextlib.suppress(Exception):
                    await client.nio.close()

    # ------------------------------------------------------------ setup

    def setup_steps(self) -> int:
        return len(self.clients) * 2 + sum(len(r.members) for r in self.scenario.rooms)

    async def setup(self) -> None:
        from nio import JoinResponse, RegisterResponse, RoomCreateResponse

        for client in self.clients.values():
            response = await client.nio.register(client.user, client.password, device_name=f"meshsim {client.node.name}")
            if not isinstance(response, RegisterResponse):
                raise RunError(f"registering {client.user} failed: {response}")
            self.progress.advance()
        for room in self.scenario.rooms:
            creator = self.clients[room.members[0]]
            others = [self.clients[m].user_id for m in room.members[1:]]
            response = await creator.nio.room_create(name=room.name, invite=others)
            if not isinstance(response, RoomCreateResponse):
                raise RunError(f"{creator.user} could not create room {room.name}: {response}")
            self.room_ids[room.name] = response.room_id
            self.progress.advance()
            for member in room.members[1:]:
                joined = await self.clients[member].nio.join(response.room_id)
                if not isinstance(joined, JoinResponse):
                    raise RunError(f"{member} could not join room {room.name}: {joined}")
                self.progress.advance()
        self.record.emit("rooms", rooms=self.room_ids)
        await asyncio.gather(*(self._sync_until_ready(c) for c in self.clients.values()))

    async def _sync_until_ready(self, client: Client) -> None:
        """Sync until this client sees every member joined in each of its rooms."""
        from nio import SyncResponse

        wanted = {
            self.room_ids[r.name]: {self.clients[m].user_id for m in r.members}
            for r in self.scenario.rooms if client.user in r.members
        }
        failures = 0
        while True:
            response = await client.nio.sync(timeout=SETUP_SYNC_TIMEOUT_MS, sync_filter=self._sync_filter())
            if not isinstance(response, SyncResponse):
                failures += 1
                if failures > 5:
                    raise RunError(f"{client.user}'s setup sync keeps failing: {response}")
                continue
            rooms = client.nio.rooms
            if all(room_id in rooms and members <= set(rooms[room_id].users) for room_id, members in wanted.items()):
                self.record.emit("ready", user=client.user)
                self.progress.advance()
                return

    def _sync_filter(self) -> Any:
        f = self.scenario.matrix.sync_filter
        return dict(f) if f is not None else None

    # ------------------------------------------------------------ receiving

    def start_sync_loops(self) -> None:
        for client in self.clients.values():
            client.sync_task = asyncio.create_task(self._sync_loop(client))

    async def stop_sync_loops(self) -> None:
        for client in self.clients.values():
            if client.sync_task is not None:
                client.sync_task.cancel()
        await asyncio.gather(*(c.sync_task for c in self.clients.values() if c.sync_task), return_exceptions=True)

    async def _sync_loop(self, client: Client) -> None:
        """The client's own sync loop: every message it receives is recorded when its sync returns."""
        from nio import SyncResponse

        timeout_ms = int(self.scenario.matrix.sync_timeout * 1000)
        while True:
            try:
                response = await client.nio.sync(timeout=timeout_ms, sync_filter=self._sync_filter())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - nio raises on its own request timeout; the loop goes on
                response = exc
            now = self.record.now()
            if not isinstance(response, SyncResponse):
                self.record.emit("sync_error", user=client.user, error=str(response)[:200])
                await asyncio.sleep(SYNC_RETRY_PAUSE)
                continue
            for room in response.rooms.join.values():
                for event in room.timeline.events:
                    message = self.by_body.get(getattr(event, "body", None))
                    if message is not None and client.user in message.recipients:
                        self._received(message, client.user, event.event_id, now)

    def _received(self, message: Message, user: str, event_id: str, now: float) -> None:
        self.record.emit("receive", msg=message.send.id, user=user, event_id=event_id)
        if user not in message.received_by:
            message.received_by.add(user)
            self.progress.advance()
            self.progress.log(f"{now:8.1f} s  {user} has {message.send.id}")
            if message.received_by >= message.recipients:
                message.delivered.set()

    async def delivered(self, message_id: str) -> None:
        """Until every recipient has `message_id` (every copy, for a repeated send's id)."""
        group = [m for m in self.messages.values() if m.send.id == message_id or m.send.group == message_id]
        for message in group:
            await message.delivered.wait()

    # ------------------------------------------------------------ sending

    async def send(self, send: Send, phase_start: float) -> None:
        """Send at its time (after its `after`), retrying failures; returns once every recipient has it."""
        from nio import RoomSendResponse

        record = self.record
        base = phase_start
        if send.after is not None:
            await self.delivered(send.after)
            base = record.now()
        await asyncio.sleep(max(0.0, base + send.at - record.now()))
        client = self.clients[send.sender]
        message = self.messages[send.id]
        room_id = self.room_ids[send.room]
        transaction = "meshsim-" + send.id.replace("#", "-")
        content = {"msgtype": "m.text", "body": send.body}
        retries = self.scenario.matrix.send_retries
        for attempt in range(retries + 1):
            record.emit("send", msg=send.id, user=send.sender, room=send.room, attempt=attempt)
            self.progress.log(f"{record.now():8.1f} s  {send.sender} sends {send.id}" + (f" (retry {attempt})" if attempt else ""))
            try:
                response = await client.nio.room_send(room_id, "m.room.message", content, tx_id=transaction)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a timeout or a dropped connection: retried like an error
                response = exc
            if isinstance(response, RoomSendResponse):
                record.emit("sent", msg=send.id, event_id=response.event_id)
                self.progress.log(f"{record.now():8.1f} s  {send.sender}'s send of {send.id} returned")
                break
            # the same transaction id: the homeserver makes a retry idempotent
            record.emit("send_error", msg=send.id, error=str(response)[:200], final=attempt == retries)
        else:
            return
        if not message.recipients:
            message.delivered.set()
        await message.delivered.wait()

    # ------------------------------------------------------------ history

    def history_reader(self, room: RoomSpec, homeserver: str) -> tuple[str, str] | None:
        """The room's ID and the access token of its first member on `homeserver`, to read
        the room's history there with; None before setup made it."""
        room_id = self.room_ids.get(room.name)
        member = next((m for m in room.members if self.scenario.client(m).homeserver == homeserver), None)
        client = self.clients[member] if member is not None else None
        token = client.nio.access_token if room_id and client is not None and client.nio is not None else None
        return (room_id, token) if room_id and token else None

    def bodies(self, room: RoomSpec) -> Mapping[str, str]:
        """Body -> message ID of the messages sent in `room`."""
        return {m.send.body: m.send.id for m in self.messages.values() if m.send.room == room.name}
