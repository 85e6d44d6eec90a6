"""W6 — a federated message — and a federated join over a 100 bit/s link (issue 12, item 4).

W6: a user of homeserver A sends one ``m.text`` (the reference message) to a
room a user of homeserver B is in; measured from a loopback capture like
W1–W5, everything that crosses between the two homeservers' sides until B
holds the event and every flow has settled (the transaction and its answer),
for two transports:

* **HTTPS+JSON** — stock federation: each Synapse behind nginx (TLS 1.3) on
  port 8448 of its own loopback address, server names that are those
  addresses (IP literals with the port: no well-known, no SRV), each trusting
  the other's certificate (``federation_custom_ca_list``);
* **the gateways** — each Synapse's ``https_proxy`` is its federation gateway,
  the two gateways talk CoAP + CBOR + Flate in Noise over UDP on loopback
  (the compact transaction, docs/protocol.md §11a).

Both pairs are warmed up first (a room on A, B's user joined over federation,
messages both ways: keys fetched, connections and sessions up), so a window
holds what a conversation costs per message.

The join: B's user joins a room on A holding 10 messages, through the gateways
over an emulated link of 100 bit/s and 1 s one-way delay (the link's own
counters; the time runs from the first join call to the one that succeeds).
Stock Synapse needs its ``federation.client_timeout`` raised for this, and
gives ``make_join`` a fixed 20 s, which a 100 bit/s link cannot meet: the
first join fails, the gateway keeps the late answer, and the user's second
join goes through (docs/operator.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from coap_gateway.app import start_federation
from coap_gateway.codec import DEFAULT_PROFILE, load_profile
from coap_gateway.federation import CA_CERT, FederationCA, FederationConfig, Peer, PeersTable
from coap_gateway.secure import keys
from coap_gateway.tools import LocalSynapse, free_port
from coap_gateway.transport import LinkBudget, UdpLink

from .baseline import NginxTlsProxy
from .capture import LiveCapture

#: the reference message (DESIGN.md)
MESSAGE = "Hello, see you at 5pm"
#: loopback addresses of the two sides: baseline nginx fronts, gateway links
BASELINE_IPS = ("127.0.0.61", "127.0.0.62")
GATEWAY_IPS = ("127.0.0.63", "127.0.0.64")
FEDERATION_TLS_PORT = 8448
FEDERATION_UDP_PORT = 5684
#: warm-up messages each way before measuring
WARM_UP = 2
#: how long one delivery may take on loopback
DELIVERY_TIMEOUT = 60.0
#: the join's link
JOIN_RATE_BPS = 100.0
JOIN_DELAY_S = 1.0
JOIN_HISTORY = 10
#: joins tried before giving up (each failure takes make_join's 20 s)
JOIN_ATTEMPTS = 12
#: Synapse's federation timeouts for the slow link (its defaults: 60 s, 10 min)
SLOW_FEDERATION = {"client_timeout": "30m", "destination_min_retry_interval": "10s",
                   "destination_retry_multiplier": 1}
#: a user joining again waits out Synapse's back-off for the destination that failed
JOIN_RETRY_PAUSE = 11.0

Progress = Callable[[str], None]


@dataclass
class User:
    http: aiohttp.ClientSession
    base: str
    token: str = ""
    user_id: str = ""

    async def call(self, method: str, path: str, body: dict | None = None, *, ok: bool = True) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            data = await r.json(content_type=None)
            if ok and r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status} {data}")
            return data

    async def register(self, name: str) -> None:
        data = await self.call("POST", "/_matrix/client/v3/register",
                               {"username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"}})
        self.token, self.user_id = data["access_token"], data["user_id"]

    async def send(self, room: str, text: str) -> str:
        path = f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/{uuid.uuid4().hex}"
        return (await self.call("PUT", path, {"msgtype": "m.text", "body": text}))["event_id"]

    async def has(self, room: str, event_id: str, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Until this user's homeserver holds ``event_id`` (polled: the event arrives by federation)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        path = f"/_matrix/client/v3/rooms/{quote(room)}/event/{quote(event_id)}"
        while loop.time() < deadline:
            async with self.http.get(self.base + path, headers={"Authorization": f"Bearer {self.token}"}) as r:
                if r.status == 200:
                    return
            await asyncio.sleep(0.05)  # poll interval
        raise RuntimeError(f"{event_id} never reached {self.base}")


async def _conversation(alice: User, bob: User, server_a: str) -> str:
    """A public room on A that bob (on B) joins over federation; messages both ways."""
    room = (await alice.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}))["room_id"]
    await bob.call("POST", f"/_matrix/client/v3/join/{quote(room)}?server_name={quote(server_a)}", {})
    for i in range(WARM_UP):
        await bob.has(room, await alice.send(room, f"warm-up {i} from A"))
        await alice.has(room, await bob.send(room, f"warm-up {i} from B"))
    return room


def counter_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """The gateway counters that moved between two snapshots (numbers only): what
    crossed in a window besides the transaction shows here (a request B sent, a resend)."""
    return {key: value - before.get(key, 0) for key, value in after.items()
            if isinstance(value, int) and value != before.get(key, 0)}


def _snapshot(gateways: list[Any]) -> list[dict[str, Any]]:
    return [dict(vars(g.gateway.counters)) for g in gateways]


async def _measure(capture: LiveCapture, ips: tuple[str, str], alice: User, bob: User, room: str,
                   repeats: int, gateways: list[Any]) -> list[dict[str, Any]]:
    """``repeats`` W6 windows: one message A → B each, settled."""
    sides = {ips[0]: "A", ips[1]: "B"}
    windows = []
    for i in range(repeats):
        await capture.settle(ips)
        before = _snapshot(gateways)
        window = await capture.open(f"W6 #{i + 1}", ips, sides=sides)
        started = time.monotonic()
        await bob.has(room, await alice.send(room, MESSAGE))
        delivered = time.monotonic() - started
        # closes once every TLS byte is acknowledged / every CoAP CON answered: the answer is in
        result = await capture.close(window, settle_timeout=30.0)
        entry = result.as_dict(with_frames=True)
        entry["delivered_s"] = round(delivered, 3)
        sent_by = entry.pop("sent_by", {})
        # "up"/"down" are a device's view (from its addresses): here both ends are in the window
        del entry["up"], entry["down"]
        zero = {"frames": 0, "wire_bytes": 0, "payload_bytes": 0}
        entry["a_to_b"], entry["b_to_a"] = sent_by.get("A", dict(zero)), sent_by.get("B", dict(zero))
        if "unknown" in sent_by:  # a frame neither side sent: the filter let in something else
            entry["unattributed"] = sent_by["unknown"]
        if gateways:
            entry["gateway_counters_delta"] = {side: counter_delta(b, a) for side, b, a
                                               in zip("AB", before, _snapshot(gateways))}
        windows.append(entry)
    return windows


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of the windows' frames and bytes (wire: with Ethernet+IP+TCP/UDP headers;
    link: the TCP or UDP payload, i.e. TLS records or sealed frames), in all and per direction."""
    out: dict[str, Any] = {"count": len(windows),
                           "frames": _stats([w["frames"] for w in windows]),
                           "wire_bytes": _stats([w["wire_bytes"] for w in windows]),
                           "link_bytes": _stats([w["payload_bytes"] for w in windows]),
                           "settled": all(w["settled"] for w in windows)}
    for direction in ("a_to_b", "b_to_a"):
        if all(direction in w for w in windows):
            out[direction] = {"frames": _stats([w[direction]["frames"] for w in windows]),
                              "wire_bytes": _stats([w[direction]["wire_bytes"] for w in windows]),
                              "link_bytes": _stats([w[direction]["payload_bytes"] for w in windows])}
    return out


