"""Record a corpus: Synapse ← RecordingProxy ← scripted nio workload → JSONL.

The homeserver for a recording is a ``LocalSynapse`` with generous rate limits;
the workload's one deliberate 429 comes from tightening a single bot user's
message limit through the admin API (``LocalSynapse.override_ratelimit``),
so the rest of the run never waits on a limiter.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..synapse_process import LocalSynapse
from .recorder import RecordingProxy
from .workload import run_workload

__all__ = ["record_corpus"]


async def record_corpus(
    out_path: Path,
    *,
    data_dir: Path | None = None,
    seed: int = 1,
    scale: int = 1,
    server_name: str = "localhost",
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the workload through a recording proxy; write and return the records.

    ``out_path`` is overwritten.  With ``data_dir`` None the homeserver lives
    in a temporary directory that is removed afterwards.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("")
    with tempfile.TemporaryDirectory(prefix="synapse-record-") as scratch:
        synapse = LocalSynapse(data_dir if data_dir is not None else Path(scratch) / "synapse", server_name=server_name)
        proxy: RecordingProxy | None = None
        try:
            if progress:
                progress("starting Synapse")
            await synapse.start()
            proxy = RecordingProxy(synapse.base_url, jsonl_path=out_path)
            await proxy.start()

            async def limit_user(user_id: str) -> None:
                # One message per second, no burst: the second quick send is a 429.
                await synapse.override_ratelimit(user_id, messages_per_second=1, burst_count=1)

            await run_workload(
                proxy.base_url, seed=seed, scale=scale, progress=progress, limit_user=limit_user
            )
            return list(proxy.records)
        finally:
            if proxy is not None:
                await proxy.stop()
            await synapse.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m coap_gateway.dictbuild.record OUT.jsonl [--seed N] [--scale N]``"""
    import argparse
    import asyncio
    import collections
    import logging
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSONL file to write")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=int, default=1, help="multiplies the chat rounds")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the homeserver here")
    args = parser.parse_args(argv)
    # nio warns about every error body it cannot map to its schema; the
    # workload provokes those errors on purpose.
    logging.getLogger("nio").setLevel(logging.ERROR)

    def progress(message: str) -> None:
        print(f"… {message}", file=sys.stderr, flush=True)

    records = asyncio.run(
        record_corpus(args.out, data_dir=args.data_dir, seed=args.seed, scale=args.scale, progress=progress)
    )
    statuses = collections.Counter(record["status"] for record in records)
    print(f"{len(records)} exchanges → {args.out}; by status: {dict(sorted(statuses.items()))}")


if __name__ == "__main__":
    main()
