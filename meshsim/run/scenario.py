"""Scenario files (TOML) parsed and validated into frozen dataclasses, sans-I/O.

A scenario says what to build (nodes, links, link profiles, homeservers,
clients), what to do (phases: reshape links, partition and heal, send
messages) and what must hold afterwards (assertions).  The format is
documented in docs/meshsim.md ("Scenarios"); `parse_scenario` is the
reference.

Every error is a `ScenarioError` naming the key path that is wrong
(``phase[1].send[0].from: no client 'alise' (clients: alice, bob)``), so a
researcher can fix the file without reading this code.  Unknown keys are
errors too (a typo must not be silently ignored, as the 2019 meshsim did with
``packet_loss``).

Homeservers are a list (``[[homeserver]]``), at most one per node: with
several, each runs behind its own federation gateway and rooms may span
them (federation crosses the shaped links, issue 12).  A client on its
homeserver's own node talks to it directly (a fast local link, no gateway);
a client on another node goes through its client gateway.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from coap_gateway.codec import DEFAULT_PROFILE
from coap_gateway.transport import parse_netem_time

from ..model import MAX_NODE_INDEX, LinkProfile, Topology, describe_profile

#: bytes counted per packet besides the UDP payload (Ethernet + IPv4 + UDP), as `meshsim link`
DEFAULT_OVERHEAD = 42
DEFAULT_PHASE_TIMEOUT = 30 * 60.0
DEFAULT_COAP_PORT = 5683
#: where federation gateways talk to each other (docs/operator.md uses the same)
DEFAULT_FEDERATION_PORT = 5684

AssertionCheck = Literal["delivered", "exactly_once", "latency"]
ASSERTION_CHECKS: tuple[str, ...] = get_args(AssertionCheck)
ActionKind = Literal["partition", "heal", "fail", "set_link", "restart"]
ACTION_KINDS: tuple[str, ...] = get_args(ActionKind)

_USER_RE = re.compile(r"^[a-z0-9._=\-/]+$")
_ID_RE = re.compile(r"^[A-Za-z0-9._\-]+$")
_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|ms|s|min|h)\s*$")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


class ScenarioError(ValueError):
    """A scenario that cannot be run; `path` is the key path at fault."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class NodeSpec:
    name: str
    #: the node number (public 127.0.0.N); None: the first free one
    index: int | None = None
    #: where the node is drawn and, with `[topology] range`, what it links to
    position: tuple[float, float] | None = None


@dataclass(frozen=True)
class LinkSpec:
    a: str
    b: str
    #: a→b (and b→a unless `reverse`): a name in `Scenario.profiles`
    profile: str
    reverse: str | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class HomeserverSpec:
    #: the Matrix server name (user IDs are @user:name)
    name: str
    #: the node running Synapse, its server gateway and its federation gateway
    node: str


@dataclass(frozen=True)
class ClientSpec:
    #: the Matrix localpart
    user: str
    #: the device node running matrix-nio and its client gateway (none on the
    #: homeserver's own node: there nio talks to Synapse directly)
    node: str
    homeserver: str


@dataclass(frozen=True)
class RoomSpec:
    name: str
    #: the first member creates the room and invites the others
    members: tuple[str, ...]


@dataclass(frozen=True)
class LinkChange:
    """A profile or weight change; `between` None means every link."""

    between: tuple[str, str] | None
    profile: str | None = None
    reverse: str | None = None
    weight: float | None = None


@dataclass(frozen=True)
class Action:
    """Something done to the network `at` seconds into a phase."""

    at: float
    do: ActionKind
    #: fail / heal / set_link: one link; heal without it heals every link
    between: tuple[str, str] | None = None
    #: partition: node groups (nodes in no group form one more group)
    groups: tuple[tuple[str, ...], ...] = ()
    #: set_link
    change: LinkChange | None = None
    #: restart: the homeserver whose gateways stop and start again (keys and
    #: state directories kept, as an operator's restart keeps them)
    homeserver: str | None = None


@dataclass(frozen=True)
class Send:
    """One message: `sender` posts `body` to `room`."""

    id: str
    sender: str
    room: str
    body: str
    #: seconds after the phase starts (after `after` is delivered, if given)
    at: float = 0.0
    #: the id of an earlier message that every recipient must have first
    after: str | None = None
    #: the ids of earlier copies of the same [[phase.send]] (count > 1) sent sequentially
    group: str | None = None


@dataclass(frozen=True)
class Phase:
    name: str
    #: the runner's setup: register users, create and join rooms, sync until everyone sees everyone
    setup: bool = False
    links: tuple[LinkChange, ...] = ()
    actions: tuple[Action, ...] = ()
    sends: tuple[Send, ...] = ()
    #: the phase lasts at least this long (seconds)
    duration: float | None = None
    #: and at most this long, even if messages are still on their way
    timeout: float = DEFAULT_PHASE_TIMEOUT


@dataclass(frozen=True)
class AssertionSpec:
    check: AssertionCheck
    #: message ids (a repeated send's id covers all its copies); None: every message
    messages: tuple[str, ...] | None = None
    #: latency: the longest send-to-receipt time allowed, seconds
    within: float | None = None


