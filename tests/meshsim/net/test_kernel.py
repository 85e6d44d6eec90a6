"""The kernel backend: tc command generation (pure), and namespaces + veth + tc (root).

The pure half checks every argv byte for byte, plan()'s feature gaps, and the
`tc -s qdisc show` parser on output recorded on the project's machine (kernel
6.18, iproute2 6.1, no netem).  The integration half builds 2- and 3-node
topologies in network namespaces, shaped at 8000 bit/s (1000 B/s: a 242-byte
frame takes 0.242 s), and sends real UDP between them; it skips when not root
or without `ip netns`.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace

import pytest

from meshsim.net import tc
from meshsim.net.kernel import (
    LOCK_DIR,
    KernelLayout,
    KernelSupport,
    KernelTopology,
    KernelUnavailable,
    cleanup_stale,
    group_runs,
    netns_name,
    new_run_id,
    parse_netns_list,
)
from meshsim.model import LinkModel, LinkProfile
from meshsim.net.tc import Fifo, Gap, KernelCaps, QdiscStats, UnsupportedFeatures
from meshsim.model import Topology

NO_NETEM = KernelCaps(frozenset({"htb", "tbf", "bfifo", "pfifo"}))
WITH_NETEM = KernelCaps(frozenset({"netem", "htb", "tbf", "bfifo", "pfifo"}))
RADIO = LinkProfile(rate_bps=100, overhead=42)


def chain(*names: str, profile: LinkProfile = RADIO) -> Topology:
    topology = Topology()
    for name in names:
        topology.add_node(name)
    for a, b in itertools.pairwise(names):
        topology.add_link(a, b, profile)
    return topology


def features(gaps: tuple[Gap, ...]) -> list[str]:
    return [gap.feature for gap in gaps]


# ---------------------------------------------------------------- plan: rate shapers


def test_htb_at_100_bits_has_a_one_byte_burst_and_a_one_packet_queue() -> None:
    plan = tc.plan(RADIO, NO_NETEM)
    assert plan.shaper == "htb"
    assert (plan.rate_bps, plan.kernel_rate_bps) == (100.0, 96.0)
    assert plan.burst_bytes == 1 and plan.idle_credit_bytes == 1
    # 2 s at 12 B/s is 24 B, less than one 1514-B frame: one packet waits, not 1000
    assert plan.fifo == Fifo("pfifo", 1)
    assert plan.overhead == 0 and plan.complete
    assert tc.setup_commands("to2", plan, netns="msim-abcdef-a") == [
        ["tc", "-n", "msim-abcdef-a", "qdisc", "add", "dev", "to2", "root", "handle", "1:", "htb", "default", "1"],
        ["tc", "-n", "msim-abcdef-a", "class", "add", "dev", "to2", "parent", "1:", "classid", "1:1", "htb",
         "rate", "100bit", "ceil", "100bit", "burst", "1b", "cburst", "1b", "quantum", "1514"],
        ["tc", "-n", "msim-abcdef-a", "qdisc", "add", "dev", "to2", "parent", "1:1", "handle", "10:", "pfifo", "limit", "1"],
    ]
    notes = {gap.feature: gap.detail for gap in plan.approximations}
    assert "100 bit/s runs at 96 bit/s" in next(g.detail for g in plan.approximations if g.feature == "rate")
    assert "126.167 s" in notes["serialisation"]
    assert "24 B, less than one 1514-B frame" in notes["limit"]
    # a 1514-B frame needs 126 s at 12 B/s but htb charges at most 60 s
    assert any("at most 60 s" in g.detail and "MTU of at most 707" in g.detail for g in plan.approximations)


def test_tbf_burst_is_one_frame_which_is_idle_credit() -> None:
    plan = tc.plan(RADIO, NO_NETEM, shaper="tbf")
    assert plan.burst_bytes == 1514 and plan.idle_credit_bytes == 1514
    burst_note = next(g.detail for g in plan.approximations if g.feature == "burst")
    assert "1514 B (126.167 s) pass unshaped" in burst_note
    assert tc.setup_commands("to2", plan) == [
        ["tc", "qdisc", "add", "dev", "to2", "root", "handle", "1:", "tbf", "rate", "100bit", "burst", "1514b", "limit", "1"],
        ["tc", "qdisc", "add", "dev", "to2", "parent", "1:1", "handle", "10:", "pfifo", "limit", "1"],
    ]
    # a small MTU is how tbf's credit is kept down: MTU 228 -> one 242-B frame
    small = tc.plan(RADIO, NO_NETEM, shaper="tbf", mtu=228)
    assert small.burst_bytes == 242


def test_burst_covers_a_millisecond_at_high_rates() -> None:
    fast = LinkProfile(rate_bps=100_000_000, overhead=42)  # 12.5 MB/s: 12500 B per ms
    assert tc.plan(fast, NO_NETEM).burst_bytes == 12500
    assert tc.plan(fast, NO_NETEM, shaper="tbf").burst_bytes == 12500
    assert tc.plan(LinkProfile(rate_bps=8000), NO_NETEM, counted_by_kernel=0).burst_bytes == 1
    # an old kernel with HZ=100 needs rate/HZ
    assert tc.plan(fast, replace(NO_NETEM, hz=100)).burst_bytes == 125000


def test_8000_bit_commands_with_overhead_and_atm_cells() -> None:
    profile = LinkProfile(rate_bps=8000, overhead=50, cell_size=48, cell_overhead=5, limit_bytes=3000)
    plan = tc.plan(profile, NO_NETEM)
    assert (plan.overhead, plan.linklayer, plan.fifo) == (8, "atm", Fifo("bfifo", 3000))
    assert plan.complete
    assert tc.setup_commands("to1", plan) == [
        ["tc", "qdisc", "add", "dev", "to1", "root", "handle", "1:", "htb", "default", "1"],
        ["tc", "class", "add", "dev", "to1", "parent", "1:", "classid", "1:1", "htb", "rate", "8kbit", "ceil", "8kbit",
         "burst", "1b", "cburst", "1b", "quantum", "1514", "overhead", "8", "linklayer", "atm"],
        ["tc", "qdisc", "add", "dev", "to1", "parent", "1:1", "handle", "10:", "bfifo", "limit", "3000b"],
    ]
    tbf = tc.plan(profile, NO_NETEM, shaper="tbf", counted_by_kernel=14)
    assert tc.setup_commands("to1", tbf) == [
        ["tc", "qdisc", "add", "dev", "to1", "root", "handle", "1:", "tbf", "rate", "8kbit", "burst", "1514b",
         "limit", "3000b", "overhead", "36", "linklayer", "atm"],
        ["tc", "qdisc", "add", "dev", "to1", "parent", "1:1", "handle", "10:", "bfifo", "limit", "3000b"],
    ]


@pytest.mark.parametrize(
    ("limits", "fifo"),
    [
        ({}, Fifo("bfifo", 2000)),  # the default: 2 s of traffic
        ({"limit_packets": 0}, Fifo("pfifo", 0)),
        ({"limit_packets": 1}, Fifo("pfifo", 1)),
        # the packet on the wire has left the kernel's fifo but counts in the model
        ({"limit_packets": 3}, Fifo("pfifo", 2)),
        ({"limit_bytes": 5000}, Fifo("bfifo", 5000)),
        # below one frame: big frames are always dropped, as in the model
        ({"limit_bytes": 100}, Fifo("bfifo", 100)),
        ({"limit_seconds": 3.0}, Fifo("bfifo", 3000)),
        ({"limit_seconds": 0.5}, Fifo("pfifo", 1)),  # 500 B < 1514 B
        ({"limit_seconds": 3.0, "limit_bytes": 2500}, Fifo("bfifo", 2500)),
        ({"limit_seconds": 2.5, "limit_bytes": 9000}, Fifo("bfifo", 2500)),
    ],
)
def test_queue_limits_become_a_fifo(limits: dict, fifo: Fifo) -> None:
    plan = tc.plan(LinkProfile(rate_bps=8000, overhead=42, **limits), NO_NETEM)
    assert plan.fifo == fifo
    assert plan.complete


def test_limits_at_a_low_mtu() -> None:
    # 0.5 s at 1000 B/s is 500 B, which holds 242-B frames
    profile = LinkProfile(rate_bps=8000, overhead=42, limit_seconds=0.5)
    assert tc.plan(profile, NO_NETEM, mtu=228).fifo == Fifo("bfifo", 500)


def test_netem_only_features_are_reported_missing_not_dropped() -> None:
    profile = LinkProfile(rate_bps=100, overhead=42, delay=1.0, jitter=0.2, loss=0.05, duplicate=0.01, corrupt=0.001)
    plan = tc.plan(profile, NO_NETEM)
    assert plan.shaper == "htb"
    assert features(plan.missing) == ["delay", "jitter", "loss", "duplicate", "corrupt"]
    assert not plan.complete
    with pytest.raises(UnsupportedFeatures, match=r"a->b: the kernel backend cannot apply delay: 1\.0 asked, this kernel has no netem"):
        plan.require_complete("a->b")
    gemodel = tc.plan(LinkProfile(rate_bps=100, gemodel=(0.1, 0.5, 1.0, 0.0)), NO_NETEM)
    assert "gemodel" in features(gemodel.missing)


def test_without_a_rate_nothing_is_shaped_and_gaps_remain() -> None:
    plan = tc.plan(LinkProfile(delay=0.5), NO_NETEM)
    assert (plan.shaper, features(plan.missing)) == ("none", ["delay"])
    assert tc.setup_commands("to2", plan) == []
    assert tc.plan(LinkProfile(), NO_NETEM) == tc.ShapingPlan("none")


def test_overhead_below_what_the_kernel_counts_is_missing() -> None:
    # a raw radio counts only the payload, the kernel counts Ethernet + IPv4 + UDP
    plan = tc.plan(LinkProfile(rate_bps=100, overhead=0), NO_NETEM)
    assert features(plan.missing) == ["overhead"]
    assert "each packet costs 3.5 s more" in plan.missing[0].detail
    assert plan.overhead == 0
    assert tc.plan(LinkProfile(rate_bps=100, overhead=0), NO_NETEM, counted_by_kernel=0).complete


def test_other_cells_and_two_kinds_of_limit_are_missing() -> None:
    plan = tc.plan(LinkProfile(rate_bps=8000, overhead=42, cell_size=64), NO_NETEM)
    assert features(plan.missing) == ["cell_size"]
    both = tc.plan(LinkProfile(rate_bps=8000, overhead=42, limit_packets=5, limit_bytes=3000), NO_NETEM)
    assert features(both.missing) == ["limit_packets"] and both.fifo == Fifo("bfifo", 3000)


def test_plan_refuses_what_tc_cannot_express() -> None:
    with pytest.raises(ValueError, match="whole bytes per second"):
        tc.plan(LinkProfile(rate_bps=7), NO_NETEM)
    with pytest.raises(ValueError, match="no netem qdisc"):
        tc.plan(RADIO, NO_NETEM, shaper="netem")
    with pytest.raises(ValueError, match="mtu"):
        tc.plan(RADIO, NO_NETEM, mtu=60)
    with pytest.raises(ValueError, match="at most 65535"):
        tc.plan(LinkProfile(rate_bps=100, overhead=70000), NO_NETEM)
    nothing = tc.plan(LinkProfile(rate_bps=100, delay=1.0), KernelCaps(frozenset({"bfifo"})))
    assert nothing.shaper == "none" and features(nothing.missing) == ["delay", "rate"]


# ---------------------------------------------------------------- plan: netem


def test_netem_gets_the_profile_with_the_kernel_counted_overhead_removed() -> None:
    profile = LinkProfile.from_netem_args("rate 100bit delay 1s 200ms loss 5% limit 4")
    profile = replace(profile, overhead=42)
    plan = tc.plan(profile, WITH_NETEM)
    assert (plan.shaper, plan.overhead) == ("netem", 0)
    assert tc.setup_commands("to2", plan, netns="ns") == [
        ["tc", "-n", "ns", "qdisc", "add", "dev", "to2", "root", "handle", "1:", "netem",
         "limit", "4", "delay", "1s", "200ms", "loss", "random", "5%", "rate", "100bit"],
    ]
    assert plan.complete
    assert features(plan.approximations) == ["limit", "rate"]
    # sizes that are IP packets: only the Ethernet header is the kernel's
    ip_sized = tc.plan(replace(profile, overhead=42), WITH_NETEM, counted_by_kernel=tc.ETHERNET_HEADER_BYTES)
    assert ip_sized.netem_args[-2:] == ("100bit", "28")
    # a raw radio profile: netem takes a negative packet overhead
    raw = tc.plan(replace(profile, overhead=0), WITH_NETEM)
    assert raw.netem_args[-2:] == ("100bit", "-42") and raw.complete


def test_netem_limit_in_packets_is_derived_when_not_given() -> None:
    # 2 s of 1000 B/s in 1514-B frames (2) + what 1 s of delay holds (1)
    plan = tc.plan(LinkProfile(rate_bps=8000, overhead=42, delay=1.0), WITH_NETEM)
    assert plan.netem_args == ("limit", "3", "delay", "1s", "rate", "8kbit")
    bytes_limited = tc.plan(LinkProfile(rate_bps=8000, overhead=42, limit_bytes=6000), WITH_NETEM)
    assert bytes_limited.netem_args[:2] == ("limit", "4")
    assert "limit_bytes 6000 (6000 B)" in bytes_limited.approximations[0].detail
    # without a rate nothing queues: netem's own limit stays
    assert tc.plan(LinkProfile(delay=0.1, limit_bytes=10), WITH_NETEM).netem_args == ("delay", "100ms")


def test_auto_prefers_netem_then_htb_then_tbf() -> None:
    assert tc.plan(RADIO, WITH_NETEM).shaper == "netem"
    assert tc.plan(RADIO, NO_NETEM).shaper == "htb"
    assert tc.plan(RADIO, KernelCaps(frozenset({"tbf", "pfifo"}))).shaper == "tbf"
    forced = tc.plan(replace(RADIO, loss=0.1), WITH_NETEM, shaper="htb")
    assert forced.shaper == "htb" and forced.missing == (Gap("loss", "0.1 asked, htb was chosen instead of netem"),)


# ---------------------------------------------------------------- commands


def test_change_in_place_keeps_queues() -> None:
    old = tc.plan(RADIO, NO_NETEM)
    new = tc.plan(LinkProfile(rate_bps=8000, overhead=42), NO_NETEM)
    assert tc.change_commands("to2", old, new, netns="ns") == [
        ["tc", "-n", "ns", "class", "change", "dev", "to2", "parent", "1:", "classid", "1:1", "htb",
         "rate", "8kbit", "ceil", "8kbit", "burst", "1b", "cburst", "1b", "quantum", "1514"],
        ["tc", "-n", "ns", "qdisc", "replace", "dev", "to2", "parent", "1:1", "handle", "10:", "bfifo", "limit", "2000b"],
    ]
    assert tc.change_commands("to2", old, old) == []
    old_tbf, new_tbf = (tc.plan(p, NO_NETEM, shaper="tbf") for p in (RADIO, LinkProfile(rate_bps=8000, overhead=42)))
    assert tc.change_commands("to2", old_tbf, new_tbf) == [
        ["tc", "qdisc", "change", "dev", "to2", "root", "handle", "1:", "tbf", "rate", "8kbit", "burst", "1514b", "limit", "2000b"],
        ["tc", "qdisc", "replace", "dev", "to2", "parent", "1:1", "handle", "10:", "bfifo", "limit", "2000b"],
    ]
    old_netem, new_netem = (tc.plan(p, WITH_NETEM) for p in (RADIO, replace(RADIO, delay=0.5)))
    assert tc.change_commands("to2", old_netem, new_netem) == [
        ["tc", "qdisc", "change", "dev", "to2", "root", "handle", "1:", "netem", "limit", "2", "delay", "500ms", "rate", "100bit"],
    ]


def test_changing_shaper_kind_rebuilds_the_root() -> None:
    shaped = tc.plan(LinkProfile(rate_bps=8000, overhead=42, limit_packets=5), NO_NETEM)
    unshaped = tc.plan(LinkProfile(), NO_NETEM)
    assert tc.change_commands("to2", shaped, unshaped) == [["tc", "qdisc", "del", "dev", "to2", "root"]]
    assert tc.change_commands("to2", unshaped, shaped) == tc.setup_commands("to2", shaped)
    netem = tc.plan(RADIO, WITH_NETEM)
    assert tc.change_commands("to2", netem, shaped) == [
        ["tc", "qdisc", "del", "dev", "to2", "root"],
        *tc.setup_commands("to2", shaped),
    ]


def test_stats_teardown_and_probe_commands() -> None:
    assert tc.stats_command("to3", netns="ns") == ["tc", "-n", "ns", "-s", "qdisc", "show", "dev", "to3"]
    assert tc.teardown_commands("to3") == [["tc", "qdisc", "del", "dev", "to3", "root"]]
    assert tc.probe_commands("netem", netns="p") == (
        ["tc", "-n", "p", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
        ["tc", "-n", "p", "qdisc", "del", "dev", "lo", "root"],
    )
    assert tc.probe_commands("tbf", netns="p")[0][-7:] == ["tbf", "rate", "1mbit", "burst", "1600b", "limit", "3000b"]


# ---------------------------------------------------------------- parsing (recorded on this machine)

# tc -s qdisc show dev to2: htb at 8000 bit/s, 5 frames of 256 B just sent
HTB_BACKLOG = """\
qdisc htb 1: root refcnt 3 r2q 10 default 0x1 direct_packets_stat 0 direct_qlen 1000
 Sent 256 bytes 1 pkt (dropped 0, overlimits 1 requeues 0) 
 backlog 1Kb 4p requeues 0
