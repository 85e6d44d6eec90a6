"""Run a scenario: the thin asyncio shell that puts the network, the homeserver and the workload together.

What runs, per scenario:

- the network over the scenario's topology (`links`: the userspace
  `Fabric`), writing events.jsonl and capture.pcap, and with secure
  gateways capture.keylog beside it: the keys of every session, so
  Wireshark decrypts the capture (docs/wireshark.md);
- on each homeserver node, a real Synapse (SQLite, in a temporary directory,
  listening on the node's private address) fronted by a server gateway, and
  per client on another node a client gateway on that device node
  (`gateways`); a client on its homeserver's node talks to Synapse directly;
- with several homeservers, a federation gateway per homeserver node: each
  Synapse's federation leaves through its own (``https_proxy``) and crosses
  the fabric to the peer's, hop by hop (docs/meshsim.md, "Federation");
- per client, matrix-nio talking HTTP to its gateway or its Synapse (`workload`).

Then the phases, in order: each applies its link changes, runs its timed
actions (partition, heal, fail, set_link) and its sends, and ends when all of
that is done and its `duration` has passed, or at its `timeout`.  The setup
phase registers the users, creates and joins the rooms and has every client
sync until it sees every member of its rooms: only then do the sync loops
start and the next phase shape the links.  Every change to the network
re-derives the gateways' link budgets from the route they now take
(`links.PathBudgets`), so CoAP timers follow the link.

Everything worth measuring is an event (the network's and the runner's own,
see docs/meshsim.md) in the `RunRecord`; `meshsim.run.report` turns the
events into report.json and the plots, judged by `meshsim.run.checks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coap_gateway.transport import KeyLog

from ..model import Topology
from ..net import EventLog, Network, PcapWriter
from .checks import history_counts
from .console import PhaseProgress
from coap_gateway.federation import PeersTable

from .gateways import DeviceGateway, Homeserver, gateway_counters, quiet_shutdown
from .links import FederationBudgets, PathBudgets, act, change_links, open_network
from .record import RunError, RunRecord
from .report import summary_lines, write_plots
from .scenario import Action, Phase, Scenario, build_topology
from .workload import Workload

logger = logging.getLogger(__name__)

PROGRESS_REFRESH = 1.0
#: the key log beside capture.pcap (docs/wireshark.md)
KEYLOG_NAME = "capture.keylog"


@dataclass
class RunResult:
    report: dict[str, Any]
    out_dir: Path

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


class ScenarioRun:
    """One run of a scenario into `out_dir` (see the module docstring)."""

    def __init__(self, scenario: Scenario, out_dir: str | Path, *, seed: int | None = None,
                 public_base: str | None = None, private_base: str | None = None, console: Any | None = None,
                 on_fabric: Callable[[Network], None] | None = None) -> None:
        self.scenario = scenario
        self.out_dir = Path(out_dir)
        self.seed = scenario.seed if seed is None else seed
        self.topology: Topology = build_topology(scenario, seed=self.seed, public_base=public_base, private_base=private_base)
        self.record = RunRecord()
        self.progress = PhaseProgress(console)
        federated = len(scenario.homeservers) > 1
        #: by server name
        self.homeservers: dict[str, Homeserver] = {
            spec.name: Homeserver(spec.name, self.topology.node(spec.node), scenario.gateway, scenario.network.coap_port,
                                  federation_port=scenario.network.federation_port if federated else None,
                                  federation=scenario.federation)
            for spec in scenario.homeservers
        }
        self.workload = Workload(scenario, self.topology, self.record, self.progress)
        #: per user on another node than its homeserver's, its device's client gateway
        self.devices: dict[str, DeviceGateway] = {}
        #: per homeserver with devices, their paths' budgets
        self.budgets: dict[str, PathBudgets] = {}
        self.federation_budgets: FederationBudgets | None = None
        #: called with the network once it has started (e.g. to show it in the web UI)
        self.on_fabric = on_fabric
        self._phase_bytes_base: dict[str, int] = {}
        #: the gateways' session keys, beside capture.pcap (secure runs only)
        self.key_log: KeyLog | None = None

    def _scenario_event(self) -> dict[str, Any]:
        s = self.scenario
        roles = {c.node: "client" for c in s.clients}
        for homeserver in self.homeservers.values():
            roles[homeserver.node.name] = "homeserver"
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
            "homeservers": {h.name: h.node.name for h in self.homeservers.values()},
            "federation_port": s.network.federation_port if len(self.homeservers) > 1 else None,
            "phases": [p.name for p in s.phases],
            "messages": [
                {"id": m.send.id, "sender": m.send.sender, "room": m.send.room, "body": m.send.body,
                 "phase": m.phase, "recipients": sorted(m.recipients)}
                for m in self.workload.messages.values()
            ],
            "groups": groups,
            "assertions": [dataclasses.asdict(a) for a in s.assertions],
        }

    # ------------------------------------------------------------ the run

    async def run(self) -> RunResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = self.record
        failure: BaseException | None = None
        with contextlib.ExitStack() as files, self.progress, tempfile.TemporaryDirectory(prefix="meshsim-") as tmp:
            record.events = files.enter_context(EventLog(self.out_dir / "events.jsonl"))
            capture = files.enter_context(PcapWriter(self.out_dir / "capture.pcap"))
            if self.scenario.gateway.secure:
                (self.out_dir / KEYLOG_NAME).unlink(missing_ok=True)  # this run's sessions only
                self.key_log = KeyLog(self.out_dir / KEYLOG_NAME)
                files.callback(self.key_log.close)
            record.write(self._scenario_event())
            try:
                await self._start(Path(tmp), capture)
                for index, phase in enumerate(self.scenario.phases):
                    await self._phase(index, phase)
            except (Exception, asyncio.CancelledError) as exc:
                failure = exc
                interrupted = isinstance(exc, asyncio.CancelledError)
                record.emit("run_error", error="interrupted" if interrupted else f"{type(exc).__name__}: {exc}")
                if not isinstance(exc, (RunError, asyncio.CancelledError)):
                    logger.exception("the run failed")
            finally:
                await self._teardown()
            report = record.builder.build()
            report["seed"] = self.seed
            report["outputs"] = ["report.json", "events.jsonl", "capture.pcap"]
            if self.key_log is not None:
                report["outputs"].append(KEYLOG_NAME)
            try:
                report["outputs"] += write_plots(record.builder, report, self.out_dir)
            except Exception:  # a plot must not lose the report
                logger.exception("plotting failed")
            (self.out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        for line in summary_lines(report):
            self.progress.log(line)
        if isinstance(failure, asyncio.CancelledError):
            raise failure
        return RunResult(report, self.out_dir)

    async def _start(self, tmp: Path, capture: PcapWriter) -> None:
        scenario, workload, homeservers = self.scenario, self.workload, list(self.homeservers.values())
        self.progress.phase("starting Synapse" if len(homeservers) == 1 else f"starting {len(homeservers)} Synapses",
                            len(homeservers))

        async def start_synapse(homeserver: Homeserver) -> None:
            await homeserver.start_synapse(tmp / homeserver.name)
            self.progress.advance()

        # concurrently: each takes seconds of CPU, mostly waiting on its own start-up
        await asyncio.gather(*(start_synapse(h) for h in homeservers))

        network = self.record.network = open_network(scenario, self.topology, events=self.record.events,
                                                     capture=capture)
        network.subscribe(self.record.builder.feed)
        await network.start()
        if self.on_fabric is not None:
            self.on_fabric(network)

        for homeserver in homeservers:
            devices = {c.user: workload.clients[c.user].node for c in scenario.clients
                       if c.homeserver == homeserver.name and not scenario.is_local(c)}
            if not devices:
                continue
            budgets = self.budgets[homeserver.name] = PathBudgets(self.topology, homeserver.node, devices,
                                                                  scenario.gateway)
            await homeserver.start_gateway(budgets.server, budgets.for_address, tmp / f"{homeserver.name}-gateway",
                                           key_log=self.key_log)
            for user, node in devices.items():
                device = self.devices[user] = DeviceGateway(node, budgets.devices[user])
                await device.start(homeserver, secure=scenario.gateway.secure, key_log=self.key_log)
        if len(homeservers) > 1:
            await self._start_federation(tmp, homeservers)
        for client in scenario.clients:
            device = self.devices.get(client.user)
            workload.connect(client.user, device.base_url if device else self.homeservers[client.homeserver].base_url)
        names = ", ".join(f"{h.name} on {h.node.name}" for h in homeservers)
        self.progress.log(
            f"Synapse {names}; {len(workload.clients)} clients ({len(self.devices)} behind client gateways); "
            f"{len(self.topology.edges())} links; seed {self.seed}"
        )

    async def _start_federation(self, tmp: Path, homeservers: list[Homeserver]) -> None:
        """A federation gateway per homeserver, all sharing one peers table; their
        peers' timers from the paths between the homeserver nodes."""
        table = PeersTable(h.peer() for h in homeservers)
        budgets = self.federation_budgets = FederationBudgets(
            self.topology, {h.federation_public: h.node for h in homeservers}, self.scenario.gateway)
        for homeserver in homeservers:
            mine = homeserver.federation_public
            await homeserver.start_federation(table, budgets.slowest(mine), budgets.lookup(mine),
                                              tmp / f"{homeserver.name}-federation", key_log=self.key_log)

    async def _teardown(self) -> None:
        await self.workload.stop_sync_loops()
        with contextlib.suppress(Exception):
            await self._history_check()
        homeservers = list(self.homeservers.values())
        self.record.emit("gateways", gateways=gateway_counters(homeservers, self.devices))
        with quiet_shutdown():
            for device in self.devices.values():
                await device.stop()
            await self.workload.close()
            for homeserver in homeservers:
                await homeserver.stop_gateway()
        if self.record.network is not None:
            await self.record.network.stop()
        await asyncio.gather(*(
            h.stop_synapse(self.out_dir, "homeserver.log" if len(homeservers) == 1 else f"homeserver-{h.name}.log")
            for h in homeservers))

    async def _history_check(self) -> None:
        """Count each message in its room's history on every homeserver of the room's
        members, read from each Synapse itself (not over the links)."""
        if not self.workload.room_ids:
            return
        for room in self.scenario.rooms:
            for server in self.scenario.room_homeservers(room):
                homeserver = self.homeservers[server]
                reader = self.workload.history_reader(room, server)
                if reader is None or homeserver.synapse is None:
                    continue
                events = await homeserver.room_history(*reader)
                self.record.emit("history", room=room.name, homeserver=server,
                                 counts=history_counts(events, self.workload.bodies(room)))

    # ------------------------------------------------------------ phases

    async def _phase(self, index: int, phase: Phase) -> None:
        record, workload, network = self.record, self.workload, self._network()
        start = record.now()
        record.emit("phase_start", phase=phase.name, index=index)
        total = workload.setup_steps() if phase.setup else sum(len(workload.messages[s.id].recipients) for s in phase.sends)
        self.progress.phase(f"phase {index + 1}/{len(self.scenario.phases)} {phase.name}", total)
        self.progress.log(f"{start:8.1f} s  phase {phase.name} starts")
        self._phase_bytes_base = dict(record.builder.cumulative_wire_bytes)
        for change in phase.links:
            change_links(network, self.scenario, change)
        self._refresh_budgets()
        work = [asyncio.create_task(self._action(action, start)) for action in phase.actions]
        work += [asyncio.create_task(workload.send(send, start)) for send in phase.sends]
        if phase.setup:
            work.append(asyncio.create_task(workload.setup()))
        ended_by = await self._until_done(phase, start, work)
        record.emit("phase_end", phase=phase.name, ended_by=ended_by)
        self.progress.finish()
        if phase.setup:
            if ended_by == "timeout":
                raise RunError(f"setup did not finish within {phase.timeout:g} s")
            workload.start_sync_loops()

    async def _until_done(self, phase: Phase, start: float, work: list[asyncio.Task[None]]) -> str:
        """Wait for the phase's work and its `duration`, at most its `timeout`; says which ended it."""
        ticker = asyncio.create_task(self._tick())
        ended_by = "complete"
        try:
            async with asyncio.timeout(phase.timeout):
                if work:
                    await asyncio.gather(*work)
                if phase.duration is not None and self.record.now() < start + phase.duration:
                    ended_by = "duration"
                    # The loop's timer may fire a hair before the network clock reaches the
                    # end (different clocks): a phase lasts at least its duration.
                    while (left := start + phase.duration - self.record.now()) > 0:
                        await asyncio.sleep(left)
        except TimeoutError:
            ended_by = "timeout"
        finally:
            ticker.cancel()
            for task in work:
                task.cancel()
            await asyncio.gather(*work, ticker, return_exceptions=True)
        return ended_by

    async def _tick(self) -> None:
        """Refresh the progress line: run time and the busiest link of this phase."""
        while True:
            base = self._phase_bytes_base
            moved = {link: total - base.get(link, 0) for link, total in self.record.builder.cumulative_wire_bytes.items()}
            busiest = max(moved.items(), key=lambda item: item[1], default=None)
            text = f"t={self.record.now():.0f} s"
            if busiest and busiest[1]:
                text += f"  busiest {busiest[0]} {busiest[1]} B"
            self.progress.info(text)
            await asyncio.sleep(PROGRESS_REFRESH)

    async def _action(self, action: Action, phase_start: float) -> None:
        await asyncio.sleep(max(0.0, phase_start + action.at - self.record.now()))
        if action.do == "restart":
            await self._restart(action)
            return
        flushed = act(self._network(), self.scenario, action)
        self.record.emit("action", do=action.do, between=list(action.between) if action.between else None,
                         groups=[list(g) for g in action.groups], flushed=flushed)
        self.progress.log(f"{self.record.now():8.1f} s  {action.do} {action.between or action.groups or 'every link'}")
        self._refresh_budgets()

    async def _restart(self, action: Action) -> None:
        """A homeserver's gateways stop and start again (Synapse runs on)."""
        assert action.homeserver is not None
        homeserver = self.homeservers[action.homeserver]
        budgets, federation = self.budgets.get(homeserver.name), self.federation_budgets
        await homeserver.restart_gateways(
            budgets.server if budgets is not None else None,
            federation.slowest(homeserver.federation_public) if federation is not None and homeserver.federated
            else None)
        self.record.emit("action", do="restart", between=None, groups=[], homeserver=homeserver.name, flushed=0)
        self.progress.log(f"{self.record.now():8.1f} s  restart {homeserver.name}'s gateways")
        self._refresh_budgets()

    def _refresh_budgets(self) -> None:
        """Re-derive every gateway's link budget from the route it takes now."""
        for name, budgets in self.budgets.items():
            changes = budgets.refresh()
            for user, budget in changes.devices.items():
                self.devices[user].retime(budget)
            if changes.server is not None:
                # the server has no link-wide budget to set: its devices' timers are made again instead
                self.homeservers[name].retime(budgets.for_address)
        federation = self.federation_budgets
        if federation is not None and federation.refresh():
            for homeserver in self.homeservers.values():
                homeserver.retime_federation(federation.lookup(homeserver.federation_public))

    def _network(self) -> Network:
        assert self.record.network is not None
        return self.record.network


async def run_scenario(scenario: Scenario, out_dir: str | Path, *, seed: int | None = None,
                       public_base: str | None = None, private_base: str | None = None,
                       console: Any | None = None, on_fabric: Callable[[Network], None] | None = None) -> RunResult:
    """Run `scenario`, write report.json, events.jsonl, capture.pcap and the plots into `out_dir`.

    `console`: a rich Console for progress bars and the summary (None: quiet).
    `public_base`/`private_base` override the scenario's address bases (tests
    use their own so they never share a socket address).  `on_fabric` is
    called with the network as soon as it has started (`meshsim run --ui`).
    """
    run = ScenarioRun(scenario, out_dir, seed=seed, public_base=public_base, private_base=private_base, console=console,
                      on_fabric=on_fabric)
    return await run.run()
