"""Assemble running gateways: a link, the CoAP endpoint, the codec, the gateway.

Used by the CLI (``server``, ``client``, ``up``) and by the end-to-end
tests, so both run exactly the same wiring.  Without keys the link is
plaintext CoAP (for links that are already trusted); with keys it is the
Noise secure layer.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..codec import Profile
from ..gateway import CLIENT_STATE, ClientGateway, ServerGateway, ServerGatewayConfig, Upstream
from ..push import SyncPushClientConfig, SyncPushServerConfig
from ..secure import (
    ClientEndpoint,
    Connected,
    PinStore,
    ServerEndpoint,
    ServerLimits,
    frame,
    keys,
)
from ..transport import (
    SERVER_KEY,
    DatagramLink,
    DeviceEvent,
    KeyLog,
    LinkAddress,
    LinkBudget,
    LinkEndpoint,
    SecureClientCodec,
    SecureServerCodec,
    create_link_endpoint,
    pinned_client_codec,
    profile_wire_digest,
)
from .store import ServerStore


@dataclass
class RunningServer:
    endpoint: LinkEndpoint
    gateway: ServerGateway
    codec: SecureServerCodec | None
    store: ServerStore | None = None

    async def stop(self) -> None:
        await self.endpoint.shutdown()
        await self.gateway.close()
        if self.store is not None:
            self.store.close()

    def set_peer_budgets(self, budget_for_address: Callable[[Hashable], LinkBudget | None]) -> None:
        """Give each device's CoAP timers the budget of its own path, looked up
        by the network address its session (or, in plaintext, itself) has
        when its timer is made: one server link may serve paths of very
        different speeds, and a held long-poll must be answered with an empty
        ACK inside *that* device's first timeout."""
        def budget_for(remote: LinkAddress) -> LinkBudget | None:
            return budget_for_address(self.gateway.address_of(remote))

        self.endpoint.set_peer_budgets(budget_for)

    def set_budget(self, budget: LinkBudget) -> None:
        """New timing for the whole link (it was reshaped), block-wise caches
        included; per-device budgets (``set_peer_budgets``) still come first."""
        self.endpoint.set_budget(budget)

    def counters(self) -> dict[str, int | float]:
        """The transport's counters, as plain numbers (reports)."""
        return _numbers(self.endpoint.counters)


@dataclass
class RunningClient:
    endpoint: LinkEndpoint
    gateway: ClientGateway
    codec: SecureClientCodec | None

    @property
    def base_url(self) -> str:
        return self.gateway.base_url

    async def stop(self) -> None:
        await self.gateway.stop()
        await self.endpoint.shutdown()

    def set_budget(self, budget: LinkBudget) -> None:
        """New link timing (the link was reshaped): later exchanges use it,
        and the measured round trips start over."""
        self.endpoint.set_budget(budget)

    def counters(self) -> dict[str, int | float]:
        """The transport's counters and the HTTP side's (``http_*``), as plain numbers."""
        return {**_numbers(self.endpoint.counters),
                **{f"http_{k}": v for k, v in _numbers(self.gateway.counters).items()}}


