"""The report of a scenario run, computed from its event log alone (sans-I/O but for the plots).

`ReportBuilder.feed()` takes the events of a run one by one: the fabric's
(start, offer, deliver, drop, link_change, stop, ...) and the runner's
(scenario, phase_start, phase_end, send, sent, send_error, receive, history,
gateways).  It can be fed live (`Fabric.subscribe`) or from events.jsonl
afterwards; `build()` returns the report as plain data, the content of
report.json.  `write_plots()` draws the PNG files beside it (matplotlib's Agg
backend, no display needed).

The report carries the checks of `meshsim.run.checks`: the physical bound
(does any window beat its busiest link's bits over its rate?) and the
assertions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import EARLY_TOLERANCE, Copy, evaluate_assertions, physical_bound

REPORT_FORMAT = "meshsim/report"
REPORT_VERSION = 1
Event = Mapping[str, Any]


@dataclass
class _Message:
    id: str
    sender: str
    room: str
    body: str
    phase: str
    recipients: tuple[str, ...]
    send_at: float | None = None
    sent_at: float | None = None
    send_ok: bool | None = None
    event_id: str | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    #: recipient -> [(time, event_id)] of every appearance in its sync timeline
    receipts: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    #: appearances in the room's history on each homeserver checked (/messages there)
    history: dict[str, int] = field(default_factory=dict)

    @property
    def history_count(self) -> int | None:
        """The count furthest from once over the homeservers checked; None if none was."""
        if not self.history:
            return None
        counts = list(self.history.values())
        return max(counts) if max(counts) > 1 else min(counts)


class ReportBuilder:
    """Accumulates a run's events; `build()` makes the report."""

    def __init__(self) -> None:
        self.scenario: dict[str, Any] = {}
        self.start: dict[str, Any] | None = None
        self.stop: dict[str, Any] | None = None
        self.gateways: dict[str, Any] = {}
        self.error: str | None = None
        #: (name, start, end or None, ended_by)
        self.phases: list[list[Any]] = []
        self.messages: dict[str, _Message] = {}
        #: link -> copies delivered, in delivery order
        self.copies: dict[str, list[Copy]] = defaultdict(list)
        #: link -> [(t, cumulative wire bytes)] for the plots
        self.series: dict[str, list[tuple[float, int]]] = defaultdict(list)
        #: link -> times a copy was lost on it (not counting flushes at a failure)
        self.drops: dict[str, list[float]] = defaultdict(list)
        self.early_deliveries = 0
        self.worst_late = 0.0
        self._rate: dict[str, float | None] = {}
        self._offers: dict[tuple[str, int], tuple[float, float | None]] = {}
        #: link -> wire bytes delivered so far (the progress line reads it)
        self.cumulative_wire_bytes: dict[str, int] = defaultdict(int)
        #: the federation gateways' port (None: one homeserver) and each datagram's kind
        self._federation_port: int | None = None
        self._kind: dict[int, str] = {}
        #: link -> kind ("client" or "federation") -> [copies, wire bytes]
        self.traffic: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        self.last_t = 0.0

    # ------------------------------------------------------------ feeding

    def feed_all(self, events: Iterable[Event]) -> ReportBuilder:
        for event in events:
            self.feed(event)
        return self

    def feed(self, event: Event) -> None:
        kind = event.get("kind")
        t = float(event.get("t", 0.0))
        self.last_t = max(self.last_t, t)
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event, t)

    def _on_scenario(self, event: Event, t: float) -> None:
        self.scenario = dict(event)
        self._federation_port = event.get("federation_port")
        for m in event.get("messages", ()):
            self.messages[m["id"]] = _Message(
                id=m["id"], sender=m["sender"], room=m["room"], body=m["body"], phase=m["phase"],
                recipients=tuple(m["recipients"]),
            )

    def _on_start(self, event: Event, t: float) -> None:
        self.start = dict(event)
        for link in event.get("links", ()):
            self._rate[link["link"]] = link["profile"].get("rate_bps")

    def _on_link_change(self, event: Event, t: float) -> None:
        self._rate[event["link"]] = event["profile"].get("rate_bps")

    def _on_ingress(self, event: Event, t: float) -> None:
        if self._federation_port is not None:
            port = self._federation_port
            self._kind[event["pkt"]] = "federation" if port in (event.get("sport"), event.get("dport")) else "client"

    def _on_offer(self, event: Event, t: float) -> None:
        link = event["link"]
        # the rate in force when the copy is offered is the one it is serialised at
        self._offers[link, event["link_pkt"]] = (t, self._rate.get(link))

    def _on_deliver(self, event: Event, t: float) -> None:
        link = event["link"]
        offered_at, rate = self._offers.get((link, event["link_pkt"]), (t, self._rate.get(link)))
        late = float(event.get("late") or 0.0)
        if late < -EARLY_TOLERANCE:
            self.early_deliveries += 1
        self.worst_late = max(self.worst_late, late)
        wire = int(event["wire"])
        self.copies[link].append(Copy(offered_at, rate, t + late, wire, int(event["size"])))
        self.cumulative_wire_bytes[link] += wire
        self.series[link].append((t, self.cumulative_wire_bytes[link]))
        if self._federation_port is not None:
            counted = self.traffic[link][self._kind.get(event["pkt"], "client")]
            counted[0] += 1
            counted[1] += wire

    def _on_drop(self, event: Event, t: float) -> None:
        if event.get("link") is not None and event.get("reason") != "stopped":
            self.drops[event["link"]].append(t)

    def _on_stop(self, event: Event, t: float) -> None:
        self.stop = dict(event)

    def _on_phase_start(self, event: Event, t: float) -> None:
        self.phases.append([event["phase"], t, None, None])

    def _on_phase_end(self, event: Event, t: float) -> None:
        for phase in reversed(self.phases):
            if phase[0] == event["phase"] and phase[2] is None:
                phase[2], phase[3] = t, event.get("ended_by")
                break

    def _on_send(self, event: Event, t: float) -> None:
        message = self.messages.get(event["msg"])
        if message is not None:
            if message.send_at is None:
                message.send_at = t
            message.attempts += 1

    def _on_sent(self, event: Event, t: float) -> None:
        message = self.messages.get(event["msg"])
        if message is not None:
            message.sent_at, message.send_ok, message.event_id = t, True, event.get("event_id")

    def _on_send_error(self, event: Event, t: float) -> None:
        message = self.messages.get(event["msg"])
        if message is not None:
            message.errors.append(str(event.get("error")))
            if event.get("final"):
                message.sent_at, message.send_ok = t, False

    def _on_receive(self, event: Event, t: float) -> None:
        message = self.messages.get(event["msg"])
        if message is not None:
            message.receipts[event["user"]].append((t, event["event_id"]))

    def _on_history(self, event: Event, t: float) -> None:
        server = str(event.get("homeserver") or "")
        for msg, count in event.get("counts", {}).items():
            if msg in self.messages:
                self.messages[msg].history[server] = count

    def _on_gateways(self, event: Event, t: float) -> None:
        self.gateways = dict(event.get("gateways", {}))

    def _on_run_error(self, event: Event, t: float) -> None:
        self.error = str(event.get("error"))

    # ------------------------------------------------------------ building

    def windows(self) -> list[tuple[str, float, float]]:
        """(name, start, end) of every phase, then the whole run."""
        end_of_run = self.stop["t"] if self.stop else self.last_t
        windows = [(name, start, end if end is not None else end_of_run) for name, start, end, _ in self.phases]
        windows.append(("run", 0.0, end_of_run))
        return windows

    def build(self) -> dict[str, Any]:
        bound = physical_bound(self.copies, self.windows(), early_deliveries=self.early_deliveries)
        messages = [message_report(m) for m in self.messages.values()]
        assertions = evaluate_assertions(self.scenario.get("assertions", ()), messages, self.scenario.get("groups", {}))
        failures = [f"assertion {a['check']} failed: {a['detail']}" for a in assertions if not a["passed"]]
        if not bound["ok"]:
            failures.append(f"physical bound violated: {bound['detail']}")
        if self.error:
            failures.append(f"run error: {self.error}")
        stop = self.stop or {}
        end = stop.get("t", self.last_t)
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "scenario": {k: self.scenario.get(k) for k in ("name", "source", "description", "seed")},
            "passed": not failures,
            "failures": failures,
            "duration": end,
            "wall_start": (self.start or {}).get("wall"),
            "phases": [
                {"name": name, "start": start, "end": stop_t, "duration": (stop_t - start) if stop_t is not None else None,
                 "ended_by": ended_by}
                for name, start, stop_t, ended_by in self.phases
            ],
            "links": link_report(stop.get("links", {}), self.copies, self.windows()[:-1], self.traffic),
            "fabric": stop.get("counters", {}),
            "messages": messages,
            "physical_bound": bound,
            "assertions": assertions,
            "gateways": self.gateways,
            "federation": federation_report(self.gateways, self.scenario.get("homeservers", {}), self.traffic),
            "late": {"worst_seconds": self.worst_late, "early_deliveries": self.early_deliveries},
        }


