"""Loopback capture: tcpdump writes pcap to a pipe, parsed here as it arrives.

Every frame the benchmark counts comes from here: ``tcpdump -i lo`` with a BPF
filter for the servers' ports, ``--immediate-mode -U -w -`` so each frame
reaches us as soon as the kernel has it.  A Linux loopback capture has link
type EN10MB with a zeroed 14-byte Ethernet header, so a UDP frame costs
14 + 20 + 8 = 42 bytes over its payload, exactly what DESIGN.md counts, and a
TCP segment 14 + 20 + 32 = 66 (Linux sends the timestamp option).

Windows split the capture by workload.  The benchmark sends *marker*
datagrams to a sink socket that the filter also matches; the reader sees them
in order with everything else, so

- ``open(name, ips)`` returns once the reader has passed the window's opening
  marker: every frame sent afterwards is in the window;
- ``close(window)`` first waits until the devices' flows are *settled* —
  every TCP byte acknowledged, every CoAP confirmable message answered — and
  then sends the closing marker, so trailing ACKs are counted and nothing sent
  after the workload is;
- ``barrier()`` returns once every frame sent before the call has been parsed.

A window counts the frames to and from its devices' addresses (each device
of the benchmark has its own 127.0.0.x), markers excluded.  Nothing here
sleeps to synchronise: conditions are re-evaluated as frames arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "CaptureError",
    "CaptureStats",
    "Frame",
    "LiveCapture",
    "PcapStreamParser",
    "Window",
    "WindowResult",
    "parse_frame",
    "read_pcap",
    "sender_side",
]

MARKER_PREFIX = b"bench-marker:"
#: payload bytes a Frame keeps (enough for an HTTP request's headers)
HEAD_BYTES = 2048
#: bytes kept of each frame: every gateway datagram whole (≤ 1152 B of CoAP), the
#: headers of larger TCP segments (TLS is opaque anyway); the wire length is
#: recorded separately and is what is counted.  In immediate mode libpcap's
#: ring has fixed slots of about this size, so a small snaplen also means many
#: slots: with the default 256 KiB a 2 MiB ring holds 8 frames and bursts drop.
SNAPLEN = 2048
#: the kernel ring, KiB (tcpdump -B)
BUFFER_KIB = 32768
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101

_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}

# CoAP message types (RFC 7252)
CON, NON, ACK, RST = 0, 1, 2, 3
_COAP_TYPES = ("CON", "NON", "ACK", "RST")
#: first bytes of the secure layer's handshake datagrams (docs/protocol.md, Part III)
_SECURE_KINDS = {1: "IK1", 2: "IK2", 3: "XX1", 4: "XX2", 5: "XX3", 6: "RESET", 7: "REFUSE"}
_TLS_TYPES = {20: "tls-ccs", 21: "tls-alert", 22: "tls-handshake", 23: "tls-data"}

_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_ACK = 0x01, 0x02, 0x04, 0x10


class CaptureError(RuntimeError):
    """tcpdump could not start, or the capture went wrong."""


Endpoint = tuple[str, int]


@dataclass(slots=True)
class Frame:
    """One captured frame, decoded down to the transport header."""

    time: float
    #: bytes on the wire: Ethernet + IP + TCP/UDP + payload (the record's orig_len)
    wire: int
    proto: str  # "tcp" | "udp" | "other"
    src: Endpoint
    dst: Endpoint
    #: TCP/UDP payload bytes (for the gateway: what a point-to-point link carries)
    payload_len: int
    #: the first bytes of the payload (a CoAP header, a TLS record header, HTTP headers, a marker)
    head: bytes = b""
    seq: int = 0
    ack: int = 0
    flags: int = 0

    @property
    def is_marker(self) -> bool:
        return self.proto == "udp" and self.head.startswith(MARKER_PREFIX)


def parse_frame(data: bytes, wire: int, ts: float, linktype: int = LINKTYPE_ETHERNET) -> Frame:
    """Decode Ethernet (or raw IP) + IPv4/IPv6 + TCP/UDP; anything else is ``other``."""
    offset = 0
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return Frame(ts, wire, "other", ("", 0), ("", 0), 0)
        ethertype = struct.unpack_from("!H", data, 12)[0]
        offset = 14
        if ethertype == 0x8100 and len(data) >= 18:  # one VLAN tag
            ethertype = struct.unpack_from("!H", data, 16)[0]
            offset = 18
        if ethertype not in (0x0800, 0x86DD):
            return Frame(ts, wire, "other", ("", 0), ("", 0), 0)
    elif linktype != LINKTYPE_RAW:
        raise CaptureError(f"link type {linktype} is not supported (Ethernet or raw IP only)")
    if len(data) < offset + 1:
        return Frame(ts, wire, "other", ("", 0), ("", 0), 0)
    version = data[offset] >> 4
    if version == 4 and len(data) >= offset + 20:
        ihl = (data[offset] & 0x0F) * 4
        total = struct.unpack_from("!H", data, offset + 2)[0]
        proto = data[offset + 9]
        src_ip = socket.inet_ntop(socket.AF_INET, data[offset + 12:offset + 16])
        dst_ip = socket.inet_ntop(socket.AF_INET, data[offset + 16:offset + 20])
        l4 = offset + ihl
        l4_end = offset + total
    elif version == 6 and len(data) >= offset + 40:
        plen = struct.unpack_from("!H", data, offset + 4)[0]
        proto = data[offset + 6]  # extension headers are not followed: the benchmark sends none
        src_ip = socket.inet_ntop(socket.AF_INET6, data[offset + 8:offset + 24])
        dst_ip = socket.inet_ntop(socket.AF_INET6, data[offset + 24:offset + 40])
        l4 = offset + 40
        l4_end = l4 + plen
    else:
        return Frame(ts, wire, "other", ("", 0), ("", 0), 0)
    if proto == 17 and len(data) >= l4 + 8:
        sport, dport, ulen = struct.unpack_from("!HHH", data, l4)
        start = l4 + 8
        return Frame(ts, wire, "udp", (src_ip, sport), (dst_ip, dport), max(0, ulen - 8),
                     bytes(data[start:start + min(max(0, ulen - 8), HEAD_BYTES)]))
    if proto == 6 and len(data) >= l4 + 20:
        sport, dport, seq, ack, off_flags = struct.unpack_from("!HHIIH", data, l4)
        header = (off_flags >> 12) * 4
        start = l4 + header
        payload_len = max(0, l4_end - start)
        return Frame(ts, wire, "tcp", (src_ip, sport), (dst_ip, dport), payload_len,
                     bytes(data[start:start + min(payload_len, HEAD_BYTES)]), seq, ack, off_flags & 0x3F)
    return Frame(ts, wire, "other", (src_ip, 0), (dst_ip, 0), 0)


class PcapStreamParser:
    """Incremental pcap reader: feed bytes, get frames (classic pcap, any byte order)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._record: struct.Struct | None = None
        self._scale = 1e-6
        self.linktype: int | None = None

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        if self._record is None:
            if len(self._buf) < 24:
                return
            magic = bytes(self._buf[:4])
            if magic not in _MAGICS:
                raise CaptureError(f"not a pcap stream (magic {magic.hex()})")
            order, self._scale = _MAGICS[magic]
            self.linktype = struct.unpack_from(order + "I", self._buf, 20)[0] & 0x0FFFFFFF
            self._record = struct.Struct(order + "IIII")
            del self._buf[:24]
        record = self._record
        pos = 0
        buf = self._buf
        while len(buf) - pos >= 16:
            sec, frac, incl, orig = record.unpack_from(buf, pos)
            if len(buf) - pos - 16 < incl:
                break
            body = bytes(buf[pos + 16:pos + 16 + incl])
            pos += 16 + incl
            yield parse_frame(body, orig, sec + frac * self._scale, self.linktype or LINKTYPE_ETHERNET)
        del buf[:pos]