@dataclass(frozen=True)
class GatewaySettings:
    #: the codec profile both gateways use (coap_gateway.profile)
    profile: str = DEFAULT_PROFILE
    #: Noise-protected frames (True) or plaintext CoAP
    secure: bool = True
    #: CoAP retransmissions before a request fails (a lossy link needs more than RFC 7252's 4)
    max_retransmit: int = 4
    #: largest CoAP frame; larger messages go blockwise
    max_frame: int = 1152


@dataclass(frozen=True)
class FederationSettings:
    """How the run's Synapses federate over slow links (stock Synapse, its own options)."""

    #: Synapse's ``federation.client_timeout``: one federation request's whole time
    #: (its default 60 s carries ~750 B at 100 bit/s)
    client_timeout: float = 30 * 60.0
    #: Synapse's ``federation.destination_min_retry_interval``: its back-off after a
    #: destination failed (default 10 min, doubling)
    min_retry_interval: float = 30.0
    #: how long a federation gateway lets one request take end to end
    request_timeout: float = 30 * 60.0


@dataclass(frozen=True)
class NetworkSettings:
    coap_port: int = DEFAULT_COAP_PORT
    federation_port: int = DEFAULT_FEDERATION_PORT
    public_base: str = "127.0.0.0"
    private_base: str = "127.1.0.0"


