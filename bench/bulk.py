"""A message sent during an upload, at 100 bit/s, in virtual time (issue 13: bulk never holds up a message).

alice's device is on DESIGN's slow link (100 bit/s, 1 s one way, no loss),
bob's on a fast one, each behind its own client gateway with its sync loop
running, one server gateway, the deployed defaults (secure, lb4, sync
push).  alice starts uploading a 6 kB file (what js-sdk's device setup
sends as ``keys/upload``); while its blocks cross, she sends the reference
message.  Measured: from that send until bob's sync loop has it, and how
long the upload took.  The same run with blocks as large as a frame allows
(1 KiB: before the client gateway sliced its uploads by time) shows what the
slicing buys and what it costs the upload.

Virtual time (looptime) and the in-process homeserver of
``bench.losslatency``, so a 20-minute upload takes about a second.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass
from typing import Any

from coap_gateway.codec import HttpRequest
from coap_gateway.transport import BULK_SLICE
from meshsim import LinkProfile

from .losslatency import UPLOAD, two_devices

#: DESIGN's slow link, and the issue's numbers
SLOW = LinkProfile(rate_bps=100, delay=1.0)
UPLOAD_BYTES = 6000
#: the message goes this long after the upload started (a block is on the link)
SEND_AFTER_S = 30.0
TARGET_S = 15.0


@dataclass
class BulkResult:
    sliced: bool
    upload_bytes: int
    block_bytes: int
    #: from alice's send to bob's sync loop having the message
    message_latency_s: float | None
    #: the upload, from its first block to its answer
    upload_s: float | None
    upload_status: int | None
    #: the homeserver got the body whole, once
    upload_intact: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("message_latency_s", "upload_s"):
            if out[key] is not None:
                out[key] = round(out[key], 1)
        return out


async def message_during_upload(*, sliced: bool = True, upload_bytes: int = UPLOAD_BYTES,
                                send_after: float = SEND_AFTER_S) -> BulkResult:
    loop = asyncio.get_running_loop()
    async with two_devices(1, warm_both_ways=False) as world:
        alice, bob, endpoint = world.alice, world.bob, world.clients[0].endpoint
        if not sliced:
            endpoint.bulk_slice = None
        world.reshape_alice(SLOW)
        probe = endpoint.remote("server")
        endpoint.slice_upload(probe)
        block = 16 << probe.maximum_block_size_exp
        t_upload = loop.time()
        blob = random.randbytes(upload_bytes)
        upload = asyncio.create_task(world.clients[0].gateway.serve(HttpRequest(
            "POST", UPLOAD + "?filename=keys.bin", body=blob,
            content_type="application/octet-stream", access_token=alice.token)))
        await asyncio.sleep(send_after)
        t_send = loop.time()
        text = "Hello, see you at 5pm"
        sent = asyncio.create_task(alice.send(text))
        arrived = await bob.wait_for(text, t_send + 3600)
        answer = await upload
        upload_s = loop.time() - t_upload
        await sent
        return BulkResult(sliced, upload_bytes, block, None if arrived is None else arrived - t_send,
                          upload_s if answer.status == 200 else None, answer.status,
                          world.homeserver.uploads == [blob])


def run_in_virtual_time(**kw: Any) -> BulkResult:
    import looptime

    random.seed(13)
    loop = looptime.new_event_loop(start=0.0)
    try:
        return loop.run_until_complete(message_during_upload(**kw))
    finally:
        loop.close()


#: when the message goes, seconds into the upload: across one block's cycle
#: (64-B blocks: ~12 s; 1 KiB blocks: ~90 s), so the worst moment is among them
SLICED_OFFSETS = tuple(30.0 + i for i in range(13))
WHOLE_OFFSETS = tuple(30.0 + 7.0 * i for i in range(13))


def _summary(results: list[BulkResult]) -> dict[str, Any]:
    latencies = [r.message_latency_s for r in results]
    delivered = [x for x in latencies if x is not None]
    uploads = [r.upload_s for r in results if r.upload_s is not None]
    return {"block_bytes": results[0].block_bytes, "runs": len(results),
            "undelivered": len(latencies) - len(delivered),
            "failed_uploads": sum(r.upload_status != 200 or not r.upload_intact for r in results),
            "latency_max_s": round(max(delivered), 1) if delivered else None,
            "latency_median_s": round(sorted(delivered)[len(delivered) // 2], 1) if delivered else None,
            "upload_s": round(max(uploads), 1) if uploads else None,
            "latencies_s": [None if x is None else round(x, 1) for x in latencies]}


def run_bulk() -> dict[str, Any]:
    """The message sent at moments across a block's cycle, with sliced and
    with whole blocks, for ``make bench``."""
    sliced = [run_in_virtual_time(sliced=True, send_after=t) for t in SLICED_OFFSETS]
    whole = [run_in_virtual_time(sliced=False, send_after=t) for t in WHOLE_OFFSETS]
    return {"link": {"rate_bps": SLOW.rate_bps, "delay_s": SLOW.delay}, "upload_bytes": UPLOAD_BYTES,
            "bulk_slice_s": BULK_SLICE, "target_s": TARGET_S,
            "sliced": _summary(sliced) | {"send_after_s": list(SLICED_OFFSETS)},
            "whole_blocks": _summary(whole) | {"send_after_s": list(WHOLE_OFFSETS)}}


__all__ = ["BulkResult", "message_during_upload", "run_bulk", "run_in_virtual_time"]
