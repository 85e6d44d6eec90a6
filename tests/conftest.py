"""Shared fixtures.

``synapse``: one real homeserver for the whole test session (start-up costs
~2 s).  ``LocalSynapse`` keeps no event-loop state (its child is a plain
Popen), so it is started and stopped with ``asyncio.run`` in a helper thread,
outside pytest-asyncio's loops, and every async test can use it from its own
loop.  Tests that need it are marked ``@pytest.mark.synapse``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.loops import run_in_fresh_loop


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("synapse", reason="matrix-synapse is not installed")
    from coap_gateway.tools.synapse_process import LocalSynapse

    server = LocalSynapse(tmp_path_factory.mktemp("synapse"))
    run_in_fresh_loop(server.start())
    try:
        yield server
    finally:
        run_in_fresh_loop(server.stop())


@pytest.fixture
def server_key() -> bytes:
    """A server gateway's static private key, new for each test."""
    from coap_gateway.secure import keys

    return keys.generate_keypair()[0]