def read_pcap(path: str | Path) -> list[Frame]:
    """Every frame of a pcap file (the benchmark's own parser; tests cross-check it with scapy)."""
    parser = PcapStreamParser()
    with open(path, "rb") as f:
        return list(parser.feed(f.read()))


# ---------------------------------------------------------------- flows


def _seq_after(a: int, b: int) -> bool:
    """a > b in TCP sequence space (mod 2^32)."""
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


def _seq_at_or_after(a: int, b: int) -> bool:
    return a == b or _seq_after(a, b)


@dataclass
class _TcpDirection:
    #: one past the highest sequence number sent (data, SYN and FIN count)
    sent_end: int | None = None
    #: the highest acknowledgement the other side sent for this direction
    acked: int | None = None


@dataclass
class _Flow:
    proto: str
    a: Endpoint
    b: Endpoint
    closed: bool = False
    tcp: dict[Endpoint, _TcpDirection] = field(default_factory=dict)
    #: CoAP confirmable messages not yet answered: (sender, message id)
    outstanding: set[tuple[Endpoint, int]] = field(default_factory=set)
    #: CoAP CONs seen, to spot retransmissions: (sender, message id, length)
    seen_con: deque = field(default_factory=lambda: deque(maxlen=1024))

    def settled(self) -> bool:
        if self.closed:
            return True
        if self.proto == "tcp":
            for direction in self.tcp.values():
                if direction.sent_end is not None and (
                        direction.acked is None or not _seq_at_or_after(direction.acked, direction.sent_end)):
                    return False
            return True
        return not self.outstanding


