"""KISS framing for byte-stream links (sans-I/O).

Serial modems and packet radios (TNCs) speak KISS (Chepponis & Karn, 1987):
a frame is ``FEND cmd data FEND``, with FEND and FESC inside the data
escaped as ``FESC TFEND`` / ``FESC TFESC``.  Written by hand because it is
twenty lines and the PyPI KISS packages tie it to AX.25 and their own I/O.

``KissDecoder`` takes bytes in any chunking and yields whole frames; noise
between frames, empty frames, frames over the size limit and bad escapes are
dropped and counted, never raised — a serial line delivers garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FEND = 0xC0
FESC = 0xDB
TFEND = 0xDC
TFESC = 0xDD
#: KISS command byte: port 0, data frame
CMD_DATA = 0x00


def encode_frame(data: bytes, port: int = 0) -> bytes:
    """One KISS data frame carrying ``data``."""
    if not 0 <= port <= 15:
        raise ValueError("KISS port must be 0..15")
    escaped = data.replace(bytes([FESC]), bytes([FESC, TFESC])).replace(bytes([FEND]), bytes([FESC, TFEND]))
    return bytes([FEND, (port << 4) | CMD_DATA]) + escaped + bytes([FEND])


@dataclass
class KissDecoder:
    max_frame: int = 2048
    port: int = 0
    dropped_oversize: int = 0
    dropped_bad_escape: int = 0
    dropped_other_command: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _in_frame: bool = False
    _escape: bool = False
    _broken: bool = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Bytes from the line; returns the frames completed by them."""
        frames: list[bytes] = []
        for byte in chunk:
            if byte == FEND:
                if self._in_frame and self._buf and not self._broken:
                    frame = self._finish()
                    if frame is not None:
                        frames.append(frame)
                self._buf.clear()
                self._in_frame, self._escape, self._broken = True, False, False
                continue
            if not self._in_frame or self._broken:
                continue  # noise before the first FEND, or a frame already lost
            if self._escape:
                self._escape = False
                if byte == TFEND:
                    byte = FEND
                elif byte == TFESC:
                    byte = FESC
                else:
                    self.dropped_bad_escape += 1
                    self._broken = True
                    continue
            elif byte == FESC:
                self._escape = True
                continue
            if len(self._buf) > self.max_frame:  # +1 for the command byte
                self.dropped_oversize += 1
                self._broken = True
                continue
            self._buf.append(byte)
        return frames

    def _finish(self) -> bytes | None:
        cmd = self._buf[0]
        if cmd != ((self.port << 4) | CMD_DATA):
            self.dropped_other_command += 1
            return None
        return bytes(self._buf[1:])
