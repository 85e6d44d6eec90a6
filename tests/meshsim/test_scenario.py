"""Scenario files, the report computed from events, the physical bound, path budgets: the pure parts."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from coap_gateway.transport import LinkBudget
from meshsim.cli import EXIT_BAD_INPUT, main, shipped_scenarios
from meshsim.model import LinkProfile
from meshsim.run import (
    Copy,
    ReportBuilder,
    evaluate_assertions,
    physical_bound,
    write_plots,
)
from meshsim.run import path_budget, slowest_budget
from meshsim.run import (
    DEFAULT_OVERHEAD,
    LinkChange,
    ScenarioError,
    build_topology,
    load_scenario,
    parse_duration,
    parse_scenario,
    plan_lines,
    resolve_change,
)

PAIR = """
[scenario]
name = "pair"
seed = 7

[profiles]
fast = "rate 10mbit"
radio = "rate 100bit delay 500ms"
lossy = { netem = "rate 100bit delay 2s 500ms loss 20%", overhead = 0, limit_seconds = "10min" }

[[node]]
name = "hs"
[[node]]
name = "phone"
[[node]]
name = "laptop"

[[link]]
between = ["phone", "hs"]
profile = "fast"
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

[[phase]]
name = "shaped"
[[phase.link]]
between = ["phone", "hs"]
profile = "radio"
[[phase.send]]
id = "ping"
from = "alice"
body = "hello"
[[phase.send]]
id = "pong"
from = "bob"
after = "ping"
body = "hi"

