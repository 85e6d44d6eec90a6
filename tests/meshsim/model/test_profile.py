"""Link profiles: validation, tc-netem's syntax both ways, and the units it shares with the gateway."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.transport import (
    format_netem_percent,
    format_netem_rate,
    format_netem_time,
    parse_netem_percent,
    parse_netem_rate,
    parse_netem_time,
)
from meshsim.model import LinkProfile, describe_profile, netem_kernel_rate_bps


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(rate_bps=0), "rate_bps"),
        (dict(delay=-1), "delay"),
        (dict(jitter=math.inf), "jitter"),
        (dict(jitter_dist="gamma"), "jitter_dist"),
        (dict(loss=1.5), "loss"),
        (dict(loss=0.1, gemodel=(0.1, 0.2, 0.3, 0.4)), "not both"),
        (dict(gemodel=(0.1, 0.2, 0.3)), "gemodel"),
        (dict(gemodel=(0.1, 0.2, 1.3, 0.4)), "1-h"),
        (dict(limit_bytes=-1), "limit_bytes"),
        (dict(limit_packets=1.5), "limit_packets"),
        (dict(limit_seconds=-0.1), "limit_seconds"),
        (dict(overhead=1.5), "overhead"),
        (dict(cell_overhead=5), "cell_size"),
        (dict(cell_size=48, cell_overhead=-48), "cell_size"),
    ],
)
def test_profile_validation(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinkProfile(**fields)  # type: ignore[arg-type]


def test_gemodel_given_as_a_list_becomes_a_tuple() -> None:
    assert LinkProfile(gemodel=[0.1, 0.2, 0.3, 0.4]).gemodel == (0.1, 0.2, 0.3, 0.4)  # type: ignore[arg-type]


def test_describe_profile_says_what_netem_cannot() -> None:
    profile = LinkProfile(rate_bps=100, delay=0.5, overhead=42, limit_bytes=2000, limit_seconds=30.0)
    assert describe_profile(profile) == "delay 500ms rate 100bit, overhead 42 B, limit 2000 B, limit 30 s"
    assert describe_profile(LinkProfile()) == "unshaped, overhead 0 B"


# ---------------------------------------------------------------- netem arguments


def test_parse_a_typical_netem_line() -> None:
    profile = LinkProfile.from_netem_args("rate 100bit delay 1s 200ms loss 20% duplicate 1% corrupt 0.1% limit 2000")
    assert profile == LinkProfile(
        rate_bps=100.0, delay=1.0, jitter=0.2, loss=0.2, duplicate=0.01, corrupt=0.001, limit_packets=2000
    )


@pytest.mark.parametrize(
    ("token", "bits_per_second"),
    [
        ("100bit", 100.0),
        ("1kbit", 1000.0),
        ("1Kibit", 1024.0),
        ("1.5mbit", 1_500_000.0),
        ("1bps", 8.0),
        ("1Bps", 8.0),
        ("1kbps", 8000.0),
        ("1KiBps", 8192.0),
        ("2gbit", 2e9),
    ],
)
def test_rate_units(token: str, bits_per_second: float) -> None:
    assert parse_netem_rate(token) == bits_per_second


@pytest.mark.parametrize(
    ("token", "seconds"),
    [("1.5s", 1.5), ("200ms", 0.2), ("250us", 0.00025), ("10ns", 1e-8), ("2secs", 2.0), ("3msec", 0.003), (".5s", 0.5)],
)
def test_time_units(token: str, seconds: float) -> None:
    assert parse_netem_time(token) == seconds


@pytest.mark.parametrize(("token", "probability"), [("20%", 0.2), ("20", 0.2), ("0.1%", 0.001), ("100%", 1.0)])
def test_percent(token: str, probability: float) -> None:
    assert parse_netem_percent(token) == probability


@pytest.mark.parametrize("bad", ["100", "100xbit", "0bit", "fast"])
def test_rate_needs_a_known_unit(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_netem_rate(bad)


@pytest.mark.parametrize("bad", ["100", "1m", "ms"])
def test_time_needs_a_known_unit(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_netem_time(bad)


@pytest.mark.parametrize("bad", ["101%", "5%%", "x"])
def test_bad_percentages(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_netem_percent(bad)


def test_gemodel_arguments_and_tc_defaults() -> None:
    full = LinkProfile.from_netem_args("loss gemodel 1% 10% 70% 0.1%")
    assert full.gemodel == (0.01, 0.1, 0.7, 0.001)
    # tc: r defaults to 1-p, 1-h to 100%, 1-k to 0%
    assert LinkProfile.from_netem_args("loss gemodel 5%").gemodel == (0.05, 0.95, 1.0, 0.0)
    assert LinkProfile.from_netem_args("loss gemodel 5% 20%").gemodel == (0.05, 0.2, 1.0, 0.0)


def test_rate_with_overheads() -> None:
    profile = LinkProfile.from_netem_args("rate 1kbit -14 48 5 delay 10ms")
    assert (profile.rate_bps, profile.overhead, profile.cell_size, profile.cell_overhead) == (1000.0, -14, 48, 5)
    printed = LinkProfile.from_netem_args("rate 96bit packetoverhead 42 cellsize 48 celloverhead 5")
    assert (printed.overhead, printed.cell_size, printed.cell_overhead) == (42, 48, 5)


def test_other_loss_syntaxes() -> None:
    assert LinkProfile.from_netem_args("loss random 3%").loss == 0.03
    assert LinkProfile.from_netem_args("drop 3%").loss == 0.03
    assert LinkProfile.from_netem_args("delay 100ms 10ms 0% loss 3% 0%").loss == 0.03  # zero correlation is no-op
    assert LinkProfile.from_netem_args("latency 100ms 10ms distribution normal").jitter_dist == "normal"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("delay 100ms 10ms 25%", "correlation"),
        ("loss 1% 50%", "correlation"),
        ("reorder 25% gap 5 delay 10ms", "reorder"),
        ("loss state 1%", "4-state"),
        ("slot 10ms", "slot"),
        ("ecn loss 1%", "ECN"),
        ("rate 10%", "percentage"),
        ("loss 1% loss 2%", "twice"),
        ("distribution normal", "distribution"),
        ("bogus 1", "bogus"),
        ("delay", "end"),
        ("limit many", "integer"),
    ],
)
def test_unsupported_or_malformed_args_are_refused(args: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinkProfile.from_netem_args(args)


def test_to_netem_args() -> None:
    profile = LinkProfile(
        rate_bps=100, delay=1.0, jitter=0.2, jitter_dist="normal", loss=0.2,
        duplicate=0.01, corrupt=0.001, limit_packets=2000, overhead=42,
    )
    assert profile.to_netem_args() == (
        "limit 2000 delay 1s 200ms distribution normal loss random 20% duplicate 1% corrupt 0.1% rate 100bit 42"
    )
    assert profile.to_netem_args(counted_by_kernel=42).endswith("rate 100bit")
    ge = LinkProfile(gemodel=(0.01, 0.1, 0.7, 0.001), rate_bps=1e6, cell_size=48)
    assert ge.to_netem_args() == "loss gemodel 1% 10% 70% 0.1% rate 1mbit 0 48"
    assert LinkProfile().to_netem_args() == ""


def test_to_netem_args_refuses_what_netem_cannot_do() -> None:
    with pytest.raises(ValueError, match="limit"):
        LinkProfile(limit_bytes=100).to_netem_args()
    with pytest.raises(ValueError, match="distribution"):
        LinkProfile(jitter=0.1, jitter_dist="pareto").to_netem_args()


def test_formatters() -> None:
    assert [format_netem_time(t) for t in (1.0, 0.2, 1.2, 0.00025, 1e-8, 0.1234567891234)] == [
        "1s", "200ms", "1200ms", "250us", "10ns", "0.1234567891234s",
    ]
    assert [format_netem_rate(r) for r in (100.0, 1000.0, 1500.0, 2e6, 12.5)] == [
        "100bit", "1kbit", "1500bit", "2mbit", "12.5bit",
    ]
    assert [format_netem_percent(p) for p in (0.2, 0.001, 1.0, 1e-10)] == ["20%", "0.1%", "100%", "0.00000001%"]


def test_kernel_rounds_the_rate_to_whole_bytes() -> None:
    assert netem_kernel_rate_bps(100.0) == 96.0
    assert netem_kernel_rate_bps(1000.0) == 1000.0


unit_floats = st.floats(0.0, 1.0, allow_nan=False)
netem_profiles = st.builds(
    LinkProfile,
    rate_bps=st.one_of(st.none(), st.floats(1.0, 1e10)),
    delay=st.floats(1e-9, 1e4),
    jitter=st.floats(0.0, 1e3),
    jitter_dist=st.sampled_from(["uniform", "normal", "pareto", "paretonormal"]),
    loss=unit_floats,
    duplicate=unit_floats,
    corrupt=unit_floats,
    limit_packets=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(profile=netem_profiles, gemodel=st.one_of(st.none(), st.tuples(unit_floats, unit_floats, unit_floats, unit_floats)))
def test_netem_args_round_trip(profile: LinkProfile, gemodel: tuple[float, float, float, float] | None) -> None:
    if gemodel is not None:
        profile = LinkProfile(**{**profile.__dict__, "loss": 0.0, "gemodel": gemodel})
    if profile.rate_bps is not None:
        profile = LinkProfile(**{**profile.__dict__, "overhead": -3, "cell_size": 53, "cell_overhead": 5})
    if profile.jitter == 0.0:
        profile = LinkProfile(**{**profile.__dict__, "jitter_dist": "uniform"})
    assert LinkProfile.from_netem_args(profile.to_netem_args()) == profile
