"""How long the client gateway waits for an answer over the link.

The waiting itself (a timeout counts silence from the peer, at most four
times over) is tested in virtual time in tests/transport; here, that the
client gateway's default outwaits everything a server gateway may
legitimately be silent for, so only an answer that will never come is
given up on.
"""

from __future__ import annotations

import dataclasses
import inspect

from coap_gateway.gateway.client import REQUEST_SILENCE, ClientGateway
from coap_gateway.gateway.server import ServerGatewayConfig
from coap_gateway.push.client import SyncPushClientConfig
from coap_gateway.transport.timing import LinkBudget, RetransmissionTimer


def test_the_client_gateway_outwaits_a_slow_homeserver_and_a_slow_answer():
    default = inspect.signature(ClientGateway.__init__).parameters["request_timeout"].default
    assert default == REQUEST_SILENCE
    homeserver = next(f.default for f in dataclasses.fields(ServerGatewayConfig) if f.name == "request_timeout")
    # the answer after the homeserver's longest wait, at 100 bit/s, 2 s each
    # way, four retransmissions of a full 256-B answer
    timer = RetransmissionTimer(LinkBudget(rate_bps=100, latency=2.0))
    answer = sum(timer.retransmit_timeout(256, 0, 4, k) for k in range(5))
    assert REQUEST_SILENCE > homeserver + answer, (REQUEST_SILENCE, homeserver, answer)
    # a sync-push registration gives up sooner: its homeserver poll is quick
    assert SyncPushClientConfig().answer_timeout <= REQUEST_SILENCE
