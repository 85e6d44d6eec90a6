"""Results JSON, docs/benchmarks.md and its PNG charts, from one results document.

``write_reports(results, settings)`` writes ``<out_dir>/<date>.json`` and,
unless ``settings.docs`` is None, the Markdown page and the charts.  The page
is regenerated whole on every run: change the prose here, not in docs/.
``python -m bench --report-only bench/results/DATE.json`` re-renders the page
from a stored run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import targets

WORKLOAD_TITLES = {
    "W1": "W1 warm send + response",
    "W1s": "W1s sender per message: W1 + her own echo (her sync loop running)",
    "W2": "W2 receive one message",
    "W1x": "W1x sender per message with sliding sync (Element X): send, answer, her own echo",
    "W2x": "W2x receive one message with sliding sync (Element X)",
    "W3": "W3 cold start: handshake + first send",
    "W4": "W4 idle (sync loop running)",
    "W4s": "W4s idle, sliding sync (Element X-like request)",
    "W5": "W5 login + first sync (1 room, 10 messages)",
    "W6": "W6 federated message: transaction + answer between two homeservers",
}
CHARTS = {"bytes": "bench-bytes.png", "idle": "bench-idle.png", "cpu": "bench-cpu.png",
          "w6": "bench-w6.png", "loss": "bench-loss.png"}


# ------------------------------------------------------------------ helpers


def _fmt_int(n: float | None) -> str:
    return "—" if n is None else f"{n:,.0f}".replace(",", " ")


def _fmt(n: float | None, digits: int = 1) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "—"
    return f"{n:,.{digits}f}".replace(",", " ")


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not a:
        return "—"
    if not b:
        return "∞"
    return f"{a / b:.1f}×"


def _value(v: float, unit: str) -> str:
    return (_fmt_int(v) if unit == "B" or abs(v) >= 100 else f"{v:.3g}") + f" {unit}"


def _target(key: str) -> targets.Target:
    return targets.BY_KEY[key]


def _limit(key: str) -> str:
    t = _target(key)
    value = f"{t.limit:g}" if t.unit != "B" else _fmt_int(t.limit)
    return f"≤ {value} {t.unit}"


def _mark(met: bool | None) -> str:
    return {True: "✅ met", False: "❌ not yet", None: "—"}[met]


def _target_row(results: dict[str, Any], key: str) -> dict[str, Any]:
    return next((row for row in results.get("targets", []) if row["key"] == key), {})


def _w(results: dict[str, Any], workload: str, transport: str) -> dict[str, Any] | None:
    return results.get("workloads", {}).get(workload, {}).get(transport)


# ------------------------------------------------------------------ tables


def bytes_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| workload | HTTPS+JSON (wire) | gateway (wire: Ethernet+IPv4+UDP) | HTTPS ÷ gateway | target, wire | "
        "gateway link level | target, link level |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    design = targets.DESIGN_BASELINE
    for workload, wire_key, link_key in (("W1", None, None), ("W1s", "W1s.wire", "W1s.link"),
                                         ("W2", "W2.wire", "W2.link"),
                                         ("W1x", "W1x.wire", "W1x.link"), ("W2x", "W2x.wire", "W2x.link"),
                                         ("W3", "W3.wire", None), ("W5", None, "W5.link"),
                                         ("W6", "W6.wire", "W6.link")):
        b, g = _w(results, workload, "baseline"), _w(results, workload, "gateway")
        if not b or not g:
            continue
        wire_target = (f"{_limit(wire_key)} {_mark(_target_row(results, wire_key).get('met'))}"
                       if wire_key else "—")
        link_target = (f"{_limit(link_key)} {_mark(_target_row(results, link_key).get('met'))}"
                       if link_key else "—")
        if link_key == "W5.link":
            link_target = f"≤ {_fmt_int(_target(link_key).limit)} B (120 s at 100 bit/s) " + \
                _mark(_target_row(results, link_key).get("met"))
        reference = f" (DESIGN: {_fmt_int(design[workload])} B)" if workload in design else ""
        lines.append(
            f"| {WORKLOAD_TITLES[workload]} | {_fmt_int(b['wire_bytes'])} B in {b['frames']} frames{reference} | "
            f"{_fmt_int(g['wire_bytes'])} B in {g['frames']} frames | {_ratio(b['wire_bytes'], g['wire_bytes'])} | "
            f"{wire_target} | {_fmt_int(g['payload_bytes'])} B | {link_target} |")
    for idle in ("W4", "W4s"):  # nio's /sync; Element X's sliding sync
        b, g = _w(results, idle, "baseline"), _w(results, idle, "gateway")
        if not (b and g):
            continue
        row = _target_row(results, f"{idle}.wire")
        reference = f" (DESIGN: ≈ {design['W4_bps']} bit/s)" if idle == "W4" else ""
        lines.append(
            f"| {WORKLOAD_TITLES[idle]} | {_fmt(b['bit_per_s'], 1)} bit/s = {_fmt_int(b['bytes_per_hour'])} B/h"
            f"{reference} | {_fmt(g['bit_per_s'], 1)} bit/s = {_fmt_int(g['bytes_per_hour'])} B/h | "
            f"{_ratio(b['bit_per_s'], g['bit_per_s'])} | {_limit(f'{idle}.wire')} {_mark(row.get('met'))} | "
            f"{_fmt(g['link_bit_per_s'], 1)} bit/s = {_fmt_int(g['link_bytes_per_hour'])} B/h | — |")
    return lines


def _median_min_max(stats: dict[str, float]) -> str:
    if stats["min"] == stats["max"]:
        return _fmt_int(stats["median"])
    return f"{_fmt_int(stats['median'])} ({_fmt_int(stats['min'])}–{_fmt_int(stats['max'])})"


def _direction(entry: dict[str, Any], key: str) -> str:
    """One direction's medians: wire B / link level B (frames); older results have no directions."""
    d = entry.get(key)
    if not d:
        return "—"
    return (f"{_fmt_int(d['wire_bytes']['median'])} / {_fmt_int(d['link_bytes']['median'])} B "
            f"({_fmt_int(d['frames']['median'])})")


def gateway_requests(entry: dict[str, Any]) -> tuple[list[int], list[int]] | None:
    """Requests each gateway sent across in each W6 window (from its counters), None when not recorded."""
    deltas = [w.get("gateway_counters_delta") for w in entry.get("windows", [])]
    if not deltas or any(d is None for d in deltas):
        return None
    return [d.get("A", {}).get("sent", 0) for d in deltas], [d.get("B", {}).get("sent", 0) for d in deltas]


W6_TRANSPORTS = (("baseline", "HTTPS+JSON: Synapse → TLS 1.3 (nginx) → Synapse, keep-alive"),
                 ("gateway", "gateways: Synapse → https_proxy → CoAP/Noise over UDP → Synapse"))


