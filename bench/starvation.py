"""``python -m bench.starvation``: do held sync long-polls delay everybody else?

One real Synapse, one server gateway in its own process (``coap-gateway
server``, defaults: sync push on, 4 observations per session, 1024 in all),
N devices — each a client gateway on its own 127.x address, Noise IK, real
UDP — running K sync loops each (nio's ``sync_forever`` in miniature: a
``/sync`` long-poll of 30 s, again and again, each loop with its own filter,
so each is its own sync-push observation).  While they are held, an honest
device of its own sends ``GET /versions`` and room sends through its client
gateway, one after the other, and we time each from request to answer.

The server gateway holds one homeserver long-poll per observation; before the
upstream pools were split they all shared aiohttp's default 100 connections
with ordinary requests (docs/benchmarks.md, "Starvation").

Output: ``bench/results/starvation.json`` (runs by label, so a "before" and an
"after" sit side by side), and a summary.  Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "starvation.json"
SERVER_IP = "127.0.0.7"
HONEST_IP = "127.2.0.1"
EXIT_BAD_INPUT = 2


@dataclass
class Settings:
    devices: int = 150
    per_device: int = 4
    requests: int = 50
    #: seconds between honest requests: 50 of them span more than one 30-s
    #: long-poll cycle, so every loop's renewal falls among them
    spacing: float = 0.7
    request_timeout: float = 120.0
    #: longest wait for every loop to be registered and held
    settle: float = 120.0
    sync_timeout_ms: int = 30_000
    label: str = "after"
    out: Path = RESULTS
    profile: str = "lb3"


# ------------------------------------------------------------ measurements


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def summary_of(latencies: list[float], failed: int) -> dict[str, Any]:
    if not latencies:
        return {"count": 0, "failed": failed}
    return {"count": len(latencies), "failed": failed,
            "p50_s": round(percentile(latencies, 50), 4), "p95_s": round(percentile(latencies, 95), 4),
            "max_s": round(max(latencies), 4), "mean_s": round(statistics.fmean(latencies), 4)}


def process_memory(pid: int) -> dict[str, int]:
    """Resident and peak resident set size (kB) and open descriptors of ``pid``."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name.lower() + "_kb"] = int(value.split()[0])
        out["open_fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def connections_to(pid: int, port: int) -> int:
    """TCP connections ``pid`` has established to ``port`` (the homeserver)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                    count += 1
    return count


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float | None:
    """One unlabelled sample from the server gateway's Prometheus endpoint."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None


# ------------------------------------------------------------ the parts


class ServerGatewayProcess:
    """``coap-gateway server`` as the operator runs it, with metrics on."""

    def __init__(self, homeserver: str, key_path: Path, *, profile: str) -> None:
        from coap_gateway.tools import free_port

        self.port = _free_udp_port(SERVER_IP)
        self.metrics_port = free_port()
        self.argv = [sys.executable, "-m", "coap_gateway", "server", "--homeserver", homeserver,
                     "--listen", f"udp://{SERVER_IP}:{self.port}", "--key", str(key_path), "--profile", profile,
                     "--metrics", f"127.0.0.1:{self.metrics_port}"]
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = key_path.parent / "server-gateway.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while await metric(http, self.metrics_url, "coap_gateway_sync_push_observations") is None:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server gateway did not start:\n{self.log_path.read_text()[-2000:]}")
                await asyncio.sleep(0.1)  # poll interval, not synchronisation

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        for _ in range(100):
            if process.poll() is not None:
                return
            await asyncio.sleep(0.1)
        process.kill()
        process.wait()


def _free_udp_port(host: str) -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def device_ip(n: int) -> str:
    return f"127.1.{n // 250}.{n % 250 + 1}"


async def register(http: aiohttp.ClientSession, homeserver: str, name: str) -> dict[str, Any]:
    body = {"username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"}, "device_id": "BENCH"}
    async with http.post(f"{homeserver}/_matrix/client/v3/register", json=body) as r:
        doc = await r.json()
        if r.status != 200:
            raise RuntimeError(f"register {name}: {r.status} {doc}")
    async with http.get(f"{homeserver}/_matrix/client/v3/sync?timeout=0",
                        headers={"Authorization": f"Bearer {doc['access_token']}"}) as r:
        doc["since"] = (await r.json())["next_batch"]
    return doc


