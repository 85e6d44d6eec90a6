"""Block-wise requests that wait on disk, bounded (a resource base class).

aiocoap assembles a Block1 request in memory, for any number of requests of
any size, for the blockwise lifetime.  A server gateway's devices and a
federation gateway's peers may be hostile, so each refuses a block that
would make a request, or what one remote or all remotes hold in assembly,
larger than its limits, and the assembly waits in an anonymous file.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap.resource as resource
from aiocoap import Message
from aiocoap.numbers.codes import Code

from ..transport import assembly_bytes, release_assemblies


class UploadSpool:
    """A block-wise request body being assembled, in an anonymous temporary
    file.  aiocoap's Block1 assembly only measures the payload (``len``) and
    appends to it (``+=``), so this stands in for its bytes until the last
    block, when ``take`` reads it once for forwarding.  The file has no name
    and is gone when closed — by ``take``, or when aiocoap drops the
    assembly (lifetime over, replaced, session gone) and the object with it."""

    def __init__(self, first: bytes, directory: Path | None = None) -> None:
        # unbuffered: a block goes to the file as it comes, nothing waits in a buffer
        self._file = tempfile.TemporaryFile(dir=directory, buffering=0)
        self._size = 0
        self += first

    def __len__(self) -> int:
        return self._size

    def __iadd__(self, block: bytes) -> UploadSpool:
        view = memoryview(block)
        while view:  # a raw write may take less than it is given
            view = view[self._file.write(view):]
        self._size += len(block)
        return self

    def take(self) -> bytes:
        """The whole body; the file is closed."""
        with self._file:
            self._file.seek(0)
            return self._file.readall()


@dataclass(frozen=True)
class UploadLimits:
    #: the largest request that may arrive block by block (4.13 with Size1 beyond)
    per_request: int
    #: bytes one remote (a device, a peer) may have in assembly at once, and all
    #: together (5.03 with Max-Age beyond: the held ones expire with the blockwise lifetime)
    per_remote: int
    total: int
    #: where assemblies wait (None: the system's temporary directory)
    spool_dir: Path | None = None


class BoundedUploads(resource.Resource):
    """A resource whose block-wise requests are bounded and wait on disk.
    Subclasses give ``upload_limits()``, may count ``upload_refused()``, and
    in ``render`` take an assembled body with ``assembled(request)``."""

    def upload_limits(self) -> UploadLimits:
        raise NotImplementedError

    def upload_refused(self) -> None:
        """A block was refused (a counter's place)."""

    async def render_to_pipe(self, pipe: Any) -> None:
        limits = self.upload_limits()
        refusal = self._refusal(pipe.request, limits)
        if refusal is not None:
            self.upload_refused()
            pipe.add_response(refusal, is_last=True)
            return
        block1 = pipe.request.opt.block1
        if block1 is not None and block1.block_number == 0 and block1.more:
            # aiocoap assembles by `payload += block` on the first block's message:
            # on disk, appended, so a remote holding one unfinished costs no memory
            pipe.request.payload = UploadSpool(pipe.request.payload, limits.spool_dir)
        try:
            await super().render_to_pipe(pipe)
        except ValueError:
            # aiocoap could not assemble the blocks (a gap or an overlap): the
            # remote's fault, answered as such, not a 5.00 with a traceback
            pipe.add_response(Message(code=Code.REQUEST_ENTITY_INCOMPLETE), is_last=True)
        finally:
            if pipe.request.opt.block1 is not None:
                release_assemblies(self, pipe.request.remote)

    def _refusal(self, request: Message, limits: UploadLimits) -> Message | None:
        block1 = request.opt.block1
        if block1 is None:
            return None
        if block1.start + len(request.payload) > limits.per_request:
            reply = Message(code=Code.REQUEST_ENTITY_TOO_LARGE)
            reply.opt.size1 = limits.per_request
            return reply
        if (assembly_bytes(self, request.remote) + len(request.payload) > limits.per_remote
                or assembly_bytes(self) + len(request.payload) > limits.total):
            reply = Message(code=Code.SERVICE_UNAVAILABLE)
            reply.opt.max_age = 60  # the held requests expire with the blockwise lifetime
            return reply
        return None


def assembled(request: Message) -> None:
    """Replace a body assembled on disk (``BoundedUploads``) by its bytes."""
    if isinstance(request.payload, UploadSpool):
        request.payload = request.payload.take()


__all__ = ["BoundedUploads", "UploadLimits", "UploadSpool", "assembled"]
