"""The pair's one session after a restart (fake homeservers; UDP loopback, and once an emulated 100 bit/s link).

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
from coap_gateway.federation import FederationConfig, FederationRequest, connect_decision
from coap_gateway.federation.link import session_setup_time
from coap_gateway.secure import frame as sf
from coap_gateway.secure import keys
from coap_gateway.transport import LinkBudget, UdpLink, connect
from meshsim import LinkProfile, emulated_link_pair
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


async def test_at_100_bit_s_a_restarted_responder_waits_as_long_as_the_session_takes(tmp_path):
    """The WAKE path on the slow link it was made for (real time, ~45 s).

    With ``session_wait`` cut to 1 s, the responder's wait is almost all the
    link's part (twice the 36 s that WAKE, ping, RESET, IK1 and IK2 take at
    100 bit/s, 1 s latency): a wait that ignored the link would give up
    before the new session is up, and the request would get 502."""
    fast, slow = LinkProfile(delay=0.001), LinkProfile(rate_bps=100, delay=1.0, overhead=42)
    slow_budget = LinkBudget(rate_bps=100, frame_overhead=42, latency=1.0)
    privs = sorted((keys.generate_keypair()[0] for _ in range(2)), key=keys.public_from_private)
    fakes = [FakeHomeserver(), FakeHomeserver()]
    bases = [await f.start() for f in fakes]
    link_a, link_b = emulated_link_pair(fast, names=("a", "b"), seed=5)
    peers = table((privs[0], "a", "a.example"), (privs[1], "b", "b.example"))

    async def gateway(link, priv, base, name):
        return await start_federation(link, homeserver=base, profile=PROFILE, static_private=priv, table=peers,
                                      ca_dir=tmp_path / name, state_dir=tmp_path / name,
                                      config=FederationConfig(base, PROFILE, session_wait=1.0))

    initiator = await gateway(link_a, privs[0], bases[0], "gw-a")
    responder = await gateway(link_b, privs[1], bases[1], "gw-b")
    try:
        await sessions_up(initiator, responder)  # on the fast link: the handshake is not what is tested
        # the link slows down (as meshsim reshapes one), and the responder restarts on it
        loop = asyncio.get_running_loop()
        link_a.stages[0].set_profile(slow, loop.time())
        link_a.budget = slow_budget
        initiator.endpoint.set_budget(slow_budget)
        await responder.stop()
        new_b, _ = emulated_link_pair(slow, names=("b", "a"), seed=6)  # its end toward gateway A's
        connect(new_b, link_a)
        responder = await gateway(new_b, privs[1], bases[1], "gw-b")
        assert responder.endpoint.budget.rate_bps == 100
        started = loop.time()
        to_a = connect_decision(responder.gateway.table, "a.example:8448")
        answer = await responder.gateway.forward(to_a, FederationRequest("GET", "/_matrix/federation/v1/version",
                                                                         b"", None, []))
        took = loop.time() - started
        assert answer.status == 200, answer
        client = initiator.codec.clients[responder.public]
        assert responder.codec.wakes_sent >= 1 and client.rehandshakes == 1
        # it needed more than the 1 s session_wait alone: the link's part of the wait did the work
        assert took > session_setup_time(responder.endpoint.budget) > 30
    finally:
        for gw in (initiator, responder):
            await gw.stop()
        for fake in fakes:
            await fake.runner.cleanup()