# ---------------------------------------------------------------- the two transports


async def _baseline_pair(tmp: Path, stack: contextlib.AsyncExitStack) -> tuple[list[LocalSynapse], list[str]]:
    """Two Synapses federating directly over TLS 1.3 (nginx in front of each federation listener)."""
    ports = [free_port(ip) for ip in BASELINE_IPS]
    names = [f"{ip}:{FEDERATION_TLS_PORT}" for ip in BASELINE_IPS]
    proxies = [NginxTlsProxy(tmp / f"nginx-{ip}", listen=(ip, FEDERATION_TLS_PORT), upstream=f"http://{ip}:{port}")
               for ip, port in zip(BASELINE_IPS, ports)]
    for proxy in proxies:  # first: their certificates go into the homeservers' config
        await proxy.start()
        stack.push_async_callback(proxy.stop)
    synapses = [
        LocalSynapse(tmp / f"hs-{ip}", server_name=name, host=ip, port=port, extra_config={
            # stock federation, only pointed at loopback: trust both certificates, and
            # no IP blocklist (an IP-literal server name in 127/8 is refused by default)
            "federation_custom_ca_list": [str(p.cert_path) for p in proxies],
            "ip_range_blacklist": [],
            "presence": {"enabled": False},
        })
        for ip, name, port in zip(BASELINE_IPS, names, ports)
    ]
    await asyncio.gather(*(s.start() for s in synapses))
    for synapse in synapses:
        stack.push_async_callback(synapse.stop)
    return synapses, names


