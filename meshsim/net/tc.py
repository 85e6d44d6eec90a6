"""Linux tc commands for one shaped interface, as pure functions (sans-I/O).

`plan(profile, caps)` decides how a `LinkProfile` maps onto the qdiscs this
kernel has, and says what will be missing or approximate; `setup_commands`,
`change_commands` and `teardown_commands` turn a plan into ``tc`` argv lists;
`parse_qdisc_stats` reads ``tc -s qdisc show``.  Nothing here runs a process
(`meshsim.net.kernel` does).

Shapers, best first:

- **netem** (where the kernel has it): one ``netem`` qdisc with
  ``LinkProfile.to_netem_args()``: every feature, limits in packets.
- **htb** (default without netem): ``htb`` root, one class at ``rate`` =
  ``ceil``, a bfifo/pfifo leaf as the queue.  htb lets a class's tokens go
  negative, so the burst can be 1 byte whatever the packet size: after an
  idle period only the packet being sent passes at once, never more.
- **tbf**: ``tbf`` with an explicit bfifo/pfifo child.  tbf drops any
  packet longer than its burst, so the burst must hold the largest frame
  (MTU + 14) and that much credit builds up while the link idles: at 100
  bit/s with MTU 1500 that is 1514 B = 126 s of unshaped traffic (the 2019
  meshsim's mistake).  Use it with a small MTU, or use htb.

Without netem, delay, jitter, loss, duplication and corruption cannot be done
at all: `plan` lists them in `ShapingPlan.missing` instead of dropping them
silently, so a scenario can refuse (`ShapingPlan.require_complete`) or warn.

Lengths: on a veth the kernel charges each packet its skb length, the
Ethernet frame: 14 B header + IP packet.  A `LinkProfile` charges
``size + overhead``; meshsim's sizes are UDP payloads with ``overhead=42``
(Ethernet + IPv4 + UDP), so by default the kernel already counts 42 B of the
overhead (`counted_by_kernel`) and only the rest is passed to tc.  For
profiles whose sizes are IP packets pass ``counted_by_kernel=14``.  netem
takes a negative remainder (a raw-radio profile with ``overhead=0``); htb and
tbf only take 0..65535, so a negative one is reported as missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from coap_gateway.transport import format_netem_rate

from ..model import LinkProfile, netem_kernel_rate_bps

ETHERNET_HEADER_BYTES = 14
#: Ethernet + IPv4 + UDP: what the kernel counts beyond a UDP payload on a veth
UDP_IPV4_ETHERNET_BYTES = 42
DEFAULT_MTU = 1500
#: a queue limit when the profile gives none: this much traffic (not netem's 1000 packets)
DEFAULT_QUEUE_SECONDS = 2.0
#: the burst covers at least this much traffic, so a softirq that runs a little
#: late does not lose the rate (the classic burst >= rate/HZ rule, with a floor
#: because /proc/net/psched reports HZ = 1e9 on high-resolution timers)
TIMER_SLACK_SECONDS = 0.001
#: htb clamps a class's debt at 60 s (mbuffer in sch_htb.c): a longer packet is undercharged
HTB_MAX_DEBT_SECONDS = 60.0
#: tc's overhead field is a u16
MAX_TC_OVERHEAD = 0xFFFF
#: the lowest rate tc accepts: it stores whole bytes per second
MIN_RATE_BPS = 8

#: one class, so the DRR quantum only has to be set (htb warns when rate/r2q is small)
HTB_QUANTUM = 1514

ROOT_HANDLE = "1:"
CLASS_ID = "1:1"
LEAF_HANDLE = "10:"

Shaper = Literal["netem", "htb", "tbf", "none"]
ShaperChoice = Literal["auto", "netem", "htb", "tbf"]

#: features only netem has, with the LinkProfile field that asks for each
_NETEM_ONLY = (
    ("delay", "delay"),
    ("jitter", "jitter"),
    ("loss", "loss"),
    ("gemodel", "gemodel"),
    ("duplicate", "duplicate"),
    ("corrupt", "corrupt"),
)


@dataclass(frozen=True)
class KernelCaps:
    """What the running kernel can do, as far as shaping is concerned."""

    #: qdisc kinds that a test `tc qdisc add` accepted
    qdiscs: frozenset[str]
    #: tc's HZ (the 4th field of /proc/net/psched when the 3rd is 1000000)
    hz: int = 1_000_000_000

    @property
    def netem(self) -> bool:
        return "netem" in self.qdiscs


@dataclass(frozen=True)
class Gap:
    """A profile feature the kernel will not apply (or will apply differently)."""

    feature: str
    detail: str

    def __str__(self) -> str:
        return f"{self.feature}: {self.detail}"


class UnsupportedFeatures(Exception):
    """A profile asks for what this kernel cannot do."""

    def __init__(self, gaps: Sequence[Gap], where: str = "") -> None:
        self.gaps = tuple(gaps)
        prefix = f"{where}: " if where else ""
        super().__init__(prefix + "the kernel backend cannot apply " + "; ".join(map(str, self.gaps)))


@dataclass(frozen=True)
class Fifo:
    """The queue under a rate shaper: ``bfifo limit BYTES`` or ``pfifo limit PACKETS``."""

    kind: Literal["bfifo", "pfifo"]
    limit: int


@dataclass(frozen=True)
class ShapingPlan:
    """How one direction of a link is shaped, and what that leaves out."""

    shaper: Shaper
    #: the rate the profile asked for, and what the kernel applies (whole bytes/s)
    rate_bps: float | None = None
    kernel_rate_bps: float | None = None
    #: htb/tbf token bucket depth, bytes
    burst_bytes: int | None = None
    fifo: Fifo | None = None
    #: htb/tbf per-packet overhead (the part of the profile's the kernel does not count)
    overhead: int = 0
    linklayer: Literal["atm"] | None = None
    #: the words after ``netem`` (netem only)
    netem_args: tuple[str, ...] = ()
    #: after an idle period the first packet leaves at once (see "serialisation");
    #: at most this many bytes more may follow it unshaped (htb: 1, tbf: the burst)
    idle_credit_bytes: int = 0
    #: features the profile asks for that the kernel will not apply
    missing: tuple[Gap, ...] = ()
    #: features applied, but not as the userspace model does
    approximations: tuple[Gap, ...] = field(default=(), compare=False)

    @property
    def complete(self) -> bool:
        return not self.missing

    def require_complete(self, where: str = "") -> None:
        if self.missing:
            raise UnsupportedFeatures(self.missing, where)


# ---------------------------------------------------------------- plan


def plan(
    profile: LinkProfile,
    caps: KernelCaps,
    *,
    mtu: int = DEFAULT_MTU,
    counted_by_kernel: int = UDP_IPV4_ETHERNET_BYTES,
    shaper: ShaperChoice = "auto",
) -> ShapingPlan:
    """How to shape `profile` on an Ethernet (veth) interface of `mtu` with `caps`.

    `shaper` "auto" takes netem if the kernel has it, else htb, else tbf.
    Raises ValueError for a shaper the kernel lacks or a rate below 8 bit/s.
    """
    if not isinstance(mtu, int) or isinstance(mtu, bool) or mtu < 68:
        raise ValueError(f"mtu must be an int >= 68 (IPv4's minimum), not {mtu!r}")
    if profile.rate_bps is not None and profile.rate_bps < MIN_RATE_BPS:
        raise ValueError(f"tc stores rates in whole bytes per second: {profile.rate_bps} bit/s would be 0")
    if shaper == "auto":
        shaper = next((kind for kind in ("netem", "htb", "tbf") if kind in caps.qdiscs), "tbf")
        if shaper not in caps.qdiscs:
            return _plan_nothing(profile, "this kernel has none of netem, htb, tbf")
    elif shaper not in ("netem", "htb", "tbf"):
        raise ValueError(f"shaper must be auto, netem, htb or tbf, not {shaper!r}")
    elif shaper not in caps.qdiscs:
        raise ValueError(f"this kernel has no {shaper} qdisc (it has: {', '.join(sorted(caps.qdiscs)) or 'none'})")
    max_frame = mtu + ETHERNET_HEADER_BYTES
    if shaper == "netem":
        return _plan_netem(profile, max_frame, counted_by_kernel)
    return _plan_rate(profile, caps, shaper, max_frame, counted_by_kernel)


def _plan_nothing(profile: LinkProfile, why: str) -> ShapingPlan:
    missing = _netem_only_gaps(profile, why)
    if profile.rate_bps is not None:
        missing.append(Gap("rate", why))
    return ShapingPlan("none", rate_bps=profile.rate_bps, missing=tuple(missing))


def _netem_only_gaps(profile: LinkProfile, why: str) -> list[Gap]:
    gaps = []
    for feature, attribute in _NETEM_ONLY:
        value = getattr(profile, attribute)
        if value:
            gaps.append(Gap(feature, f"{value!r} asked, {why}"))
    return gaps


def _plan_netem(profile: LinkProfile, max_frame: int, counted_by_kernel: int) -> ShapingPlan:
    approximations: list[Gap] = []
    limit_packets = profile.limit_packets
    if profile.rate_bps is not None:
        rate_bytes = netem_kernel_rate_bps(profile.rate_bps) / 8
        if limit_packets is None:
            # netem counts packets, including those still in their delay
            queue_bytes, source = _queue_bytes(profile, rate_bytes)
            in_delay = math.ceil((profile.delay + profile.jitter) * rate_bytes / max_frame)
            limit_packets = max(1, math.ceil(queue_bytes / max_frame)) + in_delay
            approximations.append(Gap(
                "limit", f"netem counts packets: {source} ({queue_bytes} B) and what its delay holds "
                f"become limit {limit_packets} (in {max_frame}-B frames)"))
        elif profile.delay or profile.jitter:
            approximations.append(Gap("limit", "netem's limit also counts packets still in their delay"))
        approximations += _rate_rounding(profile.rate_bps)
    elif profile.limit_bytes is not None or profile.limit_seconds is not None:
        approximations.append(Gap("limit", "without a rate nothing queues; netem keeps its default limit"))
    netem_profile = replace(profile, limit_packets=limit_packets, limit_bytes=None, limit_seconds=None)
    args = tuple(netem_profile.to_netem_args(counted_by_kernel=counted_by_kernel).split())
    if not args:
        return ShapingPlan("none")
    kernel_rate = None if profile.rate_bps is None else netem_kernel_rate_bps(profile.rate_bps)
    return ShapingPlan(
        "netem",
        rate_bps=profile.rate_bps,
        kernel_rate_bps=kernel_rate,
        overhead=profile.overhead - counted_by_kernel,
        netem_args=args,
        approximations=tuple(approximations),
    )


def _plan_rate(
    profile: LinkProfile, caps: KernelCaps, shaper: Literal["htb", "tbf"], max_frame: int, counted_by_kernel: int
) -> ShapingPlan:
    why = f"{shaper} was chosen instead of netem" if caps.netem else "this kernel has no netem"
    missing = _netem_only_gaps(profile, why)
    if profile.rate_bps is None:
        return ShapingPlan("none", missing=tuple(missing))
    approximations = _rate_rounding(profile.rate_bps)
    kernel_rate = netem_kernel_rate_bps(profile.rate_bps)
    rate_bytes = kernel_rate / 8

    overhead = profile.overhead - counted_by_kernel
    if overhead < 0:
        missing.append(Gap(
            "overhead", f"the profile counts {profile.overhead} B per packet but the kernel already counts "
            f"{counted_by_kernel} B and {shaper} cannot subtract: each packet costs {-overhead / rate_bytes:g} s more"))
        overhead = 0
    elif overhead > MAX_TC_OVERHEAD:
        raise ValueError(f"tc's packet overhead is at most {MAX_TC_OVERHEAD} B, not {overhead}")

    linklayer: Literal["atm"] | None = None
    if profile.cell_size is not None:
        if (profile.cell_size, profile.cell_overhead) == (48, 5):
            linklayer = "atm"  # tc's only cell model: 48-byte cells sent as 53
        else:
            missing.append(Gap("cell_size", f"{shaper} only has ATM cells (48 + 5), not {profile.cell_size} + {profile.cell_overhead}"))

    timer_bytes = math.ceil(rate_bytes * max(1 / caps.hz, TIMER_SLACK_SECONDS))
    if shaper == "htb":
        burst = max(1, timer_bytes)
        idle_credit = burst
        max_charge = HTB_MAX_DEBT_SECONDS * rate_bytes + burst
        if max_frame + overhead > max_charge:
            approximations.append(Gap(
                "rate", f"htb charges a packet at most {HTB_MAX_DEBT_SECONDS:g} s: frames over "
                f"{int(max_charge) - overhead} B leave early (an MTU of at most "
                f"{int(max_charge) - overhead - ETHERNET_HEADER_BYTES} avoids it)"))
    else:
        # tbf drops a packet longer than its burst, so the burst holds the largest frame
        burst = max(max_frame, timer_bytes)
        idle_credit = burst
        approximations.append(Gap(
            "burst", f"tbf's bucket must hold a {max_frame}-B frame: after an idle period up to {burst} B "
            f"({(burst + overhead) / rate_bytes:g} s) pass unshaped; lower the MTU or use htb"))
    approximations.append(Gap(
        "serialisation", f"{shaper} releases a packet when its transmission would start, not when it ends: "
        f"each packet arrives one transmission time early ({(max_frame + overhead) / rate_bytes:g} s for a full frame)"))

    fifo, fifo_notes, fifo_missing = _fifo(profile, rate_bytes, max_frame)
    return ShapingPlan(
        shaper,
        rate_bps=profile.rate_bps,
        kernel_rate_bps=kernel_rate,
        burst_bytes=burst,
        fifo=fifo,
        overhead=overhead,
        linklayer=linklayer,
        idle_credit_bytes=idle_credit,
        missing=tuple(missing + fifo_missing),
        approximations=tuple(approximations + fifo_notes),
    )


def _rate_rounding(rate_bps: float) -> list[Gap]:
    kernel_rate = netem_kernel_rate_bps(rate_bps)
    if kernel_rate == rate_bps:
        return []
    return [Gap("rate", f"tc stores whole bytes per second: {rate_bps:g} bit/s runs at {kernel_rate:g} bit/s")]


def _queue_bytes(profile: LinkProfile, rate_bytes: float) -> tuple[int, str]:
    """The byte limit the profile asks for (the tighter of bytes and seconds), or the default."""
    candidates = []
    if profile.limit_bytes is not None:
        candidates.append((profile.limit_bytes, f"limit_bytes {profile.limit_bytes}"))
    if profile.limit_seconds is not None:
        candidates.append((math.floor(profile.limit_seconds * rate_bytes), f"limit_seconds {profile.limit_seconds:g}"))
    if not candidates:
        candidates.append((math.floor(DEFAULT_QUEUE_SECONDS * rate_bytes), f"the default {DEFAULT_QUEUE_SECONDS:g} s"))
    return min(candidates)


def _fifo(profile: LinkProfile, rate_bytes: float, max_frame: int) -> tuple[Fifo, list[Gap], list[Gap]]:
    """The fifo under htb/tbf.  The packet being sent has already left the kernel's
    fifo (the model counts it as queued), hence ``N - 1`` for a packet limit."""
    notes: list[Gap] = []
    missing: list[Gap] = []
    has_bytes = profile.limit_bytes is not None or profile.limit_seconds is not None
    if profile.limit_packets is not None:
        if has_bytes:
            missing.append(Gap("limit_packets", "one fifo counts packets or bytes, not both: the byte limit is used"))
        else:
            n = profile.limit_packets
            if n == 1:
                notes.append(Gap("limit", "limit_packets 1: the kernel fifo must admit one packet, so one may wait behind the one being sent"))
            return Fifo("pfifo", 0 if n == 0 else max(1, n - 1)), notes, missing
    queue_bytes, source = _queue_bytes(profile, rate_bytes)
    if profile.limit_bytes is not None and queue_bytes == profile.limit_bytes:
        # a frame bigger than the limit is always dropped, as in the model
        return Fifo("bfifo", queue_bytes), notes, missing
    if queue_bytes >= max_frame:
        return Fifo("bfifo", queue_bytes), notes, missing
    # a byte fifo shorter than a frame would drop full frames even on an idle link
    notes.append(Gap(
        "limit", f"{source} of traffic is {queue_bytes} B, less than one {max_frame}-B frame: "
        "the queue holds one packet behind the one being sent instead"))
    return Fifo("pfifo", 1), notes, missing


# ---------------------------------------------------------------- commands


def _tc(netns: str | None) -> list[str]:
    return ["tc"] if netns is None else ["tc", "-n", netns]


def _size(n: int) -> str:
    return f"{n}b"


def _rate_words(p: ShapingPlan) -> list[str]:
    assert p.rate_bps is not None and p.burst_bytes is not None
    words = ["rate", format_netem_rate(p.rate_bps)]
    if p.shaper == "htb":
        words += ["ceil", format_netem_rate(p.rate_bps)]
        words += ["burst", _size(p.burst_bytes), "cburst", _size(p.burst_bytes)]
    else:
        words += ["burst", _size(p.burst_bytes)]
    return words


def _link_words(p: ShapingPlan) -> list[str]:
    words = []
    if p.overhead:
        words += ["overhead", str(p.overhead)]
    if p.linklayer is not None:
        words += ["linklayer", p.linklayer]
    return words


def _leaf(dev: str, p: ShapingPlan, verb: str, netns: str | None) -> list[str]:
    assert p.fifo is not None
    limit = str(p.fifo.limit) if p.fifo.kind == "pfifo" else _size(p.fifo.limit)
    return [*_tc(netns), "qdisc", verb, "dev", dev, "parent", CLASS_ID, "handle", LEAF_HANDLE, p.fifo.kind, "limit", limit]


def _root(dev: str, p: ShapingPlan, verb: str, netns: str | None) -> list[list[str]]:
    """The root qdisc (and htb's class) with `verb` ("add" or "change")."""
    head = [*_tc(netns), "qdisc", verb, "dev", dev, "root", "handle", ROOT_HANDLE]
    if p.shaper == "netem":
        return [[*head, "netem", *p.netem_args]]
    if p.shaper == "tbf":
        assert p.fifo is not None
        # tbf requires a limit and passes it on to a fifo child, in the child's own
        # unit (fifo_set_limit), so it is given the leaf's limit
        limit = str(p.fifo.limit) if p.fifo.kind == "pfifo" else _size(p.fifo.limit)
        return [[*head, "tbf", *_rate_words(p), "limit", limit, *_link_words(p)]]
    if p.shaper == "htb":
        assert p.burst_bytes is not None
        root = [[*head, "htb", "default", "1"]] if verb == "add" else []
        klass = [*_tc(netns), "class", verb, "dev", dev, "parent", ROOT_HANDLE, "classid", CLASS_ID, "htb",
                 *_rate_words(p), "quantum", str(HTB_QUANTUM), *_link_words(p)]
        return [*root, klass]
    return []


def setup_commands(dev: str, p: ShapingPlan, *, netns: str | None = None) -> list[list[str]]:
    """tc commands that shape `dev` (egress) as `p` says, on a device with no qdisc of ours."""
    commands = _root(dev, p, "add", netns)
    if p.fifo is not None:
        commands.append(_leaf(dev, p, "add", netns))
    return commands


def change_commands(dev: str, old: ShapingPlan, new: ShapingPlan, *, netns: str | None = None) -> list[list[str]]:
    """tc commands that take `dev` from `old` to `new`.

    Same shaper: changed in place (``change``; the leaf by ``replace``), so
    queued packets stay.  Another shaper: the root is deleted and rebuilt,
    which drops what was queued.
    """
    if old == new:
        return []
    if old.shaper == new.shaper and new.shaper != "none":
        commands = _root(dev, new, "change", netns)
        if new.fifo is not None:
            commands.append(_leaf(dev, new, "replace", netns))
        return commands
    commands = teardown_commands(dev, netns=netns) if old.shaper != "none" else []
    return commands + setup_commands(dev, new, netns=netns)


def teardown_commands(dev: str, *, netns: str | None = None) -> list[list[str]]:
    return [[*_tc(netns), "qdisc", "del", "dev", dev, "root"]]


def stats_command(dev: str, *, netns: str | None = None) -> list[str]:
    return [*_tc(netns), "-s", "qdisc", "show", "dev", dev]


#: the least each kind needs to be accepted on `lo`, for capability probes
PROBE_ARGS: dict[str, tuple[str, ...]] = {
    "netem": ("netem", "delay", "1ms"),
    "tbf": ("tbf", "rate", "1mbit", "burst", "1600b", "limit", "3000b"),
    "htb": ("htb", "default", "1"),
    "bfifo": ("bfifo", "limit", "3000b"),
    "pfifo": ("pfifo", "limit", "10"),
}


def probe_commands(kind: str, *, netns: str, dev: str = "lo") -> tuple[list[str], list[str]]:
    """(add, delete) commands that test whether the kernel has qdisc `kind`."""
    add = [*_tc(netns), "qdisc", "add", "dev", dev, "root", *PROBE_ARGS[kind]]
    return add, teardown_commands(dev, netns=netns)[0]


def is_unknown_qdisc_error(stderr: str) -> bool:
    """tc's answer when the kernel has no such qdisc (no module, not built)."""
    return "Specified qdisc kind is unknown" in stderr or "Specified qdisc not found" in stderr


def parse_psched(text: str) -> int:
    """tc's HZ from /proc/net/psched (as tc's get_hz: the 4th field when the 3rd is 1000000)."""
    fields = text.split()
    if len(fields) < 4:
        raise ValueError(f"unexpected /proc/net/psched: {text!r}")
    clock_res, hz = int(fields[2], 16), int(fields[3], 16)
    return hz if clock_res == 1_000_000 and hz > 0 else 100


# ---------------------------------------------------------------- stats


@dataclass(frozen=True)
class QdiscStats:
    """One qdisc's counters from ``tc -s qdisc show``.

    Byte counts are the kernel's lengths (Ethernet frames on a veth).
    `backlog_bytes` is exact only when `backlog_exact`: tc prints a backlog of
    1 KiB or more rounded to Kb/Mb when it is within 16 B (1 KiB) of a multiple.
    """

    kind: str
    handle: str
    #: None for the root qdisc
    parent: str | None
    dev: str | None
    sent_bytes: int = 0
    sent_packets: int = 0
    dropped: int = 0
    overlimits: int = 0
    requeues: int = 0
    backlog_bytes: int = 0
    backlog_packets: int = 0
    backlog_exact: bool = True

    @property
    def is_root(self) -> bool:
        return self.parent is None


_HEADER = re.compile(r"^qdisc (?P<kind>\S+) (?P<handle>\S+)(?: dev (?P<dev>\S+))?(?: (?:(?P<root>root)|parent (?P<parent>\S+)))?")
_SENT = re.compile(r"^\s*Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+) requeues (\d+)\)")
_BACKLOG = re.compile(r"^\s*backlog (\d+(?:\.\d+)?)([KMG]?)b (\d+)p")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_qdisc_stats(text: str) -> list[QdiscStats]:
    """Every qdisc in ``tc -s qdisc show [dev DEV]`` output, in order.

    Lines other than the header, ``Sent`` and ``backlog`` (kind-specific
    details) are skipped.
    """
    result: list[QdiscStats] = []
    current: dict | None = None

    def flush() -> None:
        if current is not None:
            result.append(QdiscStats(**current))

    for line in text.splitlines():
        if header := _HEADER.match(line):
            flush()
            current = {
                "kind": header["kind"],
                "handle": header["handle"],
                "parent": None if header["root"] else header["parent"],
                "dev": header["dev"],
            }
        elif current is None:
            continue
        elif sent := _SENT.match(line):
            keys = ("sent_bytes", "sent_packets", "dropped", "overlimits", "requeues")
            current.update(zip(keys, map(int, sent.groups())))
        elif backlog := _BACKLOG.match(line):
            number, unit, packets = backlog.groups()
            current["backlog_bytes"] = round(float(number) * _SIZE_UNITS[unit])
            current["backlog_packets"] = int(packets)
            current["backlog_exact"] = unit == ""
    flush()
    return result


def root_stats(stats: Sequence[QdiscStats]) -> QdiscStats | None:
    """The root qdisc among `stats` (its counters cover the whole tree)."""
    return next((s for s in stats if s.is_root), None)
