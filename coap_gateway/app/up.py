"""``coap-gateway up``: a homeserver, both gateways and a shaped link, on one machine.

This is the one place where the gateway and the simulator meet: the link
between the two gateways is an emulated link (``transport.emulated``) whose
stages are meshsim's netem link model.  Nothing else in ``coap_gateway``
imports meshsim, and the gateway runs without it; only this command needs it
(``cli`` imports this module when ``up`` is asked for).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from meshsim import LinkProfile, emulated_link_pair

from ..codec import DEFAULT_PROFILE, load_profile
from ..secure import keys
from ..tools import LocalSynapse
from ..transport import parse_netem_rate, parse_netem_time
from .daemon import key_log_from, parse_host_port, start_metrics, until_signalled
from .metrics import client_collector, server_collector
from .metrics_http import DEFAULT_HOST
from .runner import start_client, start_server


async def serve_up(options: dict[str, Any], console: Console) -> None:
    """Local Synapse + server gateway + emulated link + client gateway."""
    data_dir = Path(options.get("data_dir") or "var/up")
    host, port = parse_host_port(options.get("listen", "127.0.0.1:8008"), 8008)
    rate = parse_netem_rate(options.get("rate", "2400bit"))
    delay = parse_netem_time(options.get("delay", "100ms"))
    loss = float(options.get("loss", 0.0))
    profile = load_profile(options.get("profile", DEFAULT_PROFILE))
    link_profile = LinkProfile(rate_bps=rate, delay=delay, loss=loss, overhead=0)

    data_dir.mkdir(parents=True, exist_ok=True)
    key_path = data_dir / "server.key"
    if not key_path.exists():
        keys.write_private_key(key_path, keys.generate_keypair()[0])
    static = keys.read_private_key(key_path)

    synapse = LocalSynapse(data_dir / "synapse")
    with console.status("starting Synapse (first run creates it)…"):
        await synapse.start()
    key_log = key_log_from(options, console)
    client_link, server_link = emulated_link_pair(link_profile, seed=1, max_retransmit=8 if loss else 4,
                                                 record=False)
    server = await start_server(server_link, homeserver=synapse.base_url, profile=profile, static_private=static,
                                state_dir=data_dir, key_log=key_log)
    client = await start_client(client_link, "server", profile=profile, static_private=keys.generate_keypair()[0],
                                fresh_key=True,
                                server_public=keys.public_from_private(static), host=host, port=port,
                                low_bandwidth=bool(options.get("low_bandwidth")), key_log=key_log)
    console.print(f"[bold]Matrix homeserver through a {rate:g} bit/s link:[/] {client.base_url}\n"
                  f"  server name: {synapse.server_name}   register users with any client (m.login.dummy)\n"
                  f"  Synapse itself: {synapse.base_url}   data: {data_dir}   Ctrl-C stops everything")
    stopping = asyncio.create_task(until_signalled())
    metrics = None
    try:
        # on by default here (a free loopback port): `up` is for looking at what happens
        metrics = await start_metrics(options.get("metrics") or f"{DEFAULT_HOST}:0",
                                      [server_collector(server), client_collector(client)], console)
        with Live(_counters(client_link, server_link, client, server), console=console, refresh_per_second=2) as live:
            while not stopping.done():
                await asyncio.wait({stopping}, timeout=0.5)
                live.update(_counters(client_link, server_link, client, server))
    finally:
        if metrics is not None:
            await metrics.cleanup()
        await client.stop()
        await server.stop()
        await synapse.stop()
        if key_log is not None:
            key_log.close()
        console.print("stopped: client gateway, server gateway, Synapse")


def _counters(client_link, server_link, client, server) -> Table:
    table = Table(title="link counters (live)")
    for col in ("direction", "frames", "bytes", "retransmissions", "lost"):
        table.add_column(col, justify="right" if col != "direction" else "left")
    for name, end, endpoint in (("client → server", client_link, client.endpoint),
                                ("server → client", server_link, server.endpoint)):
        lost = sum(m.counters.dropped["loss"] for m in end.stages)
        table.add_row(name, str(end.sent_frames), str(end.sent_bytes),
                      str(endpoint.counters.retransmissions), str(lost))
    table.caption = f"HTTP requests: {client.gateway.counters.requests}"
    return table
