"""The benchmark run: start everything, run W1–W5 on both transports, measure, report.

Order of a run:

1. Synapse (a fresh SQLite homeserver in a temporary directory, or one given);
   nginx (TLS 1.3) and the server gateway (UDP) in front of it;
2. the loopback capture, filtered to nginx's and the server gateway's ports;
3. accounts and rooms, straight on Synapse (not counted);
4. per transport: warm-up, W1 + W2, W1s, W3, W5, W1x + W2x (sliding sync) — each in its own capture window;
5. W4, then W4s (sliding sync), for both transports at once (separate devices, separate windows);
6. the capture stops (its kernel drop count must be 0);
7. the slow link: W5 and send → acknowledgement at 100 bit/s, 1 s latency;
8. CPU: server gateway vs an aiohttp pass-through, requests per CPU second;
9. results JSON, docs/benchmarks.md and its charts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import platform
import secrets
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from coap_gateway.codec import DEFAULT_PROFILE
from coap_gateway.tools import free_port

from . import targets
from .baseline import BaselineTransport, NginxTlsProxy, nginx_binary, nginx_version
from .capture import LiveCapture, SyncWatch, tcpdump_available
from .gateway_side import GatewayTransport
from .workloads import RoleIps, Setup, Workloads

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent

#: loopback addresses: one per server, one per device (the capture tells devices apart by address)
NGINX_IP = "127.0.0.2"
GATEWAY_IP = "127.0.0.3"
CPU_IP = "127.0.0.4"
BASELINE_DEVICES = RoleIps.numbered("127.0.0.1")  # 127.0.0.11 … 15
GATEWAY_DEVICES = RoleIps.numbered("127.0.0.2")  # 127.0.0.21 … 25


@dataclass
class Settings:
    out_dir: Path = REPO / "bench" / "results"
    docs: Path | None = REPO / "docs" / "benchmarks.md"
    img_dir: Path = REPO / "docs" / "img"
    quick: bool = False
    idle_seconds: float = 120.0
    sync_timeout_ms: int = 30_000
    slow_rate: float = targets.SLOW_RATE_BPS
    slow_delay: float = targets.SLOW_DELAY_S
    skip_slow: bool = False
    cpu_seconds: float = 8.0
    cpu_concurrency: int = 64
    cpu_sessions: int = 8
    cpu_warmup_requests: int = 500
    #: each front end measured this many times, alternating (bench.cpu)
    cpu_rounds: int = 3
    skip_cpu: bool = False
    #: W6 and the federated joins (two Synapse pairs, ~3 min)
    skip_federation: bool = False
    #: message latency under loss, in virtual time (seconds of CPU, not of link time)
    skip_loss: bool = False
    loss_seeds: int = 20
    pcap: Path | None = None
    profile: str = DEFAULT_PROFILE
    #: results file name (default: the date)
    name: str | None = None
    command: str = "make bench"

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(quick=True, idle_seconds=20.0, sync_timeout_ms=10_000, slow_rate=4000.0,
                                      slow_delay=0.05, cpu_seconds=2.0, cpu_concurrency=32, cpu_sessions=4,
                                      cpu_warmup_requests=100, cpu_rounds=1)
        values.update(overrides)
        return cls(**values)


def missing_prerequisites() -> str | None:
    """Why the benchmark cannot run here (None: it can)."""
    why = tcpdump_available()
    if why:
        return why
    if nginx_binary() is None:
        return "nginx is not installed (make system-packages)"
    return None


class Progress:
    """rich progress bars when there is a console, silence otherwise."""

    def __init__(self, console: Any | None, steps: int) -> None:
        self.console = console
        self._progress = None
        self._main = None
        self._sub = None
        if console is not None:
            from rich.progress import (
                BarColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress
            self._progress = RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                          TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                          console=console, transient=False)
            self._main = self._progress.add_task("benchmark", total=steps)

    def __enter__(self) -> Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def step(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._main, description=text)
        log.info("%s", text)

    def done(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._main)

    def sub(self, text: str, fraction: float) -> None:
        """A second bar for a long step (idle period, slow link, CPU)."""
        if self._progress is None:
            return
        if self._sub is None:
            self._sub = self._progress.add_task(text, total=1.0)
        self._progress.update(self._sub, description=text, completed=fraction)
        if fraction >= 1.0:
            self._progress.remove_task(self._sub)
            self._sub = None

    def note(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)
        log.info("%s", text)


async def _ticker(progress: Progress, text: str, seconds: float) -> None:
    """Moves a bar through a fixed period (display only)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        elapsed = loop.time() - start
        progress.sub(text, min(0.99, elapsed / seconds) if seconds > 0 else 0.99)
        await asyncio.sleep(1.0)


