"""``python -m bench.fleet``: many ordinary devices on one server gateway.

The server gateway runs in its own process as deployed (``coap-gateway
server``, secure, sync push on, default limits, a state directory) in front
of a stand-in homeserver (``bench.hostile``'s: it answers at once and holds
``/sync`` long-polls for their timeout, as a homeserver with nothing new
does; Synapse is not what is measured).  N devices — each a client gateway
with its own Noise key on real UDP, on its own loopback address — connect,
bind their token, register one sync loop (an idle observation the server
gateway holds: one homeserver long-poll per device, every 30 s) and then
send one message a minute each, at random moments.

Reported: the server process's resident memory per device (read from /proc
before the devices and once they all hold their observation), CPU seconds
per message (over the sending minutes, the idle polling included) and per
idle device-hour (a period with no sends).  Output:
``bench/results/fleet.json`` and ``fleet.png`` beside it.  Not part of
``make bench`` (``make bench-fleet``: it needs minutes and ~1 GiB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coap_gateway.codec import DEFAULT_PROFILE, HttpRequest, load_profile

from .cpu import process_cpu_seconds
from .hostile import HostileDevice, rss_bytes, stand_in_homeserver, start_server_process

RESULTS = Path(__file__).parent / "results"
ROOM = "!fleetroom:hs"


def _device_host(n: int) -> str:
    # its own loopback address: the per-address handshake rate limit applies to each
    block, host = divmod(n, 254)
    return f"127.{10 + block // 256}.{block % 256}.{1 + host}"


def _raise_file_limit(devices: int) -> None:
    """Each device is a UDP socket and an HTTP listener in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * devices + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


async def _sync_loop(device: HostileDevice, token: str) -> None:
    """A client's sync loop, through the client gateway's sync push (as
    matrix-nio's runs): the first poll registers the observation."""
    since = "s0"
    while True:
        answer = await device.client.gateway.serve(
            HttpRequest("GET", f"/_matrix/client/v3/sync?since={since}&timeout=30000", access_token=token))
        if answer.status == 200:
            since = json.loads(answer.body).get("next_batch", since)
        else:
            await asyncio.sleep(5.0)


async def _sender(device: HostileDevice, token: str, minutes: float, sent: list[float], failed: list[float],
                  period: float = 60.0) -> None:
    """One message a period (a minute), at a random moment of each."""
    n = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + minutes * 60
    while True:
        minute = loop.time()
        await asyncio.sleep(random.uniform(0, period))
        if loop.time() >= end:
            return
        n += 1
        status = await device.request("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/f{n}", token,
                                      b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}')
        (sent if status == 200 else failed).append(loop.time())
        await asyncio.sleep(max(0.0, minute + period - loop.time()))


