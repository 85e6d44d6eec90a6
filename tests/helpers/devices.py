"""Devices for end-to-end tests: matrix-nio → client gateway → emulated
link → server gateway → a real Synapse (the ``synapse`` fixture)."""

from __future__ import annotations

import asyncio
import tempfile
import uuid

from nio import AsyncClient, AsyncClientConfig, RegisterResponse, RoomMessageText

from coap_gateway.app import start_client, start_server
from coap_gateway.codec import DEFAULT_PROFILE, load_profile
from coap_gateway.push import Status, SyncPushClientConfig
from coap_gateway.push.format import is_empty_sync
from coap_gateway.secure import keys
from meshsim import LinkProfile, emulated_link_pair

PROFILE = load_profile(DEFAULT_PROFILE)
FAST = LinkProfile(rate_bps=1_000_000, delay=0.002)


class Device:
    """One user's device: a client gateway on its own link to a server gateway."""

    def __init__(self, link_profile: LinkProfile, synapse, server_priv, seed: int, max_retransmit: int = 4,
                 sync_push: bool = True, reverse: LinkProfile | None = None):
        self.link_profile = link_profile
        self.reverse = reverse
        self.max_retransmit = max_retransmit
        self.sync_push = sync_push
        self.synapse = synapse
        self.server_priv = server_priv
        self.seed = seed

    async def __aenter__(self):
        self.client_link, self.server_link = emulated_link_pair(self.link_profile, seed=self.seed,
                                                                max_retransmit=self.max_retransmit,
                                                                reverse=self.reverse)
        # a deployed server gateway keeps its state (replay protection) across restarts
        self.state = tempfile.TemporaryDirectory(prefix="server-state-")
        self.server = await start_server(self.server_link, homeserver=self.synapse.base_url, profile=PROFILE,
                                         static_private=self.server_priv,
                                         state_dir=self.state.name)
        client_priv, _ = keys.generate_keypair()
        # a key made for this device: its scope is the key's (docs/protocol.md §7a), as `coap-gateway client` does
        self.client = await start_client(self.client_link, "server", profile=PROFILE, static_private=client_priv,
                                         server_public=keys.public_from_private(self.server_priv),
                                         sync_push=self.sync_push, fresh_key=True)
        return self

    async def __aexit__(self, *exc):
        await self.client.stop()
        await self.server.stop()
        self.state.cleanup()

    def reshape(self, profile: LinkProfile) -> None:
        """Change the link at runtime (queued frames are not flushed)."""
        loop = asyncio.get_running_loop()
        for end in (self.client_link, self.server_link):
            end.stages[0].set_profile(profile, loop.time())
            end.budget = type(end.budget)(rate_bps=profile.rate_bps, frame_overhead=max(0, profile.overhead),
                                          latency=profile.delay + profile.jitter, max_frame=end.budget.max_frame,
                                          max_retransmit=end.budget.max_retransmit)
        for gateway_end in (self.client.endpoint, self.server.endpoint):
            gateway_end.set_budget(gateway_end.interface.link.budget)

    def link_bytes(self) -> tuple[int, int]:
        return self.client_link.sent_bytes, self.server_link.sent_bytes

    def waiting_on_push(self) -> bool:
        """A long-poll waits on an observation that is up and has its template
        (so nothing crosses the link until there is something to push)."""
        push = self.client.gateway.sync_push
        return any(st.status.value == "active" and st.waiting and st.template is not None
                   for st in push.state.streams.values())

    def push_has_template(self) -> bool:
        push = self.client.gateway.sync_push
        return any(st.status.value == "active" and st.template is not None for st in push.state.streams.values())

    def link_frames(self) -> int:
        return self.client_link.sent_frames + self.server_link.sent_frames


def nio(base_url: str, user: str) -> AsyncClient:
    return AsyncClient(base_url, user, config=AsyncClientConfig(request_timeout=900, max_timeouts=0))


async def register(client: AsyncClient, name: str) -> None:
    resp = await client.register(name, "password-" + name, device_name="test")
    assert isinstance(resp, RegisterResponse), resp