# ---------------------------------------------------------------- pure parts


def message_report(m: _Message) -> dict[str, Any]:
    deliveries = {}
    for user in m.recipients:
        receipts = m.receipts.get(user, [])
        first = min((t for t, _ in receipts), default=None)
        deliveries[user] = {
            "received_at": first,
            "latency": (first - m.send_at) if first is not None and m.send_at is not None else None,
            "appearances": len(receipts),
            "event_ids": sorted({e for _, e in receipts}),
        }
    return {
        "id": m.id, "sender": m.sender, "room": m.room, "body": m.body, "phase": m.phase,
        "send_at": m.send_at, "sent_at": m.sent_at,
        "send_seconds": (m.sent_at - m.send_at) if m.sent_at is not None and m.send_at is not None else None,
        "send_ok": m.send_ok, "event_id": m.event_id, "attempts": m.attempts, "errors": m.errors,
        "deliveries": deliveries, "history_count": m.history_count, "history": dict(m.history),
        "delivered": all(d["received_at"] is not None for d in deliveries.values()) and m.send_at is not None,
    }


def link_report(snapshot: Mapping[str, Mapping[str, Any]], copies: Mapping[str, Sequence[Copy]],
                phases: Sequence[tuple[str, float, float]],
                traffic: Mapping[str, Mapping[str, Sequence[int]]] | None = None) -> dict[str, Any]:
    """The fabric's final counters per link, with the traffic of each phase (and, with
    federation, what of it was federation and what client traffic)."""
    report = {}
    for link_id, counters in snapshot.items():
        entry = {k: v for k, v in counters.items() if k != "profile"}
        entry["rate_bps"] = counters.get("profile", {}).get("rate_bps")
        if traffic is not None and link_id in traffic:
            entry["traffic"] = {kind: {"packets": n, "wire_bytes": b} for kind, (n, b) in sorted(traffic[link_id].items())}
        per_phase = {}
        for name, start, end in phases:
            chosen = [c for c in copies.get(link_id, ()) if start <= c.offered_at < end]
            per_phase[name] = {
                "packets": len(chosen),
                "bytes": sum(c.size for c in chosen),
                "wire_bytes": sum(c.wire_bytes for c in chosen),
                "min_seconds": sum(c.wire_bytes * 8 / c.rate_bps for c in chosen if c.rate_bps),
            }
        entry["phases"] = per_phase
        report[link_id] = entry
    return report


