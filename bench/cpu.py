"""CPU cost of the server gateway: requests per second per core.

Two front ends run as their own processes in front of the same Synapse:

- the server gateway, exactly as deployed (``coap-gateway server``, Noise,
  the default profile, uvloop);
- ``bench.passthrough``, a plain aiohttp reverse proxy on uvloop: the least a
  Python HTTP front end does.

Each gets the same load: ``GET /_matrix/client/versions`` from many
concurrent requests (for the gateway: several client sessions, each a
``ClientGateway`` speaking CoAP over UDP; for the proxy: one aiohttp session
with as many keep-alive connections).  After a warm-up (handshakes done,
connections open) the process's CPU time (user + system, all threads, from
/proc) is read before and after a fixed wall-clock period.  The figure is

    requests answered / CPU seconds the front end used

— requests per second if the front end had one core to itself.  Synapse and
the load generator run on the same machine and are not counted; the machine's
core count limits throughput, not this figure.

CPU per request depends on the load: a front end that answers more requests
per second handles more of them per wake-up of its event loop.  Flat out,
the two are not at the same load — the gateway's load generator (Python CoAP
clients with Noise) gives out first, at about 60 % of the rate the proxy's
aiohttp client reaches — so each round also measures the proxy paced to the
rate the gateway just served: the two front ends' CPU per request at the
same load, which is the comparison the cost ratio is meant to make.  Both
ratios are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from coap_gateway.app import start_client
from coap_gateway.codec import DEFAULT_PROFILE, HttpRequest, load_profile
from coap_gateway.secure import keys
from coap_gateway.tools import free_port

from .gateway_side import CountingUdpLink

PATH = "/_matrix/client/versions"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # after the command name: state is field 3, utime 14, stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass
class CpuResult:
    name: str
    requests: int
    failures: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def per_core(self) -> float:
        return self.requests / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "cpu_seconds": round(self.cpu_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "requests_per_second": round(self.requests / self.wall_seconds, 1) if self.wall_seconds else None,
            "requests_per_cpu_second": round(self.per_core, 1),
            "cpu_ms_per_request": round(1000 * self.cpu_seconds / self.requests, 3) if self.requests else None,
            "cpu_utilisation": round(self.cpu_seconds / self.wall_seconds, 3) if self.wall_seconds else None,
        }


def udp_port_bound(host: str, port: int) -> bool:
    """Whether some process has bound ``host:port`` (UDP): we cannot bind it."""
    import errno
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


class _Child:
    """A front end in its own process; ready when it prints ``ready_text``
    (or, with ``ready``, when that condition holds)."""

    def __init__(self, argv: list[str], ready_text: str, ready: Any = None) -> None:
        self.argv = argv
        self.ready_text = ready_text
        self.ready = ready
        self.process: asyncio.subprocess.Process | None = None
        self.ready_line = ""

    async def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["COLUMNS"] = "200"  # rich: no wrapping of the ready line
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True)
        assert self.process.stdout is not None
        seen: list[str] = []
        # keep draining its output so it never blocks on a full pipe
        lines = asyncio.create_task(self._lines(seen))
        self._drain = lines
        try:
            async with asyncio.timeout(timeout):
                if self.ready is None:
                    await lines
                    if not self.ready_line:
                        raise RuntimeError(f"{self.argv[2]} exited: {''.join(seen)[-2000:]}")
                else:
                    while not self.ready():
                        if self.process.returncode is not None or lines.done():
                            raise RuntimeError(f"{self.argv[2]} exited: {''.join(seen)[-2000:]}")
                        await asyncio.sleep(0.05)  # poll interval, not synchronisation
        except BaseException:
            lines.cancel()
            await self.stop()
            raise

    async def _lines(self, seen: list[str]) -> None:
        """Read the child's output; returns at the ready line (then drains on) or at EOF."""
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        while True:
            line = (await stdout.readline()).decode(errors="replace")
            if not line:
                return
            seen.append(line)
            if self.ready is None and self.ready_text in line and not self.ready_line:
                self.ready_line = line.strip()
                self._drain = asyncio.create_task(stdout.read())
                return

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def _drive(call, *, workers: int, warmup_requests: int, seconds: float, pid: int, name: str,
                 progress: Any = None, rate: float | None = None) -> CpuResult:
    """Run ``workers`` loops of ``call()``; count only what completes in the
    measured period.  ``rate``: start no more than that many calls a second
    (evenly spaced, among all workers)."""
    loop = asyncio.get_running_loop()
    counting = False
    stop = False
    counts = {"ok": 0, "failed": 0, "warm": 0}
    warm = asyncio.Event()
    next_start = [0.0]

    async def paced() -> None:
        if rate is None:
            return
        now = loop.time()
        start = next_start[0] = max(now, next_start[0])
        next_start[0] += 1.0 / rate
        if start > now:
            await asyncio.sleep(start - now)  # the pacing itself, not synchronisation

    async def worker() -> None:
        while not stop:
            await paced()
            if stop:
                break
            try:
                ok = await call()
            except (aiohttp.ClientError, OSError, TimeoutError):
                ok = False
            if counting:
                counts["ok" if ok else "failed"] += 1
            else:
                counts["warm"] += ok
                if counts["warm"] >= warmup_requests:
                    warm.set()

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        # warm: sessions handshaken, connections open, every worker through a few requests
        async with asyncio.timeout(120):
            await warm.wait()
        counting = True
        cpu0, t0 = process_cpu_seconds(pid), loop.time()
        end = t0 + seconds
        while loop.time() < end:
            await asyncio.sleep(min(0.5, end - loop.time()))  # the measured period itself
            if progress is not None:
                progress(name, min(1.0, (loop.time() - t0) / seconds))
        cpu1, t1 = process_cpu_seconds(pid), loop.time()
        counting = False
        snapshot = dict(counts)
    finally:
        # let every request in flight finish: a cancelled gateway request whose
        # answer still arrives only makes aiocoap log an error
        stop = True
        _, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return CpuResult(name, snapshot["ok"], snapshot["failed"], cpu1 - cpu0, t1 - t0)


