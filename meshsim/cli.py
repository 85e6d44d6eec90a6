"""``meshsim`` command line.

Subcommands: ``link`` (one shaped UDP relay), ``run`` (a scenario file,
see docs/meshsim.md) and ``ui`` (a scenario's links in the web UI).  Bad
arguments end with a one-line error on stderr and exit status 2; a socket
that cannot be opened, or a run that could not go on, ends with a one-line
error and status 1; a scenario run whose assertions or physical bound fail
ends with status 3; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from coap_gateway.transport import parse_netem_time

from .model import LinkProfile, describe_profile
from .net import DEFAULT_MAX_CLIENTS, DOWN, UP, EventLog, PcapWriter, Relay, parse_host_port
from .run import RunError, ScenarioError, load_scenario, plan_lines, run_scenario, summary_table
from .web import phase_names, run_scenario_with_ui, run_ui

EXIT_BAD_INPUT = 2
EXIT_RUNTIME_ERROR = 1
#: `meshsim run`: the run finished but an assertion or the physical bound failed
EXIT_ASSERTION_FAILED = 3
EXIT_INTERRUPTED = 130
#: netem's default queue limit, used when no limit is given
NETEM_DEFAULT_LIMIT = 1000
#: Ethernet (14) + IPv4 (20) + UDP (8): what a real link sends besides the payload
DEFAULT_OVERHEAD = 42

T = TypeVar("T")


class UsageError(Exception):
    """Bad input that is the user's, not a bug: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage first; one line is easier to read in a script's log
        self.exit(EXIT_BAD_INPUT, f"meshsim: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ link

_SHAPING_OPTIONS = ("rate", "delay", "jitter", "distribution", "loss", "gemodel", "dup", "corrupt", "limit")


def profile_from_args(args: argparse.Namespace) -> LinkProfile:
    """The link profile `meshsim link`'s options describe (UsageError if they do not)."""
    try:
        if args.netem is not None:
            given = [f"--{name}" for name in _SHAPING_OPTIONS if getattr(args, name) is not None]
            if given:
                raise UsageError(f"--netem replaces {', '.join(given)}: give one or the other")
            words = shlex.split(args.netem)
        else:
            words = _netem_words(args)
        profile = LinkProfile.from_netem_args(words)
        limit_seconds = parse_netem_time(args.limit_seconds) if args.limit_seconds is not None else None
        profile = replace(
            profile,
            overhead=profile.overhead + args.overhead,
            limit_bytes=args.limit_bytes,
            limit_seconds=limit_seconds,
        )
        if profile.limit_packets is None and profile.limit_bytes is None and profile.limit_seconds is None:
            profile = replace(profile, limit_packets=NETEM_DEFAULT_LIMIT)
        return profile
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _netem_words(args: argparse.Namespace) -> list[str]:
    words: list[str] = []
    if args.limit is not None:
        words += ["limit", str(args.limit)]
    if args.delay is not None or args.jitter is not None:
        words += ["delay", args.delay or "0s"]
        if args.jitter is not None:
            words.append(args.jitter)
    if args.distribution is not None:
        words += ["distribution", args.distribution]
    if args.loss is not None:
        words += ["loss", "random", args.loss]
    if args.gemodel is not None:
        if len(args.gemodel) > 4:
            raise UsageError("--gemodel takes at most 4 values: p [r [1-h [1-k]]]")
        words += ["loss", "gemodel", *args.gemodel]
    if args.dup is not None:
        words += ["duplicate", args.dup]
    if args.corrupt is not None:
        words += ["corrupt", args.corrupt]
    if args.rate is not None:
        words += ["rate", args.rate]
    return words


def cmd_link(args: argparse.Namespace) -> int:
    profile = profile_from_args(args)
    try:
        listen = parse_host_port(args.listen)
        target = parse_host_port(args.to)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if target[1] == 0:
        raise UsageError("--to needs a port other than 0")
    return _run(_run_link(args, profile, listen, target))


async def _run_link(args: argparse.Namespace, profile: LinkProfile, listen: Any, target: Any) -> int:
    from rich.console import Console
    from rich.live import Live

    out = Console()
    err = Console(stderr=True)
    with contextlib.ExitStack() as files:
        events = files.enter_context(EventLog(args.events)) if args.events else None
        capture = files.enter_context(PcapWriter(args.pcap)) if args.pcap else None
        relay = Relay(
            listen, target, profile, seed=args.seed, events=events, capture=capture, max_clients=args.max_clients
        )
        try:
            await relay.start()
        except (OSError, ValueError) as exc:
            print(f"meshsim: error: cannot start the relay: {exc}", file=sys.stderr)
            return EXIT_RUNTIME_ERROR
        print(
            f"meshsim link: listening on {_address(relay.listen_address)}, relaying to "
            f"{_address(relay.target_address)}: {describe_profile(profile)}, seed {args.seed}",
            flush=True,
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        try:
            if args.quiet or not err.is_terminal:
                await stopping.wait()
            else:
                with Live(_live_line(relay), console=err, refresh_per_second=4, transient=True) as live:
                    while not stopping.is_set():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.25):
                                await stopping.wait()
                        live.update(_live_line(relay))
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await relay.stop()
        out.print(summary_table(relay.snapshot()))
    return 0


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _direction(link: dict[str, Any]) -> str:
    lost = sum(link["dropped"].values())
    return (
        f"{link['offered_packets']} in, {link['delivered_packets']} out, {lost} lost, "
        f"{link['delivered_wire_bytes']} B on the wire, {link['in_flight_packets']} in flight"
    )


def _live_line(relay: Relay) -> str:
    snapshot = relay.snapshot()
    links = snapshot["links"]
    return (
        f"{snapshot['t']:8.1f} s  up: {_direction(links[UP])}  |  down: {_direction(links[DOWN])}  |  "
        f"clients {snapshot['counters']['clients']}"
    )


# ------------------------------------------------------------------ run


def shipped_scenarios() -> dict[str, Path]:
    """The scenarios that come with meshsim, by name."""
    folder = Path(__file__).parent / "scenarios"
    return {path.stem: path for path in sorted(folder.glob("*.toml"))}


def scenario_path(name: str) -> Path:
    """A scenario file: a path, or the name of a shipped scenario."""
    path = Path(name)
    if path.exists():
        return path
    shipped = shipped_scenarios()
    if name in shipped:
        return shipped[name]
    raise UsageError(f"no scenario file {name!r} (shipped scenarios: {', '.join(shipped) or 'none'})")


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.list:
        for name, path in shipped_scenarios().items():
            print(f"{name}\t{path}")
        return 0
    if args.scenario is None:
        raise UsageError("run needs a SCENARIO file (or --list)")
    path = scenario_path(args.scenario)
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if args.validate:
        print("\n".join(plan_lines(scenario)))
        return 0
    if args.out is None:
        raise UsageError("run needs --out DIR")
    console = None if args.quiet else Console(stderr=True)
    if args.ui is not None:
        listen = _listen_address(args.ui, "--ui")
        running = run_scenario_with_ui(scenario, path.read_text(encoding="utf-8"), args.out, listen,
                                       seed=args.seed, console=console)
    else:
        running = run_scenario(scenario, args.out, seed=args.seed, console=console)
    try:
        result = _run(_until_terminated(running))
    except (OSError, RunError) as exc:
        print(f"meshsim: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    if result is None:
        print(f"meshsim: interrupted; what was recorded is in {Path(args.out) / 'report.json'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{'passed' if result.passed else 'FAILED'}: report in {Path(args.out) / 'report.json'}")
    for failure in result.report.get("failures", ()):
        print(f"meshsim: {failure}", file=sys.stderr)
    if result.report.get("failures") and any(f.startswith("run error") for f in result.report["failures"]):
        return EXIT_RUNTIME_ERROR
    return 0 if result.passed else EXIT_ASSERTION_FAILED


def _listen_address(text: str, option: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


# ------------------------------------------------------------------ ui


def cmd_ui(args: argparse.Namespace) -> int:
    path = scenario_path(args.scenario)
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if args.phase is not None and args.phase not in phase_names(scenario):
        raise UsageError(f"--phase: no phase {args.phase!r} (phases: {', '.join(phase_names(scenario))})")
    if any(not 0 < port < 65536 for port in args.port or ()):
        raise UsageError("--port must be in 1..65535")
    listen = _listen_address(args.listen, "--listen")
    return _run(run_ui(
        scenario, path.read_text(encoding="utf-8"), listen, seed=args.seed, phase=args.phase, ports=args.port,
        events_path=args.events, pcap_path=args.pcap, quiet=args.quiet,
    ))


async def _until_terminated(coro: Coroutine[Any, Any, T]) -> T | None:
    """Run `coro`; None if Ctrl-C or SIGTERM stopped it (after its own clean-up: Synapse is not orphaned)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)


# ------------------------------------------------------------------ main


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed, asyncio's loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meshsim", description="Mesh network simulator for very slow links.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    link = commands.add_parser(
        "link",
        help="one shaped UDP relay between two endpoints",
        description=(
            "Relay UDP from --listen to --to and back through one emulated link with netem's "
            "semantics (duplicate, loss, corrupt, queue, exact serialiser, delay). Units as tc: "
            "100bit, 2kbit, 1s, 200ms, 20%%. Several clients may share the relay (each gets its own "
            "upstream port, like a NAT) and the link. Ctrl-C prints a summary."
        ),
    )
    link.add_argument("--listen", required=True, metavar="HOST:PORT", help="where clients send (port 0: any)")
    link.add_argument("--to", required=True, metavar="HOST:PORT", help="the endpoint behind the link")
    shaping = link.add_argument_group("shaping (both directions)")
    shaping.add_argument("--rate", help="serialiser rate, e.g. 100bit, 9600bit, 1mbit (default: unlimited)")
    shaping.add_argument("--delay", help="one-way delay after the serialiser, e.g. 1s")
    shaping.add_argument("--jitter", help="delay spread, e.g. 200ms (uniform ± unless --distribution)")
    shaping.add_argument("--distribution", choices=("uniform", "normal", "pareto", "paretonormal"))
    shaping.add_argument("--loss", help="random loss, e.g. 20%%")
    shaping.add_argument(
        "--gemodel", nargs="+", metavar="PCT", help="Gilbert-Elliott loss: p [r [1-h [1-k]]] (tc's defaults)"
    )
    shaping.add_argument("--dup", help="duplication probability, e.g. 1%%")
    shaping.add_argument("--corrupt", help="probability of one flipped bit, e.g. 0.1%%")
    shaping.add_argument(
        "--limit", type=int, metavar="N",
        help=f"most packets queued for the serialiser (default {NETEM_DEFAULT_LIMIT}, netem's, if no limit is given)",
    )
    shaping.add_argument("--limit-bytes", type=int, metavar="N", help="most bytes (with overhead) queued")
    shaping.add_argument("--limit-seconds", metavar="TIME", help="longest wait before sending, e.g. 30s")
    shaping.add_argument(
        "--overhead", type=int, default=DEFAULT_OVERHEAD, metavar="BYTES",
        help=f"bytes counted per packet besides the payload (default {DEFAULT_OVERHEAD}: Ethernet+IPv4+UDP; 0 for raw radio)",
    )
    shaping.add_argument(
        "--netem", metavar="ARGS",
        help='netem arguments verbatim instead of the options above, e.g. "rate 100bit delay 1s loss 5%%"; '
        "a packet overhead given there adds to --overhead",
    )
    link.add_argument("--seed", type=int, default=0, help="seed of every random stream (default 0)")
    link.add_argument("--max-clients", type=int, default=DEFAULT_MAX_CLIENTS, metavar="N",
                      help=f"clients tracked at once; the longest silent is dropped (default {DEFAULT_MAX_CLIENTS})")
    link.add_argument("--events", metavar="FILE", help="write a JSONL event log")
    link.add_argument("--pcap", metavar="FILE", help="write every datagram that leaves the link to a pcap file")
    link.add_argument("--quiet", action="store_true", help="no live counter line")
    link.set_defaults(func=cmd_link)

    run = commands.add_parser(
        "run",
        help="run a scenario file: Synapse, gateways and matrix-nio clients over shaped links",
        description=(
            "Run a scenario (TOML; see docs/meshsim.md) on the userspace fabric: a real Synapse behind a "
            "server gateway, matrix-nio clients behind client gateways, phases, partitions, messages. Writes "
            "report.json, events.jsonl, capture.pcap and PNG plots into --out. Exit status 0 when every "
            "assertion and the physical bound hold, 3 when one fails, 1 when the run could not go on."
        ),
    )
    run.add_argument("scenario", nargs="?", metavar="SCENARIO",
                     help="a scenario file, or the name of a shipped one (e.g. 100bps-pair)")
    run.add_argument("--out", metavar="DIR", help="where the report, events, capture and plots go")
    run.add_argument("--seed", type=int, help="seed of every random stream (default: the scenario's)")
    run.add_argument("--validate", action="store_true", help="check the scenario and print the plan; run nothing")
    run.add_argument("--list", action="store_true", help="list the shipped scenarios")
    run.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    run.add_argument("--ui", metavar="HOST:PORT",
                     help="also serve the web UI there, showing the run's links and traffic live (e.g. 127.0.0.1:8080)")
    run.set_defaults(func=cmd_run)

    ui = commands.add_parser(
        "ui",
        help="a scenario's links in the web UI, for your own UDP/CoAP traffic",
        description=(
            "Start the scenario's fabric (its nodes and links only: no Synapse, gateways or clients, no phases) "
            "and the web UI: the topology, live traffic per link, links to reshape or fail by clicking, nodes to "
            "drag (with [topology] range their links follow). An application on node A binds A's private address "
            "(127.1.0.N) and sends to node B's public address (127.0.0.M) on a --port; the addresses are printed "
            "at start. Ctrl-C stops it and prints the counters."
        ),
    )
    ui.add_argument("scenario", metavar="SCENARIO", help="a scenario file, or the name of a shipped one (e.g. 100bps-chain)")
    ui.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                    help="where the web UI listens (default 127.0.0.1:8080; it has no authentication, keep it on loopback)")
    ui.add_argument("--port", type=int, action="append", metavar="PORT",
                    help="a port the fabric listens on at every node (repeatable; default the scenario's coap_port, 5683)")
    ui.add_argument("--phase", metavar="NAME",
                    help="start with the links as they are in this phase (its and the earlier phases' [[phase.link]] changes)")
    ui.add_argument("--seed", type=int, help="seed of every random stream (default: the scenario's)")
    ui.add_argument("--events", metavar="FILE", help="write the fabric's JSONL event log")
    ui.add_argument("--pcap", metavar="FILE", help="write every hop of every datagram to a pcap file")
    ui.add_argument("--quiet", action="store_true", help="print no addresses and no summary")
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "max_clients", 1) < 1:
            raise UsageError("--max-clients must be at least 1")
        return args.func(args)
    except UsageError as exc:
        print(f"meshsim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
