"""Timers that run callbacks at exact times on a clock, in order (the fabric's and the relay's)."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: seconds, monotonic
Clock = Callable[[], float]


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
