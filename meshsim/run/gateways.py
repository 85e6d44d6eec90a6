"""The homeservers and the gateways of a run: Synapse and coap_gateway, started, retimed and stopped.

Only coap_gateway's public API is used (``coap_gateway.app``: start_server,
start_client, start_federation and what they return; ``transport``:
UdpLink, LinkBudget, KeyLog; ``secure.keys``; ``codec.load_profile``;
``federation``: the CA and the peers table; ``tools.LocalSynapse``).

Addressing: Synapse listens on the homeserver node's private address; the
server gateway's CoAP side binds the same address on the CoAP port, and a
device's client gateway binds its node's private address and sends to the
homeserver node's *public* address, so every frame crosses the network.

Federation (several homeservers): each homeserver's outbound federation goes
to its own federation gateway (Synapse's ``https_proxy``, on the node's
private address, trusting the gateway's CA), which binds the node's private
address on the federation port and sends to the peer homeserver node's
public address on it: the peers table every gateway shares names each
homeserver's public address and pinned Noise key.  The fabric carries those
frames hop by hop like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from coap_gateway.app import (
    RunningClient,
    RunningFederation,
    RunningServer,
    start_client,
    start_federation,
    start_server,
)
from coap_gateway.codec import Profile, load_profile
from coap_gateway.federation import CA_CERT, FederationCA, FederationConfig, Peer, PeersTable
from coap_gateway.secure import keys
from coap_gateway.tools import LocalSynapse, free_port
from coap_gateway.transport import KeyLog, LinkBudget, UdpLink

from ..model import Node
from .scenario import FederationSettings, GatewaySettings

#: events read back per room for the exactly-once check (scenarios send far fewer)
HISTORY_LIMIT = 1000
#: the client gateway's logger: it warns about every request a shutdown fails
GATEWAY_LOGGER = "coap_gateway.gateway.client"

BudgetLookup = Callable[[Hashable], LinkBudget]
#: a peer gateway's budget by its Noise static key (None: the link's)
PeerBudgetLookup = Callable[[bytes], LinkBudget | None]


class Homeserver:
    """Synapse on the homeserver node, the server gateway in front of it, and
    (with several homeservers) its federation gateway."""

    def __init__(self, name: str, node: Node, settings: GatewaySettings, coap_port: int, *,
                 federation_port: int | None = None, federation: FederationSettings | None = None) -> None:
        self.name = name
        self.node = node
        self.settings = settings
        self.coap_port = coap_port
        #: the codec profile both sides use (loaded with the server gateway)
        self.profile: Profile = load_profile(settings.profile)
        self.synapse: LocalSynapse | None = None
        self.gateway: RunningServer | None = None
        self.link: UdpLink | None = None
        self._static_private: bytes | None = None
        #: federation (None: this run has one homeserver)
        self.federation_port = federation_port
        self.federation_settings = federation
        self.federation: RunningFederation | None = None
        self.federation_link: UdpLink | None = None
        self._federation_private = keys.generate_keypair()[0] if federation_port is not None else None
        self._proxy_port: int | None = None
        self._ca_dir: Path | None = None
        #: how each gateway was started (``restart_gateways`` starts them so again)
        self._gateway_args: tuple[Any, ...] | None = None
        self._federation_args: tuple[Any, ...] | None = None

    @property
    def federated(self) -> bool:
        return self.federation_port is not None

    @property
    def federation_address(self) -> tuple[str, int]:
        """Where peer gateways send this homeserver's federation: the node's public address."""
        assert self.federation_port is not None
        return (self.node.public_ip, self.federation_port)

    @property
    def federation_public(self) -> bytes:
        """The federation gateway's static Noise key (what peers pin)."""
        assert self._federation_private is not None
        return keys.public_from_private(self._federation_private)

    def peer(self) -> Peer:
        """This homeserver's entry in the peers table every federation gateway shares."""
        return Peer(self.federation_public, self.federation_address, (self.name,))

    def _synapse_config(self, directory: Path) -> dict[str, Any]:
        """The homeserver.yaml lines that put its federation behind its gateway
        (docs/operator.md lists them); made before Synapse starts, which reads the CA."""
        if not self.federated:
            return {}
        settings = self.federation_settings or FederationSettings()
        self._ca_dir = directory / "federation-gateway"
        FederationCA(self._ca_dir)
        self._proxy_port = free_port(self.node.private_ip)
        return {
            "https_proxy": f"http://{self.node.private_ip}:{self._proxy_port}",
            "federation_custom_ca_list": [str(self._ca_dir / CA_CERT)],
            "trusted_key_servers": [],
            # presence EDUs would follow every sync across the links (issue 12, item 2: EDU policy)
            "presence": {"enabled": False},
            "federation": {
                # Synapse's defaults (60 s per request, 10 min back-off) do not fit a slow link
                "client_timeout": int(settings.client_timeout * 1000),
                "destination_min_retry_interval": int(settings.min_retry_interval * 1000),
            },
        }

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
        self.synapse = LocalSynapse(directory, server_name=self.name, host=self.node.private_ip,
                                    extra_config=self._synapse_config(directory))
        await self.synapse.start()

    async def start_gateway(self, budget: LinkBudget, budget_for_address: BudgetLookup, state_dir: Path,
                            key_log: KeyLog | None = None) -> None:
        """The server gateway, its link timed by `budget`, each device's timers
        by its own path's; what it keeps across restarts in `state_dir`; the
        keys of its sessions appended to `key_log` (for Wireshark)."""
        profile = self.profile
        if self._static_private is None and self.settings.secure:
            self._static_private = keys.generate_keypair()[0]  # kept across restarts: devices pin it
        self._gateway_args = (budget, budget_for_address, state_dir, key_log)
        self.link = await UdpLink.open(self.node.private_ip, self.coap_port, budget)
        self.gateway = await start_server(
            self.link, homeserver=self.base_url, profile=profile, static_private=self._static_private,
            state_dir=state_dir if self._static_private is not None else None, key_log=key_log,
        )
        self.gateway.set_peer_budgets(budget_for_address)

    async def start_federation(self, table: PeersTable, budget: LinkBudget, budget_for_peer: PeerBudgetLookup,
                               state_dir: Path, key_log: KeyLog | None = None) -> None:
        """The federation gateway: its link timed by `budget` (the slowest path to
        a peer), each peer's timers by its own path's (`budget_for_peer`)."""
        assert self._federation_private is not None and self._ca_dir is not None and self._proxy_port is not None
        settings = self.federation_settings or FederationSettings()
        self._federation_args = (table, budget, budget_for_peer, state_dir, key_log)
        self.federation_link = await UdpLink.open(self.node.private_ip, self.federation_port or 0, budget)
        self.federation = await start_federation(
            self.federation_link, homeserver=self.base_url, profile=self.profile,
            static_private=self._federation_private, table=table, ca_dir=self._ca_dir,
            proxy_host=self.node.private_ip, proxy_port=self._proxy_port, state_dir=state_dir,
            config=FederationConfig(self.base_url, self.profile, request_timeout=settings.request_timeout),
            key_log=key_log,
        )
        self.retime_federation(budget_for_peer)

    def retime_federation(self, budget_for_peer: PeerBudgetLookup) -> None:
        """Paths between homeservers changed: each peer's timers are made again."""
        if self.federation is None:
            return
        from coap_gateway.federation import PeerLinkCodec

        def budget_for(remote: Any) -> LinkBudget | None:
            public = PeerLinkCodec.public_of(remote.key)
            return budget_for_peer(public) if public is not None else None

        self.federation.endpoint.set_peer_budgets(budget_for)

    def retime(self, budget_for_address: BudgetLookup) -> None:
        """Paths changed: each device's timers are made again from `budget_for_address`."""
        if self.gateway is not None:
            self.gateway.set_peer_budgets(budget_for_address)

    def federation_counters(self) -> dict[str, Any] | None:
        """The federation gateway's counters: requests sent and served, the proxy's, the link's."""
        if self.federation is None:
            return None
        transport = vars(self.federation.endpoint.counters)
        return {
            "gateway": dataclasses.asdict(self.federation.gateway.counters),
            "proxy": dataclasses.asdict(self.federation.proxy.counters),
            "transport": {k: v for k, v in transport.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        }

    async def room_history(self, room_id: str, token: str) -> list[dict[str, Any]]:
        """The room's latest events (up to HISTORY_LIMIT), from Synapse itself (not over
        the links).  An initial /sync of that one room, not /messages: a homeserver that
        joined over federation would backfill the history before its join from the
        others through the shaped links."""
        room_filter = {"room": {"rooms": [room_id], "timeline": {"limit": HISTORY_LIMIT},
                                "state": {"types": []}, "ephemeral": {"types": []}, "account_data": {"types": []}},
                       "presence": {"types": []}, "account_data": {"types": []}}
        url = f"{self.base_url}/_matrix/client/v3/sync"
        params = {"filter": json.dumps(room_filter), "timeout": "0"}
        async with aiohttp.ClientSession() as http, \
                http.get(url, params=params, headers={"Authorization": f"Bearer {token}"}) as response:
            rooms = (await response.json()).get("rooms", {}).get("join", {})
            return rooms.get(room_id, {}).get("timeline", {}).get("events", [])

    async def restart_gateways(self, server_budget: LinkBudget | None, federation_budget: LinkBudget | None) -> None:
        """Stop this node's gateways and start them again as an operator's
        restart does: the same keys, ports and state directories, everything
        they held in memory lost; the links timed by the paths as they are
        now.  Their counters start again from zero."""
        gateway_args, federation_args = self._gateway_args, self._federation_args
        await self.stop_gateway()
        self.gateway = self.federation = None
        self.link = self.federation_link = None
        if gateway_args is not None:
            budget, budget_for_address, state_dir, key_log = gateway_args
            await self.start_gateway(server_budget or budget, budget_for_address, state_dir, key_log)
        if federation_args is not None:
            table, budget, budget_for_peer, state_dir, key_log = federation_args
            await self.start_federation(table, federation_budget or budget, budget_for_peer, state_dir, key_log)

    async def stop_gateway(self) -> None:
        for step in (self.federation.stop if self.federation else None,
                     self.federation_link.close if self.federation_link else None,
                     self.gateway.stop if self.gateway else None, self.link.close if self.link else None):
            if step is not None:
                with contextlib.suppress(Exception):
                    await step()

    async def stop_synapse(self, out_dir: Path, log_name: str = "homeserver.log") -> None:
        """Stop Synapse and keep its log as `log_name`."""
        if self.synapse is not None:
            await self.synapse.stop()
            if self.synapse.log_path.exists():
                shutil.copyfile(self.synapse.log_path, out_dir / log_name)


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
            fresh_key=secure,
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


def gateway_counters(homeservers: list[Homeserver], devices: dict[str, DeviceGateway]) -> dict[str, Any]:
    """Every gateway's counters: a server gateway's under "server" (one homeserver)
    or "server HS" (several), each device's under its user, a federation gateway's
    under "federation HS"."""
    counters: dict[str, Any] = {}
    for homeserver in homeservers:
        if homeserver.gateway is not None:
            counters["server" if len(homeservers) == 1 else f"server {homeserver.name}"] = homeserver.gateway.counters()
        federation = homeserver.federation_counters()
        if federation is not None:
            counters[f"federation {homeserver.name}"] = federation
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