def federation_report(gateways: Mapping[str, Any], homeservers: Mapping[str, str],
                      traffic: Mapping[str, Mapping[str, Sequence[int]]]) -> dict[str, Any] | None:
    """Per homeserver node, what its federation gateway sent and served (from its
    counters), and the federation bytes on the links in all; None with one homeserver."""
    if len(homeservers) < 2:
        return None
    nodes = {}
    for server, node in homeservers.items():
        counters = gateways.get(f"federation {server}", {})
        transport, gateway = counters.get("transport", {}), counters.get("gateway", {})
        nodes[server] = {
            "node": node,
            "requests_sent": gateway.get("sent"), "requests_failed": gateway.get("sent_failed"),
            "requests_served": gateway.get("served"), "refused": gateway.get("refused"),
            "frames_out": transport.get("frames_out"), "bytes_out": transport.get("bytes_out"),
            "frames_in": transport.get("frames_in"), "bytes_in": transport.get("bytes_in"),
            "retransmissions": transport.get("retransmissions"),
        }
    links = {link: {"packets": kinds["federation"][0], "wire_bytes": kinds["federation"][1]}
             for link, kinds in sorted(traffic.items()) if "federation" in kinds}
    return {"homeservers": nodes, "links": links,
            "wire_bytes": sum(entry["wire_bytes"] for entry in links.values())}


# ---------------------------------------------------------------- plots


def write_plots(builder: ReportBuilder, report: Mapping[str, Any], out_dir: str | Path) -> list[str]:
    """links.png, latency.png and topology.png in `out_dir`; returns their names."""
    out = Path(out_dir)
    names = []
    for name, draw in (("links.png", _plot_links), ("latency.png", _plot_latency), ("topology.png", _plot_topology)):
        figure = draw(builder, report)
        if figure is not None:
            figure.savefig(out / name, dpi=110)
            names.append(name)
    return names


