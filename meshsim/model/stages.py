"""The stages of a link, one class per concern, in netem's order (sans-I/O).

`LinkModel` (meshsim.model.link) composes them per link:

    Duplicator → ErrorModel (BernoulliLoss | GilbertElliottLoss) → Corrupter
    → TransmitQueue (limits) → Serialiser → DelayLine

Each stage holds its parameters (set from the link's profile, and again when
the profile changes) and its own state (the serialiser's free time, the
queue, the Gilbert-Elliott channel, the last delivery).  None owns a random
stream: the link passes the stream of the copy at hand (the original's or
the duplicate's), so the streams stay the link's, seeded by purpose, and a
stage swapped for another (a loss model replaced by a profile change) draws
from the same sequence.  Each stage draws a fixed number of values per copy
that reaches it; the numbers are in each class's docstring.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import ClassVar, Literal, NamedTuple, Protocol, get_args

from .profile import GilbertElliottParams, transmission_time
from .rng import JitterDistribution, sample_delay

#: why a copy did not come out of a link
DropReason = Literal["loss", "gemodel", "queue", "down", "flushed"]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)


class Duplicator:
    """netem's duplicate: with `probability` a packet gets a second copy.  One draw per packet."""

    def __init__(self, probability: float = 0.0) -> None:
        self.probability = probability

    def duplicates(self, rng: random.Random) -> bool:
        return rng.random() < self.probability


# ---------------------------------------------------------------- error models


class ErrorModel(Protocol):
    """netem's loss stage: is this copy lost?  `LinkModel` picks one class by profile."""

    #: the drop reason its losses are counted under
    reason: ClassVar[DropReason]

    def lost(self, rng: random.Random, *, duplicate: bool) -> bool: ...


class BernoulliLoss:
    """Random loss: each copy is lost with `probability`, independently.

    One draw per copy, even when the probability is 0, so raising it later
    only adds losses.
    """

    reason: ClassVar[DropReason] = "loss"

    def __init__(self, probability: float = 0.0) -> None:
        self.probability = probability

    def lost(self, rng: random.Random, *, duplicate: bool) -> bool:
        return rng.random() < self.probability


class GilbertElliottLoss:
    """netem's loss_gilb_ell(): a two-state channel, starting in the good state.

    Per packet: first the state may change (p from good, r from bad), then the
    packet is lost with the loss probability of the state *before* the change
    (1-k in good, 1-h in bad).  Two draws per packet, always.  A duplicate
    sees the channel as the original left it, without moving it (one draw),
    so enabling duplication changes no original's fate.
    """

    reason: ClassVar[DropReason] = "gemodel"

    def __init__(self, params: GilbertElliottParams) -> None:
        self.params = params
        self.bad = False

    def lost(self, rng: random.Random, *, duplicate: bool) -> bool:
        if duplicate:
            return rng.random() < self.loss_probability()
        p, r, loss_bad, loss_good = self.params
        was_bad = self.bad
        changes = rng.random() < (r if was_bad else p)
        lost = rng.random() < (loss_bad if was_bad else loss_good)
        if changes:
            self.bad = not was_bad
        return lost

    def loss_probability(self) -> float:
        """Loss probability of the current state."""
        return self.params[2] if self.bad else self.params[3]


# ---------------------------------------------------------------- corruption


class Corrupter:
    """netem's corrupt: with `probability` one bit of a copy is flipped.

    One draw per copy (also for an empty one, which is never corrupted), plus
    one for the bit when it strikes.
    """

    def __init__(self, probability: float = 0.0) -> None:
        self.probability = probability

    def strike(self, rng: random.Random, size: int) -> int | None:
        """The bit to flip (byte ``bit // 8``, mask ``1 << (bit % 8)``), or None."""
        if rng.random() < self.probability and size > 0:
            return rng.randrange(size * 8)
        return None


def flip_bit(payload: bytes, bit: int) -> bytes:
    flipped = bytearray(payload)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


# ---------------------------------------------------------------- queue and serialiser


class Transmission(NamedTuple):
    """The serialiser's busy interval for one copy."""

    start: float
    end: float
    wire_bytes: int