def _versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpus": os.cpu_count()}
    for dist in ("matrix-synapse", "matrix-nio", "aiocoap", "aiohttp", "uvloop", "cryptography"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    nginx = nginx_binary()
    out["nginx"] = nginx_version(nginx) if nginx else None
    import ssl
    out["openssl"] = ssl.OPENSSL_VERSION
    return out


def _workload_entry(result: Any, *, frames: bool = True) -> dict[str, Any]:
    return result.as_dict(with_frames=frames)


def _idle_entry(result: Any, extra: dict[str, Any]) -> dict[str, Any]:
    entry = result.as_dict(with_frames=False)
    duration = result.duration or float("nan")
    entry.update(extra)
    entry["bytes_per_hour"] = round(result.wire_bytes * 3600 / duration, 1)
    entry["link_bytes_per_hour"] = round(result.payload_bytes * 3600 / duration, 1)
    entry["bit_per_s"] = round(result.wire_bytes * 8 / duration, 3)
    entry["link_bit_per_s"] = round(result.payload_bytes * 8 / duration, 3)
    entry["wire_bytes_per_cycle"] = round(result.wire_bytes / extra["cycles"], 1)
    entry["payload_bytes_per_cycle"] = round(result.payload_bytes / extra["cycles"], 1)
    return entry


def _quiet_shutdown_noise(loop: asyncio.AbstractEventLoop) -> None:
    """Devices are stopped with requests still open (a cancelled sync loop);
    aiocoap then fails their futures with LibraryShutdown, which nobody awaits
    any more.  That is expected here: keep it out of the console."""
    from aiocoap.error import LibraryShutdown

    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), LibraryShutdown):
            log.debug("ignored at shutdown: %s", context.get("message"))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def run_bench(settings: Settings, *, homeserver: str | None = None, console: Any | None = None) -> dict[str, Any]:
    """Run everything; returns the results document (also written to ``settings.out_dir``)."""
    why = missing_prerequisites()
    if why:
        raise RuntimeError(f"cannot run the benchmark: {why}")
    _quiet_shutdown_noise(asyncio.get_running_loop())
    started = datetime.datetime.now(datetime.UTC)
    t_start = time.monotonic()
    steps = 11 - settings.skip_slow - settings.skip_cpu - settings.skip_federation - settings.skip_loss
    results: dict[str, Any] = {
        "schema": 1,
        "date": started.date().isoformat(),
        "started": started.isoformat(timespec="seconds"),
        "command": settings.command,
        "quick": settings.quick,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()
                     if k not in ("out_dir", "docs", "img_dir", "pcap", "name", "command")},
        "environment": _versions(),
        "workloads": {},
    }
    with Progress(console, steps) as progress, tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        async with contextlib.AsyncExitStack() as stack:
            # 1. servers
            if homeserver is None:
                from coap_gateway.tools import LocalSynapse
                progress.step("starting Synapse (a fresh homeserver on SQLite)")
                synapse = LocalSynapse(tmp / "synapse")
                await synapse.start()
                stack.push_async_callback(synapse.stop)
                homeserver = synapse.base_url
            progress.step("starting nginx (TLS 1.3) and the server gateway")
            proxy = NginxTlsProxy(tmp / "nginx", listen=(NGINX_IP, free_port(NGINX_IP)), upstream=homeserver)
            await proxy.start()
            stack.push_async_callback(proxy.stop)
            gateway = GatewayTransport(homeserver, (GATEWAY_IP, 0), profile=settings.profile)
            await gateway.start()
            stack.push_async_callback(gateway.stop)
            baseline = BaselineTransport(proxy)
            progress.done()

            # 2. capture
            pcap_path = settings.pcap or tmp / "capture.pcap"
            # the homeserver's port too: not counted (server side), but it shows
            # when Synapse holds a device's long-poll (SyncWatch)
            hs = urlsplit(homeserver)
            hs_endpoint = (socket.gethostbyname(hs.hostname or "127.0.0.1"), hs.port or 80)
            capture = LiveCapture(f"({baseline.bpf()}) or ({gateway.bpf()}) or "
                                  f"(tcp and host {hs_endpoint[0]} and port {hs_endpoint[1]})", pcap_path)
            watch = SyncWatch(hs_endpoint)
            capture.frame_observers.append(watch)
            await capture.start()
            capture_stopped = False

            async def stop_capture() -> None:
                if not capture_stopped:
                    await capture.stop()
            stack.push_async_callback(stop_capture)
            results["capture"] = {"filter": capture.filter, "interface": "lo",
                                  "pcap": str(settings.pcap) if settings.pcap else None}

            # 3. accounts (same name lengths for both transports)
            progress.step("accounts and rooms (straight on Synapse, not counted)")
            tag = secrets.token_hex(3)
            setup = Setup(homeserver)
            stack.push_async_callback(setup.close)
            cast_b, cast_g, cast_s = await asyncio.gather(setup.cast(f"b{tag}"), setup.cast(f"g{tag}"),
                                                          setup.cast(f"s{tag}"))
            progress.done()

            # 4. W1, W2, W3, W5 per transport
            runs = {}
            for transport, cast, ips in ((baseline, cast_b, BASELINE_DEVICES), (gateway, cast_g, GATEWAY_DEVICES)):
                progress.step(f"{transport.label}: W1 + W2, W1s, W3, W5, W1x + W2x")
                w = Workloads(capture, watch, transport, cast, ips, sync_timeout_ms=settings.sync_timeout_ms)
                stack.push_async_callback(w.close)
                runs[transport.name] = w
                await w.warm_up()
                r1, r2, info = await w.w1_w2()
                r1s = await w.w1_sender()
                r3 = await w.w3()
                r5, info5 = await w.w5()
                r1x, r2x, infox = await w.sliding_conversation()
                for key, result in (("W1", r1), ("W1s", r1s), ("W2", r2), ("W3", r3), ("W1x", r1x), ("W2x", r2x)):
                    results["workloads"].setdefault(key, {})[transport.name] = _workload_entry(result)
                entry5 = _workload_entry(result=r5, frames=False)
                entry5.update(info5)
                results["workloads"].setdefault("W5", {})[transport.name] = entry5
                results["workloads"]["W2"][transport.name].update(
                    parked=info["parked"], sync_responses=info["sync_responses"])
                results["workloads"]["W2x"][transport.name].update(parked=infox["parked"])
                progress.done()

            # 5. W4, both transports at once
            cycles = max(1, round(settings.idle_seconds * 1000 / settings.sync_timeout_ms))
            period = cycles * settings.sync_timeout_ms / 1000
            progress.step(f"W4 idle: {cycles} long-poll cycle(s) of {settings.sync_timeout_ms / 1000:g} s, "
                          "both transports at once")
            ticker = asyncio.create_task(_ticker(progress, f"idle ({period:g} s)", period))
            try:
                (rb, xb), (rg, xg) = await asyncio.gather(runs["baseline"].w4(cycles), runs["gateway"].w4(cycles))
            finally:
                ticker.cancel()
                progress.sub("idle", 1.0)
            results["workloads"]["W4"] = {"baseline": _idle_entry(rb, xb), "gateway": _idle_entry(rg, xg)}
            progress.done()

            # 5b. W4s: the same with sliding sync (Element X), both transports at once
            progress.step(f"W4s idle, sliding sync: {cycles} long-poll cycle(s), both transports at once")
            ticker = asyncio.create_task(_ticker(progress, f"idle ({period:g} s)", period))
            try:
                (rb, xb), (rg, xg) = await asyncio.gather(runs["baseline"].w4_sliding(cycles),
                                                          runs["gateway"].w4_sliding(cycles))
            finally:
                ticker.cancel()
                progress.sub("idle", 1.0)
            results["workloads"]["W4s"] = {"baseline": _idle_entry(rb, xb), "gateway": _idle_entry(rg, xg)}
            progress.done()

            # 6. capture done
            capture_stopped = True
            stats = await capture.stop()
            results["capture"].update(stats.as_dict())
            results["link_checks"] = runs["gateway"].link_checks
            for w in runs.values():
                await w.close()

            # 7. slow link
            if not settings.skip_slow:
                from .slowlink import run_slow_link
                progress.step(f"slow link: {settings.slow_rate:g} bit/s, {settings.slow_delay:g} s latency "
                              "(W5, then send → acknowledgement)")
                # the bar's length: what the fast run's bytes take through the serialiser
                g = results["workloads"]
                expected = ((g["W5"]["gateway"]["payload_bytes"] + g["W1"]["gateway"]["payload_bytes"]) * 8
                            / settings.slow_rate + 12 * settings.slow_delay)
                ticker = asyncio.create_task(_ticker(progress, f"slow link (≈ {expected:.0f} s)", expected))
                try:
                    slow = await run_slow_link(homeserver, cast_s.erin, cast_s.erin_room, rate_bps=settings.slow_rate,
                                               delay=settings.slow_delay, profile_name=settings.profile,
                                               progress=lambda text: progress.step(f"slow link: {text}"))
                finally:
                    ticker.cancel()
                    progress.sub("slow link", 1.0)
                results["slow_link"] = _slow_entry(slow, results, settings)
                progress.done()

            # 7b. latency under loss: the 100bps-lossy conversation, many seeds, virtual time
            if not settings.skip_loss:
                from .losslatency import LOSS_RATES, run_latency_under_loss
                progress.step(f"latency under loss: {len(LOSS_RATES)} loss rates × {settings.loss_seeds} seeds "
                              "(virtual time)")
                results["loss_latency"] = await asyncio.to_thread(
                    run_latency_under_loss, LOSS_RATES, settings.loss_seeds,
                    lambda text, fraction: progress.sub(text, fraction))
                # and a message sent during an upload at 100 bit/s (issue 13)
                from .bulk import run_bulk
                progress.sub("a message during an upload", 1.0)
                results["bulk"] = await asyncio.to_thread(run_bulk)
                progress.done()

            # 8. federation: W6 both ways, federated joins over slow links
            if not settings.skip_federation:
                progress.step("W6 (a federated message) and federated joins")
                results["federation"] = await _federation(settings, tmp / "federation", progress)
                fed_w6 = results["federation"].get("w6") or {}
                for transport in ("baseline", "gateway"):
                    if transport in fed_w6:
                        entry = fed_w6[transport]
                        results["workloads"].setdefault("W6", {})[transport] = {
                            "frames": entry["frames"]["median"], "wire_bytes": entry["wire_bytes"]["median"],
                            "payload_bytes": entry["link_bytes"]["median"]}
                progress.done()

            # 9. CPU
            if not settings.skip_cpu:
                from .cpu import measure_cpu
                progress.step("CPU: server gateway vs aiohttp pass-through")
                results["cpu"] = await measure_cpu(
                    homeserver, ip=CPU_IP, seconds=settings.cpu_seconds, concurrency=settings.cpu_concurrency,
                    sessions=settings.cpu_sessions, warmup_requests=settings.cpu_warmup_requests,
                    rounds=settings.cpu_rounds, progress=lambda name, frac: progress.sub(f"CPU: {name}", frac))
                progress.done()

        # 10. report
        progress.step("report")
        results["targets"] = targets.evaluate(results)
        results["elapsed_s"] = round(time.monotonic() - t_start, 1)
        from .report import write_reports
        paths = write_reports(results, settings)
        results["files"] = {k: str(v) for k, v in paths.items()}
        progress.done()
    return results


