"""``coap-gateway dict build``: record, train, measure, write.

1. Record independent corpora (default 3): each a fresh real Synapse with
   its own server name, driven by matrix-nio with its own seed through a
   recording proxy — or take recorded JSONL corpora with ``--corpus``.
2. Encode every JSON body with the CBOR table the dictionary is for.
3. Train on all corpora but the last; a substring must occur in at least
   two of them to count, so IDs and server names never enter the dictionary.
4. Measure on the last corpus, which training never saw: mean sizes of raw
   JSON, CBOR, CBOR+deflate, CBOR+deflate+dictionary, overall and for the
   endpoints that dominate a chat.
5. Write ``flate/<sha256>.bin`` and its report ``flate/<sha256>.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ...codec import (
    FlateDictionary,
    compress,
    json_cbor,
    load_cbor_table,
    load_route_table,
    routes,
)
from ...errors import CodecError, GatewayError
from .trainer import measure, train_dictionary

#: bodies larger than this are left out of training: one huge initial sync
#: would otherwise dominate the substring counts
MAX_SAMPLE = 64 * 1024
LATEST_ROUTE_TABLE = 2

REFERENCE_SEND = {"msgtype": "m.text", "body": "Hello, see you at 5pm"}


def read_corpus(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise GatewayError(f"{path}:{number}: not JSON: {exc}") from None
    return records


def labelled_bodies(records: Iterable[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Every JSON body of a corpus with a label such as "client.send request"."""
    table = load_route_table(LATEST_ROUTE_TABLE)
    out = []
    for r in records:
        try:
            segments, _ = routes.split_target(r.get("raw_path", ""))
            template = table.match(segments)
        except GatewayError:
            template = None
        name = template.name if template else "other"
        for key, direction in (("request_body", "request"), ("response_body", "response")):
            body = r.get(key)
            if body is None or (isinstance(body, dict) and set(body) == {"$base64"}):
                continue
            out.append((f"{name} {direction}", body))
    return out


def json_bodies(records: Iterable[dict[str, Any]]) -> list[Any]:
    """Every JSON request and response body of a corpus, in order."""
    return [body for _, body in labelled_bodies(records)]


def encode_labelled(records: Iterable[dict[str, Any]], table_version: int) -> list[tuple[str, bytes, bytes]]:
    """(label, compact JSON, CBOR) per distinct body; bodies that CBOR cannot
    carry, or too large to be typical, are left out."""
    table = load_cbor_table(table_version)
    out, seen = [], set()
    for label, body in labelled_bodies(records):
        raw = json_cbor.dump_json(body)
        if len(raw) > MAX_SAMPLE:
            continue
        try:
            cbor = json_cbor.encode(body, table)
        except CodecError:
            continue
        if cbor not in seen:
            seen.add(cbor)
            out.append((label, raw, cbor))
    return out


#: categories the report breaks out, because they dominate a chat at 100 bit/s
REPORTED_LABELS = (
    "client.send request",
    "client.send response",
    "client.sync response",
    "client.messages response",
    "client.state_event request",
    "client.receipt request",
    "client.keys_query response",
)


#: server names of the recordings: each run is another "deployment", so
#: nothing specific to one homeserver can earn a place in the dictionary
RECORDING_SERVER_NAMES = ("alpha.example", "bravo.example", "charlie.example", "delta.example", "echo.example")


def record_corpora(out_dir: Path, runs: int, seed: int, scale: int, console: Console) -> list[Path]:
    """Record ``runs`` independent corpora, each on a fresh Synapse."""
    from .record import record_corpus

    # the workload provokes error responses on purpose; nio warns about each
    logging.getLogger("nio").setLevel(logging.ERROR)
    paths = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("recording", total=runs)
        for i in range(runs):
            name = RECORDING_SERVER_NAMES[i % len(RECORDING_SERVER_NAMES)]
            path = out_dir / f"corpus-{i + 1}-{name}.jsonl"

            def step(message: str, i: int = i, name: str = name) -> None:
                progress.update(task, description=f"recording run {i + 1}/{runs} ({name}): {message}")

            asyncio.run(record_corpus(path, seed=seed + i, scale=scale, server_name=name, progress=step))
            progress.advance(task)
            paths.append(path)
    return paths


