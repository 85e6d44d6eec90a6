"""bench/fleet.py on a handful of devices: the figures it reports are there
and make sense (the 1000-device run is `make bench-fleet`)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from bench.fleet import _device_host, run
from tests.helpers.loops import run_in_fresh_loop


def test_every_device_gets_its_own_loopback_address():
    hosts = [_device_host(n) for n in range(4096)]
    assert len(set(hosts)) == len(hosts) and all(h.startswith("127.") for h in hosts)


def test_a_small_fleet_reports_memory_and_cpu_per_message():
    with Progress(console=Console(file=io.StringIO())) as progress:
        result = run_in_fresh_loop(run(devices=4, minutes=0.1, idle_seconds=1.0, ip="127.0.0.9",
                                       progress=progress, period=2.0))
    assert result["devices"] == 4 and result["failed"] == 0
    assert result["messages"] >= 4  # each device sent at least once in 6 s at one message per 2 s
    assert result["rss_with_observations"] > result["rss_baseline"] > 0
    assert result["cpu_per_message_ms_gross"] > 0 and result["idle_cpu_seconds"] >= 0
    assert len(result["points"]) >= 2
