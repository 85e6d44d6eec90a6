"""A federation gateway (asyncio shell): both ends of federation through the link.

One ``FederationGateway`` sits beside one homeserver and plays both parts:

* outbound, it is what ``proxy.FederationProxy`` hands homeserver A's
  requests to (``forward``): the request crosses the link as CoAP to the
  peer gateway fronting the destination, in the pair's one Noise session;
* inbound, it is the aiocoap resource that answers peer gateways
  (``render``): a request ``policy.peer_request_decision`` allows goes to
  this homeserver's federation listener through ``gateway.Upstream``, its
  X-Matrix header verbatim, and the answer goes back the same way.

A stock homeserver gives some requests a fixed time whatever its
``federation.client_timeout`` says (``make_join`` 20 s, ``query`` and event
fetches 10 s, ``get_missing_events`` 60 s); on a slow link their answers
come later.  So the read-only ones (GETs and ``get_missing_events``) are
exchanged once however often the homeserver asks while one is under way,
and a success that arrives after the homeserver gave up on it is kept for
``late_answer_ttl``, for its retry (a user joining again) alone: handed out
once.  Nothing else is kept — X-Matrix signatures are deterministic, so a
new request is byte for byte the old one, and must not get an old refusal
("not invited", asked again after the invite).

A peer's request may arrive block by block: it waits on disk, bounded per
request, per peer and in all, as the server gateway's uploads do
(``gateway.UploadSpool``; aiocoap alone would hold any number, in memory).

``PUT /send`` travels in the compact form (``compact``) when it fits it
exactly, everything else in the plain mapping; each peer's shared compact
state (the IDs both gateways hold, the signing keys each has learnt) is
learnt from what crosses, both ways.

Decisions are ``policy``'s, ``mapping``'s and ``compact``'s; this module
carries them out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code

from ..codec import MAX_REQUEST_BODY, HttpResponse, Profile, link_failure, matrix_error
from ..errors import CodecError, GatewayError, RouteError
from ..gateway import BoundedUploads, UploadLimits, Upstream, UpstreamError, assembled
from ..transport import LinkEndpoint, LinkFailure
from .compact import (
    UNRESOLVED,
    PeerWire,
    SentTransaction,
    Unresolved,
    accepted_answer,
    answer_to_compact,
    decode_send,
    encode_send,
    is_accepted,
    is_compact_send,
    server_keys,
)
from .link import PeerKey, PeerLinkCodec, session_setup_time
from .mapping import FederationRequest, answer_to_coap, coap_to_answer, coap_to_federation, federation_to_coap
from .peers import PeersTable
from .policy import ConnectDecision, ephemeral_only, peer_request_decision

log = logging.getLogger(__name__)


@dataclass
class FederationConfig:
    #: this homeserver's federation listener (scheme, host, port)
    homeserver: str
    profile: Profile
    #: how long one federation request may take: the homeserver's answer, and
    #: over the link the longest silence from the peer gateway while its answer
    #: is awaited (at most four times this in all: a busy link is waited for).
    #: Synapse's own client gives up after 60 s by default (``federation.client_timeout``)
    request_timeout: float = 120.0
    #: a responder waits this long for its peer to open their session (it
    #: asks with WAKE), and twice what the link takes to open one on top
    session_wait: float = 30.0
    #: PUT /send in the compact form (False: the plain mapping for everything)
    compact: bool = True
    #: transactions of nothing but typing, receipts and presence are answered here
    #: and never cross (``policy.ephemeral_only``), as the client gateway's mode
    low_bandwidth: bool = False
    #: how long the answer to a read-only request stays for the homeserver asking
    #: again (0: not kept); bounded by MAX_LATE_ANSWERS and MAX_LATE_BYTES
    late_answer_ttl: float = 120.0
    #: the largest request body a peer gateway may send block by block (gateway A's
    #: proxy takes no larger one from its homeserver), what one peer may have in
    #: assembly at once (a transaction and a join or two) and all peers together;
    #: waiting on disk, in ``spool_dir`` (None: the system's temporary directory)
    max_upload: int = MAX_REQUEST_BODY
    max_upload_per_peer: int = 4 * MAX_REQUEST_BODY
    max_upload_total: int = 64 << 20
    spool_dir: Path | None = None


@dataclass
class FederationCounters:
    #: requests homeserver A sent through the link, and their answers by status
    sent: int = 0
    sent_failed: int = 0
    no_session: int = 0
    #: requests peer gateways sent us, forwarded to our homeserver or refused
    served: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    upstream_errors: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    #: compact transactions sent, sent again whole (4.12) or plain (refused), answered "all accepted"
    compact_sent: int = 0
    compact_resent: int = 0
    compact_fallbacks: int = 0
    compact_accepted: int = 0
    #: compact transactions served, and those this gateway could not rebuild (answered 4.12)
    compact_served: int = 0
    compact_unresolved: int = 0
    #: low-bandwidth mode: ephemeral EDUs answered here instead of crossing, and their transactions
    edus_dropped: int = 0
    transactions_dropped: int = 0
    #: read-only requests answered by an exchange already under way, or by a kept answer
    coalesced: int = 0
    late_answers: int = 0
    #: blocks refused: a request too large, or too much held for one peer or for all
    refused_uploads: int = 0


#: answers kept for a homeserver that asks again, at most this many and bytes
MAX_LATE_ANSWERS = 64
MAX_LATE_BYTES = 1 << 20


def read_only(request: FederationRequest) -> bool:
    """A request whose answer may serve the same request again: a GET, or
    ``get_missing_events`` (a POST that only reads)."""
    return request.method == "GET" or (request.method == "POST" and "/get_missing_events/" in request.target)


class FederationGateway(BoundedUploads):
    """Homeserver-side federation gateway: outbound ``forward``, inbound ``render``."""

    def __init__(self, config: FederationConfig, table: PeersTable, *, own_key: bytes | None = None,
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self.config = config
        self.table = table
        self.upstream = Upstream(config.homeserver, timeout=config.request_timeout)
        self.counters = FederationCounters()
        self.endpoint: LinkEndpoint | None = None
        self.codec: PeerLinkCodec | None = None
        self.clock = clock
        own = table.by_key(own_key) if own_key is not None else None
        #: our homeserver's name, when it has exactly one (the compact form implies it)
        self.own_name = own.servers[0] if own is not None and len(own.servers) == 1 else None
        #: per peer (Noise static key), the compact state shared with it; bounded by the table
        self.wire: dict[bytes, PeerWire] = {}
        #: read-only exchanges under way, each with its callers' waits, and answers kept
        #: (expiry, answer), by request
        self._inflight: dict[tuple, asyncio.Task[HttpResponse]] = {}
        self._waits: dict[tuple, list[asyncio.Future[HttpResponse]]] = {}
        self._late: OrderedDict[tuple, tuple[float, HttpResponse]] = OrderedDict()

    def attach(self, endpoint: LinkEndpoint, codec: PeerLinkCodec) -> None:
        self.endpoint, self.codec = endpoint, codec
        codec.on_wake(endpoint.ping)  # a responder with a request and no session asks for one

    def connect_peers(self) -> None:
        """Open the session with every peer this gateway initiates to (a CoAP
        ping in IK early data): a peer that is the responder cannot send a
        request before the session is there.  Also a keepalive."""
        assert self.endpoint is not None and self.codec is not None
        for public in self.codec.clients:
            self.endpoint.ping(PeerKey(public))

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self.upstream.close()

    # -- outbound: homeserver A → the link

    async def forward(self, decision: ConnectDecision, request: Any) -> HttpResponse:
        """The peer homeserver's answer to one request of ours, through the link.
        A read-only request already under way is not sent again, nor one whose
        success came after the homeserver gave up on it (see the module docstring)."""
        if self.config.late_answer_ttl <= 0 or not read_only(request) or decision.peer is None:
            return await self._forward(decision, request)
        key = (decision.peer.public, request.method, request.target, request.body, tuple(request.authorizations))
        kept = self._late.pop(key, None)  # once: the retry it was kept for
        if kept is not None and kept[0] > time.monotonic():
            self.counters.late_answers += 1
            return kept[1]
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.ensure_future(self._forward(decision, request))
            self._waits[key] = []
            # (before any caller's wait: it sees which callers are still there)
            task.add_done_callback(lambda done: self._keep(key, done))
        else:
            self.counters.coalesced += 1
        # the homeserver may give up (its own timeout): the exchange goes on for its retry
        wait = asyncio.shield(task)
        self._waits[key].append(wait)
        return await wait

    def _keep(self, key: tuple, task: asyncio.Task[HttpResponse]) -> None:
        self._inflight.pop(key, None)
        waits = self._waits.pop(key, [])
        if task.cancelled() or task.exception() is not None:
            return
        answer = task.result()
        if not all(wait.cancelled() for wait in waits):
            return  # a caller has it: a later request, however identical, is a new one
        if not 200 <= answer.status < 300 or len(answer.body) > MAX_LATE_BYTES:
            return  # a refusal may not hold for the retry; link failures are asked again
        self._late[key] = (time.monotonic() + self.config.late_answer_ttl, answer)
        while len(self._late) > MAX_LATE_ANSWERS or sum(len(a.body) for _, a in self._late.values()) > MAX_LATE_BYTES:
            self._late.popitem(last=False)

    async def _forward(self, decision: ConnectDecision, request: Any) -> HttpResponse:
        if self.config.low_bandwidth:
            dropped = ephemeral_only(request.method, request.target, request.body)
            if dropped:
                self.counters.edus_dropped += dropped
                self.counters.transactions_dropped += 1
                return HttpResponse(200, b'{"pdus":{}}', "application/json")
        assert self.endpoint is not None and self.codec is not None and decision.peer is not None
        # on a slow link the WAKE, the peer's ping and a new handshake take
        # a while: wait for that twice over (a datagram may be lost)
        wait = self.config.session_wait + 2 * session_setup_time(self.endpoint.budget)
        key = await self.codec.wait_for_session(decision.peer.public, wait, decision.peer.address)
        if key is None:
            self.counters.no_session += 1
            return matrix_error(502, "M_UNKNOWN", f"no secure session with the gateway of {decision.server_name}")
        wire = self._wire(decision.peer.public)
        self.counters.sent += 1
        try:
            compact = await self._send_compact(request, decision, key, wire)
            if compact is not None:
                return compact
            try:
                message = federation_to_coap(request, self.config.profile)
            except (CodecError, RouteError) as exc:
                return matrix_error(400, "M_UNRECOGNIZED", f"the request cannot cross the link: {exc}")
            reply = await self.endpoint.request(message, key, timeout=self.config.request_timeout)
            answer = coap_to_answer(reply, self.config.profile)
            self._learn(wire, request, answer, peer_names=decision.peer.servers)
            return answer
        except LinkFailure as exc:
            self.counters.sent_failed += 1
            return link_failure(exc)
        except (GatewayError, RecursionError) as exc:  # an answer that does not decompress, decode or map
            self.counters.sent_failed += 1
            return matrix_error(502, "M_UNKNOWN", f"the peer gateway's answer cannot be read: {exc}"[:300])

    async def _send_compact(self, request: FederationRequest, decision: ConnectDecision, key: Hashable,
                            wire: PeerWire) -> HttpResponse | None:
        """A transaction in the compact form and its answer; None when it must go
        plain (it does not fit the form, or the peer could not take it)."""
        assert self.endpoint is not None and decision.peer is not None
        if not self.config.compact or self.own_name is None:
            return None
        profile, now_ms = self.config.profile, int(self.clock() * 1000)
        encoded = encode_send(request, profile, origin=self.own_name, destination=decision.server_name,
                              known=wire.ids, now_ms=now_ms, known_keys=wire.our_keys)
        if encoded is None:
            return None
        self.counters.compact_sent += 1
        message, sent = encoded
        reply = await self.endpoint.request(message, key, timeout=self.config.request_timeout)
        if reply.code == Code.PRECONDITION_FAILED and reply.payload == UNRESOLVED.encode():
            # the peer lacks something we believed it held: everything whole this time
            self.counters.compact_resent += 1
            message, sent = encode_send(request, profile, origin=self.own_name, destination=decision.server_name,
                                        known=None, now_ms=now_ms)  # type: ignore[misc]
            reply = await self.endpoint.request(message, key, timeout=self.config.request_timeout)
        if reply.code.is_successful():
            return self._compact_answer(reply, sent, wire)
        if reply.code in (Code.BAD_REQUEST, Code.PRECONDITION_FAILED):
            self.counters.compact_fallbacks += 1  # a peer that cannot read the form: plain
            return None
        return coap_to_answer(reply, self.config.profile)

    def _compact_answer(self, reply: Message, sent: SentTransaction, wire: PeerWire) -> HttpResponse:
        for raw in sent.ids:
            wire.ids.add(raw)
        if is_accepted(reply):
            self.counters.compact_accepted += 1
            answer = accepted_answer(sent)
        else:
            answer = coap_to_answer(reply, self.config.profile)
        wire.ids.learn_body(answer.body)
        return answer

    def _learn(self, wire: PeerWire, request: FederationRequest, answer: HttpResponse,
               peer_names: tuple[str, ...] = (), inbound: bool = False) -> None:
        """Learn the IDs and signing keys a plain exchange carried (both gateways see it whole)."""
        wire.ids.learn_body(request.body)
        wire.ids.learn_body(answer.body)
        if answer.status == 200 and request.method == "GET" and request.target.startswith("/_matrix/key/v2/server"):
            keys = server_keys(answer.body)
            if keys is not None:
                name, ids = keys
                if inbound and name == self.own_name:
                    wire.our_keys = ids  # the peer fetched our keys
                elif not inbound and name in peer_names:
                    wire.their_keys = ids

    def _wire(self, public: bytes) -> PeerWire:
        wire = self.wire.get(public)
        if wire is None and self.table.by_key(public) is not None:
            wire = self.wire[public] = PeerWire()
        return wire if wire is not None else PeerWire()  # (an unknown peer never gets this far)

    # -- inbound: a peer gateway → our homeserver

    # (block-wise requests: bounded, on disk — BoundedUploads.render_to_pipe)

    def upload_limits(self) -> UploadLimits:
        c = self.config
        return UploadLimits(c.max_upload, c.max_upload_per_peer, c.max_upload_total, c.spool_dir)

    def upload_refused(self) -> None:
        self.counters.refused_uploads += 1

    async def render(self, request: Message) -> Message:
        profile = self.config.profile
        assembled(request)  # a body assembled from blocks (render_to_pipe)
        public = PeerLinkCodec.public_of(request.remote.key)
        peer = self.table.by_key(public) if public is not None else None
        wire = self._wire(public) if peer is not None and public is not None else PeerWire()
        received = None
        try:
            if is_compact_send(request, profile):
                if peer is None or len(peer.servers) != 1 or self.own_name is None:
                    raise CodecError("a compact transaction from a peer of several names, or to one")
                self.counters.compact_served += 1
                fed, received = decode_send(request, profile, origin=peer.servers[0], destination=self.own_name,
                                            known=wire.ids, now_ms=int(self.clock() * 1000),
                                            origin_keys=wire.their_keys)
            else:
                fed = coap_to_federation(request, profile)
        except Unresolved as exc:
            self.counters.compact_unresolved += 1
            log.info("compact transaction from %s sent back for resending whole: %s", _who(request.remote.key), exc)
            return Message(code=Code.PRECONDITION_FAILED, payload=UNRESOLVED.encode(), content_format=0)
        except (GatewayError, RecursionError) as exc:  # (a CompressionError too: not a 5.00)
            self._refuse("malformed")
            return answer_to_coap(matrix_error(400, "M_UNRECOGNIZED", str(exc)[:300]), profile)
        decision = peer_request_decision(self.table, public or b"", fed.target, fed.authorizations)
        if not decision.allowed:
            self._refuse(decision.reason)
            log.info("federation request %s %s from %s refused: %s", fed.method, fed.target[:80],
                     _who(request.remote.key), decision.reason)
            return answer_to_coap(matrix_error(decision.status, "M_FORBIDDEN", decision.reason), profile)
        self.counters.served += 1
        try:
            response = await self.upstream.fetch(fed.method, fed.target, body=fed.body,
                                                 content_type=fed.content_type, authorizations=fed.authorizations)
        except UpstreamError as exc:
            self.counters.upstream_errors += 1
            response = exc.as_response()
        self.counters.by_status[response.status] = self.counters.by_status.get(response.status, 0) + 1
        if received is not None:
            for raw in received.ids:
                wire.ids.add(raw)
            if answer_to_compact(response, received):
                wire.ids.learn_body(response.body)
                return Message(code=Code.CHANGED)
        self._learn(wire, fed, response, inbound=True)
        try:
            return answer_to_coap(response, profile)
        except GatewayError as exc:  # an answer the mapping cannot carry (an odd status, say)
            return answer_to_coap(matrix_error(502, "M_UNKNOWN", f"the homeserver's answer cannot cross: {exc}"[:300]),
                                  profile)

    def _refuse(self, reason: str) -> None:
        key = reason.split(":")[0][:40]
        if key in self.counters.refused or len(self.counters.refused) < 32:
            self.counters.refused[key] = self.counters.refused.get(key, 0) + 1


def _who(key: Hashable) -> str:
    return str(key)
