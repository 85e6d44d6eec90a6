"""The homeserver and the gateways of a run: Synapse and coap_gateway, started, retimed and stopped.

Only coap_gateway's public API is used (``coap_gateway.app``: start_server,
start_client and what they return; ``transport``: UdpLink, LinkBudget, KeyLog;
``secure.keys``; ``codec.load_profile``; ``tools.LocalSynapse``).

Addressing: Synapse listens on the homeserver node's private address; the
server gateway's CoAP side binds the same address on the CoAP port, and a
device's client gateway binds its node's private address and sends to the
homeserver node's *public* address, so every frame crosses the network.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from coap_gateway.app import RunningClient, RunningServer, advertisement_for, start_client, start_server
from coap_gateway.codec import Profile, load_profile
from coap_gateway.secure import keys
from coap_gateway.tools import LocalSynapse
from coap_gateway.transport import KeyLog, LinkBudget, UdpLink

from ..model import Node
from .scenario import GatewaySettings

#: the client gateway's logger: it warns about every request a shutdown fails
GATEWAY_LOGGER = "coap_gateway.gateway.client"

BudgetLookup = Callable[[Hashable], LinkBudget]


class Homeserver:
    """Synapse on the homeserver node, and the server gateway in front of it."""

    def __init__(self, name: str, node: Node, settings: GatewaySettings, coap_port: int) -> None:
        self.name = name
        self.node = node
        self.settings = settings
        self.coap_port = coap_port
        #: the codec profile both sides use (loaded with the server gateway)
        self.profile: Profile | None = None
        self.synapse: LocalSynapse | None = None
        self.gateway: RunningServer | None = None
        self.link: UdpLink | None = None
        self._static_private: bytes | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where devices send their CoAP frames: the node's public address."""
        return (self.node.public_ip, self.coap_port)

    @property
    def public_key(self) -> bytes | None:
        """The server gateway's static Noise key (None in plaintext)."""
        return keys.public_from_private(self._static_private) if self._static_private is not None else None

    @property
    def base_url(self) -> str:
        assert self.synapse is not None
        return self.synapse.base_url

    async def start_synapse(self, directory: Path) -> None:
        self.synapse = LocalSynapse(directory, server_name=self.name, host=self.node.private_ip)
        await self.synapse.start()

    async def start_gateway(self, budget: LinkBudget, budget_for_address: BudgetLookup, state_dir: Path,
                            key_log: KeyLog | None = None) -> None:
        """The server gateway, its link timed by `budget`, each device's timers
        by its own path's; what it keeps across restarts in `state_dir`; the
        keys of its sessions appended to `key_log` (for Wireshark)."""
        self.profile = profile = load_profile(self.settings.profile)
        self._static_private = keys.generate_keypair()[0] if self.settings.secure else None
        self.link = await UdpLink.open(self.node.private_ip, self.coap_port, budget)
        host, port = self.address
        self.gateway = await start_server(
            self.link, homeserver=self.base_url, profile=profile, static_private=self._static_private,
            advertisement=advertisement_for(f"udp://{host}:{port}", self._static_private, profile),
            state_dir=state_dir if self._static_private is not None else None, key_log=key_log,
        )
        self.gateway.set_peer_budgets(budget_for_address)

    def retime(self, budget_for_address: BudgetLookup) -> None:
        """Paths changed: each device's timers are made again from `budget_for_address`."""
        if self.gateway is not None:
            self.gateway.set_peer_budgets(budget_for_address)

    async def room_history(self, room_id: str, token: str) -> list[dict[str, Any]]:
        """The room's events, newest first, from Synapse itself (not over the links)."""
        url = f"{self.base_url}/_matrix/client/v3/rooms/{room_id}/messages"
        params = {"dir": "b", "limit": "1000"}
        async with aiohttp.ClientSession() as http, \
                http.get(url, params=params, headers={"Authorization": f"Bearer {token}"}) as response:
            return (await response.json()).get("chunk", [])

    async def stop_gateway(self) -> None:
        for step in (self.gateway.stop if self.gateway else None, self.link.close if self.link else None):
            if step is not None:
                with contextlib.suppress(Exception):
                    await step()

    async def stop_synapse(self, out_dir: Path) -> None:
        """Stop Synapse and keep its log as ``homeserver.log``."""
        if self.synapse is not None:
            await self.synapse.stop()
            if self.synapse.log_path.exists():
                shutil.copyfile(self.synapse.log_path, out_dir / "homeserver.log")


class DeviceGateway:
    """A client gateway on a device's node: CoAP to the homeserver's node, HTTP for matrix-nio."""

    def __init__(self, node: Node, budget: LinkBudget) -> None:
        self.node = node
        self.budget = budget
        self.link: UdpLink | None = None
        self.gateway: RunningClient | None = None

    async def start(self, homeserver: Homeserver, *, secure: bool, key_log: KeyLog | None = None) -> None:
        """After the homeserver's gateway (its profile and key); its sessions' keys to `key_log`."""
        assert homeserver.profile is not None
        self.link = await UdpLink.open(self.node.private_ip, 0, self.budget)
        self.gateway = await start_client(
            self.link, homeserver.address, profile=homeserver.profile,
            static_private=keys.generate_keypair()[0] if secure else None,
            server_public=homeserver.public_key, host=self.node.private_ip, port=0, key_log=key_log,
        )

    @property
    def base_url(self) -> str:
        """Where matrix-nio sends its HTTP requests."""
        assert self.gateway is not None
        return self.gateway.base_url

    def retime(self, budget: LinkBudget) -> None:
        """The path changed: later exchanges use `budget`."""
        self.budget = budget
        if self.gateway is not None:
            self.gateway.set_budget(budget)

    async def stop(self) -> None:
        for step in (self.gateway.stop if self.gateway else None, self.link.close if self.link else None):
            if step is not None:
                with contextlib.suppress(Exception):
                    await step()


def gateway_counters(homeserver: Homeserver, devices: dict[str, DeviceGateway]) -> dict[str, Any]:
    """Every gateway's counters: the server's under "server", each device's under its user."""
    counters: dict[str, Any] = {}
    if homeserver.gateway is not None:
        counters["server"] = homeserver.gateway.counters()
    for user, device in devices.items():
        if device.gateway is not None:
            counters[user] = device.gateway.counters()
    return counters


@contextlib.contextmanager
def quiet_shutdown() -> Iterator[None]:
    """Failing the requests still held is the point of a shutdown, not news: keep the client
    gateways' warnings about them out of the console."""
    gateway_log = logging.getLogger(GATEWAY_LOGGER)
    level = gateway_log.level
    gateway_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        gateway_log.setLevel(level)
