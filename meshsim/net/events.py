"""The run's event log: one JSON object per line (JSONL).

Every object has ``kind`` and ``t``; ``t`` is the event's time in seconds on
the run's clock (0 = when the fabric or relay started).  For a packet event it
is the model's time, not when Python got round to it: a ``deliver`` line's
``t`` is the model's ``deliver_at`` and its ``late`` says how much later the
datagram really left.  The fields of each kind are listed in `EVENT_FIELDS`
and documented in docs/meshsim.md.

Lines are buffered in memory up to `buffer_bytes` and then written in one
go, so memory stays bounded however long the run is; `flush()` (called by the
fabric and the relay on stop) and `close()` write the rest.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from typing import IO, Any, Self

#: one event: a dict with ``kind`` and ``t`` and the fields of its kind
Event = dict[str, Any]

#: The fields of each event kind, in the order they are written.
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    # the run starts: its clock's origin in Unix time, the topology and the ports
    "start": ("kind", "t", "wall", "seed", "nodes", "links", "ports"),
    # a datagram enters from an application (fabric) or an endpoint (relay)
    "ingress": ("kind", "t", "pkt", "src", "dst", "sport", "dport", "size"),
    # a copy is offered to a directed link
    "offer": ("kind", "t", "pkt", "link", "link_pkt", "size"),
    # a copy comes out of a link (t = the model's deliver_at)
    "deliver": (
        "kind", "t", "pkt", "link", "link_pkt", "dup", "size", "wire",
        "depart_start", "depart_end", "corrupted_bit", "late",
    ),
    # a copy is lost: on a link (link set) or in the fabric (link null)
    "drop": ("kind", "t", "pkt", "link", "link_pkt", "dup", "size", "node", "reason"),
    # a datagram leaves towards its application; latency is from its ingress
    "egress": ("kind", "t", "pkt", "src", "dst", "sport", "dport", "size", "hops", "latency"),
    # a link's profile or routing weight changes
    "link_change": ("kind", "t", "link", "profile", "weight"),
    # a link fails (flushed: copies it was carrying, now lost) or heals
    "link_down": ("kind", "t", "link", "flushed"),
    "link_up": ("kind", "t", "link"),
    # the run stops: the final counters
    "stop": ("kind", "t", "counters", "links"),
}


class EventLog:
    """Writes events to a JSONL file with bounded buffering."""

    def __init__(self, target: str | os.PathLike[str] | IO[bytes], *, buffer_bytes: int = 1 << 16) -> None:
        if buffer_bytes <= 0:
            raise ValueError("buffer_bytes must be > 0")
        if isinstance(target, (str, os.PathLike)):
            self._file: IO[bytes] = open(target, "wb")
            self._owns_file = True
        else:
            self._file = target
            self._owns_file = False
        self._buffer_bytes = buffer_bytes
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._closed = False
        #: lines written (or buffered) per kind
        self.counts: Counter[str] = Counter()

    def write(self, event: Mapping[str, Any]) -> None:
        """Append one event (must have "kind" and "t"); JSON-serialisable values only."""
        if self._closed:
            raise ValueError("event log is closed")
        line = json.dumps(event, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        self._pending.append(line)
        self._pending_size += len(line)
        self.counts[event["kind"]] += 1
        if self._pending_size >= self._buffer_bytes:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._file.write(b"".join(self._pending))
            self._pending.clear()
            self._pending_size = 0
        self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All events of a JSONL log, in order (for tests and reports)."""
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
