"""The reduced benchmark run (``python -m bench --quick``) against the session Synapse.

Byte counts are deterministic (up to a few bytes of IDs and sync tokens), so
DESIGN.md's byte targets are asserted as upper bounds — as strict expected
failures while a target is not met, so that meeting one turns its test red
until the mark goes.  Timings are reported by the run, never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nio", reason="matrix-nio is not installed")

from bench import targets
from bench.capture import MARKER_PREFIX, read_pcap
from bench.run import Settings, missing_prerequisites, run_bench
from tests.helpers.loops import run_in_fresh_loop

pytestmark = pytest.mark.synapse

WORKLOADS = ("W1", "W1s", "W2", "W3", "W4", "W4s", "W5", "W1x", "W2x")
IDLE = ("W4", "W4s")

#: targets this build does not meet yet, with what it measures (link level /
#: wire as the target says).  Remove an entry when its target is met: the
#: strict xfail turns into a failure to say so.
NOT_MET_YET = {
    "W2.wire": "measured 169 B (two frames: the notification and its 4-B ACK, docs/protocol.md §9a)",
    "W2x.wire": "measured 169 B (two frames: the notification and its 4-B ACK, as W2)",
}


def _target_params() -> list[Any]:
    params = []
    for target in targets.TARGETS:
        if not target.asserted:
            continue
        if target.key in NOT_MET_YET:
            params.append(pytest.param(target.key, id=target.key, marks=pytest.mark.xfail(
                strict=True, reason=f"not met yet: {NOT_MET_YET[target.key]}")))
        else:
            params.append(pytest.param(target.key, id=target.key))
    return params


@pytest.fixture(scope="module")
def run(request, tmp_path_factory) -> tuple[dict[str, Any], Settings]:
    why = missing_prerequisites()
    if why:
        pytest.skip(f"the benchmark cannot run here: {why}")
    synapse = request.getfixturevalue("synapse")  # only once we know the run can happen
    out = tmp_path_factory.mktemp("bench")
    settings = Settings.quick_defaults(out_dir=out, docs=out / "benchmarks.md", img_dir=out / "img",
                                       pcap=out / "capture.pcap", name="quick", command="pytest tests/bench")
    results = run_in_fresh_loop(run_bench(settings, homeserver=synapse.base_url))
    return results, settings


@pytest.fixture(scope="module")
def results(run) -> dict[str, Any]:
    return run[0]


@pytest.mark.parametrize("key", _target_params())
def test_design_byte_target(results, key):
    target = targets.BY_KEY[key]
    measured = target.measure(results)
    assert measured is not None, f"{key} was not measured"
    assert measured <= target.limit, f"{target.text}: {measured:g} {target.unit} > {target.limit:g} {target.unit}"


def test_every_workload_was_counted_and_the_gateway_uses_less(results):
    for workload in WORKLOADS:
        b, g = results["workloads"][workload]["baseline"], results["workloads"][workload]["gateway"]
        for entry in (b, g):
            assert entry["settled"], f"{workload}: flows not settled when the window closed"
            if workload in IDLE and entry is g:
                continue  # a gateway that pushes may be silent while idle
            assert entry["frames"] > 0 and entry["wire_bytes"] > entry["payload_bytes"] > 0, (workload, entry)
            assert entry["up"]["frames"] > 0 and entry["down"]["frames"] > 0
        assert g["wire_bytes"] < b["wire_bytes"], workload
        assert g["payload_bytes"] < b["payload_bytes"], workload
    for idle in IDLE:
        w4 = results["workloads"][idle]
        assert 0 <= w4["gateway"]["bit_per_s"] < w4["baseline"]["bit_per_s"], idle
    # W2 and W4 start and end with the device's long-poll in place (the premise of their counts)
    for transport in ("baseline", "gateway"):
        for workload in ("W2", "W2x", *IDLE):
            assert results["workloads"][workload][transport]["parked"], (workload, transport)


def test_frames_cost_what_design_counts(results):
    # every gateway frame: 14 B Ethernet + 20 B IPv4 + 8 B UDP over its payload
    for workload in WORKLOADS:
        g = results["workloads"][workload]["gateway"]
        assert g["wire_bytes"] - g["payload_bytes"] == 42 * g["frames"], workload
        # TCP: at least 14 + 20 + 20 per segment (Linux adds 12 B of timestamps)
        b = results["workloads"][workload]["baseline"]
        assert b["wire_bytes"] - b["payload_bytes"] >= 54 * b["frames"], workload


def test_baseline_is_where_design_measured_it(results):
    """HTTPS+JSON within a plausible band of DESIGN's own measurements."""
    for workload in ("W1", "W2", "W3"):
        measured = results["workloads"][workload]["baseline"]["wire_bytes"]
        reference = targets.DESIGN_BASELINE[workload]
        assert reference / 2 <= measured <= reference * 2, (workload, measured, reference)
    # a warm send is one request and one response (and an ACK), a cold one adds TCP and TLS
    w1, w3 = results["workloads"]["W1"]["baseline"], results["workloads"]["W3"]["baseline"]
    assert w1["kinds"].get("syn", 0) == 0 and w3["kinds"]["syn"] == 1 and w3["kinds"]["tls-handshake"] >= 1


