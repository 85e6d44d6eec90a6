"""The userspace link fabric: UDP between nodes on 127.0.0.0/8, shaped link by link.

An asyncio shell over `meshsim.model.Topology` (which owns the link models
and the routes); the userspace backend of `meshsim.net.Network`.
Addressing, in full:

- node N's application binds its *private* address 127.1.0.N (any port) and
  sends to another node's *public* address 127.0.0.M, port P;
- the fabric owns the public addresses: it binds every node's public address
  on every port in `ports` at start, so first contact can happen;
- a datagram arriving at M's public face from 127.1.0.N:S is from node N
  (known by its private source address; anything else is dropped,
  "unknown_source") for node M, port P;
- it travels hop by hop along the current shortest route, each hop's
  `LinkModel` applied in turn: the time a hop delivers a copy is the time the
  next hop is offered it, so every hop has its own queue and serialiser;
- the last hop's delivery is sent to 127.1.0.M:P *from* N's public face on
  the sender's own port S (127.0.0.N:S, bound on demand, like a
  port-preserving NAT), so M sees 127.0.0.N:S as the source and its reply
  takes the same way back, to N's application on the port it sent from.

The next hop is chosen when a copy arrives at a node, on the topology as it
is then (routing converges instantly); a copy that has nowhere to go is
dropped ("no_route"), and one that has taken `MAX_HOPS` hops is dropped
("ttl").  Failing a link loses only what that link carries.

Timing: a delivery never happens before the model's time on the fabric's
clock, and deliveries happen in the order of their model times (ties in the
order they were scheduled); see `ExactScheduler`.  Times in events and
counters are the model's, in seconds since `start()`.

Memory is bounded: payload bytes in flight (`max_in_flight_bytes`, beyond
which copies are dropped as "overload" before they reach a link) and public
faces bound on demand (`max_dynamic_faces`, beyond which "no_port").
"""


from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..model import Cancelled, DirectedLink, LinkProfile, Node, Scheduled, Topology
from .events import EventLog
from .forwarder import DEFAULT_MAX_IN_FLIGHT_BYTES, ShapedForwarder, link_snapshot
from .network import Network
from .pcap import PcapWriter
from .scheduler import Clock, ExactTimer
from .udp import Address, UdpFace

logger = logging.getLogger(__name__)

#: a copy that has crossed this many links is dropped ("ttl")
MAX_HOPS = 64
#: public faces bound on demand for senders' own ports
DEFAULT_MAX_DYNAMIC_FACES = 1024

FABRIC_DROP_REASONS = ("unknown_source", "no_route", "ttl", "no_port", "overload", "send_error", "stopped")


@dataclass
class FabricCounters:
    """What happened to datagrams outside the links (link counters are per link)."""

    #: datagrams from applications
    received_packets: int = 0
    received_bytes: int = 0
    #: datagrams handed to applications (a duplicate counts twice)
    delivered_packets: int = 0
    delivered_bytes: int = 0
    #: copies dropped by the fabric, by reason (see FABRIC_DROP_REASONS)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FABRIC_DROP_REASONS, 0))
    #: datagrams the kernel dropped at the fabric's full sockets (None: unknown on this OS);
    #: brought up to date by snapshot() and stop()
    kernel_drops: int | None = 0



@dataclass(slots=True)
class _Datagram:
    """One datagram from an application, as it crosses the fabric (copies share it)."""

    pkt: int
    src: Node
    dst: Node
    sport: int
    dport: int
    ingress_t: float


