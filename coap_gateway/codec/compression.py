"""Raw deflate per message with a preset dictionary (sans-I/O).

Each message is compressed on its own (no state across messages: a lost
datagram must not break the next one) as raw deflate (RFC 1951, no zlib
wrapper — that would cost 6 bytes per message) primed with a preset
dictionary that both ends hold, identified by its content hash.

Decompression is bounded: output beyond ``max_size`` is never produced,
so a deflate bomb costs at most ``max_size`` bytes of memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from zlib_ng import zlib_ng

from ..errors import CompressionError, DecompressionBombError
from . import datafiles

#: raw deflate, 32 KiB window (the whole preset dictionary is reachable)
WBITS = -15
LEVEL = 9
MEM_LEVEL = 9
#: default cap on a decompressed payload; media uses its own, larger cap
DEFAULT_MAX_SIZE = 1 << 20
#: deflate only ever looks 32 KiB back, so longer dictionaries waste memory
MAX_DICTIONARY_SIZE = 32 * 1024


@dataclass(frozen=True)
class FlateDictionary:
    data: bytes
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.data) > MAX_DICTIONARY_SIZE:
            raise CompressionError(
                f"preset dictionary of {len(self.data)} B exceeds the {MAX_DICTIONARY_SIZE} B window"
            )
        object.__setattr__(self, "digest", datafiles.content_digest(self.data))


EMPTY_DICTIONARY = FlateDictionary(b"")


def _zdict(dictionary: FlateDictionary | bytes) -> bytes:
    # a preset dictionary is named by its digest; sync push primes deflate
    # with dictionaries made per notification, which need no name
    return dictionary.data if isinstance(dictionary, FlateDictionary) else dictionary[-MAX_DICTIONARY_SIZE:]


#: a compressor primed with each preset dictionary: copying one skips
#: deflateSetDictionary, which hashes the whole 32 KiB dictionary again for
#: every message (measured: 43 µs → 12 µs per small message)
_PRIMED: OrderedDict[FlateDictionary, Any] = OrderedDict()
_PRIMED_MAX = 16


def _new_compressor(zdict: bytes) -> Any:
    if zdict:
        return zlib_ng.compressobj(LEVEL, zlib_ng.DEFLATED, WBITS, MEM_LEVEL, zlib_ng.Z_DEFAULT_STRATEGY, zdict)
    return zlib_ng.compressobj(LEVEL, zlib_ng.DEFLATED, WBITS, MEM_LEVEL, zlib_ng.Z_DEFAULT_STRATEGY)


def _compressor(dictionary: FlateDictionary | bytes) -> Any:
    if not isinstance(dictionary, FlateDictionary):
        return _new_compressor(_zdict(dictionary))  # made for one message (sync push): nothing to reuse
    primed = _PRIMED.get(dictionary)
    if primed is None:
        primed = _PRIMED[dictionary] = _new_compressor(dictionary.data)
        while len(_PRIMED) > _PRIMED_MAX:
            _PRIMED.popitem(last=False)
    else:
        _PRIMED.move_to_end(dictionary)
    return primed.copy()


def compress(data: bytes, dictionary: FlateDictionary | bytes = EMPTY_DICTIONARY) -> bytes:
    """Raw deflate of ``data`` primed with ``dictionary``."""
    c = _compressor(dictionary)
    return c.compress(data) + c.flush()


def compress_sections(sections: list[bytes], dictionary: FlateDictionary | bytes = EMPTY_DICTIONARY) -> bytes:
    """One raw deflate stream of the sections one after the other, each
    starting a block of its own (Z_BLOCK): a section of English and one of
    random bytes each get Huffman codes of their own, where one block
    would share them with the structure before.  Any inflater reads it as
    one stream; only the encoder's choice of blocks differs."""
    c = _compressor(dictionary)
    out = []
    for i, section in enumerate(sections):
        out.append(c.compress(section))
        if i < len(sections) - 1:
            out.append(c.flush(zlib_ng.Z_BLOCK))
    out.append(c.flush())
    return b"".join(out)


def decompress(
    data: bytes,
    dictionary: FlateDictionary | bytes = EMPTY_DICTIONARY,
    max_size: int = DEFAULT_MAX_SIZE,
) -> bytes:
    """Inverse of :func:`compress`; refuses truncated, trailing or oversized data."""
    zdict = _zdict(dictionary)
    try:
        if zdict:
            d = zlib_ng.decompressobj(WBITS, zdict)
        else:
            d = zlib_ng.decompressobj(WBITS)
        # one byte past the cap tells "exactly max_size" from "more than that"
        out = d.decompress(data, max_size + 1)
    except zlib_ng.error as exc:
        raise CompressionError(f"corrupt deflate data: {exc}") from exc
    if len(out) > max_size:
        raise DecompressionBombError(f"payload expands beyond {max_size} bytes")
    if not d.eof:
        raise CompressionError("truncated deflate data")
    if d.unused_data:
        raise CompressionError(f"{len(d.unused_data)} bytes after the end of the deflate stream")
    return out


def load_flate_dictionary(digest: str) -> FlateDictionary:
    """The dictionary ``dictionaries/flate/<hex>.bin`` whose content hash is ``digest``."""
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise CompressionError(f"malformed dictionary identifier {digest!r}")
    dictionary = FlateDictionary(datafiles.read_bytes(f"flate/{hexdigest}.bin"))
    if dictionary.digest != digest:
        raise CompressionError(f"dictionary file for {digest} has content hash {dictionary.digest}")
    return dictionary
