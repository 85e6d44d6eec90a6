"""The long-running commands: ``server``, ``client`` and ``up``.

Thin asyncio shells over ``runner``: parse addresses, open links, start the
gateways, show progress, stop cleanly on Ctrl-C / SIGTERM.  They run on uvloop
where it is installed (it is a dependency), asyncio otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from rich.console import Console

from ..codec import DEFAULT_PROFILE, load_profile
from ..errors import GatewayError, KeyFileError
from ..secure import keys
from ..transport import DatagramLink, KeyLog, LinkBudget, SerialLink, UdpLink
from .metrics import Collector, client_collector, server_collector
from .metrics_http import DEFAULT_HOST, metrics_url, serve_metrics
from .runner import start_client, start_server

log = logging.getLogger(__name__)


class ConfigError(GatewayError):
    """A bad address, option or configuration file."""


# ------------------------------------------------------------- addresses


@dataclass(frozen=True)
class LinkAddress:
    kind: str  # "udp" or "serial"
    host: str = ""
    port: int = 0
    path: str = ""
    baud: int | None = None

    def __str__(self) -> str:
        if self.kind == "serial":
            return f"serial:{self.path}" + (f"?baud={self.baud}" if self.baud else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp://{host}:{self.port}"


def parse_link_address(text: str, *, default_port: int = 5683) -> LinkAddress:
    """``udp://HOST:PORT``, ``udp://[V6]:PORT`` or ``serial:/dev/tty…?baud=N``."""
    if text.startswith("serial:"):
        path, _, query = text[len("serial:"):].partition("?")
        if not path:
            raise ConfigError(f"{text!r}: serial address needs a device path")
        baud = parse_qs(query).get("baud", [None])[0]
        try:
            return LinkAddress("serial", path=path, baud=int(baud) if baud else None)
        except ValueError:
            raise ConfigError(f"{text!r}: baud must be a number") from None
    parts = urlsplit(text if "://" in text else "udp://" + text)
    if parts.scheme != "udp" or not parts.hostname:
        raise ConfigError(f"{text!r} is not udp://HOST:PORT or serial:PATH")
    try:
        port = parts.port if parts.port is not None else default_port  # 0: any free port
    except ValueError:
        raise ConfigError(f"{text!r}: bad port") from None
    return LinkAddress("udp", host=parts.hostname, port=port)


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    address = parse_link_address("udp://" + text if "://" not in text else text, default_port=default_port)
    return address.host, address.port


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``--metrics``: ``HOST:PORT``, ``[V6]:PORT``, or ``PORT`` alone for
    127.0.0.1; port 0 takes a free port."""
    text = text.strip()
    if text.isdigit():
        host: str | None = DEFAULT_HOST
        port: int | None = int(text)
    else:
        parts = urlsplit("//" + text)
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if parts.path or parts.query:
            host = None
    if not host or port is None or not 0 <= port <= 65535:
        raise ConfigError(f"--metrics {text!r} is not HOST:PORT")
    return host, port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def start_metrics(text: str | int | None, collectors: list[Collector],
                        console: Console) -> web.AppRunner | None:
    """The metrics endpoint if asked for (off by default), its URL printed."""
    if not text:
        return None
    host, port = parse_metrics_address(str(text))  # TOML may give a bare number
    runner = await serve_metrics(host, port, collectors)
    console.print(f"metrics: {metrics_url(runner)}")
    if not _is_loopback(host):
        console.print("  [yellow]metrics are not on loopback: anyone who reaches them sees peer addresses[/]")
    return runner


async def open_link(address: LinkAddress, budget: LinkBudget) -> DatagramLink:
    if address.kind == "serial":
        return await SerialLink.open(address.path, budget, baud=address.baud)
    return await UdpLink.open(address.host, address.port, budget)


def budget_from(options: dict[str, Any], *, udp: bool) -> LinkBudget:
    from ..transport import parse_netem_rate, parse_netem_time

    rate = options.get("link_rate")
    return LinkBudget(
        rate_bps=parse_netem_rate(rate) if rate else None,
        frame_overhead=int(options.get("link_overhead", 42 if udp else 3)),
        latency=parse_netem_time(options["link_latency"]) if options.get("link_latency") else 0.0,
        max_retransmit=int(options.get("max_retransmit", 4)),
    )


def load_config(path: str | None) -> dict[str, Any]:
    """A TOML file with the same keys as the command's long options."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return {k.replace("-", "_"): v for k, v in doc.items()}


