"""UDP sockets for the fabric and the relay: faces bound at once, and the kernel's drop counter."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

Address = tuple[str, int]

#: receive buffer asked for on every socket (Linux caps it at net.core.rmem_max); a burst
#: that overflows the buffer is lost before the fabric sees it, see `kernel_receive_drops`
RECEIVE_BUFFER_BYTES = 4 << 20


def kernel_receive_drops(sockets: Iterable[socket.socket]) -> int | None:
    """Datagrams the kernel dropped because these sockets' receive buffers were full.

    Read from the "drops" column of /proc/net/udp{,6}, matched by inode;
    None where that is not available (not Linux).  Closed sockets are not counted.
    """
    inodes = set()
    for sock in sockets:
        if sock.fileno() != -1:
            inodes.add(os.fstat(sock.fileno()).st_ino)
    total, readable = 0, False
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path, encoding="ascii") as table:
                rows = table.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            if len(fields) >= 13 and int(fields[9]) in inodes:
                total += int(fields[12])
    return total if readable else None


class UdpFace(asyncio.DatagramProtocol):
    """A UDP socket bound at once (so its port is ours), whose asyncio transport
    arrives a moment later; datagrams sent before then wait in a short queue.
    """

    MAX_WAITING = 1024

    def __init__(self, sock: socket.socket, on_datagram: Callable[[UdpFace, bytes, Address], None]) -> None:
        self.sock = sock
        self.local_address: Address = sock.getsockname()[:2]
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self._waiting: deque[tuple[bytes, Address | None]] = deque()
        self.closed = False
        #: send errors the kernel reported (e.g. ICMP port unreachable on a connected socket)
        self.errors = 0
        self._opening: asyncio.Task[Any] | None = None
        self._lost: asyncio.Future[None] | None = None

    @classmethod
    def open(
        cls,
        loop: asyncio.AbstractEventLoop,
        address: Address,
        on_datagram: Callable[[UdpFace, bytes, Address], None],
        *,
        connect: Any = None,
        family: int = socket.AF_INET,
    ) -> UdpFace:
        """Bind `address` now (OSError if it cannot be) and wrap it in a transport soon."""
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.bind(address)
            if connect is not None:
                sock.connect(connect)
        except OSError:
            sock.close()
            raise
        face = cls(sock, on_datagram)
        face._lost = loop.create_future()
        face._opening = loop.create_task(loop.create_datagram_endpoint(lambda: face, sock=sock))
        return face

    async def ready(self) -> None:
        if self._opening is not None:
            await self._opening

    async def wait_closed(self) -> None:
        """After `close()`: until the socket is closed."""
        if self._opening is not None:
            try:
                await self._opening
            except OSError:
                return
        if self._lost is not None and self.transport is not None:
            await self._lost

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport, not always its subclass
        if self.closed:
            transport.close()
            return
        while self._waiting:
            data, address = self._waiting.popleft()
            self._transmit(data, address)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self._on_datagram(self, data, addr[:2])
        except Exception:
            # an exception here would make asyncio close the transport: log and carry on
            logger.exception("handling a datagram from %s failed", addr)

    def error_received(self, exc: Exception) -> None:
        self.errors += 1

    def send(self, data: bytes, address: Address | None = None) -> bool:
        """Send now, or as soon as the transport exists; False if it cannot be."""
        if self.closed:
            return False
        if self.transport is None:
            if len(self._waiting) >= self.MAX_WAITING:
                return False
            self._waiting.append((data, address))
            return True
        return self._transmit(data, address)

    def _transmit(self, data: bytes, address: Address | None) -> bool:
        assert self.transport is not None
        if data:
            self.transport.sendto(data, address)
            return True
        # asyncio's and uvloop's sendto() silently discard an empty datagram; the socket does not
        try:
            if address is None:
                self.sock.send(b"")
            else:
                self.sock.sendto(b"", address)
        except OSError:
            self.errors += 1
            return False
        return True

    def close(self) -> None:
        self.closed = True
        self._waiting.clear()
        if self.transport is not None:
            self.transport.close()
        elif self._opening is None or self._opening.done():
            self.sock.close()
        # else: connection_made closes the transport when it arrives
