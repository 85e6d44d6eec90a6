"""W6 and the federated join without running anything: who sent a frame, the
windows' summary, the targets and the report (issue 12, item 4).

The run itself (two Synapse pairs, tcpdump, nginx) is exercised by
test_bench.py's reduced run; these tests need none of that.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bench import targets
from bench.capture import Frame, Window, sender_side
from bench.federation import MESSAGE, counter_delta, summarise
from bench.report import bytes_table, federation_section, gateway_requests, targets_table, write_charts

A, B = "127.0.0.61", "127.0.0.62"
SIDES = {A: "A", B: "B"}


def _frame(src: tuple[str, int], dst: tuple[str, int], wire: int, payload: int) -> Frame:
    return Frame(time=0.0, wire=wire, proto="tcp", src=src, dst=dst, payload_len=payload)


def test_sender_side_by_address_or_by_destination():
    assert sender_side(A, "127.0.0.1", SIDES) == "A"  # A's front answering
    assert sender_side(B, A, SIDES) == "B"
    # a homeserver's outgoing connection leaves from 127.0.0.1: sent to B, so by A
    assert sender_side("127.0.0.1", B, SIDES) == "A"
    assert sender_side("127.0.0.1", A, SIDES) == "B"
    assert sender_side("127.0.0.1", "127.0.0.9", SIDES) is None


def test_a_window_with_sides_counts_what_each_side_sent():
    window = Window("W6", (A, B), keep_frames=False, sides=SIDES)
    request = _frame(("127.0.0.1", 40000), (B, 8448), wire=900, payload=834)
    answer = _frame((B, 8448), ("127.0.0.1", 40000), wire=500, payload=434)
    ack = _frame(("127.0.0.1", 40000), (B, 8448), wire=66, payload=0)
    for frame in (request, answer, ack):
        window.add(frame, "tls-data", retransmission=False)
    doc = window.result.as_dict(with_frames=False)
    assert doc["sent_by"] == {"A": {"frames": 2, "wire_bytes": 966, "payload_bytes": 834},
                              "B": {"frames": 1, "wire_bytes": 500, "payload_bytes": 434}}
    assert doc["wire_bytes"] == 1466 and doc["frames"] == 3


def test_a_window_without_sides_is_as_before():
    window = Window("W1", (A,), keep_frames=False)
    window.add(_frame((A, 1), (B, 2), 100, 34), "tls-data", retransmission=False)
    assert "sent_by" not in window.result.as_dict(with_frames=False)


def test_counter_delta_keeps_the_numbers_that_moved():
    before = {"sent": 3, "served": 1, "compact_sent": 3, "by_status": {200: 3}}
    after = {"sent": 4, "served": 1, "compact_sent": 4, "by_status": {200: 4}}
    assert counter_delta(before, after) == {"sent": 1, "compact_sent": 1}


def _window(frames: int, wire: int, link: int, a_to_b: tuple[int, int, int], b_to_a: tuple[int, int, int],
            *, sent: tuple[int, int] | None = (1, 0)) -> dict[str, Any]:
    def direction(values: tuple[int, int, int]) -> dict[str, int]:
        return dict(zip(("frames", "wire_bytes", "payload_bytes"), values))
    window: dict[str, Any] = {"frames": frames, "wire_bytes": wire, "payload_bytes": link, "settled": True,
                              "a_to_b": direction(a_to_b), "b_to_a": direction(b_to_a)}
    if sent is not None:
        window["gateway_counters_delta"] = {"A": {"sent": sent[0]} if sent[0] else {},
                                            "B": {"sent": sent[1]} if sent[1] else {}}
    return window


def test_summarise_gives_median_min_max_in_all_and_per_direction():
    windows = [_window(2, 329, 245, (1, 271, 229), (1, 58, 16)),
               _window(2, 330, 246, (1, 272, 230), (1, 58, 16)),
               _window(4, 413, 245, (2, 313, 229), (2, 100, 16))]
    summary = summarise(windows)
    assert summary["count"] == 3 and summary["settled"]
    assert summary["wire_bytes"] == {"median": 330, "min": 329, "max": 413}
    assert summary["frames"] == {"median": 2, "min": 2, "max": 4}
    assert summary["link_bytes"]["median"] == 245
    assert summary["a_to_b"]["wire_bytes"] == {"median": 272, "min": 271, "max": 313}
    assert summary["b_to_a"]["link_bytes"] == {"median": 16, "min": 16, "max": 16}


def test_summarise_reports_an_unsettled_window():
    windows = [_window(2, 329, 245, (1, 271, 229), (1, 58, 16))]
    windows[0]["settled"] = False
    assert not summarise(windows)["settled"]


def _results() -> dict[str, Any]:
    """A results document as run.py writes it, W6 and two joins (figures from a real run)."""
    base_windows = [_window(5, 2005, 1675, (3, 1325, 1127), (2, 680, 548), sent=None) for _ in range(3)]
    gw_windows = [_window(2, 329, 245, (1, 271, 229), (1, 58, 16)) for _ in range(3)]
    w6 = {"message": MESSAGE, "repeats": 3,
          "baseline": {"server_names": [f"{A}:8448", f"{B}:8448"], **summarise(base_windows),
                       "windows": base_windows},
          "gateway": {"server_names": ["hs-a.bench", "hs-b.bench"], **summarise(gw_windows), "windows": gw_windows},
          "ratio_wire": 6.09, "ratio_link": 6.84}
    joins = [{"rate_bps": 100, "delay_s": 1.0, "history": 10, "seconds": 199.1, "joined": True, "error": None,
              "attempts": [{"at_s": 20.0}, {"at_s": 51.0}, {"at_s": 199.1}],
              "a_to_b": {"link_bytes": 1274, "frames": 2}, "b_to_a": {"link_bytes": 1649, "frames": 3}},
             {"rate_bps": 1000.0, "delay_s": 1.0, "history": 10, "seconds": 22.5, "joined": True, "error": None,
              "attempts": [{"at_s": 22.5}], "a_to_b": {"link_bytes": 1265, "frames": 2},
              "b_to_a": {"link_bytes": 1035, "frames": 2}}]
    results: dict[str, Any] = {
        "federation": {"w6": w6, "joins": joins},
        "workloads": {"W6": {
            "baseline": {"frames": 5, "wire_bytes": 2005, "payload_bytes": 1675},
            "gateway": {"frames": 2, "wire_bytes": 329, "payload_bytes": 245}}},
    }
    results["targets"] = targets.evaluate(results)
    return results


def _row(results: dict[str, Any], key: str) -> dict[str, Any]:
    return next(row for row in results["targets"] if row["key"] == key)


def test_targets_w6_and_the_join():
    results = _results()
    assert _row(results, "W6.wire")["measured"] == 329 and _row(results, "W6.wire")["met"]
    assert _row(results, "W6.link")["measured"] == 245 and _row(results, "W6.link")["met"]
    join = _row(results, "join.time")
    assert join["measured"] == 199.1 and join["met"] and not join["asserted"]


def test_the_join_target_reads_only_the_100_bit_per_s_join():
    results = _results()
    del results["federation"]["joins"][0]  # a --quick or --skip-slow run: no join at 100 bit/s
    row = _row({"targets": targets.evaluate(results)}, "join.time")
    assert row["measured"] is None and row["met"] is None


def test_a_join_that_never_succeeded_misses_the_target():
    results = _results()
    results["federation"]["joins"][0].update(joined=False, seconds=372.0, error={"error": "timed out"})
    results["targets"] = targets.evaluate(results)
    row = _row(results, "join.time")
    assert row["measured"] is None and row["met"] is False
    assert "| did not finish | ❌ not yet |" in "\n".join(targets_table(results))


def test_the_bytes_table_has_a_w6_row():
    rows = [line for line in bytes_table(_results()) if line.startswith("| W6")]
    assert len(rows) == 1
    assert "2 005 B in 5 frames" in rows[0] and "329 B in 2 frames" in rows[0] and "6.1×" in rows[0]
    assert "≤ 344 B ✅ met" in rows[0] and "≤ 260 B ✅ met" in rows[0]


def test_the_federation_section():
    page = "\n".join(federation_section(_results()))
    assert "### W6 — a federated message" in page
    assert MESSAGE in page
    # both transports, with both directions: wire / link level (frames), medians
    assert "| 5 | 2 005 | 1 675 | 1 325 / 1 127 B (3) | 680 / 548 B (2) | — |" in page
    assert "| 2 | 329 | 245 | 271 / 229 B (1) | 58 / 16 B (1) | ≤ 344 B, ≤ 260 B link level |" in page
    assert "6.09× on the wire, 6.84× link level" in page
    assert "nothing but the transaction and its answer crossed" in page
    assert "### Federated join (10 messages of history)" in page
    assert ("| 100 bit/s, 1 s each way | yes | 3 | 199.1 | 1 274 B (2 frames) | 1 649 B (3 frames) | "
            "≤ 300 s ✅ met |") in page
    assert "| 1000 bit/s, 1 s each way | yes | 1 | 22.5 |" in page and page.count("≤ 300 s") == 1


def test_the_federation_section_names_other_requests_in_a_window():
    results = _results()
    results["federation"]["w6"]["gateway"]["windows"][1]["gateway_counters_delta"]["B"] = {"sent": 1}
    assert gateway_requests(results["federation"]["w6"]["gateway"]) == ([1, 1, 1], [0, 1, 0])
    page = "\n".join(federation_section(results))
    assert "A [1, 1, 1], B [0, 1, 0]" in page


def test_the_federation_section_renders_older_results_and_failures():
    results = _results()
    old = copy.deepcopy(results)
    for transport in ("baseline", "gateway"):  # results from before the directions were counted
        entry = old["federation"]["w6"][transport]
        del entry["a_to_b"], entry["b_to_a"]
        for window in entry["windows"]:
            window.pop("gateway_counters_delta", None)
    page = "\n".join(federation_section(old))
    assert "| 2 | 329 | 245 | — | — |" in page and "nothing but the transaction" not in page
    failed = "\n".join(federation_section({"federation": {"error": "RuntimeError: boom"}}))
    assert "Federation part of this run failed: `RuntimeError: boom`" in failed


def test_the_w6_chart(tmp_path: Path):
    pytest.importorskip("matplotlib")
    results = _results()
    charts = write_charts(results, tmp_path)
    assert charts["w6"].read_bytes().startswith(b"\x89PNG")
    assert charts["bytes"].exists()  # W6 is a group of the bytes chart too
    page = "\n".join(federation_section(results, charts, lambda p: f"img/{p.name}"))
    assert "![W6 both ways](img/bench-w6.png)" in page
