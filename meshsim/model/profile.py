"""A link's parameters: `LinkProfile`, one direction of a link, netem's knobs plus byte/time limits.

Pure data with validation: every field is checked when a profile is made,
so a model never meets a bad value.  ``LinkProfile.from_netem_args`` and
``to_netem_args`` read and write tc's syntax (`meshsim.model.netem`);
`describe_profile` is the one line people read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from decimal import Decimal

from .netem import format_netem_fields, parse_netem_fields
from .rng import JITTER_DISTRIBUTIONS, JitterDistribution

#: Gilbert-Elliott parameters in tc's order: p (good→bad), r (bad→good),
#: 1-h (loss probability in the bad state), 1-k (loss probability in the good state).
GilbertElliottParams = tuple[float, float, float, float]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class LinkProfile:
    """The parameters of one direction of a link (netem's, plus byte/time limits)."""

    #: bits per second; None: no serialiser (infinitely fast)
    rate_bps: float | None = None
    #: seconds
    delay: float = 0.0
    #: seconds; the spread of the delay (half-width for uniform, σ for normal)
    jitter: float = 0.0
    jitter_dist: JitterDistribution = "uniform"
    #: probability that a copy is lost at random (0..1)
    loss: float = 0.0
    #: Gilbert-Elliott loss instead of random loss: (p, r, 1-h, 1-k)
    gemodel: GilbertElliottParams | None = None
    #: probability that a packet is sent twice
    duplicate: float = 0.0
    #: probability that one bit of a copy is flipped
    corrupt: float = 0.0
    #: netem's `limit`: most copies in the transmit queue
    limit_packets: int | None = None
    #: most wire bytes in the transmit queue
    limit_bytes: int | None = None
    #: longest wait before a copy's first bit is sent, seconds
    limit_seconds: float | None = None
    #: bytes the serialiser adds to each packet (42 for Ethernet+IPv4+UDP, 0 on raw radio)
    overhead: int = 0
    #: netem's cellsize: the packet is sent in whole cells of this many bytes
    cell_size: int | None = None
    #: bytes added to every cell
    cell_overhead: int = 0

    def __post_init__(self) -> None:
        if self.rate_bps is not None:
            if not _is_number(self.rate_bps) or not (math.isfinite(self.rate_bps) and self.rate_bps > 0):
                raise ValueError(f"rate_bps must be a positive number of bits per second or None, not {self.rate_bps!r}")
            object.__setattr__(self, "rate_bps", float(self.rate_bps))
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not _is_number(value) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
            object.__setattr__(self, name, float(value))
        if self.jitter_dist not in JITTER_DISTRIBUTIONS:
            raise ValueError(f"jitter_dist must be one of {', '.join(JITTER_DISTRIBUTIONS)}, not {self.jitter_dist!r}")
        for name in ("loss", "duplicate", "corrupt"):
            object.__setattr__(self, name, _probability(name, getattr(self, name)))
        if self.gemodel is not None:
            if isinstance(self.gemodel, (str, bytes)) or not isinstance(self.gemodel, Sequence) or len(self.gemodel) != 4:
                raise ValueError(f"gemodel must be (p, r, 1-h, 1-k), not {self.gemodel!r}")
            names = ("gemodel p", "gemodel r", "gemodel 1-h", "gemodel 1-k")
            gemodel = tuple(_probability(n, v) for n, v in zip(names, self.gemodel))
            object.__setattr__(self, "gemodel", gemodel)
            if self.loss > 0:
                raise ValueError("give either loss (random) or gemodel, not both")
        for name in ("limit_packets", "limit_bytes"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 0):
                raise ValueError(f"{name} must be an int >= 0 or None, not {value!r}")
        if self.limit_seconds is not None:
            if not _is_number(self.limit_seconds) or not (math.isfinite(self.limit_seconds) and self.limit_seconds >= 0):
                raise ValueError(f"limit_seconds must be a finite number >= 0 or None, not {self.limit_seconds!r}")
            object.__setattr__(self, "limit_seconds", float(self.limit_seconds))
        if not _is_int(self.overhead):
            raise ValueError(f"overhead must be an int (may be negative), not {self.overhead!r}")
        if not _is_int(self.cell_overhead):
            raise ValueError(f"cell_overhead must be an int, not {self.cell_overhead!r}")
        if self.cell_size is None:
            if self.cell_overhead != 0:
                raise ValueError("cell_overhead needs cell_size")
        elif not (_is_int(self.cell_size) and self.cell_size > 0):
            raise ValueError(f"cell_size must be an int > 0 or None, not {self.cell_size!r}")
        elif self.cell_size + self.cell_overhead <= 0:
            raise ValueError("cell_size + cell_overhead must be > 0")

    def wire_bytes(self, size: int) -> int:
        """Bytes the serialiser sends for a packet of `size` bytes (netem's packet_time_ns).

        ``size + overhead`` (never below 0), then with cells: whole cells of
        `cell_size`, each sent as ``cell_size + cell_overhead`` bytes.
        """
        length = max(0, size + self.overhead)
        if self.cell_size is not None:
            cells = -(-length // self.cell_size)
            length = cells * (self.cell_size + self.cell_overhead)
        return length

    def transmission_time(self, size: int) -> float:
        """Seconds the serialiser is busy with a packet of `size` bytes (0 without a rate)."""
        return transmission_time(self.wire_bytes(size), self.rate_bps)

    @classmethod
    def from_netem_args(cls, args: str | Sequence[str]) -> LinkProfile:
        """Parse the arguments after `tc qdisc ... netem`.

        Accepts ``limit N``, ``delay|latency TIME [JITTER]``,
        ``distribution normal|pareto|paretonormal|uniform``,
        ``loss|drop [random] PERCENT``, ``loss gemodel p [r [1-h [1-k]]]``
        (tc's defaults: r = 1-p, 1-h = 100%, 1-k = 0%), ``duplicate PERCENT``,
        ``corrupt PERCENT`` and ``rate RATE [PACKETOVERHEAD [CELLSIZE
        [CELLOVERHEAD]]]`` (also ``packetoverhead``/``cellsize``/``celloverhead``
        as keywords, the way tc prints them).  Units as tc: see
        `meshsim.model.netem`.
        Keywords must be spelt out (tc also takes prefixes).  Anything not
        modelled (a non-zero correlation, reorder, gap, slot, ecn, seed, loss
        state, a rate in %) raises ValueError rather than being ignored.
        """
        return cls(**parse_netem_fields(args.split() if isinstance(args, str) else list(args)))

    def to_netem_args(self, *, counted_by_kernel: int = 0) -> str:
        """These parameters as `tc qdisc ... netem` arguments.

        `counted_by_kernel`: bytes of `overhead` that the kernel already counts
        in the skb length (e.g. 42 when `size` is a UDP payload and netem sits
        on an Ethernet device); they are subtracted from the packet overhead.
        Without a rate netem ignores overheads, so none are written.  Raises
        ValueError for what netem cannot express (byte/time limits, a
        distribution without a delay).  Note tc rounds the rate down to whole
        bytes per second.
        """
        return format_netem_fields(asdict(self), counted_by_kernel=counted_by_kernel)


def _probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], not {value!r}")
    return float(value)


def transmission_time(wire_bytes: int, rate_bps: float | None) -> float:
    """Seconds a serialiser at `rate_bps` is busy with `wire_bytes` (0 without a rate)."""
    return 0.0 if rate_bps is None else wire_bytes * 8 / rate_bps


def netem_kernel_rate_bps(rate_bps: float) -> float:
    """The rate Linux netem really applies for ``rate <rate_bps>bit``.

    tc divides by 8 and truncates to whole bytes per second (100 → 96).
    """
    return float(int(Decimal(repr(rate_bps)) / 8) * 8)


def gemodel_loss_rate(gemodel: GilbertElliottParams) -> float:
    """Long-run fraction of packets Gilbert-Elliott loses, starting in the good state.

    The state before each transition decides the loss, and the chain's
    stationary distribution is π_bad = p / (p + r).  With p = r = 0 the
    chain stays good for ever.
    """
    p, r, loss_bad, loss_good = gemodel
    if p + r == 0:
        return loss_good
    bad = p / (p + r)
    return bad * loss_bad + (1 - bad) * loss_good


def describe_profile(profile: LinkProfile) -> str:
    """One line for people: the netem equivalent, then what netem cannot say."""
    netem = replace(profile, overhead=0, limit_bytes=None, limit_seconds=None).to_netem_args()
    parts = [netem or "unshaped", f"overhead {profile.overhead} B"]
    if profile.limit_bytes is not None:
        parts.append(f"limit {profile.limit_bytes} B")
    if profile.limit_seconds is not None:
        parts.append(f"limit {profile.limit_seconds:g} s")
    return ", ".join(parts)