def loop_filter(k: int) -> str:
    """The k-th loop's filter, inline: each filter is its own sync stream."""
    return quote(json.dumps({"room": {"timeline": {"limit": k + 1}}}, separators=(",", ":")), safe="")


async def sync_loop(http: aiohttp.ClientSession, base_url: str, token: str, since: str, k: int,
                    timeout_ms: int, stats: dict[str, int]) -> None:
    """What a Matrix client's sync loop does, through the device's client gateway."""
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        url = (f"{base_url}/_matrix/client/v3/sync?since={since}&timeout={timeout_ms}"
               f"&filter={loop_filter(k)}")
        # the client gateway answers an idle poll after timeout_ms; a registration may take longer
        limit = aiohttp.ClientTimeout(total=timeout_ms / 1000 + 300)
        try:
            async with http.get(url, headers=headers, timeout=limit) as r:
                body = await r.read()
            if r.status == 200:
                since = json.loads(body)["next_batch"]
                stats["answered"] += 1
            else:
                stats["errors"] += 1
                await asyncio.sleep(1)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            stats["errors"] += 1
            await asyncio.sleep(1)


async def timed(http: aiohttp.ClientSession, method: str, url: str, timeout: float, **kwargs: Any) -> float | None:
    """Seconds from request to the whole answer; None when it failed or timed out."""
    start = time.perf_counter()
    try:
        async with http.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout), **kwargs) as r:
            await r.read()
            ok = r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    return time.perf_counter() - start if ok else None


# ------------------------------------------------------------ the run


