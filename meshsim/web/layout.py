"""Where nodes are drawn, and which links their positions make (sans-I/O).

Positions are the scenario's ``position = [x, y]`` in the scenario's own
units (None for a node without one: the browser lays those out with a force
simulation until someone drags them).

A scenario with ``[topology] range`` links every pair of positioned nodes at
most `range` apart (``math.dist(a, b) <= range``, as `meshsim.run.scenario`
does), except pairs given by an explicit ``[[link]]``, which stay whatever
the distance.  The `Scenario` object keeps
only the resulting links, so `range_rule_from_toml` reads the rule back from
the file's text.  When a node moves, `relink` says what to do to the running
fabric so that the rule holds again:

- a range link whose ends are now too far apart fails (a physical failure,
  as when a radio moves out of reach: what it carried is lost);
- a range link that this rule failed, and whose ends are back in range,
  heals (one failed by hand stays down);
- two nodes newly in range that have no link get one, with the rule's
  profile.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..model import LinkProfile
from ..run import Scenario

Position = tuple[float, float]
Pair = frozenset[str]
RelinkAction = tuple[Literal["fail", "heal", "add"], str, str]


@dataclass(frozen=True)
class RangeRule:
    """``[topology] range`` and ``profile``, and the pairs that explicit links fix."""

    range: float
    profile: LinkProfile
    profile_name: str
    #: pairs linked by a ``[[link]]`` table: never linked or unlinked by distance
    explicit: frozenset[Pair] = frozenset()

    def governs(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.explicit


def scenario_positions(scenario: Scenario) -> dict[str, Position | None]:
    """Each node's position from the scenario (None where it gives none)."""
    return {node.name: node.position for node in scenario.nodes}


def range_rule_from_toml(text: str, scenario: Scenario) -> RangeRule | None:
    """The scenario's range rule, read from its (already validated) TOML text; None without one."""
    doc = tomllib.loads(text)
    table = doc.get("topology") or {}
    if "range" not in table:
        return None
    name = table["profile"]
    explicit = frozenset(frozenset(entry["between"]) for entry in doc.get("link", ()))
    return RangeRule(range=float(table["range"]), profile=scenario.profiles[name], profile_name=name, explicit=explicit)


def in_range(rule: RangeRule, first: Position, second: Position) -> bool:
    return math.dist(first, second) <= rule.range


def relink(
    rule: RangeRule,
    moved: str,
    positions: Mapping[str, Position | None],
    edges: Mapping[Pair, bool],
    range_down: Iterable[Pair],
    order: Iterable[str],
) -> list[RelinkAction]:
    """What to do after `moved` moved, for its pairs with every other positioned node.

    `edges`: the existing edges, each with whether it is up; `range_down`: the
    edges this rule failed earlier; `order`: node names in the topology's
    order, so a new link is always added as (earlier, later) and runs repeat.
    """
    here = positions.get(moved)
    if here is None:
        return []
    failed_by_rule = set(range_down)
    actions: list[RelinkAction] = []
    names = list(order)
    rank = {name: i for i, name in enumerate(names)}
    for other in names:
        there = positions.get(other)
        if other == moved or there is None or not rule.governs(moved, other):
            continue
        a, b = (moved, other) if rank[moved] < rank[other] else (other, moved)
        pair = frozenset((a, b))
        close = in_range(rule, here, there)
        if pair in edges:
            up = edges[pair]
            if up and not close:
                actions.append(("fail", a, b))
            elif not up and close and pair in failed_by_rule:
                actions.append(("heal", a, b))
        elif close:
            actions.append(("add", a, b))
    return actions


# ---------------------------------------------------------------- labels


def _number(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def format_rate(bps: float | None) -> str:
    """Bits per second for people: 100bit/s, 9.6kbit/s, 10Mbit/s; "unlimited" for None."""
    if bps is None:
        return "unlimited"
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale:
            return f"{_number(bps / scale)}{unit}/s"
    return f"{_number(bps)}bit/s"


def format_seconds(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"{_number(seconds * 1000)}ms"
    return f"{_number(seconds)}s"


def profile_label(profile: LinkProfile) -> str:
    """A short line for a link's label: rate, delay ± jitter, loss, and what else is set."""
    parts = [format_rate(profile.rate_bps)]
    if profile.delay or profile.jitter:
        delay = format_seconds(profile.delay)
        if profile.jitter:
            delay += f"±{format_seconds(profile.jitter)}"
        parts.append(delay)
    if profile.gemodel is not None:
        parts.append("GE loss")
    elif profile.loss:
        parts.append(f"{_number(profile.loss * 100)}% loss")
    if profile.duplicate:
        parts.append(f"{_number(profile.duplicate * 100)}% dup")
    if profile.corrupt:
        parts.append(f"{_number(profile.corrupt * 100)}% corrupt")
    return " ".join(parts)