qdisc bfifo 10: parent 1:1 limit 2000b
 Sent 256 bytes 1 pkt (dropped 0, overlimits 0 requeues 0) 
 backlog 1Kb 4p requeues 0
"""

# tc -s qdisc show (all devices): htb + pfifo limit 2, 10 frames sent, one was an ICMP error
ALL_DEVICES = """\
qdisc noqueue 0: dev lo root refcnt 2 
 Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) 
 backlog 0b 0p requeues 0
qdisc htb 1: dev to1 root refcnt 3 r2q 10 default 0x1 direct_packets_stat 0 direct_qlen 1000
 Sent 284 bytes 1 pkt (dropped 8, overlimits 1 requeues 0) 
 backlog 484b 2p requeues 0
qdisc pfifo 10: dev to1 parent 1:1 limit 2p
 Sent 284 bytes 1 pkt (dropped 8, overlimits 0 requeues 0) 
 backlog 484b 2p requeues 0
"""

# tbf, MTU 228, bfifo 5000 B: 30 frames of 242 B just sent
TBF = """\
qdisc tbf 1: root refcnt 3 rate 8Kbit burst 242b lat 4.76s 
 Sent 242 bytes 1 pkt (dropped 9, overlimits 29 requeues 0) 
 backlog 4840b 20p requeues 0
