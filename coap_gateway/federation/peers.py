"""The peers table (sans-I/O): which homeservers sit behind which gateway.

A server name maps to the gateway that fronts it (its link address) and
that gateway's pinned Noise static key.  One gateway may front several
server names; a key names one gateway.  The table is the whole trust
decision of federation through the gateways: a CONNECT for a name not in
it is refused, and a Noise peer whose key is not in it is not served.

The file is TOML (docs/operator.md, "Federation behind the gateway")::

    [[peer]]
    servers = ["b.example"]                 # server names behind that gateway
    gateway = "udp://198.51.100.7:5683"     # its link address
    key = "x0V3…"                           # its Noise public key (coap-gateway keygen)

Addresses are kept as written here; the shell that opens the link turns
them into what the link sends to (``udp://IP:PORT`` → ``(IP, PORT)``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import GatewayError, KeyFileError
from ..secure import keys


class PeersError(GatewayError):
    """A peers table that cannot be used (syntax, a bad key, a name twice)."""


@dataclass(frozen=True)
class Peer:
    """A peer gateway: its Noise static key, where the link reaches it, and
    the homeservers (server names, lower case) behind it."""

    public: bytes
    address: Hashable
    servers: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return keys.fingerprint(self.public)


def normalise_name(server_name: str) -> str:
    """A server name as the table compares it: lower case, without its one
    trailing dot (``b.example..`` is no name of b.example's), and the default
    federation port dropped (``b.example:8448`` is ``b.example``'s)."""
    name = server_name.strip().lower().removesuffix(".")
    if name.endswith(":8448"):
        name = name[: -len(":8448")]
    return name


class PeersTable:
    """Server name → peer, and Noise key → peer."""

    def __init__(self, peers: Iterable[Peer] = ()):
        self._by_name: dict[str, Peer] = {}
        self._by_key: dict[bytes, Peer] = {}
        for peer in peers:
            if peer.public in self._by_key:
                raise PeersError(f"gateway key {peer.fingerprint} is listed twice: list all its servers in one entry")
            if not peer.servers:
                raise PeersError(f"gateway {peer.fingerprint} fronts no server name")
            self._by_key[peer.public] = peer
            for name in peer.servers:
                name = normalise_name(name)
                if not name or name in self._by_name:
                    raise PeersError(f"server name {name!r} is empty or listed twice")
                self._by_name[name] = peer

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):
        return iter(self._by_key.values())

    def by_name(self, server_name: str) -> Peer | None:
        return self._by_name.get(normalise_name(server_name))

    def by_key(self, public: bytes) -> Peer | None:
        return self._by_key.get(public)

    def names(self) -> list[str]:
        return sorted(self._by_name)


def parse_peers(doc: Mapping[str, Any]) -> PeersTable:
    """The table of a parsed TOML document (``[[peer]]`` entries)."""
    entries = doc.get("peer", [])
    unknown = set(doc) - {"peer"}
    if unknown:
        raise PeersError(f"unknown top-level keys in the peers table: {sorted(unknown)}")
    if not isinstance(entries, list):
        raise PeersError("peers: use [[peer]] entries")
    peers = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise PeersError(f"peer #{i + 1} is not a table")
        missing = {"servers", "gateway", "key"} - set(entry)
        extra = set(entry) - {"servers", "gateway", "key"}
        if missing or extra:
            raise PeersError(f"peer #{i + 1}: missing {sorted(missing)}, unknown {sorted(extra)}")
        servers = entry["servers"]
        if isinstance(servers, str):
            servers = [servers]
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise PeersError(f"peer #{i + 1}: servers is a list of server names")
        if not isinstance(entry["gateway"], str) or not isinstance(entry["key"], str):
            raise PeersError(f"peer #{i + 1}: gateway and key are strings")
        try:
            public = keys.decode_key(entry["key"])
        except KeyFileError as exc:
            raise PeersError(f"peer #{i + 1}: {exc}") from None
        peers.append(Peer(public, entry["gateway"], tuple(normalise_name(s) for s in servers)))
    return PeersTable(peers)


def load_peers(text: str) -> PeersTable:
    """The table of a TOML text."""
    try:
        return parse_peers(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise PeersError(f"peers table: {exc}") from None


def dump_peers(table: PeersTable) -> str:
    """The TOML text of a table (what ``load_peers`` reads back)."""
    out = []
    for peer in table:
        servers = ", ".join(f'"{s}"' for s in peer.servers)
        out.append(f'[[peer]]\nservers = [{servers}]\ngateway = "{peer.address}"\nkey = "{keys.encode_key(peer.public)}"\n')
    return "\n".join(out)