async def measure_gateway(homeserver: str, ip: str, *, seconds: float, concurrency: int, sessions: int,
                          warmup_requests: int, profile: str = DEFAULT_PROFILE, progress: Any = None,
                          profile_out: Path | None = None) -> CpuResult:
    """``profile_out``: run the server gateway under cProfile and keep its
    statistics there (a run of its own: profiling slows it down)."""
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        key_path = Path(tmp) / "server.key"
        server_key = keys.generate_keypair()[0]
        keys.write_private_key(key_path, server_key)
        port = _free_udp_port(ip)
        profiler = ["-m", "cProfile", "-o", str(profile_out)] if profile_out is not None else []
        child = _Child([sys.executable, *profiler, "-m", "coap_gateway", "server", "--homeserver", homeserver,
                        "--listen", f"udp://{ip}:{port}", "--key", str(key_path), "--profile", profile],
                       "server gateway on", ready=lambda: udp_port_bound(ip, port))
        await child.start()
        clients = []
        try:
            prof = load_profile(profile)
            for _ in range(sessions):
                link = await CountingUdpLink.open(ip, 0)
                # no revalidation: every request carries its whole answer, as a
                # first ask does (a 2.03 Valid would measure a shorter path)
                clients.append(await start_client(link, (ip, port), profile=prof,
                                                  static_private=keys.generate_keypair()[0], fresh_key=True,
                                                  server_public=keys.public_from_private(server_key),
                                                  revalidate=False))
            request = HttpRequest("GET", PATH)
            per_session = max(1, concurrency // sessions)
            calls = []
            for client in clients:
                async def call(gw=client.gateway) -> bool:
                    return (await gw.exchange(request)).status == 200
                calls.append(call)
            counter = iter(range(1 << 30))

            async def any_call() -> bool:
                return await calls[next(counter) % len(calls)]()

            return await _drive(any_call, workers=per_session * sessions, warmup_requests=warmup_requests,
                                seconds=seconds, pid=child.pid, name="server gateway", progress=progress)
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.stop()
            await child.stop()


async def measure_passthrough(homeserver: str, ip: str, *, seconds: float, concurrency: int,
                              warmup_requests: int, progress: Any = None, rate: float | None = None) -> CpuResult:
    """``rate``: paced to that many requests a second (the gateway's, for a
    comparison at the same load)."""
    child = _Child([sys.executable, "-m", "bench.passthrough", "--upstream", homeserver, "--listen", f"{ip}:0"],
                   "ready http://")
    await child.start()
    try:
        url = child.ready_line.split()[-1] + PATH
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                         timeout=aiohttp.ClientTimeout(total=60)) as http:
            async def call() -> bool:
                async with http.get(url) as resp:
                    await resp.read()
                    return resp.status == 200

            return await _drive(call, workers=concurrency, warmup_requests=warmup_requests, seconds=seconds,
                                pid=child.pid, rate=rate, progress=progress,
                                name="aiohttp pass-through" + (" at the gateway's rate" if rate else ""))
    finally:
        await child.stop()


def _free_udp_port(host: str) -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _total(results: list[CpuResult]) -> CpuResult:
    return CpuResult(results[0].name, sum(r.requests for r in results), sum(r.failures for r in results),
                     sum(r.cpu_seconds for r in results), sum(r.wall_seconds for r in results))


