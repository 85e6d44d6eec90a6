"""Live statistics the gateways keep on the hot path: latency histograms.

The hot path only increments plain ints (counters dataclasses) and observes
one ``Histogram`` per request; ``app.metrics`` reads these live objects when
Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import functools
import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

#: request latency buckets (seconds): a fast link answers in milliseconds, a
#: 100 bit/s link in tens of seconds, and a sync long-poll waits up to minutes
LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Histogram:
    """A live histogram: the hot path calls ``observe``, a scrape reads it."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS):
        upper = [float(b) for b in bounds if b != math.inf]  # +Inf is always there
        if any(math.isnan(b) for b in upper) or upper != sorted(set(upper)):
            raise ValueError("histogram bounds must be distinct and increasing")
        self.bounds: tuple[float, ...] = tuple(upper)
        #: per bucket, not cumulative; the last one is above every bound
        self.counts = [0] * (len(upper) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a bucket includes its bound (le)
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, observations ≤ le)`` for every bound, then ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            running += count
            out.append((bound, running))
        return out


F = TypeVar("F", bound=Callable[..., Any])


def timed(histogram_of: Callable[[Any], Histogram]) -> Callable[[F], F]:
    """Decorate an async method: observe its duration into ``histogram_of(self)``
    however it ends (loop time, so virtual-time tests measure virtual time)."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                return await method(self, *args, **kwargs)
            finally:
                histogram_of(self).observe(loop.time() - started)

        return wrapper  # type: ignore[return-value]

    return decorate


__all__ = ["LATENCY_BUCKETS", "Histogram", "timed"]