def build_dictionary(
    out_dir: Path,
    corpora: Sequence[Path] = (),
    record_to: Path | None = None,
    runs: int = 3,
    table_version: int = 2,
    size: int = 32 * 1024,
    scale: int = 1,
    seed: int = 1,
    set_profile: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train on every corpus but the last; measure on the last (held out).

    With no corpora given, records ``runs`` of them first (a real Synapse
    driven by matrix-nio each time, with its own seed and server name).
    """
    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="dict-build-") as tmp:
        if not corpora:
            if runs < 2:
                raise GatewayError("need at least 2 recordings: one to train on, one held out")
            corpora = record_corpora(record_to or Path(tmp), runs, seed, scale, console)
        if len(corpora) < 2:
            raise GatewayError("give at least 2 corpora: the last one is held out")
        recordings = [read_corpus(Path(c)) for c in corpora]
    table = load_cbor_table(table_version)

    train_groups = [[cbor for _, _, cbor in encode_labelled(r, table_version)] for r in recordings[:-1]]
    holdout = encode_labelled(recordings[-1], table_version)
    if sum(map(len, train_groups)) < 20 or len(holdout) < 5:
        raise GatewayError("too few usable JSON bodies in the corpora")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("training (COVER)", total=size)
        data = train_dictionary(train_groups, size, lambda done, total: progress.update(task, completed=done))
    dictionary = FlateDictionary(data)
    ref_cbor = json_cbor.encode(REFERENCE_SEND, table)
    result = {
        "digest": dictionary.digest,
        "size": len(data),
        "cbor_table": table_version,
        "cbor_table_digest": table.digest,
        "corpora": {"train": [str(c) for c in corpora[:-1]], "holdout": str(corpora[-1])},
        "records": [len(r) for r in recordings],
        "samples": {"train": sum(map(len, train_groups)), "holdout": len(holdout)},
        "holdout_mean_bytes": measure([(raw, cbor) for _, raw, cbor in holdout], dictionary).as_dict(),
        "holdout_by_endpoint": {
            label: measure(pairs, dictionary).as_dict()
            for label in REPORTED_LABELS
            if (pairs := [(raw, cbor) for lab, raw, cbor in holdout if lab == label])
        },
        "reference_send": {
            "json": len(json_cbor.dump_json(REFERENCE_SEND)),
            "cbor": len(ref_cbor),
            "cbor_deflate_dict": len(compress(ref_cbor, dictionary)),
        },
    }
    hexdigest = dictionary.digest.split(":")[1]
    flate_dir = out_dir / "flate"
    flate_dir.mkdir(parents=True, exist_ok=True)
    (flate_dir / f"{hexdigest}.bin").write_bytes(data)
    (flate_dir / f"{hexdigest}.json").write_text(json.dumps(result, indent=2) + "\n")
    if set_profile:
        _point_profile(out_dir / "profiles.json", set_profile, dictionary.digest, table_version)
    _print_report(console, result, flate_dir / f"{hexdigest}.bin")
    return result


def _point_profile(path: Path, name: str, digest: str, table_version: int) -> None:
    doc = json.loads(path.read_text())
    for entry in doc["profiles"]:
        if entry["name"] == name:
            if entry["cbor_table"] != table_version:
                raise GatewayError(f"profile {name} uses CBOR table v{entry['cbor_table']}, the dictionary is for v{table_version}")
            entry["flate"] = digest
            break
    else:
        raise GatewayError(f"no profile {name!r} in {path}")
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def _print_report(console: Console, result: dict[str, Any], path: Path) -> None:
    table = Table(title="held-out mean sizes per body")
    table.add_column("bodies")
    for col in ("n", "raw JSON", "CBOR", "CBOR+deflate", "CBOR+deflate+dict", "payload sent"):
        table.add_column(col, justify="right")
    rows = [("all", result["holdout_mean_bytes"]), *result["holdout_by_endpoint"].items()]
    for label, m in rows:
        table.add_row(label, str(m["samples"]),
                      *(f"{m[k]:.1f}" for k in ("json", "cbor", "cbor_deflate", "cbor_deflate_dict", "payload")))
    console.print(table)
    ref = result["reference_send"]
    console.print(f"reference send body: JSON {ref['json']} B → CBOR {ref['cbor']} B → CBOR+deflate+dict {ref['cbor_deflate_dict']} B")
    console.print(f"dictionary {result['digest']} ({result['size']} B) written to {path}")
