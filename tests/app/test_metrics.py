"""Metrics: the text exposition byte for byte, per-peer counting, and scrapes
of real gateway pairs (a stub homeserver; then Synapse and matrix-nio)."""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from coap_gateway.app.cli import build_parser
from coap_gateway.app.daemon import ConfigError, parse_metrics_address
from coap_gateway.app.metrics import (
    Histogram,
    Registry,
    client_collector,
    format_value,
    peer_label,
    reason_label,
    render,
    server_collector,
    timed,
)
from coap_gateway.app.metrics_http import bound_port, metrics_url, serve_metrics
from coap_gateway.app.runner import start_client, start_server
from coap_gateway.codec.profile import load_profile

REPO = Path(__file__).resolve().parents[2]
from coap_gateway.secure import keys
from coap_gateway.transport import DeviceId
from coap_gateway.transport.coap import (
    MAX_COUNTED_PEERS,
    OTHER_PEERS,
    create_link_endpoint,
)
from coap_gateway.transport.timing import LinkBudget
from meshsim import LinkProfile, emulated_link_pair

PROFILE = load_profile("lb2")
FAST = LinkProfile(rate_bps=1_000_000, delay=0.002)


# ------------------------------------------------------------ exposition


def test_exposition_byte_for_byte():
    reg = Registry()
    frames = reg.counter("demo_frames", 'Frames "sent".\nA second line, a \\ backslash.', ("peer", "direction"))
    frames.set(3, peer='a"b', direction="out")
    frames.inc(2, peer="c\\d\ne", direction="in")
    frames.inc(12345678901, peer="c\\d\ne", direction="in")  # inc sums: two keys, one label
    reg.gauge("demo_sessions", "Sessions now.").set(2)
    reg.gauge("demo_ratio", "A float.", ("kind",)).set(0.5, kind="x")
    latency = reg.histogram("demo_seconds", "Latency.", ("gateway",), bounds=(0.1, 1, 2.5))
    for value in (0.0625, 0.1, 0.75, 3):  # 0.1 lands in le="0.1": a bucket includes its bound
        latency.observe(value, gateway="client")
    reg.counter("demo_empty", "Nothing yet.", ("reason",))

    assert render(reg) == (
        r'# HELP demo_frames_total Frames "sent".\nA second line, a \\ backslash.' "\n"
        r"# TYPE demo_frames_total counter" "\n"
        r'demo_frames_total{peer="a\"b",direction="out"} 3' "\n"
        r'demo_frames_total{peer="c\\d\ne",direction="in"} 12345678903' "\n"
        r"# HELP demo_sessions Sessions now." "\n"
        r"# TYPE demo_sessions gauge" "\n"
        r"demo_sessions 2" "\n"
        r"# HELP demo_ratio A float." "\n"
        r"# TYPE demo_ratio gauge" "\n"
        r'demo_ratio{kind="x"} 0.5' "\n"
        r"# HELP demo_seconds Latency." "\n"
        r"# TYPE demo_seconds histogram" "\n"
        r'demo_seconds_bucket{gateway="client",le="0.1"} 2' "\n"
        r'demo_seconds_bucket{gateway="client",le="1"} 3' "\n"
        r'demo_seconds_bucket{gateway="client",le="2.5"} 3' "\n"
        r'demo_seconds_bucket{gateway="client",le="+Inf"} 4' "\n"
        r'demo_seconds_sum{gateway="client"} 3.9125' "\n"
        r'demo_seconds_count{gateway="client"} 4' "\n"
        r"# HELP demo_empty_total Nothing yet." "\n"
        r"# TYPE demo_empty_total counter" "\n"
    )


def test_samples_are_sorted_and_an_empty_registry_renders_nothing():
    reg = Registry()
    status = reg.counter("http", "By status.", ("status",))
    for code in (404, 200, 403):
        status.set(1, status=code)
    assert [line.split('"')[1] for line in render(reg).splitlines()[2:]] == ["200", "403", "404"]
    assert render(Registry()) == ""


def test_values_as_prometheus_reads_them():
    assert [format_value(v) for v in (0, 7, True, 2.0, 0.005, 1e-05, 1.5e20, math.inf, -math.inf, math.nan)] == [
        "0", "7", "1", "2", "0.005", "1e-05", "1.5e+20", "+Inf", "-Inf", "NaN"]


def test_histogram_buckets_are_cumulative_and_include_their_bound():
    h = Histogram((1, 2, math.inf))  # +Inf given or not: always last, once
    for value in (0.5, 1, 1.5, 2, 2.0001, 99):
        h.observe(value)
    assert h.cumulative() == [(1.0, 2), (2.0, 4), (math.inf, 6)]
    assert h.count == 6 and h.sum == pytest.approx(106.0001)
    with pytest.raises(ValueError):
        Histogram((2, 1))