def _figure(width: float, height: float) -> Any:
    # Figure + its Agg canvas directly: no pyplot global state, no display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _colours(names: Sequence[str]) -> dict[str, Any]:
    """Distinct colours: matplotlib's default cycle, or tab20 beyond its 10."""
    if len(names) <= 10:
        return {name: f"C{i}" for i, name in enumerate(names)}
    from matplotlib import colormaps

    return {name: colormaps["tab20"](i % 20) for i, name in enumerate(names)}


def _phase_lines(axes: Any, phases: Sequence[Mapping[str, Any]], *, label: bool) -> None:
    for phase in phases:
        axes.axvline(phase["start"], color="grey", linestyle=":", linewidth=0.8)
        if label:
            axes.annotate(phase["name"], (phase["start"], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                          xytext=(2, -4), textcoords="offset points", ha="left", va="top", fontsize=7, color="grey")


def _plot_links(builder: ReportBuilder, report: Mapping[str, Any]) -> Any:
    series = {link: points for link, points in builder.series.items() if points}
    if not series:
        return None
    figure = _figure(11, 7.5)
    whole, shaped = figure.subplots(2, 1)
    phases = report["phases"]
    end = max(report["duration"], 1.0)
    colours = _colours(sorted(series))
    for link, points in sorted(series.items()):
        whole.step([0.0] + [t for t, _ in points], [0] + [b for _, b in points], where="post",
                   label=link, linewidth=1, color=colours[link])
        drops = builder.drops.get(link, [])
        if drops:
            level = [max((b for t, b in points if t <= when), default=0) for when in drops]
            whole.plot(drops, level, "x", color=colours[link], markersize=5)
    whole.set_yscale("symlog", linthresh=100)
    whole.set_xlim(0, end)
    whole.set_title("bytes on the wire per directed link (cumulative, with overhead; x: a copy lost on the link)")
    whole.set_xlabel("run time (s)")
    whole.set_ylabel("bytes")
    _phase_lines(whole, phases, label=True)
    whole.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    # after setup, the slow links only, each against its capacity (rate × time)
    later = [p for p in phases if p["name"] != "setup"]
    origin = later[0]["start"] if later else 0.0
    rates = {link: report["links"].get(link, {}).get("rate_bps") for link in series}
    moved = {link: [(t, b) for t, b in points if t >= origin] for link, points in series.items()}
    slow_rates = [r for link, r in rates.items() if r and moved[link]]
    slowest = min(slow_rates, default=None)
    shown = [link for link in sorted(series) if moved[link] and (slowest is None or (rates[link] or math.inf) <= 10 * slowest)]
    highest = 0
    for link in shown:
        points = series[link]
        base = max((b for t, b in points if t < origin), default=0)
        totals = [b - base for _, b in moved[link]]
        highest = max(highest, totals[-1])
        shaped.step([origin] + [t for t, _ in moved[link]], [0] + totals, where="post",
                    label=link, linewidth=1.2, color=colours[link])
    for rate in sorted({rates[link] for link in shown if rates[link]})[:3]:
        shaped.plot([origin, end], [0, (end - origin) * rate / 8], color="black", linestyle="--", linewidth=0.8,
                    label=f"capacity at {rate:g} bit/s")
    shaped.set_title("after setup, links within 10× of the slowest: bytes since the shaped phases began\n"
                     "(a link's curve can never be steeper than its capacity line; flat stretches are idle link)",
                     fontsize=9)
    shaped.set_xlabel("run time (s)")
    shaped.set_ylabel("bytes")
    _phase_lines(shaped, later, label=True)
    shaped.set_xlim(origin, end)
    if highest:
        shaped.set_ylim(0, highest * 1.3)  # the capacity lines run off the top: their slope is what matters
    if shaped.has_data():
        shaped.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def _plot_latency(builder: ReportBuilder, report: Mapping[str, Any]) -> Any:
    rows = []
    for message in report["messages"]:
        for user, d in message["deliveries"].items():
            rows.append((f"{message['id']}\n→{user}", d["latency"], message["send_seconds"], message["phase"]))
    if not rows:
        return None
    figure = _figure(max(6, 0.8 * len(rows) + 2.5), 5)
    axes = figure.subplots()
    measured = [r[1] for r in rows if r[1] is not None] + [r[2] for r in rows if r[2] is not None]
    ceiling = max(measured + [1.0])
    phases = list(dict.fromkeys(r[3] for r in rows))
    colours = {phase: f"C{i % 10}" for i, phase in enumerate(phases)}
    labelled: set[str] = set()
    for x, (label, latency, send_seconds, phase) in enumerate(rows):
        if latency is None:
            axes.bar(x, ceiling * 1.05, color="none", edgecolor="red", hatch="//",
                     label=None if "lost" in labelled else "not received")
            labelled.add("lost")
        else:
            axes.bar(x, latency, color=colours[phase], label=None if phase in labelled else f"phase {phase}")
            labelled.add(phase)
            axes.annotate(f"{latency:.1f} s", (x, latency), xytext=(0, 2), textcoords="offset points",
                          ha="center", va="bottom", fontsize=7)
        if send_seconds is not None:
            axes.plot(x, send_seconds, marker="D", markersize=4, color="black", linestyle="none",
                      label=None if "send" in labelled else "sender's send returned")
            labelled.add("send")
    title = "delivery latency per message and recipient\n(receipt: the receiver's sync returning it)"
    for assertion in report["assertions"]:
        if assertion["check"] != "latency":
            continue
        if assertion["within"] <= ceiling * 1.5:
            axes.axhline(assertion["within"], color="red", linestyle="--", linewidth=0.8,
                         label=f"latency limit {assertion['within']:g} s")
            ceiling = max(ceiling, assertion["within"])
        else:
            title += f"; latency limit {assertion['within']:g} s is off the scale"
    axes.set_ylim(0, ceiling * 1.15)
    axes.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    axes.set_ylabel("seconds from send to receipt")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="upper left")
    return figure


