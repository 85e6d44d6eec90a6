"""The codec against traffic recorded from a real Synapse driven by matrix-nio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from coap_gateway.codec import json_cbor, payload, routes
from coap_gateway.codec.profile import load_profile
from coap_gateway.codec.tables import load_cbor_table
from coap_gateway.tools.dictbuild.build import (
    build_dictionary,
    json_bodies,
    read_corpus,
)

CORPUS = Path(__file__).parents[1] / "corpus" / "synapse-corpus.jsonl"
RECORDS = read_corpus(CORPUS)
BODIES = json_bodies(RECORDS)


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@pytest.mark.parametrize("version", [1, 2])
def test_every_recorded_body_round_trips_exactly(version):
    table = load_cbor_table(version)
    assert len(BODIES) > 500
    for body in BODIES:
        back = json_cbor.decode(json_cbor.encode(body, table), table)
        assert canonical(back) == canonical(body)


def test_every_recorded_body_round_trips_through_the_payload_layer():
    lb2 = load_profile("lb2")
    for body in BODIES:
        raw = json_cbor.dump_json(body)
        pl = payload.body_to_payload(raw, "application/json", lb2)
        back, content_type = payload.payload_to_body(pl.payload, pl.content_format, lb2, max_size=len(raw) * 2 + 64)
        assert content_type == "application/json" and canonical(json.loads(back)) == canonical(body)


def test_v2_beats_v1_on_the_corpus():
    v1, v2 = load_cbor_table(1), load_cbor_table(2)
    total_v1 = sum(len(json_cbor.encode(b, v1)) for b in BODIES)
    total_v2 = sum(len(json_cbor.encode(b, v2)) for b in BODIES)
    total_json = sum(len(json_cbor.dump_json(b)) for b in BODIES)
    assert total_v2 < total_v1 < total_json


def test_events_with_hashes_and_signatures_carry_binary_fields():
    v2 = load_cbor_table(2)
    signed = [e for b in BODIES for e in _events(b) if "hashes" in e and "signatures" in e]
    assert signed, "the corpus must hold federation-format events"
    for event in signed[:50]:
        data = json_cbor.encode(event, v2)
        sha = event["hashes"]["sha256"]
        assert sha.encode() not in data  # travelled as 32 raw bytes, not as text
        assert json_cbor.decode(data, v2) == event


def _events(value):
    if isinstance(value, dict):
        if "event_id" in value and "type" in value:
            yield value
        for v in value.values():
            yield from _events(v)
    elif isinstance(value, list):
        for v in value:
            yield from _events(v)


def test_every_recorded_request_line_round_trips_through_routes():
    table = routes.load_route_table(2)
    matched = 0
    for record in RECORDS:
        method, target = record["method"], record["raw_path"]
        if method not in routes.METHODS:
            continue
        line = routes.http_to_coap(method, target, table)
        matched += line.template is not None
        assert routes.coap_to_http(line.method, line.uri_path, line.uri_query, table) == (method, target)
    # the workload's deliberate unknown paths are the only misses
    assert matched >= len(RECORDS) - 5


def test_dict_build_from_recorded_corpora(tmp_path):
    """Train on two corpora, hold out a third: files and report are written."""
    corpora = []
    for i, keep in enumerate((0, 1, 2)):
        path = tmp_path / f"c{i}.jsonl"
        # three disjoint slices of the recording stand in for three runs
        path.write_text("".join(line for n, line in enumerate(CORPUS.read_text().splitlines(True)) if n % 3 == keep))
        corpora.append(path)
    (tmp_path / "profiles.json").write_text(
        json.dumps({"format": "coap-gateway/profiles", "profiles": [
            {"id": 2, "name": "lb2", "cbor_table": 2, "routes": 2, "flate": "empty"}]}))
    result = build_dictionary(tmp_path, corpora=corpora, set_profile="lb2")
    digest = result["digest"].split(":")[1]
    data = (tmp_path / "flate" / f"{digest}.bin").read_bytes()
    assert 0 < len(data) <= 32 * 1024
    report = json.loads((tmp_path / "flate" / f"{digest}.json").read_text())
    m = report["holdout_mean_bytes"]
    assert m["cbor"] < m["json"] and m["cbor_deflate_dict"] < m["cbor_deflate"] < m["cbor"]
    assert json.loads((tmp_path / "profiles.json").read_text())["profiles"][0]["flate"] == result["digest"]


@pytest.mark.synapse
def test_dict_build_records_a_real_synapse_end_to_end(tmp_path):
    """`coap-gateway dict build` as a user runs it: 3 recordings, train, report."""
    proc = subprocess.run(
        [sys.executable, "-m", "coap_gateway", "dict", "build", "--out", str(tmp_path), "--record-to", str(tmp_path / "corpora")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = list((tmp_path / "flate").glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert len(report["records"]) == 3 and min(report["records"]) > 300
    m = report["holdout_mean_bytes"]
    assert m["samples"] > 100 and m["cbor_deflate_dict"] < m["cbor_deflate"] < m["cbor"] < m["json"]
    assert report["holdout_by_endpoint"]["client.send request"]["samples"] > 10
    assert "held-out mean sizes" in proc.stderr
    # the recordings are independent deployments: three server names
    names = {p.name.split("-", 2)[2] for p in (tmp_path / "corpora").glob("*.jsonl")}
    assert len(names) == 3
