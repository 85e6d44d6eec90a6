"""The checks a run is judged by (sans-I/O): the physical bound, the assertions, the room history.

The physical bound.  A link of rate R cannot carry B bits in less than B/R
seconds.  For every window (each phase, and the whole run) and every link,
the copies *offered* to the link inside the window are summed, each at the
rate the link had when it was offered (what the scenario set, not what the
model computed), and compared with how long they really took: from the
window's start to the last one's real arrival (the model's delivery time plus
the `late` the fabric measured).  A window that finished faster than its
busiest link allows means something bypassed the shaping, and fails the run.
Copies a run stopped before they arrived, and flushed copies, are not
counted: the bound stays a lower bound.

The assertions (`delivered`, `exactly_once`, `latency`) are judged per
message and recipient from the report's messages; `history_counts` counts
each message in its room's history as the homeserver returned it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: float slack of the bound (the model and this sum add the same terms in different orders)
BOUND_EPSILON = 1e-6
#: a delivery this much before the model's time counts as early (bypassed shaping)
EARLY_TOLERANCE = 1e-3


@dataclass(frozen=True, slots=True)
class Copy:
    """One copy a link carried: when it was offered, at which rate, when it really arrived."""

    offered_at: float
    rate_bps: float | None
    arrived_at: float
    wire_bytes: int
    size: int


def physical_bound(copies: Mapping[str, Sequence[Copy]], windows: Sequence[tuple[str, float, float]], *,
                   early_deliveries: int = 0) -> dict[str, Any]:
    """For each window, the least time its traffic needed on each link against the time it took.

    A window passes when, on every link, the span from the window's start to
    the last real arrival of the copies offered in it is at least the sum of
    their transmission times at the rates they were offered at.
    """
    results = []
    for name, start, end in windows:
        per_link = []
        for link, link_copies in copies.items():
            chosen = [c for c in link_copies if start <= c.offered_at < end]
            if not chosen:
                continue
            bits = sum(c.wire_bytes * 8 for c in chosen)
            needed = sum(c.wire_bytes * 8 / c.rate_bps for c in chosen if c.rate_bps)
            span = max(c.arrived_at for c in chosen) - start
            rates = sorted({c.rate_bps for c in chosen if c.rate_bps})
            per_link.append({
                "link": link, "copies": len(chosen), "wire_bytes": bits // 8, "bits": bits,
                "rates_bps": rates, "min_seconds": needed, "span_seconds": span,
                "ok": span + BOUND_EPSILON >= needed,
            })
        busiest = max(per_link, key=lambda l: (l["min_seconds"], l["bits"]), default=None)
        results.append({
            "window": name, "start": start, "end": end, "duration": end - start,
            "busiest_link": busiest["link"] if busiest else None,
            "bits": busiest["bits"] if busiest else 0,
            "rates_bps": busiest["rates_bps"] if busiest else [],
            "min_seconds": busiest["min_seconds"] if busiest else 0.0,
            "span_seconds": busiest["span_seconds"] if busiest else 0.0,
            "utilisation": (busiest["min_seconds"] / busiest["span_seconds"]) if busiest and busiest["span_seconds"] > 0 else 0.0,
            "ok": all(l["ok"] for l in per_link),
            "violations": [l for l in per_link if not l["ok"]],
        })
    bad = [w for w in results if not w["ok"]]
    ok = not bad and early_deliveries == 0
    if ok:
        detail = "every window took at least the time its busiest link needed"
    elif bad:
        v = bad[0]["violations"][0]
        detail = (f"window {bad[0]['window']!r}: link {v['link']} carried {v['bits']} bits, which needs "
                  f"{v['min_seconds']:.3f} s, in {v['span_seconds']:.3f} s")
    else:
        detail = f"{early_deliveries} copies were delivered before the model's time"
    return {"ok": ok, "detail": detail, "early_deliveries": early_deliveries, "windows": results}


def evaluate_assertions(specs: Iterable[Mapping[str, Any]], messages: Sequence[Mapping[str, Any]],
                        groups: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """Each assertion with `passed` and a one-line `detail` naming what failed."""
    by_id = {m["id"]: m for m in messages}
    groups = groups or {}
    results = []
    for spec in specs:
        selector = spec.get("messages")
        if selector is None:
            ids = list(by_id)
        else:
            ids = [i for s in selector for i in (groups.get(s) or [s])]
        problems: list[str] = []
        for msg_id in ids:
            message = by_id.get(msg_id)
            if message is None:
                problems.append(f"{msg_id}: unknown message")
                continue
            if message["send_at"] is None:
                problems.append(f"{msg_id}: never sent")
                continue
            for user, d in message["deliveries"].items():
                problem = _check(spec, message, user, d)
                if problem:
                    problems.append(f"{msg_id}→{user}: {problem}")
            if spec["check"] == "exactly_once" and message["history_count"] not in (None, 1):
                problems.append(f"{msg_id}: {message['history_count']} times in the room's history on the homeserver")
        passed = not problems
        results.append({
            **dict(spec), "message_ids": ids, "passed": passed,
            "detail": "ok" if passed else "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""),
        })
    return results


def _check(spec: Mapping[str, Any], message: Mapping[str, Any], user: str, d: Mapping[str, Any]) -> str | None:
    check = spec["check"]
    if d["received_at"] is None:
        return "not received"
    if check == "exactly_once" and (d["appearances"] != 1 or len(d["event_ids"]) != 1):
        return f"seen {d['appearances']} times as {len(d['event_ids'])} events"
    if check == "latency" and d["latency"] > spec["within"]:
        return f"latency {d['latency']:.1f} s > {spec['within']:g} s"
    return None


def history_counts(events: Iterable[Mapping[str, Any]], bodies: Mapping[str, str]) -> dict[str, int]:
    """How many times each message is in a room's history: `events` as /messages returned them,
    `bodies` maps the room's message bodies to their ids (every id counted, 0 if absent)."""
    counts = dict.fromkeys(bodies.values(), 0)
    for event in events:
        message_id = bodies.get((event.get("content") or {}).get("body"))
        if message_id is not None and event.get("type") == "m.room.message":
            counts[message_id] += 1
    return counts