[[assert]]
check = "delivered"
[[assert]]
check = "latency"
within = "5min"
messages = ["ping"]
"""


def scenario_text(replace: dict[str, str] | None = None, extra: str = "") -> str:
    text = PAIR
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text + textwrap.dedent(extra)


def error_of(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text)
    return info.value


# ---------------------------------------------------------------- parsing


def test_a_pair_scenario_parses_with_its_defaults() -> None:
    s = parse_scenario(scenario_text())
    assert s.name == "pair" and s.seed == 7
    # an implicit setup phase comes first, on the [[link]] profiles
    assert [p.name for p in s.phases] == ["setup", "shaped"] and s.phases[0].setup
    assert s.profiles["radio"] == LinkProfile(rate_bps=100, delay=0.5, overhead=DEFAULT_OVERHEAD)
    lossy = s.profiles["lossy"]
    assert (lossy.overhead, lossy.loss, lossy.jitter, lossy.limit_seconds) == (0, 0.2, 0.5, 600.0)
    assert s.recipients(s.sends[0]) == ("bob",) and s.sends[1].after == "ping"
    assert s.sends[0].room == "chat"  # the sender's only room
    assert s.user_id("alice") == "@alice:hs"
    assert s.assertions[1].within == 300.0 and s.assertions[1].messages == ("ping",)
    assert s.gateway.secure and s.gateway.max_retransmit == 4 and s.network.coap_port == 5683


def test_every_shipped_scenario_is_valid() -> None:
    shipped = shipped_scenarios()
    assert {"100bps-pair", "100bps-lossy", "100bps-chain"} <= set(shipped)
    for path in shipped.values():
        scenario = load_scenario(path)
        assert plan_lines(scenario)
        assert any(a.check == "exactly_once" for a in scenario.assertions)


def test_the_chain_crosses_at_least_three_shaped_hops() -> None:
    scenario = load_scenario(shipped_scenarios()["100bps-chain"])
    assert len(scenario.nodes) >= 5
    topology = build_topology(scenario)
    for phase in scenario.phases:
        for change in phase.links:
            for a, b, forward, backward, weight in resolve_change(scenario, change, topology):
                topology.set_link(a, b, forward, reverse=backward, weight=weight, now=0.0)
    hs = scenario.homeservers[0].node
    hops = max(len(topology.route(c.node, hs)) for c in scenario.clients)  # type: ignore[arg-type]
    shaped = [l for c in scenario.clients for l in topology.route(c.node, hs) or () if l.profile.rate_bps <= 1000]
    assert hops >= 3 and len(shaped) >= 3


@pytest.mark.parametrize(
    ("replace", "extra", "path", "words"),
    [
        ({'from = "alice"': 'form = "alice"'}, "", "phase[0].send[0].form", "did you mean 'from'"),
        ({'between = ["laptop", "hs"]': 'between = ["laptop", "hq"]'}, "", "link[1].between", "no node 'hq'"),
        ({'profile = "radio"': 'profile = "radi0"'}, "", "phase[0].link[0].profile", "did you mean 'radio'"),
        ({'radio = "rate 100bit delay 500ms"': 'radio = "rate 100bit delay 500ms reorder 5%"'}, "", "profiles.radio", "reorder"),
        ({'after = "ping"': 'after = "pang"'}, "", "phase[0].send[1].after", "no earlier message 'pang'"),
        ({'body = "hi"': 'body = "hello"'}, "", "phase[0].send[1].body", "must be unique"),
        ({'within = "5min"': 'within = "5 minutes"'}, "", "assert[1].within", "not a duration"),
        ({'within = "5min"\n': ''}, "", "assert[1].within", "missing"),
        ({'check = "delivered"': 'check = "deliverd"'}, "", "assert[0].check", "did you mean 'delivered'"),
        ({'members = ["alice", "bob"]': 'members = ["alice", "carol"]'}, "", "room[0].members[1]", "no client 'carol'"),
        ({'name = "shaped"': 'name = "shaped"\nsetup = true\nduration = "1s"'}, "",
         "phase[0].send[0]", "the setup phase sends nothing"),
        ({}, '[[phase]]\nname = "later"\nsetup = true\n', "phase[1].setup", "must be the first"),
        ({}, '[[phase]]\n[[phase.action]]\ndo = "explode"\n', "phase[1].action[0].do", "unknown action"),
        ({}, '[[phase]]\n[[phase.action]]\ndo = "fail"\nbetween = ["phone", "laptop"]\n',
         "phase[1].action[0].between", "no link between"),
        ({}, '[[phase]]\n[[phase.action]]\ndo = "partition"\ngroups = [["hs"], ["hs"]]\n',
         "phase[1].action[0].groups[1][0]", "in two groups"),
        ({}, '[[phase]]\n[[phase.link]]\nprofile = "radio"\n', "phase[1].link[0]", "either between"),
        ({}, '[gateway]\nmax_retransmit = 99\n', "gateway.max_retransmit", "out of range"),
        ({}, '[[client]]\nuser = "Carol"\nnode = "hs"\n', "client[2].user", "localpart"),
    ],
)
def test_errors_name_the_key_path(replace: dict[str, str], extra: str, path: str, words: str) -> None:
    error = error_of(scenario_text(replace, extra))
    assert error.path == path, str(error)
    assert words in str(error)


def test_two_homeservers_are_refused_as_federation() -> None:
    error = error_of(scenario_text(extra='[[homeserver]]\nname = "other"\nnode = "laptop"\n'))
    assert error.path == "homeserver"
    assert "federation" in str(error) and "hs, other" in str(error)


def test_a_client_without_a_route_to_its_homeserver_is_refused() -> None:
    text = scenario_text(extra='[[node]]\nname = "island"\n[[client]]\nuser = "carol"\nnode = "island"\n')
    error = error_of(text)
    assert error.path == "client[2].node" and "no route" in str(error)


def test_invalid_toml_is_one_clear_error() -> None:
    error = error_of("[scenario\nname = 1")
    assert "not valid TOML" in str(error)


def test_positions_and_range_make_the_links() -> None:
    text = """
    [profiles]
    radio = "rate 100bit"
    fast = "rate 1mbit"
    [topology]
    range = 110
    profile = "radio"
    [[node]]
    name = "a"
    position = [0, 0]
    [[node]]
    name = "b"
    position = [100, 0]
    [[node]]
    name = "c"
    position = [200, 0]
    [[node]]
    name = "d"
    position = [150, 90]
    [[link]]
    between = ["a", "b"]
    profile = "fast"
    [[homeserver]]
    name = "hs"
    node = "c"
    [[client]]
    user = "u"
    node = "a"
    """
    s = parse_scenario(textwrap.dedent(text))
    pairs = {(l.a, l.b): l.profile for l in s.links}
    # explicit links win; b–c (100) and b–d, c–d (~104) are within range; a–c (200) is not
    assert pairs == {("a", "b"): "fast", ("b", "c"): "radio", ("b", "d"): "radio", ("c", "d"): "radio"}
    assert build_topology(s).path("a", "c") == ["a", "b", "c"]


def test_repeated_sends_expand_into_copies() -> None:
    text = scenario_text({'body = "hi"': 'body = "hi {i}"\ncount = 3'})
    s = parse_scenario(text)
    ids = [m.id for m in s.sends]
    assert ids == ["ping", "pong#1", "pong#2", "pong#3"]
    assert [m.body for m in s.sends[1:]] == ["hi 1", "hi 2", "hi 3"]
    # without an interval each copy waits for the one before to be delivered
    assert [m.after for m in s.sends[1:]] == ["ping", "pong#1", "pong#2"]
    assert s.message_ids(["pong"]) == ["pong#1", "pong#2", "pong#3"]
    with_interval = parse_scenario(scenario_text({'body = "hi"': 'body = "hi"\ncount = 2\ninterval = "30s"'}))
    assert [(m.body, m.at, m.after) for m in with_interval.sends[1:]] == [("hi #1", 0.0, "ping"), ("hi #2", 30.0, "ping")]


def test_build_topology_and_link_changes() -> None:
    s = parse_scenario(scenario_text())
    topology = build_topology(s, seed=3, public_base="127.55.0.0", private_base="127.55.1.0")
    assert topology.seed == 3 and topology.node("hs").public_ip == "127.55.0.1"
    assert topology.link("phone", "hs").profile == s.profiles["fast"]
    change = s.phases[1].links[0]
    assert resolve_change(s, change, topology) == [("phone", "hs", s.profiles["radio"], s.profiles["radio"], None)]
    every = resolve_change(s, LinkChange(between=None, profile="radio", reverse="fast"), topology)
    assert [(a, b) for a, b, *_ in every] == [("phone", "hs"), ("laptop", "hs")]
    assert every[0][3] == s.profiles["fast"]


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30.0), ("2min", 120.0), ("1h", 3600.0),
                                              (12, 12.0), (1.5, 1.5), ("250us", 0.00025), ("1.5s", 1.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5", "5 minutes", "-1s", True, None, float("inf")])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


# ---------------------------------------------------------------- budgets


def test_a_path_budget_is_one_store_and_forward_link() -> None:
    slow = LinkProfile(rate_bps=100, delay=0.5, jitter=0.1, overhead=42)
    fast = LinkProfile(rate_bps=None, delay=0.001, overhead=0)
    budget = path_budget([slow, slow, fast, slow], [slow, fast, slow, slow], max_retransmit=8, max_frame=512)
    # three 100 bit/s hops: a frame takes three times as long as over one
    assert budget.rate_bps == pytest.approx(100 / 3)
    assert budget.serialisation(58) == pytest.approx(3 * (58 + 42) * 8 / 100)
    assert budget.latency == pytest.approx(3 * 0.6 + 0.001)
    assert (budget.frame_overhead, budget.max_retransmit, budget.max_frame) == (42, 8, 512)
    # the slower direction decides
    asym = path_budget([LinkProfile(rate_bps=1000)], [LinkProfile(rate_bps=100)])
    assert asym.rate_bps == 100
    assert path_budget([], []).rate_bps is None  # a client on the homeserver's own node


def test_the_slowest_budget_covers_every_path() -> None:
    budgets = [LinkBudget(rate_bps=1e6, latency=0.01), LinkBudget(rate_bps=100, frame_overhead=42, latency=2.0),
               LinkBudget(rate_bps=None, latency=0.0, max_retransmit=8)]
    slowest = slowest_budget(budgets)
    assert (slowest.rate_bps, slowest.frame_overhead, slowest.latency, slowest.max_retransmit) == (100, 42, 2.0, 8)
    with pytest.raises(ValueError):
        slowest_budget([])


# ---------------------------------------------------------------- the physical bound


def test_the_bound_passes_when_traffic_took_its_time() -> None:
    # 2 × 100 bytes at 100 bit/s need 16 s; the last arrived 17 s after the window began
    copies = {"a->b": [Copy(10.0, 100.0, 18.0, 100, 58), Copy(11.0, 100.0, 27.0, 100, 58)]}
    result = physical_bound(copies, [("shaped", 10.0, 30.0)])
    window = result["windows"][0]
    assert result["ok"] and window["ok"]
    assert (window["busiest_link"], window["bits"], window["min_seconds"], window["span_seconds"]) == ("a->b", 1600, 16.0, 17.0)


def test_the_bound_fails_when_traffic_beat_physics() -> None:
    copies = {"a->b": [Copy(10.0, 100.0, 12.0, 100, 58), Copy(10.5, 100.0, 14.0, 100, 58)],
              "b->a": [Copy(10.0, None, 10.0, 5000, 4958)]}  # unshaped: needs no time
    result = physical_bound(copies, [("shaped", 10.0, 30.0)])
    assert not result["ok"]
    assert "a->b carried 1600 bits, which needs 16.000 s, in 4.000 s" in result["detail"]
    assert result["windows"][0]["busiest_link"] == "a->b"
    assert physical_bound({}, [("empty", 0.0, 1.0)], early_deliveries=2)["ok"] is False


def test_copies_outside_a_window_do_not_count_in_it() -> None:
    copies = {"a->b": [Copy(1.0, 100.0, 9.0, 100, 58), Copy(20.0, 100.0, 28.0, 100, 58)]}
    windows = physical_bound(copies, [("first", 0.0, 10.0), ("second", 10.0, 30.0)])["windows"]
    assert [w["bits"] for w in windows] == [800, 800]
    assert [w["span_seconds"] for w in windows] == [9.0, 18.0]


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


def test_assertions_per_message() -> None:
    def message(msg_id: str, latency: float | None, appearances: int = 1, history: int | None = 1) -> dict:
        received = None if latency is None else 10.0 + latency
        return {"id": msg_id, "send_at": 10.0, "history_count": history,
                "deliveries": {"bob": {"received_at": received, "latency": latency, "appearances": appearances if received else 0,
                                       "event_ids": ["$x"] if received else []}}}

    messages = [message("a#1", 5.0), message("a#2", 50.0), message("b", None), message("c", 1.0, history=2)]
    groups = {"a": ["a#1", "a#2"]}
    results = evaluate_assertions([
        {"check": "delivered", "messages": ["a"], "within": None},
        {"check": "latency", "messages": ["a"], "within": 30.0},
        {"check": "delivered", "messages": ["b"], "within": None},
        {"check": "exactly_once", "messages": ["c"], "within": None},
    ], messages, groups)
    assert [r["passed"] for r in results] == [True, False, False, False]
    assert results[0]["message_ids"] == ["a#1", "a#2"]
    assert results[1]["detail"] == "a#2→bob: latency 50.0 s > 30 s"
    assert results[2]["detail"] == "b→bob: not received"
    assert "2 times in the room's history" in results[3]["detail"]


def test_plots_are_written(tmp_path: Path) -> None:
    builder = ReportBuilder().feed_all(_fabric_events())
    names = write_plots(builder, builder.build(), tmp_path)
    assert names == ["links.png", "latency.png", "topology.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the CLI


def test_run_validate_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "100bps-chain", "--validate"]) == 0
    out = capsys.readouterr().out
    assert "scenario 100bps-chain" in out and "hops" in out


def test_run_refuses_a_bad_scenario_with_its_key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(scenario_text({'from = "alice"': 'from = "alise"'}))
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "phase[0].send[0].from: no client 'alise' (did you mean 'alice'?)" in err
    assert not (tmp_path / "out").exists()
    assert main(["run", "no-such-scenario"]) == EXIT_BAD_INPUT
    assert main(["run", "--list"]) == 0
