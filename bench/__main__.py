"""``python -m bench``: the bandwidth benchmark (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from coap_gateway.codec import DEFAULT_PROFILE

from .run import REPO, Settings, missing_prerequisites

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="HTTPS+JSON vs the gateway on DESIGN.md's workloads (W1–W5), one real Synapse, matrix-nio; "
                    "bytes from a loopback capture, timings at 100 bit/s, server-gateway CPU cost. "
                    "Needs root, tcpdump and nginx.")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=REPO / "bench" / "results", metavar="DIR",
                     help="where the results JSON goes (default: bench/results)")
    out.add_argument("--name", help="results file name without .json (default: the date)")
    out.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md", metavar="PATH",
                     help="the Markdown page to regenerate (default: docs/benchmarks.md)")
    out.add_argument("--no-docs", action="store_true", help="write the results JSON only")
    out.add_argument("--img-dir", type=Path, default=REPO / "docs" / "img", metavar="DIR",
                     help="where the PNG charts go (default: docs/img)")
    out.add_argument("--pcap", type=Path, metavar="PATH", help="keep the loopback capture here")
    out.add_argument("--report-only", type=Path, metavar="JSON",
                     help="run nothing: re-render the page and charts from a results file")
    run = p.add_argument_group("run")
    run.add_argument("--quick", action="store_true",
                     help="a reduced run (under a minute): 20 s idle with 10 s long-polls, the 'slow' link at "
                          "4000 bit/s, 2 s of CPU")
    run.add_argument("--idle-seconds", type=float, help="W4's idle period (default 120; --quick: 20)")
    run.add_argument("--sync-timeout", type=float, metavar="SECONDS",
                     help="the long-poll timeout of W2 and W4 (default 30, nio's usual; --quick: 10)")
    run.add_argument("--slow-rate", type=float, metavar="BIT/S", help="the slow link's rate (default 100)")
    run.add_argument("--slow-delay", type=float, metavar="SECONDS", help="its one-way latency (default 1)")
    run.add_argument("--skip-slow", action="store_true", help="no slow-link timings")
    run.add_argument("--cpu-seconds", type=float, help="measured period of each CPU run (default 8)")
    run.add_argument("--cpu-concurrency", type=int, help="concurrent requests of the CPU load (default 64)")
    run.add_argument("--cpu-rounds", type=int, metavar="N",
                     help="measure each front end N times, alternating (default 3; --quick: 1)")
    run.add_argument("--skip-cpu", action="store_true", help="no CPU measurement")
    run.add_argument("--skip-federation", action="store_true",
                     help="no W6 (a federated message) and no federated joins")
    run.add_argument("--skip-loss", action="store_true", help="no latency-under-loss runs (virtual time)")
    run.add_argument("--loss-seeds", type=int, metavar="N", help="seeds per loss rate (default 20)")
    run.add_argument("--homeserver", metavar="URL",
                     help="use this running Synapse (plain HTTP, open registration) instead of starting one")
    run.add_argument("--profile", default=DEFAULT_PROFILE, help=f"gateway profile (default {DEFAULT_PROFILE})")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    return p


def _command() -> str:
    """How this run was started, for the report (logging flags left out)."""
    shown = [a for a in sys.argv[1:] if a not in ("-v", "--verbose")]
    return "python -m bench " + " ".join(shown) if shown else "make bench"


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "out_dir": args.out,
        "docs": None if args.no_docs else args.docs,
        "img_dir": args.img_dir,
        "pcap": args.pcap,
        "name": args.name,
        "skip_slow": args.skip_slow,
        "skip_cpu": args.skip_cpu,
        "skip_federation": args.skip_federation,
        "skip_loss": args.skip_loss,
        "profile": args.profile,
        "command": _command(),
    }
    for arg, key, convert in (("idle_seconds", "idle_seconds", float), ("slow_rate", "slow_rate", float),
                              ("slow_delay", "slow_delay", float), ("loss_seeds", "loss_seeds", int), ("cpu_seconds", "cpu_seconds", float),
                              ("cpu_concurrency", "cpu_concurrency", int), ("cpu_rounds", "cpu_rounds", int)):
        value = getattr(args, arg)
        if value is not None:
            overrides[key] = convert(value)
    if args.sync_timeout is not None:
        overrides["sync_timeout_ms"] = int(args.sync_timeout * 1000)
    settings = Settings.quick_defaults(**overrides) if args.quick else Settings(**overrides)
    if settings.idle_seconds <= 0 or settings.sync_timeout_ms <= 0 or settings.slow_rate <= 0 \
            or settings.slow_delay < 0 or settings.cpu_seconds <= 0 or settings.cpu_concurrency <= 0 \
            or settings.cpu_rounds <= 0:
        raise ValueError("durations, rates and concurrency must be positive")
    return settings


def summary(results: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title="bench: bytes on the wire (link level for the gateway)")
    for col in ("workload", "HTTPS+JSON", "gateway", "gateway link", "ratio"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    for key in ("W1", "W2", "W1x", "W2x", "W3", "W5", "W6"):
        if key not in results["workloads"]:
            continue  # W6: --skip-federation, or its part failed
        b, g = results["workloads"][key]["baseline"], results["workloads"][key]["gateway"]
        table.add_row(key, f"{b['wire_bytes']} B", f"{g['wire_bytes']} B", f"{g['payload_bytes']} B",
                      f"{b['wire_bytes'] / g['wire_bytes']:.1f}×")
    for key, title in (("W4", "W4 idle"), ("W4s", "W4s idle, sliding sync")):
        if key not in results["workloads"]:
            continue
        b, g = results["workloads"][key]["baseline"], results["workloads"][key]["gateway"]
        table.add_row(title, f"{b['bit_per_s']:.1f} bit/s", f"{g['bit_per_s']:.1f} bit/s",
                      f"{g['link_bit_per_s']:.1f} bit/s",
                      f"{b['bit_per_s'] / g['bit_per_s']:.1f}×" if g["bit_per_s"] else "∞")
    console.print(table)
    if results.get("slow_link"):
        s = results["slow_link"]
        console.print(f"at {s['rate_bps']:g} bit/s, {s['delay_s']:g} s: W5 {s['gateway']['w5_seconds']:.1f} s, "
                      f"send → ack {s['gateway']['send_ack_seconds']:.1f} s (HTTPS+JSON ≥ "
                      f"{s['baseline_bound']['w5_seconds']:.0f} s and ≥ {s['baseline_bound']['send_ack_seconds']:.0f} s)")
    fed = results.get("federation") or {}
    for join in fed.get("joins", []):
        console.print(f"federated join at {join['rate_bps']:g} bit/s, {join['delay_s']:g} s: "
                      f"{'joined' if join['joined'] else 'NOT joined'} after {join['seconds']:.1f} s, "
                      f"{join['a_to_b']['link_bytes']} B A → B, {join['b_to_a']['link_bytes']} B B → A")
    if fed.get("error"):
        console.print(f"federation part failed: {fed['error']}")
    for row in (results.get("loss_latency") or {}).get("rows", []):
        console.print(f"latency at {row['loss']:.0%} loss ({row['seeds']} seeds, {row['messages']} messages): "
                      f"median {row['median_s']} s, 95th percentile {row['p95_s']} s, max {row['max_s']} s; "
                      f"{row['undelivered']} undelivered, {row['duplicates']} duplicated, "
                      f"{row['undecodable']} undecodable pushes")
    if results.get("cpu"):
        c = results["cpu"]
        console.print(f"CPU: server gateway {c['gateway']['requests_per_cpu_second']:.0f} req/s per core, "
                      f"aiohttp pass-through {c['passthrough']['requests_per_cpu_second']:.0f} "
                      f"({c['passthrough_paced']['requests_per_cpu_second']:.0f} at the gateway's rate)")
    for row in results.get("targets", []):
        if row["measured"] is not None:
            console.print(f"  target {row['key']:8} ≤ {row['limit']:g} {row['unit']:5} measured "
                          f"{row['measured']:g}: {'met' if row['met'] else 'not yet'}")
    for name, path in results.get("files", {}).items():
        console.print(f"  wrote {name}: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.verbose:  # the benchmark's steps and the gateways' own notes (retransmissions…), not nio's chatter
        for name in ("bench", "coap"):
            logging.getLogger(name).setLevel(logging.INFO)
    from rich.console import Console
    console = Console(stderr=True)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.report_only is not None:
        from .report import rerender
        if not args.report_only.exists():
            print(f"bench: error: {args.report_only}: no such file", file=sys.stderr)
            return EXIT_BAD_INPUT
        for name, path in rerender(args.report_only, settings).items():
            console.print(f"wrote {name}: {path}")
        return 0
    why = missing_prerequisites()
    if why:
        print(f"bench: cannot run: {why}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import asyncio

    from .run import run_bench
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        results = runner(run_bench(settings, homeserver=args.homeserver, console=console))
    except KeyboardInterrupt:
        return 130
    summary(results, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
