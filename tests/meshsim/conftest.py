"""Fixtures shared by meshsim's tests (helpers that are not fixtures are in support.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from meshsim.cli import shipped_scenarios
from meshsim.net import KernelSupport, detect_support


@pytest.fixture
def bases() -> tuple[str, str]:
    """Public and private address bases of a range of the test's own, so tests that run at
    the same time never share a socket address."""
    rng = random.SystemRandom()
    x, y = rng.randrange(100, 250), rng.randrange(0, 254, 2)
    return f"127.{x}.{y}.0", f"127.{x}.{y + 1}.0"


@pytest.fixture
def shipped() -> dict[str, Path]:
    """The scenarios that come with meshsim, by name."""
    return shipped_scenarios()


@pytest.fixture(scope="session")
def kernel_support() -> KernelSupport:
    """What this machine offers the kernel backend; skips the test without root and ``ip netns``."""
    support = detect_support()
    if not support.usable:
        pytest.skip(f"kernel backend unavailable: {support.describe()}")
    return support