class Fabric(ShapedForwarder, Network):
    """Relays UDP between the nodes of `topology`, applying each hop's link model.

    `ports`: the application ports the fabric listens on at every node's
    public address.  `clock`: seconds, monotonic, ticking at the rate of the
    event loop's clock (default: ``time.monotonic``, which asyncio's
    ``loop.time`` also reads; uvloop's ``loop.time`` is cached per loop
    iteration in whole milliseconds, too coarse to stamp an ingress).
    `capture`: every hop's delivery is written to it.  `events`: the JSONL
    log.  Runtime changes go through
    the fabric (`set_link`, `fail`, `heal`, `partition`, `heal_all`) so that
    flushed copies are cancelled and logged; the topology may be read at any
    time.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        ports: Iterable[int],
        clock: Clock | None = None,
        capture: PcapWriter | None = None,
        events: EventLog | None = None,
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
        max_dynamic_faces: int = DEFAULT_MAX_DYNAMIC_FACES,
    ) -> None:
        self.topology = topology
        self.ports = sorted(set(ports))
        for port in self.ports:
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"ports must be in 1..65535, not {port!r}")
        super().__init__(clock=clock, events=events, capture=capture, max_in_flight_bytes=max_in_flight_bytes)
        self.counters: FabricCounters = FabricCounters()
        self._max_dynamic_faces = max_dynamic_faces
        self._faces: dict[tuple[str, int], UdpFace] = {}
        self._dynamic_faces = 0
        # (link id, link packet, duplicate) -> the timer that delivers that copy, and what it carries
        self._pending: dict[tuple[str, int, bool], tuple[ExactTimer, _Datagram, DirectedLink, Scheduled]] = {}
        self._in_flight_per_link: dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("a fabric starts once")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._start_clock(loop)
        try:
            for node in self.topology:
                for port in self.ports:
                    self._faces[node.name, port] = UdpFace.open(loop, (node.public_ip, port), self._on_datagram)
            await asyncio.gather(*(face.ready() for face in self._faces.values()))
        except BaseException:
            for face in self._faces.values():
                face.close()
            raise
        self.running = True
        if self._observed:
            self._emit({
                "kind": "start", "t": 0.0, "wall": self._wall_ns / 1e9, "seed": self.topology.seed,
                "nodes": [asdict(node) for node in self.topology],
                "links": [
                    {"link": link.id, "profile": asdict(link.profile), "weight": self.topology.weight(link.src, link.dst)}
                    for link in self.topology.links
                ],
                "ports": self.ports,
            })

    def _drop_in_flight(self, now: float) -> None:
        for _, datagram, link, copy in self._pending.values():
            self._drop_copy(datagram.pkt, now, "stopped", node=link.src, link=link.id, copy=copy)
        self._pending.clear()
        self._in_flight_per_link.clear()

    def _open_faces(self) -> list[UdpFace]:
        return list(self._faces.values())

    # ------------------------------------------------------------ addressing

    def public_address(self, node: str, port: int) -> Address:
        return (self.topology.node(node).public_ip, port)

    def private_address(self, node: str, port: int) -> Address:
        return (self.topology.node(node).private_ip, port)

    def _face(self, node: Node, port: int) -> UdpFace | None:
        """The public face of `node` on `port`, bound on demand (None if it cannot be)."""
        face = self._faces.get((node.name, port))
        if face is not None or not self.running:
            return face
        if self._dynamic_faces >= self._max_dynamic_faces:
            return None
        assert self._loop is not None
        try:
            face = UdpFace.open(self._loop, (node.public_ip, port), self._on_datagram)
        except OSError as exc:
            logger.warning("cannot bind %s:%d for node %s: %s", node.public_ip, port, node.name, exc)
            return None
        self._dynamic_faces += 1
        self._faces[node.name, port] = face
        return face

    # ------------------------------------------------------------ the data path

    def _on_datagram(self, face: UdpFace, data: bytes, source: Address) -> None:
        if not self.running:
            return
        now = self.now()
        counters = self.counters
        counters.received_packets += 1
        counters.received_bytes += len(data)
        dst = self.topology.node_by_public_ip(face.local_address[0])
        assert dst is not None, face.local_address
        src = self.topology.node_by_private_ip(source[0])
        pkt = self._next_pkt
        self._next_pkt += 1
        if self._observed:
            self._emit({
                "kind": "ingress", "t": now, "pkt": pkt, "src": src.name if src else source[0],
                "dst": dst.name, "sport": source[1], "dport": face.local_address[1], "size": len(data),
            })
        if src is None:
            self._count_drop(pkt, now, "unknown_source", node=None, size=len(data))
            return
        datagram = _Datagram(pkt, src, dst, source[1], face.local_address[1], now)
        # reserve the sender's port on its public face now, so the reply has somewhere to go
        if self._face(src, datagram.sport) is None:
            self._count_drop(pkt, now, "no_port", node=src.name, size=len(data))
            return
        self._forward(datagram, src.name, data, 0, now)

    def _forward(self, datagram: _Datagram, at: str, payload: bytes, hops: int, now: float) -> None:
        if at == datagram.dst.name:
            self._egress(datagram, payload, hops, now)
            return
        link = self.topology.next_hop(at, datagram.dst.name)
        if link is None:
            self._count_drop(datagram.pkt, now, "no_route", node=at, size=len(payload))
            return
        if hops >= MAX_HOPS:
            self._count_drop(datagram.pkt, now, "ttl", node=at, size=len(payload))
            return
        if self._in_flight_bytes + len(payload) > self._max_in_flight_bytes:
            self._count_drop(datagram.pkt, now, "overload", node=at, size=len(payload))
            return
        result = link.offer(now, len(payload), payload)
        if self._observed:
            self._emit_offer(datagram.pkt, link, result, node=at, size=len(payload))
        assert self._scheduler is not None
        for copy in result.deliveries:
            timer = self._scheduler.call_at(copy.deliver_at, self._hop_delivered, datagram, link, copy, hops)
            self._pending[link.id, copy.packet, copy.duplicate] = (timer, datagram, link, copy)
            self._in_flight_per_link[link.id] = self._in_flight_per_link.get(link.id, 0) + 1
            self._in_flight_bytes += copy.size

    def _hop_delivered(self, datagram: _Datagram, link: DirectedLink, copy: Scheduled, hops: int) -> None:
        self._forget(link, copy)
        assert copy.payload is not None
        if self._observed:
            self._emit_deliver(datagram.pkt, link, copy)
        if self.capture is not None:
            topology = self.topology
            self.capture.write_udp(
                self._wall_ns + round(copy.deliver_at * 1e9),
                (topology.node(link.src).public_ip, datagram.sport),
                (topology.node(link.dst).public_ip, datagram.dport),
                copy.payload,
                ip_id=datagram.pkt,
                ttl=max(1, 64 - hops),
            )
        self._forward(datagram, link.dst, copy.payload, hops + 1, copy.deliver_at)

    def _egress(self, datagram: _Datagram, payload: bytes, hops: int, now: float) -> None:
        face = self._faces.get((datagram.src.name, datagram.sport))
        if face is None:
            self._count_drop(datagram.pkt, now, "no_port", node=datagram.dst.name, size=len(payload))
            return
        if not face.send(payload, (datagram.dst.private_ip, datagram.dport)):
            self._count_drop(datagram.pkt, now, "send_error", node=datagram.dst.name, size=len(payload))
            return
        self.counters.delivered_packets += 1
        self.counters.delivered_bytes += len(payload)
        if self._observed:
            self._emit({
                "kind": "egress", "t": now, "pkt": datagram.pkt, "src": datagram.src.name,
                "dst": datagram.dst.name, "sport": datagram.sport, "dport": datagram.dport,
                "size": len(payload), "hops": hops, "latency": now - datagram.ingress_t,
            })

    def _forget(self, link: DirectedLink, copy: Scheduled) -> None:
        del self._pending[link.id, copy.packet, copy.duplicate]
        self._in_flight_per_link[link.id] -= 1
        self._in_flight_bytes -= copy.size

    # ------------------------------------------------------------ runtime changes

    def set_link(
        self,
        a: str,
        b: str,
        profile: LinkProfile | None = None,
        *,
        reverse: LinkProfile | None = None,
        weight: float | None = None,
    ) -> None:
        """Reshape a link from now on (see `Topology.set_link`); nothing is flushed."""
        changed = self.topology.set_link(a, b, profile, now=self.now(), reverse=reverse, weight=weight)
        if self._observed:
            links = changed or [self.topology.link(a, b), self.topology.link(b, a)]
            for link in links:
                self._emit({
                    "kind": "link_change", "t": link.last_time, "link": link.id, "profile": asdict(link.profile),
                    "weight": self.topology.weight(a, b),
                })

    def fail(self, a: str, b: str) -> int:
        """Fail the link both ways; what it carried is lost.  Returns the copies lost."""
        cancelled = self.topology.fail(a, b, now=self.now())
        self._link_went_down([(a, b)], cancelled)
        return len(cancelled)

    def heal(self, a: str, b: str) -> None:
        if self.topology.heal(a, b, now=self.now()):
            self._links_came_up([(a, b)])

    def partition(self, groups: Iterable[Iterable[str]]) -> int:
        """Fail every link between groups (see `Topology.partition`); returns the copies lost."""
        failed, cancelled = self.topology.partition(groups, now=self.now())
        self._link_went_down(failed, cancelled)
        return len(cancelled)

    def heal_all(self) -> None:
        self._links_came_up(self.topology.heal_all(now=self.now()))

    def _link_went_down(self, edges: list[tuple[str, str]], cancelled: list[Cancelled]) -> None:
        flushed: dict[str, int] = {}
        for link, copy in cancelled:
            timer, datagram, _, _ = self._pending[link.id, copy.packet, copy.duplicate]
            timer.cancel()
            self._forget(link, copy)
            flushed[link.id] = flushed.get(link.id, 0) + 1
            # counted in the link's counters as "flushed"; logged here
            self._drop_copy(datagram.pkt, link.last_time, "flushed", node=link.src, link=link.id, copy=copy)
        if self._observed:
            for a, b in edges:
                for link in (self.topology.link(a, b), self.topology.link(b, a)):
                    self._emit({"kind": "link_down", "t": link.last_time, "link": link.id, "flushed": flushed.get(link.id, 0)})

    def _links_came_up(self, edges: list[tuple[str, str]]) -> None:
        if self._observed:
            for a, b in edges:
                for link in (self.topology.link(a, b), self.topology.link(b, a)):
                    self._emit({"kind": "link_up", "t": link.last_time, "link": link.id})

    # ------------------------------------------------------------ reporting

    def _links_snapshot(self) -> dict[str, dict[str, Any]]:
        topology = self.topology
        return {
            link.id: link_snapshot(
                link,
                in_flight=self._in_flight_per_link.get(link.id, 0),
                weight=topology.weight(link.src, link.dst),
            )
            for link in topology.links
        }