def _numbers(counters: Any) -> dict[str, int | float]:
    return {k: v for k, v in vars(counters).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def server_endpoint(static_private: bytes, profile: Profile, *, limits: ServerLimits | None = None, now: float,
                    store: ServerStore | None = None, admit: Callable[[bytes], bool] | None = None
                    ) -> ServerEndpoint:
    """The secure layer of a server gateway, its replay protection restored
    from ``store``.  Without a store the strike register of an earlier run is
    lost, and an IK1 it accepted could run again: early data then waits until
    every such IK1 is stale — twice the early window and a minute
    (``ServerLimits.early_data_safe_from``: a strike lasts until the IK1's
    minutes + the window + 1, and its minutes may be the window ahead)."""
    limits = limits or ServerLimits()
    return ServerEndpoint(
        static_private, {profile.id: profile_wire_digest(profile)}, limits=limits,
        early_data_from=None if store is not None else limits.early_data_safe_from(now),
        strikes=store.strikes(now) if store is not None else (), now=now,
        on_strike=store.add_strike if store is not None else None, admit=admit)


async def start_server(link: DatagramLink, *, homeserver: str, profile: Profile, static_private: bytes | None,
                       allow_admin: bool = False,
                       limits: ServerLimits | None = None, clock=time.time,
                       sync_push: SyncPushServerConfig | bool = True,
                       state_dir: str | os.PathLike[str] | None = None,
                       key_log: KeyLog | None = None, upstream: Upstream | None = None) -> RunningServer:
    """``sync_push``: hold devices' /sync loops and push (True: defaults).
    ``state_dir``: where what must outlive a restart is kept (``ServerStore``);
    without one, early data is refused for twice the early window and a minute after start.
    ``key_log``: append every session's keys to it (opt-in; the caller closes it).
    ``upstream``: the homeserver client (default: HTTP to ``homeserver``)."""
    push = None if sync_push is False else (sync_push if isinstance(sync_push, SyncPushServerConfig)
                                            else SyncPushServerConfig())
    # what survives a restart (secure mode: devices are known by their static keys)
    store = ServerStore(state_dir) if state_dir is not None and static_private is not None else None
    # uploads wait in the state directory when there is one (the system's
    # temporary directory is often a RAM disk)
    spool_dir = Path(state_dir) / "uploads" if state_dir is not None else None
    if spool_dir is not None:
        spool_dir.mkdir(mode=0o700, exist_ok=True)
    gateway = ServerGateway(ServerGatewayConfig(homeserver, profile, allow_admin=allow_admin, spool_dir=spool_dir),
                            sync_push=push, device_store=store, upstream=upstream)
    codec: SecureServerCodec | None = None
    if static_private is not None:
        def on_device(event: DeviceEvent) -> None:
            remote = endpoint.remote(event.key)
            if event.kind == "session":
                gateway.session_started(remote, event.key.public)
            elif event.kind == "gone":
                gateway.forget_session(remote)
            else:
                assert event.previous is not None
                gateway.device_restarted(endpoint.remote(event.previous), event.key.public, unbound=event.unbound)
                gateway.session_started(remote, event.key.public)

        codec = SecureServerCodec(server_endpoint(static_private, profile, limits=limits, now=clock(), store=store),
                                  clock=clock, on_device=on_device, key_log=key_log)
    endpoint = await create_link_endpoint(link, site=gateway, codec=codec, loggername="coap.server")
    gateway.attach(endpoint)
    if codec is not None:
        secure = codec
        gateway.address_of = lambda remote: secure.device_address(getattr(remote, "key", None))
    if store is not None and gateway.sync_push is not None:
        wake_watchers(link, store, gateway)
    return RunningServer(endpoint, gateway, codec, store)


def wake_watchers(link: DatagramLink, store: ServerStore, gateway: ServerGateway) -> None:
    """After a restart: WAKE every device that held a sync observation (its
    client gateway pings, meets RESET, opens a new session and registers
    again — at once, instead of at its next request or hourly check); and
    from now on keep who holds one, and where."""
    assert gateway.sync_push is not None
    for _key, address in store.take_watchers():
        link.send(address, frame.WAKE_DATAGRAM)

    def watching(remote: Hashable, yes: bool) -> None:
        public = getattr(getattr(remote, "key", None), "public", None)
        if public is None:
            return
        if not yes:
            store.remove_watcher(public)
            return
        address = gateway.address_of(remote)
        if address is not None:
            store.add_watcher(public, address)

    gateway.sync_push.on_watching = watching


async def start_client(link: DatagramLink, server_addr: Hashable, *, profile: Profile,
                       static_private: bytes | None = None, server_public: bytes | None = None,
                       pins: PinStore | None = None, server_name: str | None = None,
                       host: str = "127.0.0.1", port: int = 0, low_bandwidth: bool = False,
                       clock=time.time, sync_push: SyncPushClientConfig | bool = True,
                       keepalive: float | None = None, key_log: KeyLog | None = None,
                       state_dir: str | Path | None = None, revalidate: bool = True,
                       fresh_key: bool = False) -> RunningClient:
    """Secure when ``static_private`` is given: with ``pins`` (trust on first
    use under ``server_name``) or a fixed ``server_public``.  ``sync_push``:
    answer /sync long-polls from pushes (True: defaults); ``keepalive``: a
    CoAP ping after that many seconds without a frame sent (NAT bindings);
    ``key_log``: append every session's keys to it (opt-in; the caller closes it);
    ``state_dir`` (secure mode): where the wire state is kept across restarts
    (``CLIENT_STATE``, beside the key), so a restart costs a reconnect;
    ``revalidate``: keep tagged answers to GETs and ask with their ETags
    (``codec.revalidation``); ``fresh_key``: ``static_private`` was made for
    this gateway just now (no transaction was ever made under it), so the
    transaction scope it names is used (docs/protocol.md §7a)."""
    state_path = Path(state_dir) / CLIENT_STATE if state_dir is not None and static_private is not None else None
    # a gateway that kept its state tells the server so: its bound state stays valid
    unbound = state_path is None or not state_path.exists()
    codec: SecureClientCodec | None = None
    if static_private is not None:
        if pins is not None:
            codec = pinned_client_codec(server_name or str(server_addr), server_addr, static_private, profile, pins,
                                        clock=clock, key_log=key_log, unbound=unbound)
        else:
            codec = SecureClientCodec(ClientEndpoint(static_private, profile.id, profile_wire_digest(profile),
                                                     server_public=server_public, restart=True, unbound=unbound),
                                      server_addr, clock=clock, key_log=key_log)
    endpoint = await create_link_endpoint(link, codec=codec, loggername="coap.client")
    key = SERVER_KEY if codec is not None else server_addr
    push = sync_push if isinstance(sync_push, SyncPushClientConfig) else SyncPushClientConfig(enabled=bool(sync_push))
    if keepalive is not None:
        push = dataclasses.replace(push, keepalive=keepalive)
    gateway = ClientGateway(endpoint, key, profile, host=host, port=port, low_bandwidth=low_bandwidth, sync_push=push,
                            revalidate=revalidate, state_path=state_path,
                            device_key=keys.public_from_private(static_private) if static_private is not None else None,
                            fresh_key=fresh_key)
    if codec is not None:
        # a new secure session (the server restarted?) loses the observations
        chained = codec.on_connected

        def on_connected(event: Connected) -> None:
            if chained is not None:
                chained(event)
            gateway.session_changed(event.session_id)

        codec.on_connected = on_connected
        # the server asks for the session (it restarted, and this device held
        # an observation): a ping finds out, as a keepalive would
        codec.on_wake = lambda: endpoint.ping(SERVER_KEY)
    await gateway.start()
    return RunningClient(endpoint, gateway, codec)