@dataclass(frozen=True)
class MatrixSettings:
    #: the long-poll timeout of every client's sync loop
    sync_timeout: float = 30.0
    #: how long nio waits for one HTTP response
    request_timeout: float = 15 * 60.0
    #: a failed send is retried this often with the same transaction id
    send_retries: int = 3
    #: a sync filter (inline JSON object) or None for nio's default
    sync_filter: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    profiles: Mapping[str, LinkProfile]
    nodes: tuple[NodeSpec, ...]
    links: tuple[LinkSpec, ...]
    homeservers: tuple[HomeserverSpec, ...]
    clients: tuple[ClientSpec, ...]
    rooms: tuple[RoomSpec, ...]
    phases: tuple[Phase, ...]
    assertions: tuple[AssertionSpec, ...]
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    matrix: MatrixSettings = field(default_factory=MatrixSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    source: str | None = None

    # -------------------------------------------------------- lookups

    def client(self, user: str) -> ClientSpec:
        return next(c for c in self.clients if c.user == user)

    def room(self, name: str) -> RoomSpec:
        return next(r for r in self.rooms if r.name == name)

    def homeserver(self, name: str) -> HomeserverSpec:
        return next(h for h in self.homeservers if h.name == name)

    @property
    def sends(self) -> list[Send]:
        return [send for phase in self.phases for send in phase.sends]

    def recipients(self, send: Send) -> tuple[str, ...]:
        """Who must receive `send`: every other member of its room."""
        return tuple(m for m in self.room(send.room).members if m != send.sender)

    def message_ids(self, selector: Iterable[str] | None) -> list[str]:
        """Expand ids (a repeated send's id stands for all its copies); None: all."""
        sends = self.sends
        if selector is None:
            return [s.id for s in sends]
        wanted = set(selector)
        return [s.id for s in sends if s.id in wanted or s.group in wanted]

    def user_id(self, user: str) -> str:
        return f"@{user}:{self.client(user).homeserver}"

    def is_local(self, client: ClientSpec) -> bool:
        """The client sits on its homeserver's node (talks to Synapse directly)."""
        return client.node == self.homeserver(client.homeserver).node

    def room_homeservers(self, room: RoomSpec) -> list[str]:
        """The homeservers of a room's members, the creator's first."""
        names: list[str] = []
        for member in room.members:
            server = self.client(member).homeserver
            if server not in names:
                names.append(server)
        return names


# ---------------------------------------------------------------- parsing


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError("", f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_scenario(text, source=str(path))


def parse_scenario(text: str, *, source: str | None = None) -> Scenario:
    """Validate a scenario given as TOML text; raises ScenarioError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError("", f"not valid TOML: {exc}") from None
    return scenario_from_dict(doc, source=source)


def scenario_from_dict(doc: Mapping[str, Any], *, source: str | None = None) -> Scenario:
    top = _Table(doc, "")
    top.only(
        "scenario", "profiles", "node", "link", "topology", "homeserver", "client", "room", "phase", "assert",
        "gateway", "network", "matrix", "federation",
    )
    meta = top.table("scenario")
    meta.only("name", "description", "seed")
    name = meta.string("name", default=Path(source).stem if source else "scenario")
    description = meta.string("description", default="")
    seed = meta.integer("seed", default=0)

    profiles = _profiles(top.table("profiles"))
    nodes = _nodes(top.array("node", required=True))
    node_names = [n.name for n in nodes]
    links = _links(top.array("link"), node_names, profiles)
    links = _auto_links(top.table("topology"), nodes, links, profiles)
    if not links:
        raise ScenarioError("link", "no links: give [[link]] tables or node positions with [topology] range")
    homeservers = _homeservers(top.array("homeserver", required=True), node_names)
    clients = _clients(top.array("client", required=True), node_names, homeservers)
    rooms = _rooms(top.array("room"), clients)
    phases = _phases(top.array("phase"), node_names, profiles, clients, rooms, links,
                     [h.name for h in homeservers])
    all_ids = [s.id for p in phases for s in p.sends] + [s.group for p in phases for s in p.sends if s.group]
    assertions = _assertions(top.array("assert"), set(all_ids))
    gateway = _gateway(top.table("gateway"))
    network = _network(top.table("network"))
    matrix = _matrix(top.table("matrix"))
    federation = _federation(top.table("federation"))
    scenario = Scenario(
        name=name, description=description, seed=seed, profiles=profiles, nodes=nodes, links=links,
        homeservers=homeservers, clients=clients, rooms=rooms, phases=phases, assertions=assertions,
        gateway=gateway, network=network, matrix=matrix, federation=federation, source=source,
    )
    topology = build_topology(scenario)
    for i, client in enumerate(clients):
        server_node = scenario.homeserver(client.homeserver).node
        if client.node != server_node and topology.path(client.node, server_node) is None:
            raise ScenarioError(f"client[{i}].node", f"no route from {client.node!r} to homeserver node {server_node!r}")
    for i, room in enumerate(rooms):
        servers = scenario.room_homeservers(room)
        if len(servers) > 1 and not gateway.secure:
            raise ScenarioError(f"room[{i}].members", "a room across homeservers needs federation, which runs in "
                                "secure mode only (gateway.secure = true)")
        for server in servers[1:]:
            a, b = scenario.homeserver(servers[0]).node, scenario.homeserver(server).node
            if topology.path(a, b) is None:
                raise ScenarioError(f"room[{i}].members", f"no route between homeserver nodes {a!r} and {b!r}")
    if network.federation_port == network.coap_port and len(homeservers) > 1:
        raise ScenarioError("network.federation_port", "must differ from coap_port")
    return scenario


# ---------------------------------------------------------------- sections


def _profiles(table: _Table) -> dict[str, LinkProfile]:
    profiles: dict[str, LinkProfile] = {}
    for name in table.data:
        path = table.path(name)
        value = table.raw(name)
        if isinstance(value, str):
            profiles[name] = _profile(path, value, {})
        elif isinstance(value, Mapping):
            spec = _Table(value, path)
            spec.only("netem", "overhead", "limit_packets", "limit_bytes", "limit_seconds")
            options = {
                "overhead": spec.integer("overhead", default=DEFAULT_OVERHEAD),
                "limit_packets": spec.integer("limit_packets", default=None, minimum=0),
                "limit_bytes": spec.integer("limit_bytes", default=None, minimum=0),
                "limit_seconds": spec.duration("limit_seconds", default=None),
            }
            profiles[name] = _profile(path, spec.string("netem", default=""), options)
        else:
            raise ScenarioError(path, 'a profile is netem arguments ("rate 100bit delay 1s") or a table with netem = "..."')
    return profiles


def _profile(path: str, netem: str, options: dict[str, Any]) -> LinkProfile:
    try:
        profile = LinkProfile.from_netem_args(netem.split())
        return replace(
            profile,
            overhead=profile.overhead + options.get("overhead", DEFAULT_OVERHEAD),
            limit_packets=options.get("limit_packets") if options.get("limit_packets") is not None else profile.limit_packets,
            limit_bytes=options.get("limit_bytes"),
            limit_seconds=options.get("limit_seconds"),
        )
    except ValueError as exc:
        raise ScenarioError(path, str(exc)) from None


def _nodes(entries: list[_Table]) -> tuple[NodeSpec, ...]:
    nodes: list[NodeSpec] = []
    seen: dict[str, str] = {}
    indices: dict[int, str] = {}
    if len(entries) > MAX_NODE_INDEX:
        raise ScenarioError("node", f"{len(entries)} nodes: at most {MAX_NODE_INDEX}")
    for entry in entries:
        entry.only("name", "index", "position")
        name = entry.string("name")
        if not name or "->" in name or name.strip() != name:
            raise ScenarioError(entry.path("name"), f"node names are non-empty, without '->' or surrounding spaces, not {name!r}")
        if name in seen:
            raise ScenarioError(entry.path("name"), f"node {name!r} is already defined at {seen[name]}")
        seen[name] = entry.where
        index = entry.integer("index", default=None, minimum=1, maximum=MAX_NODE_INDEX)
        if index is not None:
            if index in indices:
                raise ScenarioError(entry.path("index"), f"index {index} is taken by node {indices[index]!r}")
            indices[index] = name
        position = None
        if entry.has("position"):
            raw = entry.raw("position")
            if not (isinstance(raw, list) and len(raw) == 2 and all(_is_number(v) for v in raw)):
                raise ScenarioError(entry.path("position"), f"a position is [x, y], not {raw!r}")
            position = (float(raw[0]), float(raw[1]))
        nodes.append(NodeSpec(name=name, index=index, position=position))
    return tuple(nodes)


def _pair(table: _Table, key: str, nodes: list[str], *, required: bool = True) -> tuple[str, str] | None:
    if not table.has(key):
        if required:
            raise ScenarioError(table.path(key), "missing: give two node names, e.g. between = [\"a\", \"b\"]")
        return None
    raw = table.raw(key)
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, str) for v in raw)):
        raise ScenarioError(table.path(key), f"expected two node names, not {raw!r}")
    for value in raw:
        _known(table.path(key), value, nodes, "node")
    if raw[0] == raw[1]:
        raise ScenarioError(table.path(key), f"a link needs two different nodes, not {raw[0]!r} twice")
    return raw[0], raw[1]


def _profile_name(table: _Table, key: str, profiles: Mapping[str, LinkProfile], *, required: bool) -> str | None:
    if not table.has(key):
        if required:
            raise ScenarioError(table.path(key), "missing: name a profile from [profiles]")
        return None
    name = table.string(key)
    _known(table.path(key), name, list(profiles), "profile", where="[profiles]")
    return name


def _weight(table: _Table, default: float | None) -> float | None:
    weight = table.number("weight", default=default)
    if weight is not None and not (math.isfinite(weight) and weight > 0):
        raise ScenarioError(table.path("weight"), f"weight must be a number > 0, not {weight!r}")
    return weight


def _links(entries: list[_Table], nodes: list[str], profiles: Mapping[str, LinkProfile]) -> list[LinkSpec]:
    links: list[LinkSpec] = []
    seen: dict[frozenset[str], str] = {}
    for entry in entries:
        entry.only("between", "profile", "reverse", "weight")
        a, b = _pair(entry, "between", nodes)  # type: ignore[misc]
        key = frozenset((a, b))
        if key in seen:
            raise ScenarioError(entry.path("between"), f"{a!r} and {b!r} are already linked at {seen[key]}")
        seen[key] = entry.where
        links.append(LinkSpec(
            a=a, b=b,
            profile=_profile_name(entry, "profile", profiles, required=True),  # type: ignore[arg-type]
            reverse=_profile_name(entry, "reverse", profiles, required=False),
            weight=_weight(entry, 1.0),  # type: ignore[arg-type]
        ))
    return links


def _auto_links(table: _Table, nodes: tuple[NodeSpec, ...], links: list[LinkSpec],
                profiles: Mapping[str, LinkProfile]) -> tuple[LinkSpec, ...]:
    """With `[topology] range`, link every pair of positioned nodes that close (explicit links win)."""
    table.only("range", "profile")
    if not table.has("range"):
        if table.has("profile"):
            raise ScenarioError(table.path("profile"), "needs range: nodes closer than range are linked with this profile")
        return tuple(links)
    reach = table.number("range")
    if not (math.isfinite(reach) and reach > 0):
        raise ScenarioError(table.path("range"), f"range must be a number > 0, not {reach!r}")
    profile = _profile_name(table, "profile", profiles, required=True)
    unplaced = [n.name for n in nodes if n.position is None]
    if unplaced:
        raise ScenarioError(table.path("range"), f"every node needs a position to be linked by range; missing: {', '.join(unplaced)}")
    linked = {frozenset((link.a, link.b)) for link in links}
    auto = list(links)
    for i, first in enumerate(nodes):
        for second in nodes[i + 1:]:
            assert first.position is not None and second.position is not None
            if frozenset((first.name, second.name)) in linked:
                continue
            if math.dist(first.position, second.position) <= reach:
                auto.append(LinkSpec(a=first.name, b=second.name, profile=profile))  # type: ignore[arg-type]
    return tuple(auto)


def _homeservers(entries: list[_Table], nodes: list[str]) -> tuple[HomeserverSpec, ...]:
    homeservers: list[HomeserverSpec] = []
    for entry in entries:
        entry.only("name", "node")
        name = entry.string("name")
        if not re.fullmatch(r"[A-Za-z0-9.\-]+(:[0-9]+)?", name):
            raise ScenarioError(entry.path("name"), f"not a Matrix server name: {name!r}")
        if any(h.name == name for h in homeservers):
            raise ScenarioError(entry.path("name"), f"homeserver {name!r} is defined twice")
        node = entry.string("node")
        _known(entry.path("node"), node, nodes, "node")
        other = next((h.name for h in homeservers if h.node == node), None)
        if other is not None:
            raise ScenarioError(entry.path("node"), f"node {node!r} already runs homeserver {other!r} (one per node)")
        homeservers.append(HomeserverSpec(name=name, node=node))
    return tuple(homeservers)


def _clients(entries: list[_Table], nodes: list[str], homeservers: tuple[HomeserverSpec, ...]) -> tuple[ClientSpec, ...]:
    clients: list[ClientSpec] = []
    for entry in entries:
        entry.only("user", "node", "homeserver")
        user = entry.string("user")
        if not _USER_RE.fullmatch(user):
            raise ScenarioError(entry.path("user"), f"a Matrix localpart is lower-case letters, digits and ._=-/, not {user!r}")
        if any(c.user == user for c in clients):
            raise ScenarioError(entry.path("user"), f"client {user!r} is defined twice")
        node = entry.string("node")
        _known(entry.path("node"), node, nodes, "node")
        names = [h.name for h in homeservers]
        homeserver = entry.string("homeserver", default=names[0] if len(names) == 1 else None)
        _known(entry.path("homeserver"), homeserver, names, "homeserver")
        clients.append(ClientSpec(user=user, node=node, homeserver=homeserver))
    return tuple(clients)


def _rooms(entries: list[_Table], clients: tuple[ClientSpec, ...]) -> tuple[RoomSpec, ...]:
    users = [c.user for c in clients]
    rooms: list[RoomSpec] = []
    for entry in entries:
        entry.only("name", "members")
        name = entry.string("name")
        if not _ID_RE.fullmatch(name):
            raise ScenarioError(entry.path("name"), f"room names are letters, digits and ._-, not {name!r}")
        if any(r.name == name for r in rooms):
            raise ScenarioError(entry.path("name"), f"room {name!r} is defined twice")
        members = entry.strings("members")
        if not members:
            raise ScenarioError(entry.path("members"), "a room needs at least one member (the first creates it)")
        for i, member in enumerate(members):
            _known(f"{entry.path('members')}[{i}]", member, users, "client")
        if len(set(members)) != len(members):
            raise ScenarioError(entry.path("members"), "a member is listed twice")
        rooms.append(RoomSpec(name=name, members=tuple(members)))
    return tuple(rooms)


def _link_change(entry: _Table, nodes: list[str], profiles: Mapping[str, LinkProfile],
                 links: tuple[LinkSpec, ...], *, allow_all: bool) -> LinkChange:
    between = _pair(entry, "between", nodes, required=False)
    every = entry.boolean("all", default=False) if allow_all else False
    if allow_all and (between is None) == (not every):
        raise ScenarioError(entry.where, "give either between = [a, b] or all = true")
    if between is not None and not any({l.a, l.b} == set(between) for l in links):
        raise ScenarioError(entry.path("between"), f"there is no link between {between[0]!r} and {between[1]!r}")
    change = LinkChange(
        between=between,
        profile=_profile_name(entry, "profile", profiles, required=False),
        reverse=_profile_name(entry, "reverse", profiles, required=False),
        weight=_weight(entry, None),
    )
    if change.profile is None and change.reverse is None and change.weight is None:
        raise ScenarioError(entry.where, "changes nothing: give profile, reverse or weight")
    return change


def _phases(entries: list[_Table], nodes: list[str], profiles: Mapping[str, LinkProfile],
            clients: tuple[ClientSpec, ...], rooms: tuple[RoomSpec, ...], links: tuple[LinkSpec, ...],
            homeservers: list[str]) -> tuple[Phase, ...]:
    phases: list[Phase] = []
    if not entries or not entries[0].boolean("setup", default=False):
        # an implicit setup first, on the links as [[link]] defines them
        phases.append(Phase(name="setup", setup=True))
    users = [c.user for c in clients]
    ids: set[str] = set()
    bodies: dict[str, str] = {}
    for number, entry in enumerate(entries):
        entry.only("name", "setup", "link", "action", "send", "duration", "timeout")
        name = entry.string("name", default=f"phase{number + 1}")
        if any(p.name == name for p in phases):
            raise ScenarioError(entry.path("name"), f"phase {name!r} is defined twice")
        setup = entry.boolean("setup", default=False)
        if setup and number != 0:
            raise ScenarioError(entry.path("setup"), "the setup phase must be the first phase")
        changes = tuple(_link_change(e, nodes, profiles, links, allow_all=True) for e in entry.array("link"))
        actions = tuple(_action(e, nodes, profiles, links, homeservers) for e in entry.array("action"))
        sends: list[Send] = []
        for send_entry in entry.array("send"):
            if setup:
                raise ScenarioError(send_entry.where, "the setup phase sends nothing; put messages in a later phase")
            for send in _sends(send_entry, users, rooms, ids):
                if send.body in bodies:
                    raise ScenarioError(send_entry.path("body"), f"body {send.body!r} is also message {bodies[send.body]!r}'s: "
                                        "bodies must be unique so receipts can be matched")
                bodies[send.body] = send.id
                ids.add(send.id)
                if send.group:
                    ids.add(send.group)
                sends.append(send)
        duration = entry.duration("duration", default=None)
        timeout = entry.duration("timeout", default=DEFAULT_PHASE_TIMEOUT)
        if timeout <= 0:
            raise ScenarioError(entry.path("timeout"), "must be > 0")
        if duration is not None and duration > timeout:
            raise ScenarioError(entry.path("duration"), f"longer than the phase's timeout ({timeout:g} s)")
        for i, action in enumerate(actions):
            if action.at > timeout:
                raise ScenarioError(f"{entry.path('action')}[{i}].at", f"after the phase's timeout ({timeout:g} s)")
        phases.append(Phase(name=name, setup=setup, links=changes, actions=actions, sends=tuple(sends),
                            duration=duration, timeout=timeout))
    return tuple(phases)


def _action(entry: _Table, nodes: list[str], profiles: Mapping[str, LinkProfile], links: tuple[LinkSpec, ...],
            homeservers: list[str]) -> Action:
    entry.only("at", "do", "between", "groups", "profile", "reverse", "weight", "homeserver")
    at = entry.duration("at", default=0.0)
    do = entry.string("do")
    if do not in ACTION_KINDS:
        raise ScenarioError(entry.path("do"), f"unknown action {do!r}{_suggest(do, ACTION_KINDS)}; one of {', '.join(ACTION_KINDS)}")
    extra = {"partition": {"groups"}, "heal": {"between"}, "fail": {"between"},
             "set_link": {"between", "profile", "reverse", "weight"}, "restart": {"homeserver"}}[do]
    for key in ("between", "groups", "profile", "reverse", "weight", "homeserver"):
        if entry.has(key) and key not in extra:
            raise ScenarioError(entry.path(key), f"not used by do = {do!r}")
    if do == "partition":
        raw = entry.raw("groups") if entry.has("groups") else None
        if not (isinstance(raw, list) and raw and all(isinstance(g, list) and all(isinstance(n, str) for n in g) for g in raw)):
            raise ScenarioError(entry.path("groups"), 'expected lists of node names, e.g. groups = [["a", "b"], ["c"]]')
        seen: set[str] = set()
        for g, group in enumerate(raw):
            for n, name in enumerate(group):
                _known(f"{entry.path('groups')}[{g}][{n}]", name, nodes, "node")
                if name in seen:
                    raise ScenarioError(f"{entry.path('groups')}[{g}][{n}]", f"node {name!r} is in two groups")
                seen.add(name)
        return Action(at=at, do="partition", groups=tuple(tuple(g) for g in raw))
    if do == "heal":
        return Action(at=at, do="heal", between=_existing_pair(entry, nodes, links, required=False))
    if do == "fail":
        return Action(at=at, do="fail", between=_existing_pair(entry, nodes, links, required=True))
    if do == "restart":
        homeserver = entry.string("homeserver")
        _known(entry.path("homeserver"), homeserver, homeservers, "homeserver")
        return Action(at=at, do="restart", homeserver=homeserver)
    change = _link_change(entry, nodes, profiles, links, allow_all=False)
    if change.between is None:
        raise ScenarioError(entry.path("between"), "missing: set_link changes one link")
    return Action(at=at, do="set_link", between=change.between, change=change)


def _existing_pair(entry: _Table, nodes: list[str], links: tuple[LinkSpec, ...], *, required: bool) -> tuple[str, str] | None:
    pair = _pair(entry, "between", nodes, required=required)
    if pair is not None and not any({l.a, l.b} == set(pair) for l in links):
        raise ScenarioError(entry.path("between"), f"there is no link between {pair[0]!r} and {pair[1]!r}")
    return pair


def _sends(entry: _Table, users: list[str], rooms: tuple[RoomSpec, ...], ids: set[str]) -> list[Send]:
    entry.only("id", "from", "room", "body", "at", "after", "count", "interval")
    sender = entry.string("from")
    _known(entry.path("from"), sender, users, "client")
    own_rooms = [r.name for r in rooms if sender in r.members]
    if entry.has("room"):
        room = entry.string("room")
        _known(entry.path("room"), room, [r.name for r in rooms], "room")
        if room not in own_rooms:
            raise ScenarioError(entry.path("room"), f"{sender!r} is not a member of room {room!r}")
    elif len(own_rooms) == 1:
        room = own_rooms[0]
    else:
        raise ScenarioError(entry.path("room"), f"missing: {sender!r} is in {len(own_rooms)} rooms ({', '.join(own_rooms) or 'none'})")
    default_id = f"m{len(ids) + 1}"
    send_id = entry.string("id", default=default_id)
    if not _ID_RE.fullmatch(send_id) or "#" in send_id:
        raise ScenarioError(entry.path("id"), f"message ids are letters, digits and ._-, not {send_id!r}")
    if send_id in ids:
        raise ScenarioError(entry.path("id"), f"message id {send_id!r} is used twice")
    body = entry.string("body", default=f"message {send_id}")
    if not body:
        raise ScenarioError(entry.path("body"), "an empty body cannot be matched at the receiver")
    at = entry.duration("at", default=0.0)
    after = entry.string("after", default=None)
    if after is not None and after not in ids:
        raise ScenarioError(entry.path("after"), f"no earlier message {after!r}{_suggest(after, ids)}")
    count = entry.integer("count", default=1, minimum=1, maximum=10_000)
    interval = entry.duration("interval", default=None)
    if count == 1:
        if interval is not None:
            raise ScenarioError(entry.path("interval"), "only with count > 1")
        return [Send(id=send_id, sender=sender, room=room, body=body, at=at, after=after)]
    # copy i+1 goes `interval` after copy i is sent (or once copy i is delivered, without interval)
    sends: list[Send] = []
    for i in range(count):
        copy_id = f"{send_id}#{i + 1}"
        copy_body = body.replace("{i}", str(i + 1)) if "{i}" in body else f"{body} #{i + 1}"
        if i == 0:
            sends.append(Send(id=copy_id, sender=sender, room=room, body=copy_body, at=at, after=after, group=send_id))
        elif interval is None:
            sends.append(Send(id=copy_id, sender=sender, room=room, body=copy_body, after=sends[-1].id, group=send_id))
        else:
            sends.append(Send(id=copy_id, sender=sender, room=room, body=copy_body, at=at + i * interval,
                              after=after, group=send_id))
    return sends


def _assertions(entries: list[_Table], ids: set[str]) -> tuple[AssertionSpec, ...]:
    assertions: list[AssertionSpec] = []
    for entry in entries:
        entry.only("check", "messages", "within")
        check = entry.string("check")
        if check not in ASSERTION_CHECKS:
            raise ScenarioError(entry.path("check"), f"unknown check {check!r}{_suggest(check, ASSERTION_CHECKS)}; one of {', '.join(ASSERTION_CHECKS)}")
        messages = None
        if entry.has("messages"):
            messages = tuple(entry.strings("messages"))
            for i, message in enumerate(messages):
                _known(f"{entry.path('messages')}[{i}]", message, sorted(ids), "message")
        within = entry.duration("within", default=None)
        if check == "latency" and within is None:
            raise ScenarioError(entry.path("within"), 'missing: the longest latency allowed, e.g. within = "5min"')
        if check != "latency" and within is not None:
            raise ScenarioError(entry.path("within"), "only for check = \"latency\"")
        assertions.append(AssertionSpec(check=check, messages=messages, within=within))  # type: ignore[arg-type]
    return tuple(assertions)


def _gateway(table: _Table) -> GatewaySettings:
    table.only("profile", "secure", "max_retransmit", "max_frame")
    return GatewaySettings(
        profile=table.string("profile", default=DEFAULT_PROFILE),
        secure=table.boolean("secure", default=True),
        max_retransmit=table.integer("max_retransmit", default=4, minimum=0, maximum=20),
        max_frame=table.integer("max_frame", default=1152, minimum=64, maximum=65507),
    )


def _network(table: _Table) -> NetworkSettings:
    table.only("coap_port", "federation_port", "public_base", "private_base")
    settings = NetworkSettings(
        coap_port=table.integer("coap_port", default=DEFAULT_COAP_PORT, minimum=1, maximum=65535),
        federation_port=table.integer("federation_port", default=DEFAULT_FEDERATION_PORT, minimum=1, maximum=65535),
        public_base=table.string("public_base", default="127.0.0.0"),
        private_base=table.string("private_base", default="127.1.0.0"),
    )
    try:
        Topology(public_base=settings.public_base, private_base=settings.private_base)
    except ValueError as exc:
        raise ScenarioError("network", str(exc)) from None
    return settings


def _federation(table: _Table) -> FederationSettings:
    table.only("client_timeout", "min_retry_interval", "request_timeout")
    defaults = FederationSettings()
    return FederationSettings(
        client_timeout=table.duration("client_timeout", default=defaults.client_timeout),
        min_retry_interval=table.duration("min_retry_interval", default=defaults.min_retry_interval),
        request_timeout=table.duration("request_timeout", default=defaults.request_timeout),
    )


def _matrix(table: _Table) -> MatrixSettings:
    table.only("sync_timeout", "request_timeout", "send_retries", "sync_filter")
    sync_filter = None
    if table.has("sync_filter"):
        sync_filter = table.raw("sync_filter")
        if not isinstance(sync_filter, Mapping):
            raise ScenarioError(table.path("sync_filter"), "a sync filter is a table (the JSON filter object)")
    return MatrixSettings(
        sync_timeout=table.duration("sync_timeout", default=30.0),
        request_timeout=table.duration("request_timeout", default=15 * 60.0),
        send_retries=table.integer("send_retries", default=3, minimum=0, maximum=100),
        sync_filter=sync_filter,
    )


# ---------------------------------------------------------------- building


def build_topology(scenario: Scenario, *, seed: int | None = None,
                   public_base: str | None = None, private_base: str | None = None) -> Topology:
    """The scenario's nodes and links at the start of the run (setup profiles)."""
    topology = Topology(
        seed=scenario.seed if seed is None else seed,
        public_base=public_base or scenario.network.public_base,
        private_base=private_base or scenario.network.private_base,
    )
    for node in sorted(scenario.nodes, key=lambda n: n.index is None):  # fixed numbers first
        topology.add_node(node.name, node.index)
    for link in scenario.links:
        reverse = scenario.profiles[link.reverse] if link.reverse else None
        topology.add_link(link.a, link.b, scenario.profiles[link.profile], reverse=reverse, weight=link.weight)
    return topology


def resolve_change(scenario: Scenario, change: LinkChange, topology: Topology) -> list[tuple[str, str, LinkProfile | None, LinkProfile | None, float | None]]:
    """The (a, b, a→b profile, b→a profile, weight) calls a change makes, one per link."""
    pairs = topology.edges() if change.between is None else [change.between]
    forward = scenario.profiles[change.profile] if change.profile else None
    backward = scenario.profiles[change.reverse] if change.reverse else forward
    return [(a, b, forward, backward, change.weight) for a, b in pairs]


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string "500ms", "30s", "2min", "1h" (tc's units also work)."""
    if _is_number(value):
        seconds = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        else:
            try:
                seconds = parse_netem_time(value.strip())
            except ValueError:
                raise ValueError(f"not a duration: {value!r} (e.g. 500ms, 30s, 2min, 1h)") from None
    else:
        raise ValueError(f"not a duration: {value!r} (e.g. 500ms, 30s, 2min, 1h)")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a duration is finite and >= 0, not {value!r}")
    return seconds


# ---------------------------------------------------------------- helpers


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known(path: str, value: str | None, choices: list[str], what: str, *, where: str | None = None) -> None:
    if value is None:
        raise ScenarioError(path, f"missing: name a {what}")
    if value not in choices:
        listing = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
        known = f"{what}s{' in ' + where if where else ''}: {listing}" if choices else f"no {what}s are defined"
        raise ScenarioError(path, f"no {what} {value!r}{_suggest(value, choices)} ({known})")


_MISSING = object()


class _Table:
    """A TOML table with its key path, and typed getters that raise ScenarioError."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(where, f"expected a table, not {type(data).__name__}")
        self.data = data
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        return self.data[key]

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                raise ScenarioError(self.path(key), f"unknown key{_suggest(key, allowed)}; known here: {', '.join(allowed)}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise ScenarioError(self.path(key), "missing")
        return default

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, str):
            raise ScenarioError(self.path(key), f"expected a string, not {value!r}")
        return value

    def strings(self, key: str) -> list[str]:
        value = self._get(key, _MISSING)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ScenarioError(self.path(key), f"expected a list of strings, not {value!r}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, bool):
            raise ScenarioError(self.path(key), f"expected true or false, not {value!r}")
        return value

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None, maximum: int | None = None) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, int) or isinstance(value, bool):
            raise ScenarioError(self.path(key), f"expected an integer, not {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"{minimum if minimum is not None else '-inf'}..{maximum if maximum is not None else 'inf'}"
            raise ScenarioError(self.path(key), f"{value} is out of range {bounds}")
        return value

    def number(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not _is_number(value):
            raise ScenarioError(self.path(key), f"expected a number, not {value!r}")
        return float(value) if value is not None else None

    def duration(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ScenarioError(self.path(key), str(exc)) from None

    def table(self, key: str) -> _Table:
        return _Table(self.data.get(key, {}), self.path(key))

    def array(self, key: str, *, required: bool = False) -> list[_Table]:
        if key not in self.data:
            if required:
                raise ScenarioError(key if not self.where else self.path(key), f"missing: at least one [[{key}]] table")
            return []
        value = self.data[key]
        if not (isinstance(value, list) and all(isinstance(v, Mapping) for v in value)):
            raise ScenarioError(self.path(key), f"expected [[{key}]] tables")
        if required and not value:
            raise ScenarioError(self.path(key), f"at least one [[{key}]] table is needed")
        return [_Table(v, f"{self.path(key)}[{i}]") for i, v in enumerate(value)]


def plan_lines(scenario: Scenario) -> list[str]:
    """What a run will do, for people (`meshsim run --validate`)."""
    topology = build_topology(scenario)
    lines = [f"scenario {scenario.name}: {len(scenario.nodes)} nodes, {len(scenario.links)} links, seed {scenario.seed}"]
    if scenario.description:
        lines.append(f"  {' '.join(scenario.description.split())}")
    for name, profile in scenario.profiles.items():
        lines.append(f"  profile {name}: {describe_profile(profile)}")
    for link in scenario.links:
        back = f" / back {link.reverse}" if link.reverse else ""
        lines.append(f"  link {link.a} -- {link.b}: {link.profile}{back}, weight {link.weight:g}")
    for homeserver in scenario.homeservers:
        lines.append(f"  homeserver {homeserver.name} on {homeserver.node} ({topology.node(homeserver.node).public_ip})")
    for client in scenario.clients:
        if scenario.is_local(client):
            lines.append(f"  client @{client.user}:{client.homeserver} on {client.node}: on its homeserver's node "
                         "(HTTP to Synapse, no gateway)")
            continue
        path = topology.path(client.node, scenario.homeserver(client.homeserver).node) or []
        lines.append(f"  client @{client.user}:{client.homeserver} on {client.node}: {max(len(path) - 1, 0)} hops "
                     f"({' -> '.join(path)})")
    for room in scenario.rooms:
        servers = scenario.room_homeservers(room)
        if len(servers) > 1:
            lines.append(f"  room {room.name}: federated across {', '.join(servers)}")
    for phase in scenario.phases:
        parts = []
        if phase.setup:
            parts.append("setup")
        if phase.links:
            parts.append(f"{len(phase.links)} link changes")
        if phase.actions:
            parts.append(", ".join(f"{a.do} at {a.at:g} s" for a in phase.actions))
        if phase.sends:
            parts.append(f"{len(phase.sends)} messages")
        if phase.duration is not None:
            parts.append(f"at least {phase.duration:g} s")
        parts.append(f"timeout {phase.timeout:g} s")
        lines.append(f"  phase {phase.name}: {'; '.join(parts)}")
    for assertion in scenario.assertions:
        scope = ", ".join(assertion.messages) if assertion.messages else "all messages"
        within = f" within {assertion.within:g} s" if assertion.within is not None else ""
        lines.append(f"  assert {assertion.check}{within}: {scope}")
    return lines
