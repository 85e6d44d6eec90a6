"""A federation gateway (asyncio shell): both ends of federation through the link.

One ``FederationGateway`` sits beside one homeserver and plays both parts:

* outbound, it is what ``proxy.FederationProxy`` hands homeserver A's
  requests to (``forward``): the request crosses the link as CoAP to the
  peer gateway fronting the destination, in the pair's one Noise session;
* inbound, it is the aiocoap resource that answers peer gateways
  (``render``): a request ``policy.peer_request_decision`` allows goes to
  this homeserver's federation listener through ``gateway.Upstream``, its
  X-Matrix header verbatim, and the answer goes back the same way.

Decisions are ``policy``'s and ``mapping``'s; this module carries them out.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from aiocoap import Message, resource
from aiocoap.numbers.codes import Code

from ..codec import HttpResponse, Profile, link_failure, matrix_error
from ..errors import CodecError, RouteError, StatusError
from ..gateway import Upstream, UpstreamError
from ..transport import LinkEndpoint, LinkFailure, release_assemblies
from .link import PeerKey, PeerLinkCodec
from .mapping import answer_to_coap, coap_to_answer, coap_to_federation, federation_to_coap
from .peers import PeersTable
from .policy import ConnectDecision, peer_request_decision

log = logging.getLogger(__name__)


@dataclass
class FederationConfig:
    #: this homeserver's federation listener (scheme, host, port)
    homeserver: str
    profile: Profile
    #: how long one federation request may take end to end (Synapse's own
    #: client gives up after 60 s by default: ``federation.client_timeout``)
    request_timeout: float = 120.0
    #: a responder waits this long for its peer to open their session
    session_wait: float = 30.0


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


class FederationGateway(resource.Resource):
    """Homeserver-side federation gateway: outbound ``forward``, inbound ``render``."""

    def __init__(self, config: FederationConfig, table: PeersTable):
        super().__init__()
        self.config = config
        self.table = table
        self.upstream = Upstream(config.homeserver, timeout=config.request_timeout)
        self.counters = FederationCounters()
        self.endpoint: LinkEndpoint | None = None
        self.codec: PeerLinkCodec | None = None

    def attach(self, endpoint: LinkEndpoint, codec: PeerLinkCodec) -> None:
        self.endpoint, self.codec = endpoint, codec

    def connect_peers(self) -> None:
        """Open the session with every peer this gateway initiates to (a CoAP
        ping in IK early data): a peer that is the responder cannot send a
        request before the session is there.  Also a keepalive."""
        assert self.endpoint is not None and self.codec is not None
        for public in self.codec.clients:
            self.endpoint.ping(PeerKey(public))

    async def close(self) -> None:
        await self.upstream.close()

    # -- outbound: homeserver A → the link

    async def forward(self, decision: ConnectDecision, request: Any) -> HttpResponse:
        """The peer homeserver's answer to one request of ours, through the link."""
        assert self.endpoint is not None and self.codec is not None and decision.peer is not None
        key = await self.codec.wait_for_session(decision.peer.public, self.config.session_wait)
        if key is None:
            self.counters.no_session += 1
            return matrix_error(502, "M_UNKNOWN", f"no secure session with the gateway of {decision.server_name}")
        try:
            message = federation_to_coap(request, self.config.profile)
        except (CodecError, RouteError) as exc:
            return matrix_error(400, "M_UNRECOGNIZED", f"the request cannot cross the link: {exc}")
        self.counters.sent += 1
        try:
            reply = await self.endpoint.request(message, key, timeout=self.config.request_timeout)
            return coap_to_answer(reply, self.config.profile)
        except LinkFailure as exc:
            self.counters.sent_failed += 1
            return link_failure(exc)
        except (CodecError, StatusError) as exc:
            self.counters.sent_failed += 1
            return matrix_error(502, "M_UNKNOWN", f"the peer gateway's answer cannot be read: {exc}")

    # -- inbound: a peer gateway → our homeserver

    async def render_to_pipe(self, pipe: Any) -> None:
        try:
            await super().render_to_pipe(pipe)
        except ValueError:  # blocks that do not assemble
            pipe.add_response(Message(code=Code.REQUEST_ENTITY_INCOMPLETE), is_last=True)
        finally:
            if pipe.request.opt.block1 is not None:
                release_assemblies(self, pipe.request.remote)

    async def render(self, request: Message) -> Message:
        profile = self.config.profile
        public = PeerLinkCodec.public_of(request.remote.key)
        try:
            fed = coap_to_federation(request, profile)
        except (CodecError, RouteError) as exc:
            self._refuse("malformed")
            return answer_to_coap(matrix_error(400, "M_UNRECOGNIZED", str(exc)), profile)
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
        return answer_to_coap(response, profile)

    def _refuse(self, reason: str) -> None:
        key = reason.split(":")[0][:40]
        if key in self.counters.refused or len(self.counters.refused) < 32:
            self.counters.refused[key] = self.counters.refused.get(key, 0) + 1


def _who(key: Hashable) -> str:
    return str(key)