def classify(frame: Frame, retransmission: bool = False) -> str:
    """A short label of what a frame is, for the per-frame listings."""
    if frame.proto == "tcp":
        f = frame.flags
        if f & _TCP_SYN:
            kind = "syn-ack" if f & _TCP_ACK else "syn"
        elif f & _TCP_RST:
            kind = "rst"
        elif f & _TCP_FIN:
            kind = "fin"
        elif frame.payload_len == 0:
            kind = "ack"
        else:
            kind = _TLS_TYPES.get(frame.head[0], "data") if frame.head else "data"
    elif frame.proto == "udp" and frame.head:
        first = frame.head[0]
        if first >> 6 == 1 and len(frame.head) >= 4:
            ctype = (first >> 4) & 3
            code = frame.head[1]
            kind = f"coap-{_COAP_TYPES[ctype]}" + ("-empty" if code == 0 else "")
        else:
            kind = _SECURE_KINDS.get(first, "udp")
    else:
        kind = frame.proto
    return kind + ("-retx" if retransmission else "")


# ---------------------------------------------------------------- windows


@dataclass
class WindowResult:
    """What one device (or set of devices) exchanged inside a window."""

    name: str
    ips: list[str]
    frames: int = 0
    wire_bytes: int = 0
    payload_bytes: int = 0
    retransmissions: int = 0
    up: dict[str, int] = field(default_factory=lambda: {"frames": 0, "wire_bytes": 0, "payload_bytes": 0})
    down: dict[str, int] = field(default_factory=lambda: {"frames": 0, "wire_bytes": 0, "payload_bytes": 0})
    kinds: dict[str, int] = field(default_factory=dict)
    #: capture time of the opening and closing markers
    opened: float = 0.0
    closed: float = 0.0
    #: the payloads of the opening and closing markers (to find the window again in the pcap)
    markers: list[str] = field(default_factory=list)
    #: True when the devices' flows were settled before the window closed
    settled: bool = True
    #: per frame: [seconds since open, "up"/"down", wire bytes, payload bytes, kind]
    frame_list: list[list[Any]] = field(default_factory=list)
    #: with ``sides``: what each side sent (see ``sender_side``)
    sent_by: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return max(0.0, self.closed - self.opened)

    def as_dict(self, *, with_frames: bool = True) -> dict[str, Any]:
        doc = {
            "ips": self.ips,
            "frames": self.frames,
            "wire_bytes": self.wire_bytes,
            "payload_bytes": self.payload_bytes,
            "retransmissions": self.retransmissions,
            "up": dict(self.up),
            "down": dict(self.down),
            "kinds": dict(sorted(self.kinds.items())),
            "duration_s": round(self.duration, 6),
            "settled": self.settled,
            "markers": list(self.markers),
        }
        if self.sent_by:
            doc["sent_by"] = {side: dict(counts) for side, counts in self.sent_by.items()}
        if with_frames:
            doc["frame_list"] = self.frame_list
        return doc


def sender_side(src_ip: str, dst_ip: str, sides: Mapping[str, str]) -> str | None:
    """Which side sent a frame, ``sides`` mapping each side's addresses to its name.

    A frame from one of a side's addresses is that side's; a frame from an address
    of neither (a homeserver's outgoing connection leaves from 127.0.0.1, whatever
    address its listener has) was sent towards one side, so by the other one —
    which assumes two sides."""
    if src_ip in sides:
        return sides[src_ip]
    if dst_ip in sides:
        others = {name for name in sides.values() if name != sides[dst_ip]}
        return others.pop() if len(others) == 1 else None
    return None


