"""``meshsim ui`` and ``meshsim run --ui``: what the command line calls (meshsim/cli.py parses)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..net import EventLog, Fabric, Network, PcapWriter
from ..run import Scenario, build_topology, resolve_change, run_scenario, summary_table
from .layout import range_rule_from_toml, scenario_positions
from .server import WebUI


def scenario_ui(scenario: Scenario, *, tick: float = 0.1) -> WebUI:
    """A WebUI with nothing attached yet, titled after `scenario`."""
    return WebUI(title=f"meshsim: {scenario.name}", tick=tick)


def attach_scenario(ui: WebUI, network: Network, scenario: Scenario, source_text: str | None) -> None:
    """Show `network` with the scenario's positions and, if it has one, its range rule."""
    rule = range_rule_from_toml(source_text, scenario) if source_text is not None else None
    ui.attach(network, positions=scenario_positions(scenario), range_rule=rule)


def phase_names(scenario: Scenario) -> list[str]:
    return [phase.name for phase in scenario.phases]


async def run_ui(
    scenario: Scenario,
    source_text: str | None,
    listen: tuple[str, int],
    *,
    seed: int | None = None,
    phase: str | None = None,
    ports: Sequence[int] | None = None,
    events_path: str | None = None,
    pcap_path: str | None = None,
    quiet: bool = False,
) -> int:
    """`meshsim ui`: the scenario's fabric (no Synapse, no clients) and the UI, until a signal."""
    from rich.console import Console

    topology = build_topology(scenario, seed=seed)
    if phase is not None:
        # every [[phase.link]] change up to and including `phase`, in order, as the runner would
        for each in scenario.phases:
            for change in each.links:
                for a, b, forward, backward, weight in resolve_change(scenario, change, topology):
                    topology.set_link(a, b, forward, now=0.0, reverse=backward, weight=weight)
            if each.name == phase:
                break
    listen_ports = list(ports) if ports else [scenario.network.coap_port]
    with contextlib.ExitStack() as files:
        events = files.enter_context(EventLog(events_path)) if events_path else None
        capture = files.enter_context(PcapWriter(pcap_path)) if pcap_path else None
        fabric = Fabric(topology, ports=listen_ports, events=events, capture=capture)
        ui = scenario_ui(scenario)
        try:
            await fabric.start()
        except OSError as exc:
            print(f"meshsim: error: cannot start the fabric: {exc}", file=sys.stderr)
            return 1
        try:
            attach_scenario(ui, fabric, scenario, source_text)
            try:
                await ui.start(*listen)
            except OSError as exc:
                print(f"meshsim: error: cannot listen on {listen[0]}:{listen[1]}: {exc}", file=sys.stderr)
                return 1
            if not quiet:
                _print_addresses(fabric, listen_ports, ui.url)
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stopping.set)
            try:
                await stopping.wait()
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
                await ui.stop()
        finally:
            await fabric.stop()
        if not quiet:
            Console().print(summary_table(fabric.snapshot()))
    return 0


def _print_addresses(fabric: Network, ports: Sequence[int], url: str) -> None:
    print(f"meshsim ui: {url}  (Ctrl-C stops)")
    print(f"fabric listening on ports {', '.join(map(str, ports))} of every public address:")
    width = max(len(node.name) for node in fabric.topology)
    for node in fabric.topology:
        print(f"  {node.name:<{width}}  bind {node.private_ip}  reach it at {node.public_ip}")
    print("an application on node A binds A's bind address and sends to B's public one", flush=True)


async def run_scenario_with_ui(
    scenario: Scenario, source_text: str | None, out_dir: str | Path, listen: tuple[str, int], **options: Any
) -> Any:
    """`meshsim run --ui`: `run_scenario` with the UI showing its fabric as soon as it starts."""
    ui = scenario_ui(scenario)
    await ui.start(*listen)
    print(f"meshsim: web UI on {ui.url}", file=sys.stderr, flush=True)
    try:
        return await run_scenario(
            scenario, out_dir, on_fabric=lambda fabric: attach_scenario(ui, fabric, scenario, source_text), **options
        )
    finally:
        await ui.stop()
