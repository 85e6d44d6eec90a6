"""``coap-gateway federation``: a homeserver's federation through the link.

``start_federation`` is the one wiring (the command, the tests, later
meshsim): the link, the peer codec (one Noise session per pair of gateways:
a client codec per peer this gateway initiates to, the server codec for the
others), the CoAP endpoint, the federation gateway, and the forward proxy
the homeserver's ``https_proxy`` names.  ``serve_federation`` runs it as a
service.  docs/operator.md, "Federation behind the gateway".
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..codec import DEFAULT_PROFILE, Profile, load_profile
from ..federation import (
    CA_CERT,
    FederationCA,
    FederationConfig,
    FederationGateway,
    FederationProxy,
    Peer,
    PeerLinkCodec,
    PeersError,
    PeersTable,
    initiates,
    load_peers,
)
from ..secure import ClientEndpoint, ServerLimits, keys
from ..transport import (
    DatagramLink,
    KeyLog,
    LinkEndpoint,
    SecureClientCodec,
    SecureServerCodec,
    create_link_endpoint,
    profile_wire_digest,
)
from .daemon import (
    ConfigError,
    budget_from,
    key_log_from,
    open_link,
    parse_link_address,
    server_key,
    stop_within,
    until_signalled,
)
from .runner import server_endpoint
from .store import ServerStore


@dataclass
class RunningFederation:
    endpoint: LinkEndpoint
    gateway: FederationGateway
    proxy: FederationProxy
    codec: PeerLinkCodec
    ca: FederationCA
    #: this gateway's Noise static public key
    public: bytes
    store: ServerStore | None = None

    @property
    def proxy_url(self) -> str:
        return self.proxy.url

    async def stop(self) -> None:
        await self.proxy.close()
        await self.endpoint.shutdown()
        await self.gateway.close()
        if self.store is not None:
            self.store.close()


async def start_federation(link: DatagramLink, *, homeserver: str, profile: Profile, static_private: bytes,
                           table: PeersTable, ca_dir: str | Path, proxy_host: str = "127.0.0.1",
                           proxy_port: int = 0, state_dir: str | Path | None = None,
                           config: FederationConfig | None = None, limits: ServerLimits | None = None,
                           clock=time.time, key_log: KeyLog | None = None) -> RunningFederation:
    """A running federation gateway for the homeserver whose federation
    listener is ``homeserver``; the peers' addresses in ``table`` are what
    ``link`` sends to."""
    mine = keys.public_from_private(static_private)
    digest = profile_wire_digest(profile)
    store = ServerStore(state_dir) if state_dir is not None else None

    def is_peer(public: bytes) -> bool:
        return table.by_key(public) is not None and public != mine

    # only peers get a session: another key's would count against max_sessions and push a peer's out
    server = SecureServerCodec(server_endpoint(static_private, profile, limits=limits, now=clock(), store=store,
                                               admit=is_peer),
                               clock=clock, key_log=key_log)
    clients = {}
    for peer in table:
        if peer.public == mine:
            continue  # our own entry (one table for every node)
        if initiates(mine, peer.public):
            endpoint = ClientEndpoint(static_private, profile.id, digest, server_public=peer.public,
                                      restart=True, unbound=True)
            clients[peer.public] = SecureClientCodec(endpoint, peer.address, clock=clock, key_log=key_log)
    codec = PeerLinkCodec(server, clients, known=is_peer)
    gateway = FederationGateway(config or FederationConfig(homeserver, profile), table, own_key=mine, clock=clock)
    endpoint = await create_link_endpoint(link, site=gateway, codec=codec, loggername="coap.federation")
    gateway.attach(endpoint, codec)
    ca = FederationCA(ca_dir)
    proxy = FederationProxy(table, ca, gateway.forward, own_key=mine)
    await proxy.start(proxy_host, proxy_port)
    gateway.connect_peers()
    return RunningFederation(endpoint, gateway, proxy, codec, ca, mine, store)


def homeserver_lines(proxy_url: str, ca_path: str | Path) -> list[str]:
    """The homeserver.yaml lines that put a homeserver's federation behind
    the gateway (docs/operator.md)."""
    return [f"https_proxy: {proxy_url}", "federation_custom_ca_list:", f"  - {ca_path}"]


# ------------------------------------------------------------------ command


FEDERATION_OPTIONS = ["homeserver", "listen", "key", "generate_key", "state_dir", "peers", "proxy", "ca_dir", "profile",
                      "low_bandwidth", "plain", "request_timeout", "link_rate", "link_latency", "link_overhead",
                      "max_retransmit", "keylog"]


def federation_config(options: dict[str, Any], profile: Profile) -> FederationConfig:
    """The federation gateway's settings from the command's options."""
    config = FederationConfig(options["homeserver"], profile, compact=not options.get("plain"),
                              low_bandwidth=bool(options.get("low_bandwidth")))
    timeout = options.get("request_timeout")
    if timeout is not None:
        try:
            seconds = float(timeout) if not isinstance(timeout, bool) else math.nan
        except (TypeError, ValueError):
            seconds = math.nan
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ConfigError(f"--request-timeout: a number of seconds above 0, not {timeout!r}")
        config.request_timeout = seconds
    return config


def resolve_peers(table: PeersTable) -> PeersTable:
    """The table with each gateway address as the UDP link sends to it:
    ``udp://HOST:PORT`` → ``(IP, PORT)`` (names resolved once, at start)."""
    peers = []
    for peer in table:
        address = parse_link_address(str(peer.address))
        if address.kind != "udp":
            raise ConfigError(f"peer gateway {peer.address}: only udp:// addresses for now")
        try:
            info = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise ConfigError(f"peer gateway {peer.address}: {exc.strerror}") from None
        peers.append(Peer(peer.public, info[0][4][:2], peer.servers))
    return PeersTable(peers)