async def chat_setup(synapse, dev_a, dev_b):
    suffix = uuid.uuid4().hex[:6]
    alice, bob = nio(dev_a.client.base_url, f"alice{suffix}"), nio(dev_b.client.base_url, f"bob{suffix}")
    await register(alice, f"alice{suffix}")
    await register(bob, f"bob{suffix}")
    room = await alice.room_create(invite=[bob.user_id])
    await bob.join(room.room_id)
    # both caught up: the next syncs carry only what comes next
    await alice.sync(timeout=0)
    await bob.sync(timeout=0)
    await bob.sync(timeout=0)
    return alice, bob, room.room_id


async def until(predicate, timeout: float = 60.0) -> None:
    """Wait (loop time) until ``predicate()`` holds; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition never came true"
        await asyncio.sleep(0.01)


IP_OVERHEAD = 42  # Ethernet + IPv4 + UDP per frame


class PushDevice:
    """One user's device (as Device) with push settings,
    and a server gateway that can be restarted under it."""

    def __init__(self, synapse, server_priv, seed: int, *, max_retransmit: int = 4, keepalive: float | None = None,
                 push: SyncPushClientConfig | None = None):
        self.synapse, self.server_priv, self.seed = synapse, server_priv, seed
        self.max_retransmit, self.keepalive = max_retransmit, keepalive
        self.push = push or SyncPushClientConfig()

    async def __aenter__(self):
        self.client_link, self.server_link = emulated_link_pair(FAST, seed=self.seed,
                                                                max_retransmit=self.max_retransmit)
        self.state = tempfile.TemporaryDirectory(prefix="server-state-")  # kept across restart_server()
        self.server = await self._start_server()
        self.client = await start_client(self.client_link, "server", profile=PROFILE,
                                         static_private=keys.generate_keypair()[0],
                                         server_public=keys.public_from_private(self.server_priv),
                                         sync_push=self.push, keepalive=self.keepalive)
        self.upstream: list[bytes] = []  # every sync body Synapse gave the server gateway
        return self

    async def _start_server(self):
        server = await start_server(self.server_link, homeserver=self.synapse.base_url, profile=PROFILE,
                                    static_private=self.server_priv, state_dir=self.state.name)
        server.gateway.sync_push.upstream_observers.append(lambda _since, r: self.upstream.append(r.body))
        return server

    async def restart_server(self) -> None:
        """Stop the server gateway and start a new one (all state in memory
        lost; its state directory kept) on a fresh end of the same link."""
        await self.server.stop()
        _, self.server_link = emulated_link_pair(FAST, seed=self.seed + 1000, max_retransmit=self.max_retransmit)
        self.server_link.other, self.client_link.other = self.client_link, self.server_link
        self.server = await self._start_server()

    async def __aexit__(self, *exc):
        await self.client.stop()
        await self.server.stop()
        self.state.cleanup()

    @property
    def push_client(self):
        return self.client.gateway.sync_push

    @property
    def push_server(self):
        return self.server.gateway.sync_push

    def link_bytes(self) -> tuple[int, int]:
        return self.client_link.sent_bytes, self.server_link.sent_bytes

    def link_frames(self) -> int:
        return self.client_link.sent_frames + self.server_link.sent_frames

    def waiting_on_push(self) -> bool:
        """A long-poll of this device waits on an observation that is up."""
        return any(s.status is Status.ACTIVE and s.waiting for s in self.push_client.state.streams.values())


class Receiver:
    """bob's nio sync_forever loop; every m.text it sees, in order."""

    def __init__(self, client, room_id: str):
        self.client, self.room_id = client, room_id
        self.bodies: list[str] = []
        self.event_ids: list[str] = []

        async def on_message(room, event):
            if room.room_id == room_id:
                self.bodies.append(event.body)
                self.event_ids.append(event.event_id)

        client.add_event_callback(on_message, RoomMessageText)
        self.task = asyncio.create_task(client.sync_forever(timeout=30000))

    async def wait_for(self, count: int) -> None:
        await until(lambda: len(self.bodies) >= count)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def exact_answers(dev: PushDevice, answers: list[bytes]) -> None:
    """Every non-idle answer the client got is a body Synapse produced, byte for byte."""
    for body in answers:
        if not is_empty_sync(body):
            assert body in dev.upstream
