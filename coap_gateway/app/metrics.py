"""Prometheus metrics: a small registry, the text exposition, the collectors.

Sans-I/O like the rest of the codec: ``render(registry)`` is a pure function
producing the text exposition format 0.0.4 (tested byte for byte), and
``metrics_http`` is the thin aiohttp shell that serves it.  The hot path only
increments plain ints (``TransportCounters``, the gateways' counters, the
codecs' counters) and observes one ``Histogram`` per request; the collectors
below read those live objects when Prometheus scrapes, into a registry built
for that one scrape.

Why not ``prometheus_client``: its metric objects register themselves in one
global registry, and two gateways in one process (``up``, the tests) would
collide on every name.  Avoiding that takes a private ``CollectorRegistry``
and custom collectors per gateway — which is what this module is — and the
library would then contribute only the text writer: ~60 lines here, whose
bytes we test and control, against a new runtime dependency whose output is
its own to change between releases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from ..gateway import LATENCY_BUCKETS, Histogram, timed
from ..secure import reason_label
from ..transport import SERVER_KEY, LinkEndpoint
from .runner import RunningClient, RunningServer

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

# ------------------------------------------------------------- registry

LabelValues = tuple[str, ...]


class _Family:
    kind: ClassVar[str]

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()):
        if not _NAME.match(name):
            raise ValueError(f"bad metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"bad label name {label!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"repeated label name in {labelnames!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.samples: dict[LabelValues, Any] = {}

    def _key(self, labels: Mapping[str, object]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)


class CounterFamily(_Family):
    """Rendered as ``<name>_total``."""

    kind = "counter"

    def set(self, value: float, /, **labels: object) -> None:
        """The total, read from a live object at scrape time."""
        if value < 0:
            raise ValueError("a counter is never negative")
        self.samples[self._key(labels)] = value

    def inc(self, amount: float = 1, /, **labels: object) -> None:
        """Add: several live counts may share one label set (peers, reasons)."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self.samples[key] = self.samples.get(key, 0) + amount


class GaugeFamily(_Family):
    kind = "gauge"

    def set(self, value: float, /, **labels: object) -> None:
        self.samples[self._key(labels)] = value

    def inc(self, amount: float = 1, /, **labels: object) -> None:
        key = self._key(labels)
        self.samples[key] = self.samples.get(key, 0) + amount


class HistogramFamily(_Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 bounds: Sequence[float] = LATENCY_BUCKETS):
        super().__init__(name, help, labelnames)
        self.bounds = Histogram(bounds).bounds

    def set(self, histogram: Histogram, /, **labels: object) -> None:
        """A live histogram, read as it is when rendered."""
        if histogram.bounds != self.bounds:
            raise ValueError(f"{self.name}: bounds differ from the family's")
        self.samples[self._key(labels)] = histogram

    def observe(self, value: float, /, **labels: object) -> None:
        key = self._key(labels)
        if key not in self.samples:
            self.samples[key] = Histogram(self.bounds)
        self.samples[key].observe(value)


_Fam = TypeVar("_Fam", bound=_Family)


class Registry:
    """Metric families by name, rendered in the order they were first asked for."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> CounterFamily:
        return self._get(CounterFamily, name, help, labelnames)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> GaugeFamily:
        return self._get(GaugeFamily, name, help, labelnames)

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (),
                  bounds: Sequence[float] = LATENCY_BUCKETS) -> HistogramFamily:
        family = self._get(HistogramFamily, name, help, labelnames, bounds=bounds)
        if family.bounds != Histogram(bounds).bounds:
            raise ValueError(f"{name} is already registered with other bounds")
        return family

    def _get(self, cls: type[_Fam], name: str, help: str, labelnames: Sequence[str], **kwargs: Any) -> _Fam:
        # several collectors (both gateways of `up`) fill the same families
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = cls(name, help, labelnames, **kwargs)
        elif type(family) is not cls or family.labelnames != tuple(labelnames):
            raise ValueError(f"{name} is already registered as another metric")
        return family  # type: ignore[return-value]

    def __iter__(self) -> Iterator[_Family]:
        return iter(self._families.values())


# ----------------------------------------------------------- exposition

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def format_value(value: float) -> str:
    """A sample value or ``le`` bound: integers exactly, Go's spellings of
    the infinities and NaN, Python's shortest repr for other floats."""
    if isinstance(value, int):
        return str(int(value))  # bool too, as 0/1
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    pairs = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
    return f"{name}{{{pairs}}} {format_value(value)}\n" if pairs else f"{name} {format_value(value)}\n"