def test_registry_refuses_what_prometheus_would_not_read():
    reg = Registry()
    for bad in ("1abc", "a-b", ""):
        with pytest.raises(ValueError):
            reg.counter(bad, "x")
    for labels in (("le",), ("__x",), ("a", "a"), ("a-b",)):
        with pytest.raises(ValueError):
            reg.gauge("g" + str(len(labels)), "x", labels)
    c = reg.counter("c", "x", ("peer",))
    with pytest.raises(ValueError):
        c.set(1)  # a label missing
    with pytest.raises(ValueError):
        c.set(1, peer="a", other="b")
    with pytest.raises(ValueError):
        c.inc(-1, peer="a")
    with pytest.raises(ValueError):
        reg.gauge("c", "x", ("peer",))  # same name, another type
    assert reg.counter("c", "x", ("peer",)) is c  # the same family for a second collector


def test_labels_never_carry_message_content():
    assert peer_label(("127.0.0.1", 5683)) == "127.0.0.1:5683"
    assert peer_label(("::1", 5683, 0, 0)) == "[::1]:5683"
    assert peer_label(bytes.fromhex("00ff10")) == "00ff10"
    assert peer_label("server") == "server"
    assert reason_label("ProfileMismatchError: client profile 3, server has 7") == "ProfileMismatchError"
    assert reason_label("profile 9 refused") == "profile N refused"
    assert reason_label("IK1 repeated") == "IK1 repeated"


async def test_timed_observes_however_the_method_ends():
    class Thing:
        def __init__(self):
            self.latency = Histogram()

        @timed(lambda self: self.latency)
        async def work(self, fail: bool) -> str:
            await asyncio.sleep(0)
            if fail:
                raise RuntimeError("no")
            return "done"

    thing = Thing()
    assert await thing.work(False) == "done"
    with pytest.raises(RuntimeError):
        await thing.work(True)
    assert thing.latency.count == 2


# ------------------------------------------------------------ per peer


class FakeLink:
    name = "fake"
    budget = LinkBudget()

    def __init__(self):
        self.sent: list[tuple[object, bytes]] = []
        self.receive = None

    def send(self, peer, datagram):
        self.sent.append((peer, datagram))

    def set_receiver(self, receiver):
        self.receive = receiver

    def queued_bytes(self, peer):
        return 0

    async def close(self):
        pass


async def test_per_peer_counting_is_bounded():
    link = FakeLink()
    endpoint = await create_link_endpoint(link)
    try:
        peers = [("127.0.0.1", 10000 + i) for i in range(MAX_COUNTED_PEERS + 76)]
        for i, peer in enumerate(peers):
            link.receive(peer, b"\xff" * (1 + i % 3))  # not CoAP: dropped, still counted
        endpoint.interface.send_datagram(peers[0], b"abcd")
        endpoint.interface.send_datagram(peers[-1], b"xy")
        table = endpoint.interface.peers
        assert len(table) == MAX_COUNTED_PEERS + 1
        assert table[peers[0]].frames_in == 1 and table[peers[0]].bytes_out == 4
        other = table[OTHER_PEERS]
        assert other.frames_in == 76 and other.frames_out == 1 and other.bytes_out == 2
        assert peers[-1] not in table
        # the per-peer counts add up to the link totals
        counters = endpoint.counters
        assert sum(p.frames_in for p in table.values()) == counters.frames_in == len(peers)
        assert sum(p.bytes_in for p in table.values()) == counters.bytes_in
        assert sum(p.bytes_out for p in table.values()) == counters.bytes_out == 6
        assert counters.dropped_malformed == len(peers)
    finally:
        await endpoint.shutdown()


