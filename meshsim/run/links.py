"""The run's network: what a scenario does to its links, and the timing the gateways derive from them.

Scenarios run on the userspace `Fabric` (the kernel backend is not wired
to them: the report's physical bound needs the fabric's per-packet events);
everything after `open_network` goes through the `Network` interface.

Timers follow the path: a device's `LinkBudget` is its route to the
homeserver taken as one store-and-forward link (`path_budget`), and the
server gateway falls back on the slowest of them (`slowest_budget`) for an
address it does not know.  Both are pure; `PathBudgets` keeps them as routes
change, and `FederationBudgets` does the same for each pair of homeservers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from coap_gateway.transport import LinkBudget

from ..model import LinkProfile, Node, Topology
from ..net import EventLog, Fabric, Network, PcapWriter
from .scenario import Action, GatewaySettings, LinkChange, Scenario, resolve_change


def open_network(scenario: Scenario, topology: Topology, *, events: EventLog | None,
                 capture: PcapWriter | None) -> Network:
    """The network a run uses (not started): the fabric, listening on the scenario's CoAP
    port (and its federation port, with several homeservers)."""
    ports = [scenario.network.coap_port]
    if len(scenario.homeservers) > 1:
        ports.append(scenario.network.federation_port)
    return Fabric(topology, ports=ports, events=events, capture=capture)


def change_links(network: Network, scenario: Scenario, change: LinkChange) -> None:
    """A ``[[phase.link]]`` (or ``set_link`` action) change: queues keep their times."""
    for a, b, forward, backward, weight in resolve_change(scenario, change, network.topology):
        network.set_link(a, b, forward, reverse=backward, weight=weight)


def act(network: Network, scenario: Scenario, action: Action) -> int:
    """Run a phase action now; returns the copies it lost."""
    if action.do == "partition":
        return network.partition([list(g) for g in action.groups])
    if action.do == "fail":
        assert action.between is not None
        return network.fail(*action.between)
    if action.do == "heal":
        if action.between is None:
            network.heal_all()
        else:
            network.heal(*action.between)
        return 0
    assert action.change is not None
    change_links(network, scenario, action.change)
    return 0


# ---------------------------------------------------------------- budgets


def path_budget(forward: Sequence[LinkProfile], backward: Sequence[LinkProfile], *,
                max_retransmit: int = 4, max_frame: int = 1152) -> LinkBudget:
    """The `LinkBudget` of a multi-hop path, as one equivalent link.

    Each hop stores and forwards, so a frame of B bytes takes
    Σ (B + overhead)·8 / rate_i over the path: the equivalent rate is
    1 / Σ(1/rate_i) (unshaped hops cost nothing), taken in the slower
    direction.  Latency is the one-way sum of delays plus jitters, the
    larger direction's; the overhead is the largest hop's.
    """
    def rate(path: Sequence[LinkProfile]) -> float | None:
        rated = [p.rate_bps for p in path if p.rate_bps is not None]
        return 1.0 / sum(1.0 / r for r in rated) if rated else None

    rates = [r for r in (rate(forward), rate(backward)) if r is not None]
    hops = [*forward, *backward]
    return LinkBudget(
        rate_bps=min(rates) if rates else None,
        frame_overhead=max((max(0, p.overhead) for p in hops), default=0),
        latency=max(sum(p.delay + p.jitter for p in path) for path in (forward, backward)),
        max_frame=max_frame,
        max_retransmit=max_retransmit,
    )


def slowest_budget(budgets: Sequence[LinkBudget]) -> LinkBudget:
    """One budget that covers every path (a server gateway serves all its clients on one link)."""
    if not budgets:
        raise ValueError("no budgets")
    rated = [b.rate_bps for b in budgets if b.rate_bps is not None]
    first = budgets[0]
    return LinkBudget(
        rate_bps=min(rated) if rated else None,
        frame_overhead=max(b.frame_overhead for b in budgets),
        latency=max(b.latency for b in budgets),
        max_frame=first.max_frame,
        max_retransmit=max(b.max_retransmit for b in budgets),
    )


def route_budget(topology: Topology, a: str, b: str, settings: GatewaySettings) -> LinkBudget | None:
    """The budget of the routes between nodes `a` and `b` now; None without one (partitioned)."""
    forward = topology.route(a, b)
    backward = topology.route(b, a)
    if forward is None or backward is None:
        return None
    return path_budget([link.profile for link in forward], [link.profile for link in backward],
                       max_retransmit=settings.max_retransmit, max_frame=settings.max_frame)


@dataclass(frozen=True)
class BudgetChanges:
    """What `PathBudgets.refresh` found: devices whose budget changed, and the server's if it did."""

    devices: dict[str, LinkBudget]
    server: LinkBudget | None


