"""Discovery: how a client that reaches the homeserver over HTTPS learns that a
low-bandwidth endpoint exists, where it is and which key to pin.

The entry goes into the homeserver's ``/.well-known/matrix/client``, the file
clients read before anything else (MSC3575's sliding-sync proxy was announced
the same way).  It is not added to ``/versions`` answers: the server gateway
answers only clients that already came over the link, for whom it said nothing
new and cost ~250 B of every client start (20 s at 100 bit/s).
"""

from __future__ import annotations

from typing import Any

from ..codec import Profile
from ..secure import keys

#: the entry's key in ``.well-known/matrix/client`` (unstable, until an MSC names it)
WELL_KNOWN_KEY = "net.coap-gateway.low_bandwidth"


def advertisement_for(address: str, server_public: bytes | None, profile: Profile) -> dict[str, Any]:
    """What a client needs to use the endpoint: its address, the profile and
    its tables, and (secure mode) the server's public key to pin."""
    doc: dict[str, Any] = {
        "address": address,
        "profile": profile.id,
        "profile_name": profile.name,
        "cbor_table": profile.cbor_table.version,
        "route_table": profile.routes.version,
        "flate_dictionary": profile.flate.digest if profile.flate else None,
    }
    if server_public is not None:
        doc["noise_public_key"] = keys.encode_key(server_public)
        doc["noise_fingerprint"] = keys.fingerprint(server_public)
    return doc


def well_known_entry(address: str, server_public: bytes | None, profile: Profile) -> dict[str, Any]:
    """The member to merge into ``/.well-known/matrix/client``."""
    return {WELL_KNOWN_KEY: advertisement_for(address, server_public, profile)}


__all__ = ["WELL_KNOWN_KEY", "advertisement_for", "well_known_entry"]