def w6_table(w6: dict[str, Any]) -> list[str]:
    lines = ["| transport | frames | wire B (median, min–max) | link level B (median, min–max) | "
             "A → B: wire / link (frames) | B → A: wire / link (frames) | target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for key, label in W6_TRANSPORTS:
        e = w6.get(key)
        if not e:
            continue
        target = f"{_limit('W6.wire')}, {_limit('W6.link')} link level" if key == "gateway" else "—"
        lines.append(f"| {label} | {_median_min_max(e['frames'])} | {_median_min_max(e['wire_bytes'])} | "
                     f"{_median_min_max(e['link_bytes'])} | {_direction(e, 'a_to_b')} | "
                     f"{_direction(e, 'b_to_a')} | {target} |")
    return lines


def federation_section(results: dict[str, Any], charts: dict[str, Path] | None = None,
                       rel: Callable[[Path], str] | None = None) -> list[str]:
    """W6 in detail (both transports, both directions) and the federated join's times."""
    fed = results.get("federation") or {}
    lines: list[str] = []
    w6 = fed.get("w6")
    if w6:
        lines += ["### W6 — a federated message", "",
                  f"One `m.text` (\"{w6['message']}\") from a user of homeserver A to a room a user of homeserver "
                  "B is in, after a warm-up (the room joined over federation, messages both ways: keys fetched, "
                  f"connections and sessions up); {w6['repeats']} windows per transport, each from the send "
                  "until B's user can read the event and every flow between the two sides has settled (every "
                  "TLS byte acknowledged, every CoAP request answered): the `PUT /_matrix/federation/v1/send` "
                  "transaction and its answer, and anything else that crossed meanwhile.", "",
                  *w6_table(w6), "",
                  f"HTTPS+JSON ÷ gateways: {w6.get('ratio_wire')}× on the wire, {w6.get('ratio_link')}× link "
                  "level (TLS records vs sealed frames). HTTPS+JSON: both Synapses stock, each behind nginx on "
                  "port 8448 of its own loopback address, server names that are those addresses (IP literals "
                  "with the port: no well-known, no SRV), each trusting the other's certificate; the "
                  "transaction goes over the TLS connection the warm-up left open. Gateways: each Synapse's "
                  "`https_proxy` is its federation gateway, the two gateways on UDP, each on its own loopback "
                  "address; the transaction crosses in the compact form (docs/protocol.md §11a): references "
                  "for the room, previous and auth events, the X-Matrix header as its 64-byte signature, a "
                  "4-byte content-hash check; an accepted transaction is answered by an empty 2.04.", ""]
        requests = gateway_requests(w6.get("gateway") or {})
        if requests is not None:
            sent_a, sent_b = requests
            if all(n == 1 for n in sent_a) and not any(sent_b):
                lines.append("In every gateway window A's gateway sent one request across (the transaction) and "
                             "B's none: nothing but the transaction and its answer crossed.")
            else:
                lines.append(f"Requests sent across per gateway window: A {sent_a}, B {sent_b} (the transaction "
                             "is one of A's).")
        lines.append("")
        if charts and "w6" in charts and rel is not None:
            lines += [f"![W6 both ways]({rel(charts['w6'])})", ""]
    joins = fed.get("joins") or []
    if joins:
        row = _target_row(results, "join.time")
        lines += ["### Federated join (10 messages of history), through the gateways", "",
                  f"B's user joins a public room on A that holds {joins[0].get('history', 10)} messages, over an "
                  "emulated link between the two gateways (`meshsim.emulated_link_pair`, no IP headers: bytes "
                  "are link level, from the link's counters); the time runs from the user's first "
                  "`POST /join` to the one that returns the room. The homeservers fetched each other's keys "
                  "before the link was slowed.", "",
                  "| link | joined | join calls | seconds | A → B | B → A | target |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for j in joins:
            at_target = j["rate_bps"] == targets.SLOW_RATE_BPS and j["delay_s"] == targets.SLOW_DELAY_S
            lines.append(f"| {j['rate_bps']:g} bit/s, {j['delay_s']:g} s each way | "
                         f"{'yes' if j['joined'] else 'no: ' + str((j.get('error') or {}).get('error', ''))[:80]} | "
                         f"{len(j.get('attempts', [])) or '—'} | "
                         f"{_fmt(j['seconds'], 1)} | {_fmt_int(j['a_to_b']['link_bytes'])} B "
                         f"({j['a_to_b']['frames']} frames) | {_fmt_int(j['b_to_a']['link_bytes'])} B "
                         f"({j['b_to_a']['frames']} frames) | "
                         f"{_limit('join.time') + ' ' + _mark(row.get('met')) if at_target else '—'} |")
        lines += ["", "Stock Synapse gives `make_join` a fixed 20 s (and `query` and event fetches 10 s, "
                  "`get_missing_events` 60 s), whatever `federation.client_timeout` says: a join needs the "
                  "make_join request and answer (~750 B with the X-Matrix header) across within 20 s, which a "
                  "100 bit/s link cannot carry, so the user's first join fails; the gateway keeps the late "
                  "answer and a later join goes through. Transactions and send_join follow `client_timeout` "
                  "(docs/operator.md).", ""]
    if fed.get("error"):
        lines += [f"Federation part of this run failed: `{fed['error']}`", ""]
    return lines


def timing_table(results: dict[str, Any]) -> list[str]:
    slow = results.get("slow_link")
    if not slow:
        return ["(not measured in this run: `--skip-slow`)"]
    g, b = slow["gateway"], slow["baseline_bound"]
    rate, delay = slow["rate_bps"], slow["delay_s"]
    w5_row = _target_row(results, "W5.time")
    w5_target = f"{_limit('W5.time')} {_mark(w5_row.get('met'))}" if rate == targets.SLOW_RATE_BPS else "—"
    shipped = slow.get("as_shipped") or {}
    failed = shipped.get("ok") is False
    lines = [
        f"| at {rate:g} bit/s, {delay:g} s latency each way | HTTPS+JSON (lower bound, computed) | "
        f"gateway (measured, wall clock{', with the workaround below' if failed else ''}) | "
        "gateway's serialisation alone | target |",
        "|---|---:|---:|---:|---|",
        f"| W5 login + first sync (new device: handshake included) | ≥ {_fmt(b['w5_seconds'], 0)} s | "
        f"{_fmt(g['w5_seconds'], 1)} s ({_fmt_int(g['w5_link_bytes'])} B in {g['w5_frames']} frames) | "
        f"{_fmt(g['w5_serialisation_s'], 1)} s | {w5_target} |",
        f"| send → acknowledgement (warm, reference message) | ≥ {_fmt(b['send_ack_seconds'], 1)} s | "
        f"{_fmt(g['send_ack_seconds'], 1)} s ({_fmt_int(g['send_link_bytes'])} B in {g['send_frames']} frames) | "
        f"{_fmt(g['send_serialisation_s'], 1)} s | — |",
    ]
    lines.append("")
    lines.append(f"CoAP retransmissions on the slow link: {g['w5_retransmissions']} during W5, "
                 f"{g['send_retransmissions']} during the send.")
    if failed:
        lines += ["", f"**The gateway as shipped did not complete W5 at {rate:g} bit/s**: {shipped['error']} "
                  f"(after {shipped['failed_after_s']:g} s). The cause: aiocoap keeps a blockwise response "
                  "(`Block2Cache`) and a blockwise request being assembled (`Block1Spool`) for a fixed "
                  f"`MAX_TRANSMIT_WAIT` of 93 s, whatever the link; at {rate:g} bit/s one 1024-byte block takes "
                  f"{1024 * 8 / rate:.0f} s to serialise, so the request for the next block finds the cached "
                  "response gone and gets 4.08 Request Entity Incomplete, which the client gateway hands to nio "
                  f"as the sync's body. The timings above were measured with {g['workaround']}: the lifetime must "
                  "follow the link, like the retransmission timers do (a fix for coap_gateway, not the benchmark)."]
    return lines


def loss_section(results: dict[str, Any], charts: dict[str, Path], rel: Callable[[Path], str]) -> list[str]:
    loss = results.get("loss_latency")
    if not loss:
        return []
    lines = ["### Message latency under loss (virtual time)", "",
             "| loss each way | seeds | messages | median | 95th percentile | max | alice → bob (median) | "
             "bob → alice (median) | undelivered | duplicated | undecodable pushes | retransmissions per run |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in loss["rows"]:
        lines.append(f"| {r['loss']:.0%} | {r['seeds']} | {r['messages']} | {_fmt(r['median_s'])} s | "
                     f"{_fmt(r['p95_s'])} s | {_fmt(r['max_s'])} s | {_fmt(r['median_from_alice_s'])} s | "
                     f"{_fmt(r['median_to_alice_s'])} s | {r['undelivered']} | {r['duplicates']} | "
                     f"{r['undecodable']} | {_fmt(r['retransmissions_per_run'])} |")
    median, p95 = _target_row(results, "loss.median"), _target_row(results, "loss.p95")
    lines += ["", f"Targets at 20 % loss: median {_limit('loss.median')} {_mark(median.get('met'))}, 95th "
              f"percentile {_limit('loss.p95')} {_mark(p95.get('met'))}.", "",
              "The conversation of meshsim's `100bps-lossy` (`bench/losslatency.py`): alice's phone on a "
              "100 bit/s radio (2 s ± 0.5 s one way, random loss each way, 42 B of UDP/IP per frame), bob on a "
              "fast link, each behind its own client gateway with its sync loop running, secure mode, the default "
              "profile, sync push; set up on a fast link, then alice sends three messages (each once bob has the "
              "one before) and bob answers three. Latency: from the send to the other device's sync loop "
              "having it. The gateways, the links and their loss draws run in virtual time (looptime), so every "
              "loss rate is run over many seeds in seconds; the homeserver is an in-process stand-in that "
              "answers `/send` and `/sync` in Synapse's shapes (a real Synapse cannot run in virtual time — "
              "meshsim's `100bps-lossy` runs the same conversation against one, in real time). alice's own "
              "messages come back to her inside her sends' answers (docs/protocol.md §9a, \"The sender's "
              "echo\"), so her downlink carries only bob's.", ""]
    if "loss" in charts:
        lines += [f"![latency under loss]({rel(charts['loss'])})", ""]
    return lines


def bulk_section(results: dict[str, Any]) -> list[str]:
    bulk = results.get("bulk")
    if not bulk:
        return []
    s, w = bulk["sliced"], bulk["whole_blocks"]
    row = _target_row(results, "bulk.max")
    lines = ["### A message during an upload (virtual time)", "",
             "| blocks of alice's upload | message to bob: worst | median | 6 kB upload takes | runs |",
             "|---|---:|---:|---:|---:|",
             f"| {s['block_bytes']} B (each ≤ {bulk['bulk_slice_s']:g} s on the link) | **{_fmt(s['latency_max_s'])} s** "
             f"| {_fmt(s['latency_median_s'])} s | {_fmt(s['upload_s'])} s | {s['runs']} |",
             f"| {w['block_bytes']} B (as large as a frame allows: before) | {_fmt(w['latency_max_s'])} s "
             f"| {_fmt(w['latency_median_s'])} s | {_fmt(w['upload_s'])} s | {w['runs']} |",
             "", f"Target: {_limit('bulk.max')} {_mark(row.get('met'))}.", "",
             f"alice on {bulk['link']['rate_bps']:g} bit/s with {bulk['link']['delay_s']:g} s latency (DESIGN's slow "
             "link), bob on a fast one, each behind a client gateway with its sync loop, one server gateway "
             f"(`bench/bulk.py`, the homeserver stand-in of the loss runs, virtual time). alice uploads "
             f"{bulk['upload_bytes']} B (js-sdk's `keys/upload` is that size) and sends the reference message at "
             "moments spread over one block's cycle; worst and median time until bob's sync loop has it. A "
             "frame cannot be interrupted once it is on the link, so the client gateway cuts its uploads into "
             "blocks that each take at most that long: a message waits for one block at most, and the upload "
             "pays with more round trips.", ""]
    return lines


def cpu_table(results: dict[str, Any]) -> list[str]:
    cpu = results.get("cpu")
    if not cpu:
        return ["(not measured in this run: `--skip-cpu`)"]
    lines = [
        "| front end (own process, uvloop) | requests | CPU seconds | wall requests/s | "
        "**requests/s per core** | CPU per request |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, name in (("passthrough", "aiohttp pass-through reverse proxy, flat out"),
                      ("passthrough_paced", "aiohttp pass-through reverse proxy, paced to the gateway's rate"),
                      ("gateway", "server gateway (Noise, CoAP, CBOR, Flate), flat out")):
        c = cpu.get(key)
        if c is None:
            continue
        lines.append(f"| {name} | {_fmt_int(c['requests'])} | {_fmt(c['cpu_seconds'], 2)} | "
                     f"{_fmt(c['requests_per_second'], 0)} | **{_fmt(c['requests_per_cpu_second'], 0)}** | "
                     f"{_fmt(c['cpu_ms_per_request'], 3)} ms |")
    top = cpu.get("profile_top")
    if top:
        lines += ["", "Where the server gateway's CPU goes: the 20 functions with the most own time (cProfile, a "
                  "separate run of the same load; profiling slows every call, so read the shares, not the "
                  "absolute times; start-up work — functions called less than once per two requests — is "
                  "left out, the share still counts it). µs per request answered:", "",
                  "| function | calls | own µs / request | cumulative µs / request | share of own time |",
                  "|---|---:|---:|---:|---:|"]
        for row in top:
            lines.append(f"| `{row['function']}` | {_fmt_int(row['calls'])} | {_fmt(row['own_us_per_request'])} | "
                         f"{_fmt(row['cumulative_us_per_request'])} | {row['own_share'] * 100:.1f} % |")
    return lines


def frames_table(results: dict[str, Any], workload: str) -> list[str]:
    lines = ["| transport | t (ms) | direction | wire B | payload B | frame |", "|---|---:|---|---:|---:|---|"]
    for transport, name in (("baseline", "HTTPS+JSON"), ("gateway", "gateway")):
        entry = _w(results, workload, transport) or {}
        for t, direction, wire, payload, kind in entry.get("frame_list", []):
            arrow = "device → server" if direction == "up" else "server → device"
            lines.append(f"| {name} | {t * 1000:.1f} | {arrow} | {wire} | {payload} | {kind} |")
    return lines


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| target (DESIGN.md) | limit | measured | status | asserted by the reduced run |",
             "|---|---:|---:|---|---|"]
    for row in results.get("targets", []):
        measured = row["measured"]
        if measured is None and row["met"] is False:
            shown = "did not finish"
        elif measured is None:
            shown = "not measured at 100 bit/s in this run" if row["key"] in ("W5.time", "join.time") else "—"
        else:
            shown = _value(measured, row["unit"])
        lines.append(f"| {row['text']} | {row['limit']:g} {row['unit']} | {shown} | "
                     f"{_mark(row['met'])} | {'yes (upper bound)' if row['asserted'] else 'no (a timing: reported only)'} |")
    return lines


# ------------------------------------------------------------------ charts


def write_charts(results: dict[str, Any], img_dir: Path) -> dict[str, Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    colours = {"baseline": "#b04a3a", "gateway": "#2f6f9f", "link": "#7fb3d5", "target": "#222222"}

    # bytes per workload, log scale
    names = [w for w in ("W1", "W1s", "W2", "W1x", "W2x", "W3", "W5", "W6")
             if _w(results, w, "baseline") and _w(results, w, "gateway")]
    if names:
        fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
        width = 0.27
        xs = range(len(names))
        series = [("HTTPS+JSON, wire", [_w(results, n, "baseline")["wire_bytes"] for n in names], colours["baseline"]),
                  ("gateway, wire", [_w(results, n, "gateway")["wire_bytes"] for n in names], colours["gateway"]),
                  ("gateway, link level", [_w(results, n, "gateway")["payload_bytes"] for n in names], colours["link"])]
        for i, (label, values, colour) in enumerate(series):
            pos = [x + (i - 1) * width for x in xs]
            bars = ax.bar(pos, values, width, label=label, color=colour)
            ax.bar_label(bars, labels=[_fmt_int(v) for v in values], fontsize=7, padding=1)
        target_keys = {"W1": (None, None), "W1s": ("W1s.wire", "W1s.link"), "W2": ("W2.wire", "W2.link"),
                       "W1x": ("W1x.wire", "W1x.link"), "W2x": ("W2x.wire", "W2x.link"),
                       "W3": ("W3.wire", None),
                       "W5": (None, "W5.link"), "W6": ("W6.wire", "W6.link")}
        first = True
        for x, n in zip(xs, names):
            for offset, key in zip((0, 1), target_keys[n]):
                if key is None:
                    continue
                limit = _target(key).limit
                ax.hlines(limit, x + (offset) * width - width / 2, x + offset * width + width / 2,
                          colors=colours["target"], linestyles="--", linewidth=1.4,
                          label="DESIGN target" if first else None)
                first = False
        ax.set_yscale("log")
        short = {"W1": "W1\nwarm send", "W1s": "W1s\nsend + echo", "W2": "W2\nreceive", "W3": "W3\ncold send",
                 "W1x": "W1x\nsliding:\nsend + echo", "W2x": "W2x\nsliding:\nreceive",
                 "W5": "W5\nlogin + sync",
                 "W6": "W6\nfederated msg"}
        ax.set_xticks(list(xs), [short[n] for n in names], fontsize=8)
        ax.set_ylabel("bytes (log scale)")
        ax.set_title("Bytes on the wire per workload", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(axis="y", which="both", alpha=0.25)
        fig.tight_layout()
        paths["bytes"] = img_dir / CHARTS["bytes"]
        fig.savefig(paths["bytes"])
        plt.close(fig)

    # idle
    b, g = _w(results, "W4", "baseline"), _w(results, "W4", "gateway")
    if b and g:
        fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
        labels, values, colors = [], [], []
        # nio's /sync (W4) and, when measured, Element X's sliding sync (W4s)
        for key, sync in (("W4", "/sync"), ("W4s", "sliding sync")):
            bi, gi = _w(results, key, "baseline"), _w(results, key, "gateway")
            if not (bi and gi):
                continue
            labels += [f"HTTPS+JSON\nwire\n{sync}", f"gateway\nwire\n{sync}", f"gateway\nlink level\n{sync}"]
            values += [bi["bit_per_s"], gi["bit_per_s"], gi["link_bit_per_s"]]
            colors += [colours["baseline"], colours["gateway"], colours["link"]]
        bars = ax.bar(labels, values, color=colors)
        ax.tick_params(axis="x", labelsize=7)
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
        ax.axhline(_target("W4.wire").limit, color=colours["target"], linestyle="--", linewidth=1.2,
                   label=f"DESIGN target ≤ {_target('W4.wire').limit:g} bit/s")
        # symlog: a gateway that pushes can be at 0
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(0, max([*values, _target("W4.wire").limit]) * 5)
        ax.set_ylabel("bit/s (log scale above 0.1)")
        ax.set_title(f"Idle (W4, W4s): average over {b['cycles']} long-poll cycle(s) of "
                     f"{b['sync_timeout_ms'] / 1000:g} s", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(axis="y", which="both", alpha=0.25)
        fig.tight_layout()
        paths["idle"] = img_dir / CHARTS["idle"]
        fig.savefig(paths["idle"])
        plt.close(fig)

    # cpu
    cpu = results.get("cpu")
    if cpu:
        fig, ax = plt.subplots(figsize=(6, 3.0), dpi=110)
        labels = ["aiohttp pass-through", "server gateway"]
        values = [cpu["passthrough"]["requests_per_cpu_second"], cpu["gateway"]["requests_per_cpu_second"]]
        shades = ["#888888", colours["gateway"]]
        if cpu.get("passthrough_paced"):
            labels.insert(1, "pass-through at the\ngateway's rate")
            values.insert(1, cpu["passthrough_paced"]["requests_per_cpu_second"])
            shades.insert(1, "#bbbbbb")
        bars = ax.barh(labels, values, color=shades)
        ax.bar_label(bars, labels=[_fmt_int(v) for v in values], fontsize=8, padding=2)
        ax.set_xlabel(f"requests per CPU second = requests/s per core ({cpu['endpoint']})", fontsize=8)
        ax.set_title("CPU cost per request (higher is cheaper)", fontsize=10)
        ax.set_xlim(0, max(values) * 1.2)
        fig.tight_layout()
        paths["cpu"] = img_dir / CHARTS["cpu"]
        fig.savefig(paths["cpu"])
        plt.close(fig)

    # latency under loss: one box per loss rate, every message of every seed
    loss = results.get("loss_latency")
    if loss and loss.get("runs"):
        by_rate: dict[float, list[float]] = {}
        for run in loss["runs"]:
            by_rate.setdefault(run["loss"], []).extend(s for s in run["latencies_s"] if s is not None)
        rates = sorted(by_rate)
        fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
        ax.boxplot([by_rate[r] for r in rates], whis=(5, 95), showfliers=True, flierprops={"markersize": 3})
        ax.set_xticks(range(1, len(rates) + 1), [f"{r:.0%}" for r in rates])
        ax.axhline(_target("loss.median").limit, color=colours["target"], linestyle="--", linewidth=1.2,
                   label="target at 20 %: median")
        ax.axhline(_target("loss.p95").limit, color=colours["target"], linestyle=":", linewidth=1.2,
                   label="target at 20 %: 95th percentile")
        ax.set_xlabel("random loss each way (100 bit/s, 2 s ± 0.5 s)")
        ax.set_ylabel("message latency (s)")
        ax.set_title(f"Message latency under loss ({loss['rows'][0]['seeds']} seeds each; whiskers 5–95 %)",
                     fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.25)
        fig.tight_layout()
        paths["loss"] = img_dir / CHARTS["loss"]
        fig.savefig(paths["loss"])
        plt.close(fig)

    # W6 both ways: what each homeserver's side sent, stacked
    w6 = (results.get("federation") or {}).get("w6") or {}
    entries = [w6.get(key) for key, _ in W6_TRANSPORTS]
    if all(e and "a_to_b" in e and "b_to_a" in e for e in entries):
        fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
        bars = [("HTTPS+JSON\nwire", entries[0], "wire_bytes"), ("HTTPS+JSON\nTLS records", entries[0], "link_bytes"),
                ("gateways\nwire", entries[1], "wire_bytes"), ("gateways\nlink level", entries[1], "link_bytes")]
        labels = [label for label, _, _ in bars]
        a_to_b = [e["a_to_b"][field]["median"] for _, e, field in bars]
        b_to_a = [e["b_to_a"][field]["median"] for _, e, field in bars]
        colour = [colours["baseline"], colours["baseline"], colours["gateway"], colours["link"]]
        ax.bar(labels, a_to_b, color=colour, label="sent by A (the transaction, ACKs)")
        top = ax.bar(labels, b_to_a, bottom=a_to_b, color=colour, alpha=0.45, hatch="//",
                     label="sent by B (the answer, ACKs)")
        ax.bar_label(top, labels=[_fmt_int(a + b) for a, b in zip(a_to_b, b_to_a)], fontsize=8, padding=4)
        for x, key in ((2, "W6.wire"), (3, "W6.link")):
            ax.hlines(_target(key).limit, x - 0.4, x + 0.4, colors=colours["target"], linestyles="--",
                      linewidth=1.4, label="DESIGN target" if key == "W6.wire" else None)
        ax.set_ylabel("bytes per message (median)")
        ax.set_title("W6: one federated message, both directions", fontsize=10)
        ax.set_ylim(0, max(a + b for a, b in zip(a_to_b, b_to_a)) * 1.15)
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.25)
        fig.tight_layout()
        paths["w6"] = img_dir / CHARTS["w6"]
        fig.savefig(paths["w6"])
        plt.close(fig)
    return paths


# ------------------------------------------------------------------ page


def _discussion(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    w = results.get("workloads", {})
    try:
        b1, g1 = w["W1"]["baseline"], w["W1"]["gateway"]
        b2, g2 = w["W2"]["baseline"], w["W2"]["gateway"]
        b3, g3 = w["W3"]["baseline"], w["W3"]["gateway"]
        b4, g4 = w["W4"]["baseline"], w["W4"]["gateway"]
        b5, g5 = w["W5"]["baseline"], w["W5"]["gateway"]
    except KeyError:
        return ["(incomplete run: no discussion)"]
    met = [row for row in results.get("targets", []) if row["met"]]
    unmet = [row for row in results.get("targets", []) if row["met"] is False]
    out.append(
        f"**Where the gateway stands.** On the same Synapse with the same client, HTTPS+JSON puts "
        f"{_ratio(b1['wire_bytes'], g1['wire_bytes'])} the gateway's bytes on the wire for a warm send (W1), "
        f"{_ratio(b2['wire_bytes'], g2['wire_bytes'])} to receive a message (W2), "
        f"{_ratio(b3['wire_bytes'], g3['wire_bytes'])} from cold (W3: TCP + TLS 1.3 + the request, against a "
        f"Noise IK handshake that carries the request in its first flight), "
        f"{_ratio(b5['wire_bytes'], g5['wire_bytes'])} for a login and first sync (W5)"
        + (f" and {_ratio(b4['bit_per_s'], g4['bit_per_s'])} while idle (W4)." if g4["wire_bytes"] else
           f"; while idle (W4) it used {_fmt(b4['bit_per_s'], 0)} bit/s where the gateway sent nothing at all.")
        + ("" if "W4s" not in w else
           f" Idling with sliding sync (W4s, Element X's sync) HTTPS+JSON used {_fmt(w['W4s']['baseline']['bit_per_s'], 0)}"
           f" bit/s, the gateway {_fmt(w['W4s']['gateway']['bit_per_s'], 1)} bit/s.")
        + ("" if "W1x" not in w or "W2x" not in w else
           f" A message with sliding sync cost its sender {_fmt_int(w['W1x']['gateway']['wire_bytes'])} B "
           f"(HTTPS+JSON {_fmt_int(w['W1x']['baseline']['wire_bytes'])} B, W1x) and its receiver "
           f"{_fmt_int(w['W2x']['gateway']['wire_bytes'])} B (HTTPS+JSON "
           f"{_fmt_int(w['W2x']['baseline']['wire_bytes'])} B, W2x)."))
    out.append("")
    met_keys = ", ".join(row["key"] for row in met)
    if unmet:
        listed = "; ".join(f"{row['key']} {_value(row['measured'], row['unit'])} against ≤ "
                           f"{_value(row['limit'], row['unit'])}"
                           for row in unmet if row["measured"] is not None)
        out.append(
            f"**DESIGN's targets.** {len(met)} of {len(met) + len(unmet)} measured targets are met"
            + (f" ({met_keys})" if met else "") + f". Not yet: {listed}. The targets are tight on purpose: "
            "DESIGN.md puts the floor of a send with Matrix semantics kept at ≈ 38 B of request and ≈ 54 B of "
            "response (the 32-byte event ID must come back), ≈ 92 B link level.")
    else:
        out.append(f"**DESIGN's targets.** Every measured target is met ({met_keys}).")
    out.append("")

    def frames(entry: dict[str, Any], direction: str) -> str:
        return " + ".join(f"{f[3]} B ({f[4]})" for f in entry.get("frame_list", []) if f[1] == direction) or "nothing"

    if g1.get("frame_list"):
        out.append(
            f"**Where the bytes go** (link level, from the listings below). W1: the device sends "
            f"{frames(g1, 'up')} and gets {frames(g1, 'down')}, against DESIGN's ≈ 38 + 54 B. W2: the device "
            f"gets {frames(g2, 'down')} and sends {frames(g2, 'up')}. W3: {frames(g3, 'up')} out, "
            f"{frames(g3, 'down')} back — the Noise IK handshake with the send inside its first flight.")
        g1s = w.get("W1s", {}).get("gateway")
        if g1s and g1s.get("frame_list"):
            out[-1] += (f" W1s, the same send with alice's own sync loop running: {frames(g1s, 'up')} out, "
                        f"{frames(g1s, 'down')} back — her own event rides in the send's answer as a few bytes "
                        "(docs/protocol.md §9a, \"The sender's echo\") instead of a notification and its ACK.")
        out.append("")
    if g4["frames"] == 0:
        out.append(
            f"**Idle.** The gateway sent nothing at all in {g4['duration_s']:.0f} s of nio long-polling "
            f"({g4['cycles']} cycles of {g4['sync_timeout_ms'] / 1000:g} s): the long-polls end at the client "
            "gateway and the server gateway pushes what happens, so waiting costs nothing on the link. "
            f"HTTPS+JSON spent {_fmt_int(b4['wire_bytes_per_cycle'])} B per cycle.")
    else:
        out.append(
            f"**Idle.** Each of the {g4['cycles']} long-poll cycles of {g4['sync_timeout_ms'] / 1000:g} s cost "
            f"the gateway {_fmt(g4['wire_bytes_per_cycle'], 0)} B on the wire "
            f"({_fmt(g4['payload_bytes_per_cycle'], 0)} B link level), against "
            f"{_fmt_int(b4['wire_bytes_per_cycle'])} B for HTTPS+JSON: polling costs bytes even when nothing "
            "happens, which only push avoids.")
    out.append("")
    if g2.get("frame_list"):
        out.append(
            f"**Frames, not just bytes.** Each gateway frame costs 42 B of Ethernet+IPv4+UDP here: W2's "
            f"{g2['frames']} frame(s) pay {_fmt_int(g2['wire_bytes'] - g2['payload_bytes'])} B of headers for "
            f"{_fmt_int(g2['payload_bytes'])} B of payload. On a point-to-point radio link those headers do not "
            "exist, which is why DESIGN gives both figures. HTTPS+JSON pays 66 B per TCP segment (with "
            "timestamps), including its bare ACKs.")
        out.append("")
    slow = results.get("slow_link")
    if slow:
        g = slow["gateway"]
        shipped = slow.get("as_shipped") or {}
        if shipped.get("ok") is False:
            out.append(f"**The slow link found a bug.** As shipped, the gateway cannot finish a first sync at "
                       f"{slow['rate_bps']:g} bit/s: aiocoap's blockwise caches expire after 93 s, less than one "
                       "block takes at this rate (see the timing table). The timings below are with the caches' "
                       "lifetime raised to follow the link.")
            out.append("")
        out.append(
            f"**At {slow['rate_bps']:g} bit/s.** The gateway's warm send took {g['send_ack_seconds']:.1f} s from "
            f"nio's call to the event ID ({g['send_serialisation_s']:.1f} s of it is the serialiser, the rest the "
            f"{slow['delay_s']:g} s latency each way and processing); HTTPS+JSON could not do it in under "
            f"{slow['baseline_bound']['send_ack_seconds']:.0f} s even with no loss and no TCP slow start. A login "
            f"and first sync took {g['w5_seconds']:.0f} s through the gateway, and would take at least "
            f"{slow['baseline_bound']['w5_seconds']:.0f} s over HTTPS+JSON."
            + (f" {g['retransmissions']} CoAP message(s) were retransmitted on the slow link, which lossless "
               "emulation does not call for: a timer did not wait for the link." if g["retransmissions"]
               else " No CoAP message was retransmitted: the timers followed the link."))
        out.append("")
    cpu = results.get("cpu")
    if cpu:
        out.append(
            f"**CPU.** One core runs the server gateway at about "
            f"{_fmt_int(cpu['gateway']['requests_per_cpu_second'])} requests per second, against "
            f"{_fmt_int(cpu['passthrough']['requests_per_cpu_second'])} for a plain aiohttp pass-through proxy: "
            f"each request costs {cpu['cost_ratio']:g}× as much CPU (Noise sealing and opening, CoAP, the CBOR "
            "and Flate codec, the HTTP request upstream)"
            + (f"; at the same load — the proxy paced to the gateway's rate — {cpu['cost_ratio_equal_load']:g}×"
               if cpu.get("cost_ratio_equal_load") is not None else "")
            + ". A device on a 100 bit/s link sends well under one "
            "request a second, so CPU is not what limits a gateway serving constrained devices; the figure "
            "matters for one that also serves fast links.")
        out.append("")
    return out


def render_markdown(results: dict[str, Any], *, json_path: Path | None, docs_path: Path,
                    charts: dict[str, Path]) -> str:
    env = results.get("environment", {})
    s = results.get("settings", {})
    rel = (lambda p: os.path.relpath(p, docs_path.parent).replace(os.sep, "/"))
    json_rel = rel(json_path) if json_path else None
    mode = "reduced run (`--quick`)" if results.get("quick") else "full run"
    lines: list[str] = [
        "# Benchmarks: HTTPS+JSON and the gateway, side by side",
        "",
        "<!-- Generated by `make bench` (bench/report.py) from the results file named below. "
        "Edit bench/report.py, not this page. -->",
        "",
        "The workloads of DESIGN.md (section *Numbers to reach*) against one real Synapse, with the same "
        "matrix-nio client, twice: through a TLS 1.3 reverse proxy (nginx; HTTP/1.1 keep-alive, as nio does) "
        "and through client gateway → UDP → server gateway (CoAP + CBOR + Flate inside Noise). Every frame is "
        "counted from a capture of the loopback interface.",
        "",
        f"**This run:** {results.get('started', '?')}, `{results.get('command', 'make bench')}`, {mode}, "
        f"{_fmt(results.get('elapsed_s', 0) / 60, 1)} min. Synapse {env.get('matrix-synapse')}, "
        f"matrix-nio {env.get('matrix-nio')}, nginx {env.get('nginx')}, {env.get('openssl')}, "
        f"Python {env.get('python')}, aiocoap {env.get('aiocoap')}, {env.get('cpus')} CPUs; gateway profile "
        f"`{s.get('profile')}`." + (f" Results: [`{json_rel}`]({json_rel})." if json_rel else ""),
        "",
        "## Results",
        "",
        "### Bytes",
        "",
        *bytes_table(results),
        "",
        "*Wire* is every frame as captured: Ethernet (14 B) + IPv4 (20 B) + TCP (32 B with timestamps) or UDP "
        "(8 B) + payload, retransmissions included. *Link level* is the gateway's UDP payloads alone — what a "
        "point-to-point radio link carries, where there are no IP headers. W4 is averaged over whole long-poll "
        "cycles and scaled to an hour.",
        "",
    ]
    if "bytes" in charts:
        lines += [f"![bytes per workload]({rel(charts['bytes'])})", ""]
    if "idle" in charts:
        lines += [f"![idle cost]({rel(charts['idle'])})", ""]
    rate = (results.get("slow_link") or {}).get("rate_bps", targets.SLOW_RATE_BPS)
    lines += [f"### Timings at {rate:g} bit/s", "", *timing_table(results), "",
              "Timings are wall clock on an emulated link (`meshsim.emulated_link_pair` (`coap_gateway.transport.EmulatedLinkEnd` over netem link models) with "
              "`meshsim.LinkProfile(rate_bps, delay)` each way: netem's exact serialiser, then the delay; no "
              "IP headers). They are reported, never asserted. HTTPS+JSON is not run at 100 bit/s — its W5 alone "
              "would take the better part of an hour — so its column is the least it could take: its measured "
              "bytes as IP packets (the wire bytes less the 14-byte Ethernet header of each frame) through the "
              "same serialiser, plus one latency per crossing that waits for the other side (2 for a send; 8 "
              "for W5: TCP, TLS, login, sync), with no loss and no TCP slow start.", "",
              "### CPU: server gateway vs a pass-through proxy", "", *cpu_table(results), ""]
    if results.get("cpu"):
        cpu = results["cpu"]
        lines += [f"Load: `{cpu['endpoint']}` from {cpu['concurrency']} concurrent requests "
                  f"({cpu['gateway_sessions']} Noise sessions for the gateway, keep-alive connections for the "
                  f"proxy), {cpu['seconds']:g} s measured after {cpu['warmup_requests']} warm-up requests, "
                  f"{cpu['cpus']} CPUs shared with Synapse and the load generator. *Requests/s per core* = "
                  "requests answered ÷ CPU seconds (user + system, all threads) the front end's process used.", ""]
        if cpu.get("cost_ratio_equal_load") is not None:
            lines += ["**Two ratios.** CPU per request falls as the load rises: a front end answering more "
                      "requests a second handles more of them per wake-up of its event loop. Flat out the two "
                      "are not at the same load — the gateway's load generator (Python CoAP clients with Noise) "
                      f"gives out first: the gateway served {_fmt(cpu['gateway']['requests_per_second'], 0)} "
                      f"requests/s, the proxy {_fmt(cpu['passthrough']['requests_per_second'], 0)}. So each round "
                      "also paces the proxy to the rate the gateway just served. At the same load one gateway "
                      f"request costs **{cpu['cost_ratio_equal_load']:g}×** the proxy's CPU; each flat out, "
                      f"{cpu['cost_ratio']:g}×.", ""]
        if cpu.get("rounds"):
            lines += [f"The table sums {len(cpu['rounds'])} rounds, each front end measured once per round, "
                      "which of the two flat-out runs goes first alternating, the paced run last (one run of "
                      "either varies by ±15 % with what else the two cores are doing). Per round, gateway / "
                      "pass-through requests/s per core and their ratio, flat out and at the same load: "
                      + "; ".join(f"{_fmt_int(r['gateway'])} / {_fmt_int(r['passthrough'])} = {r['cost_ratio']:g}×"
                                  + (f" and / {_fmt_int(r['passthrough_paced'])} = {r['cost_ratio_equal_load']:g}×"
                                     if r.get("passthrough_paced") is not None else "")
                                  for r in cpu["rounds"]) + ".", ""]
        if "cpu" in charts:
            lines += [f"![CPU per request]({rel(charts['cpu'])})", ""]
    lines += loss_section(results, charts, rel)
    lines += bulk_section(results)
    lines += federation_section(results, charts, rel)
    lines += ["### Targets", "", *targets_table(results), "",
              "### Frame by frame", ""]
    for workload in ("W1", "W1s", "W2", "W3", "W1x", "W2x"):
        if _w(results, workload, "gateway"):
            lines += [f"**{WORKLOAD_TITLES[workload]}**", "", *frames_table(results, workload), ""]
    checks = results.get("link_checks", [])
    capture = results.get("capture", {})
    agree = all(c["link_frames"] == c["capture_frames"] and c["link_bytes"] == c["capture_payload_bytes"]
                for c in checks)
    checked = ", ".join("{}: {} frames / {} B".format(c["workload"], c["link_frames"], c["link_bytes"])
                        for c in checks)
    lines += [
        "**Checks of this run.** tcpdump dropped "
        f"{capture.get('dropped_by_kernel', '?')} frames; the capture saw "
        f"{'exactly' if agree else 'NOT'} the frames and bytes the gateway devices' UDP links counted "
        f"({checked}).",
        "",
        "## Discussion",
        "",
        *_discussion(results),
        "## How to run",
        "",
        "```sh",
        "make bench                                   # the full run: 5–10 minutes on 2 cores",
        "make bench BENCH_ARGS=--quick                # a reduced run (short idle, fast 'slow' link)",
        ".venv/bin/python -m bench --help             # every option",
        ".venv/bin/python -m bench --pcap out/bench.pcap   # keep the capture (opens in Wireshark)",
        ".venv/bin/python -m bench --report-only bench/results/DATE.json   # re-render this page",
        ".venv/bin/python -m pytest -q tests/bench    # the reduced run, asserting DESIGN's byte targets",
        "```",
        "",
        "It needs root (to capture on the loopback interface), tcpdump and nginx; `make bench` installs them "
        "with apt where it can (`make system-packages`). It starts its own Synapse in a temporary directory. "
        "Output: `bench/results/<date>.json` (every figure, per-frame listings of W1–W3, the settings and "
        "versions), this page, and the charts in `docs/img/`. The reduced run in `tests/bench/` asserts "
        "each of DESIGN's byte targets as an upper bound (strict expected failures while a target is not met), "
        "plus sanity bounds that must hold now; it skips where tcpdump, nginx or root is missing.",
        "",
        "## What is counted, and how",
        "",
        "- **One Synapse, one client.** A fresh Synapse (SQLite) serves both transports; every measured "
        "exchange is matrix-nio's own code (`AsyncClient.room_send`, `sync`, `sync_forever`, `login`). For the "
        "baseline nio's aiohttp session is bound to the device's address and trusts the proxy's self-signed "
        "ECDSA P-256 certificate; everything else is nio's default. Accounts and rooms are made directly on "
        "Synapse, not counted; each transport gets its own accounts with names of the same length.",
        "- **Baseline.** nginx, TLS 1.3 only, HTTP/1.1 keep-alive to the client and upstream to Synapse "
        "(the reverse-proxy setup Synapse's documentation gives, response buffering on).",
        "- **Gateway.** The server gateway on 127.0.0.3 and one client gateway per device, over real UDP on "
        f"loopback, Noise IK with the server key pinned, profile `{results.get('settings', {}).get('profile')}`: what `coap-gateway server` / `client` "
        "run. matrix-nio talks plain HTTP to its client gateway on the device (not counted: it never leaves "
        "the device); the server gateway talks HTTP to Synapse (not counted: server side).",
        "- **Capture.** `tcpdump -i lo` with a filter for nginx's TCP port and the server gateway's UDP port "
        "(counted) and Synapse's plain-HTTP port (never counted: it only shows when Synapse holds a long-poll), "
        "its pcap parsed as it is written. Each device has its own 127.0.0.x, so a window holds one device's "
        "frames. Windows are delimited by marker datagrams that pass through the same capture; a window closes "
        "only when every TCP byte has been acknowledged and every CoAP confirmable message answered, so "
        "trailing ACKs count. Retransmissions count (and are labelled `-retx` in the listings). The run checks "
        "that tcpdump dropped nothing and that the capture saw exactly the frames the gateways' UDP links sent "
        "and received.",
        "- **W1** (warm send): alice's device already has its TLS connection or Noise session, and its access "
        "token bound (the gateway sends it once per session). Window: nio's `room_send` of `m.text` "
        "\"Hello, see you at 5pm\" until its response, plus acknowledgements.",
        "- **W2** (receive): bob's device runs nio's `sync_forever` (long-poll timeout "
        f"{s.get('sync_timeout_ms', 30000) / 1000:g} s). When his long-poll is *parked* — Synapse holds a "
        "`/sync` with his token (read off Synapse's plain-HTTP port, which the capture also sees but never "
        "counts) and every frame of his device has been acknowledged (for a polling gateway that includes the "
        "server's empty ACK, so the answer is a separate response, as for any message arriving during a "
        "long-poll) — the window opens and alice sends. It closes when nio has the message and his next "
        "long-poll is parked again. So W2 is the response carrying the message plus the next request, with "
        "their acknowledgements; for a gateway that pushes, the push plus whatever the next poll costs.",
        "- **W3** (cold): a new device with alice's token: TCP handshake + TLS 1.3 full handshake (session "
        "tickets included) + the send, against a new client gateway's Noise IK handshake carrying the send as "
        "0-RTT early data. Connection teardown is not counted.",
        "- **W4** (idle): a user whose only room is quiet runs nio's `sync_forever` (long-poll timeout "
        f"{s.get('sync_timeout_ms', 30000) / 1000:g} s). The window runs from one parked long-poll to the "
        f"parked long-poll whole cycles later ({s.get('idle_seconds', 0):g} s of idling), and is scaled to bytes "
        "per hour and bit/s. No NAT keepalive is sent (none is configured).",
        "- **W4s** (idle, sliding sync): the same user's device long-polls simplified sliding sync (MSC4186, "
        "Element X's only sync) by raw HTTP with an Element X-like request (one list of rooms with their names; "
        "the e2ee, to-device, account-data, receipts and typing extensions), the same timeout, from one parked "
        "long-poll to another whole cycles later.",
        "- **W5**: a new device logs in (password) and runs nio's first sync of an account with one room and "
        "ten short messages (Synapse's default timeline limit is 10: all ten arrive), handshakes included.",
        "- **W1x / W2x** (a message with sliding sync, Element X): alice and bob each run a sliding-sync loop "
        "(the W4s request, by raw HTTP) on fresh devices, warmed by two of alice's messages. W1x is alice's "
        "link from nio's send of the reference message until her loop has her own event back and her next "
        "long-poll is parked (W1s for Element X); W2x is bob's from before the send until his loop has it and "
        "is parked again (W2 for Element X).",
        "- **Slow link** and **CPU**: see their tables above.",
        "- **W6** (a federated message) and the **federated join**: two more Synapses per transport, on "
        "127.0.0.61–64, in a capture of their own (`tcp port 8448` between the nginx fronts, `udp port 5684` "
        "between the gateways); see their section above. Each frame is put to the side that sent it: a "
        "frame from a side's address is that side's, a frame to one (a Synapse's outgoing connection, from "
        "127.0.0.1) the other side's.",
        "- **Loopback.** The loopback MTU is 64 KiB, so large responses leave as one TCP segment; on Ethernet "
        "(1500 B MTU) HTTPS+JSON would pay 66 B more per extra 1448 B segment, so its W5 here is a slight "
        "underestimate.",
        "",
    ]
    return "\n".join(lines)


def write_reports(results: dict[str, Any], settings: Any) -> dict[str, Path]:
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{settings.name or results['date']}.json"
    paths: dict[str, Path] = {"json": json_path}
    if settings.docs is not None:
        docs = Path(settings.docs)
        charts = write_charts(results, Path(settings.img_dir))
        paths.update({f"chart_{k}": v for k, v in charts.items()})
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(render_markdown(results, json_path=json_path, docs_path=docs, charts=charts))
        paths["docs"] = docs
    json_path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    return paths


def rerender(json_path: Path, settings: Any) -> dict[str, Path]:
    """docs/benchmarks.md and charts again from a stored results file."""
    results = json.loads(Path(json_path).read_text())
    results["targets"] = targets.evaluate(results)
    charts = write_charts(results, Path(settings.img_dir))
    docs = Path(settings.docs)
    docs.write_text(render_markdown(results, json_path=Path(json_path), docs_path=docs, charts=charts))
    return {"docs": docs, **{f"chart_{k}": v for k, v in charts.items()}}
