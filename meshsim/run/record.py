"""The run's record: the runner's events and the network's, to events.jsonl and the report, on one clock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..net import EventLog, Network
from .report import ReportBuilder


class RunError(RuntimeError):
    """The run could not go on (setup failed, Synapse did not start, ...)."""


class RunRecord:
    """Where every part of a run writes what happened.

    Times are the network's run time once it runs (0 = its start); before
    and after, the time of the last event, so the record never goes back.
    The network writes its own events to the same log (and feeds `builder`
    through its subscription); the runner's parts call `emit`.
    """

    def __init__(self) -> None:
        self.builder = ReportBuilder()
        self.events: EventLog | None = None
        self.network: Network | None = None

    def now(self) -> float:
        network = self.network
        return network.now() if network is not None and network.running else self.builder.last_t

    def emit(self, kind: str, **fields: Any) -> None:
        """An event of `kind` at `now()`."""
        self.write({"kind": kind, "t": self.now(), **fields})

    def write(self, event: Mapping[str, Any]) -> None:
        """An event that carries its own time."""
        if self.events is not None:
            self.events.write(event)
        self.builder.feed(event)
