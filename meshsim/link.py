"""One directed link with netem's semantics, as a sans-I/O state machine.

The kernel here has no netem, so meshsim reproduces it in userspace.  This
module only does the arithmetic: the caller says when a packet enters the link
(`LinkModel.offer(now, ...)`) and gets back when each copy comes out, or why it
did not.  Time is a parameter; there are no clocks, sockets or tasks here.

Each offered packet goes through netem's stages in netem's order:

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
  (see `meshsim.rng.netem_table_value`).  A negative delay sample counts as 0.
- The rate is exact; tc stores it in whole bytes per second (`rate 100bit`
  runs at 96 bit/s), see `netem_kernel_rate_bps`.
- Corruption flips a bit of the payload the caller gave (netem flips one in
  the linear part of the skb, headers included).

Randomness: every stream is `meshsim.rng.derive_rng(seed, link_id, purpose)`
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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, NamedTuple, get_args

from .rng import JITTER_DISTRIBUTIONS, JitterDistribution, derive_rng, sample_delay

DropReason = Literal["loss", "gemodel", "queue", "down", "flushed"]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)

#: Gilbert-Elliott parameters in tc's order: p (good→bad), r (bad→good),
#: 1-h (loss probability in the bad state), 1-k (loss probability in the good state).
GilbertElliottParams = tuple[float, float, float, float]


# ---------------------------------------------------------------- profile


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class LinkProfile:
    """The parameters of one direction of a link (netem's, plus byte/time limits)."""

    #: bits per second; None: no serialiser (infinitely fast)
    rate_bps: float | None = None
    #: seconds
    delay: float = 0.0
    #: seconds; the spread of the delay (half-width for uniform, σ for normal)
    jitter: float = 0.0
    jitter_dist: JitterDistribution = "uniform"
    #: probability that a copy is lost at random (0..1)
    loss: float = 0.0
    #: Gilbert-Elliott loss instead of random loss: (p, r, 1-h, 1-k)
    gemodel: GilbertElliottParams | None = None
    #: probability that a packet is sent twice
    duplicate: float = 0.0
    #: probability that one bit of a copy is flipped
    corrupt: float = 0.0
    #: netem's `limit`: most copies in the transmit queue
    limit_packets: int | None = None
    #: most wire bytes in the transmit queue
    limit_bytes: int | None = None
    #: longest wait before a copy's first bit is sent, seconds
    limit_seconds: float | None = None
    #: bytes the serialiser adds to each packet (42 for Ethernet+IPv4+UDP, 0 on raw radio)
    overhead: int = 0
    #: netem's cellsize: the packet is sent in whole cells of this many bytes
    cell_size: int | None = None
    #: bytes added to every cell
    cell_overhead: int = 0

    def __post_init__(self) -> None:
        if self.rate_bps is not None:
            if not _is_number(self.rate_bps) or not (math.isfinite(self.rate_bps) and self.rate_bps > 0):
                raise ValueError(f"rate_bps must be a positive number of bits per second or None, not {self.rate_bps!r}")
            object.__setattr__(self, "rate_bps", float(self.rate_bps))
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not _is_number(value) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
            object.__setattr__(self, name, float(value))
        if self.jitter_dist not in JITTER_DISTRIBUTIONS:
            raise ValueError(f"jitter_dist must be one of {', '.join(JITTER_DISTRIBUTIONS)}, not {self.jitter_dist!r}")
        for name in ("loss", "duplicate", "corrupt"):
            object.__setattr__(self, name, _probability(name, getattr(self, name)))
        if self.gemodel is not None:
            if isinstance(self.gemodel, (str, bytes)) or not isinstance(self.gemodel, Sequence) or len(self.gemodel) != 4:
                raise ValueError(f"gemodel must be (p, r, 1-h, 1-k), not {self.gemodel!r}")
            names = ("gemodel p", "gemodel r", "gemodel 1-h", "gemodel 1-k")
            gemodel = tuple(_probability(n, v) for n, v in zip(names, self.gemodel))
            object.__setattr__(self, "gemodel", gemodel)
            if self.loss > 0:
                raise ValueError("give either loss (random) or gemodel, not both")
        for name in ("limit_packets", "limit_bytes"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 0):
                raise ValueError(f"{name} must be an int >= 0 or None, not {value!r}")
        if self.limit_seconds is not None:
            if not _is_number(self.limit_seconds) or not (math.isfinite(self.limit_seconds) and self.limit_seconds >= 0):
                raise ValueError(f"limit_seconds must be a finite number >= 0 or None, not {self.limit_seconds!r}")
            object.__setattr__(self, "limit_seconds", float(self.limit_seconds))
        if not _is_int(self.overhead):
            raise ValueError(f"overhead must be an int (may be negative), not {self.overhead!r}")
        if not _is_int(self.cell_overhead):
            raise ValueError(f"cell_overhead must be an int, not {self.cell_overhead!r}")
        if self.cell_size is None:
            if self.cell_overhead != 0:
                raise ValueError("cell_overhead needs cell_size")
        elif not (_is_int(self.cell_size) and self.cell_size > 0):
            raise ValueError(f"cell_size must be an int > 0 or None, not {self.cell_size!r}")
        elif self.cell_size + self.cell_overhead <= 0:
            raise ValueError("cell_size + cell_overhead must be > 0")

    def wire_bytes(self, size: int) -> int:
        """Bytes the serialiser sends for a packet of `size` bytes (netem's packet_time_ns).

        ``size + overhead`` (never below 0), then with cells: whole cells of
        `cell_size`, each sent as ``cell_size + cell_overhead`` bytes.
        """
        length = max(0, size + self.overhead)
        if self.cell_size is not None:
            cells = -(-length // self.cell_size)
            length = cells * (self.cell_size + self.cell_overhead)
        return length

    def transmission_time(self, size: int) -> float:
        """Seconds the serialiser is busy with a packet of `size` bytes (0 without a rate)."""
        return _transmission_time(self.wire_bytes(size), self.rate_bps)

    @classmethod
    def from_netem_args(cls, args: str | Sequence[str]) -> LinkProfile:
        """Parse the arguments after `tc qdisc ... netem`.

        Accepts ``limit N``, ``delay|latency TIME [JITTER]``,
        ``distribution normal|pareto|paretonormal|uniform``,
        ``loss|drop [random] PERCENT``, ``loss gemodel p [r [1-h [1-k]]]``
        (tc's defaults: r = 1-p, 1-h = 100%, 1-k = 0%), ``duplicate PERCENT``,
        ``corrupt PERCENT`` and ``rate RATE [PACKETOVERHEAD [CELLSIZE
        [CELLOVERHEAD]]]`` (also ``packetoverhead``/``cellsize``/``celloverhead``
        as keywords, the way tc prints them).  Units as tc: see
        `meshsim.netem_args`.
        Keywords must be spelt out (tc also takes prefixes).  Anything not
        modelled (a non-zero correlation, reorder, gap, slot, ecn, seed, loss
        state, a rate in %) raises ValueError rather than being ignored.
        """
        from .netem_args import parse_netem_args  # late: netem_args builds LinkProfiles

        return parse_netem_args(args.split() if isinstance(args, str) else list(args))

    def to_netem_args(self, *, counted_by_kernel: int = 0) -> str:
        """These parameters as `tc qdisc ... netem` arguments.

        `counted_by_kernel`: bytes of `overhead` that the kernel already counts
        in the skb length (e.g. 42 when `size` is a UDP payload and netem sits
        on an Ethernet device); they are subtracted from the packet overhead.
        Without a rate netem ignores overheads, so none are written.  Raises
        ValueError for what netem cannot express (byte/time limits, a
        distribution without a delay).  Note tc rounds the rate down to whole
        bytes per second.
        """
        from .netem_args import format_netem_args

        return format_netem_args(self, counted_by_kernel=counted_by_kernel)

def _probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], not {value!r}")
    return float(value)


def _transmission_time(wire_bytes: int, rate_bps: float | None) -> float:
    return 0.0 if rate_bps is None else wire_bytes * 8 / rate_bps


def netem_kernel_rate_bps(rate_bps: float) -> float:
    """The rate Linux netem really applies for ``rate <rate_bps>bit``.

    tc divides by 8 and truncates to whole bytes per second (100 → 96).
    """
    return float(int(Decimal(repr(rate_bps)) / 8) * 8)


def gemodel_loss_rate(gemodel: GilbertElliottParams) -> float:
    """Long-run fraction of packets Gilbert-Elliott loses, starting in the good state.

    The state before each transition decides the loss, and the chain's
    stationary distribution is π_bad = p / (p + r).  With p = r = 0 the
    chain stays good for ever.
    """
    p, r, loss_bad, loss_good = gemodel
    if p + r == 0:
        return loss_good
    bad = p / (p + r)
    return bad * loss_bad + (1 - bad) * loss_good


# ---------------------------------------------------------------- model


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


class _Transmission(NamedTuple):
    start: float
    end: float
    wire_bytes: int


@dataclass(frozen=True, slots=True)
class _CopyStreams:
    loss: random.Random
    corrupt: random.Random
    jitter: random.Random


class GilbertElliott:
    """netem's loss_gilb_ell(): a two-state channel, starting in the good state.

    Per packet: first the state may change (p from good, r from bad), then the
    packet is lost with the loss probability of the state *before* the change
    (1-k in good, 1-h in bad).  Two draws per packet, always.
    """

    def __init__(self) -> None:
        self.bad = False

    def step(self, rng: random.Random, gemodel: GilbertElliottParams) -> bool:
        p, r, loss_bad, loss_good = gemodel
        was_bad = self.bad
        changes = rng.random() < (r if was_bad else p)
        lost = rng.random() < (loss_bad if was_bad else loss_good)
        if changes:
            self.bad = not was_bad
        return lost

    def loss_probability(self, gemodel: GilbertElliottParams) -> float:
        """Loss probability of the current state."""
        return gemodel[2] if self.bad else gemodel[3]


def _flip_bit(payload: bytes, bit: int) -> bytes:
    flipped = bytearray(payload)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


class LinkModel:
    """One directed link: packets in at `now`, scheduled deliveries out.

    Times must not go backwards across calls.  Memory is bounded by what is
    in flight: finished transmissions and past deliveries are forgotten as
    time passes.
    """

    def __init__(self, profile: LinkProfile, *, seed: int, link_id: str) -> None:
        self.link_id = link_id
        self.seed = seed
        self.counters = LinkCounters()
        self._profile = profile
        self._down = False
        self._now = -math.inf
        self._next_packet = 0
        self._rng_duplicate = derive_rng(seed, link_id, "duplicate")
        self._originals = _CopyStreams(
            loss=derive_rng(seed, link_id, "loss"),
            corrupt=derive_rng(seed, link_id, "corrupt"),
            jitter=derive_rng(seed, link_id, "jitter"),
        )
        self._duplicates = _CopyStreams(
            loss=derive_rng(seed, link_id, "duplicate-loss"),
            corrupt=derive_rng(seed, link_id, "duplicate-corrupt"),
            jitter=derive_rng(seed, link_id, "duplicate-jitter"),
        )
        self._channel = GilbertElliott()
        # serialiser: when it is next free, and what it has not finished sending
        self._free_at = -math.inf
        self._queue: deque[_Transmission] = deque()
        self._queued_bytes = 0
        # with a rate, no delivery may precede this one
        self._last_deliver_at = -math.inf
        # (deliver_at, tie-break, copy) for copies not yet delivered, for flushes
        self._in_flight: list[tuple[float, int, Scheduled]] = []
        self._in_flight_order = 0

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
        if self._rng_duplicate.random() < self._profile.duplicate:
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
        profile = self._profile
        counters = self.counters
        streams = self._duplicates if duplicate else self._originals

        lost_reason = self._loss(streams, duplicate)
        if lost_reason is not None:
            counters.dropped[lost_reason] += 1
            return Dropped(packet, duplicate, lost_reason)

        corrupted_bit = None
        if streams.corrupt.random() < profile.corrupt and size > 0:
            corrupted_bit = streams.corrupt.randrange(size * 8)
            counters.corrupted += 1
            if payload is not None:
                payload = _flip_bit(payload, corrupted_bit)

        wire_bytes = profile.wire_bytes(size)
        depart_start = max(now, self._free_at)
        depart_end = depart_start + _transmission_time(wire_bytes, profile.rate_bps)
        queued = depart_end > now
        if queued and not self._admits(now, wire_bytes):
            counters.dropped["queue"] += 1
            return Dropped(packet, duplicate, "queue")

        self._free_at = depart_end
        if queued:
            self._queue.append(_Transmission(depart_start, depart_end, wire_bytes))
            self._queued_bytes += wire_bytes
        counters.busy_time += depart_end - depart_start
        counters.peak_queue_bytes = max(counters.peak_queue_bytes, self._queued_bytes)
        counters.peak_queue_packets = max(counters.peak_queue_packets, len(self._queue))

        delay = max(0.0, sample_delay(streams.jitter, profile.delay, profile.jitter, profile.jitter_dist))
        deliver_at = depart_end + delay
        if profile.rate_bps is not None:
            deliver_at = max(deliver_at, self._last_deliver_at)
        self._last_deliver_at = max(self._last_deliver_at, deliver_at)

        scheduled = Scheduled(
            packet=packet,
            duplicate=duplicate,
            size=size,
            wire_bytes=wire_bytes,
            payload=payload,
            corrupted_bit=corrupted_bit,
            depart_start=depart_start,
            depart_end=depart_end,
            deliver_at=deliver_at,
        )
        counters.delivered_packets += 1
        counters.delivered_bytes += size
        counters.delivered_wire_bytes += wire_bytes
        if deliver_at > now:
            heapq.heappush(self._in_flight, (deliver_at, self._in_flight_order, scheduled))
            self._in_flight_order += 1
        return scheduled

    def _loss(self, streams: _CopyStreams, duplicate: bool) -> DropReason | None:
        profile = self._profile
        rng = streams.loss
        if profile.gemodel is not None:
            if duplicate:
                # the copy sees the channel as the original left it, without moving it
                lost = rng.random() < self._channel.loss_probability(profile.gemodel)
            else:
                lost = self._channel.step(rng, profile.gemodel)
            return "gemodel" if lost else None
        # drawn even when loss is 0, so raising loss later only adds losses
        return "loss" if rng.random() < profile.loss else None

    def _admits(self, now: float, wire_bytes: int) -> bool:
        profile = self._profile
        if profile.limit_packets is not None and len(self._queue) >= profile.limit_packets:
            return False
        if profile.limit_bytes is not None and self._queued_bytes + wire_bytes > profile.limit_bytes:
            return False
        if profile.limit_seconds is not None and self._free_at - now > profile.limit_seconds:
            return False
        return True

    def set_profile(self, profile: LinkProfile, now: float) -> None:
        """Use `profile` for packets offered from `now` on.

        Copies already admitted keep their computed times (serialised at the
        old rate, delayed by the old delay); new copies queue behind them.
        Nothing is flushed.  The Gilbert-Elliott channel state carries over.
        """
        self._advance(now)
        self._profile = profile

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
        for transmission in self._queue:
            # the part of the transmission that will no longer happen
            counters.busy_time -= transmission.end - max(transmission.start, now)
        self._in_flight.clear()
        self._queue.clear()
        self._queued_bytes = 0
        self._free_at = min(self._free_at, now)
        self._last_deliver_at = min(self._last_deliver_at, now)
        return cancelled

    def set_up(self, now: float) -> None:
        """Bring the link back up at `now`."""
        self._advance(now)
        self._down = False

    def backlog_bytes(self, now: float) -> int:
        """Wire bytes admitted but not yet fully serialised at `now`."""
        self._advance(now)
        return self._queued_bytes

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
        queue = self._queue
        while queue and queue[0].end <= now:
            self._queued_bytes -= queue.popleft().wire_bytes
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= now:
            heapq.heappop(in_flight)
        return now