def _plot_topology(builder: ReportBuilder, report: Mapping[str, Any]) -> Any:
    import networkx as nx

    nodes = builder.scenario.get("nodes") or []
    if not nodes or builder.start is None:
        return None
    graph = nx.Graph()
    for node in nodes:
        graph.add_node(node["name"])
    labels = {}
    for link in builder.start.get("links", ()):
        src, dst = link["link"].split("->")
        if graph.has_edge(src, dst):
            continue
        graph.add_edge(src, dst)
        counters = report["links"].get(link["link"], {})
        back = report["links"].get(f"{dst}->{src}", {})
        labels[src, dst] = f"{counters.get('delivered_wire_bytes', 0)} B →\n← {back.get('delivered_wire_bytes', 0)} B"
    if all(node.get("position") for node in nodes):
        layout = {node["name"]: tuple(node["position"]) for node in nodes}
    else:
        layout = nx.spring_layout(graph, seed=1)
    figure = _figure(8, 6)
    axes = figure.subplots()
    roles = builder.scenario.get("roles", {})
    colours = ["tab:red" if roles.get(n) == "homeserver" else "tab:blue" if roles.get(n) == "client" else "tab:grey"
               for n in graph.nodes]
    nx.draw_networkx(graph, layout, ax=axes, node_color=colours, font_size=8, node_size=600)
    nx.draw_networkx_edge_labels(graph, layout, edge_labels=labels, ax=axes, font_size=6)
    axes.set_title("topology (red: homeserver, blue: clients); labels: bytes on the wire each way, whole run")
    axes.set_axis_off()
    return figure


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A few lines for people: verdict, phases, busiest link, messages."""
    lines = [f"{'PASSED' if report['passed'] else 'FAILED'}: {report['scenario']['name']} in {report['duration']:.1f} s"]
    for phase in report["phases"]:
        if phase["duration"] is not None:
            lines.append(f"  phase {phase['name']}: {phase['duration']:.1f} s ({phase['ended_by']})")
    for window in report["physical_bound"]["windows"]:
        if window["busiest_link"]:
            lines.append(
                f"  bound {window['window']}: busiest {window['busiest_link']} {window['bits'] // 8} B needs "
                f"{window['min_seconds']:.1f} s, took {window['span_seconds']:.1f} s {'ok' if window['ok'] else 'VIOLATED'}"
            )
    for message in report["messages"]:
        got = ", ".join(
            f"{user} {d['latency']:.1f} s" if d["latency"] is not None else f"{user} not received"
            for user, d in message["deliveries"].items()
        )
        lines.append(f"  message {message['id']} from {message['sender']}: {got or 'no recipients'}")
    for failure in report["failures"]:
        lines.append(f"  ✗ {failure}")
    return lines
