"""``coap-gateway dict build``: record, train, measure, write.

1. Record a corpus: a real Synapse driven by matrix-nio through a recording
   proxy (or take a recorded JSONL corpus with ``--corpus``).
2. Encode every JSON body with the CBOR table the dictionary is for.
3. Split by content hash into training (80 %) and held-out (20 %) samples.
4. Train the preset dictionary on the training split; report mean sizes on
   the held-out split: raw JSON, CBOR, CBOR+deflate, CBOR+deflate+dictionary.
5. Write ``flate/<sha256>.bin`` and its report ``flate/<sha256>.json``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import cbor_codec
from ..cbor_tables import load_cbor_table
from ..compression import FlateDictionary, compress
from ..errors import CodecError, GatewayError
from .trainer import measure, split_train_holdout, train_dictionary

#: bodies larger than this are left out of training: one huge initial sync
#: would otherwise dominate the substring counts
MAX_SAMPLE = 64 * 1024

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


def json_bodies(records: Iterable[dict[str, Any]]) -> list[Any]:
    """Every JSON request and response body of a corpus, in order."""
    bodies = []
    for r in records:
        for key in ("request_body", "response_body"):
            body = r.get(key)
            if body is None or (isinstance(body, dict) and set(body) == {"$base64"}):
                continue
            bodies.append(body)
    return bodies


def encode_samples(bodies: Iterable[Any], table_version: int) -> list[tuple[bytes, bytes]]:
    """(compact JSON, CBOR) per body; bodies CBOR cannot carry are skipped."""
    table = load_cbor_table(table_version)
    out = []
    for body in bodies:
        raw = cbor_codec.dump_json(body)
        if len(raw) > MAX_SAMPLE:
            continue
        try:
            out.append((raw, cbor_codec.encode(body, table)))
        except CodecError:
            continue
    return out


def record_corpus_blocking(out_path: Path, seed: int, scale: int, console: Console) -> list[dict]:
    from .record import record_corpus

    with console.status("recording: Synapse + matrix-nio workload through a recording proxy…") as status:
        def progress(message: str) -> None:
            status.update(f"recording: {message}")

        return asyncio.run(record_corpus(out_path, seed=seed, scale=scale, progress=progress))


def build_dictionary(
    out_dir: Path,
    corpus: Path | None = None,
    record_to: Path | None = None,
    table_version: int = 2,
    size: int = 32 * 1024,
    scale: int = 1,
    seed: int = 1,
    set_profile: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console(stderr=True)
    if corpus is not None:
        records = read_corpus(corpus)
        source = str(corpus)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            target = record_to or Path(tmp) / "corpus.jsonl"
            records = record_corpus_blocking(target, seed, scale, console)
        source = f"recorded now (seed {seed}, scale {scale})"
    samples = encode_samples(json_bodies(records), table_version)
    if len(samples) < 20:
        raise GatewayError(f"only {len(samples)} usable JSON bodies in the corpus; need at least 20")
    by_cbor = {cbor: raw for raw, cbor in samples}
    train_cbor, holdout_cbor = split_train_holdout(list(by_cbor))

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("training: counting substrings", total=len(train_cbor))
        data = train_dictionary(train_cbor, size, lambda done, total: progress.update(task, completed=done))
    dictionary = FlateDictionary(data)
    holdout = [(by_cbor[c], c) for c in holdout_cbor]
    report = measure(holdout, dictionary)
    table = load_cbor_table(table_version)
    ref_cbor = cbor_codec.encode(REFERENCE_SEND, table)
    result = {
        "digest": dictionary.digest,
        "size": len(data),
        "cbor_table": table_version,
        "cbor_table_digest": table.digest,
        "source": source,
        "records": len(records),
        "samples": {"train": len(train_cbor), "holdout": len(holdout_cbor)},
        "holdout_mean_bytes": report.as_dict(),
        "reference_send": {
            "json": len(cbor_codec.dump_json(REFERENCE_SEND)),
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
    m = result["holdout_mean_bytes"]
    table = Table(title=f"held-out mean sizes ({m['samples']} bodies)")
    for col in ("raw JSON", "CBOR", "CBOR+deflate", "CBOR+deflate+dict", "payload sent"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{m[k]:.1f} B" for k in ("json", "cbor", "cbor_deflate", "cbor_deflate_dict", "payload")))
    console.print(table)
    ref = result["reference_send"]
    console.print(f"reference send body: JSON {ref['json']} B → CBOR {ref['cbor']} B → CBOR+deflate+dict {ref['cbor_deflate_dict']} B")
    console.print(f"dictionary {result['digest']} ({result['size']} B) written to {path}")
