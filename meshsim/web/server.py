"""The web UI's server: static files, a JSON API and a websocket over a running `Network`.

Routes (see docs/meshsim.md, "Web UI", for the message formats):

- ``GET /``: the page; ``GET /static/...``: its script, style and D3;
- ``GET /api/topology``: nodes (with positions), edges (state, profiles, labels);
- ``GET /api/snapshot``: `Network.snapshot()` as it is;
- ``POST /api/link``: override an edge's profile (either or both directions)
  and/or take it down or up, on the running network;
- ``POST /api/node``: move a node (and, under a range rule, relink it);
- ``GET /ws``: live messages: ``hello``/``state`` (everything), ``topology``,
  ``tick`` (counters and coalesced traffic, every `tick` seconds at most).

Every change goes through the `meshsim.net.Network` interface (`set_link`,
`fail`, `heal`): nothing queued on any other link is touched, and the change
is in the network's event log like any other.  A link that a range rule adds
is added to the topology and then `set_link` to its profile, so that the log
(and a scenario's report) learn its profile.

POSTs need ``Content-Type: application/json`` (which a cross-site form cannot
send without a preflight this server never answers), and a request whose
``Origin`` is another site is refused, so a web page the operator happens to
visit cannot reshape the links.  There is no other authentication: the
server listens on loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from ..net import Network
from .layout import Pair, Position, RangeRule, profile_label, relink
from .live import ClientQueue, LiveStats

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: bumped when a message's format changes incompatibly
PROTOCOL_VERSION = 1
#: the fabric's per-link counters that messages carry (besides "up", "dropped" and the UI's own;
#: a backend without some of them sends those it has)
LINK_FIELDS = (
    "offered_packets", "offered_bytes", "delivered_packets", "delivered_bytes", "delivered_wire_bytes",
    "duplicated", "corrupted", "in_flight_packets", "peak_queue_packets", "peak_queue_bytes", "busy_time",
)
#: what POST /api/link accepts
LINK_OVERRIDE_KEYS = ("between", "direction", "rate_bps", "delay", "jitter", "loss", "up")
DIRECTIONS = ("both", "forward", "reverse")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WebUI:
    """Serves the UI for one network (given now, or later with `attach`).

    `tick`: seconds between live messages (at most; an idle network gets one a
    second, `idle_every`).  `queue_limit`: messages waiting per browser before
    the oldest are dropped.  `rate_window`: seconds over which link rates are
    averaged.  `max_traffic`: traffic entries per tick.
    """

    def __init__(
        self,
        network: Network | None = None,
        *,
        positions: Mapping[str, Position | None] | None = None,
        range_rule: RangeRule | None = None,
        title: str = "meshsim",
        tick: float = 0.1,
        idle_every: float = 1.0,
        queue_limit: int = 64,
        rate_window: float = 5.0,
        max_traffic: int = 200,
    ) -> None:
        if tick <= 0:
            raise ValueError("tick must be > 0")
        self.title = title
        self.tick = tick
        self.idle_every = idle_every
        self.queue_limit = queue_limit
        self.stats = LiveStats(rate_window=rate_window, max_traffic=max_traffic)
        self.network: Network | None = None
        self.positions: dict[str, Position | None] = {}
        self.range_rule: RangeRule | None = None
        #: edges the range rule failed (and may heal)
        self.range_down: set[Pair] = set()
        self.seq = 0
        self._unsubscribe: Callable[[], None] | None = None
        self._clients: set[ClientQueue] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_sent = -math.inf
        self._last_now = 0.0
        self.address: tuple[str, int] | None = None
        self.app = self._make_app()
        if network is not None:
            self.attach(network, positions=positions, range_rule=range_rule)

    # ------------------------------------------------------------ lifecycle

    def attach(
        self,
        network: Network,
        *,
        positions: Mapping[str, Position | None] | None = None,
        range_rule: RangeRule | None = None,
    ) -> None:
        """Show `network` (started or not); browsers already connected get its full state."""
        if self.network is not None:
            raise RuntimeError("a WebUI shows one network")
        self.network = network
        given = dict(positions or {})
        self.positions = {node.name: _position(given.get(node.name)) for node in network.topology}
        self.range_rule = range_rule
        self._unsubscribe = network.subscribe(self.stats.feed)
        for client in self._clients:
            client.put(self._state_json("state"))

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/topology", self._get_topology)
        app.router.add_get("/api/snapshot", self._get_snapshot)
        app.router.add_post("/api/link", self._post_link)
        app.router.add_post("/api/node", self._post_node)
        app.router.add_get("/ws", self._websocket)
        app.router.add_static("/static", STATIC_DIR)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> tuple[str, int]:
        """Listen on host:port (0: any free port); returns the address bound."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        bound = self._runner.addresses[0]
        self.address = (bound[0], bound[1])
        return self.address

    @property
    def url(self) -> str:
        assert self.address is not None, "not started"
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._unsubscribe is not None:
            with contextlib.suppress(ValueError):
                self._unsubscribe()
            self._unsubscribe = None

    async def _on_startup(self, app: web.Application) -> None:
        self._ticker = asyncio.create_task(self._tick_loop())

    async def _on_shutdown(self, app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for client in self._clients:
            client.close()
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutting down")

    # ------------------------------------------------------------ state as JSON

    def now(self) -> float:
        network = self.network
        if network is not None and network.running:
            self._last_now = network.now()
        return self._last_now

    def topology_json(self) -> dict[str, Any]:
        network = self.network
        rule = self.range_rule
        if network is None:
            return {"attached": False, "title": self.title, "nodes": [], "edges": [], "range": None, "ports": []}
        topology = network.topology
        nodes = []
        for node in topology:
            position = self.positions.get(node.name)
            nodes.append({
                "name": node.name, "index": node.index, "public_ip": node.public_ip, "private_ip": node.private_ip,
                "x": position[0] if position else None, "y": position[1] if position else None,
            })
        edges = [self._edge_json(a, b) for a, b in topology.edges()]
        return {
            "attached": True, "title": self.title, "nodes": nodes, "edges": edges, "ports": network.ports,
            "range": {"range": rule.range, "profile": rule.profile_name} if rule else None,
        }

    def _edge_json(self, a: str, b: str) -> dict[str, Any]:
        assert self.network is not None
        topology = self.network.topology
        links = {}
        for link in (topology.link(a, b), topology.link(b, a)):
            links[link.id] = {
                "src": link.src, "dst": link.dst, "profile": asdict(link.profile), "label": profile_label(link.profile),
            }
        pair = frozenset((a, b))
        return {
            "id": f"{a}<->{b}", "a": a, "b": b, "up": topology.is_up(a, b), "weight": topology.weight(a, b),
            "by_range": self.range_rule is not None and self.range_rule.governs(a, b),
            "out_of_range": pair in self.range_down, "links": links,
        }

    def _link_counters(self, snapshot: Mapping[str, Any], ids: Any = None) -> dict[str, dict[str, Any]]:
        links = snapshot["links"]
        out = {}
        for link_id in links if ids is None else ids:
            counters = links.get(link_id)
            if counters is None:
                continue
            entry = {name: counters[name] for name in LINK_FIELDS if name in counters}
            entry["up"] = counters["up"]
            entry["dropped"] = {reason: n for reason, n in counters["dropped"].items() if n}
            entry["dropped_total"] = sum(counters["dropped"].values())
            entry.update(self.stats.link_stats(link_id))
            out[link_id] = entry
        return out

    def _state(self, kind: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": kind, "version": PROTOCOL_VERSION, "seq": self.seq, "t": self.now(), "tick": self.tick,
            "topology": self.topology_json(), "links": {}, "fabric": None,
        }
        if self.network is not None:
            snapshot = self.network.snapshot()
            message["links"] = self._link_counters(snapshot)
            message["fabric"] = snapshot["counters"]
        return message

    def _state_json(self, kind: str) -> str:
        return _dumps(self._state(kind))

    # ------------------------------------------------------------ live messages

    def publish(self, message: dict[str, Any]) -> None:
        """Number `message` and queue it for every browser."""
        self.seq += 1
        message["seq"] = self.seq
        text = _dumps(message)
        for client in self._clients:
            client.put(text)

    def publish_topology(self) -> None:
        self.publish({"type": "topology", "t": self.now(), "topology": self.topology_json()})

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                self.flush()
            except Exception:
                logger.exception("web UI tick failed")

    def flush(self) -> None:
        """One tick: what happened since the last, to every browser (called by the ticker)."""
        if self.network is None:
            return
        now = self.now()
        batch = self.stats.take(now)
        if not self._clients:
            return
        if batch.topology_changed:
            self.publish_topology()
        loop_now = asyncio.get_running_loop().time()
        if not (batch.traffic or batch.links or batch.topology_changed or loop_now - self._last_sent >= self.idle_every):
            return
        self._last_sent = loop_now
        snapshot = self.network.snapshot()
        self.publish({
            "type": "tick", "t": now, "links": self._link_counters(snapshot, sorted(batch.links)),
            "traffic": batch.traffic, "omitted": batch.omitted, "fabric": snapshot["counters"],
        })

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        _check_origin(request)
        ws = web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        client = ClientQueue(self.queue_limit)
        client.put(self._state_json("hello"))
        self._clients.add(client)
        self._sockets.add(ws)
        sender = asyncio.create_task(self._send_loop(ws, client))
        try:
            async for message in ws:
                if message.type == WSMsgType.ERROR:
                    break
                # browsers only listen; anything they send is ignored
        finally:
            self._clients.discard(client)
            self._sockets.discard(ws)
            client.close()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        return ws

    async def _send_loop(self, ws: web.WebSocketResponse, client: ClientQueue) -> None:
        """Send `client`'s queue in order; after an overflow, the full state first."""
        try:
            while True:
                text = await client.get()
                if client.resync:
                    client.resync = False
                    await ws.send_str(_with_dropped(self._state_json("state"), client.dropped))
                await ws.send_str(_with_dropped(text, client.dropped))
        except (EOFError, ConnectionError):
            pass

    # ------------------------------------------------------------ HTTP

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _get_topology(self, request: web.Request) -> web.Response:
        return web.json_response({"t": self.now(), "seq": self.seq, **self.topology_json()}, dumps=_dumps)

    async def _get_snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(self._network().snapshot(), dumps=_dumps)

    def _network(self) -> Network:
        if self.network is None:
            raise ApiError(503, "no fabric yet: the run has not started it")
        return self.network

    async def _post_link(self, request: web.Request) -> web.Response:
        """Override a link at run time: see `apply_link_override`."""
        body = await _json_body(request)
        return web.json_response({"edge": self.apply_link_override(body)}, dumps=_dumps)

    def apply_link_override(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``{"between": [a, b], "direction": "both"|"forward"|"reverse", "rate_bps", "delay",
        "jitter", "loss", "up"}``; every key but `between` is optional.

        The profile fields replace those of the current profile of each chosen
        direction (forward is a→b); the rest of the profile (overhead, queue
        limits, distribution...) is kept.  `rate_bps` null means unlimited;
        times are seconds, `loss` a probability (it replaces a Gilbert-Elliott
        model).  `up` fails or heals the edge, both directions (a failure
        loses what the link carries, as `Network.fail`).  Raises ApiError.
        """
        network = self._network()
        unknown = sorted(set(body) - set(LINK_OVERRIDE_KEYS))
        if unknown:
            raise ApiError(400, f"unknown keys: {', '.join(unknown)} (known: {', '.join(LINK_OVERRIDE_KEYS)})")
        a, b = self._between(body.get("between"))
        direction = body.get("direction", "both")
        if direction not in DIRECTIONS:
            raise ApiError(400, f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        changes: dict[str, Any] = {}
        if "rate_bps" in body:
            rate = body["rate_bps"]
            if rate is not None and not _is_number(rate):
                raise ApiError(400, f"rate_bps must be a number of bits per second or null, not {rate!r}")
            changes["rate_bps"] = rate
        for key in ("delay", "jitter", "loss"):
            if key in body:
                if not _is_number(body[key]):
                    raise ApiError(400, f"{key} must be a number, not {body[key]!r}")
                changes[key] = body[key]
        if "loss" in changes:
            changes["gemodel"] = None
        up = body.get("up")
        if "up" in body and not isinstance(up, bool):
            raise ApiError(400, f"up must be true or false, not {up!r}")
        topology = network.topology
        if changes:
            try:
                forward = replace(topology.link(a, b).profile, **changes) if direction != "reverse" else None
                backward = replace(topology.link(b, a).profile, **changes) if direction != "forward" else None
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
            if forward is None:
                network.set_link(a, b, None, reverse=backward)
            else:
                # set_link gives b→a the forward profile unless told otherwise: keep it
                network.set_link(a, b, forward, reverse=backward or topology.link(b, a).profile)
        if up is not None:
            self.range_down.discard(frozenset((a, b)))  # by hand from now on
            if up and not topology.is_up(a, b):
                network.heal(a, b)
            elif not up and topology.is_up(a, b):
                network.fail(a, b)
        first, second = next(e for e in topology.edges() if set(e) == {a, b})
        return self._edge_json(first, second)

    def _between(self, value: Any) -> tuple[str, str]:
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise ApiError(400, f"between must be [a, b], two node names, not {value!r}")
        a, b = value
        try:
            self._network().topology.weight(a, b)
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0])) from None
        return a, b

    async def _post_node(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        return web.json_response(self.move_node(body), dumps=_dumps)

    def move_node(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``{"name", "x", "y"}``: the node's new position; under a range rule, its links follow.

        Returns ``{"node": ..., "changes": [{"do": "fail"|"heal"|"add", "between": [a, b]}]}``.
        """
        network = self._network()
        unknown = sorted(set(body) - {"name", "x", "y"})
        if unknown:
            raise ApiError(400, f"unknown keys: {', '.join(unknown)} (known: name, x, y)")
        name = body.get("name")
        try:
            network.topology.node(name)
        except KeyError:
            raise ApiError(404, f"no node {name!r}") from None
        x, y = body.get("x"), body.get("y")
        if not (_is_number(x) and _is_number(y) and math.isfinite(x) and math.isfinite(y)):
            raise ApiError(400, f"x and y must be finite numbers, not {x!r}, {y!r}")
        self.positions[name] = (float(x), float(y))
        changes = []
        rule = self.range_rule
        if rule is not None:
            topology = network.topology
            edges = {frozenset(edge): topology.is_up(*edge) for edge in topology.edges()}
            for action, a, b in relink(rule, name, self.positions, edges, self.range_down, [n.name for n in topology]):
                pair = frozenset((a, b))
                if action == "fail":
                    network.fail(a, b)
                    self.range_down.add(pair)
                elif action == "heal":
                    network.heal(a, b)
                    self.range_down.discard(pair)
                else:
                    topology.add_link(a, b, rule.profile)
                    # no flush, nothing to cancel; set_link only logs the new link's profile
                    network.set_link(a, b, rule.profile)
                changes.append({"do": action, "between": [a, b]})
        self.publish_topology()
        node = next(n for n in self.topology_json()["nodes"] if n["name"] == name)
        return {"node": node, "changes": changes}


# ---------------------------------------------------------------- helpers


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _with_dropped(text: str, dropped: int) -> str:
    """Add this client's count of dropped messages to a message already in JSON."""
    return f'{text[:-1]},"dropped_messages":{dropped}}}'


def _position(value: Any) -> Position | None:
    if value is None:
        return None
    x, y = value
    return (float(x), float(y))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise ApiError(403, f"requests from {origin} are not accepted")


async def _json_body(request: web.Request) -> dict[str, Any]:
    _check_origin(request)
    if request.content_type != "application/json":
        raise ApiError(415, "send JSON with Content-Type: application/json")
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body
