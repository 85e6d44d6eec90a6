"""One directed link with netem's semantics, as a sans-I/O state machine.

The kernel here has no netem, so meshsim reproduces it in userspace.  This
module only does the arithmetic: the caller says when a packet enters the link
(`LinkModel.offer(now, ...)`) and gets back when each copy comes out, or why it
did not.  Time is a parameter; there are no clocks, sockets or tasks here.

Each offered packet goes through netem's stages in netem's order, each a
class of `meshsim.model.stages` that `LinkModel` composes:

1. duplicate: with probability `duplicate` a second copy is made.  A copy is
   never duplicated again; each copy then goes through stages 2-6 on its own
   (netem re-enqueues the copy at the root qdisc).
2. loss: random (`loss`) or Gilbert-Elliott (`gemodel`).
3. corrupt: with probability `corrupt` one random bit of the copy is flipped.
4. queue limit: `limit_packets`, `limit_bytes`, `limit_seconds` (see below).
5. serialiser: ``depart_end = max(now, free) + wire_bytes * 8 / rate``, where
   `free` is when the serialiser finishes the packet before.  An idle link
   earns no credit (no token bucket, unlike the 2019 meshsim's tbf).
6. delay ± jitter: ``deliver_at = depart_end + delay_sample``.  With a rate,
   packets never reorder (``deliver_at`` is raised to the latest one so far,
   as netem does with rate); without a rate, jitter may reorder them.

The queue is the transmit buffer: copies admitted but not yet fully
serialised (``depart_end > now``), counted in wire bytes.  A copy is dropped
("queue") when admitting it would exceed a limit:

- `limit_packets`: the queue already holds that many copies;
- `limit_bytes`: queued wire bytes plus this copy's would exceed it
  (bfifo's rule: a copy that exactly fills the limit is admitted);
- `limit_seconds`: it would wait longer than that before its first bit is
  sent (``free - now > limit_seconds``; 0 means "only when the link is idle").

A copy that would not be queued at all (no rate and nothing queued, or zero
wire bytes on an idle serialiser) is never dropped by a limit.

Where this differs from Linux netem, on purpose:

- With rate and jitter, netem computes ``max(now + delay, last) + tx``, so a
  packet held back by jitter also holds back the serialiser.  Here the
  serialiser runs first and the delay follows it, as on a physical link.
  With constant delay the two give identical times.
- netem's `limit` counts every packet inside netem, including those only
  waiting out their delay; here limits count the transmit queue only.
  Without a rate nothing queues, so limits do not drop.
- In netem a loss event on a duplicated packet removes one of the two copies
  (the survivor is not drawn again), so a duplicated packet always gets
  through.  Here each copy is lost independently.  A copy draws from its own
  streams ("duplicate-loss", "duplicate-corrupt", "duplicate-jitter"), and
  under Gilbert-Elliott it sees the channel state the original left without
  moving the chain, so enabling duplication changes no original's fate.
- Correlation ("25%" after a value), reorder/gap, slot, ecn and the 4-state
  loss model are not modelled; the parser rejects them instead of ignoring
  them.  Delay distributions are netem's tables as continuous functions
  (see `meshsim.model.rng.netem_table_value`).  A negative delay sample counts as 0.
- The rate is exact; tc stores it in whole bytes per second (`rate 100bit`
  runs at 96 bit/s), see `netem_kernel_rate_bps`.
- Corruption flips a bit of the payload the caller gave (netem flips one in
  the linear part of the skb, headers included).

Randomness: every stream is `meshsim.model.rng.derive_rng(seed, link_id, purpose)`
and each stage draws a fixed number of values per copy that reaches it:
duplicate one per packet, loss one (even when `loss` is 0) or two under
Gilbert-Elliott, corrupt one (plus one for the bit when it strikes), jitter
one when `jitter` > 0.  So a packet's fate does not depend on which other
features are switched on.  A packet offered while the link is down draws
nothing.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from .profile import LinkProfile
from .rng import derive_rng
from .stages import (
    DROP_REASONS,
    BernoulliLoss,
    Corrupter,
    DelayLine,
    DropReason,
    Duplicator,
    ErrorModel,
    GilbertElliottLoss,
    Serialiser,
    TransmitQueue,
    flip_bit,
)


@dataclass(frozen=True, slots=True)
class Scheduled:
    """One copy of a packet that will come out of the link."""

    #: index of the offered packet on this link; a duplicate shares it
    packet: int
    duplicate: bool
    #: bytes as offered
    size: int
    #: bytes the serialiser sent (with overhead and cells)
    wire_bytes: int
    #: the payload as delivered (one bit flipped if corrupted); None if none was given
    payload: bytes | None
    #: bit flipped: byte ``bit // 8``, mask ``1 << (bit % 8)``; None if not corrupted
    corrupted_bit: int | None
    #: the serialiser's busy interval for this copy
    depart_start: float
    depart_end: float
    deliver_at: float


@dataclass(frozen=True, slots=True)
class Dropped:
    """One copy of a packet that will not come out of the link."""

    packet: int
    duplicate: bool
    reason: DropReason


@dataclass(frozen=True, slots=True)
class OfferResult:
    """The fate of every copy of one offered packet (original first)."""

    deliveries: tuple[Scheduled, ...]
    drops: tuple[Dropped, ...]


def _zero_per_reason() -> dict[DropReason, int]:
    return dict.fromkeys(DROP_REASONS, 0)


@dataclass
class LinkCounters:
    """Totals since the link was created.

    Each copy ends in exactly one of `delivered_*` or `dropped`, so
    ``offered_packets + duplicated == delivered_packets + sum(dropped.values())``.
    A delivery is counted when it is scheduled (its arrival may still be
    ahead); a flush moves it to ``dropped["flushed"]``.
    """

    offered_packets: int = 0
    offered_bytes: int = 0
    #: packets that got a second copy
    duplicated: int = 0
    #: copies with a flipped bit (such a copy may still be dropped by the queue)
    corrupted: int = 0
    delivered_packets: int = 0
    #: bytes as offered
    delivered_bytes: int = 0
    #: bytes on the wire, with overhead and cells
    delivered_wire_bytes: int = 0
    dropped: dict[DropReason, int] = field(default_factory=_zero_per_reason)
    #: seconds the serialiser spent sending (sum of depart_end - depart_start)
    busy_time: float = 0.0
    peak_queue_bytes: int = 0
    peak_queue_packets: int = 0



@dataclass(frozen=True, slots=True)
class _CopyStreams:
    """The random streams one kind of copy (originals, or duplicates) draws from."""

    loss: random.Random
    corrupt: random.Random
    jitter: random.Random

    @classmethod
    def derive(cls, seed: int, link_id: str, prefix: str) -> _CopyStreams:
        return cls(
            loss=derive_rng(seed, link_id, prefix + "loss"),
            corrupt=derive_rng(seed, link_id, prefix + "corrupt"),
            jitter=derive_rng(seed, link_id, prefix + "jitter"),
        )


class LinkModel:
    """One directed link: packets in at `now`, scheduled deliveries out.

    The composition of the stages (`meshsim.model.stages`), configured from
    the profile.  Times must not go backwards across calls.  Memory is
    bounded by what is in flight: finished transmissions and past deliveries
    are forgotten as time passes.
    """

    def __init__(self, profile: LinkProfile, *, seed: int, link_id: str) -> None:
        self.link_id = link_id
        self.seed = seed
        self.counters = LinkCounters()
        self._down = False
        self._now = -math.inf
        self._next_packet = 0
        self._duplicate_stream = derive_rng(seed, link_id, "duplicate")
        self._originals = _CopyStreams.derive(seed, link_id, "")
        self._duplicates = _CopyStreams.derive(seed, link_id, "duplicate-")
        # the stages, in netem's order
        self._duplicator = Duplicator()
        self._errors: ErrorModel = BernoulliLoss()
        # kept apart so that its channel state outlives a profile without gemodel
        self._gilbert_elliott: GilbertElliottLoss | None = None
        self._corrupter = Corrupter()
        self._queue = TransmitQueue()
        self._serialiser = Serialiser()
        self._delay = DelayLine()
        # (deliver_at, tie-break, copy) for copies not yet delivered, for flushes
        self._in_flight: list[tuple[float, int, Scheduled]] = []
        self._in_flight_order = 0
        self._configure(profile)

    def _configure(self, profile: LinkProfile) -> None:
        """Give every stage its parameters from `profile`; their state carries over."""
        self._profile = profile
        self._duplicator.probability = profile.duplicate
        self._errors = self._error_model(profile)
        self._corrupter.probability = profile.corrupt
        queue = self._queue
        queue.limit_packets, queue.limit_bytes, queue.limit_seconds = (
            profile.limit_packets, profile.limit_bytes, profile.limit_seconds)
        self._serialiser.rate_bps = profile.rate_bps
        delay = self._delay
        delay.delay, delay.jitter, delay.distribution = profile.delay, profile.jitter, profile.jitter_dist
        delay.keeps_order = profile.rate_bps is not None

    def _error_model(self, profile: LinkProfile) -> ErrorModel:
        if profile.gemodel is None:
            return BernoulliLoss(profile.loss)
        if self._gilbert_elliott is None:
            self._gilbert_elliott = GilbertElliottLoss(profile.gemodel)
        else:
            self._gilbert_elliott.params = profile.gemodel
        return self._gilbert_elliott

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    @property
    def is_down(self) -> bool:
        return self._down

    def offer(self, now: float, size: int, payload: bytes | None = None) -> OfferResult:
        """A packet of `size` bytes enters the link at `now`; what becomes of each copy."""
        now = self._advance(now)
        if not _is_int(size) or size < 0:
            raise ValueError(f"size must be an int >= 0, not {size!r}")
        if payload is not None and len(payload) != size:
            raise ValueError(f"payload is {len(payload)} bytes but size is {size}")
        packet = self._next_packet
        self._next_packet += 1
        counters = self.counters
        counters.offered_packets += 1
        counters.offered_bytes += size
        if self._down:
            counters.dropped["down"] += 1
            return OfferResult((), (Dropped(packet, False, "down"),))

        copies = [False]
        if self._duplicator.duplicates(self._duplicate_stream):
            copies.append(True)
            counters.duplicated += 1
        deliveries: list[Scheduled] = []
        drops: list[Dropped] = []
        for duplicate in copies:
            fate = self._send_copy(now, packet, duplicate, size, payload)
            if isinstance(fate, Scheduled):
                deliveries.append(fate)
            else:
                drops.append(fate)
        return OfferResult(tuple(deliveries), tuple(drops))

    def _send_copy(self, now: float, packet: int, duplicate: bool, size: int, payload: bytes | None) -> Scheduled | Dropped:
        counters = self.counters
        streams = self._duplicates if duplicate else self._originals

        errors = self._errors
        if errors.lost(streams.loss, duplicate=duplicate):
            counters.dropped[errors.reason] += 1
            return Dropped(packet, duplicate, errors.reason)

        corrupted_bit = self._corrupter.strike(streams.corrupt, size)
        if corrupted_bit is not None:
            counters.corrupted += 1
            if payload is not None:
                payload = flip_bit(payload, corrupted_bit)

        wire_bytes = self._profile.wire_bytes(size)
        serialiser, queue = self._serialiser, self._queue
        transmission = serialiser.schedule(now, wire_bytes)
        queued = transmission.end > now
        if queued and not queue.admits(wire_bytes, wait=serialiser.free_at - now):
            counters.dropped["queue"] += 1
            return Dropped(packet, duplicate, "queue")

        serialiser.send(transmission)
        if queued:
            queue.push(transmission)
        counters.busy_time += transmission.end - transmission.start
        counters.peak_queue_bytes = max(counters.peak_queue_bytes, queue.bytes)
        counters.peak_queue_packets = max(counters.peak_queue_packets, len(queue))

        deliver_at = self._delay.deliver_at(streams.jitter, transmission.end)
        scheduled = Scheduled(
            packet=packet,
            duplicate=duplicate,
            size=size,
            wire_bytes=wire_bytes,
            payload=payload,
            corrupted_bit=corrupted_bit,
            depart_start=transmission.start,
            depart_end=transmission.end,
            deliver_at=deliver_at,
        )
        counters.delivered_packets += 1
        counters.delivered_bytes += size
        counters.delivered_wire_bytes += wire_bytes
        if deliver_at > now:
            heapq.heappush(self._in_flight, (deliver_at, self._in_flight_order, scheduled))
            self._in_flight_order += 1
        return scheduled

    def set_profile(self, profile: LinkProfile, now: float) -> None:
        """Use `profile` for packets offered from `now` on.

        Copies already admitted keep their computed times (serialised at the
        old rate, delayed by the old delay); new copies queue behind them.
        Nothing is flushed.  The Gilbert-Elliott channel state carries over.
        """
        self._advance(now)
        self._configure(profile)

    def set_down(self, now: float, *, flush: bool = True) -> tuple[Scheduled, ...]:
        """Take the link down at `now`: packets offered while down are dropped ("down").

        With `flush` (a physical failure), every copy still queued or on the
        wire (``deliver_at > now``) is lost: they are returned so the caller
        can cancel them, and counted as dropped ("flushed") instead of
        delivered; the serialiser stops at `now`.  Without `flush`, what was
        admitted before `now` is still delivered as scheduled.
        """
        now = self._advance(now)
        self._down = True
        if not flush:
            return ()
        cancelled = tuple(entry[2] for entry in sorted(self._in_flight))
        counters = self.counters
        for copy in cancelled:
            counters.delivered_packets -= 1
            counters.delivered_bytes -= copy.size
            counters.delivered_wire_bytes -= copy.wire_bytes
            counters.dropped["flushed"] += 1
        for transmission in self._queue.flush():
            # the part of the transmission that will no longer happen
            counters.busy_time -= transmission.end - max(transmission.start, now)
        self._in_flight.clear()
        self._serialiser.stop(now)
        self._delay.stop(now)
        return cancelled

    def set_up(self, now: float) -> None:
        """Bring the link back up at `now`."""
        self._advance(now)
        self._down = False

    def backlog_bytes(self, now: float) -> int:
        """Wire bytes admitted but not yet fully serialised at `now`."""
        self._advance(now)
        return self._queue.bytes

    def backlog_packets(self, now: float) -> int:
        """Copies admitted but not yet fully serialised at `now`."""
        self._advance(now)
        return len(self._queue)

    def in_flight_packets(self, now: float) -> int:
        """Copies scheduled but not yet delivered at `now` (queued or on the wire)."""
        self._advance(now)
        return len(self._in_flight)

    def _advance(self, now: float) -> float:
        """Move the clock to `now` (never backwards) and forget what finished by then."""
        if not _is_number(now) or not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, not {now!r}")
        now = float(now)
        if now < self._now:
            raise ValueError(f"time went backwards on link {self.link_id}: {now} < {self._now}")
        self._now = now
        self._queue.forget_finished(now)
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= now:
            heapq.heappop(in_flight)
        return now


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
