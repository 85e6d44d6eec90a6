"""`Network`: one interface over the backends that carry a `Topology`.

Two backends: `meshsim.net.Fabric` (userspace, UDP on 127.0.0.0/8, every
packet through a `LinkModel`) and `meshsim.net.KernelTopology` (network
namespaces, veth pairs, tc).  A scenario run and the web UI hold a network
through this interface only, so reshaping, failing and healing a link is one
set of calls whichever backend does it.

What both genuinely support is here; what only one can do stays on it (the
fabric's per-hop pcap and packet events, the kernel's processes in a node and
raw qdisc statistics).  Changes go through the network, never to its
topology directly, so the backend follows them; the topology may be read at
any time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, Self

from ..model import LinkProfile, Topology
from .events import Event


class Network(ABC):
    """A running network over `topology`.  Times are seconds since `start` (`now`)."""

    topology: Topology
    #: UDP ports every node answers on from the start: the fabric's listening
    #: ports; empty for the kernel backend, whose nodes own their addresses
    #: outright (any port)
    ports: list[int]
    #: between `start` and `stop`
    running: bool

    @abstractmethod
    async def start(self) -> None:
        """Build the network; run time 0 is now."""

    @abstractmethod
    async def stop(self) -> None:
        """Tear it down (idempotent); what it was carrying is lost."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @abstractmethod
    def now(self) -> float:
        """Seconds since `start`."""

    # ------------------------------------------------------------ changes

    @abstractmethod
    def set_link(self, a: str, b: str, profile: LinkProfile | None = None, *,
                 reverse: LinkProfile | None = None, weight: float | None = None) -> None:
        """From now on a→b has `profile`, b→a `reverse` (default: `profile`), the edge `weight`;
        None leaves a part as it is.  What is queued keeps its times."""

    @abstractmethod
    def fail(self, a: str, b: str) -> int:
        """Take the link down both ways, as a physical failure, and reroute; returns the copies lost."""

    @abstractmethod
    def heal(self, a: str, b: str) -> None:
        """Bring the link back up both ways and reroute."""

    @abstractmethod
    def partition(self, groups: Iterable[Iterable[str]]) -> int:
        """Fail every link between groups (nodes in none form one more); returns the copies lost."""

    @abstractmethod
    def heal_all(self) -> None:
        """Heal every failed link."""

    # ------------------------------------------------------------ observing

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """Counters as plain data: ``{"t", "counters", "in_flight_bytes", "links": {id: {...}}}``.

        Every link has ``src``, ``dst``, ``up``, ``profile``, ``weight`` and
        ``dropped`` (by reason) besides the backend's own counters.
        """

    @abstractmethod
    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback` with every event the backend sees (see `meshsim.net.EVENT_FIELDS`:
        the fabric every packet's, the kernel its link changes); returns an unsubscribe."""
