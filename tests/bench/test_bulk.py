"""Bulk never holds up a message (issue 13): a message sent during a 6 kB
upload at 100 bit/s, 1 s latency, reaches the other device within 15 s —
in virtual time (deterministic), real gateways, secure, lb3, sync push."""

from __future__ import annotations

from bench import targets
from bench.bulk import run_bulk, run_in_virtual_time


def test_a_message_sent_during_an_upload_arrives_within_15_s_at_the_worst_moment():
    bulk = run_bulk()
    sliced, whole = bulk["sliced"], bulk["whole_blocks"]
    print(f"\nduring a 6 kB upload at 100 bit/s: {sliced['block_bytes']}-B blocks: worst {sliced['latency_max_s']} s, "
          f"upload {sliced['upload_s']} s; {whole['block_bytes']}-B blocks: worst {whole['latency_max_s']} s, "
          f"upload {whole['upload_s']} s")
    for run in (sliced, whole):
        assert run["undelivered"] == run["failed_uploads"] == 0
    assert sliced["block_bytes"] == 64 and whole["block_bytes"] == 1024
    measured = targets.BY_KEY["bulk.max"].measure({"bulk": bulk})
    assert measured is not None and measured <= 15.0
    # what the slicing buys: with frame-sized blocks the message waits behind one for a minute or more
    assert whole["latency_max_s"] > 60.0


def test_the_upload_still_arrives_whole_and_once():
    result = run_in_virtual_time(sliced=True, upload_bytes=3000, send_after=20.0)
    assert result.upload_status == 200 and result.upload_intact and result.message_latency_s is not None
