"""`Network`: the one interface over the fabric and the kernel backend, driven through it alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshsim.model import LinkProfile, Topology
from meshsim.net import Fabric, KernelSupport, KernelTopology, Network
from tests.meshsim.support import open_app, until

PORT = 15683
FAST = LinkProfile(rate_bps=1_000_000, delay=0.002, overhead=42)
#: 8000 bit/s: a 242-byte frame takes 0.242 s
SHAPED = LinkProfile(rate_bps=8000, overhead=42)
LINK_KEYS = {"src", "dst", "up", "profile", "weight", "dropped"}


def triangle(profile: LinkProfile, **bases: str) -> Topology:
    """a - b - c, and a - c the long way round (weight 3)."""
    topology = Topology(seed=1, **bases)
    for name in "abc":
        topology.add_node(name)
    topology.add_link("a", "b", profile)
    topology.add_link("b", "c", profile)
    topology.add_link("a", "c", profile, weight=3)
    return topology


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["kind"], e["link"]) for e in events if e["kind"] in ("link_change", "link_down", "link_up")]


async def drive(network: Network) -> list[dict[str, Any]]:
    """The same changes on any backend, checked through the interface; the link events it saw."""
    topology = network.topology
    events: list[dict[str, Any]] = []
    network.subscribe(events.append)
    assert isinstance(network, Network) and not network.running
    async with network:
        assert network.running and network.now() >= 0
        assert topology.path("a", "c") == ["a", "b", "c"]
        assert network.partition([["c"]]) == 0  # idle links: nothing lost
        assert not topology.is_up("b", "c") and not topology.is_up("a", "c") and topology.route("a", "c") is None
        network.heal_all()
        assert topology.path("a", "c") == ["a", "b", "c"]
        assert network.fail("a", "b") == 0
        assert topology.path("a", "c") == ["a", "c"]  # rerouted
        network.heal("a", "b")
        network.set_link("a", "c", weight=1)
        assert topology.path("a", "c") == ["a", "c"]
        faster = LinkProfile(rate_bps=16000, overhead=42)
        network.set_link("a", "b", faster)
        snapshot = network.snapshot()
        assert {"t", "counters", "in_flight_bytes", "links"} <= set(snapshot)
        assert set(snapshot["links"]) == {link.id for link in topology.links}
        assert all(LINK_KEYS <= set(link) for link in snapshot["links"].values())
        assert snapshot["links"]["b->a"]["profile"]["rate_bps"] == 16000 and snapshot["links"]["a->c"]["weight"] == 1
    assert not network.running
    return events


EXPECTED_EVENTS = [
    ("link_down", "b->c"), ("link_down", "c->b"), ("link_down", "a->c"), ("link_down", "c->a"),
    ("link_up", "b->c"), ("link_up", "c->b"), ("link_up", "a->c"), ("link_up", "c->a"),
    ("link_down", "a->b"), ("link_down", "b->a"), ("link_up", "a->b"), ("link_up", "b->a"),
    ("link_change", "a->c"), ("link_change", "c->a"), ("link_change", "a->b"), ("link_change", "b->a"),
]


async def test_the_fabric_through_the_interface(bases: tuple[str, str]) -> None:
    fabric = Fabric(triangle(FAST, public_base=bases[0], private_base=bases[1]), ports=[PORT])
    assert fabric.ports == [PORT]
    assert kinds(await drive(fabric)) == EXPECTED_EVENTS


async def test_a_fabric_failure_returns_the_copies_it_lost(bases: tuple[str, str]) -> None:
    topology = triangle(SHAPED, public_base=bases[0], private_base=bases[1])
    network: Network = Fabric(topology, ports=[PORT])
    async with network:
        assert isinstance(network, Fabric)
        sender = await open_app(network.private_address("a", 0))
        try:
            for _ in range(5):
                sender.sendto(bytes(200), network.public_address("b", PORT))
            await until(lambda: network.snapshot()["links"]["a->b"]["in_flight_packets"] == 5, what="5 copies on a->b")
            assert network.fail("a", "b") == 5
            assert network.snapshot()["links"]["a->b"]["dropped"]["flushed"] == 5
        finally:
            sender.close()


async def test_the_kernel_through_the_interface(kernel_support: KernelSupport) -> None:
    kernel = KernelTopology(triangle(SHAPED), support=kernel_support)
    assert kernel.ports == []
    assert kinds(await drive(kernel)) == EXPECTED_EVENTS
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"msim-{kernel.run_id}-" not in namespaces
    assert not (Path("/run/meshsim") / f"{kernel.run_id}.lock").exists()


async def test_the_kernel_snapshot_counts_what_its_qdiscs_sent(kernel_support: KernelSupport) -> None:
    async with KernelTopology(triangle(SHAPED), support=kernel_support) as kernel:
        send = f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(bytes(100), ({kernel.node_ip('b')!r}, 9))"
        for _ in range(3):
            kernel.run("a", [sys.executable, "-c", send])
        link = await until(lambda: (link := kernel.snapshot()["links"]["a->b"])["sent_packets"] == 3 and link,
                           what="3 frames sent on a->b")
        assert set(link["dropped"]) == {"qdisc"}
        assert link["up"] and link["profile"]["rate_bps"] == 8000


@pytest.mark.parametrize("backend", ["fabric", "kernel"])
def test_both_backends_implement_every_method(backend: str) -> None:
    cls = Fabric if backend == "fabric" else KernelTopology
    assert issubclass(cls, Network) and not getattr(cls, "__abstractmethods__", None)
