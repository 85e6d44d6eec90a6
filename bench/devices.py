"""What both transports offer the workloads: devices that hand out matrix-nio clients.

A *device* is one user's phone or radio: its own loopback address (so the
capture can tell devices apart) and, for the gateway, its own client gateway.
The workloads (bench/workloads.py) only see this interface, so they run the
same code over HTTPS+JSON and over the gateway.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any

import aiohttp
from nio import AsyncClient, AsyncClientConfig

#: one configuration for every client of the benchmark: long request timeouts
#: (a first sync at 100 bit/s takes minutes), no automatic retries on timeout
NIO_CONFIG = AsyncClientConfig(request_timeout=1800, max_timeouts=0)


def new_nio(base_url: str, user: str, *, session: aiohttp.ClientSession | None = None,
            ssl: Any = None) -> AsyncClient:
    """A matrix-nio client for ``base_url``; with ``session``, nio uses it
    instead of making its own (same request code, same keep-alive)."""
    client = AsyncClient(base_url, user, config=NIO_CONFIG, ssl=ssl)
    if session is not None:
        client.client_session = session
    return client


class Device(abc.ABC):
    def __init__(self, ip: str) -> None:
        self.ip = ip
        self._clients: list[AsyncClient] = []

    @abc.abstractmethod
    def nio(self, user: str = "") -> AsyncClient:
        """A fresh matrix-nio client on this device."""

    def link_counters(self) -> dict[str, int] | None:
        """Frames and bytes the device's link saw (gateway only)."""
        return None

    async def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()

    async def __aenter__(self) -> Device:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Transport(abc.ABC):
    name: str
    label: str

    @property
    @abc.abstractmethod
    def server(self) -> tuple[str, int]:
        """The address devices talk to (what the capture watches)."""

    @abc.abstractmethod
    def bpf(self) -> str:
        """tcpdump filter for this transport's frames."""

    @abc.abstractmethod
    async def device(self, ip: str) -> Device:
        ...
