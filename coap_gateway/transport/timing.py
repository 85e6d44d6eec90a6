"""Retransmission timers that follow the link (sans-I/O).

CoAP's default ACK_TIMEOUT of 2 s assumes a fast network; at 100 bit/s a
60-byte frame alone takes 4.8 s to serialise, so every frame would be
retransmitted spuriously (measured: 42–46 frames instead of 16 for a short
exchange).  Here the timeout is

    serialisation of (what is queued ahead + the request + a full response)
  + the link's round-trip latency, refined by measurement

and the measurement is RFC 6298's SRTT/RTTVAR with Karn's rule (no samples
from retransmitted exchanges).  Samples are taken of the round-trip time
*minus* the serialisation the link must spend anyway, so one estimate serves
messages of every size.

Pure arithmetic: times and sizes in, seconds out.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LinkBudget:
    """What is known about a link before anything is measured."""

    #: bits per second on the wire; None for a link fast enough not to matter
    rate_bps: float | None = None
    #: bytes the link adds to every frame (42 for Ethernet+IPv4+UDP, KISS: 2)
    frame_overhead: int = 0
    #: one-way latency (propagation, radio turnaround), seconds
    latency: float = 0.0
    #: largest frame the link carries (bytes of CoAP message)
    max_frame: int = 1152
    #: a full-size response to budget for while waiting for an ACK
    max_response: int = 256
    #: retransmissions of a CON before giving up (RFC 7252: 4); a lossy link
    #: needs more — at 30 % loss each way one attempt fails half the time
    max_retransmit: int = 4

    def __post_init__(self) -> None:
        if self.rate_bps is not None and not self.rate_bps > 0:
            raise ValueError("rate_bps must be positive")
        if self.frame_overhead < 0 or self.latency < 0 or self.max_frame < 16 or self.max_response < 0 or not 0 <= self.max_retransmit <= 20:
            raise ValueError("link budget values out of range")

    def serialisation(self, size: int) -> float:
        """Seconds one frame of ``size`` bytes occupies the link."""
        if self.rate_bps is None:
            return 0.0
        return (size + self.frame_overhead) * 8 / self.rate_bps


@dataclass
class RetransmissionTimer:
    """Per-peer ACK timeout: link-derived at first, then measured (RFC 6298)."""

    budget: LinkBudget
    #: floor of the residual part (RFC 7252's ACK_TIMEOUT spirit: never hammer)
    min_residual: float = 1.0
    max_timeout: float = 3600.0
    #: smoothed residual round-trip time and its variation, once measured
    srtt: float | None = None
    rttvar: float = 0.0
    samples: int = field(default=0)
    #: when what we sent toward this peer has left the link's serialiser (our
    #: own frames only: a link that cannot report its queue — UDP into a
    #: shaped path — still has one, and several exchanges in flight share it)
    busy_until: float = 0.0

    def on_sent(self, now: float, size: int) -> None:
        """A frame of ``size`` bytes was handed to the link at ``now``."""
        self.busy_until = max(now, self.busy_until) + self.budget.serialisation(size)

    def queued_bytes(self, now: float) -> int:
        """Our own bytes still ahead in the link's serialiser at ``now`` (estimated)."""
        b = self.budget
        if b.rate_bps is None or self.busy_until <= now:
            return 0
        return int((self.busy_until - now) * b.rate_bps / 8)

    def residual(self) -> float:
        """Expected round trip beyond serialisation (latency, processing)."""
        if self.srtt is None:
            # before any sample: twice the latency, and room for processing
            return max(self.min_residual, 2 * self.budget.latency * 1.5 + 0.5)
        return max(self.min_residual, self.srtt + 4 * self.rttvar)

    def ack_timeout(self, request_size: int, queued_bytes: int = 0, response_size: int | None = None) -> float:
        """How long to wait for the ACK of a CON of ``request_size`` bytes
        handed to a link that still has ``queued_bytes`` to send first, whose
        answer may be ``response_size`` bytes (default: the budget's)."""
        b = self.budget
        answer = b.max_response if response_size is None else response_size
        wire = b.serialisation(queued_bytes) + b.serialisation(request_size) + b.serialisation(answer)
        return min(self.max_timeout, wire + self.residual())

    def retransmit_timeout(self, request_size: int, queued_bytes: int, response_size: int | None,
                           attempt: int) -> float:
        """The wait after retransmission ``attempt`` (1, 2, …): only the
        residual part backs off.  Serialisation is physics the link
        announced, not a guess that doubling could make safer; what is
        unknown (latency, processing, others' traffic) grows — by 1.5 once
        it exceeds 3 s and 2 below, CoCoA's variable back-off factors
        (draft-ietf-core-cocoa §4.2).  Stock CoAP doubles everything: at
        100 bit/s with a 2 s delay that is 37, 74, 148 s … where the frames
        need 24 s each time."""
        b = self.budget
        answer = b.max_response if response_size is None else response_size
        wire = b.serialisation(queued_bytes) + b.serialisation(request_size) + b.serialisation(answer)
        residual = self.residual()
        for _ in range(attempt):
            residual *= 1.5 if residual > 3.0 else 2.0
        return min(self.max_timeout, wire + residual)

    def on_sample(self, rtt: float, request_size: int, response_size: int, queued_bytes: int = 0) -> None:
        """A round trip of an exchange that was *not* retransmitted (Karn)."""
        b = self.budget
        residual = rtt - b.serialisation(queued_bytes) - b.serialisation(request_size) - b.serialisation(response_size)
        residual = max(0.0, residual)
        if self.srtt is None:
            self.srtt, self.rttvar = residual, residual / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - residual)
            self.srtt = 0.875 * self.srtt + 0.125 * residual
        self.samples += 1

    def empty_ack_delay(self) -> float:
        """How long a server may hold a request before it must send an empty
        ACK: well inside the peer's first timeout, so a slow upstream costs a
        4-byte ACK instead of a retransmitted request."""
        b = self.budget
        return max(0.1, 0.5 * (self.residual() + b.serialisation(b.max_response)))
