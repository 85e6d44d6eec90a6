"""Run a scenario: the asyncio shell that builds the network, runs Matrix over it and keeps the record.

What runs, per scenario:

- the userspace `Fabric` over the scenario's topology, writing events.jsonl
  and capture.pcap;
- on the homeserver node, a real Synapse (SQLite, in a temporary directory,
  listening on the node's private address) fronted by a server gateway whose
  CoAP side binds the node's private address on the CoAP port;
- per client, on its device node, a client gateway (CoAP side bound to the
  node's private address, sending to the homeserver node's *public* address,
  so every frame crosses the fabric) and matrix-nio talking HTTP to it.

Then the phases, in order: each applies its link changes, runs its timed
actions (partition, heal, fail, set_link) and its sends, and ends when all of
that is done and its `duration` has passed, or at its `timeout`.  The setup
phase registers the users, creates and joins the rooms and has every client
sync until it sees every member of its rooms: only then do the sync loops
start and the next phase shape the links.  Every change to the network
re-derives the gateways' link budgets from the route they now take, so CoAP
timers follow the link.

Everything worth measuring is an event (the fabric's and the runner's own,
see docs/meshsim.md); `meshsim.report` turns the events into report.json and
the plots.  The pure parts here are `path_budget` and `slowest_budget`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from coap_gateway.transport.timing import LinkBudget

from .net import EventLog, Fabric, PcapWriter
from .model import LinkProfile, Node, Topology
from .report import ReportBuilder, summary_lines, write_plots
from .scenario import (
    Action,
    LinkChange,
    Phase,
    Scenario,
    Send,
    build_topology,
    resolve_change,
)

logger = logging.getLogger(__name__)

#: how long a setup sync waits for news (a join, an invite) before asking again
SETUP_SYNC_TIMEOUT_MS = 5000
#: pause after a failed sync before the loop tries again (a retry back-off, not synchronisation)
SYNC_RETRY_PAUSE = 1.0
PROGRESS_REFRESH = 1.0


class RunError(RuntimeError):
    """The run could not go on (setup failed, Synapse did not start, ...)."""


# ---------------------------------------------------------------- pure parts


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


# ---------------------------------------------------------------- the shell


@dataclass
class RunResult:
    report: dict[str, Any]
    out_dir: Path

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


@dataclass
class _Client:
    user: str
    user_id: str
    node: Node
    password: str
    link: Any = None
    gateway: Any = None
    nio: Any = None
    sync_task: asyncio.Task[None] | None = None
    budget: LinkBudget | None = None


@dataclass
class _Message:
    send: Send
    phase: str
    recipients: frozenset[str]
    received_by: set[str] = field(default_factory=set)
    delivered: asyncio.Event = field(default_factory=asyncio.Event)


class _Progress:
    """rich progress bars, one per phase; a no-op without a console."""

    def __init__(self, console: Any | None) -> None:
        self.console = console
        self._progress = None
        self._task: Any = None
        if console is not None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
            )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, description: str, total: int) -> None:
        if self._progress is not None:
            if self._task is not None:
                self._progress.stop_task(self._task)
            self._task = self._progress.add_task(description, total=max(total, 1) if total else None, info="")
            if not total:
                self._progress.update(self._task, total=1)

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, steps)

    def finish(self) -> None:
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, completed=task.total)

    def info(self, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, info=text)

    def log(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)


class ScenarioRun:
    """One run of a scenario into `out_dir` (see the module docstring)."""

    def __init__(self, scenario: Scenario, out_dir: str | Path, *, seed: int | None = None,
                 public_base: str | None = None, private_base: str | None = None, console: Any | None = None,
                 on_fabric: Callable[[Fabric], None] | None = None) -> None:
        if len(scenario.homeservers) != 1:
            raise RunError("this version runs exactly one homeserver (federation is not available yet)")
        self.scenario = scenario
        self.out_dir = Path(out_dir)
        self.seed = scenario.seed if seed is None else seed
        self.topology: Topology = build_topology(scenario, seed=self.seed, public_base=public_base, private_base=private_base)
        self.builder = ReportBuilder()
        self.progress = _Progress(console)
        self.homeserver = scenario.homeservers[0]
        self.hs_node = self.topology.node(self.homeserver.node)
        self.clients: dict[str, _Client] = {
            c.user: _Client(c.user, scenario.user_id(c.user), self.topology.node(c.node), "pw-" + secrets.token_hex(8))
            for c in scenario.clients
        }
        self.messages: dict[str, _Message] = {}
        self.by_body: dict[str, _Message] = {}
        for phase in scenario.phases:
            for send in phase.sends:
                message = _Message(send, phase.name, frozenset(scenario.recipients(send)))
                self.messages[send.id] = message
                self.by_body[send.body] = message
        self.room_ids: dict[str, str] = {}
        self.fabric: Fabric | None = None
        #: called with the fabric once it has started (e.g. to show it in the web UI)
        self.on_fabric = on_fabric
        self.events: EventLog | None = None
        self.synapse: Any = None
        self.server: Any = None
        self.server_link: Any = None
        self.server_budget: LinkBudget | None = None
        self._phase_bytes_base: dict[str, int] = {}

    # ------------------------------------------------------------ recording

    def now(self) -> float:
        return self.fabric.now() if self.fabric is not None and self.fabric.running else self.builder.last_t

    def emit(self, kind: str, **fields: Any) -> None:
        event = {"kind": kind, "t": self.now(), **fields}
        if self.events is not None:
            self.events.write(event)
        self.builder.feed(event)

    def _scenario_event(self) -> dict[str, Any]:
        s = self.scenario
        roles = {c.node: "client" for c in s.clients}
        roles[self.homeserver.node] = "homeserver"
        groups: dict[str, list[str]] = {}
        for send in s.sends:
            if send.group:
                groups.setdefault(send.group, []).append(send.id)
        return {
            "kind": "scenario", "t": 0.0, "name": s.name, "source": s.source, "description": s.description,
            "seed": self.seed,
            "nodes": [{"name": n.name, "index": self.topology.node(n.name).index,
                       "position": list(n.position) if n.position else None} for n in s.nodes],
            "roles": roles,
            "phases": [p.name for p in s.phases],
            "messages": [
                {"id": m.send.id, "sender": m.send.sender, "room": m.send.room, "body": m.send.body,
                 "phase": m.phase, "recipients": sorted(m.recipients)}
                for m in self.messages.values()
            ],
            "groups": groups,
            "assertions": [dataclasses.asdict(a) for a in s.assertions],
        }

    # ------------------------------------------------------------ the run

    async def run(self) -> RunResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        failure: BaseException | None = None
        with contextlib.ExitStack() as files, self.progress, tempfile.TemporaryDirectory(prefix="meshsim-") as tmp:
            self.events = files.enter_context(EventLog(self.out_dir / "events.jsonl"))
            capture = files.enter_context(PcapWriter(self.out_dir / "capture.pcap"))
            event = self._scenario_event()
            self.events.write(event)
            self.builder.feed(event)
            try:
                await self._start(Path(tmp), capture)
                for index, phase in enumerate(self.scenario.phases):
                    await self._phase(index, phase)
            except (Exception, asyncio.CancelledError) as exc:
                failure = exc
                interrupted = isinstance(exc, asyncio.CancelledError)
                self.emit("run_error", error="interrupted" if interrupted else f"{type(exc).__name__}: {exc}")
                if not isinstance(exc, (RunError, asyncio.CancelledError)):
                    logger.exception("the run failed")
            finally:
                await self._teardown()
            report = self.builder.build()
            report["seed"] = self.seed
            report["outputs"] = ["report.json", "events.jsonl", "capture.pcap"]
            try:
                report["outputs"] += write_plots(self.builder, report, self.out_dir)
            except Exception:  # a plot must not lose the report
                logger.exception("plotting failed")
            (self.out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        for line in summary_lines(report):
            self.progress.log(line)
        if isinstance(failure, asyncio.CancelledError):
            raise failure
        return RunResult(report, self.out_dir)

    async def _start(self, tmp: Path, capture: PcapWriter) -> None:
        from nio import AsyncClient, AsyncClientConfig

        from coap_gateway.secure import keys
        from coap_gateway.transport.links import UdpLink
        from coap_gateway.codec.profile import load_profile
        from coap_gateway.app.runner import advertisement_for, start_client, start_server
        from coap_gateway.tools.synapse_process import LocalSynapse

        s = self.scenario
        self.progress.phase("starting Synapse", 1)
        self.synapse = LocalSynapse(tmp / self.homeserver.name, server_name=self.homeserver.name, host=self.hs_node.private_ip)
        await self.synapse.start()
        self.progress.advance()

        self.fabric = Fabric(self.topology, ports=[s.network.coap_port], events=self.events, capture=capture)
        self.fabric.subscribe(self.builder.feed)
        await self.fabric.start()
        if self.on_fabric is not None:
            self.on_fabric(self.fabric)

        profile = load_profile(s.gateway.profile)
        server_private = keys.generate_keypair()[0] if s.gateway.secure else None
        server_address = (self.hs_node.public_ip, s.network.coap_port)
        budgets = {user: self._client_budget(client) for user, client in self.clients.items()}
        self.server_budget = slowest_budget([b for b in budgets.values() if b is not None] or [LinkBudget()])
        self.server_link = await UdpLink.open(self.hs_node.private_ip, s.network.coap_port, self.server_budget)
        self.server = await start_server(
            self.server_link, homeserver=self.synapse.base_url, profile=profile, static_private=server_private,
            advertisement=advertisement_for(f"udp://{server_address[0]}:{server_address[1]}", server_private, profile),
        )
        _per_peer_timers(self.server, self._budget_for_address)
        server_public = keys.public_from_private(server_private) if server_private is not None else None
        config = AsyncClientConfig(request_timeout=s.matrix.request_timeout, max_timeouts=0)
        for user, client in self.clients.items():
            client.budget = budgets[user] or LinkBudget()
            client.link = await UdpLink.open(client.node.private_ip, 0, client.budget)
            client.gateway = await start_client(
                client.link, server_address, profile=profile,
                static_private=keys.generate_keypair()[0] if s.gateway.secure else None,
                server_public=server_public, host=client.node.private_ip, port=0,
            )
            client.nio = AsyncClient(client.gateway.base_url, user, config=config)
        self.progress.log(
            f"Synapse {self.homeserver.name} on node {self.hs_node.name}; "
            f"{len(self.clients)} clients; {len(self.topology.edges())} links; seed {self.seed}"
        )

    async def _teardown(self) -> None:
        for client in self.clients.values():
            if client.sync_task is not None:
                client.sync_task.cancel()
        await asyncio.gather(*(c.sync_task for c in self.clients.values() if c.sync_task), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._history_check()
        self.emit("gateways", gateways=self._gateway_counters())
        # CoAP first: shutting an endpoint fails its pending requests, so the HTTP side
        # answers at once instead of holding a long-poll through aiohttp's 60 s shutdown grace
        steps = []
        for client in self.clients.values():
            if client.gateway is not None:
                steps += [client.gateway.endpoint.shutdown, client.gateway.gateway.stop]
            if client.nio is not None:
                steps.append(client.nio.close)
            if client.link is not None:
                steps.append(client.link.close)
        if self.server is not None:
            steps.append(self.server.stop)
        if self.server_link is not None:
            steps.append(self.server_link.close)
        # failing the held requests is the point here, not news: keep their warnings out of the console
        gateway_log = logging.getLogger("coap_gateway.gateway.client")
        level = gateway_log.level
        gateway_log.setLevel(logging.ERROR)
        try:
            for step in steps:
                with contextlib.suppress(Exception):
                    await step()
        finally:
            gateway_log.setLevel(level)
        if self.fabric is not None:
            await self.fabric.stop()
        if self.synapse is not None:
            await self.synapse.stop()
            if self.synapse.log_path.exists():
                shutil.copyfile(self.synapse.log_path, self.out_dir / "homeserver.log")

    # ------------------------------------------------------------ phases

    async def _phase(self, index: int, phase: Phase) -> None:
        start = self.now()
        self.emit("phase_start", phase=phase.name, index=index)
        total = self._setup_steps() if phase.setup else sum(len(self.messages[s.id].recipients) for s in phase.sends)
        self.progress.phase(f"phase {index + 1}/{len(self.scenario.phases)} {phase.name}", total)
        self.progress.log(f"{start:8.1f} s  phase {phase.name} starts")
        self._phase_bytes_base = dict(self.builder.cumulative_wire_bytes)
        for change in phase.links:
            self._change_links(change)
        self._refresh_budgets()
        work = [asyncio.create_task(self._action(action, start)) for action in phase.actions]
        work += [asyncio.create_task(self._send(send, start)) for send in phase.sends]
        if phase.setup:
            work.append(asyncio.create_task(self._setup()))
        ticker = asyncio.create_task(self._tick())
        ended_by = "complete"
        try:
            async with asyncio.timeout(phase.timeout):
                if work:
                    await asyncio.gather(*work)
                if phase.duration is not None and self.now() < start + phase.duration:
                    ended_by = "duration"
                    await asyncio.sleep(start + phase.duration - self.now())
        except TimeoutError:
            ended_by = "timeout"
        finally:
            ticker.cancel()
            for task in work:
                task.cancel()
            await asyncio.gather(*work, ticker, return_exceptions=True)
        self.emit("phase_end", phase=phase.name, ended_by=ended_by)
        self.progress.finish()
        if phase.setup:
            if ended_by == "timeout":
                raise RunError(f"setup did not finish within {phase.timeout:g} s")
            for client in self.clients.values():
                client.sync_task = asyncio.create_task(self._sync_loop(client))

    async def _tick(self) -> None:
        """Refresh the progress line: run time and the busiest link of this phase."""
        while True:
            base = self._phase_bytes_base
            moved = {link: total - base.get(link, 0) for link, total in self.builder.cumulative_wire_bytes.items()}
            busiest = max(moved.items(), key=lambda item: item[1], default=None)
            text = f"t={self.now():.0f} s"
            if busiest and busiest[1]:
                text += f"  busiest {busiest[0]} {busiest[1]} B"
            self.progress.info(text)
            await asyncio.sleep(PROGRESS_REFRESH)

    def _change_links(self, change: LinkChange) -> None:
        assert self.fabric is not None
        for a, b, forward, backward, weight in resolve_change(self.scenario, change, self.topology):
            self.fabric.set_link(a, b, forward, reverse=backward, weight=weight)

    async def _action(self, action: Action, phase_start: float) -> None:
        assert self.fabric is not None
        await asyncio.sleep(max(0.0, phase_start + action.at - self.now()))
        flushed = 0
        if action.do == "partition":
            flushed = self.fabric.partition([list(g) for g in action.groups])
        elif action.do == "fail":
            assert action.between is not None
            flushed = self.fabric.fail(*action.between)
        elif action.do == "heal":
            if action.between is None:
                self.fabric.heal_all()
            else:
                self.fabric.heal(*action.between)
        else:
            assert action.change is not None
            self._change_links(action.change)
        self.emit("action", do=action.do, between=list(action.between) if action.between else None,
                  groups=[list(g) for g in action.groups], flushed=flushed)
        self.progress.log(f"{self.now():8.1f} s  {action.do} {action.between or action.groups or 'every link'}")
        self._refresh_budgets()

    # ------------------------------------------------------------ budgets

    def _client_budget(self, client: _Client) -> LinkBudget | None:
        forward = self.topology.route(client.node.name, self.hs_node.name)
        backward = self.topology.route(self.hs_node.name, client.node.name)
        if forward is None or backward is None:
            return None  # partitioned: keep the timers it had
        g = self.scenario.gateway
        return path_budget([l.profile for l in forward], [l.profile for l in backward],
                           max_retransmit=g.max_retransmit, max_frame=g.max_frame)

    def _budget_for_address(self, address: Any) -> LinkBudget:
        """The budget of the client whose frames come from `address` (the slowest if unknown)."""
        node = self.topology.node_by_public_ip(address[0]) if isinstance(address, tuple) else None
        for client in self.clients.values():
            if node is not None and client.node == node and client.budget is not None:
                return client.budget
        assert self.server_budget is not None
        return self.server_budget

    def _refresh_budgets(self) -> None:
        """Re-derive every gateway's link budget from the route it takes now."""
        changed = False
        for client in self.clients.values():
            budget = self._client_budget(client)
            if budget is None or budget == client.budget:
                continue  # partitioned (keep the timers it had) or unchanged
            changed = True
            client.budget = budget
            if client.gateway is not None:
                _apply_budget(client.gateway.endpoint, client.link, budget)
        budgets = [c.budget for c in self.clients.values() if c.budget is not None]
        if self.server is not None and budgets:
            slowest = slowest_budget(budgets)
            if changed or slowest != self.server_budget:
                self.server_budget = slowest
                _apply_budget(self.server.endpoint, self.server_link, slowest)

    # ------------------------------------------------------------ Matrix

    def _setup_steps(self) -> int:
        return len(self.clients) * 2 + sum(len(r.members) for r in self.scenario.rooms)

    async def _setup(self) -> None:
        from nio import JoinResponse, RegisterResponse, RoomCreateResponse

        for client in self.clients.values():
            response = await client.nio.register(client.user, client.password, device_name=f"meshsim {client.node.name}")
            if not isinstance(response, RegisterResponse):
                raise RunError(f"registering {client.user} failed: {response}")
            self.progress.advance()
        for room in self.scenario.rooms:
            creator = self.clients[room.members[0]]
            others = [self.clients[m].user_id for m in room.members[1:]]
            response = await creator.nio.room_create(name=room.name, invite=others)
            if not isinstance(response, RoomCreateResponse):
                raise RunError(f"{creator.user} could not create room {room.name}: {response}")
            self.room_ids[room.name] = response.room_id
            self.progress.advance()
            for member in room.members[1:]:
                joined = await self.clients[member].nio.join(response.room_id)
                if not isinstance(joined, JoinResponse):
                    raise RunError(f"{member} could not join room {room.name}: {joined}")
                self.progress.advance()
        self.emit("rooms", rooms=self.room_ids)
        await asyncio.gather(*(self._sync_until_ready(c) for c in self.clients.values()))

    async def _sync_until_ready(self, client: _Client) -> None:
        """Sync until this client sees every member joined in each of its rooms."""
        from nio import SyncResponse

        wanted = {
            self.room_ids[r.name]: {self.clients[m].user_id for m in r.members}
            for r in self.scenario.rooms if client.user in r.members
        }
        failures = 0
        while True:
            response = await client.nio.sync(timeout=SETUP_SYNC_TIMEOUT_MS, sync_filter=self._sync_filter())
            if not isinstance(response, SyncResponse):
                failures += 1
                if failures > 5:
                    raise RunError(f"{client.user}'s setup sync keeps failing: {response}")
                continue
            rooms = client.nio.rooms
            if all(room_id in rooms and members <= set(rooms[room_id].users) for room_id, members in wanted.items()):
                self.emit("ready", user=client.user)
                self.progress.advance()
                return

    def _sync_filter(self) -> Any:
        f = self.scenario.matrix.sync_filter
        return dict(f) if f is not None else None

    async def _sync_loop(self, client: _Client) -> None:
        """The client's own sync loop: every message it receives is recorded when its sync returns."""
        from nio import SyncResponse

        timeout_ms = int(self.scenario.matrix.sync_timeout * 1000)
        while True:
            try:
                response = await client.nio.sync(timeout=timeout_ms, sync_filter=self._sync_filter())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - nio raises on its own request timeout; the loop goes on
                response = exc
            now = self.now()
            if not isinstance(response, SyncResponse):
                self.emit("sync_error", user=client.user, error=str(response)[:200])
                await asyncio.sleep(SYNC_RETRY_PAUSE)
                continue
            for room in response.rooms.join.values():
                for event in room.timeline.events:
                    message = self.by_body.get(getattr(event, "body", None))
                    if message is not None and client.user in message.recipients:
                        self._received(message, client.user, event.event_id, now)

    def _received(self, message: _Message, user: str, event_id: str, now: float) -> None:
        self.emit("receive", msg=message.send.id, user=user, event_id=event_id)
        if user not in message.received_by:
            message.received_by.add(user)
            self.progress.advance()
            self.progress.log(f"{now:8.1f} s  {user} has {message.send.id}")
            if message.received_by >= message.recipients:
                message.delivered.set()

    async def _send(self, send: Send, phase_start: float) -> None:
        from nio import RoomSendResponse

        base = phase_start
        if send.after is not None:
            await self._delivered(send.after)
            base = self.now()
        await asyncio.sleep(max(0.0, base + send.at - self.now()))
        client = self.clients[send.sender]
        message = self.messages[send.id]
        room_id = self.room_ids[send.room]
        transaction = "meshsim-" + send.id.replace("#", "-")
        content = {"msgtype": "m.text", "body": send.body}
        retries = self.scenario.matrix.send_retries
        for attempt in range(retries + 1):
            self.emit("send", msg=send.id, user=send.sender, room=send.room, attempt=attempt)
            self.progress.log(f"{self.now():8.1f} s  {send.sender} sends {send.id}" + (f" (retry {attempt})" if attempt else ""))
            try:
                response = await client.nio.room_send(room_id, "m.room.message", content, tx_id=transaction)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a timeout or a dropped connection: retried like an error
                response = exc
            if isinstance(response, RoomSendResponse):
                self.emit("sent", msg=send.id, event_id=response.event_id)
                self.progress.log(f"{self.now():8.1f} s  {send.sender}'s send of {send.id} returned")
                break
            # the same transaction id: the homeserver makes a retry idempotent
            self.emit("send_error", msg=send.id, error=str(response)[:200], final=attempt == retries)
        else:
            return
        if not message.recipients:
            message.delivered.set()
        await message.delivered.wait()

    async def _delivered(self, message_id: str) -> None:
        group = [m for m in self.messages.values() if m.send.id == message_id or m.send.group == message_id]
        for message in group:
            await message.delivered.wait()

    async def _history_check(self) -> None:
        """Count each message in its room's history on the homeserver itself (not over the links)."""
        import aiohttp

        if self.synapse is None or not self.room_ids:
            return
        async with aiohttp.ClientSession() as http:
            for room in self.scenario.rooms:
                room_id = self.room_ids.get(room.name)
                token = self.clients[room.members[0]].nio.access_token if room_id else None
                if not token:
                    continue
                counts = {m.send.id: 0 for m in self.messages.values() if m.send.room == room.name}
                url = f"{self.synapse.base_url}/_matrix/client/v3/rooms/{room_id}/messages"
                params = {"dir": "b", "limit": "1000"}
                async with http.get(url, params=params, headers={"Authorization": f"Bearer {token}"}) as response:
                    chunk = (await response.json()).get("chunk", [])
                for event in chunk:
                    message = self.by_body.get((event.get("content") or {}).get("body"))
                    if message is not None and message.send.room == room.name and event.get("type") == "m.room.message":
                        counts[message.send.id] += 1
                self.emit("history", room=room.name, counts=counts)

    def _gateway_counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = {}
        if self.server is not None:
            counters["server"] = _numbers(self.server.endpoint.counters)
        for client in self.clients.values():
            if client.gateway is not None:
                counters[client.user] = {**_numbers(client.gateway.endpoint.counters),
                                         **{f"http_{k}": v for k, v in _numbers(client.gateway.gateway.counters).items()}}
        return counters


