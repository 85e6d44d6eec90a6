"""Nodes, links and routes, as a sans-I/O state machine.

A `Topology` is an undirected networkx graph of nodes.  Every edge carries
two directed links (a→b and b→a), each its own `LinkModel` with its own
queue, serialiser and random streams, seeded from (run seed, "a->b").  The two
directions may have different profiles.

Addressing: node number N (1..254) has a *public* address ``public_base + N``
(127.0.0.N by default), which other nodes send to, and a *private* address
``private_base + N`` (127.1.0.N), which its applications bind to and send
from.  The fabric (`meshsim.net.Fabric`) owns the public addresses; this module
only does the arithmetic.

Routing: a route minimises the sum of the edges' `weight` (default 1, so
routes are shortest in hops) over the edges that are up.  Weights are
explicit on purpose: deriving them from delay or rate would move routes
whenever a scenario reshapes a link.  Ties are broken by networkx's Dijkstra,
which depends only on the order nodes and links were added, so runs repeat.
Routes are cached and the cache is dropped on every change.

Time: every method that touches a link takes `now`.  A `LinkModel` refuses
time going backwards; `DirectedLink` clamps each call to the latest time the
link has seen instead.  The fabric offers a forwarded copy at the time the
previous hop delivered it, which can be a little before an ingress that the
event loop happened to handle first; the clamp makes that copy enter the
link at the later time (an error bounded by the loop's lateness).

Failure: `fail(a, b)` takes both directions down as a physical failure:
whatever that link was carrying is lost (returned so the caller can cancel
it, counted as "flushed"); every other link's queue is untouched.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import networkx as nx

from .link import LinkModel, OfferResult, Scheduled
from .profile import LinkProfile

#: node numbers are the last octet of a /24
MAX_NODE_INDEX = 254
DEFAULT_PUBLIC_BASE = "127.0.0.0"
DEFAULT_PRIVATE_BASE = "127.1.0.0"


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    index: int
    #: the address other nodes send to (the fabric's)
    public_ip: str
    #: the address this node's applications bind to
    private_ip: str


def link_id(src: str, dst: str) -> str:
    return f"{src}->{dst}"


class DirectedLink:
    """One direction of an edge: a `LinkModel` whose clock never goes backwards."""

    __slots__ = ("dst", "id", "last_time", "model", "src")

    def __init__(self, src: str, dst: str, profile: LinkProfile, *, seed: int) -> None:
        self.id = link_id(src, dst)
        self.src = src
        self.dst = dst
        self.model = LinkModel(profile, seed=seed, link_id=self.id)
        #: the latest time this link has seen
        self.last_time = -math.inf

    def _clamp(self, now: float) -> float:
        self.last_time = max(self.last_time, now)
        return self.last_time

    def offer(self, now: float, size: int, payload: bytes | None = None) -> OfferResult:
        """Offer a copy at `now`, or at the link's latest time if that is later."""
        return self.model.offer(self._clamp(now), size, payload)

    @property
    def profile(self) -> LinkProfile:
        return self.model.profile

    @property
    def is_down(self) -> bool:
        return self.model.is_down

    def __repr__(self) -> str:
        return f"<DirectedLink {self.id}{' down' if self.is_down else ''}>"


#: a copy a failed link was carrying, which the caller must cancel
Cancelled = tuple[DirectedLink, Scheduled]