qdisc bfifo 10: parent 1:1 limit 5000b
 Sent 242 bytes 1 pkt (dropped 9, overlimits 0 requeues 0) 
 backlog 4840b 20p requeues 0
"""

# htb's class lines from `tc -s class show` are not qdiscs and are skipped
NOISE = """\
some preamble
qdisc fq_codel 0: dev eth0 root refcnt 2 limit 10240p flows 1024 quantum 1514 target 5ms interval 100ms memory_limit 32Mb ecn drop_batch 64 
 Sent 123456 bytes 789 pkt (dropped 1, overlimits 0 requeues 2) 
 backlog 0b 0p requeues 2
  maxpacket 1514 drop_overlimit 0 new_flow_count 3 ecn_mark 0
  new_flows_len 0 old_flows_len 0
qdisc ingress ffff: dev eth0 parent ffff:fff1 ---------------- 
 Sent 10 bytes 1 pkt (dropped 0, overlimits 0 requeues 0) 
 backlog 0b 0p requeues 0
"""


def test_parse_htb_with_rounded_backlog() -> None:
    root, leaf = tc.parse_qdisc_stats(HTB_BACKLOG)
    assert root == QdiscStats("htb", "1:", None, None, 256, 1, 0, 1, 0, 1024, 4, backlog_exact=False)
    assert (leaf.kind, leaf.handle, leaf.parent, leaf.is_root) == ("bfifo", "10:", "1:1", False)
    assert tc.root_stats([leaf, root]) is root


def test_parse_all_devices() -> None:
    lo, htb, pfifo = tc.parse_qdisc_stats(ALL_DEVICES)
    assert (lo.kind, lo.dev, lo.is_root, lo.sent_packets) == ("noqueue", "lo", True, 0)
    assert htb == QdiscStats("htb", "1:", None, "to1", 284, 1, 8, 1, 0, 484, 2)
    assert (pfifo.dev, pfifo.parent, pfifo.dropped, pfifo.backlog_exact) == ("to1", "1:1", 8, True)


def test_parse_tbf_and_foreign_qdiscs() -> None:
    root, _ = tc.parse_qdisc_stats(TBF)
    assert (root.kind, root.sent_bytes, root.dropped, root.overlimits, root.backlog_bytes, root.backlog_packets) == (
        "tbf", 242, 9, 29, 4840, 20)
    codel, ingress = tc.parse_qdisc_stats(NOISE)
    assert (codel.kind, codel.sent_bytes, codel.sent_packets, codel.dropped, codel.requeues) == ("fq_codel", 123456, 789, 1, 2)
    assert (ingress.kind, ingress.parent, ingress.sent_bytes) == ("ingress", "ffff:fff1", 10)
    assert tc.parse_qdisc_stats("") == []


def test_parse_psched_and_tc_errors() -> None:
    # /proc/net/psched here: high-resolution timers report HZ = 1e9
    assert tc.parse_psched("000003e8 00000040 000f4240 3b9aca00\n") == 1_000_000_000
    assert tc.parse_psched("000003e8 00000040 000f4240 000003e8\n") == 1000
    assert tc.parse_psched("00000001 00000001 00000064 00000064\n") == 100  # not 1 MHz: tc assumes 100
    with pytest.raises(ValueError):
        tc.parse_psched("")
    assert tc.is_unknown_qdisc_error("Error: Specified qdisc kind is unknown.\n")
    assert not tc.is_unknown_qdisc_error("RTNETLINK answers: Operation not permitted\n")


# ---------------------------------------------------------------- layout (pure)


def test_namespace_and_device_names() -> None:
    assert netns_name("0a1b2c", "alice", 1) == "msim-0a1b2c-alice"
    assert netns_name("0a1b2c", "bad/name with spaces", 7) == "msim-0a1b2c-n7"
    with pytest.raises(ValueError):
        netns_name("xyz", "a", 1)
    assert len(new_run_id()) == 6
    assert parse_netns_list("msim-0a1b2c-a (id: 3)\nother\nmsim-0a1b2c-b\n\n") == ["msim-0a1b2c-a", "other", "msim-0a1b2c-b"]
    names = ["msim-0a1b2c-a", "msim-0a1b2c-b", "msim-ffffff-x", "msim-probe", "mine"]
    assert group_runs(names) == {"0a1b2c": ["msim-0a1b2c-a", "msim-0a1b2c-b"], "ffffff": ["msim-ffffff-x"]}
    assert group_runs(names, prefix="msim-ff") == {"ffffff": ["msim-ffffff-x"]}


def test_layout_commands_for_a_chain() -> None:
    layout = KernelLayout(chain("a", "b", "c"), "0a1b2c", mtu=228)
    assert layout.namespace_commands("a") == [
        ["ip", "netns", "add", "msim-0a1b2c-a"],
        ["ip", "netns", "exec", "msim-0a1b2c-a", "sysctl", "-q", "-e", "-w", "net.ipv4.ip_forward=1",
         "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
         "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
        ["ip", "-n", "msim-0a1b2c-a", "link", "set", "lo", "up"],
        ["ip", "-n", "msim-0a1b2c-a", "addr", "add", "10.77.0.1/32", "dev", "lo"],
    ]
    assert layout.link_commands("b", "c") == [
        ["ip", "link", "add", "name", "to3", "address", "02:4d:53:00:01:01", "mtu", "228", "netns", "msim-0a1b2c-b",
         "type", "veth", "peer", "name", "to2", "address", "02:4d:53:00:01:02", "mtu", "228", "netns", "msim-0a1b2c-c"],
        ["ip", "-n", "msim-0a1b2c-b", "addr", "add", "10.78.0.5/30", "dev", "to3"],
        ["ip", "-n", "msim-0a1b2c-c", "addr", "add", "10.78.0.6/30", "dev", "to2"],
        ["ip", "-n", "msim-0a1b2c-b", "link", "set", "to3", "up"],
        ["ip", "-n", "msim-0a1b2c-c", "link", "set", "to2", "up"],
        ["ip", "-n", "msim-0a1b2c-b", "neigh", "replace", "10.78.0.6", "lladdr", "02:4d:53:00:01:02", "dev", "to3", "nud", "permanent"],
        ["ip", "-n", "msim-0a1b2c-c", "neigh", "replace", "10.78.0.5", "lladdr", "02:4d:53:00:01:01", "dev", "to2", "nud", "permanent"],
    ]
    assert layout.link_state_commands("a", "b", up=False) == [
        ["ip", "-n", "msim-0a1b2c-a", "link", "set", "to2", "down"],
        ["ip", "-n", "msim-0a1b2c-b", "link", "set", "to1", "down"],
    ]
    assert layout.exec_argv("c", ["true"]) == ["ip", "netns", "exec", "msim-0a1b2c-c", "true"]
    assert layout.teardown_commands() == [["ip", "netns", "del", f"msim-0a1b2c-{n}"] for n in "abc"]


def test_routes_follow_the_topology_and_its_failures() -> None:
    topology = chain("a", "b", "c")
    layout = KernelLayout(topology, "0a1b2c")
    routes = layout.route_commands()
    assert routes[:2] == [
        ["ip", "-n", "msim-0a1b2c-a", "route", "replace", "10.77.0.2/32", "via", "10.78.0.2", "dev", "to2", "src", "10.77.0.1"],
        ["ip", "-n", "msim-0a1b2c-a", "route", "replace", "10.77.0.3/32", "via", "10.78.0.2", "dev", "to2", "src", "10.77.0.1"],
    ]
    assert routes[4] == ["ip", "-n", "msim-0a1b2c-c", "route", "replace", "10.77.0.1/32", "via", "10.78.0.5", "dev", "to2", "src", "10.77.0.3"]
    assert len(routes) == 6
    topology.fail("b", "c", now=0.0)
    routes = layout.route_commands()
    assert routes[1] == ["ip", "-n", "msim-0a1b2c-a", "route", "replace", "unreachable", "10.77.0.3/32"]
    assert routes[4] == ["ip", "-n", "msim-0a1b2c-c", "route", "replace", "unreachable", "10.77.0.1/32"]


def test_refusal_happens_before_anything_is_built() -> None:
    support = KernelSupport(root=True, netns=True, qdiscs=NO_NETEM.qdiscs, hz=NO_NETEM.hz, problems=())
    kernel = KernelTopology(chain("a", "b", profile=replace(RADIO, delay=0.5)), support=support)
    with pytest.raises(UnsupportedFeatures, match=r"a->b delay: 0\.5 asked.*b->a delay"):
        kernel.build()
    unavailable = KernelSupport(root=False, netns=False, qdiscs=frozenset(), hz=100, problems=("not root (euid 1000)",))
    assert not unavailable.usable
    with pytest.raises(KernelUnavailable, match="not root"):
        KernelTopology(chain("a", "b"), support=unavailable).build()


# ---------------------------------------------------------------- integration (root, ip netns)

RATE = 8000
PAYLOAD = 200
FRAME = PAYLOAD + tc.UDP_IPV4_ETHERNET_BYTES  # what the kernel counts on a veth
TX = FRAME * 8 / RATE  # 0.242 s
TOLERANCE = 0.005  # timestamping in userspace
SHAPED = LinkProfile(rate_bps=RATE, overhead=tc.UDP_IPV4_ETHERNET_BYTES)

RECEIVER = """
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
expected, timeout = int(sys.argv[3]), float(sys.argv[4])
sock.settimeout(timeout)
print("ready", flush=True)
arrivals = []
try:
    while len(arrivals) < expected:
        sock.recv(65535)
        arrivals.append(time.monotonic())
