"""Message latency under loss, in virtual time: many seeds, 0–30 % loss.

The conversation of meshsim's ``100bps-lossy``: alice's phone on a 100 bit/s
radio link (2 s ± 0.5 s one way, random loss each way, 42 B of UDP/IP per
frame), bob on a fast link, each device behind its own client gateway with
its sync loop running, one server gateway, the deployed defaults (secure
mode, profile lb4, sync push).  Alice sends three messages, each once bob
has the one before; then bob answers three times the same way.  A message's
latency runs from the send to the moment the other device's sync loop has it.

Virtual time (looptime): every timer, serialiser, delay and loss draw of the
gateways and of the emulated links runs as it would, and an hour of link
time takes about a second, so each loss rate is run over many seeds.  A
homeserver cannot run in virtual time: ``MemoryHomeserver`` answers /send
and /sync in process, with bodies shaped as Synapse writes them (key order,
tokens, ``unsigned``), so what crosses the link is what a real one makes
cross within a few bytes.  meshsim's ``100bps-lossy`` runs the same
conversation against a real Synapse in real time, for one seed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from coap_gateway.app import start_client, start_server
from coap_gateway.codec import DEFAULT_PROFILE, HttpRequest, HttpResponse, load_profile, matrix_error
from coap_gateway.secure import keys
from meshsim import LinkProfile, emulated_link_pair

ROOM = "!Z_3p6J2e5-kYV4J1fal9-sgzkAvoytJ1NYsGTdpIa3g"
SYNC = "/_matrix/client/v3/sync"
UPLOAD = "/_matrix/media/v3/upload"
SEND_PREFIX = f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/"
#: virtual wall clock at loop time 0 (the secure layer's clock, event timestamps)
EPOCH = 1_795_000_000.0
#: the client's long-poll timeout (matrix-nio's default)
SYNC_TIMEOUT_MS = 30_000
#: a run that has not delivered a message after this long (virtual) gives up on it
MESSAGE_DEADLINE = 1800.0
#: the default loss rates and seeds of ``make bench``
LOSS_RATES = (0.0, 0.1, 0.2, 0.3)
SEEDS = 20
#: the issue's targets at 20 % loss (docs/benchmarks.md)
TARGET_MEDIAN_S = 45.0
TARGET_P95_S = 120.0


def sync_token(position: int) -> str:
    """A Synapse-shaped stream token for position ``position``."""
    return f"s{position}_2_0_1_1_1_1_3_0_1_1_1_1_1"


def _position(since: str) -> int:
    head = since.split("_", 1)[0]
    return int(head[1:]) if head.startswith("s") and head[1:].isdigit() else 0


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass
class _Event:
    event_id: str
    sender: str
    token: str  # the access token that sent it (Synapse adds transaction_id for it alone)
    txn: str
    body: str
    ts: int


class MemoryHomeserver:
    """The part of a homeserver's client API this conversation uses, in
    process: ``PUT …/send/m.room.message/{txn}`` (idempotent per token and
    transaction ID, as Synapse is), ``GET /sync`` long-polls and ``POST
    /_matrix/media/v3/upload``, answered in Synapse's shapes.  It has the methods of ``gateway.Upstream`` the server
    gateway calls."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users  # access token -> user ID
        self.events: list[_Event] = []
        self._sent: dict[tuple[str, str], str] = {}
        self._changed = asyncio.Event()
        self.requests = Counter[str]()
        self.uploads: list[bytes] = []
        self.closed = False

    def reserve_long_polls(self, count: int) -> None:
        pass  # no connections to reserve

    async def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def fetch(self, method: str, target: str, *, body: bytes = b"", content_type: str | None = None,
                    token: str | None = None, timeout: float | None = None, **_: Any) -> HttpResponse:
        user = self.users.get(token or "")
        if user is None:
            return matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid access token passed.")
        path, _, query = target.partition("?")
        if method == "PUT" and path.startswith(SEND_PREFIX):
            self.requests["send"] += 1
            return self._send(user, token or "", unquote(path[len(SEND_PREFIX):]), body)
        if method == "POST" and path == UPLOAD:
            self.requests["upload"] += 1
            self.uploads.append(body)
            digest = hashlib.sha256(body).hexdigest()[:24]
            return HttpResponse(200, _json({"content_uri": f"mxc://memory/{digest}"}), "application/json")
        if method == "GET" and path == SYNC:
            self.requests["sync"] += 1
            params = {k: v[-1] for k, v in parse_qs(query).items()}
            return await self._sync(token or "", params.get("since", ""), int(params.get("timeout", "0") or 0))
        return matrix_error(404, "M_UNRECOGNIZED", "Unrecognized request")

    def _send(self, user: str, token: str, txn: str, body: bytes) -> HttpResponse:
        event_id = self._sent.get((token, txn))
        if event_id is None:
            content = json.loads(body)
            loop_ms = int(asyncio.get_running_loop().time() * 1000)
            digest = hashlib.sha256(f"{user}/{txn}/{len(self.events)}".encode()).digest()
            event_id = "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")
            self.events.append(_Event(event_id, user, token, txn, content["body"], int(EPOCH * 1000) + loop_ms))
            self._sent[(token, txn)] = event_id
            self._changed.set()
            self._changed = asyncio.Event()
        return HttpResponse(200, _json({"event_id": event_id}), "application/json")

    async def _sync(self, token: str, since: str, timeout_ms: int) -> HttpResponse:
        start = _position(since)
        if start >= len(self.events) and timeout_ms > 0 and not self.closed:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout_ms / 1000)
            except TimeoutError:
                pass
        events = self.events[start:]
        doc: dict[str, Any] = {"next_batch": sync_token(len(self.events))}
        if events:
            now_ms = int(EPOCH * 1000 + asyncio.get_running_loop().time() * 1000)
            timeline = []
            for e in events:
                # keys sorted, as Synapse keeps events
                unsigned: dict[str, Any] = {"age": max(0, now_ms - e.ts), "membership": "join"}
                if e.token == token:
                    unsigned["transaction_id"] = e.txn
                timeline.append({"content": {"body": e.body, "msgtype": "m.text"}, "event_id": e.event_id,
                                 "origin_server_ts": e.ts, "sender": e.sender, "type": "m.room.message",
                                 "unsigned": unsigned})
            room = {"timeline": {"events": timeline, "prev_batch": since or sync_token(start), "limited": False},
                    "state": {"events": []}, "account_data": {"events": []}, "ephemeral": {"events": []},
                    "unread_notifications": {"notification_count": 0, "highlight_count": 0}, "summary": {}}
        doc["device_one_time_keys_count"] = {"signed_curve25519": 0}
        doc["device_unused_fallback_key_types"] = []
        if events:
            doc["rooms"] = {"join": {ROOM: room}}  # last, as Synapse writes it
        return HttpResponse(200, _json(doc), "application/json")


