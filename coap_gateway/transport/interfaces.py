"""The transport layer's contracts (aiocoap's ``interfaces.py`` style).

Everything below CoAP is one of these:

* a ``DatagramLink`` carries datagrams to peers (UDP, KISS serial, an
  emulated link) and says how much still waits to leave;
* a ``FrameCodec`` turns CoAP message bytes into datagrams and back
  (``PlainCodec``: the datagram is the message; the secure codecs: Noise
  frames), and may ask its ``CodecHost`` to send or fail things;
* a ``LinkStage`` is one step of an emulated link (a serialiser, a queue,
  loss, delay): offered a frame at a time, it says when each copy comes out.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

from .timing import LinkBudget

#: a link's upcall: (peer, datagram)
Receiver = Callable[[Hashable, bytes], None]


class DatagramLink(Protocol):
    """What a CoAP endpoint needs from a link."""

    name: str
    budget: LinkBudget

    def send(self, peer: Hashable, datagram: bytes) -> None: ...

    def set_receiver(self, receiver: Receiver) -> None: ...

    def queued_bytes(self, peer: Hashable) -> int:
        """Bytes still waiting to leave toward ``peer`` (0 when unknown)."""
        ...

    async def close(self) -> None: ...


class CodecHost(Protocol):
    """What a FrameCodec may ask of the interface it is plugged into."""

    def send_datagram(self, peer: Hashable, datagram: bytes) -> None:
        """Send a datagram the codec originates itself (a handshake reply)."""
        ...

    def fail_remote(self, key: Hashable, exc: Exception) -> None:
        """Fail everything pending toward ``key`` now (a fatal handshake error)."""
        ...

    def forget_remote(self, key: Hashable) -> None:
        """``key`` is gone for good (a closed session): drop its CoAP state."""
        ...

    def remembers(self, key: Hashable, message_id: int) -> bool:
        """Whether CoAP still deduplicates message ``message_id`` from ``key``:
        a copy of it passed up now is answered from the cache, never run again."""
        ...


class FrameCodec(Protocol):
    """Turns CoAP message bytes into datagrams for a peer, and back.

    ``key`` identifies the CoAP endpoint aiocoap talks to: the network
    address in plaintext mode, the session in secure mode.
    """

    #: bytes a datagram adds to the CoAP message it carries, at most (the
    #: retransmission timer counts what the link carries)
    frame_overhead: int

    def bind(self, host: CodecHost) -> None: ...

    def outgoing(self, key: Hashable, message: bytes) -> list[tuple[Hashable, bytes]]: ...

    def incoming(self, peer: Hashable, datagram: bytes) -> list[tuple[Hashable, bytes]]: ...

    def failure(self) -> Exception | None:
        """What stops every exchange until someone acts (a changed server
        key), or None: requests fail at once with it instead of timing out."""
        ...

    def setup_bytes(self, key: Hashable) -> int:
        """Bytes that must cross, one round trip, before a message to ``key``
        can (a handshake still to make); 0 when it can go at once."""
        ...


class StageCopy(Protocol):
    """One copy of a frame coming out of a stage."""

    @property
    def deliver_at(self) -> float: ...

    @property
    def payload(self) -> bytes | None: ...


class StageResult(Protocol):
    @property
    def deliveries(self) -> Sequence[StageCopy]: ...


class LinkStage(Protocol):
    """One step of an emulated link's direction (meshsim's ``LinkModel`` is one)."""

    def offer(self, now: float, size: int, payload: bytes | None = None) -> StageResult:
        """Offer a frame at ``now``: the copies that will come out, and when."""
        ...

    def backlog_bytes(self, now: float) -> int:
        """Bytes waiting in this stage at ``now``."""
        ...