async def measure_cpu(homeserver: str, *, ip: str = "127.0.0.4", seconds: float = 8.0, concurrency: int = 64,
                      sessions: int = 8, warmup_requests: int = 500, rounds: int = 3,
                      progress: Any = None) -> dict[str, Any]:
    """``rounds`` measurements of each front end, alternating which goes first:
    on a shared 2-core machine one 8-s run of either varied by ±15 % from run
    to run (Synapse and the load generator compete for the cores), so the
    figures are totals over the rounds, and each round's ratio is kept.
    Each round ends with the proxy paced to the rate the gateway served in it."""
    started = time.monotonic()
    gateways: list[CpuResult] = []
    passthroughs: list[CpuResult] = []
    paced: list[CpuResult] = []

    async def gateway_run() -> None:
        gateways.append(await measure_gateway(homeserver, ip, seconds=seconds, concurrency=concurrency,
                                              sessions=sessions, warmup_requests=warmup_requests, progress=progress))

    async def passthrough_run() -> None:
        passthroughs.append(await measure_passthrough(homeserver, ip, seconds=seconds, concurrency=concurrency,
                                                      warmup_requests=warmup_requests, progress=progress))

    for n in range(rounds):
        for run in ((gateway_run, passthrough_run) if n % 2 == 0 else (passthrough_run, gateway_run)):
            await run()
        served = gateways[-1]
        paced.append(await measure_passthrough(homeserver, ip, seconds=seconds, concurrency=concurrency,
                                               warmup_requests=warmup_requests, progress=progress,
                                               rate=served.requests / served.wall_seconds))
    gateway, passthrough, passthrough_paced = _total(gateways), _total(passthroughs), _total(paced)
    # where the gateway's time goes: a run of its own under cProfile (which slows it)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-profile-") as tmp:
        stats = Path(tmp) / "gateway.prof"
        profiled = await measure_gateway(homeserver, ip, seconds=min(seconds, 4.0), concurrency=concurrency,
                                         sessions=sessions, warmup_requests=warmup_requests, progress=progress,
                                         profile_out=stats)
        top = profile_top(stats, profiled.requests) if stats.exists() else []
    return {
        "endpoint": "GET " + PATH,
        "concurrency": concurrency,
        "gateway_sessions": sessions,
        "seconds": seconds,
        "warmup_requests": warmup_requests,
        "cpus": os.cpu_count(),
        "gateway": gateway.as_dict(),
        "passthrough": passthrough.as_dict(),
        "passthrough_paced": passthrough_paced.as_dict(),
        # how many of the proxy's requests one of the gateway's costs: each flat out,
        # and at the same load (the proxy paced to the gateway's rate)
        "cost_ratio": round(passthrough.per_core / gateway.per_core, 2) if gateway.per_core else None,
        "cost_ratio_equal_load": (round(passthrough_paced.per_core / gateway.per_core, 2)
                                  if gateway.per_core else None),
        "rounds": [{"gateway": round(g.per_core, 1), "passthrough": round(p.per_core, 1),
                    "passthrough_paced": round(q.per_core, 1),
                    "cost_ratio": round(p.per_core / g.per_core, 2) if g.per_core else None,
                    "cost_ratio_equal_load": round(q.per_core / g.per_core, 2) if g.per_core else None}
                   for g, p, q in zip(gateways, passthroughs, paced)],
        "profile_top": top,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "coap_gateway/"):
        if marker in path:
            return (marker if marker == "coap_gateway/" else "") + path.split(marker, 1)[1]
    if "/lib/python3" in path:
        return path.split("/lib/", 1)[1].split("/", 1)[1]  # the standard library: asyncio/runners.py
    return path


def profile_top(stats_path: Path, requests: int, count: int = 20) -> list[dict[str, Any]]:
    """The ``count`` functions with the most own time (cProfile's tottime),
    per request answered in the profiled run.  The profile covers the whole
    process: functions called fewer than once per two requests are start-up
    (imports — compiling every module on a fresh clone —, TLS defaults) and
    left out, but for the event loop's own run, whose time is the loop's,
    request after request.  (Once per ten let the compiler through: 201
    calls in a 2 370-request run, 176 µs "per request".)"""
    import pstats

    stats = pstats.Stats(str(stats_path))
    total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]
    rows = []
    for (path, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if calls * 2 < requests and not path.endswith("asyncio/runners.py"):
            continue
        rows.append({"function": f"{_short(path)}:{line}({name})" if line else name, "calls": calls,
                     "own_us_per_request": round(tottime / max(1, requests) * 1e6, 1),
                     "cumulative_us_per_request": round(cumtime / max(1, requests) * 1e6, 1),
                     "own_share": round(tottime / total, 4) if total else 0.0})
    rows.sort(key=lambda r: r["own_us_per_request"], reverse=True)
    return rows[:count]


__all__ = ["CpuResult", "free_port", "measure_cpu", "process_cpu_seconds", "profile_top"]
