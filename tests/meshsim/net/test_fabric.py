"""The link fabric over real UDP sockets on 127.0.0.0/8, in real time.

Every test gets its own pair of address bases (127.X.Y.0 public,
127.X.Y+1.0 private) so tests never share a socket address.  Rates are high
(≥ 100 kbit/s) so each test takes well under a second.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from meshsim.net.events import EVENT_FIELDS, EventLog, read_events
from meshsim.net.fabric import MAX_HOPS, Fabric
from meshsim.net.udp import kernel_receive_drops
from meshsim.model import LinkModel, LinkProfile
from meshsim.net.pcap import MAX_UDP_PAYLOAD_V4, PcapWriter
from meshsim.model import Topology
from tests.meshsim.support import LOOPBACK, App, Recorder, open_app

PORT = 15683


# ---------------------------------------------------------------- helpers


def make_topology(bases: tuple[str, str], names: str, links: dict[str, LinkProfile], seed: int = 0) -> Topology:
    topology = Topology(seed=seed, public_base=bases[0], private_base=bases[1])
    for name in names:
        topology.add_node(name)
    for pair, profile in links.items():
        topology.add_link(pair[0], pair[1], profile)
    return topology


def coap_get(mid: int) -> bytes:
    """A confirmable CoAP GET /hello with message ID `mid` and no token."""
    return bytes([0x40, 0x01, mid >> 8, mid & 0xFF, 0xB5]) + b"hello"


# ---------------------------------------------------------------- a two-hop chain


AB = LinkProfile(rate_bps=1_000_000, delay=0.005, overhead=42)
BC = LinkProfile(rate_bps=500_000, delay=0.010, overhead=42)


async def run_chain_echo(bases: tuple[str, str], count: int = 20, size: int = 200) -> dict[str, Any]:
    """A burst of `count` datagrams from A to an echo on C and back; what happened."""
    topology = make_topology(bases, "ABC", {"AB": AB, "BC": BC}, seed=3)
    async with Fabric(topology, ports=[PORT]) as fabric:
        recorder = Recorder(fabric)
        server = await open_app(fabric.private_address("C", PORT), echo=True)
        client = await open_app(fabric.private_address("A", 0))
        sent_at = time.monotonic()
        for i in range(count):
            client.sendto(i.to_bytes(2, "big") * (size // 2), fabric.public_address("C", PORT))
        await client.until(count)
        snapshot = fabric.snapshot()
        epoch = fabric.epoch
    server.transport.close()
    client.transport.close()
    return {
        "topology": topology, "events": recorder.events, "snapshot": snapshot, "epoch": epoch,
        "sent_at": sent_at, "server": server, "client": client, "count": count, "size": size,
        "fabric": fabric,
    }


def check_chain_echo(run: dict[str, Any]) -> dict[str, float]:
    count, size, epoch = run["count"], run["size"], run["epoch"]
    fabric: Fabric = run["fabric"]
    server: App = run["server"]
    client: App = run["client"]
    events = run["events"]
    # addressing: C sees A's public address on A's own port; A sees C's public address
    assert {source for _, _, source in server.received} == {(fabric.public_address("A", client.address[1]))}
    assert {source for _, _, source in client.received} == {fabric.public_address("C", PORT)}
    assert sorted(data for _, data, _ in client.received) == sorted(
        i.to_bytes(2, "big") * (size // 2) for i in range(count)
    )

    # counters: every hop carried every datagram, nothing lost
    links = run["snapshot"]["links"]
    for link_id in ("A->B", "B->C", "C->B", "B->A"):
        link = links[link_id]
        assert (link["offered_packets"], link["delivered_packets"]) == (count, count), link_id
        assert link["delivered_bytes"] == count * size
        assert link["delivered_wire_bytes"] == count * (size + 42)
        assert sum(link["dropped"].values()) == 0
        assert link["busy_time"] == pytest.approx(count * (size + 42) * 8 / link["profile"]["rate_bps"])
    assert links["A->B"]["peak_queue_packets"] >= 2  # the burst queued at the first serialiser
    counters = run["snapshot"]["counters"]
    assert (counters["received_packets"], counters["delivered_packets"]) == (2 * count, 2 * count)
    assert sum(counters["dropped"].values()) == 0
    assert counters["kernel_drops"] in (0, None)  # None: not Linux

    # the fabric's times are exactly those of the two models chained: replay the requests
    ab = LinkModel(AB, seed=3, link_id="A->B")
    bc = LinkModel(BC, seed=3, link_id="B->C")
    offers = [e for e in events if e["kind"] == "offer" and e["link"] == "A->B"]
    replayed = {}
    first_hop = [(e["pkt"], ab.offer(e["t"], size).deliveries[0]) for e in offers]
    for pkt, copy in first_hop:
        replayed[pkt] = bc.offer(copy.deliver_at, size).deliveries[0].deliver_at
    egress_to_c = {e["pkt"]: e for e in events if e["kind"] == "egress" and e["dst"] == "C"}
    assert sorted(egress_to_c) == sorted(replayed)
    for pkt, deliver_at in replayed.items():
        assert egress_to_c[pkt]["t"] == pytest.approx(deliver_at, abs=1e-9)
        assert egress_to_c[pkt]["hops"] == 2

    # measured arrivals at C: never before the model's time, and not grossly after
    by_payload = {e["pkt"]: e for e in events if e["kind"] == "ingress" and e["dst"] == "C"}
    assert len(by_payload) == count
    model_times = sorted(egress_to_c[pkt]["t"] for pkt in by_payload)
    arrivals = sorted(at - epoch for at, _, _ in server.received)
    errors = [arrival - model for arrival, model in zip(arrivals, model_times)]
    assert min(errors) >= 0.0, errors
    assert max(errors) < 0.05, errors

    # and the physical floor, from the client's clock: serialisers and delays of both hops
    tx_ab, tx_bc = (size + 42) * 8 / AB.rate_bps, (size + 42) * 8 / BC.rate_bps
    last_request = max(at for at, _, _ in server.received) - run["sent_at"]
    assert last_request >= tx_ab + count * tx_bc + AB.delay + BC.delay - 1e-9
    first_reply = min(at for at, _, _ in client.received) - run["sent_at"]
    assert first_reply >= 2 * (tx_ab + tx_bc + AB.delay + BC.delay) - 1e-9
    lates = [e["late"] for e in events if e["kind"] == "deliver"]
    assert min(lates) >= 0.0
    return {"max_error": max(errors), "max_late": max(lates)}


async def test_two_hop_chain_echo_counters_and_timing(bases: tuple[str, str]) -> None:
    check_chain_echo(await run_chain_echo(bases))


def test_two_hop_chain_on_uvloop_is_never_early(bases: tuple[str, str]) -> None:
    # uvloop rounds timers to milliseconds; the scheduler must still never deliver early
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        check_chain_echo(runner.run(run_chain_echo(bases, count=30, size=120)))


# ---------------------------------------------------------------- runtime changes


async def test_reshaping_or_failing_one_link_leaves_the_other_queue_alone(bases: tuple[str, str]) -> None:
    fast = LinkProfile(rate_bps=10_000_000, overhead=42)
    slow = LinkProfile(rate_bps=100_000, delay=0.002, overhead=42)  # 19.36 ms per 200-byte datagram
    topology = make_topology(bases, "ABC", {"AB": fast, "BC": slow})
    async with Fabric(topology, ports=[PORT]) as fabric:
        recorder = Recorder(fabric)
        sink = await open_app(fabric.private_address("C", PORT))
        client = await open_app(fabric.private_address("A", 0))
        for i in range(10):
            client.sendto(bytes([i]) * 200, fabric.public_address("C", PORT))
        await recorder.until(lambda: len(recorder.of("offer", link="B->C")) == 10)
        scheduled = {e["pkt"]: e for e in recorder.of("offer", link="B->C")}
        assert fabric.snapshot()["links"]["B->C"]["in_flight_packets"] >= 8
        # the other link changes shape, fails and heals while B->C holds its queue
        fabric.set_link("A", "B", LinkProfile(rate_bps=1_000, delay=1.0))
        assert fabric.fail("A", "B") == 0
        fabric.heal("A", "B")
        await sink.until(10)
        links = fabric.snapshot()["links"]
        assert links["B->C"]["delivered_packets"] == 10
        assert links["B->C"]["dropped"]["flushed"] == 0
        assert [data[0] for _, data, _ in sink.received] == list(range(10))
        # B->C kept the schedule it had before the change
        deliveries = {e["pkt"]: e["t"] for e in recorder.of("deliver", link="B->C")}
        assert sorted(deliveries) == sorted(scheduled)
        assert links["A->B"]["profile"]["rate_bps"] == 1_000


async def test_failing_a_link_loses_only_what_it_carries(bases: tuple[str, str]) -> None:
    slow = LinkProfile(rate_bps=200_000, overhead=42)  # 9.68 ms per 200-byte datagram
    topology = make_topology(bases, "ABC", {"AB": slow, "BC": slow})
    async with Fabric(topology, ports=[PORT]) as fabric:
        recorder = Recorder(fabric)
        sink = await open_app(fabric.private_address("C", PORT))
        client = await open_app(fabric.private_address("A", 0))
        for i in range(12):
            client.sendto(bytes([i]) * 200, fabric.public_address("C", PORT))
        await recorder.until(lambda: len(recorder.of("offer", link="B->C")) >= 3)
        lost = fabric.fail("A", "B")
        assert 0 < lost <= 9
        reached_b = 12 - lost
        await sink.until(reached_b)
        await recorder.until(lambda: fabric.snapshot()["in_flight_bytes"] == 0)
        links = fabric.snapshot()["links"]
        assert links["A->B"]["dropped"]["flushed"] == lost
        assert links["A->B"]["delivered_packets"] == reached_b
        assert links["B->C"]["delivered_packets"] == reached_b
        assert links["B->C"]["dropped"]["flushed"] == 0
        assert len(sink.received) == reached_b
        assert len(recorder.of("drop", reason="flushed", link="A->B")) == lost
        assert recorder.of("link_down", link="A->B")[0]["flushed"] == lost


async def test_fail_gives_no_route_drops_then_heal_recovers(bases: tuple[str, str]) -> None:
    topology = make_topology(bases, "ABC", {"AB": AB, "BC": BC})
    async with Fabric(topology, ports=[PORT]) as fabric:
        recorder = Recorder(fabric)
        server = await open_app(fabric.private_address("C", PORT), echo=True)
        client = await open_app(fabric.private_address("A", 0))
        fabric.fail("B", "C")
        for _ in range(3):
            client.sendto(b"lost", fabric.public_address("C", PORT))
        await recorder.until(lambda: fabric.counters.dropped["no_route"] == 3)
        assert {e["node"] for e in recorder.of("drop", reason="no_route")} == {"A"}
        # B can still be reached while C cannot
        b_app = await open_app(fabric.private_address("B", PORT), echo=True)
        client.sendto(b"to B", fabric.public_address("B", PORT))
        await client.until(1)
        fabric.heal("B", "C")
        client.sendto(b"found", fabric.public_address("C", PORT))
        await client.until(2)
        assert client.received[-1][1:] == (b"found", fabric.public_address("C", PORT))
        assert server.received[0][1] == b"found"
        assert fabric.counters.dropped["no_route"] == 3
        # a partition cuts C off again, heal_all joins it back
        fabric.partition([["A", "B"], ["C"]])
        client.sendto(b"cut off", fabric.public_address("C", PORT))
        await recorder.until(lambda: fabric.counters.dropped["no_route"] == 4)
        assert {e["link"] for e in recorder.of("link_down")} == {"B->C", "C->B"}
        fabric.heal_all()
        client.sendto(b"joined", fabric.public_address("C", PORT))
        await client.until(3)
        assert client.received[-1][1] == b"joined"
        b_app.transport.close()


async def test_traffic_reroutes_when_the_direct_link_fails(bases: tuple[str, str]) -> None:
    topology = make_topology(bases, "ABC", {"AB": AB, "BC": BC, "AC": AB})
    async with Fabric(topology, ports=[PORT]) as fabric:
        recorder = Recorder(fabric)
        server = await open_app(fabric.private_address("C", PORT), echo=True)
        client = await open_app(fabric.private_address("A", 0))
        client.sendto(b"direct", fabric.public_address("C", PORT))
        await client.until(1)
        fabric.fail("A", "C")
        client.sendto(b"around", fabric.public_address("C", PORT))
        await client.until(2)
        assert [e["hops"] for e in recorder.of("egress", dst="C")] == [1, 2]
        assert [e["link"] for e in recorder.of("offer") if e["pkt"] == recorder.of("egress", dst="C")[1]["pkt"]] == [
            "A->B", "B->C"
        ]
        server.transport.close()


async def test_half_loss_drops_exactly_what_the_seeded_model_predicts(bases: tuple[str, str]) -> None:
    lossy = LinkProfile(loss=0.5, delay=0.001)
    topology = make_topology(bases, "AB", {"AB": lossy}, seed=7)
    predictor = LinkModel(lossy, seed=7, link_id="A->B")
    fates = [bool(predictor.offer(float(i), 4).deliveries) for i in range(200)]
    # a marker the model lets through, after the 40 under test: when it arrives, all before it have
    marker = next(i for i in range(40, 200) if fates[i])
    async with Fabric(topology, ports=[PORT]) as fabric:
        recorder = Recorder(fabric)
        sink = await open_app(fabric.private_address("B", PORT))
        client = await open_app(fabric.private_address("A", 0))
        for i in range(marker + 1):
            client.sendto(i.to_bytes(4, "big"), fabric.public_address("B", PORT))
        expected = [i for i in range(marker + 1) if fates[i]]
        await sink.until(len(expected))
        assert [int.from_bytes(data, "big") for _, data, _ in sink.received] == expected
        dropped = sorted(e["link_pkt"] for e in recorder.of("drop", link="A->B", reason="loss"))
        assert dropped == [i for i in range(marker + 1) if not fates[i]]
        assert 10 <= len(dropped) <= 30  # about half of the first 40
        assert fabric.snapshot()["links"]["A->B"]["dropped"]["loss"] == len(dropped)


async def test_duplicates_and_corruption_reach_the_application(bases: tuple[str, str]) -> None:
    mangling = LinkProfile(duplicate=1.0, corrupt=1.0, delay=0.001)
    topology = make_topology(bases, "AB", {"AB": mangling}, seed=1)
    async with Fabric(topology, ports=[PORT]) as fabric:
        sink = await open_app(fabric.private_address("B", PORT))
        client = await open_app(fabric.private_address("A", 0))
        original = bytes(32)
        client.sendto(original, fabric.public_address("B", PORT))
        await sink.until(2)
        for _, data, _ in sink.received:
            flipped = int.from_bytes(data, "big") ^ int.from_bytes(original, "big")
            assert flipped.bit_count() == 1  # exactly one bit, per copy
        link = fabric.snapshot()["links"]["A->B"]
        assert (link["duplicated"], link["corrupted"], link["delivered_packets"]) == (1, 2, 2)
        assert fabric.counters.delivered_packets == 2


# ---------------------------------------------------------------- odd input


async def test_unknown_sources_empty_and_huge_datagrams(bases: tuple[str, str]) -> None:
    fast = LinkProfile(rate_bps=1_000_000_000, overhead=42)
    topology = make_topology(bases, "AB", {"AB": fast})
    async with Fabric(topology, ports=[PORT]) as fabric:
        recorder = Recorder(fabric)
        server = await open_app(fabric.private_address("B", PORT), echo=True)
        client = await open_app(fabric.private_address("A", 0))
        # from an address that is no node's private address: dropped and counted
        stranger = await open_app((fabric.public_address("A", 0)[0].rsplit(".", 1)[0] + ".200", 0))
        stranger.sendto(b"who am I", fabric.public_address("B", PORT))
        await recorder.until(lambda: fabric.counters.dropped["unknown_source"] == 1)
        client.sendto(b"", fabric.public_address("B", PORT))
        await client.until(1)
        assert client.received[0][1] == b""
        huge = bytes(range(256)) * (MAX_UDP_PAYLOAD_V4 // 256) + b"\x01" * (MAX_UDP_PAYLOAD_V4 % 256)
        client.sendto(huge, fabric.public_address("B", PORT))
        await client.until(2)
        assert client.received[1][1] == huge
        assert server.received[0][1] == b""
        assert fabric.snapshot()["links"]["A->B"]["delivered_wire_bytes"] == 42 + len(huge) + 42
        stranger.transport.close()


async def test_a_datagram_to_ones_own_public_address_takes_no_link(bases: tuple[str, str]) -> None:
    topology = make_topology(bases, "AB", {"AB": AB})
    async with Fabric(topology, ports=[PORT]) as fabric:
        recorder = Recorder(fabric)
        server = await open_app(fabric.private_address("A", PORT), echo=True)
        client = await open_app(fabric.private_address("A", 0))
        client.sendto(b"me", fabric.public_address("A", PORT))
        await client.until(1)
        assert recorder.of("egress")[0]["hops"] == 0
        assert fabric.snapshot()["links"]["A->B"]["offered_packets"] == 0
        server.transport.close()


def test_kernel_drops_at_a_full_socket_are_counted() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as full, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        full.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
        full.bind((LOOPBACK, 0))
        if kernel_receive_drops([full]) is None:
            pytest.skip("no /proc/net/udp here")
        assert kernel_receive_drops([full]) == 0
        for _ in range(64):
            sender.sendto(b"\0" * 1000, full.getsockname())
        assert kernel_receive_drops([full]) > 0


def test_max_hops_is_generous_but_finite() -> None:
    assert 16 <= MAX_HOPS <= 255


# ---------------------------------------------------------------- outputs


async def record_run(bases: tuple[str, str], directory: Path, count: int) -> tuple[Topology, Path, Path]:
    """A run with one event of every kind; returns the topology, the pcap and the log."""
    ab = LinkProfile(rate_bps=1_000_000, delay=0.002, overhead=42)
    topology = make_topology(bases, "ABC", {"AB": ab, "BC": BC}, seed=9)
    pcap_path, log_path = directory / "run.pcap", directory / "events.jsonl"
    with EventLog(log_path, buffer_bytes=512) as events, PcapWriter(pcap_path) as capture:
        fabric = Fabric(topology, ports=[PORT], events=events, capture=capture)
        await fabric.start()
        recorder = Recorder(fabric)
        server = await open_app(fabric.private_address("C", PORT), echo=True)
        client = await open_app(fabric.private_address("A", 0))
        for mid in range(count):
            client.sendto(coap_get(mid), fabric.public_address("C", PORT))
        await client.until(count)
        # a reshape, a failure with a no_route drop, a heal
        fabric.set_link("A", "B", ab, weight=2)
        fabric.fail("B", "C")
        client.sendto(coap_get(99), fabric.public_address("C", PORT))
        await recorder.until(lambda: fabric.counters.dropped["no_route"] == 1)
        fabric.heal("B", "C")
        # a copy in flight when the fabric stops is dropped as "stopped"
        fabric.set_link("A", "B", LinkProfile(delay=30.0))
        client.sendto(coap_get(100), fabric.public_address("C", PORT))
        await recorder.until(lambda: len(recorder.of("offer")) == 4 * count + 1)
        await fabric.stop()
        server.transport.close()
        client.transport.close()
    return topology, pcap_path, log_path


async def test_pcap_and_event_log(bases: tuple[str, str], tmp_path: Path) -> None:
    count = 5
    topology, pcap_path, log_path = await record_run(bases, tmp_path, count)

    lines = read_events(log_path)
    assert {line["kind"] for line in lines} == set(EVENT_FIELDS)
    for line in lines:
        assert tuple(line) == EVENT_FIELDS[line["kind"]], line
    assert lines[0]["kind"] == "start" and lines[-1]["kind"] == "stop"
    assert json.loads(log_path.read_text().splitlines()[-1])["links"]["A->B"]["offered_packets"] == count + 1
    assert [line["reason"] for line in lines if line["kind"] == "drop"] == ["no_route", "stopped"]
    # every offer ends in exactly one deliver or drop
    offers = {(l["link"], l["link_pkt"]) for l in lines if l["kind"] == "offer"}
    ends = [(l["link"], l["link_pkt"]) for l in lines if l["kind"] in ("deliver", "drop") and l["link"]]
    assert sorted(ends) == sorted(offers)

    # one frame per hop delivery: count datagrams × 2 hops × 2 directions
    from scapy.all import IP, UDP, rdpcap

    frames = rdpcap(str(pcap_path))
    assert len(frames) == 4 * count
    public = {name: topology.node(name).public_ip for name in "ABC"}
    hops = {(f[IP].src, f[IP].dst) for f in frames}
    assert hops == {(public[a], public[b]) for a, b in ("AB", "BC", "CB", "BA")}
    deliveries = [l for l in lines if l["kind"] == "deliver"]
    start_wall = lines[0]["wall"]
    for frame, delivery in zip(frames, deliveries):
        assert frame[IP].id == delivery["pkt"]
        assert float(frame.time) - start_wall == pytest.approx(delivery["t"], abs=1e-5)
        assert PORT in (frame[UDP].sport, frame[UDP].dport)
        assert bytes(frame[UDP].payload)[:2] == b"\x40\x01"


async def test_pcap_opens_in_tshark_with_coap_decoded(bases: tuple[str, str], tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    count = 3
    _, pcap_path, _ = await record_run(bases, tmp_path, count)
    process = await asyncio.create_subprocess_exec(
        tshark, "-r", str(pcap_path), "-d", f"udp.port=={PORT},coap", "-T", "fields", "-e", "coap.code",
        "-e", "coap.mid", "-e", "coap.opt.uri_path",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    rows = [line.split("\t") for line in out.decode().splitlines()]
    assert len(rows) == 4 * count
    assert all(code == "1" and path == "hello" for code, _, path in rows), rows
    assert sorted({int(mid) for _, mid, _ in rows}) == list(range(count))
