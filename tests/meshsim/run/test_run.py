"""End to end: the shipped 100 bit/s pair scenario, run for real (Synapse, gateways, matrix-nio, fabric).

Takes about three minutes: set up on fast links, then alice's link is shaped
to 100 bit/s and one short message crosses each way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from meshsim.net.events import read_events
from meshsim.run import load_scenario
from tests.helpers import wireshark

pytestmark = pytest.mark.synapse


async def test_the_100bps_pair_end_to_end(tmp_path: Path, bases: tuple[str, str], shipped: dict[str, Path]) -> None:
    pytest.importorskip("synapse", reason="matrix-synapse is not installed")
    from meshsim.run import run_scenario

    scenario = load_scenario(shipped["100bps-pair"])
    started = time.monotonic()
    result = await run_scenario(scenario, tmp_path, public_base=bases[0], private_base=bases[1])
    elapsed = time.monotonic() - started
    report = result.report

    assert result.passed, report["failures"]
    assert all(a["passed"] for a in report["assertions"]) and len(report["assertions"]) == 3
    # both messages reached the other user exactly once, on the link and on the homeserver
    for message in report["messages"]:
        (delivery,) = message["deliveries"].values()
        assert delivery["appearances"] == 1 and delivery["latency"] > 0
        assert message["history_count"] == 1 and message["send_ok"]

    # physics: the shaped phase carried bits on alice's 100 bit/s link that need time
    bound = report["physical_bound"]
    assert bound["ok"] and bound["early_deliveries"] == 0
    shaped = next(w for w in bound["windows"] if w["window"] == "shaped")
    assert shaped["busiest_link"] in ("alice-phone->hs", "hs->alice-phone")
    assert shaped["rates_bps"] == [100.0]
    assert shaped["min_seconds"] == pytest.approx(shaped["bits"] / 100)
    assert shaped["min_seconds"] > 20  # a send and a receipt cannot take less at 100 bit/s
    assert shaped["span_seconds"] >= shaped["min_seconds"]
    assert elapsed >= shaped["min_seconds"]
    phase = next(p for p in report["phases"] if p["name"] == "shaped")
    assert phase["ended_by"] == "complete"
    # the phase ended with the last receipt, which needed the busiest link's traffic first
    assert phase["duration"] >= report["links"][shaped["busiest_link"]]["phases"]["shaped"]["min_seconds"] * 0.5

    # timers followed each path: nothing was sent twice over the slow link, and the server
    # acknowledged bob's held long-polls within his fast path's timeout
    assert report["gateways"]["alice"]["retransmissions"] == 0
    assert report["gateways"]["bob"]["retransmissions"] == 0

    # the outputs beside the report
    names = {p.name for p in tmp_path.iterdir()}
    assert {"report.json", "events.jsonl", "capture.pcap", "links.png", "latency.png", "topology.png"} <= names
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True
    assert (tmp_path / "capture.pcap").read_bytes()[:4] == bytes.fromhex("4d3cb2a1")
    kinds = {event["kind"] for event in read_events(tmp_path / "events.jsonl")}
    assert {"scenario", "start", "phase_start", "link_change", "send", "sent", "receive", "history", "stop"} <= kinds

    # a secure run leaves its key log beside the capture, 0600, and Wireshark
    # (tshark with the shipped dissector) reads every frame of it (issue 13.5)
    keylog = tmp_path / "capture.keylog"
    assert "capture.keylog" in report["outputs"] and keylog.stat().st_mode & 0o777 == 0o600
    rows = wireshark.assert_reads_secure_capture(tmp_path / "capture.pcap", keylog)
    routes = {r["cgw.route"] for r in rows if r["cgw.route"]}
    assert any("/send/m.room.message/" in route for route in routes), routes
    assert "/_matrix/client/v3/sync" in routes and "/_matrix/client/v3/register" in routes, routes


ACTIONS = """
[scenario]
name = "actions"
seed = 5

[network]
public_base = "{public}"
private_base = "{private}"

[profiles]
fast = "rate 2mbit delay 5ms"
slower = "rate 1mbit delay 5ms"

[[node]]
name = "hs"
[[node]]
name = "phone"
[[node]]
name = "near"
[[node]]
name = "far"
[[node]]
name = "laptop"

