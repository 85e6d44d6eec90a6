"""The userspace link fabric: UDP between nodes on 127.0.0.0/8, shaped link by link.

An asyncio shell over `meshsim.topology` (which owns the link models and the
routes).  Addressing, in full:

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
import heapq
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, Self

from .events import EventLog
from .pcap import PcapWriter
from .model import Cancelled, DirectedLink, LinkProfile, Node, OfferResult, Scheduled, Topology

logger = logging.getLogger(__name__)

Address = tuple[str, int]
Event = dict[str, Any]
Clock = Callable[[], float]

#: a copy that has crossed this many links is dropped ("ttl")
MAX_HOPS = 64
#: payload bytes the fabric or a relay may hold in flight before it drops ("overload")
DEFAULT_MAX_IN_FLIGHT_BYTES = 64 << 20
#: public faces bound on demand for senders' own ports
DEFAULT_MAX_DYNAMIC_FACES = 1024

FABRIC_DROP_REASONS = ("unknown_source", "no_route", "ttl", "no_port", "overload", "send_error", "stopped")


# ---------------------------------------------------------------- timers


class ExactTimer:
    """A timer of `ExactScheduler`; `cancel()` is safe at any time."""

    __slots__ = ("_scheduler", "args", "callback", "cancelled", "when")

    def __init__(self, scheduler: ExactScheduler, when: float, callback: Callable[..., None], args: tuple) -> None:
        self._scheduler = scheduler
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._scheduler._live -= 1


class ExactScheduler:
    """Runs callbacks at times on `clock`: never before, in order of (time, scheduling).

    The timers live in one heap here, with a single loop timer armed for the
    earliest.  Two reasons not to give each its own ``call_later``: the loop's
    timer heap does not keep equal times in the order they were scheduled
    (a link would reorder copies due at the same instant), and converting a
    time on `clock` to the loop's clock reads both clocks, so timers
    microseconds apart could swap.  The loop timer may fire early (asyncio by
    a clock tick, uvloop by up to half a millisecond, as it rounds to whole
    milliseconds); then it is simply re-armed.  A callback that raises is
    logged and the others still run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self._loop = loop
        self._clock = clock
        self._heap: list[tuple[float, int, ExactTimer]] = []
        self._sequence = 0
        self._live = 0
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._armed_for = math.inf
        self._running = False

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> ExactTimer:
        timer = ExactTimer(self, when, callback, args)
        heapq.heappush(self._heap, (when, self._sequence, timer))
        self._sequence += 1
        self._live += 1
        if not self._running and when < self._armed_for:
            self._arm(when)
        return timer

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = when
        delay = when - self._clock()
        if delay > 0:
            self._handle = self._loop.call_later(delay, self._run)
        else:
            self._handle = self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._handle = None
        self._armed_for = math.inf
        self._running = True
        heap = self._heap
        try:
            while heap:
                when, _, timer = heap[0]
                if timer.cancelled:
                    heapq.heappop(heap)
                    continue
                if when > self._clock():
                    break
                heapq.heappop(heap)
                timer.cancelled = True  # done: a later cancel() is a no-op
                self._live -= 1
                try:
                    timer.callback(*timer.args)
                except Exception:
                    logger.exception("timer callback %r failed", timer.callback)
        finally:
            self._running = False
        if heap:
            self._arm(heap[0][0])

    @property
    def pending(self) -> int:
        return self._live

    def cancel_all(self) -> None:
        for _, _, timer in self._heap:
            timer.cancel()
        self._heap.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_for = math.inf


# ---------------------------------------------------------------- sockets


#: receive buffer asked for on every socket (Linux caps it at net.core.rmem_max); a burst
#: that overflows the buffer is lost before the fabric sees it, see `kernel_receive_drops`
RECEIVE_BUFFER_BYTES = 4 << 20


def kernel_receive_drops(sockets: Iterable[socket.socket]) -> int | None:
    """Datagrams the kernel dropped because these sockets' receive buffers were full.

    Read from the "drops" column of /proc/net/udp{,6}, matched by inode;
    None where that is not available (not Linux).  Closed sockets are not counted.
    """
    inodes = set()
    for sock in sockets:
        if sock.fileno() != -1:
            inodes.add(os.fstat(sock.fileno()).st_ino)
    total, readable = 0, False
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path, encoding="ascii") as table:
                rows = table.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            if len(fields) >= 13 and int(fields[9]) in inodes:
                total += int(fields[12])
    return total if readable else None