def render(registry: Registry) -> str:
    """The text exposition format 0.0.4 of everything in ``registry``.

    Families in registration order, samples sorted by label values (stable
    output for humans and diffs); a family without samples has only its HELP
    and TYPE lines.
    """
    out: list[str] = []
    for family in registry:
        name = family.name + "_total" if family.kind == "counter" else family.name
        out.append(f"# HELP {name} {_escape_help(family.help)}\n")
        out.append(f"# TYPE {name} {family.kind}\n")
        for values in sorted(family.samples):
            labels = list(zip(family.labelnames, values))
            sample = family.samples[values]
            if isinstance(sample, Histogram):
                for bound, count in sample.cumulative():
                    out.append(_line(name + "_bucket", [*labels, ("le", format_value(bound))], count))
                out.append(_line(name + "_sum", labels, sample.sum))
                out.append(_line(name + "_count", labels, sample.count))
            else:
                out.append(_line(name, labels, sample))
    return "".join(out)


# ----------------------------------------------------------- collectors

#: fills a registry from live objects, once per scrape
Collector = Callable[[Registry], None]


def collect(collectors: Iterable[Collector]) -> Registry:
    registry = Registry()
    for collector in collectors:
        collector(registry)
    return registry


def scrape(collectors: Iterable[Collector]) -> str:
    return render(collect(collectors))


def peer_label(key: Hashable) -> str:
    """A peer as a label: ``host:port`` for an address, hex for a session id.
    Never anything from inside a message (tokens, bodies)."""
    if isinstance(key, bytes):
        return key.hex()
    if isinstance(key, tuple) and len(key) >= 2:
        host = str(key[0])
        return f"[{host}]:{key[1]}" if ":" in host else f"{host}:{key[1]}"
    return str(key)


GATEWAY = ("gateway",)


def _link_metrics(registry: Registry, gateway: str, endpoint: LinkEndpoint,
                  label: Callable[[Hashable], str] = peer_label) -> None:
    names = ("gateway", "peer", "direction")
    frames = registry.counter("coap_gateway_link_frames", "Datagrams sent to (out) and received from (in) a peer.",
                              names)
    size = registry.counter("coap_gateway_link_bytes", "Datagram bytes sent to (out) and received from (in) a peer.",
                            names)
    for key, counts in endpoint.interface.peers.items():
        peer = label(key)  # inc, not set: two keys may share a label
        frames.inc(counts.frames_out, gateway=gateway, peer=peer, direction="out")
        frames.inc(counts.frames_in, gateway=gateway, peer=peer, direction="in")
        size.inc(counts.bytes_out, gateway=gateway, peer=peer, direction="out")
        size.inc(counts.bytes_in, gateway=gateway, peer=peer, direction="in")
    c = endpoint.counters
    registry.counter("coap_gateway_coap_retransmissions", "CON messages sent again for want of an ACK.",
                     GATEWAY).set(c.retransmissions, gateway=gateway)
    registry.counter("coap_gateway_coap_timeouts", "CON messages given up after the last retransmission.",
                     GATEWAY).set(c.timeouts, gateway=gateway)
    registry.counter("coap_gateway_malformed_messages", "Received CoAP messages that did not parse or process.",
                     GATEWAY).set(c.dropped_malformed, gateway=gateway)
    registry.counter("coap_gateway_codec_failures", "Datagrams lost because the frame codec failed on them.",
                     GATEWAY).set(c.dropped_by_codec, gateway=gateway)
    registry.counter("coap_gateway_duplicate_responses", "Responses dropped as duplicates by the message layer.",
                     GATEWAY).set(c.duplicate_responses, gateway=gateway)
    registry.counter("coap_gateway_blockwise_restarts", "Block-wise requests sent again from their first block "
                     "after the peer answered 4.08 (it lost the assembly).", GATEWAY).set(c.blockwise_restarts,
                                                                                          gateway=gateway)


def _drops(registry: Registry, gateway: str, dropped: Mapping[str, int]) -> None:
    family = registry.counter("coap_gateway_secure_dropped", "Datagrams the secure layer dropped, by reason.",
                              ("gateway", "reason"))
    for reason, count in dropped.items():
        family.inc(count, gateway=gateway, reason=reason_label(reason))


def _latency(registry: Registry, gateway: str, histogram: Histogram) -> None:
    registry.histogram("coap_gateway_request_duration_seconds",
                       "Time to answer a request (client: over the link; server: from the homeserver).",
                       GATEWAY, bounds=histogram.bounds).set(histogram, gateway=gateway)