@dataclass
class Device:
    """One client (a sync loop like matrix-nio's) behind its client gateway."""

    name: str
    serve: Callable[[HttpRequest], Any]
    token: str
    #: message body -> virtual times it was seen in the sync loop
    seen: dict[str, list[float]] = field(default_factory=dict)
    sync_errors: int = 0
    send_errors: int = 0
    _txn: int = 0
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def sync_loop(self) -> None:
        since = sync_token(0)
        loop = asyncio.get_running_loop()
        while True:
            target = f"{SYNC}?since={since}&timeout={SYNC_TIMEOUT_MS}"
            response = await self.serve(HttpRequest("GET", target, access_token=self.token))
            if response.status != 200:
                self.sync_errors += 1
                await asyncio.sleep(5.0)  # as nio backs off
                continue
            doc = json.loads(response.body)
            room = doc.get("rooms", {}).get("join", {}).get(ROOM, {})
            for event in room.get("timeline", {}).get("events", []):
                self.seen.setdefault(event["content"]["body"], []).append(loop.time())
                self._arrived.set()
            since = doc["next_batch"]

    async def send(self, text: str) -> bool:
        """Send until the homeserver has it (nio's caller retries a failed send
        with the same transaction ID, as Element does)."""
        self._txn += 1
        txn = f"m{self._txn}.{self.name}"
        body = _json({"msgtype": "m.text", "body": text})
        for _ in range(5):
            response = await self.serve(HttpRequest("PUT", SEND_PREFIX + txn, body=body,
                                                    content_type="application/json", access_token=self.token))
            if response.status == 200:
                return True
            self.send_errors += 1
        return False

    async def wait_for(self, text: str, deadline: float) -> float | None:
        loop = asyncio.get_running_loop()
        while text not in self.seen:
            remaining = deadline - loop.time()
            if remaining <= 1e-3:
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return None
        return self.seen[text][0]


@dataclass
class RunResult:
    loss: float
    seed: int
    #: (message, sender, latency seconds or None when it never arrived)
    latencies: list[tuple[str, str, float | None]]
    duplicates: int
    undecodable: int
    link_frames: int
    link_bytes: int
    retransmissions: int
    registrations: int
    virtual_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "seed": self.seed,
                "latencies_s": [None if s is None else round(s, 2) for _, _, s in self.latencies],
                "duplicates": self.duplicates, "undecodable": self.undecodable, "link_frames": self.link_frames,
                "link_bytes": self.link_bytes, "retransmissions": self.retransmissions,
                "registrations": self.registrations, "virtual_seconds": round(self.virtual_seconds, 1)}


