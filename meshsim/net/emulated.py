"""Emulated links for the gateways: netem link models as the stages of an
in-memory link (``coap_gateway.transport.emulated``).

The gateway's transport owns the link ends; meshsim owns what happens on the
way (rate, latency, jitter, loss, duplication, corruption, queue limit).
Tests and ``coap-gateway up`` compose the two here.
"""

from __future__ import annotations

from coap_gateway.transport import EmulatedLinkEnd, LinkBudget, connect

from ..model import LinkModel, LinkProfile


def emulated_link_pair(
    profile: LinkProfile | list[LinkProfile],
    *,
    seed: int = 0,
    reverse: LinkProfile | list[LinkProfile] | None = None,
    names: tuple[str, str] = ("client", "server"),
    max_frame: int = 1152,
    max_retransmit: int = 4,
    record: bool = True,
) -> tuple[EmulatedLinkEnd, EmulatedLinkEnd]:
    """Two connected link ends.  ``profile`` (one stage or a chain) is
    client→server; ``reverse`` is server→client (default: the same)."""
    forward = profile if isinstance(profile, list) else [profile]
    back = forward if reverse is None else (reverse if isinstance(reverse, list) else [reverse])
    ends = []
    for (name, other), chain in zip((names, names[::-1]), (forward, back)):
        models = [LinkModel(p, seed=seed, link_id=f"{name}->{other}#{i}") for i, p in enumerate(chain)]
        ends.append(EmulatedLinkEnd(name, models, budget_for(chain, max_frame=max_frame,
                                                            max_retransmit=max_retransmit), record=record))
    return connect(ends[0], ends[1])


def budget_for(chain: list[LinkProfile], *, max_frame: int = 1152, max_retransmit: int = 4) -> LinkBudget:
    """The timing a CoAP endpoint should assume for a chain of link profiles."""
    rates = [p.rate_bps for p in chain if p.rate_bps is not None]
    return LinkBudget(
        rate_bps=min(rates) if rates else None,
        frame_overhead=max((max(0, p.overhead) for p in chain), default=0),
        latency=sum(p.delay + p.jitter for p in chain),
        max_frame=max_frame,
        max_retransmit=max_retransmit,
    )