class Window:
    def __init__(self, name: str, ips: Iterable[str], keep_frames: bool = True,
                 sides: Mapping[str, str] | None = None):
        self.name = name
        self.ips = frozenset(ips)
        self.keep_frames = keep_frames
        #: address -> side name: count what each side sent (two peers, not device and server)
        self.sides = dict(sides or {})
        self.result = WindowResult(name, sorted(self.ips))
        self.active = False
        self.done = False

    def wants(self, frame: Frame) -> bool:
        return frame.src[0] in self.ips or frame.dst[0] in self.ips

    def add(self, frame: Frame, kind: str, retransmission: bool) -> None:
        r = self.result
        up = frame.src[0] in self.ips
        side = r.up if up else r.down
        r.frames += 1
        r.wire_bytes += frame.wire
        r.payload_bytes += frame.payload_len
        side["frames"] += 1
        side["wire_bytes"] += frame.wire
        side["payload_bytes"] += frame.payload_len
        r.retransmissions += retransmission
        r.kinds[kind] = r.kinds.get(kind, 0) + 1
        if self.sides:
            sender = sender_side(frame.src[0], frame.dst[0], self.sides) or "unknown"
            counts = r.sent_by.setdefault(sender, {"frames": 0, "wire_bytes": 0, "payload_bytes": 0})
            counts["frames"] += 1
            counts["wire_bytes"] += frame.wire
            counts["payload_bytes"] += frame.payload_len
        if self.keep_frames:
            r.frame_list.append([round(frame.time - r.opened, 6), "up" if up else "down", frame.wire,
                                 frame.payload_len, kind])


# ---------------------------------------------------------------- homeserver side


_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"PATCH ", b"HEAD ", b"OPTIONS ")
_QUERY_TOKEN = re.compile(rb"[?&]access_token=([^&\s]+)")
_BEARER = re.compile(rb"\r\nauthorization:\s*bearer\s+(\S+)", re.IGNORECASE)


class SyncWatch:
    """Which access tokens have a ``/sync`` waiting at the homeserver.

    Fed the frames of the homeserver's plain-HTTP port (requests from nginx
    or from the server gateway, and the answers): a request whose path has
    ``/sync`` is pending on its connection until the answer's status line
    passes.  "The homeserver holds this user's long-poll" is then a fact
    read off the wire, the same for both transports and for a gateway that
    polls the homeserver itself (sync push).
    """

    def __init__(self, server: Endpoint) -> None:
        self.server = server
        self._pending: dict[Endpoint, bytes | None] = {}

    def __call__(self, frame: Frame, kind: str) -> None:
        if frame.proto != "tcp":
            return
        if frame.dst == self.server:
            client = frame.src
            if frame.flags & (_TCP_FIN | _TCP_RST):
                self._pending.pop(client, None)
            elif frame.payload_len and frame.head.startswith(_METHODS):
                line, _, _ = frame.head.partition(b"\r\n")
                target = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
                path = target.partition(b"?")[0]
                if path.endswith(b"/sync"):
                    match = _QUERY_TOKEN.search(target) or _BEARER.search(frame.head)
                    self._pending[client] = match.group(1) if match else b""
                else:
                    self._pending[client] = None
        elif frame.src == self.server:
            if frame.flags & (_TCP_FIN | _TCP_RST) or (frame.payload_len and frame.head.startswith(b"HTTP/1.")):
                self._pending.pop(frame.dst, None)

    def pending(self, token: str) -> bool:
        wanted = token.encode()
        return any(t == wanted for t in self._pending.values())


# ---------------------------------------------------------------- capture


@dataclass
class CaptureStats:
    frames: int = 0
    wire_bytes: int = 0
    markers: int = 0
    #: from tcpdump's summary on exit (None when it did not say)
    captured: int | None = None
    received_by_filter: int | None = None
    dropped_by_kernel: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tcpdump_available() -> str | None:
    """Why the capture cannot run here, or None when it can."""
    if shutil.which("tcpdump") is None:
        return "tcpdump is not installed (make system-packages)"
    import os
    if os.geteuid() != 0:
        return "capturing on the loopback interface needs root"
    return None