def _requests(registry: Registry, gateway: str, count: int) -> None:
    registry.counter("coap_gateway_requests", "Requests carried (client: HTTP in; server: CoAP in).",
                     GATEWAY).set(count, gateway=gateway)


def _handshakes(registry: Registry, gateway: str, count: int) -> None:
    registry.counter("coap_gateway_handshakes", "Secure handshakes completed.", GATEWAY).set(count, gateway=gateway)


def _sync_push_server(registry: Registry, gateway: str, push: Any) -> None:
    c = push.counters
    registry.gauge("coap_gateway_sync_push_observations", "Sync observations held now (one /sync loop each).",
                   GATEWAY).set(len(push.observations), gateway=gateway)
    registry.gauge("coap_gateway_sync_push_loops", "Homeserver loops running now (equal to the observations "
                   "but for a moment while one ends).", GATEWAY).set(len(push.loops), gateway=gateway)
    registry.counter("coap_gateway_sync_push_notifications", "Sync push notifications sent or received.",
                     GATEWAY).set(c.notifications, gateway=gateway)
    registry.counter("coap_gateway_sync_push_notification_bytes", "Payload bytes of the sync notifications pushed.",
                     GATEWAY).set(c.notification_bytes, gateway=gateway)
    registry.counter("coap_gateway_sync_push_polls", "Long-polls the server gateway sent the homeserver itself.",
                     GATEWAY).set(c.polls, gateway=gateway)
    registry.counter("coap_gateway_sync_push_silent_polls", "Of those, empty answers that were not pushed.",
                     GATEWAY).set(c.silent, gateway=gateway)
    registry.counter("coap_gateway_sync_push_replays", "Answers pushed again from the history to a new observation.",
                     GATEWAY).set(c.replayed, gateway=gateway)
    large = registry.counter("coap_gateway_sync_push_large_answers",
                             "Answers too large for one notification: pushed in parts, or fetched plainly.",
                             ("gateway", "how"))
    large.set(c.parted, gateway=gateway, how="parts")
    large.set(c.fetches, gateway=gateway, how="fetched")
    registry.counter("coap_gateway_sync_push_echoes_folded",
                     "Devices' own events folded into their sends' answers instead of pushed.",
                     GATEWAY).set(c.folded, gateway=gateway)
    continued = registry.counter("coap_gateway_sync_push_continued",
                                 "Registrations for a new request body that went on from the replaced observation: "
                                 "its state, and the body as a delta against the old one.", ("gateway", "what"))
    continued.set(c.continued, gateway=gateway, what="state")
    continued.set(c.delta_bodies, gateway=gateway, what="delta_body")
    registry.counter("coap_gateway_sync_push_to_device_holds",
                     "Sliding-sync loops that waited for the client's next request after pushing to-device events.",
                     GATEWAY).set(c.holds, gateway=gateway)


def _sync_push_client(registry: Registry, gateway: str, push: Any) -> None:
    c = push.counters
    registry.gauge("coap_gateway_sync_push_streams", "Sync observations registered now.",
                   GATEWAY).set(len(push.state.active()), gateway=gateway)
    registry.counter("coap_gateway_sync_push_registrations", "Sync observations registered (again).",
                     GATEWAY).set(c.registrations, gateway=gateway)
    registry.counter("coap_gateway_sync_push_notifications", "Sync push notifications sent or received.",
                     GATEWAY).set(c.notifications, gateway=gateway)
    answered = registry.counter("coap_gateway_sync_push_answered",
                                "Sync long-polls by how they were answered (pushed, idle template, plain).",
                                ("gateway", "how"))
    answered.set(c.answered_pushed, gateway=gateway, how="pushed")
    answered.set(c.answered_idle, gateway=gateway, how="idle")
    answered.set(c.plain, gateway=gateway, how="plain")
    registry.counter("coap_gateway_sync_push_lost", "Sync observations found lost (registered again on the next poll).",
                     GATEWAY).set(c.lost, gateway=gateway)
    registry.counter("coap_gateway_sync_push_checks", "Checks of silent sync observations.",
                     GATEWAY).set(c.checks, gateway=gateway)
    registry.counter("coap_gateway_keepalives", "NAT keepalive pings sent.", GATEWAY).set(c.pings, gateway=gateway)


def _revalidated(registry: Registry, gateway: str, count: int) -> None:
    registry.counter("coap_gateway_revalidated", "Requests answered 2.03 Valid: the device held the same answer.",
                     GATEWAY).set(count, gateway=gateway)