class UdpFace(asyncio.DatagramProtocol):
    """A UDP socket bound at once (so its port is ours), whose asyncio transport
    arrives a moment later; datagrams sent before then wait in a short queue.
    """

    MAX_WAITING = 1024

    def __init__(self, sock: socket.socket, on_datagram: Callable[[UdpFace, bytes, Address], None]) -> None:
        self.sock = sock
        self.local_address: Address = sock.getsockname()[:2]
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self._waiting: deque[tuple[bytes, Address | None]] = deque()
        self.closed = False
        #: send errors the kernel reported (e.g. ICMP port unreachable on a connected socket)
        self.errors = 0
        self._opening: asyncio.Task[Any] | None = None
        self._lost: asyncio.Future[None] | None = None

    @classmethod
    def open(
        cls,
        loop: asyncio.AbstractEventLoop,
        address: Address,
        on_datagram: Callable[[UdpFace, bytes, Address], None],
        *,
        connect: Any = None,
        family: int = socket.AF_INET,
    ) -> UdpFace:
        """Bind `address` now (OSError if it cannot be) and wrap it in a transport soon."""
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.bind(address)
            if connect is not None:
                sock.connect(connect)
        except OSError:
            sock.close()
            raise
        face = cls(sock, on_datagram)
        face._lost = loop.create_future()
        face._opening = loop.create_task(loop.create_datagram_endpoint(lambda: face, sock=sock))
        return face

    async def ready(self) -> None:
        if self._opening is not None:
            await self._opening

    async def wait_closed(self) -> None:
        """After `close()`: until the socket is closed."""
        if self._opening is not None:
            try:
                await self._opening
            except OSError:
                return
        if self._lost is not None and self.transport is not None:
            await self._lost

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport, not always its subclass
        if self.closed:
            transport.close()
            return
        while self._waiting:
            data, address = self._waiting.popleft()
            self._transmit(data, address)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self._on_datagram(self, data, addr[:2])
        except Exception:
            # an exception here would make asyncio close the transport: log and carry on
            logger.exception("handling a datagram from %s failed", addr)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1

    def send(self, data: bytes, address: Address | None = None) -> bool:
        """Send now, or as soon as the transport exists; False if it cannot be."""
        if self.closed:
            return False
        if self.transport is None:
            if len(self._waiting) >= self.MAX_WAITING:
                return False
            self._waiting.append((data, address))
            return True
        return self._transmit(data, address)

    def _transmit(self, data: bytes, address: Address | None) -> bool:
        assert self.transport is not None
        if data:
            self.transport.sendto(data, address)
            return True
        # asyncio's and uvloop's sendto() silently discard an empty datagram; the socket does not
        try:
            if address is None:
                self.sock.send(b"")
            else:
                self.sock.sendto(b"", address)
        except OSError:
            self.errors += 1
            return False
        return True

    def close(self) -> None:
        self.closed = True
        self._waiting.clear()
        if self.transport is not None:
            self.transport.close()
        elif self._opening is None or self._opening.done():
            self.sock.close()
        # else: connection_made closes the transport when it arrives


# ---------------------------------------------------------------- counters


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


def link_snapshot(link: DirectedLink, *, in_flight: int, weight: float | None = None) -> dict[str, Any]:
    """One directed link's state and counters as plain data (JSON-serialisable)."""
    snapshot: dict[str, Any] = {
        "src": link.src,
        "dst": link.dst,
        "up": not link.is_down,
        "profile": asdict(link.profile),
    }
    if weight is not None:
        snapshot["weight"] = weight
    snapshot.update(asdict(link.model.counters))
    snapshot["in_flight_packets"] = in_flight
    return snapshot


# ---------------------------------------------------------------- what the fabric and the relay share