class LiveCapture:
    """tcpdump on the loopback interface, parsed live (see the module docstring)."""

    def __init__(self, bpf_filter: str, pcap_path: str | Path, *, interface: str = "lo",
                 marker_host: str = "127.0.0.1", snaplen: int = SNAPLEN, buffer_kib: int = BUFFER_KIB) -> None:
        self.pcap_path = Path(pcap_path)
        self.snaplen = snaplen
        self.buffer_kib = buffer_kib
        self.interface = interface
        self.stats = CaptureStats()
        self._sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sink.bind((marker_host, 0))
        self._sink.setblocking(False)
        self.marker_address: Endpoint = self._sink.getsockname()
        self._sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sender.bind((marker_host, 0))
        self.filter = f"({bpf_filter}) or (udp and dst host {marker_host} and dst port {self.marker_address[1]})"
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[bytes] | None = None
        self._file: BinaryIO | None = None
        self._parser = PcapStreamParser()
        self._flows: dict[tuple[str, frozenset[Endpoint]], _Flow] = {}
        self._windows: list[Window] = []
        self._pending: dict[bytes, tuple[asyncio.Future[float], Callable[[float, bytes], None] | None]] = {}
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._marker_seq = 0
        self._failure: BaseException | None = None
        self.frame_observers: list[Callable[[Frame, str], None]] = []

    # -- lifecycle

    async def start(self, timeout: float = 15.0) -> None:
        why = tcpdump_available()
        if why:
            raise CaptureError(why)
        self.pcap_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.pcap_path, "wb")
        self._process = await asyncio.create_subprocess_exec(
            "tcpdump", "-i", self.interface, "-n", "-s", str(self.snaplen), "-B", str(self.buffer_kib),
            "--immediate-mode", "-U", "-w", "-", self.filter,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        assert self._process.stderr is not None
        # tcpdump says "listening on lo, ..." once the filter is attached: from
        # then on every matching frame is captured
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self._process.stderr.readline()
                    if not line:
                        await self._process.wait()
                        raise CaptureError("tcpdump exited: " + b"".join(lines).decode(errors="replace").strip())
                    lines.append(line)
                    if b"listening on" in line:
                        break
        except TimeoutError:
            await self._kill()
            raise CaptureError("tcpdump did not start listening in time") from None
        except BaseException:
            await self._kill()
            raise
        self._stderr = asyncio.create_task(self._process.stderr.read())
        self._reader = asyncio.create_task(self._read())
        # and the first marker proves the whole path (filter, pipe, parser) works
        await self.barrier(timeout=timeout)

    async def stop(self) -> CaptureStats:
        process = self._process
        if process is None:
            return self.stats
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(2)  # SIGINT: tcpdump flushes and prints its summary
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            await self._kill()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        summary = (await self._stderr).decode(errors="replace") if self._stderr is not None else ""
        for key, pattern in (("captured", r"(\d+) packets? captured"),
                             ("received_by_filter", r"(\d+) packets? received by filter"),
                             ("dropped_by_kernel", r"(\d+) packets? dropped by kernel")):
            match = re.search(pattern, summary)
            if match:
                setattr(self.stats, key, int(match.group(1)))
        if self._file is not None:
            self._file.close()
            self._file = None
        self._sink.close()
        self._sender.close()
        self._process = None
        return self.stats

    async def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()

    async def __aenter__(self) -> LiveCapture:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- reading

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        try:
            while True:
                chunk = await stdout.read(1 << 16)
                if not chunk:
                    break
                if self._file is not None:
                    self._file.write(chunk)
                for frame in self._parser.feed(chunk):
                    self._on_frame(frame)
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            failure = self._failure or CaptureError("the capture ended")
            for future, _ in self._pending.values():
                if not future.done():
                    future.set_exception(failure)
            for _, future in self._conditions:
                if not future.done():
                    future.set_exception(failure)

    def _on_frame(self, frame: Frame) -> None:
        if frame.is_marker:
            self.stats.markers += 1
            # drain the sink so its socket buffer never fills
            with contextlib.suppress(BlockingIOError, OSError):
                while True:
                    self._sink.recv(2048)
            entry = self._pending.pop(frame.head, None)
            if entry is not None:
                future, action = entry
                if action is not None:
                    action(frame.time, frame.head)
                if not future.done():
                    future.set_result(frame.time)
            return
        self.stats.frames += 1
        self.stats.wire_bytes += frame.wire
        retransmission = self._track(frame)
        kind = classify(frame, retransmission)
        for window in self._windows:
            if window.active and window.wants(frame):
                window.add(frame, kind, retransmission)
        for observer in self.frame_observers:
            observer(frame, kind)
        if self._conditions:
            self._check_conditions()

    def _track(self, frame: Frame) -> bool:
        """Update the flow's state; True when the frame is a retransmission."""
        if frame.proto not in ("tcp", "udp"):
            return False
        key = (frame.proto, frozenset((frame.src, frame.dst)))
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = _Flow(frame.proto, frame.src, frame.dst)
        if frame.proto == "tcp":
            return self._track_tcp(flow, frame)
        return self._track_coap(flow, frame)

    @staticmethod
    def _track_tcp(flow: _Flow, frame: Frame) -> bool:
        if frame.flags & _TCP_SYN:
            flow.closed = False
            flow.tcp.clear()
        mine = flow.tcp.setdefault(frame.src, _TcpDirection())
        theirs = flow.tcp.setdefault(frame.dst, _TcpDirection())
        if frame.flags & _TCP_RST:
            flow.closed = True
            return False
        length = frame.payload_len + (1 if frame.flags & _TCP_SYN else 0) + (1 if frame.flags & _TCP_FIN else 0)
        retransmission = False
        if length:
            end = (frame.seq + length) & 0xFFFFFFFF
            if mine.sent_end is None or _seq_after(end, mine.sent_end):
                mine.sent_end = end
            elif frame.payload_len:
                retransmission = True  # these bytes were sent before
        if frame.flags & _TCP_ACK and (theirs.acked is None or _seq_after(frame.ack, theirs.acked)):
            theirs.acked = frame.ack
        return retransmission

    @staticmethod
    def _track_coap(flow: _Flow, frame: Frame) -> bool:
        head = frame.head
        if len(head) < 4 or head[0] >> 6 != 1:
            return False
        ctype = (head[0] >> 4) & 3
        mid = int.from_bytes(head[2:4], "big")
        if ctype == CON:
            key = (frame.src, mid, frame.payload_len)
            retransmission = key in flow.seen_con
            if not retransmission:
                flow.seen_con.append(key)
            flow.outstanding.add((frame.src, mid))
            return retransmission
        if ctype in (ACK, RST):
            flow.outstanding.discard((frame.dst, mid))
        return False

    # -- conditions and markers

    def _check_conditions(self) -> None:
        keep = []
        for predicate, future in self._conditions:
            if future.done():
                continue
            try:
                ok = predicate()
            except Exception as exc:
                future.set_exception(exc)
                continue
            if ok:
                future.set_result(None)
            else:
                keep.append((predicate, future))
        self._conditions = keep

    async def until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``predicate()`` holds (checked now and after every frame);
        False on timeout."""
        if self._failure is not None:
            raise CaptureError("the capture failed") from self._failure
        if predicate():
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._conditions.append((predicate, future))
        try:
            async with asyncio.timeout(timeout):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            if not future.done():
                future.cancel()

    async def _marker(self, action: Callable[[float, bytes], None] | None = None,
                      timeout: float | None = 30.0) -> float:
        if self._reader is None or self._reader.done():
            raise CaptureError("the capture is not running") from self._failure
        self._marker_seq += 1
        payload = MARKER_PREFIX + str(self._marker_seq).encode()
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pending[payload] = (future, action)
        self._sender.sendto(payload, self.marker_address)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            self._pending.pop(payload, None)
            raise CaptureError("a capture marker never came back: tcpdump is not seeing loopback traffic") from None

    async def barrier(self, timeout: float | None = 30.0) -> float:
        """Return once every frame sent before this call has been parsed."""
        return await self._marker(timeout=timeout)

    def flows_of(self, ips: Iterable[str]) -> list[_Flow]:
        ips = set(ips)
        return [f for f in self._flows.values() if f.a[0] in ips or f.b[0] in ips]

    def settled(self, ips: Iterable[str]) -> bool:
        """Every TCP byte of these devices acknowledged, every CoAP CON answered."""
        return all(flow.settled() for flow in self.flows_of(ips))

    async def settle(self, ips: Iterable[str], timeout: float = 10.0) -> bool:
        """Wait (as far as the capture has seen everything sent until now) until
        the devices' flows are settled; False when they were not in ``timeout``."""
        ips = frozenset(ips)
        await self.barrier()
        return await self.until(lambda: self.settled(ips), timeout)

    async def open(self, name: str, ips: Iterable[str], *, keep_frames: bool = True,
                   sides: Mapping[str, str] | None = None) -> Window:
        window = Window(name, ips, keep_frames, sides)
        self._windows.append(window)

        def activate(ts: float, marker: bytes) -> None:
            window.result.opened = ts
            window.result.markers.append(marker.decode())
            window.active = True

        await self._marker(activate)
        return window

    async def close(self, window: Window, *, settle_timeout: float = 10.0) -> WindowResult:
        window.result.settled = await self.settle(window.ips, settle_timeout)

        def deactivate(ts: float, marker: bytes) -> None:
            window.result.closed = ts
            window.result.markers.append(marker.decode())
            window.active = False
            window.done = True

        await self._marker(deactivate)
        self._windows.remove(window)
        return window.result
