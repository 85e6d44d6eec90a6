"""What the fabric and the relay share: lifecycle, the run clock, events and counters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar, Protocol, Self

from ..model import DirectedLink, OfferResult, Scheduled
from .events import Event, EventLog
from .pcap import PcapWriter
from .scheduler import Clock, ExactScheduler
from .udp import UdpFace, kernel_receive_drops

logger = logging.getLogger(__name__)

#: payload bytes the fabric or a relay may hold in flight before it drops ("overload")
DEFAULT_MAX_IN_FLIGHT_BYTES = 64 << 20


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



class _Counters(Protocol):
    """What `ShapedForwarder` needs of its counters: a dataclass with these two."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    dropped: dict[str, int]
    kernel_drops: int | None


class ShapedForwarder:
    """Lifecycle, events and bookkeeping common to `Fabric` and `Relay`.

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
