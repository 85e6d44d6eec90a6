"""Train a preset deflate dictionary from sample payloads, and measure it.

Written by hand because no maintained library builds *raw deflate* preset
dictionaries: zstd's trainer (COVER) emits zstd's own dictionary format, and
brotli's Python binding takes no custom dictionary.  The method is the
classic one for zlib's ``zdict``: substrings that occur in many samples are
worth the most, and deflate codes short distances more cheaply, so the most
valuable strings go at the *end* of the dictionary.

Pure functions: samples in, dictionary bytes and figures out.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from statistics import mean
from typing import Callable, Iterable, Sequence

from ..compression import MAX_DICTIONARY_SIZE, FlateDictionary, compress

#: substring lengths counted; deflate matches are 3..258 bytes long
LENGTHS = (4, 6, 8, 12, 16, 24, 32, 48, 64)
#: a substring must appear in at least this many samples to be considered
MIN_SAMPLES = 3
#: deflate spends about this many bytes on a match (length + distance codes)
MATCH_COST = 3


def split_train_holdout(items: Sequence[bytes], holdout_every: int = 5) -> tuple[list[bytes], list[bytes]]:
    """Deterministic split: sample i is held out when hash(sample) says so.

    Hashing the content (not the index) keeps the split stable when the
    corpus is re-recorded in a different order.
    """
    train, holdout = [], []
    for item in items:
        bucket = hashlib.sha256(item).digest()[0] % holdout_every
        (holdout if bucket == 0 else train).append(item)
    return train, holdout


def train_dictionary(
    samples: Iterable[bytes],
    size: int = MAX_DICTIONARY_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> bytes:
    """A preset dictionary of at most ``size`` bytes for payloads like ``samples``."""
    samples = [s for s in samples if s]
    doc_freq: Counter[bytes] = Counter()
    for i, sample in enumerate(samples):
        seen: set[bytes] = set()
        for length in LENGTHS:
            for start in range(0, len(sample) - length + 1):
                seen.add(sample[start : start + length])
        doc_freq.update(seen)
        if progress is not None:
            progress(i + 1, len(samples))
    candidates = [
        (count * (len(s) - MATCH_COST), s) for s, count in doc_freq.items() if count >= MIN_SAMPLES
    ]
    candidates.sort(key=lambda c: (-c[0], c[1]))

    chosen: list[tuple[int, bytes]] = []
    total = 0
    joined = b""
    for score, s in candidates:
        if total + len(s) > size:
            continue
        if s in joined:  # already covered by a longer string chosen earlier
            continue
        chosen.append((score, s))
        total += len(s)
        # cheap to rebuild: at most a few thousand strings of ≤ 64 bytes
        joined = b"\x00".join(c for _, c in chosen)
        if total >= size - min(LENGTHS):
            break
    chosen.sort(key=lambda c: (c[0], c[1]))  # most valuable last: shortest distances
    return b"".join(s for _, s in chosen)[-size:]


@dataclass(frozen=True)
class SizeReport:
    samples: int
    json: float
    cbor: float
    cbor_deflate: float
    cbor_deflate_dict: float
    #: what goes on the wire: deflated or not, whichever is smaller
    payload: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def measure(pairs: Sequence[tuple[bytes, bytes]], dictionary: FlateDictionary, cf_cost: int = 2) -> SizeReport:
    """Mean sizes over (json, cbor) pairs: raw JSON, CBOR, CBOR+deflate
    without and with the dictionary, and the payload actually sent."""
    if not pairs:
        raise ValueError("no samples to measure")
    with_dict = [len(compress(c, dictionary)) for _, c in pairs]
    return SizeReport(
        samples=len(pairs),
        json=mean(len(j) for j, _ in pairs),
        cbor=mean(len(c) for _, c in pairs),
        cbor_deflate=mean(len(compress(c)) for _, c in pairs),
        cbor_deflate_dict=mean(with_dict),
        payload=mean(min(d, len(c) + cf_cost) for d, (_, c) in zip(with_dict, pairs)),
    )