def merged(args: Any, config: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Command-line options win over the configuration file."""
    out = dict(config)
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            out[name] = value
    return out


# ------------------------------------------------------------------ loop


def run(main_coro_factory) -> None:
    async def main() -> None:
        # caught from the first moment: a SIGTERM that arrives while the gateway is
        # still starting (before it waits in until_signalled) stops it in order,
        # instead of killing it with the default action
        _arm_signals()
        await main_coro_factory()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(main())
    else:
        uvloop.run(main())


#: set by SIGINT/SIGTERM once ``run`` armed them (None: not armed)
_stop_requested: asyncio.Event | None = None
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _arm_signals() -> asyncio.Event:
    global _stop_requested
    event = _stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
    return event


#: what stopping may take before the process exits anyway: the gateways
#: answer what is pending at once, so only something stuck takes longer
STOP_TIMEOUT = 5.0


async def until_signalled() -> None:
    """Wait for SIGINT or SIGTERM.  Then the default handlers are back, so a
    second signal ends a shutdown that hangs."""
    global _stop_requested
    stop = _stop_requested if _stop_requested is not None else _arm_signals()
    loop = asyncio.get_running_loop()
    try:
        await stop.wait()
    finally:
        _stop_requested = None
        for sig in _SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def stop_within(console: Console, name: str, *stops: Callable[[], Awaitable[Any]]) -> None:
    """Run ``stops`` in order, all of them within STOP_TIMEOUT."""
    async def all_of() -> None:
        for stop in stops:
            await stop()

    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await all_of()
    except TimeoutError:
        console.print(f"{name} did not stop within {STOP_TIMEOUT:.0f} s; exiting anyway")
    else:
        console.print(f"{name} stopped")


# ---------------------------------------------------------------- server


def server_key(path: Path, generate: bool, console: Console) -> bytes:
    """The server's static private key; with ``generate``, created on first
    run (as Synapse creates its signing key), never overwritten."""
    if generate and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys.write_private_key(path, keys.generate_keypair()[0])
        public = keys.public_from_private(keys.read_private_key(path))
        console.print(f"generated a new server key at {path} (mode 0600); clients pin it on first contact, or "
                      f"give it to them: --server-key {keys.encode_key(public)}  ({keys.fingerprint(public)})",
                      soft_wrap=True)  # a key split over lines cannot be copied
    try:
        return keys.read_private_key(path)
    except KeyFileError as exc:
        if path.exists() or generate:
            raise
        raise KeyFileError(f"{exc}: create one with `coap-gateway keygen {path}`, or start with "
                           f"--generate-key to create it now") from None


def server_state_dir(options: dict[str, Any]) -> Path | None:
    """Where the server keeps what must outlive a restart (the IK1 strike
    register).  Without one, early data is refused for a while after each
    start, so the default is the key's directory; plaintext mode keeps none."""
    if options.get("state_dir"):
        return Path(options["state_dir"])
    return Path(options["key"]).parent if options.get("key") and not options.get("plaintext") else None



SERVER_OPTIONS = ["homeserver", "listen", "key", "generate_key", "state_dir", "plaintext", "profile", "allow_admin", "advertise",
                  "link_rate", "link_latency", "link_overhead", "max_retransmit", "metrics", "no_sync_push", "keylog"]


def key_log_from(options: dict[str, Any], console: Console) -> KeyLog | None:
    """``--keylog FILE`` or ``COAP_GATEWAY_KEYLOG``: every session's keys
    appended to FILE (0600), for Wireshark (docs/wireshark.md).  Off unless asked."""
    if options.get("plaintext"):
        return None
    key_log = KeyLog.from_settings(options.get("keylog"))
    if key_log is not None:
        console.print(f"[bold red]key log on:[/] session keys go to {key_log.path} — "
                      f"anyone with that file can read this gateway's secure traffic")
    return key_log


async def serve_server(options: dict[str, Any], console: Console) -> None:
    if not options.get("homeserver"):
        raise ConfigError("--homeserver is required")
    address = parse_link_address(options.get("listen", "udp://0.0.0.0:5683"))
    profile = load_profile(options.get("profile", DEFAULT_PROFILE))
    static = None
    if not options.get("plaintext"):
        if not options.get("key"):
            raise ConfigError("--key PATH is required (or --plaintext for an already trusted link)")
        static = server_key(Path(options["key"]), bool(options.get("generate_key")), console)
    state_dir = server_state_dir(options)
    if options.get("advertise"):
        console.print("[yellow]advertise:[/] /versions no longer carries the endpoint (it reached only clients "
                      "already on the link); `coap-gateway advertisement` prints the entry for "
                      "/.well-known/matrix/client (docs/operator.md, \"Discovery\")")
    key_log = key_log_from(options, console)
    link = await open_link(address, budget_from(options, udp=address.kind == "udp"))
    server = await start_server(link, homeserver=options["homeserver"], profile=profile, static_private=static,
                                allow_admin=bool(options.get("allow_admin")),
                                sync_push=not options.get("no_sync_push"), state_dir=state_dir, key_log=key_log)
    mode = f"Noise, key {keys.fingerprint(keys.public_from_private(static))}" if static else "PLAINTEXT"
    console.print(f"server gateway on {link.name} → {options['homeserver']}  ({mode}, profile {profile.name})")
    metrics = None
    try:
        metrics = await start_metrics(options.get("metrics"), [server_collector(server)], console)
        await until_signalled()
    finally:
        await stop_within(console, "server gateway", server.stop, *([metrics.cleanup] if metrics is not None else []))
        if key_log is not None:
            key_log.close()


# ---------------------------------------------------------------- client


CLIENT_OPTIONS = ["server", "server_key", "server_name", "key", "pins", "plaintext", "listen", "profile", "low_bandwidth",
                  "local", "link_rate", "link_latency", "link_overhead", "max_retransmit", "metrics", "keepalive",
                  "no_sync_push", "keylog"]


def keepalive_from(options: dict[str, Any]) -> float | None:
    """``--keepalive SECONDS``: a CoAP ping after that long without a frame sent."""
    value = options.get("keepalive")
    if value in (None, "", 0, "0"):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--keepalive {value!r} is not a number of seconds") from None
    if not 1 <= seconds <= 86400:
        raise ConfigError("--keepalive must be between 1 and 86400 seconds")
    return seconds


async def serve_client(options: dict[str, Any], console: Console) -> None:
    if not options.get("server"):
        raise ConfigError("--server is required")
    keepalive = keepalive_from(options)
    server = parse_link_address(options["server"])
    host, port = parse_host_port(options.get("listen", "127.0.0.1:8008"), 8008)
    profile = load_profile(options.get("profile", DEFAULT_PROFILE))
    static = server_public = pins = None
    if not options.get("plaintext"):
        static = keys.read_private_key(options["key"]) if options.get("key") else keys.generate_keypair()[0]
        if options.get("server_key"):
            server_public = keys.decode_key(options["server_key"])
        else:
            pins = keys.PinStore(options.get("pins") or Path.home() / ".config" / "coap-gateway" / "pins.json")
    key_log = key_log_from(options, console)
    if server.kind == "serial":
        link = await open_link(server, budget_from(options, udp=False))
        peer: Any = SerialLink.PEER
    else:
        local = parse_link_address(options.get("local", "udp://0.0.0.0:0" if ":" not in server.host else "udp://[::]:0"))
        link = await open_link(local, budget_from(options, udp=True))
        peer = (server.host, server.port)
    client = await start_client(link, peer, profile=profile, static_private=static, server_public=server_public,
                                pins=pins, server_name=options.get("server_name") or str(server), host=host, port=port,
                                low_bandwidth=bool(options.get("low_bandwidth")),
                                sync_push=not options.get("no_sync_push"), keepalive=keepalive, key_log=key_log,
                                # a device with a key file keeps its wire state beside it: a restart is a reconnect
                                state_dir=Path(options["key"]).parent if static is not None and options.get("key")
                                else None,
                                # a key made just now has no transactions yet: the scope it names is new
                                fresh_key=static is not None and not options.get("key"))
    console.print(f"client gateway: point your Matrix client at {client.base_url}  (server {server}, "
                  f"{'PLAINTEXT' if static is None else 'Noise'})")
    metrics = None
    try:
        metrics = await start_metrics(options.get("metrics"), [client_collector(client)], console)
        await until_signalled()
    finally:
        # pending requests are answered first (503), then the rest closes
        await stop_within(console, "client gateway", client.stop, *([metrics.cleanup] if metrics is not None else []))
        if key_log is not None:
            key_log.close()
