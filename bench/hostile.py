"""``python -m bench.hostile``: what hostile but authenticated devices cost the server gateway.

The server gateway runs in its own process as deployed (``coap-gateway
server``, secure, sync push on, default limits) in front of a stand-in
homeserver (this measures the gateway's memory; Synapse is not part of it).
N hostile devices — each a client gateway with its own Noise key on real UDP
— each do the worst their limits allow at once:

- define tokens (16 accounts' access tokens: the per-device token limit),
- define handles (room IDs, ``--handles`` of them per device),
- hold 4 sync loops (the per-device sync-push limit: 4 homeserver
  long-polls held by the server gateway),
- leave an upload unfinished at the per-device block-wise limit (256 KiB,
  or what is left of the overall cap).

The server's resident memory is read from /proc before and after, in steps,
giving memory per device.  Meanwhile an honest device times ``GET
/versions`` (latency under attack), and the hostile devices' UDP sockets
count bytes sent and received (amplification).  Output:
``bench/results/hostile.json`` and ``hostile.png`` beside it.  Not part of
``make bench`` (``make bench-hostile``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiohttp import web

from coap_gateway.app import RunningClient, start_client
from coap_gateway.codec import DEFAULT_PROFILE, HttpRequest, Profile, load_profile
from coap_gateway.codec.mapping import request_to_coap
from coap_gateway.secure import keys
from coap_gateway.transport import SERVER_KEY

from .cpu import _Child, _free_udp_port, udp_port_bound
from .gateway_side import CountingUdpLink

RESULTS = Path(__file__).parent / "results"
BLOCK_EXP = 6  # 1024-byte blocks
TOKENS_PER_DEVICE = 16
SYNC_LOOPS = 4


# ---------------------------------------------------------------- the stand-in homeserver


@dataclass
class StandIn:
    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


async def stand_in_homeserver(host: str = "127.0.0.1") -> StandIn:
    """Answers what the attack asks at once, and holds /sync long-polls for
    their timeout (as a homeserver with nothing new does)."""

    async def sync(request: web.Request) -> web.Response:
        if "since" in request.query:
            timeout = min(int(request.query.get("timeout", "0")), 30000) / 1000
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(timeout)  # a long-poll with nothing to say
        return web.json_response({"next_batch": f"s{int(time.time())}", "rooms": {}})

    async def anything(request: web.Request) -> web.Response:
        await request.read()
        if request.path.endswith("/whoami"):
            return web.json_response({"user_id": "@h:hs", "device_id": "D"})
        if "/send/" in request.path:
            return web.json_response({"event_id": "$" + "e" * 43})
        if request.path.endswith("/versions"):
            return web.json_response({"versions": ["v1.11"]})
        return web.json_response({})

    app = web.Application(client_max_size=1 << 20)
    app.router.add_get("/_matrix/client/v3/sync", sync)
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return StandIn(runner, f"http://{host}:{site._server.sockets[0].getsockname()[1]}")  # type: ignore[union-attr]


# ---------------------------------------------------------------- a hostile device


@dataclass
class HostileDevice:
    """A client gateway with its own key, used as a hostile device would."""

    client: RunningClient
    link: CountingUdpLink
    profile: Profile
    loops: list[asyncio.Task] = field(default_factory=list)
    _tag: int = 0

    @classmethod
    async def connect(cls, address: tuple[str, int], server_public: bytes, profile: Profile, *,
                      host: str) -> HostileDevice:
        link = await CountingUdpLink.open(host, 0)
        client = await start_client(link, address, profile=profile, static_private=keys.generate_keypair()[0],
                                    fresh_key=True,
                                    server_public=server_public, host=host, port=0)
        return cls(client, link, profile)

    async def request(self, method: str, target: str, token: str | None, body: bytes = b"") -> int:
        answer = await self.client.gateway.exchange(HttpRequest(method, target, body=body, access_token=token,
                                                                content_type="application/json" if body else None))
        return answer.status

    async def define_tokens(self, count: int = TOKENS_PER_DEVICE) -> list[int]:
        return [await self.request("GET", "/_matrix/client/v3/account/whoami", f"syt_hostile_{id(self)}_{n}")
                for n in range(count)]

    async def define_handles(self, count: int, token: str) -> list[int]:
        return [await self.request("PUT", f"/_matrix/client/v3/rooms/!{n:08d}{id(self):x}hostile:hs/send/"
                                   f"m.room.message/t{n}", token, b'{"msgtype":"m.text","body":"x"}')
                for n in range(count)]

    def hold_sync_loops(self, token: str, count: int = SYNC_LOOPS) -> None:
        """``count`` sync loops, each its own filter (its own observation)."""
        async def loop(n: int) -> None:
            since = "s0"
            while True:
                await self.request("GET", f"/_matrix/client/v3/sync?filter={n}&since={since}&timeout=30000", token)
        self.loops += [asyncio.create_task(loop(n)) for n in range(count)]

    async def partial_upload(self, size: int) -> list[Code]:
        """Blocks of an upload that is never finished: the answer to each
        (2.31 Continue while the server holds them; it stops at the first
        other answer)."""
        whole = request_to_coap(HttpRequest("POST", "/_matrix/media/v3/upload?filename=h.bin", body=b"\0" * size,
                                            content_type="application/octet-stream"), self.profile)
        self._tag += 1
        block = 16 << BLOCK_EXP
        codes = []
        for n in range(size // block):
            message = whole.copy(payload=whole.payload[n * block:(n + 1) * block])
            message.opt.block1 = (n, True, BLOCK_EXP)
            message.opt.request_tag = [self._tag.to_bytes(2, "big")]
            message.remote = self.client.endpoint.remote(SERVER_KEY)
            answer = await self.client.endpoint.context.request(message, handle_blockwise=False).response
            codes.append(answer.code)
            if answer.code != Code.CONTINUE:
                break
        return codes

    async def close(self) -> None:
        for task in self.loops:
            task.cancel()
        await asyncio.gather(*self.loops, return_exceptions=True)
        await self.client.stop()


# ---------------------------------------------------------------- the benchmark


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def honest_latencies(device: HostileDevice, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        status = await device.request("GET", "/_matrix/client/versions", None)
        out.append(time.perf_counter() - started)
        assert status == 200, status
    return out


async def start_server_process(homeserver: str, ip: str, state_dir: str) -> tuple[_Child, bytes, int]:
    """The server gateway as deployed (``coap-gateway server``, secure, its
    state in ``state_dir``), in its own process: (the process, its public key, its port)."""
    server_private = keys.generate_keypair()[0]
    key_path = Path(state_dir) / "server.key"
    keys.write_private_key(key_path, server_private)
    port = _free_udp_port(ip)
    child = _Child([sys.executable, "-m", "coap_gateway", "server", "--homeserver", homeserver,
                    "--listen", f"udp://{ip}:{port}", "--key", str(key_path), "--state-dir", state_dir],
                   "server gateway on", ready=lambda: udp_port_bound(ip, port))
    await child.start()
    return child, keys.public_from_private(server_private), port


async def run(devices: int, steps: int, handles: int, upload: int, ip: str, progress: Any,
              sync_loops: int = SYNC_LOOPS) -> dict[str, Any]:
    profile = load_profile(DEFAULT_PROFILE)
    homeserver = await stand_in_homeserver()
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        child, public, port = await start_server_process(homeserver.url, ip, tmp)
        hostile: list[HostileDevice] = []
        honest = None
        try:
            honest = await HostileDevice.connect((ip, port), public, profile, host="127.0.0.1")
            await honest_latencies(honest, 5)  # warm: session, pools
            baseline = rss_bytes(child.pid)
            quiet = await honest_latencies(honest, 20)
            points = [{"devices": 0, "rss": baseline}]
            refused = 0
            task = progress.add_task("hostile devices", total=devices)
            per_step = max(1, devices // steps)
            for n in range(devices):
                # each device on its own loopback address: a handshake rate limit per address applies
                host = f"127.{1 + (n >> 16) % 200}.{(n >> 8) & 0xFF}.{1 + (n & 0xFF) % 254}"
                device = await HostileDevice.connect((ip, port), public, profile, host=host)
                hostile.append(device)
                await device.define_tokens()
                token = f"syt_hostile_{id(device)}_0"
                if handles:
                    await device.define_handles(handles, token)
                if sync_loops:
                    device.hold_sync_loops(token, sync_loops)
                codes = await device.partial_upload(upload) if upload else [Code.CONTINUE]
                refused += codes[-1] != Code.CONTINUE
                progress.advance(task)
                if (n + 1) % per_step == 0 or n + 1 == devices:
                    await asyncio.sleep(2)  # let the sync loops register: a measurement pause, not a sync point
                    points.append({"devices": n + 1, "rss": rss_bytes(child.pid)})
            attacked = await honest_latencies(honest, 20)
            final = points[-1]["rss"]
            sent = sum(d.link.bytes_out for d in hostile)
            received = sum(d.link.bytes_in for d in hostile)
            return {
                "devices": devices,
                "handles_per_device": handles,
                "upload_per_device": upload,
                "tokens_per_device": TOKENS_PER_DEVICE,
                "sync_loops_per_device": sync_loops,
                "uploads_refused": refused,
                "rss_baseline": baseline,
                "rss_final": final,
                "bytes_per_device": round((final - baseline) / devices),
                "points": points,
                "hostile_bytes_sent": sent,
                "hostile_bytes_received": received,
                "amplification": round(received / sent, 3) if sent else None,
                "honest_versions_s": {"quiet_median": statistics.median(quiet), "attacked_median":
                                      statistics.median(attacked), "attacked_max": max(attacked)},
            }
        finally:
            for device in hostile + ([honest] if honest else []):
                with contextlib.suppress(Exception):
                    await device.close()
            await child.stop()
            await homeserver.close()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["devices"] for p in result["points"]]
    ys = [(p["rss"] - result["rss_baseline"]) / 2**20 for p in result["points"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, marker="o", label="server gateway RSS growth")
    ax.plot(xs, [x * 256 / 1024 for x in xs], linestyle="--", label="256 KiB per device")
    ax.set_xlabel("hostile devices")
    ax.set_title(f"each: {result['tokens_per_device']} tokens, {result['handles_per_device']} handles, "
                 f"{result['sync_loops_per_device']} held sync loops,\n"
                 f"an unfinished {result['upload_per_device'] >> 10} KiB upload", fontsize=9)
    ax.set_ylabel("MiB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--handles", type=int, default=32, help="handles each device defines")
    parser.add_argument("--upload", type=int, default=256 << 10, help="bytes of the unfinished upload per device")
    parser.add_argument("--sync-loops", type=int, default=SYNC_LOOPS, help="sync loops each device holds")
    parser.add_argument("--ip", default="127.0.0.5")
    parser.add_argument("--out", type=Path, default=RESULTS / "hostile.json")
    args = parser.parse_args(argv)
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        result = asyncio.run(run(args.devices, args.steps, args.handles, args.upload, args.ip, progress,
                                 args.sync_loops))
    result["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    console.print(f"{result['devices']} hostile devices: server RSS +{(result['rss_final'] - result['rss_baseline']) / 2**20:.1f} MiB "
                  f"= {result['bytes_per_device'] / 1024:.1f} KiB per device; uploads refused {result['uploads_refused']}; "
                  f"amplification {result['amplification']}; honest GET /versions median "
                  f"{result['honest_versions_s']['quiet_median'] * 1000:.1f} ms quiet, "
                  f"{result['honest_versions_s']['attacked_median'] * 1000:.1f} ms attacked "
                  f"(max {result['honest_versions_s']['attacked_max'] * 1000:.1f} ms) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