[[link]]
between = ["phone", "near"]
profile = "fast"
[[link]]
between = ["near", "hs"]
profile = "fast"
[[link]]
between = ["phone", "far"]
profile = "fast"
weight = 3
[[link]]
between = ["far", "hs"]
profile = "fast"
weight = 3
[[link]]
between = ["laptop", "hs"]
profile = "fast"

[[homeserver]]
name = "hs"
node = "hs"
[[client]]
user = "alice"
node = "phone"
[[client]]
user = "bob"
node = "laptop"
[[room]]
name = "chat"
members = ["alice", "bob"]

[matrix]
sync_timeout = "2s"

[[phase]]
name = "detour"
[[phase.action]]
do = "fail"
between = ["near", "hs"]
[[phase.action]]
at = "100ms"
do = "set_link"
between = ["phone", "far"]
profile = "slower"
[[phase.send]]
id = "around"
from = "alice"
body = "the long way round"

[[phase]]
name = "cut-off"
duration = "4s"
[[phase.action]]
do = "heal"
[[phase.action]]
do = "partition"
groups = [["phone"]]
[[phase.send]]
at = "500ms"
id = "while-cut"
from = "bob"
body = "are you there?"
[[phase.action]]
at = "3s"
do = "heal"

[[phase]]
name = "restart"
timeout = "60s"
[[phase.action]]
do = "restart"
homeserver = "hs"
[[phase.send]]
at = "500ms"
id = "after-restart"
from = "bob"
body = "back again"

[[assert]]
check = "delivered"
[[assert]]
check = "exactly_once"
[[assert]]
check = "latency"
within = "1ms"
messages = ["around"]
"""


def test_actions_reroute_and_a_failed_assertion_exits_3(tmp_path: Path, bases: tuple[str, str]) -> None:
    """fail / set_link / heal / partition / restart on fast links, through `meshsim run`; an impossible
    latency fails the run."""
    pytest.importorskip("synapse", reason="matrix-synapse is not installed")
    from meshsim.cli import EXIT_ASSERTION_FAILED, main

    scenario = tmp_path / "actions.toml"
    scenario.write_text(ACTIONS.format(public=bases[0], private=bases[1]))
    out = tmp_path / "out"
    assert main(["run", str(scenario), "--out", str(out), "--quiet"]) == EXIT_ASSERTION_FAILED

    report = json.loads((out / "report.json").read_text())
    checks = {a["check"]: a for a in report["assertions"]}
    # every message arrived exactly once, the message sent during the partition once it healed
    assert checks["delivered"]["passed"] and checks["exactly_once"]["passed"]
    assert not checks["latency"]["passed"] and "around→bob: latency" in checks["latency"]["detail"]
    assert report["failures"] == [f"assertion latency failed: {checks['latency']['detail']}"]
    assert report["physical_bound"]["ok"]

    events = read_events(out / "events.jsonl")
    actions = [(e["do"], e["between"], e["groups"]) for e in events if e["kind"] == "action"]
    assert actions == [("fail", ["near", "hs"], []), ("set_link", ["phone", "far"], []), ("heal", None, []),
                       ("partition", None, [["phone"]]), ("heal", None, []), ("restart", None, [])]
    healed_at = [e["t"] for e in events if e["kind"] == "action"][-2]
    # the detour carried alice's traffic while near-hs was down, at the profile set mid-phase
    links = report["links"]
    assert links["phone->far"]["phases"]["detour"]["packets"] > 0 and links["phone->far"]["rate_bps"] == 1e6
    assert links["near->hs"]["phases"]["detour"]["packets"] == 0
    phases = {p["name"]: p for p in report["phases"]}
    assert phases["cut-off"]["duration"] >= 4.0
    # bob's message sent while alice was cut off reached her only after the heal
    while_cut = next(m for m in report["messages"] if m["id"] == "while-cut")
    assert while_cut["send_at"] < healed_at <= while_cut["deliveries"]["alice"]["received_at"]
    # the server gateway restarted under idle alice (no keepalive): it woke her
    # client gateway (WAKE), which came back and had bob's next message pushed
    # within the phase, not at its hourly check
    assert phases["restart"]["ended_by"] != "timeout"
    assert "alice" in next(m for m in report["messages"] if m["id"] == "after-restart")["deliveries"]