class Topology:
    """Nodes, edges with two directed links each, and shortest-path routes."""

    def __init__(
        self,
        *,
        seed: int = 0,
        public_base: str = DEFAULT_PUBLIC_BASE,
        private_base: str = DEFAULT_PRIVATE_BASE,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, not {seed!r}")
        self.seed = seed
        self._public_base = ipaddress.IPv4Address(public_base)
        self._private_base = ipaddress.IPv4Address(private_base)
        public_range = range(int(self._public_base) + 1, int(self._public_base) + MAX_NODE_INDEX + 1)
        private_range = range(int(self._private_base) + 1, int(self._private_base) + MAX_NODE_INDEX + 1)
        if set(public_range) & set(private_range) or public_range[-1] > 0xFFFFFFFF or private_range[-1] > 0xFFFFFFFF:
            raise ValueError("public and private address ranges must not overlap and must fit IPv4")
        self._graph = nx.Graph()
        self._nodes: dict[str, Node] = {}
        self._by_index: dict[int, Node] = {}
        self._by_public: dict[str, Node] = {}
        self._by_private: dict[str, Node] = {}
        self._links: dict[str, DirectedLink] = {}
        # source node -> {destination node -> path of node names}
        self._paths: dict[str, dict[str, list[str]]] = {}
        #: bumped on every change that may move a route
        self.version = 0

    # ------------------------------------------------------------ building

    def add_node(self, name: str, index: int | None = None) -> Node:
        """Add a node; `index` defaults to the smallest free number from 1."""
        if not isinstance(name, str) or not name or "->" in name:
            raise ValueError(f"node names must be non-empty strings without '->', not {name!r}")
        if name in self._nodes:
            raise ValueError(f"node {name!r} exists")
        if index is None:
            index = next((i for i in range(1, MAX_NODE_INDEX + 1) if i not in self._by_index), None)
            if index is None:
                raise ValueError(f"no free node number (at most {MAX_NODE_INDEX} nodes)")
        if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index <= MAX_NODE_INDEX:
            raise ValueError(f"node index must be an int in 1..{MAX_NODE_INDEX}, not {index!r}")
        if index in self._by_index:
            raise ValueError(f"node index {index} is taken by {self._by_index[index].name!r}")
        node = Node(
            name=name,
            index=index,
            public_ip=str(self._public_base + index),
            private_ip=str(self._private_base + index),
        )
        self._nodes[name] = node
        self._by_index[index] = node
        self._by_public[node.public_ip] = node
        self._by_private[node.private_ip] = node
        self._graph.add_node(name)
        self._changed()
        return node

    def add_link(
        self,
        a: str,
        b: str,
        profile: LinkProfile,
        *,
        reverse: LinkProfile | None = None,
        weight: float = 1.0,
    ) -> tuple[DirectedLink, DirectedLink]:
        """Connect `a` and `b`: a→b uses `profile`, b→a uses `reverse` (default: the same)."""
        self._require(a)
        self._require(b)
        if a == b:
            raise ValueError(f"a link needs two different nodes, not {a!r} twice")
        if self._graph.has_edge(a, b):
            raise ValueError(f"nodes {a!r} and {b!r} are already linked")
        _check_weight(weight)
        forward = DirectedLink(a, b, profile, seed=self.seed)
        backward = DirectedLink(b, a, reverse if reverse is not None else profile, seed=self.seed)
        self._links[forward.id] = forward
        self._links[backward.id] = backward
        self._graph.add_edge(a, b, weight=float(weight), up=True)
        self._changed()
        return forward, backward

    # ------------------------------------------------------------ lookups

    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def node(self, name: str) -> Node:
        return self._require(name)

    def node_by_public_ip(self, ip: str) -> Node | None:
        return self._by_public.get(ip)

    def node_by_private_ip(self, ip: str) -> Node | None:
        return self._by_private.get(ip)

    @property
    def links(self) -> list[DirectedLink]:
        """Every directed link, in the order they were added (a→b before b→a)."""
        return list(self._links.values())

    def link(self, src: str, dst: str) -> DirectedLink:
        try:
            return self._links[link_id(src, dst)]
        except KeyError:
            raise KeyError(f"no link {link_id(src, dst)}") from None

    def edges(self) -> list[tuple[str, str]]:
        """Every undirected edge as (a, b) in the order given to `add_link`."""
        return [(link.src, link.dst) for i, link in enumerate(self._links.values()) if i % 2 == 0]

    def weight(self, a: str, b: str) -> float:
        return self._edge(a, b)["weight"]

    def is_up(self, a: str, b: str) -> bool:
        return self._edge(a, b)["up"]

    @property
    def graph(self) -> nx.Graph:
        """A read-only view of the graph (edge attributes: weight, up)."""
        return self._graph.copy(as_view=True)

    # ------------------------------------------------------------ routing

    def path(self, src: str, dst: str) -> list[str] | None:
        """The node names from `src` to `dst` on the current route, or None if there is none."""
        self._require(src)
        self._require(dst)
        paths = self._paths.get(src)
        if paths is None:
            paths = nx.single_source_dijkstra_path(self._graph, src, weight=_weight_if_up)
            self._paths[src] = paths
        return paths.get(dst)

    def route(self, src: str, dst: str) -> list[DirectedLink] | None:
        """The directed links from `src` to `dst` ([] when they are the same node), or None."""
        nodes = self.path(src, dst)
        if nodes is None:
            return None
        return [self._links[link_id(u, v)] for u, v in itertools.pairwise(nodes)]

    def next_hop(self, at: str, dst: str) -> DirectedLink | None:
        """The link a packet at `at` for `dst` takes next; None at `dst` or without a route."""
        nodes = self.path(at, dst)
        if nodes is None or len(nodes) < 2:
            return None
        return self._links[link_id(nodes[0], nodes[1])]

    # ------------------------------------------------------------ changes

    def set_link(
        self,
        a: str,
        b: str,
        profile: LinkProfile | None = None,
        *,
        now: float,
        reverse: LinkProfile | None = None,
        weight: float | None = None,
    ) -> list[DirectedLink]:
        """Change a link from `now` on: a→b gets `profile`, b→a gets `reverse`
        (default: `profile`), the edge gets `weight`; None leaves a part as it is.

        Copies already admitted keep their times; nothing is flushed.  Returns
        the directed links whose profile changed.
        """
        edge = self._edge(a, b)
        changed: list[DirectedLink] = []
        for link, new in ((self.link(a, b), profile), (self.link(b, a), reverse if reverse is not None else profile)):
            if new is not None:
                link.model.set_profile(new, link._clamp(now))
                changed.append(link)
        if weight is not None:
            _check_weight(weight)
            if float(weight) != edge["weight"]:
                edge["weight"] = float(weight)
                self._changed()
        return changed

    def fail(self, a: str, b: str, *, now: float) -> list[Cancelled]:
        """Take the edge down both ways at `now`; returns the copies it was carrying.

        A no-op (returning []) if it is already down.
        """
        edge = self._edge(a, b)
        if not edge["up"]:
            return []
        edge["up"] = False
        cancelled: list[Cancelled] = []
        for link in (self.link(a, b), self.link(b, a)):
            cancelled += [(link, copy) for copy in link.model.set_down(link._clamp(now), flush=True)]
        self._changed()
        return cancelled

    def heal(self, a: str, b: str, *, now: float) -> bool:
        """Bring the edge back up both ways at `now`; False if it was already up."""
        edge = self._edge(a, b)
        if edge["up"]:
            return False
        edge["up"] = True
        for link in (self.link(a, b), self.link(b, a)):
            link.model.set_up(link._clamp(now))
        self._changed()
        return True

    def partition(self, groups: Iterable[Iterable[str]], *, now: float) -> tuple[list[tuple[str, str]], list[Cancelled]]:
        """Fail every edge between different groups.

        Nodes in no group form one more group together.  A node may be in one
        group only.  Returns the edges that went down and the copies they
        were carrying.
        """
        group_of: dict[str, int] = {}
        group_list = [list(group) for group in groups]
        for number, group in enumerate(group_list):
            for name in group:
                self._require(name)
                if name in group_of:
                    raise ValueError(f"node {name!r} is in more than one group")
                group_of[name] = number
        rest = len(group_list)
        failed: list[tuple[str, str]] = []
        cancelled: list[Cancelled] = []
        for a, b in self.edges():
            if group_of.get(a, rest) != group_of.get(b, rest) and self.is_up(a, b):
                failed.append((a, b))
                cancelled += self.fail(a, b, now=now)
        return failed, cancelled

    def heal_all(self, *, now: float) -> list[tuple[str, str]]:
        """Heal every failed edge; returns those that came back up."""
        return [(a, b) for a, b in self.edges() if self.heal(a, b, now=now)]

    # ------------------------------------------------------------ helpers

    def _require(self, name: str) -> Node:
        try:
            return self._nodes[name]
        except (KeyError, TypeError):
            raise KeyError(f"no node {name!r}") from None

    def _edge(self, a: str, b: str) -> dict:
        self._require(a)
        self._require(b)
        try:
            return self._graph.edges[a, b]
        except KeyError:
            raise KeyError(f"no link between {a!r} and {b!r}") from None

    def _changed(self) -> None:
        self._paths.clear()
        self.version += 1

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())


def _weight_if_up(u: str, v: str, attributes: dict) -> float | None:
    # networkx hides an edge whose weight function returns None
    return attributes["weight"] if attributes["up"] else None


def _check_weight(weight: object) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"weight must be a finite number > 0, not {weight!r}")