async def run(settings: Settings, *, homeserver: str | None, console: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from coap_gateway.app import start_client
    from coap_gateway.codec import load_profile
    from coap_gateway.secure import keys
    from coap_gateway.tools import LocalSynapse
    from coap_gateway.transport import UdpLink

    loops = settings.devices * settings.per_device
    profile = load_profile(settings.profile)
    started = time.monotonic()
    # what the server gateway runs: the code as it is now, when it starts
    commit = _git("rev-parse", "--short", "HEAD")
    upstream_modified = bool(_git("status", "--porcelain", "coap_gateway/gateway/upstream.py"))
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-starvation-")))
        progress = stack.enter_context(Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                                MofNCompleteColumn(), TimeElapsedColumn(), console=console))
        synapse = None
        server = None
        clients: list[Any] = []
        tasks: list[asyncio.Task] = []
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            if homeserver is None:
                step = progress.add_task("starting Synapse", total=1)
                synapse = LocalSynapse(tmp / "synapse")
                await synapse.start()
                homeserver = synapse.base_url
                progress.update(step, completed=1)
            hs_port = int(homeserver.rsplit(":", 1)[1].rstrip("/"))

            step = progress.add_task("accounts (straight on Synapse)", total=settings.devices + 1)
            suffix = os.urandom(3).hex()
            limit = asyncio.Semaphore(8)

            async def account(n: int) -> dict[str, Any]:
                async with limit:
                    doc = await register(http, homeserver, f"starve{suffix}d{n}")
                progress.advance(step)
                return doc

            accounts = await asyncio.gather(*(account(n) for n in range(settings.devices + 1)))
            honest_account = accounts.pop()
            async with http.post(f"{homeserver}/_matrix/client/v3/createRoom", json={"preset": "private_chat"},
                                 headers={"Authorization": f"Bearer {honest_account['access_token']}"}) as r:
                room_id = (await r.json())["room_id"]

            step = progress.add_task("server gateway (own process)", total=1)
            server_key = keys.generate_keypair()[0]
            keys.write_private_key(tmp / "server.key", server_key)
            server = ServerGatewayProcess(homeserver, tmp / "server.key", profile=settings.profile)
            await server.start()
            progress.update(step, completed=1)
            idle_memory = process_memory(server.process.pid)

            step = progress.add_task("devices (client gateways, Noise IK over UDP)", total=settings.devices + 1)
            for n in range(settings.devices + 1):
                link = await UdpLink.open(device_ip(n) if n < settings.devices else HONEST_IP, 0)
                clients.append(await start_client(link, (SERVER_IP, server.port), profile=profile,
                                                  static_private=keys.generate_keypair()[0], fresh_key=True,
                                                  server_public=keys.public_from_private(server_key)))
                progress.advance(step)
            honest = clients.pop()

            loop_stats = {"answered": 0, "errors": 0}
            for client, acct in zip(clients, accounts):
                for k in range(settings.per_device):
                    tasks.append(asyncio.create_task(sync_loop(http, client.base_url, acct["access_token"],
                                                               acct["since"], k, settings.sync_timeout_ms,
                                                               loop_stats)))
            pid = server.process.pid
            step = progress.add_task(f"{settings.devices} devices × {settings.per_device} sync loops held",
                                     total=loops)
            deadline = time.monotonic() + settings.settle
            observations = held = 0
            while time.monotonic() < deadline:
                observations = int(await metric(http, server.metrics_url, "coap_gateway_sync_push_observations") or 0)
                held = connections_to(pid, hs_port)
                progress.update(step, completed=min(observations, held),
                                description=f"{observations} observations, {held} connections to Synapse")
                if observations >= loops and held >= loops:
                    break
                await asyncio.sleep(0.5)  # poll interval, not synchronisation
            settle_seconds = settings.settle - max(0.0, deadline - time.monotonic())

            results: dict[str, list[float]] = {"versions": [], "send": [], "synapse_versions": []}
            failed = {k: 0 for k in results}
            step = progress.add_task("honest device: /versions and sends", total=2 * settings.requests)
            auth = {"Authorization": f"Bearer {honest_account['access_token']}"}
            cpu0, t0 = process_cpu_seconds(pid), time.monotonic()
            for i in range(settings.requests):
                for kind, method, url, extra in (
                    ("versions", "GET", f"{honest.base_url}/_matrix/client/versions", {}),
                    ("send", "PUT", (f"{honest.base_url}/_matrix/client/v3/rooms/{quote(room_id)}/send/"
                                     f"m.room.message/starve{i}"),
                     {"json": {"msgtype": "m.text", "body": f"still here {i}"}, "headers": auth}),
                    ("synapse_versions", "GET", f"{homeserver}/_matrix/client/versions", {}),
                ):
                    seconds = await timed(http, method, url, settings.request_timeout, **extra)
                    if seconds is None:
                        failed[kind] += 1
                    else:
                        results[kind].append(seconds)
                    if kind != "synapse_versions":
                        progress.advance(step)
                await asyncio.sleep(settings.spacing)
            cpu1, t1 = process_cpu_seconds(pid), time.monotonic()
            during_observations = int(await metric(http, server.metrics_url,
                                                   "coap_gateway_sync_push_observations") or 0)
            during_held = connections_to(pid, hs_port)
            honest_all = results["versions"] + results["send"]
            return {
                "label": settings.label,
                "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "commit": commit,
                "upstream_modified": upstream_modified,
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
                "devices": settings.devices, "per_device": settings.per_device, "loops": loops,
                "held": {"observations_before": observations, "connections_before": held,
                         "observations_after": during_observations, "connections_after": during_held,
                         "settle_seconds": round(settle_seconds, 1), "sync_loop_answers": loop_stats["answered"],
                         "sync_loop_errors": loop_stats["errors"]},
                "honest": summary_of(honest_all, failed["versions"] + failed["send"]),
                "honest_versions": summary_of(results["versions"], failed["versions"]),
                "honest_send": summary_of(results["send"], failed["send"]),
                "synapse_versions_direct": summary_of(results["synapse_versions"], failed["synapse_versions"]),
                "server_gateway": {"idle": idle_memory, "loaded": process_memory(pid),
                                   "cpu_seconds_while_measuring": round(cpu1 - cpu0, 2),
                                   "wall_seconds_while_measuring": round(t1 - t0, 2)},
                "wall_seconds": round(time.monotonic() - started, 1),
                "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "aiohttp": aiohttp.__version__, "synapse": _synapse_version()},
            }
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in [*clients]:
                with contextlib.suppress(Exception):
                    await client.stop()
            if server is not None:
                await server.stop()
            await http.close()
            if synapse is not None:
                await synapse.stop()


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _synapse_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("matrix-synapse")
    except Exception:  # noqa: BLE001 - a missing package is reported as None
        return None


