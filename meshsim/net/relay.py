"""`meshsim link`: one shaped UDP link between two endpoints, for anyone's traffic.

Clients send to the relay's listen address; the relay forwards to the
target over the "client->target" link and sends the target's answers back
over "target->client".  Each direction is one `LinkModel` with one queue and
one serialiser, shared by every client, as on one physical link.

Clients are told apart by address, like a NAT: each gets its own upstream
socket (connected to the target, so only the target's datagrams come back on
it), and the target's answers on that socket go back to that client from the
listen address.  At most `max_clients` are kept; a new client beyond that
evicts the one silent for longest (its upstream socket closes and copies on
their way to the target for it are dropped, "evicted").

The relay is payload-agnostic: any datagram the kernel hands over, including
an empty one, is offered to the link.  Payload bytes held in flight are
bounded by `max_in_flight_bytes` ("overload") on top of the link's own queue
limits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from ..model import DirectedLink, LinkProfile, Scheduled
from .events import EventLog
from .forwarder import DEFAULT_MAX_IN_FLIGHT_BYTES, ShapedForwarder, link_snapshot
from .pcap import PcapWriter
from .scheduler import Clock, ExactTimer
from .udp import Address, UdpFace

logger = logging.getLogger(__name__)

UP = "client->target"
DOWN = "target->client"
RELAY_DROP_REASONS = ("no_port", "overload", "evicted", "send_error", "stopped")
DEFAULT_MAX_CLIENTS = 256


@dataclass
class RelayCounters:
    """What happened outside the two links (their own counters are per link)."""

    received_from_clients: int = 0
    received_from_target: int = 0
    sent_to_target: int = 0
    sent_to_clients: int = 0
    #: clients seen since start, and those pushed out by newer ones
    clients_seen: int = 0
    clients_evicted: int = 0
    #: errors the kernel reported on sends (e.g. ICMP port unreachable from the target)
    send_errors_reported: int = 0
    #: datagrams the kernel dropped at the relay's full sockets (None: unknown on this OS)
    kernel_drops: int | None = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RELAY_DROP_REASONS, 0))


@dataclass(slots=True, eq=False)
class _Client:
    address: Address
    upstream: UdpFace


def parse_host_port(text: str) -> Address:
    """``HOST:PORT`` or ``[IPv6]:PORT`` → (host, port); ValueError otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0..65535, not {port_text!r}")
    return host, int(port_text)


