"""The sans-I/O topology: addressing, routes, reshaping, failures and partitions."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsim.model import LinkModel, LinkProfile
from meshsim.model import Topology

FAST = LinkProfile(rate_bps=1_000_000, delay=0.01, overhead=42)
SLOW = LinkProfile(rate_bps=100, delay=1.0, overhead=42)


def chain(*names: str, profile: LinkProfile = FAST, seed: int = 0) -> Topology:
    topology = Topology(seed=seed)
    for name in names:
        topology.add_node(name)
    for a, b in itertools.pairwise(names):
        topology.add_link(a, b, profile)
    return topology


def hops(topology: Topology, src: str, dst: str) -> list[str] | None:
    route = topology.route(src, dst)
    return None if route is None else [link.id for link in route]


# ---------------------------------------------------------------- addressing


def test_nodes_get_public_and_private_addresses_from_their_number() -> None:
    topology = Topology()
    a = topology.add_node("a")
    b = topology.add_node("b", index=7)
    c = topology.add_node("c")
    assert (a.index, a.public_ip, a.private_ip) == (1, "127.0.0.1", "127.1.0.1")
    assert (b.index, b.public_ip, b.private_ip) == (7, "127.0.0.7", "127.1.0.7")
    assert c.index == 2
    assert topology.node_by_public_ip("127.0.0.7") is b
    assert topology.node_by_private_ip("127.1.0.2") is c
    assert topology.node_by_private_ip("127.0.0.2") is None


def test_address_bases_are_configurable_and_must_not_overlap() -> None:
    topology = Topology(public_base="127.42.0.0", private_base="127.43.0.0")
    node = topology.add_node("x", index=254)
    assert (node.public_ip, node.private_ip) == ("127.42.0.254", "127.43.0.254")
    with pytest.raises(ValueError, match="overlap"):
        Topology(public_base="127.0.0.0", private_base="127.0.0.100")


@pytest.mark.parametrize("index", [0, 255, -1, True, 1.0])
def test_node_numbers_are_1_to_254(index: object) -> None:
    with pytest.raises(ValueError, match="index"):
        Topology().add_node("a", index=index)  # type: ignore[arg-type]


def test_names_and_numbers_are_unique() -> None:
    topology = Topology()
    topology.add_node("a", index=3)
    with pytest.raises(ValueError, match="exists"):
        topology.add_node("a")
    with pytest.raises(ValueError, match="taken"):
        topology.add_node("b", index=3)
    with pytest.raises(ValueError, match="'->'"):
        topology.add_node("x->y")


def test_links_are_two_directed_models_possibly_asymmetric() -> None:
    topology = Topology(seed=5)
    topology.add_node("a")
    topology.add_node("b")
    forward, backward = topology.add_link("a", "b", FAST, reverse=SLOW)
    assert (forward.id, backward.id) == ("a->b", "b->a")
    assert topology.link("a", "b").profile == FAST
    assert topology.link("b", "a").profile == SLOW
    assert topology.edges() == [("a", "b")]
    with pytest.raises(ValueError, match="already linked"):
        topology.add_link("b", "a", FAST)
    with pytest.raises(KeyError):
        topology.add_link("a", "nowhere", FAST)


def test_each_link_is_seeded_from_the_run_seed_and_its_id() -> None:
    lossy = LinkProfile(loss=0.5)
    topology = chain("a", "b", profile=lossy, seed=11)
    fates: dict[str, list[bool]] = {}
    for src, dst in (("a", "b"), ("b", "a")):
        reference = LinkModel(lossy, seed=11, link_id=f"{src}->{dst}")
        link = topology.link(src, dst)
        fates[link.id] = [bool(link.offer(float(i), 10).deliveries) for i in range(64)]
        assert fates[link.id] == [bool(reference.offer(float(i), 10).deliveries) for i in range(64)]
    # the two directions draw from different streams
    assert fates["a->b"] != fates["b->a"]


# ---------------------------------------------------------------- routes


def test_routes_follow_the_chain_and_are_empty_to_oneself() -> None:
    topology = chain("a", "b", "c", "d")
    assert hops(topology, "a", "d") == ["a->b", "b->c", "c->d"]
    assert hops(topology, "d", "b") == ["d->c", "c->b"]
    assert hops(topology, "b", "b") == []
    assert topology.next_hop("b", "d") is topology.link("b", "c")
    assert topology.next_hop("d", "d") is None
    with pytest.raises(KeyError):
        topology.route("a", "zz")


def test_routes_are_fewest_hops_by_default_and_follow_weights() -> None:
    topology = Topology()
    for name in "abcd":
        topology.add_node(name)
    topology.add_link("a", "b", FAST)
    topology.add_link("b", "c", FAST)
    topology.add_link("c", "d", FAST)
    topology.add_link("a", "d", SLOW)  # slow, but one hop: weights are not delays
    assert hops(topology, "a", "d") == ["a->d"]
    version = topology.version
    topology.set_link("a", "d", now=0.0, weight=5)
    assert topology.version > version
    assert hops(topology, "a", "d") == ["a->b", "b->c", "c->d"]
    with pytest.raises(ValueError, match="weight"):
        topology.set_link("a", "d", now=0.0, weight=0)


def test_fail_removes_the_route_and_heal_restores_it() -> None:
    topology = chain("a", "b", "c")
    assert topology.fail("b", "c", now=1.0) == []
    assert not topology.is_up("c", "b")
    assert topology.route("a", "c") is None
    assert topology.next_hop("a", "c") is None
    assert hops(topology, "a", "b") == ["a->b"]
    assert topology.fail("b", "c", now=1.5) == []  # already down: nothing more happens
    assert topology.heal("c", "b", now=2.0)
    assert not topology.heal("b", "c", now=2.0)
    assert hops(topology, "a", "c") == ["a->b", "b->c"]


def test_a_ring_reroutes_around_a_failure() -> None:
    topology = chain("a", "b", "c", "d")
    topology.add_link("d", "a", FAST)
    assert hops(topology, "a", "c") in (["a->b", "b->c"], ["a->d", "d->c"])
    topology.fail("a", "b", now=0.0)
    assert hops(topology, "a", "c") == ["a->d", "d->c"]
    topology.fail("d", "c", now=0.0)
    assert topology.route("a", "c") is None


# ---------------------------------------------------------------- time, reshaping and flushes


def test_a_link_never_sees_time_go_backwards() -> None:
    topology = chain("a", "b", profile=LinkProfile(rate_bps=8000))
    link = topology.link("a", "b")
    first = link.offer(10.0, 100).deliveries[0]
    # a forwarded copy offered "in the past" enters at the link's latest time
    second = link.offer(9.0, 100).deliveries[0]
    assert link.last_time == 10.0
    assert (first.depart_start, first.depart_end) == (10.0, 10.1)
    assert (second.depart_start, second.depart_end) == (10.1, 10.2)


def test_failing_a_link_flushes_only_that_link() -> None:
    topology = chain("a", "b", "c", profile=SLOW)
    on_ab = [topology.link("a", "b").offer(0.0, 50).deliveries[0] for _ in range(3)]
    on_bc = [topology.link("b", "c").offer(0.0, 50).deliveries[0] for _ in range(2)]
    on_ba = topology.link("b", "a").offer(0.0, 50).deliveries[0]
    cancelled = topology.fail("a", "b", now=8.0)
    # every copy on a-b (both ways) whose delivery was still ahead is lost
    assert sorted((link.id, copy.packet) for link, copy in cancelled) == [
        ("a->b", 0), ("a->b", 1), ("a->b", 2), ("b->a", 0)
    ]
    assert {copy for _, copy in cancelled} == {*on_ab, on_ba}
    assert topology.link("a", "b").model.counters.dropped["flushed"] == 3
    bc = topology.link("b", "c")
    assert bc.model.counters.dropped["flushed"] == 0
    assert bc.model.in_flight_packets(8.0) == 2 and on_bc[1].deliver_at == pytest.approx(15.72)
    # while down, offers are dropped ("down"); after heal they go through
    assert topology.link("a", "b").offer(9.0, 50).drops[0].reason == "down"
    topology.heal("a", "b", now=10.0)
    assert topology.link("a", "b").offer(10.0, 50).deliveries[0].depart_start == 10.0


def test_set_link_reshapes_from_now_on_and_keeps_admitted_copies() -> None:
    topology = chain("a", "b", profile=SLOW)
    link = topology.link("a", "b")
    before = link.offer(0.0, 50).deliveries[0]
    changed = topology.set_link("a", "b", FAST, now=1.0, reverse=SLOW)
    assert [l.id for l in changed] == ["a->b", "b->a"]
    assert link.profile == FAST and topology.link("b", "a").profile == SLOW
    after = link.offer(1.0, 50).deliveries[0]
    assert before.deliver_at == pytest.approx(8.36)
    # queued behind the copy already on the serialiser, then sent at the new rate
    assert after.depart_start == pytest.approx(7.36)
    assert after.depart_end == pytest.approx(7.36 + 92 * 8 / 1e6)
    assert link.model.counters.dropped["flushed"] == 0
    # None leaves a direction as it is
    assert topology.set_link("a", "b", None, now=2.0, weight=3) == []
    assert topology.weight("b", "a") == 3.0 and link.profile == FAST


def test_partition_fails_edges_between_groups_and_heal_all_restores_them() -> None:
    topology = chain("a", "b", "c", "d", "e")
    topology.add_link("e", "a", FAST)
    failed, cancelled = topology.partition([["a", "b"], ["c"]], now=0.0)
    # d and e, in no group, form a group of their own
    assert sorted(failed) == [("b", "c"), ("c", "d"), ("e", "a")]
    assert cancelled == []
    assert hops(topology, "a", "b") == ["a->b"]
    assert hops(topology, "d", "e") == ["d->e"]
    assert topology.route("a", "c") is None and topology.route("c", "d") is None and topology.route("a", "e") is None
    assert sorted(topology.heal_all(now=1.0)) == [("b", "c"), ("c", "d"), ("e", "a")]
    assert hops(topology, "a", "e") == ["a->e"]


def test_partition_rejects_a_node_in_two_groups() -> None:
    topology = chain("a", "b")
    with pytest.raises(ValueError, match="more than one group"):
        topology.partition([["a"], ["a", "b"]], now=0.0)
    with pytest.raises(KeyError):
        topology.partition([["zz"]], now=0.0)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 9).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda e: e[0] < e[1]), max_size=20),
            st.sets(st.integers(0, 19), max_size=8),
        )
    )
)
def test_routes_are_shortest_over_the_links_that_are_up(case: tuple[int, set[tuple[int, int]], set[int]]) -> None:
    n, edges, failures = case
    topology = Topology()
    for i in range(n):
        topology.add_node(f"n{i}")
    ordered = sorted(edges)
    for a, b in ordered:
        topology.add_link(f"n{a}", f"n{b}", FAST)
    up = nx.Graph()
    up.add_nodes_from(f"n{i}" for i in range(n))
    for number, (a, b) in enumerate(ordered):
        if number in failures:
            topology.fail(f"n{a}", f"n{b}", now=0.0)
        else:
            up.add_edge(f"n{a}", f"n{b}")
    for src in up:
        for dst in up:
            route = topology.route(src, dst)
            if nx.has_path(up, src, dst):
                assert route is not None and len(route) == nx.shortest_path_length(up, src, dst)
                walk = [src] + [link.dst for link in route]
                assert walk[-1] == dst and all(not link.is_down for link in route)
                assert all(link.src == prev for link, prev in zip(route, walk))
            else:
                assert route is None