class PathBudgets:
    """Each device's budget from its route to the homeserver, and the slowest of them.

    `devices` names the device nodes (a client per user); a device that has
    no route (partitioned) keeps the budget it had.
    """

    def __init__(self, topology: Topology, homeserver: Node, devices: Mapping[str, Node],
                 settings: GatewaySettings) -> None:
        self._topology = topology
        self._homeserver = homeserver
        self._devices = dict(devices)
        self._settings = settings
        first = {name: self.of_path(node) for name, node in self._devices.items()}
        #: the budget of each device's path, by device name
        self.devices: dict[str, LinkBudget] = {name: budget or LinkBudget() for name, budget in first.items()}
        #: the server's: the slowest path (or the defaults with no device)
        self.server = slowest_budget([b for b in first.values() if b is not None] or [LinkBudget()])

    def of_path(self, node: Node) -> LinkBudget | None:
        """The budget of the path between `node` and the homeserver now; None without one."""
        return route_budget(self._topology, node.name, self._homeserver.name, self._settings)

    def refresh(self) -> BudgetChanges:
        """Re-derive every budget from the routes as they are now; what changed."""
        changed: dict[str, LinkBudget] = {}
        for name, node in self._devices.items():
            budget = self.of_path(node)
            if budget is None or budget == self.devices[name]:
                continue  # partitioned (keep the timers it had) or unchanged
            changed[name] = self.devices[name] = budget
        server = None
        if self.devices:
            slowest = slowest_budget(list(self.devices.values()))
            if changed or slowest != self.server:
                server = self.server = slowest
        return BudgetChanges(changed, server)

    def for_address(self, address: Hashable) -> LinkBudget:
        """The budget of the device whose frames come from `address` (the slowest if unknown)."""
        node = self._topology.node_by_public_ip(address[0]) if isinstance(address, tuple) else None
        for name, device in self._devices.items():
            if node is not None and device == node:
                return self.devices[name]
        return self.server


class FederationBudgets:
    """Each pair of homeserver nodes' budget, from the routes between them.

    `homeservers` maps a federation gateway's Noise static key to its node; a
    pair with no route (partitioned) keeps the budget it had.
    """

    def __init__(self, topology: Topology, homeservers: Mapping[bytes, Node], settings: GatewaySettings) -> None:
        self._topology = topology
        self._nodes = dict(homeservers)
        self._settings = settings
        self.pairs: dict[frozenset[bytes], LinkBudget] = {}
        self.refresh()

    def refresh(self) -> bool:
        """Re-derive every pair's budget; whether any changed."""
        changed = False
        keys = sorted(self._nodes)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                budget = route_budget(self._topology, self._nodes[a].name, self._nodes[b].name, self._settings)
                pair = frozenset((a, b))
                if budget is not None and budget != self.pairs.get(pair):
                    self.pairs[pair] = budget
                    changed = True
        return changed

    def lookup(self, mine: bytes) -> Callable[[bytes], LinkBudget | None]:
        """For the gateway whose key is `mine`: a peer's budget by the peer's key."""
        return lambda peer: self.pairs.get(frozenset((mine, peer)))

    def slowest(self, mine: bytes) -> LinkBudget:
        """The slowest of `mine`'s pairs (its link's own budget)."""
        budgets = [b for pair, b in self.pairs.items() if mine in pair]
        return slowest_budget(budgets) if budgets else LinkBudget()