def store(result: dict[str, Any], path: Path) -> None:
    """Runs by label in one file: a new run replaces the one of its label only."""
    doc: dict[str, Any] = {"runs": {}}
    if path.exists():
        doc = json.loads(path.read_text())
    doc["runs"][result["label"]] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def show(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    held = result["held"]
    table = Table(title=f"honest device while {result['devices']} devices × {result['per_device']} sync loops run "
                        f"({held['observations_before']} observations, {held['connections_before']} connections "
                        f"to Synapse) — {result['label']}")
    for col in ("requests", "count", "failed", "p50", "p95", "max"):
        table.add_column(col, justify="left" if col == "requests" else "right")
    for key, name in (("honest", "honest device, all"), ("honest_versions", "  GET /versions"),
                      ("honest_send", "  PUT send"), ("synapse_versions_direct", "Synapse direct /versions")):
        s = result[key]
        cells = [f"{s[k]:.3f} s" if k in s else "—" for k in ("p50_s", "p95_s", "max_s")]
        table.add_row(name, str(s["count"]), str(s["failed"]), *cells)
    console.print(table)
    mem = result["server_gateway"]
    console.print(f"server gateway: RSS {mem['idle'].get('vmrss_kb', 0) / 1024:.1f} MiB idle, "
                  f"{mem['loaded'].get('vmrss_kb', 0) / 1024:.1f} MiB loaded (peak "
                  f"{mem['loaded'].get('vmhwm_kb', 0) / 1024:.1f} MiB), {mem['loaded'].get('open_fds')} descriptors")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.starvation",
                                description="An honest device's request latency while N devices hold K sync-push "
                                            "registrations each (real Synapse, server gateway in its own process).")
    d = Settings()
    p.add_argument("--devices", type=int, default=d.devices, help=f"devices holding sync loops (default {d.devices})")
    p.add_argument("--per-device", type=int, default=d.per_device,
                   help=f"sync loops (observations) per device (default {d.per_device}: the per-session limit)")
    p.add_argument("--requests", type=int, default=d.requests,
                   help=f"honest requests of each kind (/versions, send; default {d.requests})")
    p.add_argument("--spacing", type=float, default=d.spacing, metavar="SECONDS",
                   help=f"pause between honest requests (default {d.spacing:g}: 50 span a long-poll cycle)")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout, metavar="SECONDS",
                   help=f"longest wait for one honest request (default {d.request_timeout:g})")
    p.add_argument("--settle", type=float, default=d.settle, metavar="SECONDS",
                   help=f"longest wait for every loop to be held before measuring (default {d.settle:g})")
    p.add_argument("--label", default=d.label, help="name of this run in the results file (default: after)")
    p.add_argument("--out", type=Path, default=d.out, help="results file (default bench/results/starvation.json)")
    p.add_argument("--homeserver", metavar="URL", help="a running Synapse with open registration instead of a new one")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (min(args.devices, args.per_device, args.requests) < 1 or args.request_timeout <= 0 or args.settle < 0
            or args.spacing < 0):
        print("bench.starvation: error: counts and timeouts must be positive", file=sys.stderr)
        return EXIT_BAD_INPUT
    settings = Settings(devices=args.devices, per_device=args.per_device, requests=args.requests,
                        spacing=args.spacing, request_timeout=args.request_timeout, settle=args.settle,
                        label=args.label, out=args.out)
    from rich.console import Console

    console = Console(stderr=True)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        result = runner(run(settings, homeserver=args.homeserver, console=console))
    except KeyboardInterrupt:
        return 130
    store(result, settings.out)
    show(result, Console())
    console.print(f"wrote {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
