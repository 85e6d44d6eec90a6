"""Train a preset deflate dictionary from sample payloads, and measure it.

Written by hand because no maintained library builds *raw deflate* preset
dictionaries: zstd's trainer emits zstd's own dictionary format (entropy
tables before the content), and brotli's Python binding takes no custom
dictionary.  The method is zstd's COVER (Liao, Petri, Moffat, Wirth, "Effective
construction of relative Lempel-Ziv dictionaries", WWW 2016), which suits
deflate as well: the dictionary is built from segments of the samples, and a
segment is worth the number of samples that contain each of its d-byte
substrings — counted once, since the next segment must add something new.
Deflate codes short distances more cheaply, so the most valuable segments go
at the *end* of the dictionary.

Pure functions: samples in, dictionary bytes and figures out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from statistics import mean
from typing import Callable, Iterable, Sequence

from ...codec import MAX_DICTIONARY_SIZE, FlateDictionary, compress

#: d: length of the substrings counted (deflate's shortest match is 3)
DMER = 6
#: k: length of a dictionary segment
SEGMENT = 64


def train_dictionary(
    groups: Sequence[Iterable[bytes]],
    size: int = MAX_DICTIONARY_SIZE,
    progress: Callable[[int, int], None] | None = None,
    dmer: int = DMER,
    segment: int = SEGMENT,
) -> bytes:
    """A preset dictionary of at most ``size`` bytes for payloads like the samples.

    ``groups`` are samples from independent recordings (other homeservers,
    users, rooms).  A d-mer found in only one recording — a room ID, a user
    ID, a server name — is worth nothing: no other deployment will send it.
    With a single group every d-mer counts.
    """
    group_lists = [[s for s in g if len(s) >= dmer] for g in groups]
    samples = [s for g in group_lists for s in g]
    if not samples:
        return b""
    min_groups = 2 if len(group_lists) > 1 else 1
    # document frequency: in how many samples each d-mer occurs
    freq: Counter[bytes] = Counter()
    in_groups: Counter[bytes] = Counter()
    for group in group_lists:
        seen_in_group: set[bytes] = set()
        for sample in group:
            dmers = {sample[i : i + dmer] for i in range(len(sample) - dmer + 1)}
            freq.update(dmers)
            seen_in_group |= dmers
        in_groups.update(seen_in_group)
    for d, count in in_groups.items():
        if count < min_groups:
            freq[d] = 0
    data = b"".join(samples)
    # COVER's epochs: one segment is taken from each slice of the data per round
    segments_wanted = max(1, size // segment)
    epoch = max(segment, len(data) // segments_wanted)
    chosen: list[tuple[int, bytes]] = []
    total = 0
    rounds = 0
    while total < size:
        added = False
        for start in range(0, len(data), epoch):
            best = _best_segment(data[start : start + epoch], freq, dmer, segment)
            if best is None:
                continue
            score, seg = best
            for i in range(len(seg) - dmer + 1):
                freq[seg[i : i + dmer]] = 0  # covered: worth nothing to the next segment
            chosen.append((score, seg))
            total += len(seg)
            added = True
            if progress is not None:
                progress(min(total, size), size)
            if total >= size:
                break
        rounds += 1
        if not added or rounds > 64:
            break
    chosen.sort(key=lambda c: c[0])  # most valuable last: shortest distances
    return b"".join(seg for _, seg in chosen)[-size:]


def _best_segment(chunk: bytes, freq: Counter[bytes], dmer: int, segment: int) -> tuple[int, bytes] | None:
    """The segment of ``chunk`` whose d-mers are worth most (a sliding sum)."""
    n = len(chunk) - dmer + 1
    if n <= 0:
        return None
    window = segment - dmer + 1
    values = [freq.get(chunk[i : i + dmer], 0) for i in range(n)]
    # a d-mer seen in one sample only is noise, not something to share
    values = [v if v > 1 else 0 for v in values]
    current = sum(values[:window])
    best_score, best_at = current, 0
    for i in range(1, n - window + 1):
        current += values[i + window - 1] - values[i - 1]
        if current > best_score:
            best_score, best_at = current, i
    if best_score <= 0:
        return None
    return best_score, chunk[best_at : best_at + segment]


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
