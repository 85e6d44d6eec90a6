"""tc-netem arguments ⇄ a link profile's fields: parsing and formatting (sans-I/O).

This module knows tc's syntax and nothing of `LinkProfile` itself: it reads
words into the keyword arguments of a profile and writes a profile's fields
(a mapping, ``dataclasses.asdict(profile)``) back as words, so the profile
module can build on it without the two importing each other.  The units
(``100bit``, ``1.5s``, ``20%``) are read and written by
``coap_gateway.transport``, which the gateways' command lines share.  What
meshsim does not model raises ValueError instead of being ignored, unlike the
2019 meshsim's `packet_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from coap_gateway.transport import (
    format_netem_percent,
    format_netem_rate,
    format_netem_time,
    parse_netem_percent,
    parse_netem_rate,
    parse_netem_time,
)


class _Tokens:
    def __init__(self, tokens: list[str]) -> None:
        self._tokens = tokens
        self._index = 0

    def __bool__(self) -> bool:
        return self._index < len(self._tokens)

    def take(self, what: str) -> str:
        if not self:
            raise ValueError(f"netem args end where {what} was expected")
        token = self._tokens[self._index]
        self._index += 1
        return token

    def next_is_number(self, *, signed: bool = False) -> bool:
        # tc's NEXT_IS_NUMBER(): the next word starts with a digit
        if not self:
            return False
        first = self._tokens[self._index][:1]
        return first.isdigit() or (signed and first == "-")


_UNSUPPORTED = {
    "reorder": "reordering", "gap": "reordering", "slot": "slotting", "ecn": "ECN marking",
    "seed": "netem's own PRNG seed (meshsim derives its streams from the run seed)",
}


def parse_netem_fields(words: list[str]) -> dict[str, Any]:
    """The `LinkProfile` keyword arguments that netem arguments give (see `LinkProfile.from_netem_args`)."""
    tokens = _Tokens(words)
    fields: dict[str, object] = {}

    def put(name: str, value: object) -> None:
        if name in fields:
            raise ValueError(f"netem args give {name} twice")
        fields[name] = value

    def no_correlation(keyword: str) -> None:
        if tokens.next_is_number():
            token = tokens.take("correlation")
            if parse_netem_percent(token) != 0:
                raise ValueError(f"{keyword} correlation {token} is not modelled by meshsim")

    def signed_int(what: str) -> int:
        token = tokens.take(what)
        try:
            return int(token)
        except ValueError:
            raise ValueError(f"{what} must be an integer, not {token!r}") from None

    while tokens:
        keyword = tokens.take("a keyword")
        if keyword == "limit":
            put("limit_packets", signed_int("limit"))
        elif keyword in ("delay", "latency"):
            put("delay", parse_netem_time(tokens.take("delay")))
            if tokens.next_is_number():
                put("jitter", parse_netem_time(tokens.take("jitter")))
                no_correlation("delay")
        elif keyword == "distribution":
            put("jitter_dist", tokens.take("distribution"))
        elif keyword in ("loss", "drop"):
            model = "random" if tokens.next_is_number() else tokens.take("loss model")
            if model == "random":
                put("loss", parse_netem_percent(tokens.take("loss percentage")))
                no_correlation("loss")
            elif model == "gemodel":
                put("gemodel", _parse_gemodel(tokens))
            elif model == "state":
                raise ValueError("the 4-state loss model (loss state) is not modelled by meshsim")
            else:
                raise ValueError(f"unknown loss model {model!r}")
        elif keyword == "duplicate":
            put("duplicate", parse_netem_percent(tokens.take("duplicate percentage")))
            no_correlation("duplicate")
        elif keyword == "corrupt":
            put("corrupt", parse_netem_percent(tokens.take("corrupt percentage")))
            no_correlation("corrupt")
        elif keyword == "rate":
            token = tokens.take("rate")
            if "%" in token:
                raise ValueError("a rate as a percentage of the device speed is not modelled")
            put("rate_bps", parse_netem_rate(token))
            if tokens.next_is_number(signed=True):
                put("overhead", signed_int("packet overhead"))
                if tokens.next_is_number():
                    put("cell_size", signed_int("cell size") or None)
                    if tokens.next_is_number(signed=True):
                        put("cell_overhead", signed_int("cell overhead"))
        elif keyword == "packetoverhead":
            put("overhead", signed_int("packetoverhead"))
        elif keyword == "cellsize":
            put("cell_size", signed_int("cellsize") or None)
        elif keyword == "celloverhead":
            put("cell_overhead", signed_int("celloverhead"))
        elif keyword in _UNSUPPORTED:
            raise ValueError(f"netem {keyword!r}: {_UNSUPPORTED[keyword]} is not modelled by meshsim")
        else:
            raise ValueError(f"unknown netem argument {keyword!r}")

    if "jitter_dist" in fields and not (fields.get("delay") and fields.get("jitter")):
        raise ValueError("distribution needs a delay and a jitter (tc refuses it otherwise)")
    return fields


def _parse_gemodel(tokens: _Tokens) -> tuple[float, float, float, float]:
    # Decimal keeps tc's default r = 1 - p exact (5% -> 95%, not 0.95000000000000001)
    texts = [tokens.take("gemodel p")]
    while len(texts) < 4 and tokens.next_is_number():
        texts.append(tokens.take("gemodel parameter"))
    values = [Decimal(repr(parse_netem_percent(t))) for t in texts]
    defaults = [None, 1 - values[0], Decimal(1), Decimal(0)]
    values += defaults[len(values):]  # type: ignore[arg-type]
    p, r, one_minus_h, one_minus_k = (float(v) for v in values)
    return (p, r, one_minus_h, one_minus_k)


def format_netem_fields(fields: Mapping[str, Any], *, counted_by_kernel: int = 0) -> str:
    """A profile's fields (``dataclasses.asdict(profile)``) as netem arguments; see `LinkProfile.to_netem_args`."""
    if fields["limit_bytes"] is not None or fields["limit_seconds"] is not None:
        raise ValueError("netem has no byte or time queue limit (only limit_packets)")
    parts: list[str] = []
    if fields["limit_packets"] is not None:
        parts += ["limit", str(fields["limit_packets"])]
    delay, jitter = fields["delay"], fields["jitter"]
    if delay or jitter:
        parts += ["delay", format_netem_time(delay)]
        if jitter:
            parts.append(format_netem_time(jitter))
    if jitter and fields["jitter_dist"] != "uniform":
        if not delay:
            raise ValueError("tc refuses a delay distribution without a delay")
        parts += ["distribution", fields["jitter_dist"]]
    if fields["gemodel"] is not None:
        parts += ["loss", "gemodel", *(format_netem_percent(v) for v in fields["gemodel"])]
    elif fields["loss"]:
        parts += ["loss", "random", format_netem_percent(fields["loss"])]
    if fields["duplicate"]:
        parts += ["duplicate", format_netem_percent(fields["duplicate"])]
    if fields["corrupt"]:
        parts += ["corrupt", format_netem_percent(fields["corrupt"])]
    if fields["rate_bps"] is not None:
        extras = [fields["overhead"] - counted_by_kernel, fields["cell_size"] or 0, fields["cell_overhead"]]
        while extras and extras[-1] == 0:
            extras.pop()
        parts += ["rate", format_netem_rate(fields["rate_bps"]), *map(str, extras)]
    return " ".join(parts)