def _numbers(counters: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(counters).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _per_peer_timers(server: Any, budget_for_address: Any) -> None:
    """Give the server gateway's CoAP timers each client's own path budget.

    One server link serves every client, but a held long-poll must be
    answered with an empty ACK inside *that* client's first timeout: with the
    slowest path's budget for everyone, clients on fast paths retransmit.
    A peer's budget is that of the address its session (or plaintext
    address) has when its timer is made.
    """
    codec = server.codec

    def budget_for(remote: Any) -> Any:
        address = codec.endpoint.session_address(remote.key) if codec is not None else remote.key
        return budget_for_address(address)

    server.endpoint.set_peer_budgets(budget_for)


def _apply_budget(endpoint: Any, link: Any, budget: LinkBudget) -> None:
    """New link timing for a running gateway: later exchanges use it; measured RTTs start over."""
    assert endpoint.interface.link is link
    endpoint.set_budget(budget)


async def run_scenario(scenario: Scenario, out_dir: str | Path, *, seed: int | None = None,
                       public_base: str | None = None, private_base: str | None = None,
                       console: Any | None = None, on_fabric: Callable[[Fabric], None] | None = None) -> RunResult:
    """Run `scenario`, write report.json, events.jsonl, capture.pcap and the plots into `out_dir`.

    `console`: a rich Console for progress bars and the summary (None: quiet).
    `public_base`/`private_base` override the scenario's address bases (tests
    use their own so they never share a socket address).  `on_fabric` is
    called with the fabric as soon as it has started (`meshsim run --ui`).
    """
    run = ScenarioRun(scenario, out_dir, seed=seed, public_base=public_base, private_base=private_base, console=console,
                      on_fabric=on_fabric)
    return await run.run()