# ------------------------------------------------------------ scrapes


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a text exposition (enough of the format for these tests)."""
    samples = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert match, line
        labels = dict(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items()))


def peers(samples, gateway: str) -> set[str]:
    return {ls["peer"] for n, ls, _ in samples if n == "coap_gateway_link_bytes_total" and ls["gateway"] == gateway}


async def get_metrics(runner: web.AppRunner):
    async with aiohttp.ClientSession() as http, http.get(metrics_url(runner)) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await r.text())


class Pair:
    """A server and a client gateway over an emulated link, each with its own
    metrics endpoint, as two `coap-gateway` processes would have."""

    def __init__(self, homeserver: str, secure: bool, seed: int = 1):
        self.homeserver, self.secure, self.seed = homeserver, secure, seed

    async def __aenter__(self):
        self.client_link, self.server_link = emulated_link_pair(FAST, seed=self.seed)
        server_priv = keys.generate_keypair()[0] if self.secure else None
        self.server = await start_server(self.server_link, homeserver=self.homeserver, profile=PROFILE,
                                         static_private=server_priv)
        self.client = await start_client(
            self.client_link, "server", profile=PROFILE,
            static_private=keys.generate_keypair()[0] if self.secure else None,
            server_public=keys.public_from_private(server_priv) if self.secure else None)
        self.server_metrics = await serve_metrics(collectors=[server_collector(self.server)])
        self.client_metrics = await serve_metrics(collectors=[client_collector(self.client)])
        self.metrics_hosts = [a[0] for r in (self.client_metrics, self.server_metrics) for a in r.addresses]
        return self

    async def __aexit__(self, *exc):
        await self.client_metrics.cleanup()
        await self.server_metrics.cleanup()
        await self.client.stop()
        await self.server.stop()

    async def scrape_quiet(self):
        """Both scrapes once nothing is in flight on the (lossless) link."""
        for _ in range(100):
            client, server = await get_metrics(self.client_metrics), await get_metrics(self.server_metrics)
            if all(total(client, m, direction="out") == total(server, m, direction="in")
                   and total(server, m, direction="out") == total(client, m, direction="in")
                   for m in ("coap_gateway_link_bytes_total", "coap_gateway_link_frames_total")):
                return client, server
            await asyncio.sleep(0.02)
        raise AssertionError("the link never went quiet")


def check_consistent(pair: Pair, client, server) -> None:
    """What both ends say agrees with itself, with the other end, and with the link."""
    for name in ("coap_gateway_link_bytes_total", "coap_gateway_link_frames_total"):
        assert total(client, name, direction="out") == total(server, name, direction="in") > 0
        assert total(server, name, direction="out") == total(client, name, direction="in") > 0
    assert total(client, "coap_gateway_link_bytes_total", direction="out") == pair.client_link.sent_bytes
    assert total(server, "coap_gateway_link_frames_total", direction="out") == pair.server_link.sent_frames
    for side, gateway in ((client, "client"), (server, "server")):
        requests = total(side, "coap_gateway_requests_total", gateway=gateway)
        assert total(side, "coap_gateway_request_duration_seconds_count", gateway=gateway) == requests
        assert total(side, "coap_gateway_request_duration_seconds_bucket", gateway=gateway, le="+Inf") == requests
        assert total(side, "coap_gateway_coap_retransmissions_total") == 0  # lossless, fast
        assert total(side, "coap_gateway_malformed_messages_total") == 0
    # one CoAP request per HTTP request (no Token-Unbound round on a fresh pair)
    assert total(server, "coap_gateway_requests_total") == total(client, "coap_gateway_requests_total")
    assert pair.metrics_hosts == ["127.0.0.1", "127.0.0.1"]  # off the public interface by default
    if pair.secure:
        assert total(client, "coap_gateway_handshakes_total") == total(server, "coap_gateway_handshakes_total") == 1
        assert total(server, "coap_gateway_secure_sessions") == 1
        assert total(client, "coap_gateway_handshake_failed") == 0
        # the server counts the device (its static key and process epoch), and
        # handshake datagrams that carried no request (IK2 sent before the
        # answer was ready) by address
        devices = [k for k in pair.server.endpoint.interface.peers if isinstance(k, DeviceId)]
        assert len(devices) == 1
        assert peers(server, "server") - {"client"} == {str(devices[0])}
        assert peers(client, "client") == {"server"}
    else:
        assert peers(server, "server") == {"client"} and peers(client, "client") == {"server"}
        assert not any(name.startswith("coap_gateway_handshake") for name, _, _ in server + client)


def undocumented(samples) -> set[str]:
    """The families a scrape exposes that docs/metrics.md's table leaves out."""
    documented = set(re.findall(r"^\| `([a-z_]+)`", (REPO / "docs" / "metrics.md").read_text(), re.M))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name, _, _ in samples} - documented


