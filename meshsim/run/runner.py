"""Run a scenario: the thin asyncio shell that puts the network, the homeserver and the workload together.

What runs, per scenario:

- the network over the scenario's topology (`links`: the userspace
  `Fabric`), writing events.jsonl and capture.pcap, and with secure
  gateways capture.keylog beside it: the keys of every session, so
  Wireshark decrypts the capture (docs/wireshark.md);
- on the homeserver node, a real Synapse (SQLite, in a temporary directory,
  listening on the node's private address) fronted by a server gateway, and
  per client a client gateway on its device node (`gateways`);
- per client, matrix-nio talking HTTP to its gateway (`workload`).

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
from .gateways import DeviceGateway, Homeserver, gateway_counters, quiet_shutdown
from .links import PathBudgets, act, change_links, open_network
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
        if len(scenario.homeservers) != 1:
            raise RunError("this version runs exactly one homeserver (federation is not available yet)")
        self.scenario = scenario
        self.out_dir = Path(out_dir)
        self.seed = scenario.seed if seed is None else seed
        self.topology: Topology = build_topology(scenario, seed=self.seed, public_base=public_base, private_base=private_base)
        self.record = RunRecord()
        self.progress = PhaseProgress(console)
        spec = scenario.homeservers[0]
        self.homeserver = Homeserver(spec.name, self.topology.node(spec.node), scenario.gateway,
                                     scenario.network.coap_port)
        self.workload = Workload(scenario, self.topology, self.record, self.progress)
        #: per user, its device's client gateway
        self.devices: dict[str, DeviceGateway] = {}
        self.budgets: PathBudgets | None = None
        #: called with the network once it has started (e.g. to show it in the web UI)
        self.on_fabric = on_fabric
        self._phase_bytes_base: dict[str, int] = {}
        #: the gateways' session keys, beside capture.pcap (secure runs only)
        self.key_log: KeyLog | None = None

    def _scenario_event(self) -> dict[str, Any]:
        s = self.scenario
        roles = {c.node: "client" for c in s.clients}
        roles[self.homeserver.node.name] = "homeserver"
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
        homeserver, workload = self.homeserver, self.workload
        self.progress.phase("starting Synapse", 1)
        await homeserver.start_synapse(tmp / homeserver.name)
        self.progress.advance()

        network = self.record.network = open_network(self.scenario, self.topology, events=self.record.events,
                                                     capture=capture)
        network.subscribe(self.record.builder.feed)
        await network.start()
        if self.on_fabric is not None:
            self.on_fabric(network)

        devices = {user: client.node for user, client in workload.clients.items()}
        self.budgets = budgets = PathBudgets(self.topology, homeserver.node, devices, self.scenario.gateway)
        await homeserver.start_gateway(budgets.server, budgets.for_address, tmp / f"{homeserver.name}-gateway",
                                       key_log=self.key_log)
        for user in workload.clients:
            device = self.devices[user] = DeviceGateway(devices[user], budgets.devices[user])
            await device.start(homeserver, secure=self.scenario.gateway.secure, key_log=self.key_log)
            workload.connect(user, device.base_url)
        self.progress.log(
            f"Synapse {homeserver.name} on node {homeserver.node.name}; "
            f"{len(workload.clients)} clients; {len(self.topology.edges())} links; seed {self.seed}"
        )

    async def _teardown(self) -> None:
        await self.workload.stop_sync_loops()
        with contextlib.suppress(Exception):
            await self._history_check()
        self.record.emit("gateways", gateways=gateway_counters(self.homeserver, self.devices))
        with quiet_shutdown():
            for device in self.devices.values():
                await device.stop()
            await self.workload.close()
            await self.homeserver.stop_gateway()
        if self.record.network is not None:
            await self.record.network.stop()
        await self.homeserver.stop_synapse(self.out_dir)

    async def _history_check(self) -> None:
        """Count each message in its room's history on the homeserver itself (not over the links)."""
        if self.homeserver.synapse is None or not self.workload.room_ids:
            return
        for room in self.scenario.rooms:
            reader = self.workload.history_reader(room)
            if reader is None:
                continue
            events = await self.homeserver.room_history(*reader)
            self.record.emit("history", room=room.name, counts=history_counts(events, self.workload.bodies(room)))

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
                    await asyncio.sleep(start + phase.duration - self.record.now())
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
        network = self._network()
        await asyncio.sleep(max(0.0, phase_start + action.at - self.record.now()))
        flushed = act(network, self.scenario, action)
        self.record.emit("action", do=action.do, between=list(action.between) if action.between else None,
                         groups=[list(g) for g in action.groups], flushed=flushed)
        self.progress.log(f"{self.record.now():8.1f} s  {action.do} {action.between or action.groups or 'every link'}")
        self._refresh_budgets()

    def _refresh_budgets(self) -> None:
        """Re-derive every gateway's link budget from the route it takes now."""
        assert self.budgets is not None
        changes = self.budgets.refresh()
        for user, budget in changes.devices.items():
            self.devices[user].retime(budget)
        if changes.server is not None:
            # the server has no link-wide budget to set: its devices' timers are made again instead
            self.homeserver.retime(self.budgets.for_address)

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
