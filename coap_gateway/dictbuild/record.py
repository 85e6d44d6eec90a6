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

from coap_gateway.dictbuild.recorder import RecordingProxy
from coap_gateway.dictbuild.workload import run_workload
from coap_gateway.synapse_process import LocalSynapse

__all__ = ["record_corpus"]


async def record_corpus(
    out_path: Path,
    *,
    data_dir: Path | None = None,
    seed: int = 1,
    scale: int = 1,
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
        synapse = LocalSynapse(data_dir if data_dir is not None else Path(scratch) / "synapse")
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