def server_collector(server: RunningServer, gateway: str = "server") -> Collector:
    def collector(registry: Registry) -> None:
        _link_metrics(registry, gateway, server.endpoint)
        counters = server.gateway.counters
        _requests(registry, gateway, counters.requests)
        by_status = registry.counter("coap_gateway_http_responses",
                                     "Homeserver answers (and refusals) relayed, by HTTP status.",
                                     ("gateway", "status"))
        for status, count in counters.by_status.items():
            by_status.set(count, gateway=gateway, status=status)
        registry.counter("coap_gateway_upstream_errors", "Homeserver unreachable or too slow (502/504).",
                         GATEWAY).set(counters.upstream_errors, gateway=gateway)
        _revalidated(registry, gateway, counters.revalidated)
        registry.counter("coap_gateway_refused_admin", "Admin API requests refused (403).",
                         GATEWAY).set(counters.refused_admin, gateway=gateway)
        registry.counter("coap_gateway_refused_paths", "Requests with a '.' or '..' path segment refused (400).",
                         GATEWAY).set(counters.refused_paths, gateway=gateway)
        registry.counter("coap_gateway_refused_busy",
                         "Requests answered 5.03 unforwarded: the device's share of a homeserver pool was full.",
                         GATEWAY).set(counters.refused_busy, gateway=gateway)
        registry.counter("coap_gateway_token_unbound", "Requests answered 4.01 Token-Unbound (not forwarded).",
                         GATEWAY).set(counters.token_unbound, gateway=gateway)
        registry.counter("coap_gateway_handle_unknown", "Requests answered 4.00 Handle-Unknown (not forwarded).",
                         GATEWAY).set(counters.handle_unknown, gateway=gateway)
        registry.counter("coap_gateway_room_lookups", "Joined-room lists asked to match a room digest.",
                         GATEWAY).set(counters.room_lookups, gateway=gateway)
        registry.gauge("coap_gateway_devices", "Devices whose bound token and handles are held now.",
                       GATEWAY).set(len(server.gateway.binding.devices), gateway=gateway)
        _latency(registry, gateway, counters.latency)
        if server.gateway.sync_push is not None:
            _sync_push_server(registry, gateway, server.gateway.sync_push)
        codec = server.codec
        if codec is not None:
            _handshakes(registry, gateway, codec.sessions_established)
            registry.gauge("coap_gateway_secure_sessions", "Secure sessions held now.",
                           GATEWAY).set(codec.endpoint.sizes()["sessions"], gateway=gateway)
            _drops(registry, gateway, codec.dropped)

    return collector


def client_collector(client: RunningClient, gateway: str = "client") -> Collector:
    codec = client.codec

    def label(key: Hashable) -> str:
        # one server: its session ("server") and its address are one peer
        return peer_label(codec.server_addr if codec is not None and key == SERVER_KEY else key)

    def collector(registry: Registry) -> None:
        _link_metrics(registry, gateway, client.endpoint, label)
        counters = client.gateway.counters
        binding = client.gateway.binding.counters
        _requests(registry, gateway, counters.requests)
        registry.counter("coap_gateway_link_failures", "Requests the link did not deliver (answered 504).",
                         GATEWAY).set(counters.link_failures, gateway=gateway)
        registry.counter("coap_gateway_token_sent", "Requests that carried the access token across the link.",
                         GATEWAY).set(binding.token_sent, gateway=gateway)
        registry.counter("coap_gateway_token_rebinds", "Requests sent again with the token after Token-Unbound.",
                         GATEWAY).set(binding.token_rebinds, gateway=gateway)
        registry.counter("coap_gateway_handle_resends", "Requests sent again with definitions after Handle-Unknown.",
                         GATEWAY).set(binding.handle_resends, gateway=gateway)
        _revalidated(registry, gateway, counters.revalidated)
        _latency(registry, gateway, counters.latency)
        if client.gateway.sync_push is not None:
            _sync_push_client(registry, gateway, client.gateway.sync_push)
        if codec is not None:
            _handshakes(registry, gateway, codec.handshakes)
            registry.counter("coap_gateway_rehandshakes", "Handshakes started again over a lost session.",
                             GATEWAY).set(codec.rehandshakes, gateway=gateway)
            registry.gauge("coap_gateway_handshake_failed",
                           "1 when the handshake cannot succeed (changed server key, profile mismatch).",
                           GATEWAY).set(int(codec.error is not None), gateway=gateway)
            _drops(registry, gateway, codec.dropped)

    return collector


__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "Collector",
    "CounterFamily",
    "GaugeFamily",
    "Histogram",
    "HistogramFamily",
    "Registry",
    "client_collector",
    "collect",
    "format_value",
    "peer_label",
    "reason_label",
    "render",
    "scrape",
    "server_collector",
    "timed",
]