class _Counters(Protocol):
    """What `ShapedForwarder` needs of its counters: a dataclass with these two."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    dropped: dict[str, int]
    kernel_drops: int | None


class ShapedForwarder:
    """Lifecycle, events and bookkeeping common to `Fabric` and `meshsim.relay.Relay`.

    A subclass binds its sockets in ``start()`` and calls `_start_clock` where
    its run time begins; it supplies `_open_faces`, `_drop_in_flight` and
    `_links_snapshot`.  Events go through `_emit`, to the log and to every
    subscriber.
    """

    counters: _Counters

    def __init__(
        self,
        *,
        clock: Clock | None,
        events: EventLog | None,
        capture: PcapWriter | None,
        max_in_flight_bytes: int,
    ) -> None:
        self.events = events
        self.capture = capture
        self._clock_source = clock
        self._max_in_flight_bytes = max_in_flight_bytes
        self._subscribers: list[Callable[[Event], None]] = []
        self._in_flight_bytes = 0
        self._next_pkt = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: ExactScheduler | None = None
        self._clock: Clock = time.monotonic
        #: the clock's value at start(): run time 0
        self.epoch = 0.0
        self._wall_ns = 0
        self.running = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        raise NotImplementedError

    def _start_clock(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run time 0 is now."""
        self._clock = self._clock_source or time.monotonic
        self.epoch = self._clock()
        self._wall_ns = time.time_ns()
        self._scheduler = ExactScheduler(loop, self.now)

    async def stop(self) -> None:
        """Close every socket; copies still in flight are dropped ("stopped")."""
        if not self.running:
            return
        self.running = False
        now = self.now()
        assert self._scheduler is not None
        self._scheduler.cancel_all()
        self._drop_in_flight(now)
        self._in_flight_bytes = 0
        self._update_kernel_counters()
        faces = self._open_faces()
        for face in faces:
            face.close()
        await asyncio.gather(*(face.wait_closed() for face in faces), return_exceptions=True)
        if self._observed:
            snapshot = self.snapshot()
            self._emit({"kind": "stop", "t": now, "counters": snapshot["counters"], "links": snapshot["links"]})
        if self.events is not None:
            self.events.flush()
        if self.capture is not None:
            self.capture.flush()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _open_faces(self) -> list[UdpFace]:
        """Every socket held now."""
        raise NotImplementedError

    def _drop_in_flight(self, now: float) -> None:
        """At stop: drop ("stopped") and forget every copy still scheduled, but for `_in_flight_bytes`."""
        raise NotImplementedError

    def now(self) -> float:
        """Seconds since start() on this forwarder's clock."""
        return self._clock() - self.epoch

    # ------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback` with every event (the same dicts the log gets); returns an unsubscribe."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    @property
    def _observed(self) -> bool:
        return self.events is not None or bool(self._subscribers)

    def _emit(self, event: Event) -> None:
        if self.events is not None:
            self.events.write(event)
        for callback in tuple(self._subscribers):
            try:
                callback(event)
            except Exception:
                logger.exception("event subscriber %r failed", callback)

    def _emit_offer(self, pkt: int, link: DirectedLink, result: OfferResult, *, node: str, size: int) -> None:
        """`pkt` offered to `link`, and the copies the link dropped at once."""
        offered_at = link.last_time
        self._emit({
            "kind": "offer", "t": offered_at, "pkt": pkt, "link": link.id,
            "link_pkt": (result.deliveries or result.drops)[0].packet, "size": size,
        })
        for dropped in result.drops:
            self._emit({
                "kind": "drop", "t": offered_at, "pkt": pkt, "link": link.id, "link_pkt": dropped.packet,
                "dup": dropped.duplicate, "size": size, "node": node, "reason": dropped.reason,
            })

    def _emit_deliver(self, pkt: int, link: DirectedLink, copy: Scheduled) -> None:
        # "late": how long after the model's time the timer actually ran
        self._emit({
            "kind": "deliver", "t": copy.deliver_at, "pkt": pkt, "link": link.id, "link_pkt": copy.packet,
            "dup": copy.duplicate, "size": copy.size, "wire": copy.wire_bytes,
            "depart_start": copy.depart_start, "depart_end": copy.depart_end,
            "corrupted_bit": copy.corrupted_bit, "late": self.now() - copy.deliver_at,
        })

    def _count_drop(self, pkt: int, now: float, reason: str, *, node: str | None, size: int) -> None:
        """A datagram dropped before it reached a link."""
        self.counters.dropped[reason] += 1
        if self._observed:
            self._emit({
                "kind": "drop", "t": now, "pkt": pkt, "link": None, "link_pkt": None, "dup": False,
                "size": size, "node": node, "reason": reason,
            })

    def _drop_copy(self, pkt: int, now: float, reason: str, *, node: str, link: str, copy: Scheduled) -> None:
        """A copy scheduled on `link` that will not be delivered after all."""
        # a reason that is not ours ("flushed") is counted by the link
        if reason in self.counters.dropped:
            self.counters.dropped[reason] += 1
        if self._observed:
            self._emit({
                "kind": "drop", "t": now, "pkt": pkt, "link": link, "link_pkt": copy.packet,
                "dup": copy.duplicate, "size": copy.size, "node": node, "reason": reason,
            })

    # ------------------------------------------------------------ reporting

    def _update_kernel_counters(self) -> None:
        self.counters.kernel_drops = kernel_receive_drops(face.sock for face in self._open_faces())

    def snapshot(self) -> dict[str, Any]:
        """Counters as plain data: {"t", "counters", "in_flight_bytes", "links": {id: ...}}."""
        if self.running:
            self._update_kernel_counters()
        return {
            "t": self.now() if self._loop is not None else 0.0,
            "counters": self._counters_snapshot(),
            "in_flight_bytes": self._in_flight_bytes,
            "links": self._links_snapshot(),
        }

    def _counters_snapshot(self) -> dict[str, Any]:
        return asdict(self.counters)

    def _links_snapshot(self) -> dict[str, dict[str, Any]]:
        """`link_snapshot` of every link, by id."""
        raise NotImplementedError


# ---------------------------------------------------------------- fabric


@dataclass(slots=True)
class _Datagram:
    """One datagram from an application, as it crosses the fabric (copies share it)."""

    pkt: int
    src: Node
    dst: Node
    sport: int
    dport: int
    ingress_t: float


class Fabric(ShapedForwarder):
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
