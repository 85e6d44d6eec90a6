"""Seeded random streams, and netem's delay distributions.

Every random decision in meshsim draws from its own stream, derived from
(seed, link id, purpose).  Streams never share state, so turning a feature on
(say, duplication) cannot shift the numbers another feature (say, loss) sees,
and the same seed always gives the same run.
"""

from __future__ import annotations

import hashlib
import random
from statistics import NormalDist
from typing import Literal

JitterDistribution = Literal["uniform", "normal", "pareto", "paretonormal"]
JITTER_DISTRIBUTIONS: tuple[JitterDistribution, ...] = ("uniform", "normal", "pareto", "paretonormal")

# netem's tables hold int16 values scaled by NETEM_DIST_SCALE; these bound them.
NETEM_DIST_SCALE = 8192
TABLE_MIN = -32768 / NETEM_DIST_SCALE
TABLE_MAX = 32767 / NETEM_DIST_SCALE

_STANDARD_NORMAL = NormalDist()


def derive_seed(seed: int, link_id: str, purpose: str) -> int:
    """The 64-bit seed of the stream for `purpose` on `link_id` in a run seeded `seed`.

    The key is ``f"{seed}/{link_id}/{purpose}"``; `purpose` may not contain
    "/", which keeps the key unambiguous even when link ids do.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, not {seed!r}")
    if not purpose or "/" in purpose:
        raise ValueError(f"purpose must be non-empty and contain no '/': {purpose!r}")
    digest = hashlib.sha256(f"{seed}/{link_id}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def derive_rng(seed: int, link_id: str, purpose: str) -> random.Random:
    """An independent, reproducible random stream; see `derive_seed`."""
    return random.Random(derive_seed(seed, link_id, purpose))


def _clip_to_table(value: float) -> float:
    return min(max(value, TABLE_MIN), TABLE_MAX)


def _normal_value(u: float) -> float:
    # netem's normal.dist stores the standard normal quantile, clipped to int16.
    if u <= 0.0:
        return TABLE_MIN
    return _clip_to_table(_STANDARD_NORMAL.inv_cdf(u))


def _pareto_value(u: float) -> float:
    # netem's pareto.dist: Pareto(alpha=3, x_m=1) shifted to mean 0, times 4/3.
    return _clip_to_table(((1.0 - u) ** (-1.0 / 3.0) - 1.5) * (4.0 / 3.0))


def netem_table_value(distribution: JitterDistribution, u: float) -> float:
    """The value netem's table for `distribution` holds at quantile `u` in [0, 1).

    netem sets a jittered delay to ``delay + jitter * value``.  These are the
    continuous functions netem's 4096-entry tables sample (iproute2's
    netem/normal.c, pareto.c, paretonormal.c), without the quantisation:

    - uniform: ``2u - 1``, i.e. [-1, 1), as netem's ``rnd % 2σ - σ``;
    - normal: the standard normal quantile, clipped to [-4, 32767/8192];
    - pareto: ``((1-u)^(-1/3) - 1.5) * 4/3`` (mean 0), clipped above at
      32767/8192, so values lie in [-2/3, 32767/8192];
    - paretonormal: ``0.25 * normal + 0.75 * pareto`` at the same quantile
      (the table adds the two tables entry by entry).
    """
    if not 0.0 <= u < 1.0:
        raise ValueError(f"quantile must be in [0, 1): {u!r}")
    if distribution == "uniform":
        return 2.0 * u - 1.0
    if distribution == "normal":
        return _normal_value(u)
    if distribution == "pareto":
        return _pareto_value(u)
    if distribution == "paretonormal":
        return _clip_to_table(0.25 * _normal_value(u) + 0.75 * _pareto_value(u))
    raise ValueError(f"unknown jitter distribution {distribution!r}")


def sample_delay(rng: random.Random, delay: float, jitter: float, distribution: JitterDistribution) -> float:
    """One delay drawn like netem's tabledist(); may be negative, callers clamp.

    Draws exactly one number from `rng` when `jitter` > 0 and none otherwise
    (netem returns the mean untouched when σ is 0).
    """
    if jitter == 0.0:
        return delay
    return delay + jitter * netem_table_value(distribution, rng.random())