def test_the_capture_saw_every_frame_the_links_counted(results):
    capture = results["capture"]
    assert capture["dropped_by_kernel"] == 0
    assert capture["captured"] == capture["frames"] + capture["markers"]
    checks = {c["workload"]: c for c in results["link_checks"]}
    assert set(checks) == set(WORKLOADS)
    for workload, check in checks.items():
        assert check["capture_frames"] == check["link_frames"], workload
        assert check["capture_payload_bytes"] == check["link_bytes"], workload
        assert check["link_frames"] > 0 or workload in IDLE, workload  # idle may be silent


def test_an_independent_parser_counts_the_same(run):
    """scapy reads the saved pcap; each window, found again by its markers, holds the same bytes."""
    scapy_all = pytest.importorskip("scapy.all")
    results, settings = run
    packets = scapy_all.rdpcap(str(settings.pcap))
    ours = read_pcap(settings.pcap)
    assert len(packets) == len(ours)

    def marker(pkt) -> str | None:
        if pkt.haslayer(scapy_all.UDP) and bytes(pkt[scapy_all.UDP].payload).startswith(MARKER_PREFIX):
            return bytes(pkt[scapy_all.UDP].payload).decode()
        return None

    for workload in WORKLOADS:
        for transport in ("baseline", "gateway"):
            entry = results["workloads"][workload][transport]
            start, end = entry["markers"]
            ips = set(entry["ips"])
            inside = False
            frames = wire = 0
            for pkt in packets:
                m = marker(pkt)
                if m == start:
                    inside = True
                elif m == end:
                    break
                elif inside and m is None and pkt.haslayer(scapy_all.IP) and (
                        pkt[scapy_all.IP].src in ips or pkt[scapy_all.IP].dst in ips):
                    frames += 1
                    wire += pkt.wirelen or len(pkt)
            assert (frames, wire) == (entry["frames"], entry["wire_bytes"]), (workload, transport)


def test_report_files(run):
    results, settings = run
    doc = json.loads((Path(settings.out_dir) / "quick.json").read_text())
    assert doc["workloads"].keys() == results["workloads"].keys()
    page = Path(settings.docs).read_text()
    assert "| W1 warm send + response |" in page and "requests/s per core" in page
    for name in ("bench-bytes.png", "bench-idle.png", "bench-cpu.png"):
        assert (Path(settings.img_dir) / name).read_bytes().startswith(b"\x89PNG"), name
        assert f"img/{name}" in page


def test_timings_are_reported(results):
    """Reported, never asserted: only that they were measured."""
    slow = results["slow_link"]["gateway"]
    assert slow["w5_seconds"] > 0 and slow["send_ack_seconds"] > 0
    cpu = results["cpu"]
    assert cpu["gateway"]["requests"] > 0 and cpu["passthrough"]["requests"] > 0
    # the proxy's equal-load run is paced: never faster than the gateway served
    paced, gateway = cpu["passthrough_paced"], cpu["gateway"]
    assert paced["requests"] > 0 and paced["requests_per_second"] <= gateway["requests_per_second"] * 1.05 + 5
    assert cpu["cost_ratio_equal_load"] > 0


def test_w6_a_federated_message_from_the_capture(results):
    """Issue 12: one federated m.text between two stock Synapses, counted from the
    capture both ways: TLS 1.3 directly, and through the federation gateways."""
    fed = results["federation"]
    assert "error" not in fed, fed.get("error")
    w6 = fed["w6"]
    for transport in ("baseline", "gateway"):
        entry = w6[transport]
        assert entry["count"] >= 3 and entry["settled"]
        assert all(w["frames"] > 0 for w in entry["windows"])
    base, gw = w6["baseline"], w6["gateway"]
    # the baseline is one keep-alive HTTPS exchange: TLS records, no handshake in the window
    assert all(w["kinds"].get("syn", 0) == 0 and w["kinds"].get("tls-data", 0) >= 2 for w in base["windows"])
    # the gateways: one sealed request and its answer, nothing else
    assert all(w["frames"] == 2 for w in gw["windows"]), gw["windows"]
    # both ways, per side: the transaction A → B and its answer B → A, nothing unattributed
    for entry in (base, gw):
        for w in entry["windows"]:
            assert "unattributed" not in w, w
            assert w["a_to_b"]["frames"] + w["b_to_a"]["frames"] == w["frames"]
            assert w["a_to_b"]["payload_bytes"] > w["b_to_a"]["payload_bytes"] > 0, w
    assert all(w["gateway_counters_delta"]["A"].get("sent") == 1 and not w["gateway_counters_delta"]["B"].get("sent")
               for w in gw["windows"]), gw["windows"]
    assert gw["wire_bytes"]["max"] - gw["link_bytes"]["max"] == 2 * 42
    assert gw["wire_bytes"]["median"] * 4 < base["wire_bytes"]["median"]
    assert results["workloads"]["W6"]["gateway"]["payload_bytes"] == gw["link_bytes"]["median"]
    # every transaction crossed compact and was answered "all accepted"
    counters = gw["gateway_counters"]
    assert sum(c["compact_accepted"] for c in counters.values()) >= w6["repeats"]
    assert all(c["compact_resent"] == 0 and c["sent_failed"] == 0 for c in counters.values())


def test_a_federated_join_through_the_gateways(results):
    (join,) = results["federation"]["joins"]  # the quick run: one rate
    assert join["joined"], join
    assert join["a_to_b"]["link_bytes"] > 0 and join["b_to_a"]["link_bytes"] > 0
