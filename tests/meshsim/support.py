"""What meshsim's tests share that is not a fixture: UDP applications, an event recorder, polling.

Not a test module: test modules import from here, never from each other
(fixtures are in conftest.py).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshsim.net import ShapedForwarder

Address = tuple[str, int]
LOOPBACK = "127.0.0.1"
#: the repository's root (the shipped scenarios are in meshsim/scenarios/)
REPO = Path(__file__).resolve().parents[2]


class App(asyncio.DatagramProtocol):
    """A UDP application: records (time.monotonic(), data, source) of what arrives; may echo."""

    def __init__(self, *, echo: bool = False) -> None:
        self.echo = echo
        self.received: list[tuple[float, bytes, Address]] = []
        self._arrived = asyncio.Event()
        self.transport: asyncio.DatagramTransport
        self.sock: socket.socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.address: Address = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.received.append((time.monotonic(), data, addr))
        if self.echo:
            self.sendto(data, addr)
        self._arrived.set()

    def sendto(self, data: bytes, address: Address) -> None:
        if data:
            self.transport.sendto(data, address)
        else:
            self.sock.sendto(data, address)  # asyncio's sendto() discards empty datagrams

    async def until(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()

    def close(self) -> None:
        self.transport.close()


async def open_app(address: Address = (LOOPBACK, 0), *, echo: bool = False) -> App:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(address)
    _, app = await asyncio.get_running_loop().create_datagram_endpoint(lambda: App(echo=echo), sock=sock)
    app.sock = sock
    return app


class Recorder:
    """Collects a fabric's or a relay's events and lets a test wait for a condition on them."""

    def __init__(self, source: ShapedForwarder) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        source.subscribe(self._on_event)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]

    def count(self, kind: str, **match: Any) -> int:
        return len(self.of(kind, **match))

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll `condition` (sync or async) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last value {value!r})")
        await asyncio.sleep(0.02)
