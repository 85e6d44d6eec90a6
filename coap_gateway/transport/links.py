"""Datagram links under CoAP: UDP and KISS over a serial line.

Each is a thin asyncio shell implementing ``interfaces.DatagramLink``:
``send(peer, datagram)``, a receiver callback, ``queued_bytes(peer)`` (what
still waits to leave, so retransmission timers can count it) and ``close()``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import termios
import tty
from collections.abc import Hashable

from .interfaces import Receiver
from .kiss import KissDecoder, encode_frame
from .timing import LinkBudget

log = logging.getLogger(__name__)

#: the largest UDP payload over IPv4
MAX_UDP_PAYLOAD = 65507


def _ignore(peer: Hashable, datagram: bytes) -> None:
    pass


# ------------------------------------------------------------------- UDP


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.receiver: Receiver = _ignore
        self.link_name = "udp"

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        # IPv6 addresses come as 4-tuples; the flow info and scope do not
        # identify the peer
        self.receiver((addr[0], addr[1]), data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the peer may come back
        log.debug("UDP error on %s: %s", self.link_name, exc)


class UdpLink:
    """CoAP over UDP, IPv4 or IPv6; peers are ``(host, port)``."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _UdpProtocol, budget: LinkBudget):
        self.transport = transport
        self.budget = budget
        self._protocol = protocol
        host, port = self.local_address
        self.name = protocol.link_name = f"udp://[{host}]:{port}" if ":" in host else f"udp://{host}:{port}"

    @classmethod
    async def open(cls, host: str, port: int, budget: LinkBudget | None = None) -> "UdpLink":
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, protocol = await loop.create_datagram_endpoint(_UdpProtocol, local_addr=(host, port), family=family)
        # by default a fast link, counted with Ethernet + IP + UDP headers
        default = LinkBudget(frame_overhead=42 if family == socket.AF_INET else 62)
        return cls(transport, protocol, budget or default)

    @property
    def local_address(self) -> tuple[str, int]:
        sock = self.transport.get_extra_info("sockname")
        return sock[0], sock[1]

    def set_receiver(self, receiver: Receiver) -> None:
        self._protocol.receiver = receiver

    def send(self, peer: Hashable, datagram: bytes) -> None:
        if len(datagram) > MAX_UDP_PAYLOAD:
            log.warning("dropping a %d-byte datagram: larger than UDP allows", len(datagram))
            return
        self.transport.sendto(datagram, peer)  # type: ignore[arg-type]

    def queued_bytes(self, peer: Hashable) -> int:
        return self.transport.get_write_buffer_size()

    async def close(self) -> None:
        self.transport.close()


# ------------------------------------------------------------ KISS serial


class SerialLink:
    """KISS-framed CoAP over a byte stream: a serial device or a pty.

    There is exactly one peer, the other end of the line (peer key
    ``"line"``).  Writes are buffered here and drained as the line accepts
    them, so ``queued_bytes`` tells timers what still waits.
    """

    PEER = "line"

    def __init__(self, fd: int, budget: LinkBudget, name: str, *, owns_fd: bool = True):
        self.fd = fd
        self.budget = budget
        self.name = name
        self._owns_fd = owns_fd
        self._decoder = KissDecoder(max_frame=budget.max_frame)
        self._out = bytearray()
        self._receiver: Receiver = _ignore
        self._loop = asyncio.get_running_loop()
        self._writing = False
        self._closed = False
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)

    @classmethod
    async def open(cls, path: str, budget: LinkBudget, baud: int | None = None) -> "SerialLink":
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            if os.isatty(fd):
                tty.setraw(fd)
                if baud is not None:
                    speed = getattr(termios, f"B{baud}", None)
                    if speed is None:
                        raise ValueError(f"unsupported baud rate {baud}")
                    attrs = termios.tcgetattr(fd)
                    attrs[4] = attrs[5] = speed
                    termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, budget, f"serial:{path}")

    @property
    def dropped_frames(self) -> int:
        d = self._decoder
        return d.dropped_oversize + d.dropped_bad_escape + d.dropped_other_command

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def send(self, peer: Hashable, datagram: bytes) -> None:
        if self._closed:
            return
        self._out += encode_frame(datagram)
        self._flush()

    def queued_bytes(self, peer: Hashable) -> int:
        return len(self._out)

    def _flush(self) -> None:
        while self._out:
            try:
                written = os.write(self.fd, self._out)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                log.warning("serial write failed on %s: %s", self.name, exc)
                self._out.clear()
                return
            if written == 0:
                break
            del self._out[:written]
        if self._out and not self._writing:
            self._loop.add_writer(self.fd, self._flush)
            self._writing = True
        elif not self._out and self._writing:
            self._loop.remove_writer(self.fd)
            self._writing = False

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the other side of a pty went away
                log.warning("serial read failed on %s: %s", self.name, exc)
            return
        for frame in self._decoder.feed(chunk):
            self._receiver(self.PEER, frame)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.fd)
        if self._writing:
            self._loop.remove_writer(self.fd)
        if self._owns_fd:
            os.close(self.fd)
