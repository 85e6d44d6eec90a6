"""The pair's one session after a restart (UDP loopback, fake homeservers).

A pair of federation gateways shares one Noise session, opened by the lower
static key (the initiator).  The responder cannot open it; after the
responder restarts, the initiator's session is stale and nothing tells it
so until it sends.  A request the responder's homeserver makes first must
still cross: the responder asks the initiator to open the session.
"""

from __future__ import annotations

import asyncio

import pytest

from coap_gateway.app.federation import start_federation
from coap_gateway.federation import FederationRequest, connect_decision
from coap_gateway.federation.link import session_setup_time
from coap_gateway.secure import frame as sf
from coap_gateway.secure import keys
from coap_gateway.transport import LinkBudget, UdpLink
from tests.federation.helpers import PROFILE, sessions_up, start_pair, table
from tests.federation.test_adversarial import FakeHomeserver
from tests.helpers.devices import until


@pytest.fixture
async def world(tmp_path):
    """(initiator, responder) gateways with their homeservers; the responder restartable."""
    privs = sorted((keys.generate_keypair()[0] for _ in range(2)), key=keys.public_from_private)
    fakes = [FakeHomeserver(), FakeHomeserver()]
    bases = [await f.start() for f in fakes]
    links = [await UdpLink.open("127.0.0.1", 0), await UdpLink.open("127.0.0.1", 0)]
    addresses = [link.local_address for link in links]
    gws = list(await start_pair(*links, name_a="a.example", name_b="b.example", homeserver_a=bases[0],
                                homeserver_b=bases[1], tmp=tmp_path, priv_a=privs[0], priv_b=privs[1],
                                address_a=addresses[0], address_b=addresses[1]))
    await sessions_up(*gws)
    assert gws[0].codec.clients and not gws[1].codec.clients  # a.example initiates

    async def restart_responder():
        await gws[1].stop()
        link = await UdpLink.open(*addresses[1])
        peers = table((privs[0], addresses[0], "a.example"), (privs[1], addresses[1], "b.example"))
        gws[1] = await start_federation(link, homeserver=bases[1], profile=PROFILE, static_private=privs[1],
                                        table=peers, ca_dir=tmp_path / "gw-b", state_dir=tmp_path / "gw-b")
        return gws[1]

    yield gws, fakes, restart_responder
    for gw in gws:
        await gw.stop()
    for fake in fakes:
        await fake.runner.cleanup()


async def test_a_restarted_responder_reaches_its_peer_first(world):
    (initiator, responder), (fake_a, _), restart_responder = world
    responder = await restart_responder()
    assert responder.codec.key_for(initiator.public) is None  # no session: the initiator does not know yet
    to_a = connect_decision(responder.gateway.table, "a.example:8448")
    # two requests waiting together: one WAKE between them
    answers = await asyncio.gather(*(responder.gateway.forward(to_a, FederationRequest("GET", path, b"", None, []))
                                     for path in ("/_matrix/key/v2/server", "/_matrix/federation/v1/version")))
    assert [a.status for a in answers] == [200, 200], answers
    assert sorted(p for _, p, _, _ in fake_a.seen) == ["/_matrix/federation/v1/version", "/_matrix/key/v2/server"]
    assert responder.gateway.counters.no_session == 0
    # one WAKE, one ping in the stale session, RESET, a new handshake
    client = initiator.codec.clients[responder.public]
    assert responder.codec.wakes_sent == 1 and client.wakes == 1 and client.rehandshakes == 1


async def test_a_wake_to_an_initiator_whose_session_is_fine_costs_a_ping(world):
    """A forged WAKE (or one that crossed the session coming up): the
    initiator pings in its session, the responder answers, nothing else
    changes — and another within the interval buys nothing."""
    (initiator, responder), _, _ = world
    client = initiator.codec.clients[responder.public]
    session, samples = client.endpoint.session_id, initiator.endpoint.counters.rtt_samples
    to_initiator = responder.gateway.table.by_key(initiator.public).address
    responder.endpoint.interface.link.send(to_initiator, sf.WAKE_DATAGRAM)
    await until(lambda: initiator.endpoint.counters.rtt_samples > samples, timeout=10)  # the ping's RST
    assert client.wakes == 1 and client.rehandshakes == 0 and client.endpoint.session_id == session
    responder.endpoint.interface.link.send(to_initiator, sf.WAKE_DATAGRAM)
    await until(lambda: client.dropped["WAKE within its interval"] == 1, timeout=10)
    assert client.wakes == 1


def test_a_slow_link_waits_for_the_session_as_long_as_it_takes_to_open():
    budget = LinkBudget(rate_bps=100, frame_overhead=42, latency=1.0)
    # WAKE 1 B, ping 21 B, RESET 5 B, IK1 104 B, IK2 50 B, each with 42 B of headers and 1 s
    assert session_setup_time(budget) == pytest.approx((1 + 21 + 5 + 104 + 50 + 5 * 42) * 8 / 100 + 5 * 1.0)
    assert session_setup_time(LinkBudget()) == 0.0
