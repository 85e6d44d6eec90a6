"""What runs show on a terminal (rich): a scenario's progress bars, and a network's counters table."""

from __future__ import annotations

from typing import Any, Self

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table


class PhaseProgress:
    """rich progress bars, one per phase; a no-op without a console."""

    def __init__(self, console: Any | None) -> None:
        self.console = console
        self._progress = None
        self._task: Any = None
        if console is not None:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
            )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, description: str, total: int) -> None:
        if self._progress is not None:
            if self._task is not None:
                self._progress.stop_task(self._task)
            self._task = self._progress.add_task(description, total=max(total, 1) if total else None, info="")
            if not total:
                self._progress.update(self._task, total=1)

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, steps)

    def finish(self) -> None:
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, completed=task.total)

    def info(self, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, info=text)

    def log(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)


def summary_table(snapshot: dict[str, Any]) -> Any:
    """The counters of a relay or fabric snapshot as a rich Table, one column per link."""
    links = snapshot["links"]
    duration = snapshot["t"]
    table = Table(title=f"meshsim: {duration:.1f} s")
    table.add_column("")
    for name in links:
        table.add_column(name, justify="right")

    def row(label: str, value: Any) -> None:
        table.add_row(label, *(str(value(link)) for link in links.values()))

    row("offered packets", lambda l: l["offered_packets"])
    row("offered bytes", lambda l: l["offered_bytes"])
    row("delivered packets", lambda l: l["delivered_packets"])
    row("delivered bytes", lambda l: l["delivered_bytes"])
    row("delivered bytes with overhead", lambda l: l["delivered_wire_bytes"])
    row("duplicated", lambda l: l["duplicated"])
    row("corrupted", lambda l: l["corrupted"])
    reasons = sorted({reason for link in links.values() for reason, n in link["dropped"].items() if n})
    for reason in reasons:
        row(f"dropped ({reason})", lambda l, r=reason: l["dropped"][r])
    row("busy time (s)", lambda l: f"{l['busy_time']:.3f}")
    row("utilisation", lambda l: f"{l['busy_time'] / duration:.1%}" if duration > 0 else "-")
    row("peak queue packets", lambda l: l["peak_queue_packets"])
    row("peak queue bytes", lambda l: l["peak_queue_bytes"])
    other = {k: v for k, v in snapshot["counters"].items() if k != "dropped"}
    dropped = {k: v for k, v in snapshot["counters"].get("dropped", {}).items() if v}
    caption = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in other.items())
    if dropped:
        caption += "; dropped outside the links: " + ", ".join(f"{k} {v}" for k, v in dropped.items())
    table.caption = caption
    return table