class Serialiser:
    """The transmitter: ``end = max(now, free) + wire_bytes * 8 / rate``, exactly.

    `free` is when it finishes the copy before; an idle link earns no credit
    (no token bucket).  Without a rate (None) it takes no time.  No draws.
    """

    def __init__(self, rate_bps: float | None = None) -> None:
        self.rate_bps = rate_bps
        #: when the last copy it took has been sent
        self.free_at = -math.inf

    def schedule(self, now: float, wire_bytes: int) -> Transmission:
        """When a copy offered at `now` would be sent (nothing changes until `send`)."""
        start = max(now, self.free_at)
        return Transmission(start, start + transmission_time(wire_bytes, self.rate_bps), wire_bytes)

    def send(self, transmission: Transmission) -> None:
        self.free_at = transmission.end

    def stop(self, now: float) -> None:
        """The link failed at `now`: what it was sending is gone."""
        self.free_at = min(self.free_at, now)


class TransmitQueue:
    """Copies admitted but not yet fully serialised, in wire bytes, with netem-style limits.

    A copy is refused when admitting it would exceed a limit:
    `limit_packets` (the queue already holds that many), `limit_bytes`
    (queued bytes plus this copy's would exceed it; bfifo's rule: a copy that
    exactly fills it is admitted), `limit_seconds` (it would wait longer than
    that before its first bit is sent).  No draws.
    """

    def __init__(self, *, limit_packets: int | None = None, limit_bytes: int | None = None,
                 limit_seconds: float | None = None) -> None:
        self.limit_packets = limit_packets
        self.limit_bytes = limit_bytes
        self.limit_seconds = limit_seconds
        self._transmissions: deque[Transmission] = deque()
        #: wire bytes queued
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._transmissions)

    def admits(self, wire_bytes: int, *, wait: float) -> bool:
        """Whether a copy of `wire_bytes` that would wait `wait` seconds before it is sent fits."""
        if self.limit_packets is not None and len(self._transmissions) >= self.limit_packets:
            return False
        if self.limit_bytes is not None and self.bytes + wire_bytes > self.limit_bytes:
            return False
        if self.limit_seconds is not None and wait > self.limit_seconds:
            return False
        return True

    def push(self, transmission: Transmission) -> None:
        self._transmissions.append(transmission)
        self.bytes += transmission.wire_bytes

    def forget_finished(self, now: float) -> None:
        """Drop what has been fully sent by `now`."""
        transmissions = self._transmissions
        while transmissions and transmissions[0].end <= now:
            self.bytes -= transmissions.popleft().wire_bytes

    def flush(self) -> tuple[Transmission, ...]:
        """Empty the queue; returns what it held."""
        flushed = tuple(self._transmissions)
        self._transmissions.clear()
        self.bytes = 0
        return flushed


# ---------------------------------------------------------------- delay


class DelayLine:
    """delay ± jitter after the serialiser: ``deliver_at = end + max(0, sample)``.

    With `keeps_order` (a link with a rate, as netem does) no delivery
    precedes the latest one so far; without it jitter may reorder.  One draw
    per copy when `jitter` > 0 (`meshsim.model.rng.sample_delay`), none
    otherwise.
    """

    def __init__(self, delay: float = 0.0, jitter: float = 0.0, distribution: JitterDistribution = "uniform",
                 *, keeps_order: bool = False) -> None:
        self.delay = delay
        self.jitter = jitter
        self.distribution: JitterDistribution = distribution
        self.keeps_order = keeps_order
        self._last_deliver_at = -math.inf

    def deliver_at(self, rng: random.Random, depart_end: float) -> float:
        deliver_at = depart_end + max(0.0, sample_delay(rng, self.delay, self.jitter, self.distribution))
        if self.keeps_order:
            deliver_at = max(deliver_at, self._last_deliver_at)
        self._last_deliver_at = max(self._last_deliver_at, deliver_at)
        return deliver_at

    def stop(self, now: float) -> None:
        """The link failed at `now`: later copies are not held behind the lost ones."""
        self._last_deliver_at = min(self._last_deliver_at, now)
