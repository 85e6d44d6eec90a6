"""Coalescing the fabric's events for browsers, and bounded queues per browser (sans-I/O).

A busy fabric emits several events per datagram and hop; a browser wants a
few messages a second.  `LiveStats.feed` is the fabric subscriber: it only
adds to counters, in O(1), on the fabric's data path.  Every tick the server
calls `LiveStats.take`, which hands over what happened since the last tick,
aggregated per (kind, link, reason): one entry says "37 copies, 7400 bytes,
arrived on a->b", however many datagrams that was.  The number of entries per
tick is capped too (`max_traffic`); entries past the cap are counted in
`omitted`, never sent.

Each websocket client has a `ClientQueue`: at most `limit` messages wait for
a slow browser; a new message beyond that pushes the oldest out and counts it
(`dropped`), and sets `resync`, so the sender first sends a full state (the
topology and every link's counters as they are now).  Counters in messages
are absolute, numbered with `seq`, so a browser that gets an older message
after a newer one keeps the newer counters: nothing is ever wrong for longer
than the queue takes to drain.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]

#: the kinds of fabric events that are animated
TRAFFIC_KINDS = ("offer", "deliver", "drop")
#: the kinds of fabric events that change what the topology looks like
TOPOLOGY_KINDS = ("link_change", "link_down", "link_up", "start", "stop")


@dataclass
class Batch:
    """What `LiveStats.take` hands over for one tick."""

    #: aggregated traffic: {"kind", "link", "count", "bytes"} (+ "reason", "node" for drops)
    traffic: list[dict[str, Any]]
    #: traffic entries past `max_traffic`, not sent
    omitted: int
    #: links that saw traffic, or whose rate is still falling
    links: set[str]
    #: a link changed state or profile
    topology_changed: bool


@dataclass
class _Arrivals:
    packets: int = 0
    bytes: int = 0
    wire_bytes: int = 0
    #: (tick time, wire bytes arrived in that tick), newest last, within the rate window
    window: deque[tuple[float, int]] = field(default_factory=deque)
    window_bytes: int = 0
    tick_bytes: int = 0


class LiveStats:
    """Per-link arrivals and rates, and each tick's traffic, from the fabric's events."""

    def __init__(self, *, rate_window: float = 5.0, max_traffic: int = 200) -> None:
        if rate_window <= 0:
            raise ValueError("rate_window must be > 0")
        if max_traffic < 1:
            raise ValueError("max_traffic must be at least 1")
        self.rate_window = rate_window
        self.max_traffic = max_traffic
        self._arrivals: dict[str, _Arrivals] = {}
        # (kind, link, reason, node) -> [count, bytes]
        self._traffic: dict[tuple[str, str | None, str | None, str | None], list[int]] = {}
        self._dirty: set[str] = set()
        self._topology_changed = False
        #: events fed since the start
        self.events = 0

    # ------------------------------------------------------------ the subscriber

    def feed(self, event: Event) -> None:
        """One fabric event (`Fabric.subscribe`); cheap, as it runs on the data path."""
        self.events += 1
        kind = event["kind"]
        if kind in TRAFFIC_KINDS:
            link = event.get("link")
            reason = event.get("reason") if kind == "drop" else None
            node = event.get("node") if kind == "drop" and link is None else None
            key = (kind, link, reason, node)
            entry = self._traffic.get(key)
            if entry is None:
                self._traffic[key] = entry = [0, 0]
            entry[0] += 1
            entry[1] += event.get("size") or 0
            if link is not None:
                self._dirty.add(link)
                if kind == "deliver":
                    arrivals = self._arrivals_of(link)
                    arrivals.packets += 1
                    arrivals.bytes += event["size"]
                    arrivals.wire_bytes += event["wire"]
                    arrivals.tick_bytes += event["wire"]
        elif kind in TOPOLOGY_KINDS:
            self._topology_changed = True
            if "link" in event:
                self._dirty.add(event["link"])

    def _arrivals_of(self, link: str) -> _Arrivals:
        arrivals = self._arrivals.get(link)
        if arrivals is None:
            self._arrivals[link] = arrivals = _Arrivals()
        return arrivals

    # ------------------------------------------------------------ the ticker

    def take(self, now: float) -> Batch:
        """Everything since the last call; `now` is the fabric's time (for the rates)."""
        traffic: list[dict[str, Any]] = []
        for (kind, link, reason, node), (count, size) in self._traffic.items():
            entry: dict[str, Any] = {"kind": kind, "link": link, "count": count, "bytes": size}
            if kind == "drop":
                entry["reason"] = reason
                if link is None:
                    entry["node"] = node
            traffic.append(entry)
        omitted = max(0, len(traffic) - self.max_traffic)
        if omitted:
            # drops first (they are news), then the busiest
            traffic.sort(key=lambda e: (e["kind"] != "drop", -e["count"]))
            del traffic[self.max_traffic:]
        self._traffic.clear()
        links = self._dirty
        self._dirty = set()
        horizon = now - self.rate_window
        for link, arrivals in self._arrivals.items():
            if arrivals.tick_bytes:
                arrivals.window.append((now, arrivals.tick_bytes))
                arrivals.window_bytes += arrivals.tick_bytes
                arrivals.tick_bytes = 0
            expired = False
            while arrivals.window and arrivals.window[0][0] <= horizon:
                arrivals.window_bytes -= arrivals.window.popleft()[1]
                expired = True
            if arrivals.window or expired:
                links.add(link)  # its rate moves
        changed = self._topology_changed
        self._topology_changed = False
        return Batch(traffic=traffic, omitted=omitted, links=links, topology_changed=changed)

    # ------------------------------------------------------------ reading

    def link_stats(self, link: str) -> dict[str, Any]:
        """What arrived on `link` since the UI attached, and its rate over the window."""
        arrivals = self._arrivals.get(link)
        if arrivals is None:
            return {"arrived_packets": 0, "arrived_bytes": 0, "arrived_wire_bytes": 0, "rate_bps": 0.0}
        return {
            "arrived_packets": arrivals.packets,
            "arrived_bytes": arrivals.bytes,
            "arrived_wire_bytes": arrivals.wire_bytes,
            "rate_bps": arrivals.window_bytes * 8 / self.rate_window,
        }


# ---------------------------------------------------------------- per client


class ClientQueue:
    """Messages waiting for one websocket client, at most `limit`; the oldest go first.

    Items are opaque to the queue (the server puts JSON text).  `dropped`
    counts the messages pushed out since the client connected; `resync` is
    set when one was, and cleared by whoever sends the full state.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        self.resync = False
        self.closed = False

    def put(self, item: Any) -> None:
        if self.closed:
            return
        if len(self._items) >= self.limit:
            self._items.popleft()
            self.dropped += 1
            self.resync = True
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Any:
        """The oldest item, waiting for one; raises EOFError once closed and empty."""
        while not self._items:
            if self.closed:
                raise EOFError
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)