async def _gateway_pair(tmp: Path, stack: contextlib.AsyncExitStack, *, links: tuple[Any, Any] | None = None,
                        slow: bool = False) -> tuple[list[LocalSynapse], list[str], list[Any]]:
    """Two Synapses, each behind its federation gateway; the gateways on UDP (or ``links``)."""
    profile = load_profile(DEFAULT_PROFILE)
    names = ["hs-a.bench", "hs-b.bench"]
    privates = [keys.generate_keypair()[0] for _ in names]
    if links is None:
        links = tuple([await UdpLink.open(ip, FEDERATION_UDP_PORT, LinkBudget(frame_overhead=42)) for ip in GATEWAY_IPS])
        addresses = [(ip, FEDERATION_UDP_PORT) for ip in GATEWAY_IPS]
    else:
        addresses = ["a", "b"]
    table = PeersTable(Peer(keys.public_from_private(p), a, (n,)) for p, a, n in zip(privates, addresses, names))
    synapses, gateways = [], []
    for i, name in enumerate(names):
        ca_dir = tmp / f"gw-{name}"
        FederationCA(ca_dir)
        proxy_port = free_port()
        extra: dict[str, Any] = {"https_proxy": f"http://127.0.0.1:{proxy_port}",
                                 "federation_custom_ca_list": [str(ca_dir / CA_CERT)],
                                 "presence": {"enabled": False}}
        if slow:
            extra["federation"] = SLOW_FEDERATION
        synapse = LocalSynapse(tmp / f"hs-{name}", server_name=name, port=free_port(), extra_config=extra)
        synapses.append(synapse)
        config = FederationConfig(synapse.base_url, profile, request_timeout=1800.0 if slow else 120.0)
        gateway = await start_federation(links[i], homeserver=synapse.base_url, profile=profile,
                                         static_private=privates[i], table=table, ca_dir=ca_dir,
                                         proxy_port=proxy_port, state_dir=ca_dir, config=config)
        stack.push_async_callback(gateway.stop)
        gateways.append(gateway)
    await asyncio.gather(*(s.start() for s in synapses))
    for synapse in synapses:
        stack.push_async_callback(synapse.stop)
    return synapses, names, gateways


async def measure_w6(tmp: Path, *, repeats: int = 5, progress: Progress = lambda _: None,
                     pcap: Path | None = None) -> dict[str, Any]:
    """W6 for both transports, from one loopback capture."""
    bpf = (f"(tcp port {FEDERATION_TLS_PORT} and (host {BASELINE_IPS[0]} or host {BASELINE_IPS[1]})) or "
           f"(udp port {FEDERATION_UDP_PORT} and (host {GATEWAY_IPS[0]} or host {GATEWAY_IPS[1]}))")
    out: dict[str, Any] = {"message": MESSAGE, "repeats": repeats}
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        capture = LiveCapture(bpf, pcap or tmp / "w6.pcap")
        await capture.start()
        stack.push_async_callback(capture.stop)
        for label, ips in (("baseline", BASELINE_IPS), ("gateway", GATEWAY_IPS)):
            progress(f"W6 {label}: two Synapses, federated room, warm-up")
            async with contextlib.AsyncExitStack() as pair:
                if label == "baseline":
                    synapses, names = await _baseline_pair(tmp / label, pair)
                    gateways: list[Any] = []
                else:
                    synapses, names, gateways = await _gateway_pair(tmp / label, pair)
                alice, bob = User(http, synapses[0].base_url), User(http, synapses[1].base_url)
                await alice.register("alice")
                await bob.register("bob")
                room = await _conversation(alice, bob, names[0])
                progress(f"W6 {label}: {repeats} messages, each in its own capture window")
                windows = await _measure(capture, ips, alice, bob, room, repeats, gateways)
                out[label] = {"server_names": names, **summarise(windows), "windows": windows}
                if gateways:
                    out[label]["gateway_counters"] = {n: vars(g.gateway.counters) for n, g in zip(names, gateways)}
        stats = await capture.stop()
        out["capture"] = {"filter": bpf, **stats.as_dict()}
    base, gw = out["baseline"], out["gateway"]
    out["ratio_wire"] = round(base["wire_bytes"]["median"] / gw["wire_bytes"]["median"], 2)
    out["ratio_link"] = round(base["link_bytes"]["median"] / gw["link_bytes"]["median"], 2)
    return out