async def _resolve(loop: asyncio.AbstractEventLoop, address: Address) -> tuple[int, Address]:
    """(family, numeric address) of a UDP endpoint."""
    try:
        infos = await loop.getaddrinfo(address[0], address[1], type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {address[0]!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, (sockaddr[0], sockaddr[1])


def _any_address(family: int) -> Address:
    return ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)


class Relay(ShapedForwarder):
    """A shaped two-way UDP relay from `listen` to `target`.

    `profile` shapes client→target; `reverse` target→client (default: the
    same profile).  Random streams are seeded from (`seed`, link id), so the
    same seed and the same traffic give the same fates.
    """

    def __init__(
        self,
        listen: Address,
        target: Address,
        profile: LinkProfile,
        *,
        reverse: LinkProfile | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        events: EventLog | None = None,
        capture: PcapWriter | None = None,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        self.up = DirectedLink("client", "target", profile, seed=seed)
        self.down = DirectedLink("target", "client", reverse if reverse is not None else profile, seed=seed)
        self.seed = seed
        super().__init__(clock=clock, events=events, capture=capture, max_in_flight_bytes=max_in_flight_bytes)
        self.counters: RelayCounters = RelayCounters()
        self._listen_request = listen
        self._target_request = target
        self._max_clients = max_clients
        self._clients: OrderedDict[Address, _Client] = OrderedDict()
        self._pending: dict[tuple[str, int, bool], tuple[ExactTimer, int, Scheduled]] = {}
        self._in_flight = {UP: 0, DOWN: 0}
        self._listen: UdpFace | None = None
        self._target_family = socket.AF_INET
        #: the numeric addresses actually used (set by start)
        self.listen_address: Address = listen
        self.target_address: Address = target

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("a relay starts once")
        loop = asyncio.get_running_loop()
        self._loop = loop
        listen_family, listen = await _resolve(loop, self._listen_request)
        self._target_family, self.target_address = await _resolve(loop, self._target_request)
        if self.capture is not None and listen_family != self._target_family:
            raise ValueError("a capture needs the listen and target addresses in the same IP version")
        self._listen = UdpFace.open(loop, listen, self._from_client, family=listen_family)
        await self._listen.ready()
        self.listen_address = self._listen.local_address
        self._start_clock(loop)
        self.running = True
        if self._observed:
            self._emit({
                "kind": "start", "t": 0.0, "wall": self._wall_ns / 1e9, "seed": self.seed,
                "nodes": [
                    {"name": "client", "listen": _format(self.listen_address)},
                    {"name": "target", "address": _format(self.target_address)},
                ],
                "links": [{"link": link.id, "profile": asdict(link.profile)} for link in (self.up, self.down)],
                "ports": [self.listen_address[1]],
            })

    def _drop_in_flight(self, now: float) -> None:
        for (link_name, _, _), (_, pkt, copy) in self._pending.items():
            self._drop(pkt, now, "stopped", link_name, copy)
        self._pending.clear()
        self._in_flight = dict.fromkeys(self._in_flight, 0)

    @property
    def clients(self) -> int:
        return len(self._clients)

    # ------------------------------------------------------------ clients

    def _client(self, address: Address) -> _Client | None:
        client = self._clients.get(address)
        if client is not None:
            self._clients.move_to_end(address)
            return client
        if len(self._clients) >= self._max_clients:
            _, oldest = self._clients.popitem(last=False)
            oldest.upstream.close()
            self.counters.clients_evicted += 1
        assert self._loop is not None

        def on_answer(face: UdpFace, data: bytes, source: Address) -> None:
            self._from_target(new_client, data)

        try:
            upstream = UdpFace.open(
                self._loop,
                _any_address(self._target_family),
                on_answer,
                connect=self.target_address,
                family=self._target_family,
            )
        except OSError as exc:
            logger.warning("cannot open an upstream socket for %s: %s", _format(address), exc)
            return None
        new_client = _Client(address, upstream)
        self._clients[address] = new_client
        self.counters.clients_seen += 1
        return new_client

    # ------------------------------------------------------------ the data path

    def _from_client(self, face: UdpFace, data: bytes, source: Address) -> None:
        if not self.running:
            return
        self.counters.received_from_clients += 1
        ingress = self._ingress(source, self.target_address, data)
        client = self._client(source)
        if client is None:
            self._count_drop(ingress[0], self.now(), "no_port", node="client", size=len(data))
            return
        self._offer(self.up, client, data, ingress)

    def _from_target(self, client: _Client, data: bytes) -> None:
        if not self.running:
            return
        self.counters.received_from_target += 1
        self._offer(self.down, client, data, self._ingress(self.target_address, client.address, data))

    def _ingress(self, src: Address, dst: Address, data: bytes) -> tuple[int, float]:
        """A new packet id, and the ingress time."""
        pkt = self._next_pkt
        self._next_pkt += 1
        now = self.now()
        if self._observed:
            self._emit({
                "kind": "ingress", "t": now, "pkt": pkt, "src": src[0], "dst": dst[0],
                "sport": src[1], "dport": dst[1], "size": len(data),
            })
        return pkt, now

    def _offer(self, link: DirectedLink, client: _Client, data: bytes, ingress: tuple[int, float]) -> None:
        pkt, now = ingress
        if self._in_flight_bytes + len(data) > self._max_in_flight_bytes:
            self._count_drop(pkt, self.now(), "overload", node=link.src, size=len(data))
            return
        result = link.offer(now, len(data), data)
        if self._observed:
            self._emit_offer(pkt, link, result, node=link.src, size=len(data))
        assert self._scheduler is not None
        for copy in result.deliveries:
            timer = self._scheduler.call_at(copy.deliver_at, self._delivered, link, client, copy, ingress)
            self._pending[link.id, copy.packet, copy.duplicate] = (timer, pkt, copy)
            self._in_flight[link.id] += 1
            self._in_flight_bytes += copy.size

    def _delivered(self, link: DirectedLink, client: _Client, copy: Scheduled, ingress: tuple[int, float]) -> None:
        pkt, ingress_t = ingress
        del self._pending[link.id, copy.packet, copy.duplicate]
        self._in_flight[link.id] -= 1
        self._in_flight_bytes -= copy.size
        payload = copy.payload
        assert payload is not None
        if self._observed:
            self._emit_deliver(pkt, link, copy)
        upward = link is self.up
        src, dst = (client.address, self.target_address) if upward else (self.target_address, client.address)
        if upward:
            if client.upstream.closed:
                self._drop(pkt, copy.deliver_at, "evicted", link.id, copy)
                return
            sent = client.upstream.send(payload)
        else:
            assert self._listen is not None
            sent = self._listen.send(payload, client.address)
        if not sent:
            self._drop(pkt, copy.deliver_at, "send_error", link.id, copy)
            return
        if upward:
            self.counters.sent_to_target += 1
        else:
            self.counters.sent_to_clients += 1
        if self.capture is not None:
            self.capture.write_udp(self._wall_ns + round(copy.deliver_at * 1e9), src, dst, payload, ip_id=pkt)
        if self._observed:
            self._emit({
                "kind": "egress", "t": copy.deliver_at, "pkt": pkt, "src": src[0], "dst": dst[0],
                "sport": src[1], "dport": dst[1], "size": copy.size, "hops": 1,
                "latency": copy.deliver_at - ingress_t,
            })

    def _drop(self, pkt: int, t: float, reason: str, link_name: str, copy: Scheduled) -> None:
        """A copy the link delivered that did not go out after all."""
        # the link has let it go (or was about to): it is lost at the link's far end
        self._drop_copy(pkt, t, reason, node=link_name.split("->")[1], link=link_name, copy=copy)

    # ------------------------------------------------------------ reporting

    def _open_faces(self) -> list[UdpFace]:
        faces = [client.upstream for client in self._clients.values()]
        if self._listen is not None:
            faces.append(self._listen)
        return faces

    def _update_kernel_counters(self) -> None:
        self.counters.send_errors_reported = sum(face.errors for face in self._open_faces())
        super()._update_kernel_counters()

    def _counters_snapshot(self) -> dict[str, Any]:
        return {**super()._counters_snapshot(), "clients": len(self._clients)}

    def _links_snapshot(self) -> dict[str, dict[str, Any]]:
        return {link.id: link_snapshot(link, in_flight=self._in_flight[link.id]) for link in (self.up, self.down)}


def _format(address: Address) -> str:
    host, port = address
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"