async def serve_federation(options: dict[str, Any], console: Console) -> None:
    for required in ("homeserver", "peers", "key"):
        if not options.get(required):
            raise ConfigError(f"--{required.replace('_', '-')} is required")
    try:
        table = resolve_peers(load_peers(Path(options["peers"]).read_text()))
    except OSError as exc:
        raise ConfigError(f"cannot read {options['peers']}: {exc.strerror}") from None
    except PeersError as exc:
        raise ConfigError(str(exc)) from None
    address = parse_link_address(options.get("listen", "udp://0.0.0.0:5684"))
    profile = load_profile(options.get("profile", DEFAULT_PROFILE))
    config = federation_config(options, profile)
    key_path = Path(options["key"])
    static = server_key(key_path, bool(options.get("generate_key")), console)
    state_dir = Path(options["state_dir"]) if options.get("state_dir") else key_path.parent
    ca_dir = Path(options.get("ca_dir") or key_path.parent)
    proxy_host, _, proxy_port = str(options.get("proxy", "127.0.0.1:8449")).rpartition(":")
    key_log = key_log_from(options, console)
    link = await open_link(address, budget_from(options, udp=address.kind == "udp"))
    running = await start_federation(link, homeserver=options["homeserver"], profile=profile, static_private=static,
                                     table=table, ca_dir=ca_dir, proxy_host=proxy_host or "127.0.0.1",
                                     proxy_port=int(proxy_port), state_dir=state_dir, key_log=key_log,
                                     config=config)
    public = keys.public_from_private(static)
    console.print(f"federation gateway on {link.name} for {options['homeserver']}: {len(table)} peer gateway(s) "
                  f"({', '.join(table.names())}); key {keys.encode_key(public)} ({keys.fingerprint(public)})",
                  soft_wrap=True)
    if running.ca.created:
        console.print(f"made a new federation CA in {ca_dir} (key 0600)")
    console.print("homeserver.yaml:\n  " + "\n  ".join(homeserver_lines(running.proxy_url, ca_dir / CA_CERT)),
                  soft_wrap=True)
    try:
        await until_signalled()
    finally:
        await stop_within(console, "federation gateway", running.stop)
        if key_log is not None:
            key_log.close()