async def _federation(settings: Settings, tmp: Path, progress: Progress) -> dict[str, Any]:
    """W6 and the joins; a failure here is recorded, and W1–W5 keep their results."""
    from .federation import measure_join, measure_w6

    out: dict[str, Any] = {}
    try:
        out["w6"] = await measure_w6(tmp / "w6", repeats=3 if settings.quick else 5, progress=progress.step)
        for w in ("baseline", "gateway"):
            for window in out["w6"][w]["windows"]:
                window.pop("frame_list", None)
        rates = [4000.0] if settings.quick else ([1000.0] if settings.skip_slow else [settings.slow_rate, 1000.0])
        out["joins"] = [await measure_join(tmp / f"join-{rate:g}", rate_bps=rate, delay=settings.slow_delay,
                                           progress=progress.step) for rate in rates]
    except Exception as exc:  # noqa: BLE001 - recorded in the results, W1-W5 stand
        log.exception("the federation part failed")
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _slow_entry(slow: Any, results: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from .slowlink import SEND_CROSSINGS, W5_CROSSINGS, https_lower_bound

    base = results["workloads"]

    def ip_bytes(entry: dict[str, Any]) -> int:
        # a slow serial or radio link carries IP packets: no 14-byte Ethernet header
        return entry["wire_bytes"] - 14 * entry["frames"]

    b1, b5 = ip_bytes(base["W1"]["baseline"]), ip_bytes(base["W5"]["baseline"])
    return {
        "rate_bps": settings.slow_rate,
        "delay_s": settings.slow_delay,
        "as_shipped": slow["as_shipped"],
        "gateway": slow["gateway"],
        "baseline_bound": {
            "send_ack_seconds": round(https_lower_bound(b1, SEND_CROSSINGS, rate_bps=settings.slow_rate,
                                                        delay=settings.slow_delay), 1),
            "w5_seconds": round(https_lower_bound(b5, W5_CROSSINGS, rate_bps=settings.slow_rate,
                                                  delay=settings.slow_delay), 1),
            "method": "computed: measured IP bytes (wire less Ethernet) × 8 / rate + one latency per dependent "
                      "crossing",
        },
    }


__all__ = ["Settings", "missing_prerequisites", "run_bench"]