def radio(loss: float) -> LinkProfile:
    """100bps-lossy's radio: ``rate 100bit delay 2s 500ms loss N%`` with UDP/IP overhead."""
    return LinkProfile(rate_bps=100, delay=2.0, jitter=0.5, loss=loss, overhead=42)


FAST = LinkProfile(rate_bps=10_000_000, delay=0.001, overhead=42)


@dataclass
class World:
    """alice and bob, each behind a client gateway on its own link to one
    server gateway (one instance per link, as meshsim's fabric gives it an
    address per link), the in-process homeserver, both sync loops running —
    warmed on a fast link: loops registered, tokens and room handles bound."""

    homeserver: MemoryHomeserver
    alice: Device
    bob: Device
    #: [alice's, bob's]: (client end, server end) of each link, the gateways on them
    links: list[tuple[Any, Any]]
    clients: list[Any]
    servers: list[Any]

    def reshape_alice(self, profile: LinkProfile) -> None:
        """alice's link becomes ``profile`` (as meshsim's runner changes a link)."""
        _reshape(profile, self.links[0], (self.clients[0].endpoint, self.servers[0].endpoint))


@contextlib.asynccontextmanager
async def two_devices(seed: int, *, alice_retransmit: int = 4, warm_both_ways: bool = True) -> Any:
    loop = asyncio.get_running_loop()
    profile = load_profile(DEFAULT_PROFILE)
    homeserver = MemoryHomeserver({"syt_alice_token": "@alice:localhost", "syt_bob_token": "@bob:localhost"})
    server_key = keys.generate_keypair()[0]

    def clock() -> float:
        return EPOCH + loop.time()

    links = [emulated_link_pair(FAST, seed=seed, max_retransmit=alice_retransmit, record=False),
             emulated_link_pair(FAST, seed=seed + 1000, record=False)]
    servers = [await start_server(server_end, homeserver="http://memory", profile=profile,
                                  static_private=server_key, clock=clock, upstream=homeserver)
               for _, server_end in links]
    clients = [await start_client(client_end, "server", profile=profile, static_private=keys.generate_keypair()[0],
                                  fresh_key=True,
                                  server_public=keys.public_from_private(server_key), clock=clock)
               for client_end, _ in links]
    alice = Device("alice", clients[0].gateway.serve, "syt_alice_token")
    bob = Device("bob", clients[1].gateway.serve, "syt_bob_token")
    loops = [asyncio.create_task(d.sync_loop()) for d in (alice, bob)]
    try:
        for sender, receiver in ((alice, bob), (bob, alice))[:2 if warm_both_ways else 1]:
            text = f"setup from {sender.name}"
            sending = asyncio.create_task(sender.send(text))
            if await receiver.wait_for(text, loop.time() + 60) is None or not await sending:
                raise RuntimeError("the setup failed on a fast link")
        yield World(homeserver, alice, bob, links, clients, servers)
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for c in clients:
            await c.stop()
        for server in servers:
            await server.stop()


async def conversation(loss: float, seed: int, *, messages: int = 3) -> RunResult:
    """One run of the conversation; every gateway in this loop's (virtual) time."""
    loop = asyncio.get_running_loop()
    latencies: list[tuple[str, str, float | None]] = []
    async with two_devices(seed, alice_retransmit=10) as world:
        alice, bob, clients, servers = world.alice, world.bob, world.clients, world.servers
        (alice_link, alice_server_link), _ = world.links
        world.reshape_alice(radio(loss))
        counted = (alice_link.sent_frames + alice_server_link.sent_frames,
                   alice_link.sent_bytes + alice_server_link.sent_bytes,
                   clients[0].endpoint.counters.retransmissions + servers[0].endpoint.counters.retransmissions,
                   clients[0].gateway.sync_push.counters.registrations)
        t_start = loop.time()
        for sender, receiver, text in (
                [(alice, bob, f"Hello, see you at 5pm ({i}/{messages})") for i in range(1, messages + 1)]
                + [(bob, alice, f"on my way ({i}/{messages})") for i in range(1, messages + 1)]):
            t0 = loop.time()
            sending = asyncio.create_task(sender.send(text))
            arrived = await receiver.wait_for(text, t0 + MESSAGE_DEADLINE)
            latencies.append((text, sender.name, None if arrived is None else arrived - t0))
            if not await sending:
                latencies[-1] = (text, sender.name, None)
        t_end = loop.time()
        # the senders' own echoes and anything late (a duplicate): two long-polls' worth
        await asyncio.sleep(2 * SYNC_TIMEOUT_MS / 1000)
    duplicates = sum(max(0, len(times) - 1) for d in (alice, bob) for times in d.seen.values())
    undecodable = sum(c.gateway.sync_push.state.undecodable for c in clients if c.gateway.sync_push is not None)
    return RunResult(
        loss, seed, latencies, duplicates, undecodable,
        link_frames=alice_link.sent_frames + alice_server_link.sent_frames - counted[0],
        link_bytes=alice_link.sent_bytes + alice_server_link.sent_bytes - counted[1],
        retransmissions=(clients[0].endpoint.counters.retransmissions + servers[0].endpoint.counters.retransmissions
                         - counted[2]),
        registrations=clients[0].gateway.sync_push.counters.registrations - counted[3],
        virtual_seconds=t_end - t_start)


