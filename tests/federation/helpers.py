"""Two homeservers' federation gateways on one link, for the federation tests."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from pathlib import Path

from coap_gateway.app.federation import RunningFederation, start_federation
from coap_gateway.codec import DEFAULT_PROFILE, load_profile
from coap_gateway.federation import Peer, PeersTable
from coap_gateway.secure import keys

PROFILE = load_profile(DEFAULT_PROFILE)


def table(*entries: tuple[bytes, Hashable, str]) -> PeersTable:
    """A peers table of (private key, link address, server name) entries."""
    return PeersTable(Peer(keys.public_from_private(priv), address, (name,)) for priv, address, name in entries)


async def start_pair(link_a, link_b, *, name_a: str, name_b: str, homeserver_a: str, homeserver_b: str,
                     tmp: Path, priv_a: bytes | None = None, priv_b: bytes | None = None,
                     address_a: Hashable = "a", address_b: Hashable = "b"
                     ) -> tuple[RunningFederation, RunningFederation]:
    """Gateway A (for homeserver A) and gateway B, each knowing the other."""
    priv_a = priv_a or keys.generate_keypair()[0]
    priv_b = priv_b or keys.generate_keypair()[0]
    peers = table((priv_a, address_a, name_a), (priv_b, address_b, name_b))
    gw_a = await start_federation(link_a, homeserver=homeserver_a, profile=PROFILE, static_private=priv_a,
                                  table=peers, ca_dir=tmp / "gw-a", state_dir=tmp / "gw-a")
    gw_b = await start_federation(link_b, homeserver=homeserver_b, profile=PROFILE, static_private=priv_b,
                                  table=peers, ca_dir=tmp / "gw-b", state_dir=tmp / "gw-b")
    return gw_a, gw_b


async def sessions_up(a: RunningFederation, b: RunningFederation, timeout: float = 10.0) -> None:
    """Both gateways hold the pair's session (either may send)."""
    pub_a, pub_b = a.public, b.public
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while a.codec.key_for(pub_b) is None or b.codec.key_for(pub_a) is None or not _established(a, b):
        if loop.time() > deadline:
            raise AssertionError("the pair's secure session did not come up")
        await asyncio.sleep(0.02)


def _established(a: RunningFederation, b: RunningFederation) -> bool:
    return any(c.handshakes for c in (*a.codec.clients.values(), *b.codec.clients.values()))
