"""Timings over the emulated slow link: W5 and send → acknowledgement.

The gateway pair runs over ``meshsim.emulated_link_pair`` with
``meshsim.LinkProfile(rate_bps=100, delay=1.0)`` each way (netem's
semantics: an exact serialiser, then the delay; no IP headers — a
point-to-point radio link), on the wall clock.  On a new device:

1. W5: log in and run the first sync of an account with one room and ten
   messages (the Noise IK handshake included);
2. then, warm, send the reference message and time it until matrix-nio has
   the homeserver's answer (the event ID): "send → acknowledgement".

HTTPS+JSON is not run at 100 bit/s (its W5 alone would take the better part
of an hour); its figures are the physical lower bound from the bytes it was
measured to need: bits / rate + one latency per crossing of the link that
must wait for the other side (TCP, TLS, request, response).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Any

from nio import LoginResponse, RoomSendResponse, SyncResponse

from coap_gateway.app import start_client, start_server
from coap_gateway.codec import DEFAULT_PROFILE, load_profile
from coap_gateway.secure import keys
from meshsim import LinkProfile, emulated_link_pair

from .devices import new_nio
from .workloads import REFERENCE, W5_MESSAGES, Account, WorkloadError


@dataclass
class SlowLinkResult:
    rate_bps: float
    delay_s: float
    w5_seconds: float
    w5_link_bytes: int
    w5_frames: int
    w5_retransmissions: int
    send_ack_seconds: float
    send_link_bytes: int
    send_frames: int
    send_retransmissions: int
    #: what had to be changed in the gateway for the run to complete (None: nothing)
    workaround: str | None = None

    def as_dict(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        for key in ("w5_seconds", "send_ack_seconds"):
            doc[key] = round(doc[key], 3)
        # what the serialiser alone costs: the floor under each timing
        doc["w5_serialisation_s"] = round(self.w5_link_bytes * 8 / self.rate_bps, 3)
        doc["send_serialisation_s"] = round(self.send_link_bytes * 8 / self.rate_bps, 3)
        doc["retransmissions"] = self.w5_retransmissions + self.send_retransmissions
        return doc


class SlowLinkFailure(WorkloadError):
    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


#: aiocoap keeps a blockwise response (Block2Cache) and a blockwise request
#: being assembled (Block1Spool) for the default MAX_TRANSMIT_WAIT, 93 s,
#: whatever the link; see ``block_cache_lifetime``
AIOCOAP_BLOCK_CACHE_LIFETIME = 93.0


def block_cache_lifetime(rate_bps: float, delay: float, max_frame: int = 1152) -> float:
    """How long a server must keep a blockwise response for the next block
    request to find it on this link: a whole block out, the next request
    back, retransmissions allowed for (the workaround's value)."""
    per_block = max_frame * 8 / rate_bps + 2 * delay
    return AIOCOAP_BLOCK_CACHE_LIFETIME + 4 * per_block


async def _attempt(homeserver: str, account: Account, room_id: str, *, rate_bps: float, delay: float,
                   profile_name: str, cache_lifetime: float | None, progress: Any) -> SlowLinkResult:
    profile = load_profile(profile_name)
    server_key = keys.generate_keypair()[0]
    link = LinkProfile(rate_bps=rate_bps, delay=delay)
    client_link, server_link = emulated_link_pair(link, seed=6, max_retransmit=8, record=False)
    # a state directory, as a deployed server has (early data from the start)
    state = tempfile.TemporaryDirectory(prefix="bench-slow-state-")
    server = await start_server(server_link, homeserver=homeserver, profile=profile, static_private=server_key,
                                state_dir=state.name)
    workaround = None
    if cache_lifetime is not None:
        # aiocoap.interfaces.Resource makes these in __init__ with the 93 s default
        server.gateway._block2._completes.timeout = cache_lifetime
        server.gateway._block1._assemblies.timeout = cache_lifetime
        workaround = (f"the server gateway's aiocoap blockwise caches (Block2Cache, Block1Spool) kept "
                      f"{cache_lifetime:.0f} s instead of aiocoap's fixed {AIOCOAP_BLOCK_CACHE_LIFETIME:.0f} s")
    client = await start_client(client_link, "server", profile=profile, static_private=keys.generate_keypair()[0],
                                fresh_key=True,
                                server_public=keys.public_from_private(server_key))
    nio = new_nio(client.base_url, account.localpart)

    def totals() -> tuple[int, int, int]:
        return (client_link.sent_bytes + server_link.sent_bytes, client_link.sent_frames + server_link.sent_frames,
                client.endpoint.counters.retransmissions + server.endpoint.counters.retransmissions)

    try:
        if progress is not None:
            progress("login + first sync")
        t0 = time.monotonic()
        login = await nio.login(account.password, device_name="bench slow link")
        if not isinstance(login, LoginResponse):
            raise SlowLinkFailure(f"login failed: {login}", time.monotonic() - t0)
        sync = await nio.sync(timeout=0)
        t1 = time.monotonic()
        if not isinstance(sync, SyncResponse):
            raise SlowLinkFailure(f"the first sync failed: {sync}", t1 - t0)
        w5_bytes, w5_frames, w5_retx = totals()
        room = sync.rooms.join.get(room_id)
        bodies = [getattr(e, "body", None) for e in room.timeline.events] if room else []
        if any(m not in bodies for m in W5_MESSAGES):
            raise SlowLinkFailure("the first sync lacks W5's messages", t1 - t0)

        if progress is not None:
            progress("send → acknowledgement")
        t2 = time.monotonic()
        sent = await nio.room_send(room_id, "m.room.message", dict(REFERENCE))
        t3 = time.monotonic()
        if not isinstance(sent, RoomSendResponse):
            raise SlowLinkFailure(f"the send failed: {sent}", t3 - t2)
        all_bytes, all_frames, all_retx = totals()
        return SlowLinkResult(rate_bps, delay, t1 - t0, w5_bytes, w5_frames, w5_retx, t3 - t2,
                              all_bytes - w5_bytes, all_frames - w5_frames, all_retx - w5_retx, workaround)
    finally:
        await nio.close()
        await client.stop()
        await server.stop()
        state.cleanup()


async def run_slow_link(homeserver: str, account: Account, room_id: str, *, rate_bps: float, delay: float,
                        profile_name: str = DEFAULT_PROFILE, progress: Any = None) -> dict[str, Any]:
    """W5 and a warm send over a ``rate_bps`` / ``delay`` emulated link (see
    the module docstring).  The gateway runs as shipped; if that fails, the
    failure is recorded and the run repeated with the one known workaround
    (aiocoap's blockwise caches outliving a block at this rate), so the
    timings are there and the failure is not hidden."""
    def step(attempt: str) -> Any:
        return None if progress is None else (lambda text: progress(f"{attempt}: {text}"))

    out: dict[str, Any] = {"as_shipped": None}
    try:
        result = await _attempt(homeserver, account, room_id, rate_bps=rate_bps, delay=delay,
                                profile_name=profile_name, cache_lifetime=None, progress=step("as shipped"))
        out["as_shipped"] = {"ok": True}
    except SlowLinkFailure as exc:
        out["as_shipped"] = {"ok": False, "error": str(exc), "failed_after_s": round(exc.seconds, 1)}
        lifetime = block_cache_lifetime(rate_bps, delay)
        result = await _attempt(homeserver, account, room_id, rate_bps=rate_bps, delay=delay,
                                profile_name=profile_name, cache_lifetime=lifetime,
                                progress=step("with the workaround"))
    out["gateway"] = result.as_dict()
    return out


def https_lower_bound(wire_bytes: int, crossings: int, *, rate_bps: float, delay: float) -> float:
    """Seconds HTTPS+JSON needs at least: its measured bytes through the
    serialiser, plus ``crossings`` one-way delays it must wait out."""
    return wire_bytes * 8 / rate_bps + crossings * delay


#: one-way crossings HTTPS+JSON must wait for (each a dependency on the other side)
#: W1 warm send: request, response
SEND_CROSSINGS = 2
#: W5: TCP SYN / SYN-ACK, TLS ClientHello / ServerHello…Finished, login request /
#: response, sync request / response (the client's Finished rides with its request)
W5_CROSSINGS = 8