except TimeoutError:
    pass
print(json.dumps(arrivals), flush=True)
"""

# bursts: [[idle seconds, packets, payload bytes], ...]; prints [send time, errno or null] per packet
SENDER = """
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
destination = (sys.argv[1], int(sys.argv[2]))
sent = []
for idle, count, size in json.loads(sys.argv[3]):
    time.sleep(idle)
    for _ in range(count):
        now = time.monotonic()
        try:
            sock.sendto(bytes(size), destination)
            sent.append([now, None])
        except OSError as error:
            sent.append([now, error.errno])
print(json.dumps(sent))
"""


def transfer(
    kernel: KernelTopology, src: str, dst: str, bursts: list[list], *, expected: int, timeout: float = 2.0, port: int = 9000
) -> tuple[list[list], list[float]]:
    """Send `bursts` from `src` to `dst`'s node address; (sent, arrival times)."""
    receiver = kernel.popen(dst, [sys.executable, "-c", RECEIVER, kernel.node_ip(dst), str(port), str(expected), str(timeout)],
                            stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    sender = kernel.run(src, [sys.executable, "-c", SENDER, kernel.node_ip(dst), str(port), json.dumps(bursts)])
    out, _ = receiver.communicate(timeout=60)
    return json.loads(sender.stdout), json.loads(out)


def namespaces() -> list[str]:
    return parse_netns_list(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout)


def run_namespaces(run_id: str) -> list[str]:
    return [name for name in namespaces() if name.startswith(f"msim-{run_id}-")]


def not_sooner_than_serialised(arrivals: list[float], start: float, tx: float = TX) -> bool:
    """Arrival i is at least i transmission times after `start` (checked cumulatively:
    a late timestamp on one arrival only shortens the gap after it)."""
    return all(arrival - start >= i * tx - TOLERANCE for i, arrival in enumerate(arrivals))


@pytest.mark.parametrize(("shaper", "mtu"), [("tbf", FRAME - 14), ("htb", 1500)])
def test_two_nodes_rate_idle_credit_counters_and_reshaping(kernel_support: KernelSupport, shaper: str, mtu: int) -> None:
    """tbf needs an MTU whose frame is the test's packet (its burst is one frame); htb does not."""
    with KernelTopology(chain("a", "b", profile=SHAPED), shaper=shaper, mtu=mtu) as kernel:  # type: ignore[arg-type]
        assert kernel.plans["a->b"].shaper == shaper
        before = kernel.counters("a", "b")
        # 8 back to back; idle until well after they drained; then 4 more
        sent, arrivals = transfer(kernel, "a", "b", [[0, 8, PAYLOAD], [8 * TX + 0.6, 4, PAYLOAD]], expected=12)
        assert len(arrivals) == 12 and all(errno is None for _, errno in sent)
        first, second = arrivals[:8], arrivals[8:]
        # the first packet leaves at once (its transmission is "pre-paid"), each next one waits
        # for the one before: packet i arrives no sooner than i transmission times after the send
        assert not_sooner_than_serialised(first, sent[0][0])
        assert first[-1] - sent[0][0] <= 8 * TX + 0.25
        # after idling, no credit beyond the packet being sent
        assert second[0] - sent[8][0] < TX / 2
        assert not_sooner_than_serialised(second, sent[8][0])
        after = kernel.counters("a", "b")
        assert after.sent_packets - before.sent_packets == 12
        assert after.sent_bytes - before.sent_bytes == 12 * FRAME
        assert (after.dropped, after.backlog_packets) == (0, 0)
        # the reverse direction carried nothing: no ARP, no IPv6, no ICMP
        assert kernel.counters("b", "a").sent_packets == 0

        kernel.set_link("a", "b", replace(SHAPED, rate_bps=2 * RATE))
        assert kernel.plans["a->b"].kernel_rate_bps == 2 * RATE
        sent, arrivals = transfer(kernel, "a", "b", [[0, 8, PAYLOAD]], expected=8, port=9001)
        assert not_sooner_than_serialised(arrivals, sent[0][0], TX / 2)
        assert arrivals[-1] - sent[0][0] < 7 * TX
        assert kernel.counters("a", "b").sent_packets - before.sent_packets == 20


@pytest.mark.parametrize(("shaper", "mtu"), [("tbf", FRAME - 14), ("htb", 1500)])
def test_three_nodes_route_reroute_fail_and_heal(kernel_support: KernelSupport, shaper: str, mtu: int) -> None:
    """a - b - c with a direct a - c link of weight 5: a reaches c through b until b - c fails."""
    topology = chain("a", "b", "c", profile=SHAPED)
    topology.add_link("a", "c", SHAPED, weight=5)
    with KernelTopology(topology, shaper=shaper, mtu=mtu) as kernel:  # type: ignore[arg-type]
        sent, arrivals = transfer(kernel, "a", "c", [[0, 6, PAYLOAD]], expected=6)
        assert len(arrivals) == 6
        # two shaped hops in series still pass one frame per TX
        assert not_sooner_than_serialised(arrivals, sent[0][0])
        assert [kernel.counters(*hop).sent_packets for hop in (("a", "b"), ("b", "c"), ("a", "c"))] == [6, 6, 0]
        # replies come back the same way
        _, back = transfer(kernel, "c", "a", [[0, 2, PAYLOAD]], expected=2, port=9001)
        assert len(back) == 2 and kernel.counters("c", "b").sent_packets == 2

        kernel.fail("b", "c")
        _, arrivals = transfer(kernel, "a", "c", [[0, 2, PAYLOAD]], expected=2, port=9002)
        assert len(arrivals) == 2
        assert kernel.counters("a", "c").sent_packets == 2  # rerouted onto the direct link

        kernel.fail("a", "c")
        sent, arrivals = transfer(kernel, "a", "c", [[0, 2, PAYLOAD]], expected=2, timeout=0.5, port=9003)
        assert arrivals == [] and [errno for _, errno in sent] == [113, 113]  # EHOSTUNREACH
        # c is cut off, b and a still talk
        assert transfer(kernel, "b", "a", [[0, 1, PAYLOAD]], expected=1, port=9004)[1]

        kernel.heal("b", "c")
        kernel.heal("a", "c")
        _, arrivals = transfer(kernel, "a", "c", [[0, 2, PAYLOAD]], expected=2, port=9005)
        assert len(arrivals) == 2
        assert [kernel.counters(*hop).sent_packets for hop in (("a", "b"), ("b", "c"), ("a", "c"))] == [8, 8, 2]

        kernel.set_link("a", "c", weight=1)  # now the direct link is shorter
        _, arrivals = transfer(kernel, "a", "c", [[0, 2, PAYLOAD]], expected=2, port=9006)
        assert len(arrivals) == 2
        assert [kernel.counters(*hop).sent_packets for hop in (("a", "b"), ("b", "c"), ("a", "c"))] == [8, 8, 4]


def test_packet_limit_drops_like_the_model(kernel_support: KernelSupport) -> None:
    profile = replace(SHAPED, limit_packets=3)
    model = LinkModel(profile, seed=0, link_id="a->b")
    delivered = sum(len(model.offer(0.0, PAYLOAD).deliveries) for _ in range(10))
    assert delivered == 3
    with KernelTopology(chain("a", "b", profile=profile)) as kernel:
        _, arrivals = transfer(kernel, "a", "b", [[0, 10, PAYLOAD]], expected=3)
        assert len(arrivals) == delivered
        counters = kernel.counters("a", "b")
        assert (counters.sent_packets, counters.dropped) == (3, 7)


def test_missing_features_can_be_accepted_with_a_warning(kernel_support: KernelSupport) -> None:
    support = replace(kernel_support, qdiscs=kernel_support.qdiscs - {"netem"})
    topology = chain("a", "b", profile=replace(SHAPED, delay=0.5))
    with pytest.warns(UserWarning, match="a->b delay"), KernelTopology(topology, on_missing="warn", support=support) as kernel:
        assert kernel.gaps() == {link: (Gap("delay", "0.5 asked, this kernel has no netem"),) for link in ("a->b", "b->a")}


def test_teardown_on_exit_error_and_interrupt(kernel_support: KernelSupport) -> None:
    with KernelTopology(chain("a", "b", "c", profile=SHAPED)) as kernel:
        assert len(run_namespaces(kernel.run_id)) == 3
        sleeper = kernel.popen("b", ["sleep", "30"])
    assert run_namespaces(kernel.run_id) == []
    assert sleeper.poll() is not None  # terminated, not left running
    assert not (LOCK_DIR / f"{kernel.run_id}.lock").exists()
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)), KernelTopology(chain("a", "b", profile=SHAPED)) as kernel:
            raise error
        assert run_namespaces(kernel.run_id) == []
    kernel.close()  # idempotent


def test_cleanup_stale_removes_only_dead_runs(kernel_support: KernelSupport) -> None:
    dead = new_run_id()
    leftover = f"msim-{dead}-x"
    subprocess.run(["ip", "netns", "add", leftover], check=True)  # as if its run had crashed
    try:
        with KernelTopology(chain("a", "b", profile=SHAPED)) as live:
            assert cleanup_stale(prefix=f"msim-{live.run_id}-") == []
            assert len(run_namespaces(live.run_id)) == 2
            assert cleanup_stale(prefix=f"msim-{dead}-") == [leftover]
            assert leftover not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", leftover], check=False, capture_output=True)
