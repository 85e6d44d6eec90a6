"""`meshsim link`: the shaped two-way relay, in process and as a command."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import pytest

from meshsim.cli import build_parser, main, profile_from_args
from meshsim.net.events import EVENT_FIELDS, EventLog, read_events
from meshsim.model import LinkModel, LinkProfile
from meshsim.net.pcap import MAX_UDP_PAYLOAD_V4, PcapWriter
from meshsim.net.relay import DOWN, UP, Relay, parse_host_port
from tests.meshsim.support import LOOPBACK, REPO, Recorder, open_app



# ---------------------------------------------------------------- the relay in process


async def test_echo_over_the_relay_takes_at_least_the_physical_time(tmp_path: Path) -> None:
    profile = LinkProfile(rate_bps=8000, delay=0.1, overhead=42)
    server = await open_app(echo=True)
    client = await open_app()
    with EventLog(tmp_path / "events.jsonl") as events, PcapWriter(tmp_path / "relay.pcap") as capture:
        async with Relay((LOOPBACK, 0), server.address, profile, seed=1, events=events, capture=capture) as relay:
            rtts = []
            for i in range(2):
                sent = time.monotonic()
                client.sendto(bytes([i]) * 50, relay.listen_address)
                await client.until(i + 1)
                rtts.append(client.received[i][0] - sent)
            snapshot = relay.snapshot()
    # serialiser (92 B at 8000 bit/s) and delay, each way
    floor = 2 * (0.1 + (50 + 42) * 8 / 8000)
    assert all(floor <= rtt < floor + 0.1 for rtt in rtts), (rtts, floor)
    assert {source for _, _, source in client.received} == {relay.listen_address}
    # the server sees the relay's upstream socket, not the client
    upstream = {source for _, _, source in server.received}
    assert len(upstream) == 1 and upstream != {client.address}
    for name in (UP, DOWN):
        link = snapshot["links"][name]
        assert (link["offered_packets"], link["delivered_packets"], link["delivered_wire_bytes"]) == (2, 2, 184)
        assert link["busy_time"] == pytest.approx(2 * 0.092)
    counters = snapshot["counters"]
    assert (counters["sent_to_target"], counters["sent_to_clients"], counters["clients"]) == (2, 2, 1)

    lines = read_events(tmp_path / "events.jsonl")
    for line in lines:
        assert tuple(line) == EVENT_FIELDS[line["kind"]], line
    assert [line["kind"] for line in lines].count("egress") == 4
    from scapy.all import IP, UDP, rdpcap

    frames = rdpcap(str(tmp_path / "relay.pcap"))
    assert [(f[IP].src, f[UDP].sport, f[IP].dst, f[UDP].dport) for f in frames] == [
        (*client.address, *server.address),
        (*server.address, *client.address),
    ] * 2
    client.close()
    server.close()


async def test_several_clients_share_the_link_like_a_nat() -> None:
    server = await open_app(echo=True)
    clients = [await open_app() for _ in range(3)]
    profile = LinkProfile(rate_bps=1_000_000, delay=0.002)
    async with Relay((LOOPBACK, 0), server.address, profile) as relay:
        for number, client in enumerate(clients):
            client.sendto(f"client {number}".encode(), relay.listen_address)
        for number, client in enumerate(clients):
            await client.until(1)
            assert [data for _, data, _ in client.received] == [f"client {number}".encode()]
        snapshot = relay.snapshot()
    assert len({source for _, _, source in server.received}) == 3
    assert snapshot["links"][UP]["offered_packets"] == 3  # one link, shared
    assert snapshot["counters"]["clients_seen"] == 3
    for app in (server, *clients):
        app.close()


async def test_the_longest_silent_client_is_evicted_beyond_max_clients() -> None:
    server = await open_app(echo=True)
    first, second = await open_app(), await open_app()
    async with Relay((LOOPBACK, 0), server.address, LinkProfile(), max_clients=1) as relay:
        first.sendto(b"1", relay.listen_address)
        await first.until(1)
        second.sendto(b"2", relay.listen_address)
        await second.until(1)
        first.sendto(b"3", relay.listen_address)  # back, with a new upstream socket
        await first.until(2)
        counters = relay.snapshot()["counters"]
    assert (counters["clients_seen"], counters["clients_evicted"], counters["clients"]) == (3, 2, 1)
    assert len({source for _, _, source in server.received}) == 3
    for app in (server, first, second):
        app.close()


async def test_loss_follows_the_seeded_model() -> None:
    lossy = LinkProfile(loss=0.5, delay=0.001)
    predictor = LinkModel(lossy, seed=3, link_id=UP)
    fates = [bool(predictor.offer(float(i), 2).deliveries) for i in range(200)]
    marker = next(i for i in range(30, 200) if fates[i])
    sink, client = await open_app(), await open_app()
    async with Relay((LOOPBACK, 0), sink.address, lossy, reverse=LinkProfile(), seed=3) as relay:
        for i in range(marker + 1):
            client.sendto(i.to_bytes(2, "big"), relay.listen_address)
        expected = [i for i in range(marker + 1) if fates[i]]
        await sink.until(len(expected))
        assert [int.from_bytes(data, "big") for _, data, _ in sink.received] == expected
        assert relay.snapshot()["links"][UP]["dropped"]["loss"] == marker + 1 - len(expected)
    sink.close()
    client.close()


async def test_empty_and_largest_datagrams_cross_and_oversize_ones_cannot_be_sent() -> None:
    server, client = await open_app(echo=True), await open_app()
    profile = LinkProfile(rate_bps=100_000_000, overhead=42)
    async with Relay((LOOPBACK, 0), server.address, profile) as relay:
        client.sendto(b"", relay.listen_address)
        await client.until(1)
        assert client.received[0][1] == b"" and server.received[0][1] == b""
        largest = bytes(range(256)) * (MAX_UDP_PAYLOAD_V4 // 256) + b"\x02" * (MAX_UDP_PAYLOAD_V4 % 256)
        client.sendto(largest, relay.listen_address)
        await client.until(2)
        assert client.received[1][1] == largest
        # a UDP payload over 65507 bytes cannot even leave the sender over IPv4
        with pytest.raises(OSError):
            client.sock.sendto(b"\0" * (MAX_UDP_PAYLOAD_V4 + 1), relay.listen_address)
        client.sendto(b"still here", relay.listen_address)
        await client.until(3)
        link = relay.snapshot()["links"][UP]
        assert link["delivered_wire_bytes"] == 42 + (42 + MAX_UDP_PAYLOAD_V4) + (42 + 10)
    server.close()
    client.close()


async def test_a_burst_beyond_the_queue_limit_is_dropped_and_counted() -> None:
    server, client = await open_app(echo=True), await open_app()
    profile = LinkProfile(rate_bps=16_000, overhead=42, limit_packets=4)  # 31 ms per 20-byte datagram
    async with Relay((LOOPBACK, 0), server.address, profile) as relay:
        recorder = Recorder(relay)
        for i in range(40):
            client.sendto(bytes([i]) * 20, relay.listen_address)
        await recorder.until(lambda: recorder.count("offer", link=UP) == 40)
        link = relay.snapshot()["links"][UP]
        assert link["dropped"]["queue"] == 40 - link["delivered_packets"]
        assert 4 <= link["delivered_packets"] < 40
        assert link["peak_queue_packets"] == 4
        await client.until(link["delivered_packets"])
        client.sendto(b"after the burst", relay.listen_address)
        await client.until(link["delivered_packets"] + 1)
        assert client.received[-1][1] == b"after the burst"
    server.close()
    client.close()


async def test_payload_in_flight_is_bounded() -> None:
    sink, client = await open_app(), await open_app()
    async with Relay((LOOPBACK, 0), sink.address, LinkProfile(delay=0.2), max_in_flight_bytes=1000) as relay:
        recorder = Recorder(relay)
        for _ in range(20):
            client.sendto(b"\0" * 100, relay.listen_address)
        await recorder.until(lambda: recorder.count("ingress") == 20)
        assert relay.snapshot()["counters"]["dropped"]["overload"] == 10
        assert relay.snapshot()["in_flight_bytes"] == 1000
        await sink.until(10)
    sink.close()
    client.close()


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["link"],
        ["link", "--listen", "nowhere", "--to", "127.0.0.1:9"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:0"],
        ["link", "--listen", "127.0.0.1:70000", "--to", "127.0.0.1:9"],
        ["link", "--listen", "::1:5", "--to", "127.0.0.1:9"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--rate", "100"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--loss", "120%"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--loss", "1%", "--gemodel", "1%"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--gemodel", "1%", "2%", "3%", "4%", "5%"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--netem", "rate 1kbit", "--loss", "1%"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--netem", "reorder 5%"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--netem", "delay 1s 'unclosed"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--limit-seconds", "3"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--limit", "-1"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--max-clients", "0"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--seed", "x"],
        ["link", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9", "--bogus"],
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        status = main(argv)
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("meshsim: error: "), captured.err


def parse(*options: str) -> LinkProfile:
    return profile_from_args(build_parser().parse_args(["link", "--listen", "h:1", "--to", "h:2", *options]))


def test_options_make_the_profile() -> None:
    profile = parse(
        "--rate", "100bit", "--delay", "1s", "--jitter", "200ms", "--loss", "20%", "--dup", "1%",
        "--corrupt", "0.1%", "--limit", "10", "--limit-bytes", "2000", "--limit-seconds", "30s",
    )
    assert profile == LinkProfile(
        rate_bps=100, delay=1.0, jitter=0.2, loss=0.2, duplicate=0.01, corrupt=0.001,
        limit_packets=10, limit_bytes=2000, limit_seconds=30.0, overhead=42,
    )
    # netem's queue of 1000 packets when no limit is given; tc's gemodel defaults
    assert parse("--gemodel", "1%") == LinkProfile(gemodel=(0.01, 0.99, 1.0, 0.0), limit_packets=1000, overhead=42)
    assert parse("--jitter", "5ms", "--overhead", "0").delay == 0.0
    # --netem verbatim; its packet overhead adds to --overhead
    assert parse("--netem", "rate 100bit 8 delay 1s") == LinkProfile(
        rate_bps=100, delay=1.0, overhead=50, limit_packets=1000
    )


def test_host_port_parsing() -> None:
    assert parse_host_port("127.0.0.1:5683") == ("127.0.0.1", 5683)
    assert parse_host_port("[::1]:5683") == ("::1", 5683)
    assert parse_host_port("localhost:0") == ("localhost", 0)
    for bad in ("5683", ":5683", "host:", "host:x", "::1:5683"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_the_command_relays_and_stops_cleanly_on_a_signal(signum: int, tmp_path: Path) -> None:
    server, client = await open_app(echo=True), await open_app()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshsim.cli", "link", "--listen", f"{LOOPBACK}:0",
        "--to", f"{LOOPBACK}:{server.address[1]}", "--rate", "1mbit", "--delay", "5ms", "--seed", "4",
        "--events", str(tmp_path / "events.jsonl"), "--pcap", str(tmp_path / "link.pcap"),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            banner = (await process.stdout.readline()).decode()
        assert banner.startswith("meshsim link: listening on 127.0.0.1:"), banner
        listen = parse_host_port(banner.split()[4].rstrip(","))
        client.sendto(b"through the command", listen)
        await client.until(1, timeout=10)
        process.send_signal(signum)
        async with asyncio.timeout(20):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    summary = out.decode()
    assert "client->target" in summary and "target->client" in summary
    lines = read_events(tmp_path / "events.jsonl")
    assert lines[0]["kind"] == "start" and lines[-1]["kind"] == "stop"
    assert json.dumps(lines[-1]["links"][UP]["delivered_packets"]) == "1"
    assert (tmp_path / "link.pcap").stat().st_size == 24 + 2 * (16 + 28 + len(b"through the command"))
    server.close()
    client.close()