async def run(devices: int, minutes: float, idle_seconds: float, ip: str, progress: Any,
              period: float = 60.0) -> dict[str, Any]:
    _raise_file_limit(devices)
    profile = load_profile(DEFAULT_PROFILE)
    homeserver = await stand_in_homeserver()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        child, public, port = await start_server_process(homeserver.url, ip, tmp)
        fleet: list[HostileDevice] = []
        senders: list[asyncio.Task] = []
        try:
            baseline = rss_bytes(child.pid)
            points = [{"devices": 0, "rss": baseline}]
            task = progress.add_task("devices connecting", total=devices)
            step = max(1, devices // 10)
            for n in range(devices):
                device = await HostileDevice.connect((ip, port), public, profile, host=_device_host(n))
                fleet.append(device)
                token = f"syt_fleet_{n}"
                # binds the token (the first request carries it), then one idle sync loop
                status = await device.request("GET", "/_matrix/client/v3/account/whoami", token)
                if status != 200:
                    raise RuntimeError(f"device {n}: whoami answered {status}")
                device.loops.append(asyncio.create_task(_sync_loop(device, token)))
                progress.advance(task)
                if (n + 1) % step == 0 or n + 1 == devices:
                    points.append({"devices": n + 1, "rss": rss_bytes(child.pid)})
            # every observation registered: its first answer is the homeserver's (timeout 0) one
            settle = time.monotonic() + 120
            while time.monotonic() < settle:
                registered = sum(d.client.gateway.sync_push.counters.registrations
                                 for d in fleet if d.client.gateway.sync_push is not None)
                if registered >= devices:
                    break
                await asyncio.sleep(0.5)
            held = rss_bytes(child.pid)
            points.append({"devices": devices, "rss": held, "observations": True})

            # idle: no sends, the server gateway holding every long-poll
            progress.add_task(f"idle {idle_seconds:g} s", total=None)
            cpu0 = process_cpu_seconds(child.pid)
            await asyncio.sleep(idle_seconds)
            idle_cpu = process_cpu_seconds(child.pid) - cpu0

            # one message a minute per device
            sent: list[float] = []
            failed: list[float] = []
            progress.add_task(f"{devices} devices × {minutes:g} min, a message a minute each", total=None)
            cpu1 = process_cpu_seconds(child.pid)
            t1 = time.monotonic()
            senders = [asyncio.create_task(_sender(d, f"syt_fleet_{n}", minutes, sent, failed, period))
                       for n, d in enumerate(fleet)]
            await asyncio.gather(*senders)
            busy_cpu = process_cpu_seconds(child.pid) - cpu1
            busy_seconds = time.monotonic() - t1
            final = rss_bytes(child.pid)
            idle_per_second = idle_cpu / idle_seconds
            return {
                "devices": devices,
                "minutes": minutes,
                "rss_baseline": baseline,
                "rss_with_observations": held,
                "rss_final": final,
                "bytes_per_device": round((held - baseline) / devices),
                "bytes_per_device_after_sending": round((final - baseline) / devices),
                "points": points,
                "idle_seconds": idle_seconds,
                "idle_cpu_seconds": round(idle_cpu, 3),
                "idle_cpu_per_device_hour_s": round(idle_cpu / idle_seconds * 3600 / devices, 4),
                "messages": len(sent),
                "failed": len(failed),
                "busy_seconds": round(busy_seconds, 1),
                "busy_cpu_seconds": round(busy_cpu, 3),
                # the sending period's CPU less what idling costs over as long
                "cpu_per_message_ms": round((busy_cpu - idle_per_second * busy_seconds) / max(1, len(sent)) * 1000,
                                            3),
                "cpu_per_message_ms_gross": round(busy_cpu / max(1, len(sent)) * 1000, 3),
            }
        finally:
            for t in senders:
                t.cancel()
            for device in fleet:
                with contextlib.suppress(Exception):
                    await device.close()
            await child.stop()
            await homeserver.close()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in result["points"] if not p.get("observations")]
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    ax.plot([p["devices"] for p in points], [p["rss"] / 2**20 for p in points], marker="o", label="connected, token bound")
    ax.scatter([result["devices"]], [result["rss_with_observations"] / 2**20], color="C3", zorder=3,
               label="every device's sync loop held")
    ax.set_xlabel("devices")
    ax.set_ylabel("server gateway resident memory (MiB)")
    ax.set_title(f"{result['devices']} devices: {result['bytes_per_device'] / 1024:.1f} KiB each, "
                 f"{result['cpu_per_message_ms']:.2f} ms CPU per message", fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import Progress

    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=3.0, help="sending period (default 3 min)")
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--ip", default="127.0.0.9", help="the server gateway's address")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    console = Console()
    with Progress(console=console) as progress:
        result = asyncio.run(run(args.devices, args.minutes, args.idle_seconds, args.ip, progress))
    result["date"] = datetime.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "fleet.png")
    console.print(f"{result['devices']} devices: {result['bytes_per_device']} B of server memory each "
                  f"({result['bytes_per_device_after_sending']} B after sending); idle "
                  f"{result['idle_cpu_per_device_hour_s']} CPU s per device-hour; {result['messages']} messages "
                  f"({result['failed']} failed), {result['cpu_per_message_ms']} ms CPU each "
                  f"({result['cpu_per_message_ms_gross']} ms with the idle polling)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
