"""The committed Synapse corpus has what the dictionary and codec work needs."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).parents[1] / "corpus" / "synapse-corpus.jsonl"
RECORD_KEYS = {
    "method", "raw_path", "request_content_type", "request_body", "status",
    "response_content_type", "retry_after", "response_body",
}

Record = dict[str, Any]


@pytest.fixture(scope="module")
def corpus() -> list[Record]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]


def path_of(record: Record) -> str:
    return record["raw_path"].split("?", 1)[0]


def timeline_events(record: Record) -> Iterator[dict[str, Any]]:
    body = record["response_body"]
    if not path_of(record).endswith("/sync") or not isinstance(body, dict):
        return
    for room in body.get("rooms", {}).get("join", {}).values():
        yield from room.get("timeline", {}).get("events", [])


def one(corpus: list[Record], matches: Callable[[Record], bool], what: str) -> Record:
    for record in corpus:
        if matches(record):
            return record
    raise AssertionError(f"corpus has no {what}")


def errcode(record: Record) -> str | None:
    body = record["response_body"]
    return body.get("errcode") if isinstance(body, dict) else None


def test_corpus_is_well_formed(corpus: list[Record]) -> None:
    assert len(corpus) >= 400
    for record in corpus:
        assert RECORD_KEYS <= set(record) <= RECORD_KEYS | {"truncated"}
    assert "authorization" not in CORPUS.read_text(encoding="utf-8").lower()
    assert CORPUS.stat().st_size < 3 * 1024 * 1024


def test_corpus_has_syncs_with_events(corpus: list[Record]) -> None:
    sync = one(
        corpus,
        lambda r: path_of(r).endswith("/sync") and r["status"] == 200 and any(True for _ in timeline_events(r)),
        "sync with timeline events",
    )
    event = next(timeline_events(sync))
    assert {"event_id", "sender", "type", "content", "origin_server_ts"} <= set(event)


def test_corpus_has_federation_format_events(corpus: list[Record]) -> None:
    def signed(record: Record) -> bool:
        return any("hashes" in e and "signatures" in e and "auth_events" in e for e in timeline_events(record))

    record = one(corpus, signed, "event with hashes and signatures")
    event = next(e for e in timeline_events(record) if "hashes" in e)
    assert {"prev_events", "depth", "auth_events"} <= set(event)


def test_corpus_has_the_errors_clients_meet(corpus: list[Record]) -> None:
    one(corpus, lambda r: r["status"] == 403 and errcode(r) == "M_FORBIDDEN", "403")
    one(corpus, lambda r: r["status"] == 404 and errcode(r) == "M_NOT_FOUND", "404")
    one(corpus, lambda r: r["status"] == 401 and errcode(r) == "M_UNKNOWN_TOKEN", "401")
    one(corpus, lambda r: r["status"] == 400 and errcode(r) == "M_USER_IN_USE", "M_USER_IN_USE")

    not_json = one(corpus, lambda r: r["status"] == 400 and errcode(r) == "M_NOT_JSON", "M_NOT_JSON")
    assert "$base64" in not_json["request_body"]

    limited = one(corpus, lambda r: r["status"] == 429, "429")
    assert errcode(limited) == "M_LIMIT_EXCEEDED"
    assert limited["retry_after"] is not None and int(limited["retry_after"]) >= 1
    assert limited["response_body"]["retry_after_ms"] > 0


def test_corpus_has_keys_and_media(corpus: list[Record]) -> None:
    keys = one(corpus, lambda r: path_of(r).endswith("/keys/upload") and r["status"] == 200, "keys/upload")
    assert "device_keys" in keys["request_body"] and "one_time_keys" in keys["request_body"]
    assert keys["response_body"]["one_time_key_counts"]

    upload = one(corpus, lambda r: "/media/" in path_of(r) and path_of(r).endswith("/upload"), "media upload")
    assert base64.b64decode(upload["request_body"]["$base64"]).startswith(b"\x89PNG")
    assert upload["response_body"]["content_uri"].startswith("mxc://")


@pytest.mark.synapse
async def test_workload_still_records_a_full_corpus(tmp_path: Path) -> None:
    """The recorder end to end: fresh homeserver, proxy, workload (~12 s)."""
    from coap_gateway.tools.dictbuild.record import record_corpus

    out = tmp_path / "corpus.jsonl"
    records = await record_corpus(out, data_dir=tmp_path / "hs")
    assert len(records) >= 400
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(records)
    statuses = {record["status"] for record in records}
    assert {200, 400, 401, 403, 404, 429} <= statuses
