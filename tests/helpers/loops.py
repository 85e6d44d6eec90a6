"""Running coroutines outside pytest-asyncio's loops."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_in_fresh_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion in a new loop on a helper thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
