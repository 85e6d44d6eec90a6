"""The report, computed from a run's events alone, and its plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshsim.run import ReportBuilder, write_plots


def _fabric_events(late: float = 0.0) -> list[dict]:
    """A run in events: setup on a fast link, then 100 bit/s; one message each way."""
    fast = {"rate_bps": 1e6, "overhead": 42}
    slow = {"rate_bps": 100.0, "overhead": 42}
    events: list[dict] = [
        {"kind": "scenario", "t": 0.0, "name": "unit", "source": None, "description": "", "seed": 1,
         "nodes": [{"name": "a", "index": 1, "position": None}, {"name": "b", "index": 2, "position": None}],
         "roles": {"a": "client", "b": "homeserver"}, "phases": ["setup", "shaped"],
         "messages": [{"id": "ping", "sender": "alice", "room": "chat", "body": "hello", "phase": "shaped",
                       "recipients": ["bob"]},
                      {"id": "pong", "sender": "bob", "room": "chat", "body": "hi", "phase": "shaped",
                       "recipients": ["alice"]}],
         "groups": {},
         "assertions": [{"check": "delivered", "messages": None, "within": None},
                        {"check": "exactly_once", "messages": None, "within": None},
                        {"check": "latency", "messages": ["ping"], "within": 60.0}]},
        {"kind": "start", "t": 0.0, "wall": 1e9, "seed": 1, "nodes": [], "ports": [5683],
         "links": [{"link": "a->b", "profile": fast, "weight": 1.0}, {"link": "b->a", "profile": fast, "weight": 1.0}]},
        {"kind": "phase_start", "t": 0.0, "phase": "setup", "index": 0},
        {"kind": "offer", "t": 0.1, "pkt": 0, "link": "a->b", "link_pkt": 0, "size": 958},
        {"kind": "deliver", "t": 0.108, "pkt": 0, "link": "a->b", "link_pkt": 0, "dup": False, "size": 958, "wire": 1000,
         "depart_start": 0.1, "depart_end": 0.108, "corrupted_bit": None, "late": 0.0},
        {"kind": "phase_end", "t": 1.0, "phase": "setup", "ended_by": "complete"},
        {"kind": "phase_start", "t": 1.0, "phase": "shaped", "index": 1},
        {"kind": "link_change", "t": 1.0, "link": "a->b", "profile": slow, "weight": 1.0},
        {"kind": "link_change", "t": 1.0, "link": "b->a", "profile": slow, "weight": 1.0},
        {"kind": "send", "t": 1.0, "msg": "ping", "user": "alice", "room": "chat", "attempt": 0},
        {"kind": "offer", "t": 1.0, "pkt": 1, "link": "a->b", "link_pkt": 1, "size": 58},
        {"kind": "drop", "t": 1.0, "pkt": 2, "link": "a->b", "link_pkt": 2, "dup": False, "size": 58, "node": "a",
         "reason": "loss"},
        {"kind": "deliver", "t": 9.0, "pkt": 1, "link": "a->b", "link_pkt": 1, "dup": False, "size": 58, "wire": 100,
         "depart_start": 1.0, "depart_end": 9.0, "corrupted_bit": None, "late": late},
        {"kind": "receive", "t": 10.0, "msg": "ping", "user": "bob", "event_id": "$1"},
        {"kind": "offer", "t": 9.0, "pkt": 3, "link": "b->a", "link_pkt": 0, "size": 58},
        {"kind": "deliver", "t": 17.0, "pkt": 3, "link": "b->a", "link_pkt": 0, "dup": False, "size": 58, "wire": 100,
         "depart_start": 9.0, "depart_end": 17.0, "corrupted_bit": None, "late": late},
        {"kind": "sent", "t": 17.0, "msg": "ping", "event_id": "$1"},
        {"kind": "send", "t": 17.0, "msg": "pong", "user": "bob", "room": "chat", "attempt": 0},
        {"kind": "sent", "t": 17.5, "msg": "pong", "event_id": "$2"},
        {"kind": "receive", "t": 30.0, "msg": "pong", "user": "alice", "event_id": "$2"},
        {"kind": "receive", "t": 90.0, "msg": "pong", "user": "alice", "event_id": "$2"},
        {"kind": "phase_end", "t": 30.0, "phase": "shaped", "ended_by": "complete"},
        {"kind": "history", "t": 31.0, "room": "chat", "counts": {"ping": 1, "pong": 1}},
        {"kind": "stop", "t": 31.0, "counters": {"received_packets": 3},
         "links": {"a->b": {"src": "a", "dst": "b", "profile": slow, "delivered_wire_bytes": 1100, "dropped": {"loss": 1}},
                   "b->a": {"src": "b", "dst": "a", "profile": slow, "delivered_wire_bytes": 100, "dropped": {"loss": 0}}}},
    ]
    return events


def test_the_report_from_events() -> None:
    builder = ReportBuilder().feed_all(_fabric_events())
    report = builder.build()
    assert [p["name"] for p in report["phases"]] == ["setup", "shaped"]
    assert report["phases"][1]["duration"] == 29.0
    ping, pong = report["messages"]
    assert ping["deliveries"]["bob"]["latency"] == 9.0 and ping["send_seconds"] == 16.0 and ping["delivered"]
    assert pong["deliveries"]["alice"]["appearances"] == 2
    shaped = report["links"]["a->b"]["phases"]["shaped"]
    # the copy offered after the link change counts at the new rate: 100 B at 100 bit/s
    assert shaped == {"packets": 1, "bytes": 58, "wire_bytes": 100, "min_seconds": 8.0}
    assert report["links"]["a->b"]["phases"]["setup"]["min_seconds"] == pytest.approx(0.008)
    assert report["links"]["a->b"]["rate_bps"] == 100.0 and report["links"]["a->b"]["dropped"] == {"loss": 1}
    assert builder.drops == {"a->b": [1.0]}
    bound = {w["window"]: w for w in report["physical_bound"]["windows"]}
    # both links needed 8 s; the first is named, and it took 8 s (from the phase start to 9.0)
    assert (bound["shaped"]["busiest_link"], bound["shaped"]["min_seconds"], bound["shaped"]["span_seconds"]) == ("a->b", 8.0, 8.0)
    assert report["physical_bound"]["ok"]
    checks = {a["check"]: a for a in report["assertions"]}
    assert checks["delivered"]["passed"] and checks["latency"]["passed"]
    # pong appeared twice in alice's timeline: not exactly once
    assert not checks["exactly_once"]["passed"] and "pong→alice: seen 2 times" in checks["exactly_once"]["detail"]
    assert not report["passed"] and report["failures"] == [f"assertion exactly_once failed: {checks['exactly_once']['detail']}"]
    json.dumps(report)  # report.json is plain data


def test_a_delivery_before_the_models_time_fails_the_bound() -> None:
    report = ReportBuilder().feed_all(_fabric_events(late=-0.5)).build()
    assert report["late"]["early_deliveries"] == 2
    assert not report["physical_bound"]["ok"]
    assert any(f.startswith("physical bound violated") for f in report["failures"])


def test_plots_are_written(tmp_path: Path) -> None:
    builder = ReportBuilder().feed_all(_fabric_events())
    names = write_plots(builder, builder.build(), tmp_path)
    assert names == ["links.png", "latency.png", "topology.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_federation_traffic_and_history_per_homeserver() -> None:
    """With several homeservers: link bytes split by kind (the federation port), the
    federation section from the gateways' counters, and a history count per homeserver."""
    events = _fabric_events()
    scenario = dict(events[0], homeservers={"a.mesh": "a", "b.mesh": "b"}, federation_port=5684)
    events = [scenario, *(e for e in events[1:] if e["kind"] != "history")]
    # packet 0 (setup) was federation; every other one client traffic
    events.insert(2, {"kind": "ingress", "t": 0.1, "pkt": 0, "src": "127.1.0.1", "dst": "127.0.0.2", "sport": 5684,
                      "dport": 5684, "size": 958})
    events.append({"kind": "history", "t": 9.0, "room": "chat", "homeserver": "a.mesh", "counts": {"ping": 1, "pong": 1}})
    events.append({"kind": "history", "t": 9.0, "room": "chat", "homeserver": "b.mesh", "counts": {"ping": 2, "pong": 0}})
    events.append({"kind": "gateways", "t": 9.0, "gateways": {
        "federation a.mesh": {"gateway": {"sent": 3, "sent_failed": 0, "served": 2, "refused": {}},
                              "transport": {"frames_out": 5, "bytes_out": 900, "frames_in": 4, "bytes_in": 300,
                                            "retransmissions": 1}}}})
    report = ReportBuilder().feed_all(events).build()

    assert report["links"]["a->b"]["traffic"]["federation"] == {"packets": 1, "wire_bytes": 1000}
    assert report["links"]["a->b"]["traffic"]["client"]["packets"] >= 1
    federation = report["federation"]
    assert federation["links"]["a->b"] == {"packets": 1, "wire_bytes": 1000} and federation["wire_bytes"] == 1000
    assert federation["homeservers"]["a.mesh"]["requests_sent"] == 3
    assert federation["homeservers"]["a.mesh"]["bytes_out"] == 900
    assert federation["homeservers"]["b.mesh"]["requests_sent"] is None  # no counters: unknown, not zero
    ping, pong = (next(m for m in report["messages"] if m["id"] == i) for i in ("ping", "pong"))
    # the count furthest from once decides: twice on b fails exactly-once, as none on b does
    assert ping["history"] == {"a.mesh": 1, "b.mesh": 2} and ping["history_count"] == 2
    assert pong["history_count"] == 0
    exactly_once = next(a for a in report["assertions"] if a["check"] == "exactly_once")
    assert not exactly_once["passed"]


def test_one_homeserver_has_no_federation_section() -> None:
    report = ReportBuilder().feed_all(_fabric_events()).build()
    assert report["federation"] is None and "traffic" not in report["links"]["a->b"]
