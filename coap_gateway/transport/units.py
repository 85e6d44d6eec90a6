"""Rates, times and percentages in tc-netem's units: ``100bit``, ``1.5s``, ``20%``.

The gateways take link timing on their command lines (``--link-rate 100bit``)
and meshsim takes whole netem argument lists; both read the units here, so a
rate means the same everywhere.  Units are tc's: times need a unit (s, ms,
us…), rates are bit/s with bit, kbit, mbit… or bytes/s with bps (as tc),
percentages carry "%".  Decimal arithmetic keeps the conversions exact.
"""

from __future__ import annotations

import re
from decimal import Decimal

_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")

# tc_util.c get_time64(): seconds as powers of ten
_TIME_EXPONENTS = {
    **dict.fromkeys(("s", "sec", "secs"), 0),
    **dict.fromkeys(("ms", "msec", "msecs"), -3),
    **dict.fromkeys(("us", "usec", "usecs"), -6),
    **dict.fromkeys(("ns", "nsec", "nsecs"), -9),
}

# tc_util.c suffixes[] (matched case-insensitively, so "bps" is bytes/s: "Bps")
_RATE_SCALES = {
    name.lower(): Decimal(scale)
    for name, scale in [
        ("bit", 1), ("kibit", 1024), ("kbit", 1000), ("mibit", 1024**2), ("mbit", 1000**2),
        ("gibit", 1024**3), ("gbit", 1000**3), ("tibit", 1024**4), ("tbit", 1000**4),
        ("bps", 8), ("kibps", 8 * 1024), ("kbps", 8000), ("mibps", 8 * 1024**2), ("mbps", 8 * 1000**2),
        ("gibps", 8 * 1024**3), ("gbps", 8 * 1000**3), ("tibps", 8 * 1024**4), ("tbps", 8 * 1000**4),
    ]
}


def _split_number(token: str, what: str) -> tuple[Decimal, str]:
    match = _NUMBER.match(token)
    if match is None:
        raise ValueError(f"{what}: expected a number, got {token!r}")
    return Decimal(match.group()), token[match.end():]


def parse_netem_time(token: str) -> float:
    """Seconds from a tc time: ``1.5s``, ``200ms``, ``250us``, ``10ns`` (also sec/msec/usec/nsec[s]).

    A bare number is refused: old tc reads it as µs, newer tc as ns.
    """
    value, unit = _split_number(token, "time")
    exponent = _TIME_EXPONENTS.get(unit.lower())
    if exponent is None:
        raise ValueError(f"time {token!r} needs a unit: s, ms, us or ns")
    return float(value.scaleb(exponent))


def parse_netem_rate(token: str) -> float:
    """Bits per second from a tc rate: ``100bit``, ``1kbit`` (1000), ``1Kibit`` (1024),
    ``1mbit``, ``1bps`` (bytes/s: 8 bit/s, as tc reads it), ``1kbps`` (8000) ...

    A bare number or a percentage of the device speed is refused.
    """
    value, unit = _split_number(token, "rate")
    scale = _RATE_SCALES.get(unit.lower())
    if scale is None:
        raise ValueError(f"rate {token!r} needs a unit such as bit, kbit, mbit, bps (bytes/s)")
    if value == 0:
        raise ValueError("rate must be > 0")
    return float(value * scale)


def parse_netem_percent(token: str) -> float:
    """A probability from a tc percentage: ``20%`` or ``20`` (tc reads both as 20%)."""
    value, rest = _split_number(token, "percentage")
    if rest not in ("", "%"):
        raise ValueError(f"not a percentage: {token!r}")
    if value > 100:
        raise ValueError(f"percentage over 100: {token!r}")
    return float(value.scaleb(-2))


def _plain(value: Decimal) -> str:
    # no exponent: tc's strtod would read one, but people should not have to
    return format(value.normalize(), "f")


def format_netem_time(seconds: float) -> str:
    """A tc time that `parse_netem_time` reads back as exactly `seconds`."""
    exact = Decimal(repr(float(seconds)))
    for unit, exponent in (("s", 0), ("ms", -3), ("us", -6), ("ns", -9)):
        scaled = exact.scaleb(-exponent)
        if scaled == scaled.to_integral_value():
            return f"{_plain(scaled)}{unit}"
    return f"{_plain(exact)}s"


def format_netem_rate(rate_bps: float) -> str:
    """A tc rate that `parse_netem_rate` reads back as exactly `rate_bps`."""
    exact = Decimal(repr(float(rate_bps)))
    for unit, scale in (("gbit", 1000**3), ("mbit", 1000**2), ("kbit", 1000)):
        scaled = exact / scale
        if scaled >= 1 and scaled == scaled.to_integral_value():
            return f"{_plain(scaled)}{unit}"
    return f"{_plain(exact)}bit"


def format_netem_percent(probability: float) -> str:
    """A tc percentage that `parse_netem_percent` reads back as exactly `probability`."""
    return f"{_plain(Decimal(repr(float(probability))).scaleb(2))}%"


__all__ = [
    "format_netem_percent",
    "format_netem_rate",
    "format_netem_time",
    "parse_netem_percent",
    "parse_netem_rate",
    "parse_netem_time",
]
