"""A pcap file of the run's datagrams, as IPv4/IPv6 + UDP frames.

Classic pcap with nanosecond timestamps (magic 0xa1b23c4d) and link type
LINKTYPE_RAW (101: each frame starts with its IP header), which Wireshark,
tshark and scapy all read.  CoAP is decoded on its default port 5683; for
other ports use ``tshark -r run.pcap -d udp.port==PORT,coap``.

The format is written here with `struct` rather than with scapy's
PcapWriter: scapy builds each frame through its layer machinery, about
0.3 ms per frame on this machine, and the fabric writes from the event loop
between deliveries whose timing it promises to keep.  This costs a few µs.
IP and UDP checksums are filled in, so Wireshark's checksum validation (when
switched on) passes for frames that were not corrupted on the way.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import IO, Self

PCAP_MAGIC_NANOSECONDS = 0xA1B23C4D
LINKTYPE_RAW = 101
#: the largest UDP payload over IPv4 (65535 - 20 - 8)
MAX_UDP_PAYLOAD_V4 = 65507

_FILE_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_UDP_HEADER = struct.Struct("!HHHH")

Address = tuple[str, int]


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src: Address, dst: Address, payload: bytes, *, ip_id: int = 0, ttl: int = 64) -> bytes:
    """An IP + UDP frame carrying `payload` from `src` to `dst` (both IPv4 or both IPv6).

    `ip_id` goes in the IPv4 identification field (ignored for IPv6) and
    `ttl` in the TTL / hop limit.
    """
    src_ip = ipaddress.ip_address(src[0])
    dst_ip = ipaddress.ip_address(dst[0])
    if src_ip.version != dst_ip.version:
        raise ValueError(f"mixed IP versions: {src[0]} -> {dst[0]}")
    udp_length = _UDP_HEADER.size + len(payload)
    if udp_length > 0xFFFF:
        raise ValueError(f"UDP payload of {len(payload)} bytes does not fit a datagram")
    if src_ip.version == 4:
        pseudo = src_ip.packed + dst_ip.packed + struct.pack("!BBH", 0, 17, udp_length)
    else:
        pseudo = src_ip.packed + dst_ip.packed + struct.pack("!IxxxB", udp_length, 17)
    udp = _UDP_HEADER.pack(src[1], dst[1], udp_length, 0) + payload
    udp_checksum = _checksum(pseudo + udp) or 0xFFFF  # 0 means "no checksum" on the wire
    udp = udp[:6] + struct.pack("!H", udp_checksum) + udp[8:]
    if src_ip.version == 4:
        total_length = 20 + udp_length
        if total_length > 0xFFFF:
            raise ValueError(f"UDP payload of {len(payload)} bytes does not fit an IPv4 packet")
        header = _IPV4_HEADER.pack(
            0x45, 0, total_length, ip_id & 0xFFFF, 0x4000, ttl, 17, 0, src_ip.packed, dst_ip.packed
        )  # 0x4000: don't fragment, as the frame is one datagram
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        return header + udp
    return _IPV6_HEADER.pack(6 << 28, udp_length, 17, ttl, src_ip.packed, dst_ip.packed) + udp


class PcapWriter:
    """Writes UDP datagrams to a pcap file (see the module docstring)."""

    def __init__(self, target: str | os.PathLike[str] | IO[bytes], *, snaplen: int = 0xFFFF) -> None:
        if isinstance(target, (str, os.PathLike)):
            self._file: IO[bytes] = open(target, "wb")
            self._owns_file = True
        else:
            self._file = target
            self._owns_file = False
        self._snaplen = snaplen
        self._closed = False
        #: frames written
        self.frames = 0
        self._file.write(_FILE_HEADER.pack(PCAP_MAGIC_NANOSECONDS, 2, 4, 0, 0, snaplen, LINKTYPE_RAW))

    def write_udp(
        self,
        timestamp_ns: int,
        src: Address,
        dst: Address,
        payload: bytes,
        *,
        ip_id: int = 0,
        ttl: int = 64,
    ) -> None:
        """One frame at `timestamp_ns` (nanoseconds since the Unix epoch)."""
        if self._closed:
            raise ValueError("pcap writer is closed")
        frame = udp_frame(src, dst, payload, ip_id=ip_id, ttl=ttl)
        captured = frame[: self._snaplen]
        seconds, nanoseconds = divmod(timestamp_ns, 1_000_000_000)
        self._file.write(_RECORD_HEADER.pack(seconds, nanoseconds, len(captured), len(frame)) + captured)
        self.frames += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._file.flush()
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
