"""A link's stages one by one: each draws what its docstring says and does nothing else."""

from __future__ import annotations

import math
import random

import pytest

from meshsim.model import (
    BernoulliLoss,
    Corrupter,
    DelayLine,
    Duplicator,
    ErrorModel,
    GilbertElliottLoss,
    LinkModel,
    LinkProfile,
    Serialiser,
    Transmission,
    TransmitQueue,
)


class CountingRandom(random.Random):
    """A seeded stream that counts its draws."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return super().random()


# ---------------------------------------------------------------- error models


def test_bernoulli_loss_draws_once_per_copy_even_at_zero() -> None:
    rng = CountingRandom()
    model: ErrorModel = BernoulliLoss(0.0)
    assert not any(model.lost(rng, duplicate=d) for d in (False, True) * 50)
    assert rng.draws == 100 and BernoulliLoss.reason == "loss"
    # a copy is lost when its draw is below the probability
    reference, stream, lossy = random.Random(4), random.Random(4), BernoulliLoss(0.3)
    expected = [reference.random() < 0.3 for _ in range(1000)]
    assert [lossy.lost(stream, duplicate=False) for _ in range(1000)] == expected
    assert all(BernoulliLoss(1.0).lost(rng, duplicate=False) for _ in range(10))


def test_gilbert_elliott_uses_the_state_before_the_change_and_draws_twice() -> None:
    # p = 1: every packet moves the chain; 1-h = 1, 1-k = 0: lost exactly when the state was bad
    model = GilbertElliottLoss((1.0, 1.0, 1.0, 0.0))
    rng = CountingRandom()
    assert [model.lost(rng, duplicate=False) for _ in range(6)] == [False, True] * 3
    assert rng.draws == 12 and GilbertElliottLoss.reason == "gemodel"


def test_gilbert_elliott_duplicates_see_the_state_without_moving_it() -> None:
    model = GilbertElliottLoss((1.0, 0.0, 1.0, 0.0))
    rng = CountingRandom()
    assert model.lost(rng, duplicate=False) is False  # good → bad
    assert model.bad and model.loss_probability() == 1.0
    assert all(model.lost(rng, duplicate=True) for _ in range(5))  # one draw each, the chain stays bad
    assert model.bad and rng.draws == 2 + 5


def test_gilbert_elliott_state_carries_over_a_profile_without_gemodel() -> None:
    # p = 1, r = 0: one packet makes the channel bad for ever (1-h = 1: then every packet is lost)
    ge = LinkProfile(gemodel=(1.0, 0.0, 1.0, 0.0))
    link = LinkModel(ge, seed=1, link_id="a->b")
    assert not link.offer(0.0, 10).drops
    link.set_profile(LinkProfile(loss=0.0), 1.0)
    assert not link.offer(2.0, 10).drops
    link.set_profile(ge, 3.0)
    assert [d.reason for d in link.offer(4.0, 10).drops] == ["gemodel"]  # still bad


# ---------------------------------------------------------------- duplicator and corrupter


def test_duplicator_draws_once_per_packet() -> None:
    rng = CountingRandom(2)
    duplicator = Duplicator(0.25)
    decisions = [duplicator.duplicates(rng) for _ in range(4000)]
    assert rng.draws == 4000 and 850 < sum(decisions) < 1150
    assert not any(Duplicator(0.0).duplicates(rng) for _ in range(100))


def test_corrupter_names_a_bit_inside_the_copy_and_spares_empty_ones() -> None:
    rng = CountingRandom(3)
    corrupter = Corrupter(1.0)
    bits = [corrupter.strike(rng, 5) for _ in range(200)]
    assert all(bit is not None and 0 <= bit < 40 for bit in bits)
    before = rng.draws
    assert corrupter.strike(rng, 0) is None and rng.draws == before + 1  # drawn, never strikes
    assert Corrupter(0.0).strike(rng, 100) is None


# ---------------------------------------------------------------- serialiser and queue


def test_serialiser_is_exact_and_earns_no_credit() -> None:
    serialiser = Serialiser(100.0)
    first = serialiser.schedule(0.0, 100)  # 800 bits at 100 bit/s
    assert first == Transmission(0.0, 8.0, 100)
    assert serialiser.free_at == -math.inf  # nothing changes until it is sent
    serialiser.send(first)
    assert serialiser.schedule(2.0, 50) == Transmission(8.0, 12.0, 50)  # behind the first
    # idle from 8 s to 100 s: the next one starts when offered and takes its full time
    assert serialiser.schedule(100.0, 100) == Transmission(100.0, 108.0, 100)
    serialiser.stop(5.0)
    assert serialiser.free_at == 5.0
    assert Serialiser(None).schedule(3.0, 10_000) == Transmission(3.0, 3.0, 10_000)


def test_transmit_queue_limits() -> None:
    queue = TransmitQueue(limit_packets=2)
    assert queue.admits(100, wait=0.0)
    queue.push(Transmission(0.0, 1.0, 100))
    queue.push(Transmission(1.0, 2.0, 100))
    assert not queue.admits(1, wait=0.0) and len(queue) == 2 and queue.bytes == 200

    by_bytes = TransmitQueue(limit_bytes=300)
    by_bytes.push(Transmission(0.0, 1.0, 200))
    assert by_bytes.admits(100, wait=0.0) and not by_bytes.admits(101, wait=0.0)  # bfifo: exactly full is in

    by_time = TransmitQueue(limit_seconds=2.0)
    assert by_time.admits(10**6, wait=2.0) and not by_time.admits(1, wait=2.000001)


def test_transmit_queue_forgets_what_was_sent_and_flushes_the_rest() -> None:
    queue = TransmitQueue()
    for start in range(4):
        queue.push(Transmission(float(start), start + 1.0, 10))
    queue.forget_finished(2.0)
    assert (len(queue), queue.bytes) == (2, 20)
    assert queue.flush() == (Transmission(2.0, 3.0, 10), Transmission(3.0, 4.0, 10))
    assert (len(queue), queue.bytes) == (0, 0)


# ---------------------------------------------------------------- delay


def test_delay_line_without_jitter_draws_nothing() -> None:
    rng = CountingRandom()
    line = DelayLine(0.5)
    assert line.deliver_at(rng, 1.0) == 1.5 and rng.draws == 0


def test_delay_line_keeps_order_only_when_asked() -> None:
    samples = random.Random(9)
    ordered = DelayLine(1.0, 0.9, keeps_order=True)
    times = [ordered.deliver_at(samples, float(t) / 10) for t in range(200)]
    assert times == sorted(times)
    free = DelayLine(1.0, 0.9)
    times = [free.deliver_at(samples, float(t) / 10) for t in range(200)]
    assert times != sorted(times)


def test_a_negative_delay_sample_counts_as_zero() -> None:
    line = DelayLine(0.0, 5.0)  # uniform in [-5, 5)
    times = [line.deliver_at(random.Random(i), 10.0) for i in range(50)]
    assert min(times) == 10.0 and max(times) > 10.0


def test_a_failure_releases_the_order() -> None:
    line, rng = DelayLine(0.0, keeps_order=True), random.Random()
    assert line.deliver_at(rng, 50.0) == 50.0
    assert line.deliver_at(rng, 10.0) == 50.0  # behind the copy before it
    line.stop(20.0)
    assert line.deliver_at(rng, 10.0) == 20.0  # no longer behind copies the failure lost


@pytest.mark.parametrize("distribution", ["uniform", "normal", "pareto", "paretonormal"])
def test_delay_line_draws_once_per_copy_with_jitter(distribution: str) -> None:
    rng = CountingRandom()
    line = DelayLine(1.0, 0.2, distribution)  # type: ignore[arg-type]
    for _ in range(10):
        line.deliver_at(rng, 0.0)
    assert rng.draws == 10
