"""Scenario files: parsing, validation, the topology they build, and `meshsim run --validate`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from meshsim.cli import EXIT_BAD_INPUT, main
from meshsim.model import LinkProfile
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


def test_every_shipped_scenario_is_valid(shipped: dict[str, Path]) -> None:
    assert {"100bps-pair", "100bps-lossy", "100bps-chain", "100bps-federation"} <= set(shipped)
    for path in shipped.values():
        scenario = load_scenario(path)
        assert plan_lines(scenario)
        assert any(a.check == "exactly_once" for a in scenario.assertions)


def test_the_federation_scenario_spans_three_homeservers_at_100bps(shipped: dict[str, Path]) -> None:
    """Issue 12: >= 3 homeservers, one room over all of them, 100 bit/s links after setup."""
    scenario = load_scenario(shipped["100bps-federation"])
    assert len(scenario.homeservers) >= 3
    assert any(set(scenario.room_homeservers(r)) == {h.name for h in scenario.homeservers} for r in scenario.rooms)
    (shaped,) = (p for p in scenario.phases if not p.setup)
    assert [scenario.profiles[c.profile].rate_bps for c in shaped.links] == [100]
    senders = {scenario.client(s.sender).homeserver for s in shaped.sends}
    assert senders == {h.name for h in scenario.homeservers}  # a message from every node


def test_the_chain_crosses_at_least_three_shaped_hops(shipped: dict[str, Path]) -> None:
    scenario = load_scenario(shipped["100bps-chain"])
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
        ({}, '[[phase]]\n[[phase.action]]\ndo = "restart"\nhomeserver = "hq"\n',
         "phase[1].action[0].homeserver", "no homeserver 'hq'"),
        ({}, '[[phase]]\n[[phase.action]]\ndo = "restart"\n', "phase[1].action[0].homeserver", "missing"),
        ({}, '[[phase]]\n[[phase.action]]\ndo = "heal"\nhomeserver = "hs"\n',
         "phase[1].action[0].homeserver", "not used by do = 'heal'"),
        ({}, '[[phase]]\n[[phase.link]]\nprofile = "radio"\n', "phase[1].link[0]", "either between"),
        ({}, '[gateway]\nmax_retransmit = 99\n', "gateway.max_retransmit", "out of range"),
        ({}, '[[client]]\nuser = "Carol"\nnode = "hs"\n', "client[2].user", "localpart"),
    ],
)
def test_errors_name_the_key_path(replace: dict[str, str], extra: str, path: str, words: str) -> None:
    error = error_of(scenario_text(replace, extra))
    assert error.path == path, str(error)
    assert words in str(error)


#: alice and bob name their homeserver (with two, a client must)
NAMED = {'user = "alice"\nnode = "phone"\n': 'user = "alice"\nnode = "phone"\nhomeserver = "hs"\n',
         'user = "bob"\nnode = "laptop"\n': 'user = "bob"\nnode = "laptop"\nhomeserver = "hs"\n'}
FEDERATED = '[[homeserver]]\nname = "other"\nnode = "laptop"\n[[client]]\nuser = "carol"\nnode = "laptop"\n' \
            'homeserver = "other"\n'


def test_a_room_across_two_homeservers_is_a_federated_room() -> None:
    text = scenario_text({**NAMED, 'members = ["alice", "bob"]': 'members = ["alice", "bob", "carol"]'}, FEDERATED)
    scenario = parse_scenario(text)
    assert [h.name for h in scenario.homeservers] == ["hs", "other"]
    carol = scenario.client("carol")
    assert scenario.user_id("carol") == "@carol:other" and scenario.is_local(carol)
    assert not scenario.is_local(scenario.client("alice"))
    assert scenario.room_homeservers(scenario.room("chat")) == ["hs", "other"]
    assert scenario.network.federation_port == 5684
    # Synapse's federation timeouts for slow links, from the scenario
    assert scenario.federation.client_timeout == 1800 and scenario.federation.min_retry_interval == 30


@pytest.mark.parametrize(
    "replace, extra, path, words",
    [
        ({}, '[[homeserver]]\nname = "again"\nnode = "hs"\n', "homeserver[1].node", "one per node"),
        ({**NAMED, 'members = ["alice", "bob"]': 'members = ["alice", "bob", "carol"]'}, FEDERATED + "[gateway]\nsecure = false\n",
         "room[0].members", "secure mode only"),
        ({**NAMED, 'members = ["alice", "bob"]': 'members = ["alice", "bob", "carol"]'},
         FEDERATED + "[network]\nfederation_port = 5683\n", "network.federation_port", "differ"),
        (NAMED, FEDERATED + '[federation]\nclient_timeout = "soon"\n', "federation.client_timeout", ""),
        (NAMED, FEDERATED + '[federation]\nretry = "1s"\n', "federation.retry", "unknown key"),
    ],
)
def test_federation_errors_name_the_key_path(replace: dict[str, str], extra: str, path: str, words: str) -> None:
    error = error_of(scenario_text(replace, extra))
    assert error.path == path, str(error)
    assert words in str(error)


def test_homeservers_sharing_a_room_need_a_route() -> None:
    island = '[[node]]\nname = "island"\n[[homeserver]]\nname = "far"\nnode = "island"\n' \
             '[[client]]\nuser = "carol"\nnode = "island"\nhomeserver = "far"\n'
    error = error_of(scenario_text({**NAMED, 'members = ["alice", "bob"]': 'members = ["alice", "bob", "carol"]'}, island))
    assert error.path == "room[0].members" and "no route between homeserver nodes 'hs' and 'island'" in str(error)


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
