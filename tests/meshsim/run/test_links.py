"""The run's network: path budgets (pure), PathBudgets as routes change, actions on a network."""

from __future__ import annotations

import pytest

from coap_gateway.transport import LinkBudget
from meshsim.model import LinkProfile, Topology
from meshsim.run import build_topology, parse_scenario, path_budget, slowest_budget
from meshsim.run.links import BudgetChanges, PathBudgets, act, change_links, open_network
from meshsim.run.scenario import GatewaySettings


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




# ---------------------------------------------------------------- budgets as routes change

SLOW = LinkProfile(rate_bps=100, delay=0.5, overhead=42)
FAST = LinkProfile(rate_bps=1_000_000, delay=0.001, overhead=42)
SETTINGS = GatewaySettings(max_retransmit=6, max_frame=512)


def star() -> Topology:
    """hs with a phone two hops out (phone - relay - hs) and a laptop next to it."""
    topology = Topology()
    for name in ("hs", "relay", "phone", "laptop"):
        topology.add_node(name)
    topology.add_link("phone", "relay", FAST)
    topology.add_link("relay", "hs", FAST)
    topology.add_link("laptop", "hs", FAST)
    return topology


def budgets_of(topology: Topology) -> PathBudgets:
    devices = {"alice": topology.node("phone"), "bob": topology.node("laptop")}
    return PathBudgets(topology, topology.node("hs"), devices, SETTINGS)


def test_path_budgets_start_from_the_routes_and_follow_their_changes() -> None:
    topology = star()
    budgets = budgets_of(topology)
    assert budgets.devices["alice"] == path_budget([FAST, FAST], [FAST, FAST], max_retransmit=6, max_frame=512)
    assert budgets.server == slowest_budget(list(budgets.devices.values()))
    assert budgets.refresh() == BudgetChanges({}, None)  # nothing moved

    topology.set_link("relay", "hs", SLOW, now=0.0)
    changes = budgets.refresh()
    slow_path = path_budget([FAST, SLOW], [SLOW, FAST], max_retransmit=6, max_frame=512)
    assert changes.devices == {"alice": slow_path} and slow_path.rate_bps == pytest.approx(100, rel=1e-3)
    assert changes.server == slow_path == budgets.server


def test_a_partitioned_device_keeps_its_budget() -> None:
    topology = star()
    budgets = budgets_of(topology)
    before = budgets.devices["alice"]
    topology.fail("phone", "relay", now=0.0)
    assert budgets.of_path(topology.node("phone")) is None
    assert budgets.refresh() == BudgetChanges({}, None) and budgets.devices["alice"] == before


def test_a_budget_is_found_by_the_address_frames_come_from() -> None:
    topology = star()
    budgets = budgets_of(topology)
    topology.set_link("relay", "hs", SLOW, now=0.0)
    budgets.refresh()
    assert budgets.for_address((topology.node("phone").public_ip, 40000)) == budgets.devices["alice"]
    assert budgets.for_address((topology.node("laptop").public_ip, 40000)) == budgets.devices["bob"]
    # an address that is no device's, or not an address at all: the slowest
    assert budgets.for_address((topology.node("relay").public_ip, 1)) == budgets.server
    assert budgets.for_address("session-key") == budgets.server


# ---------------------------------------------------------------- changes through the network

ACTIONS = """
[profiles]
fast = "rate 1mbit"
slow = "rate 100bit"
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
[[phase]]
name = "all"
[[phase.link]]
all = true
profile = "slow"
[[phase.action]]
do = "partition"
groups = [["phone"]]
[[phase.action]]
do = "heal"
[[phase.action]]
do = "fail"
between = ["laptop", "hs"]
[[phase.action]]
do = "heal"
between = ["laptop", "hs"]
[[phase.action]]
do = "set_link"
between = ["phone", "hs"]
profile = "fast"
reverse = "slow"
"""


async def test_phase_changes_and_actions_go_through_the_network(bases: tuple[str, str]) -> None:
    scenario = parse_scenario(ACTIONS)
    topology = build_topology(scenario, public_base=bases[0], private_base=bases[1])
    network = open_network(scenario, topology, events=None, capture=None)
    assert network.ports == [scenario.network.coap_port]
    (phase,) = [p for p in scenario.phases if not p.setup]
    async with network:
        change_links(network, scenario, phase.links[0])
        assert {link.profile.rate_bps for link in topology.links} == {100}
        partition, heal_all, fail, heal, set_link = phase.actions
        assert act(network, scenario, partition) == 0 and not topology.is_up("phone", "hs")
        assert act(network, scenario, heal_all) == 0 and topology.is_up("phone", "hs")
        assert act(network, scenario, fail) == 0 and not topology.is_up("laptop", "hs")
        act(network, scenario, heal)
        assert topology.is_up("laptop", "hs")
        act(network, scenario, set_link)
        assert (topology.link("phone", "hs").profile.rate_bps, topology.link("hs", "phone").profile.rate_bps) == (1e6, 100)
