"""The sans-I/O link model: netem's semantics in virtual time."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsim.model import (
    LinkModel,
    LinkProfile,
    OfferResult,
    Scheduled,
    gemodel_loss_rate,
)
from meshsim.model.rng import TABLE_MAX, derive_rng, derive_seed, netem_table_value


def model(seed: int = 1, link_id: str = "a->b", **profile: Any) -> LinkModel:
    return LinkModel(LinkProfile(**profile), seed=seed, link_id=link_id)


def only(result: OfferResult) -> Scheduled:
    assert len(result.deliveries) == 1 and not result.drops, result
    return result.deliveries[0]


# ---------------------------------------------------------------- random streams


def test_derive_seed_is_the_documented_hash() -> None:
    digest = hashlib.sha256(b"7/n1->n2/loss").digest()
    assert derive_seed(7, "n1->n2", "loss") == int.from_bytes(digest[:8], "big")


def test_derived_streams_are_reproducible_and_distinct() -> None:
    def first(seed: int, link: str, purpose: str) -> list[float]:
        rng = derive_rng(seed, link, purpose)
        return [rng.random() for _ in range(3)]

    assert first(7, "a->b", "loss") == first(7, "a->b", "loss")
    others = [first(8, "a->b", "loss"), first(7, "b->a", "loss"), first(7, "a->b", "jitter")]
    assert all(o != first(7, "a->b", "loss") for o in others)


def test_purpose_may_not_contain_the_separator() -> None:
    with pytest.raises(ValueError, match="purpose"):
        derive_rng(1, "a", "b/c")


# ---------------------------------------------------------------- serialiser


def test_serialiser_at_100_bits_with_ethernet_overhead() -> None:
    link = model(rate_bps=100, overhead=42)
    first = only(link.offer(0.0, 50))
    assert (first.wire_bytes, first.depart_start, first.depart_end, first.deliver_at) == (92, 0.0, 7.36, 7.36)


def test_back_to_back_packets_queue_exactly() -> None:
    link = model(rate_bps=100, overhead=42)
    sent = [only(link.offer(0.0, 50)) for _ in range(3)]
    assert [(s.depart_start, s.depart_end) for s in sent] == [
        (0.0, 7.36),
        (7.36, 14.72),
        (14.72, 14.72 + 7.36),
    ]
    assert link.backlog_packets(0.0) == 3 and link.backlog_bytes(0.0) == 276
    assert link.backlog_packets(7.36) == 2 and link.backlog_bytes(7.36) == 184
    assert link.counters.peak_queue_bytes == 276 and link.counters.peak_queue_packets == 3


def test_an_idle_link_earns_no_credit() -> None:
    link = model(rate_bps=100, overhead=42)
    only(link.offer(0.0, 50))
    later = only(link.offer(100.0, 50))
    # a token bucket would send part of it at once; a serialiser takes the full 7.36 s
    assert (later.depart_start, later.depart_end) == (100.0, 100.0 + 7.36)
    again = only(link.offer(100.0, 50))
    assert again.depart_start == later.depart_end
    busy = 0.0
    for interval in (7.36 - 0.0, 14.72 - 7.36, (100.0 + 7.36) - 100.0):
        busy += interval
    assert link.counters.busy_time == busy == pytest.approx(22.08)


def test_delay_follows_the_serialiser() -> None:
    link = model(rate_bps=100, delay=1.5)
    sent = only(link.offer(2.0, 100))  # 800 bits: 8 s
    assert (sent.depart_start, sent.depart_end, sent.deliver_at) == (2.0, 10.0, 11.5)


def test_delay_without_rate() -> None:
    link = model(delay=0.25)
    sent = only(link.offer(3.0, 1000))
    assert (sent.depart_start, sent.depart_end, sent.deliver_at) == (3.0, 3.0, 3.25)
    assert link.counters.busy_time == 0.0


@pytest.mark.parametrize(
    ("size", "wire_bytes"),
    [(0, 0), (1, 53), (48, 53), (49, 106), (96, 106), (97, 159)],
)
def test_cells_round_up_and_add_cell_overhead(size: int, wire_bytes: int) -> None:
    profile = LinkProfile(rate_bps=100, cell_size=48, cell_overhead=5)
    assert profile.wire_bytes(size) == wire_bytes
    assert profile.transmission_time(size) == wire_bytes * 8 / 100


def test_packet_overhead_counts_before_cells() -> None:
    profile = LinkProfile(rate_bps=100, overhead=10, cell_size=48, cell_overhead=5)
    assert profile.wire_bytes(38) == 53 and profile.wire_bytes(39) == 106


def test_negative_overhead_never_makes_a_negative_length() -> None:
    profile = LinkProfile(rate_bps=100, overhead=-42)
    assert profile.wire_bytes(10) == 0 and profile.wire_bytes(50) == 8
    assert only(model(rate_bps=100, overhead=-42).offer(0.0, 10)).depart_end == 0.0


# ---------------------------------------------------------------- delay distributions


def delays(n: int, **profile: Any) -> list[float]:
    link = model(seed=3, **profile)
    return [only(link.offer(0.0, 10)).deliver_at for _ in range(n)]


def test_uniform_jitter_bounds_and_moments() -> None:
    sample = delays(50_000, delay=1.0, jitter=0.2)
    assert min(sample) >= 0.8 and max(sample) < 1.2
    assert statistics.fmean(sample) == pytest.approx(1.0, abs=0.003)
    assert statistics.pvariance(sample) == pytest.approx(0.2**2 / 3, abs=3e-4)


def test_normal_jitter_moments_and_clipping() -> None:
    sample = delays(50_000, delay=1.0, jitter=0.1, jitter_dist="normal")
    assert statistics.fmean(sample) == pytest.approx(1.0, abs=0.002)
    assert statistics.pstdev(sample) == pytest.approx(0.1, rel=0.02)
    assert min(sample) >= 1.0 - 4 * 0.1 and max(sample) <= 1.0 + TABLE_MAX * 0.1


def test_pareto_jitter_matches_the_clipped_table() -> None:
    sample = delays(50_000, delay=1.0, jitter=0.1, jitter_dist="pareto")
    assert min(sample) >= 1.0 - 0.1 * 2 / 3 and max(sample) <= 1.0 + 0.1 * TABLE_MAX
    # the table's median and its mean once clipped at TABLE_MAX
    assert statistics.median(sample) == pytest.approx(1.0 + 0.1 * (2 ** (1 / 3) - 1.5) * 4 / 3, abs=0.002)
    v0 = (1.5 + 0.75 * TABLE_MAX) ** -3
    clipped_mean = TABLE_MAX * v0 + 2 * (v0 - v0 ** (2 / 3))
    assert statistics.fmean(sample) == pytest.approx(1.0 + 0.1 * clipped_mean, abs=0.002)


def test_paretonormal_jitter_median() -> None:
    sample = delays(20_000, delay=1.0, jitter=0.1, jitter_dist="paretonormal")
    assert statistics.median(sample) == pytest.approx(1.0 + 0.1 * 0.75 * (2 ** (1 / 3) - 1.5) * 4 / 3, abs=0.003)
    assert min(sample) >= 1.0 - 0.1 * 1.5


def test_netem_table_values_at_the_edges() -> None:
    assert netem_table_value("uniform", 0.0) == -1.0
    assert netem_table_value("normal", 0.5) == 0.0
    assert netem_table_value("normal", 0.0) == -4.0
    assert netem_table_value("pareto", 0.0) == pytest.approx(-2 / 3)
    assert netem_table_value("pareto", 0.999) == TABLE_MAX
    with pytest.raises(ValueError):
        netem_table_value("uniform", 1.0)


def test_a_negative_delay_sample_counts_as_zero() -> None:
    sample = delays(2_000, delay=0.1, jitter=0.5)
    assert min(sample) == 0.0 and max(sample) < 0.6


# ---------------------------------------------------------------- ordering


def inversions(times: list[float]) -> int:
    return sum(1 for a, b in zip(times, times[1:]) if b < a)


def test_jitter_reorders_without_a_rate() -> None:
    link = model(delay=1.0, jitter=0.5)
    times = [only(link.offer(i * 0.01, 10)).deliver_at for i in range(1000)]
    assert inversions(times) > 100


def test_no_reordering_with_a_rate() -> None:
    link = model(rate_bps=1_000_000, delay=1.0, jitter=0.5)
    sent = [only(link.offer(i * 0.01, 10)) for i in range(1000)]
    times = [s.deliver_at for s in sent]
    assert inversions(times) == 0
    # held back, not dropped: some arrive together with the one before
    assert sum(1 for a, b in zip(times, times[1:]) if a == b) > 100


# ---------------------------------------------------------------- loss


def test_random_loss_rate() -> None:
    link = model(loss=0.2)
    results = [link.offer(i * 0.001, 10) for i in range(100_000)]
    lost = sum(1 for r in results if r.drops)
    assert {d.reason for r in results for d in r.drops} == {"loss"}
    assert lost == link.counters.dropped["loss"]
    assert lost / 100_000 == pytest.approx(0.2, abs=0.005)


def test_gilbert_elliott_stationary_loss_rate() -> None:
    p, r, one_minus_h, one_minus_k = 0.05, 0.3, 0.5, 0.01
    bad = p / (p + r)
    analytic = bad * one_minus_h + (1 - bad) * one_minus_k  # 0.08
    assert gemodel_loss_rate((p, r, one_minus_h, one_minus_k)) == pytest.approx(analytic)
    link = model(gemodel=(p, r, one_minus_h, one_minus_k))
    n = 200_000
    for i in range(n):
        link.offer(i * 0.01, 40)
    # 12 seeds gave a standard deviation of 0.0008 around 0.0799
    assert link.counters.dropped["gemodel"] / n == pytest.approx(analytic, abs=0.004)
    assert link.counters.dropped["loss"] == 0


def test_gilbert_elliott_losses_come_in_bursts() -> None:
    # 1-h = 100%, 1-k = 0%: a packet is lost exactly when the channel was bad,
    # and the bad state lasts 1/r packets on average
    link = model(gemodel=(0.05, 0.25, 1.0, 0.0))
    lost = [bool(link.offer(i * 0.01, 40).drops) for i in range(100_000)]
    runs = [len(run) for run in "".join("L" if x else "." for x in lost).split(".") if run]
    assert statistics.fmean(runs) == pytest.approx(1 / 0.25, rel=0.05)


def test_gilbert_elliott_uses_the_state_before_the_change() -> None:
    # p = r = 1: the state flips on every packet; the loss follows the old state
    link = model(gemodel=(1.0, 1.0, 1.0, 0.0))
    fates = ["lost" if link.offer(float(i), 10).drops else "sent" for i in range(6)]
    assert fates == ["sent", "lost"] * 3


def test_gemodel_loss_rate_when_the_chain_never_moves() -> None:
    assert gemodel_loss_rate((0.0, 0.0, 1.0, 0.25)) == 0.25


# ---------------------------------------------------------------- duplicate and corrupt


def test_duplication_rate_and_no_duplicate_of_a_duplicate() -> None:
    link = model(duplicate=0.25)
    results = [link.offer(i * 0.001, 10) for i in range(40_000)]
    copies = [len(r.deliveries) for r in results]
    assert set(copies) == {1, 2}
    assert sum(c == 2 for c in copies) == link.counters.duplicated
    assert link.counters.duplicated / 40_000 == pytest.approx(0.25, abs=0.01)
    assert all([d.duplicate for d in r.deliveries] in ([False], [False, True]) for r in results)


def test_always_duplicate_gives_exactly_two_copies_serialised_in_turn() -> None:
    link = model(duplicate=1.0, rate_bps=100)
    original, copy = link.offer(0.0, 100).deliveries
    assert (original.duplicate, copy.duplicate) == (False, True)
    assert original.packet == copy.packet == 0
    assert (original.depart_end, copy.depart_start, copy.depart_end) == (8.0, 8.0, 16.0)
    assert link.counters.delivered_packets == 2 and link.counters.offered_packets == 1


def test_corruption_flips_exactly_one_bit() -> None:
    payload = bytes(range(64))
    link = model(corrupt=1.0, duplicate=1.0)
    for i in range(200):
        result = link.offer(float(i), len(payload), payload)
        for copy in result.deliveries:
            assert copy.payload is not None and copy.corrupted_bit is not None
            diff = int.from_bytes(copy.payload, "big") ^ int.from_bytes(payload, "big")
            assert diff.bit_count() == 1
            byte, bit = divmod(copy.corrupted_bit, 8)
            assert copy.payload[byte] == payload[byte] ^ (1 << bit)
    assert link.counters.corrupted == 400


def test_corruption_without_payload_still_names_the_bit() -> None:
    link = model(corrupt=1.0)
    sent = only(link.offer(0.0, 3))
    assert sent.payload is None and sent.corrupted_bit in range(24)
    empty = only(link.offer(1.0, 0, b""))
    assert empty.corrupted_bit is None and empty.payload == b""


def test_corruption_rate() -> None:
    link = model(corrupt=0.1)
    corrupted = sum(only(link.offer(float(i), 20, bytes(20))).corrupted_bit is not None for i in range(20_000))
    assert corrupted == link.counters.corrupted
    assert corrupted / 20_000 == pytest.approx(0.1, abs=0.01)


# ---------------------------------------------------------------- queue limits


def burst(link: LinkModel, count: int, size: int = 100, at: float = 0.0) -> list[str]:
    fates: list[str] = []
    for _ in range(count):
        result = link.offer(at, size)
        fates.append(result.drops[0].reason if result.drops else "sent")
    return fates


def test_queue_limit_in_bytes() -> None:
    # 100 B at 100 bit/s: 8 s each
    link = model(rate_bps=100, limit_bytes=250)
    assert burst(link, 5) == ["sent", "sent", "queue", "queue", "queue"]
    assert link.counters.dropped["queue"] == 3
    assert burst(link, 2, at=8.0) == ["sent", "queue"]  # the first has left the queue
    assert burst(link, 1, size=50, at=8.0) == ["sent"]  # exactly fills the 250 B
    assert link.counters.peak_queue_bytes == 250


def test_queue_limit_counts_wire_bytes() -> None:
    link = model(rate_bps=100, overhead=42, limit_bytes=250)
    assert burst(link, 3, size=83) == ["sent", "sent", "queue"]  # 125 B each on the wire
    assert link.backlog_bytes(0.0) == 250


def test_queue_limit_in_seconds() -> None:
    link = model(rate_bps=100, limit_seconds=16.0)
    # waits of 0, 8, 16 s are admitted; 24 s is not
    assert burst(link, 5) == ["sent", "sent", "sent", "queue", "queue"]
    assert burst(link, 2, at=4.0) == ["queue", "queue"]  # would wait 20 s
    assert burst(link, 1, at=8.0) == ["sent"]  # waits exactly 16 s


def test_zero_second_limit_admits_only_onto_an_idle_serialiser() -> None:
    link = model(rate_bps=100, limit_seconds=0.0)
    assert burst(link, 2) == ["sent", "queue"]
    assert burst(link, 1, at=7.9) == ["queue"]
    assert burst(link, 1, at=8.0) == ["sent"]


def test_queue_limit_in_packets() -> None:
    link = model(rate_bps=100, limit_packets=2)
    assert burst(link, 4) == ["sent", "sent", "queue", "queue"]
    assert link.backlog_packets(0.0) == 2 and link.counters.peak_queue_packets == 2


def test_limits_never_drop_what_would_not_queue() -> None:
    link = model(limit_packets=0, limit_bytes=0, limit_seconds=0.0, delay=5.0)
    assert burst(link, 3) == ["sent", "sent", "sent"]
    assert link.counters.peak_queue_packets == 0
    link.set_profile(LinkProfile(rate_bps=100, limit_packets=0, overhead=-100), now=1.0)
    assert burst(link, 2, at=1.0) == ["sent", "sent"]  # zero wire bytes
    assert burst(link, 1, size=101, at=1.0) == ["queue"]


# ---------------------------------------------------------------- runtime changes


def test_set_profile_keeps_queued_packets() -> None:
    link = model(rate_bps=100, delay=1.0)
    queued = [only(link.offer(0.0, 100)) for _ in range(3)]
    assert [s.deliver_at for s in queued] == [9.0, 17.0, 25.0]
    link.set_profile(LinkProfile(rate_bps=1000, delay=0.5), now=1.0)
    assert link.backlog_packets(1.0) == 3 and link.in_flight_packets(1.0) == 3
    after = only(link.offer(1.0, 100))
    # queues behind the old packets, then goes at the new rate (0.8 s) and delay
    assert (after.depart_start, after.depart_end, after.deliver_at) == (24.0, 24.8, 25.3)
    # what the link still holds is exactly what was scheduled before the change
    assert link.set_down(2.0) == (*queued, after)


def test_set_down_with_flush_loses_what_is_on_the_wire() -> None:
    link = model(rate_bps=100, delay=1.0)
    sent = [only(link.offer(0.0, 100)) for _ in range(3)]  # delivered at 9, 17, 25
    cancelled = link.set_down(10.0, flush=True)
    assert cancelled == tuple(sent[1:])
    counters = link.counters
    assert (counters.delivered_packets, counters.delivered_bytes, counters.dropped["flushed"]) == (1, 100, 2)
    assert counters.busy_time == 10.0  # 8 s for the first, 2 s of the second
    assert link.backlog_packets(10.0) == 0 and link.in_flight_packets(10.0) == 0
    assert link.offer(11.0, 100).drops[0].reason == "down"
    link.set_up(12.0)
    assert only(link.offer(12.0, 100)).depart_start == 12.0


def test_set_down_flush_includes_packets_still_propagating() -> None:
    link = model(rate_bps=100, delay=1.0)
    first = only(link.offer(0.0, 100))  # on the wire from 8 to 9
    assert link.set_down(8.5) == (first,)
    assert link.counters.busy_time == 8.0


def test_set_down_without_flush_delivers_what_was_admitted() -> None:
    link = model(rate_bps=100, delay=1.0)
    sent = [only(link.offer(0.0, 100)) for _ in range(3)]
    assert link.set_down(10.0, flush=False) == ()
    assert link.is_down and link.backlog_packets(10.0) == 2
    result = link.offer(10.0, 100)
    assert result.deliveries == () and [d.reason for d in result.drops] == ["down"]
    assert link.counters.delivered_packets == 3 and link.counters.dropped["down"] == 1
    link.set_up(11.0)
    assert only(link.offer(11.0, 100)).depart_start == sent[-1].depart_end


def test_a_down_link_draws_no_random_numbers() -> None:
    def loss_fates(down_for: int) -> list[bool]:
        link = model(loss=0.5)
        link.set_down(0.0)
        for _ in range(down_for):
            link.offer(0.0, 10)
        link.set_up(0.0)
        return [bool(link.offer(1.0, 10).drops) for _ in range(200)]

    assert loss_fates(0) == loss_fates(37)


# ---------------------------------------------------------------- determinism


BUSY_PROFILE: dict[str, Any] = dict(rate_bps=2000, delay=0.2, jitter=0.1, loss=0.1, duplicate=0.1, corrupt=0.1, limit_bytes=600)


def run(seed: int, **profile: Any) -> list[OfferResult]:
    link = model(seed=seed, **profile)
    rng = random.Random(99)
    now, results = 0.0, []
    for _ in range(2000):
        now += rng.expovariate(5.0)
        size = rng.randrange(1, 120)
        results.append(link.offer(now, size, bytes(size)))
    return results


def test_same_seed_same_schedule() -> None:
    assert run(5, **BUSY_PROFILE) == run(5, **BUSY_PROFILE)


def test_different_seed_different_schedule() -> None:
    assert run(5, **BUSY_PROFILE) != run(6, **BUSY_PROFILE)


def originals_fate(results: list[OfferResult]) -> list[object]:
    fates: list[object] = []
    for result in results:
        dropped = [d.reason for d in result.drops if not d.duplicate]
        kept = [s.corrupted_bit for s in result.deliveries if not s.duplicate]
        fates.append(dropped[0] if dropped else ("sent", kept[0]))
    return fates


@pytest.mark.parametrize("loss", [dict(loss=0.2), dict(gemodel=(0.05, 0.3, 0.5, 0.01))])
def test_enabling_duplication_does_not_change_which_originals_are_lost(loss: dict[str, object]) -> None:
    plain = run(5, corrupt=0.1, **loss)
    duplicated = run(5, corrupt=0.1, duplicate=0.3, **loss)
    assert sum(len(r.deliveries) + len(r.drops) for r in duplicated) > 2400
    assert originals_fate(plain) == originals_fate(duplicated)


#: the digest of `fate_trace` on the LinkModel of before the stages split (one class with the
#: loss model chosen by `if`), recorded then: the composition must keep every draw, byte for byte
RECORDED_FATES = "841db17338968b4d2388eb79ec2667b25a485444f2a9f3f1566927f6e5a71ff9"


def fate_trace() -> str:
    """sha256 over every fate of 400 mixed operations per (profile, seed): offers, failures, profile changes."""
    profiles = [
        dict(),
        dict(rate_bps=100, overhead=42),
        dict(rate_bps=9600, delay=0.5, jitter=0.2, overhead=42),
        dict(delay=0.1, jitter=0.08, jitter_dist="normal"),
        dict(delay=0.3, jitter=0.1, jitter_dist="pareto", rate_bps=2000),
        dict(delay=0.3, jitter=0.1, jitter_dist="paretonormal"),
        dict(rate_bps=1200, loss=0.2, delay=0.05),
        dict(rate_bps=1200, gemodel=(0.05, 0.3, 0.9, 0.01)),
        dict(rate_bps=4800, duplicate=0.2, corrupt=0.3, loss=0.1, jitter=0.01, delay=0.02),
        dict(rate_bps=4800, duplicate=0.3, gemodel=(0.1, 0.2, 0.8, 0.05), corrupt=0.1),
        dict(rate_bps=800, limit_packets=3, overhead=10),
        dict(rate_bps=800, limit_bytes=300, overhead=10),
        dict(rate_bps=800, limit_seconds=1.0, overhead=10),
        dict(rate_bps=800, limit_seconds=0.0),
        dict(rate_bps=1000, cell_size=48, cell_overhead=5, overhead=-14),
        dict(rate_bps=2400, delay=0.2, jitter=0.05, duplicate=0.1, corrupt=0.05, loss=0.05, limit_packets=5,
             limit_bytes=2000, limit_seconds=3.0, overhead=42),
    ]
    digest = hashlib.sha256()
    for number, fields in enumerate(profiles):
        for seed in (0, 1, 7, 42):
            model = LinkModel(LinkProfile(**fields), seed=seed, link_id=f"x->{number}")
            rng = random.Random(seed * 1000 + number)
            now = 0.0
            for _ in range(400):
                now += rng.expovariate(2.0)
                size = rng.randrange(0, 200)
                payload = rng.randbytes(size) if rng.random() < 0.7 else None
                op = rng.random()
                if op < 0.03:
                    fate = ["down", [dataclasses.astuple(c) for c in model.set_down(now, flush=rng.random() < 0.7)]]
                elif op < 0.06:
                    model.set_up(now)
                    fate = ["up"]
                elif op < 0.08:
                    rate = rng.choice([None, 100, 1200, 9600])
                    model.set_profile(LinkProfile(**{**fields, "rate_bps": rate}), now)
                    fate = ["profile", rate]
                else:
                    result = model.offer(now, size, payload)
                    fate = ["offer", [dataclasses.astuple(c) for c in result.deliveries],
                            [dataclasses.astuple(d) for d in result.drops],
                            model.backlog_bytes(now), model.backlog_packets(now), model.in_flight_packets(now)]
                digest.update(json.dumps(fate, default=lambda b: b.hex()).encode())
            digest.update(json.dumps(dataclasses.asdict(model.counters)).encode())
    return digest.hexdigest()


def test_seeded_fates_are_those_recorded_before_the_stages_split() -> None:
    assert fate_trace() == RECORDED_FATES


# ---------------------------------------------------------------- invariants


profiles = st.builds(
    LinkProfile,
    rate_bps=st.one_of(st.none(), st.sampled_from([100.0, 1200.0, 9600.0])),
    delay=st.sampled_from([0.0, 0.05, 1.0]),
    jitter=st.sampled_from([0.0, 0.3]),
    loss=st.sampled_from([0.0, 0.2]),
    duplicate=st.sampled_from([0.0, 0.3]),
    corrupt=st.sampled_from([0.0, 0.5]),
    limit_packets=st.one_of(st.none(), st.integers(0, 5)),
    limit_bytes=st.one_of(st.none(), st.integers(0, 400)),
    limit_seconds=st.one_of(st.none(), st.sampled_from([0.0, 2.0, 30.0])),
    overhead=st.integers(-20, 42),
)
offers = st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 200)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(profile=profiles, offers=offers, seed=st.integers(0, 2**32))
def test_invariants(profile: LinkProfile, offers: list[tuple[float, int]], seed: int) -> None:
    link = LinkModel(profile, seed=seed, link_id="x")
    now, start = 0.0, 0.0
    deliveries: list[Scheduled] = []
    for gap, size in offers:
        now += gap
        result = link.offer(now, size, bytes(size))
        for copy in result.deliveries:
            assert now <= copy.depart_start <= copy.depart_end <= copy.deliver_at
            assert copy.wire_bytes == profile.wire_bytes(size)
        deliveries += result.deliveries
    counters = link.counters

    # every copy is delivered or dropped, once
    assert counters.offered_packets + counters.duplicated == counters.delivered_packets + sum(counters.dropped.values())
    assert counters.delivered_bytes == sum(c.size for c in deliveries)
    assert counters.delivered_wire_bytes == sum(c.wire_bytes for c in deliveries)
    # the serialiser does one thing at a time, in order, and is never busier than the clock
    for a, b in zip(deliveries, deliveries[1:]):
        assert a.depart_end <= b.depart_start
    if deliveries:
        assert counters.busy_time <= deliveries[-1].depart_end - start + 1e-9
    if profile.rate_bps is not None:
        assert inversions([c.deliver_at for c in deliveries]) == 0
    if profile.limit_bytes is not None:
        assert counters.peak_queue_bytes <= profile.limit_bytes
    if profile.limit_packets is not None:
        assert counters.peak_queue_packets <= profile.limit_packets
    # nothing is remembered once everything has arrived
    end = max([now] + [c.deliver_at for c in deliveries])
    assert link.backlog_packets(end) == link.backlog_bytes(end) == link.in_flight_packets(end) == 0


def test_memory_is_bounded_by_what_is_in_flight() -> None:
    link = model(rate_bps=9600, delay=0.5)
    for i in range(10_000):
        link.offer(i * 0.1, 100)
        assert link.in_flight_packets(i * 0.1) <= 7
    assert link.in_flight_packets(10_000.0) == 0


# ---------------------------------------------------------------- misuse


def test_time_may_not_go_backwards() -> None:
    link = model()
    link.offer(5.0, 10)
    with pytest.raises(ValueError, match="backwards"):
        link.offer(4.0, 10)
    with pytest.raises(ValueError, match="finite"):
        link.offer(math.nan, 10)


def test_payload_must_match_size() -> None:
    with pytest.raises(ValueError, match="payload"):
        model().offer(0.0, 3, b"ab")