async def stub_homeserver() -> tuple[web.AppRunner, str]:
    async def versions(_request):
        return web.json_response({"versions": ["v1.11"]})

    app = web.Application()
    app.router.add_get("/_matrix/client/versions", versions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{bound_port(runner)}"


@pytest.mark.parametrize("secure", [True, False], ids=["noise", "plaintext"])
async def test_scrape_a_gateway_pair(secure):
    homeserver, base = await stub_homeserver()
    try:
        async with Pair(base, secure) as pair, aiohttp.ClientSession() as http:
            url = pair.client.base_url
            for path, status in (("/_matrix/client/versions", 200), ("/_matrix/client/v3/nothing", 404),
                                 ("/_synapse/admin/v1/server_version", 403), ("/_matrix/client/versions", 200)):
                async with http.get(url + path) as r:
                    assert r.status == status, path
            await homeserver.cleanup()  # the homeserver goes away: 502, an upstream error
            async with http.get(url + "/_matrix/client/versions") as r:
                assert r.status == 502
            client, server = await pair.scrape_quiet()
    finally:
        await homeserver.cleanup()
    check_consistent(pair, client, server)
    assert total(client, "coap_gateway_requests_total") == 5
    statuses = {ls["status"]: v for n, ls, v in server if n == "coap_gateway_http_responses_total"}
    assert statuses == {"200": 2, "404": 1, "403": 1, "502": 1}
    assert total(server, "coap_gateway_refused_admin_total") == 1
    assert total(server, "coap_gateway_upstream_errors_total") == 1
    assert total(server, "coap_gateway_token_unbound_total") == 0
    assert total(client, "coap_gateway_link_failures_total") == 0
    assert undocumented(client + server) == set()


async def test_one_endpoint_for_both_gateways_as_up_serves_them():
    homeserver, base = await stub_homeserver()
    try:
        async with Pair(base, secure=True, seed=2) as pair, aiohttp.ClientSession() as http:
            async with http.get(pair.client.base_url + "/_matrix/client/versions") as r:
                assert r.status == 200
            both = await serve_metrics(collectors=[server_collector(pair.server), client_collector(pair.client)])
            try:
                samples = await get_metrics(both)
            finally:
                await both.cleanup()
    finally:
        await homeserver.cleanup()
    counts = {ls["gateway"]: v for n, ls, v in samples if n == "coap_gateway_requests_total"}
    assert counts == {"server": 1, "client": 1}
    assert {ls["gateway"] for n, ls, _ in samples if n == "coap_gateway_request_duration_seconds_count"} == {
        "server", "client"}


# ------------------------------------------------------------ command line


def test_metrics_option_is_off_unless_given_and_loopback_by_default():
    parser = build_parser()
    for command in (["server"], ["client"], ["up"]):
        assert parser.parse_args(command).metrics is None
        assert parser.parse_args([*command, "--metrics", "9464"]).metrics == "9464"
    assert parse_metrics_address("9464") == ("127.0.0.1", 9464)
    assert parse_metrics_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_metrics_address("[::1]:9464") == ("::1", 9464)
    assert parse_metrics_address("0.0.0.0:9464") == ("0.0.0.0", 9464)  # possible, when asked for
    for bad in ("", "host", "127.0.0.1:x", "127.0.0.1:70000", "99999", "h:1/path"):
        with pytest.raises(ConfigError):
            parse_metrics_address(bad)


async def test_server_command_serves_metrics_where_asked():
    import signal
    import socket
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        udp = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coap_gateway", "server", "--plaintext", "--homeserver", "http://127.0.0.1:9",
        "--listen", f"udp://127.0.0.1:{udp}", "--metrics", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        seen = ""
        while not (match := re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics)", seen)):
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, seen
            seen += line.decode()
        async with aiohttp.ClientSession() as http, http.get(match.group(1)) as r:
            assert r.status == 200
            samples = parse(await r.text())
        assert total(samples, "coap_gateway_requests_total", gateway="server") == 0
        assert "not on loopback" not in seen
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and b"server gateway stopped" in err


# ------------------------------------------------------------ Synapse


@pytest.mark.synapse
async def test_scrape_after_a_chat_through_synapse(synapse):
    from nio import (
        AsyncClient,
        AsyncClientConfig,
        RegisterResponse,
        RoomCreateResponse,
        RoomSendResponse,
        SyncResponse,
    )

    name = "m" + uuid.uuid4().hex[:8]
    async with Pair(synapse.base_url, secure=True, seed=3) as pair:
        nio = AsyncClient(pair.client.base_url, name, config=AsyncClientConfig(request_timeout=300, max_timeouts=0))
        try:
            assert isinstance(await nio.register(name, "pw-" + name), RegisterResponse)
            assert isinstance(await nio.sync(timeout=0), SyncResponse)
            room = await nio.room_create(name="metrics")
            assert isinstance(room, RoomCreateResponse)
            sent = await nio.room_send(room.room_id, "m.room.message", {"msgtype": "m.text", "body": "counted"})
            assert isinstance(sent, RoomSendResponse)
        finally:
            await nio.close()
        client, server = await pair.scrape_quiet()
        requests = pair.client.gateway.counters.requests
    check_consistent(pair, client, server)
    assert total(client, "coap_gateway_requests_total") == requests >= 4
    # every request reached Synapse and its answer came back, counted by status
    assert total(server, "coap_gateway_http_responses_total") == requests
    assert total(server, "coap_gateway_http_responses_total", status="200") >= 4
    assert total(client, "coap_gateway_token_sent_total") == 0  # register's token was bound where it was issued
    assert total(server, "coap_gateway_upstream_errors_total") == 0
    assert undocumented(client + server) == set()