def _reshape(profile: LinkProfile, ends: tuple[Any, Any], endpoints: tuple[Any, Any]) -> None:
    """Change a link at run time, and tell the gateways on it (as meshsim's runner does)."""
    loop = asyncio.get_running_loop()
    for end in ends:
        end.stages[0].set_profile(profile, loop.time())
        end.budget = type(end.budget)(rate_bps=profile.rate_bps, frame_overhead=max(0, profile.overhead),
                                      latency=profile.delay + profile.jitter, max_frame=end.budget.max_frame,
                                      max_retransmit=end.budget.max_retransmit)
    for endpoint in endpoints:
        endpoint.set_budget(endpoint.budget)


def run_in_virtual_time(loss: float, seed: int, **kw: Any) -> RunResult:
    """One run on its own virtual-time event loop (looptime)."""
    import looptime

    # timers' jitter, MIDs, tokens: one seed makes a run repeatable
    random.seed(seed * 1000 + round(loss * 100))
    loop = looptime.new_event_loop(start=0.0)
    try:
        return loop.run_until_complete(conversation(loss, seed, **kw))
    finally:
        loop.close()


def percentile(values: list[float], q: float) -> float:
    """The q-quantile, linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(runs: list[RunResult]) -> dict[str, Any]:
    """Per loss rate: the latency distribution over every message of every seed."""
    by_loss: dict[float, list[RunResult]] = {}
    for run in runs:
        by_loss.setdefault(run.loss, []).append(run)
    rows = []
    for loss, group in sorted(by_loss.items()):
        delivered = [s for r in group for _, _, s in r.latencies if s is not None]
        lost = sum(1 for r in group for _, _, s in r.latencies if s is None)
        by_sender = {who: [s for r in group for _, w, s in r.latencies if w == who and s is not None]
                     for who in ("alice", "bob")}
        rows.append({
            "loss": loss, "seeds": len(group), "messages": len(delivered) + lost, "undelivered": lost,
            "duplicates": sum(r.duplicates for r in group), "undecodable": sum(r.undecodable for r in group),
            "median_s": round(statistics.median(delivered), 1) if delivered else None,
            "p95_s": round(percentile(delivered, 0.95), 1) if delivered else None,
            "max_s": round(max(delivered), 1) if delivered else None,
            "min_s": round(min(delivered), 1) if delivered else None,
            "median_from_alice_s": round(statistics.median(by_sender["alice"]), 1) if by_sender["alice"] else None,
            "median_to_alice_s": round(statistics.median(by_sender["bob"]), 1) if by_sender["bob"] else None,
            "retransmissions_per_run": round(statistics.mean(r.retransmissions for r in group), 1),
            "registrations_per_run": round(statistics.mean(r.registrations for r in group), 1),
            "link_bytes_per_run": round(statistics.mean(r.link_bytes for r in group)),
        })
    return {"rows": rows, "runs": [r.as_dict() for r in runs],
            "setup": "alice: 100 bit/s, 2 s ± 0.5 s one way, loss each way, 42 B UDP/IP per frame; "
                     "bob: 10 Mbit/s; 3 messages alice→bob then 3 bob→alice, each after the previous arrived; "
                     f"secure, {DEFAULT_PROFILE}, sync push; virtual time, in-process homeserver",
            "targets": {"loss": 0.2, "median_s": TARGET_MEDIAN_S, "p95_s": TARGET_P95_S}}


def run_latency_under_loss(loss_rates: tuple[float, ...] = LOSS_RATES, seeds: int = SEEDS,
                           progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    runs = []
    total = len(loss_rates) * seeds
    for i, loss in enumerate(loss_rates):
        for seed in range(1, seeds + 1):
            if progress is not None:
                progress(f"latency under {loss:.0%} loss, seed {seed}", (i * seeds + seed - 1) / total)
            runs.append(run_in_virtual_time(loss, seed))
    return summarise(runs)


__all__ = ["MemoryHomeserver", "RunResult", "conversation", "run_in_virtual_time", "run_latency_under_loss",
           "summarise", "sync_token"]
