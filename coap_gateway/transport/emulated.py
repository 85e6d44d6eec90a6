"""An in-memory link: two ends that hand datagrams through stages on the loop clock.

The transport's third kind of link (beside UDP and KISS serial), for tests
and for ``coap-gateway up``.  What a frame meets on its way — a serialiser,
a queue, loss, delay — is not decided here: each direction is a chain of
*stages* (``interfaces.LinkStage``), and whoever builds the link chooses
them (meshsim's netem link model, ``meshsim.emulated``).  Frames are
scheduled on the running loop's clock, so the link works unchanged in
virtual time.  A chain is what two netem qdiscs in series would do: a
serialiser at 100 bit/s followed by a jittery delay reorders frames, which
one netem stage with a rate never does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence

from .interfaces import LinkStage, Receiver
from .timing import LinkBudget


def _ignore(peer: Hashable, datagram: bytes) -> None:
    pass


class EmulatedLinkEnd:
    """One end of an in-memory link; its peer is the other end's name
    (``connect`` joins two ends)."""

    def __init__(self, name: str, stages: Sequence[LinkStage], budget: LinkBudget, *, record: bool = True):
        if not stages:
            raise ValueError("an emulated link needs at least one stage")
        self.record = record
        self.sent_frames = 0
        self.sent_bytes = 0
        self.name = name
        self.stages = list(stages)
        self.budget = budget
        self.other: EmulatedLinkEnd | None = None
        self._receiver: Receiver = _ignore
        self._closed = False
        #: every datagram handed to the link when ``record`` (tests); a
        #: long-running link keeps only the counters above
        self.sent: list[bytes] = []
        #: called with each datagram handed to the link (observers: tests, UIs)
        self.on_send: list[Callable[[bytes], None]] = []

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def send(self, peer: Hashable, datagram: bytes) -> None:
        if self._closed or self.other is None or peer != self.other.name:
            return
        self.sent_frames += 1
        self.sent_bytes += len(datagram)
        if self.record:
            self.sent.append(datagram)
        for observer in self.on_send:
            observer(datagram)
        self._enter(0, datagram)

    def _enter(self, stage: int, datagram: bytes | None) -> None:
        if datagram is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        result = self.stages[stage].offer(loop.time(), len(datagram), datagram)
        for copy in result.deliveries:
            if stage + 1 < len(self.stages):
                loop.call_at(copy.deliver_at, self._enter, stage + 1, copy.payload)
            else:
                loop.call_at(copy.deliver_at, self.other._deliver, self.name, copy.payload)  # type: ignore[union-attr]

    def _deliver(self, peer: Hashable, datagram: bytes | None) -> None:
        if not self._closed and datagram is not None:
            self._receiver(peer, datagram)

    def queued_bytes(self, peer: Hashable) -> int:
        return self.stages[0].backlog_bytes(asyncio.get_running_loop().time())

    async def close(self) -> None:
        self._closed = True


def connect(a: EmulatedLinkEnd, b: EmulatedLinkEnd) -> tuple[EmulatedLinkEnd, EmulatedLinkEnd]:
    """Join two ends: what one sends to the other's name, the other receives."""
    a.other, b.other = b, a
    return a, b