async def measure_join(tmp: Path, *, rate_bps: float = JOIN_RATE_BPS, delay: float = JOIN_DELAY_S,
                       history: int = JOIN_HISTORY, progress: Progress = lambda _: None) -> dict[str, Any]:
    """B's user joins a room on A with ``history`` messages, through the gateways over an
    emulated link of ``rate_bps`` and ``delay``; time and bytes each way."""
    from meshsim import LinkProfile, emulated_link_pair

    # fast at first: the two homeservers fetch each other's signing keys (as servers that
    # federated before have them, for days); then the link is shaped for the join
    link_a, link_b = emulated_link_pair(LinkProfile(rate_bps=1e6, delay=0.001), names=("a", "b"), seed=6)
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        synapses, names, gateways = await _gateway_pair(tmp, stack, links=(link_a, link_b), slow=True)
        alice, bob = User(http, synapses[0].base_url), User(http, synapses[1].base_url)
        await alice.register("alice")
        await bob.register("bob")
        await bob.call("GET", f"/_matrix/client/v3/profile/{quote(alice.user_id)}", ok=False)
        await alice.call("GET", f"/_matrix/client/v3/profile/{quote(bob.user_id)}", ok=False)
        room = (await alice.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}))["room_id"]
        for i in range(history):
            await alice.send(room, f"history message {i + 1} of {history}")
        slow = LinkProfile(rate_bps=rate_bps, delay=delay)
        now = asyncio.get_running_loop().time()
        for end in (link_a, link_b):
            for stage in end.stages:
                stage.set_profile(slow, now)
        for gateway in gateways:
            # the gateways' CoAP timers for the shaped link (what emulated_link_pair derives for its ends)
            gateway.endpoint.set_budget(LinkBudget(rate_bps=rate_bps, frame_overhead=max(0, slow.overhead),
                                                   latency=delay))
        before = link_a.sent_bytes, link_b.sent_bytes, link_a.sent_frames, link_b.sent_frames
        progress(f"federated join over {rate_bps:g} bit/s, {delay:g} s latency ({history} messages of history)")
        started = time.monotonic()
        attempts: list[dict[str, Any]] = []
        for _ in range(JOIN_ATTEMPTS):
            # as a user would: join again after a failure (stock Synapse gives make_join 20 s;
            # the gateway keeps the late answer for the retry)
            answer = await bob.call("POST", f"/_matrix/client/v3/join/{quote(room)}?server_name={quote(names[0])}",
                                    {}, ok=False)
            attempts.append({"at_s": round(time.monotonic() - started, 1), "answer": answer})
            if "room_id" in answer:
                break
            await asyncio.sleep(JOIN_RETRY_PAUSE)  # the user's pause before trying again, not synchronisation
        seconds = time.monotonic() - started
        after = link_a.sent_bytes, link_b.sent_bytes, link_a.sent_frames, link_b.sent_frames
        members = await bob.call("GET", f"/_matrix/client/v3/rooms/{quote(room)}/joined_members", ok=False)
        joined = bob.user_id in members.get("joined", {})
        counters = {n: vars(g.gateway.counters) for n, g in zip(names, gateways)}
    return {
        "rate_bps": rate_bps, "delay_s": delay, "history": history, "seconds": round(seconds, 1), "joined": joined,
        # a stock Synapse gives make_join 20 s, whatever federation.client_timeout says
        "error": None if joined else answer,
        "attempts": attempts,
        "a_to_b": {"link_bytes": after[0] - before[0], "frames": after[2] - before[2]},
        "b_to_a": {"link_bytes": after[1] - before[1], "frames": after[3] - before[3]},
        "gateway_counters": counters,
    }


__all__ = ["MESSAGE", "counter_delta", "measure_join", "measure_w6", "summarise"]
