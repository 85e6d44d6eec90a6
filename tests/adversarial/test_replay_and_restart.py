"""Exactly once under forged RESETs, replayed frames and restarts of either side.

Real UDP on loopback, aiocoap, the secure codecs; the server's application
is a resource that counts how often each request body runs.  An attacker on
the path sees every frame's clear header (4 bytes): that is all a RESET
needs, and it can resend any datagram it saw.
"""

from __future__ import annotations

import asyncio
import time

import aiocoap.resource as resource
from aiocoap import Message
from aiocoap.numbers.codes import Code

from coap_gateway.secure import ClientEndpoint, ServerEndpoint, keys
from coap_gateway.secure import frame as sf
from coap_gateway.transport import (
    SERVER_KEY,
    SecureClientCodec,
    SecureServerCodec,
    UdpLink,
    create_link_endpoint,
)
from tests.helpers.devices import until
from tests.helpers.secure import DIGEST, PROFILE, SERVER_PRIV, SERVER_PUB, Counting, put, site_with


class Gate(resource.Resource):
    """POST /x: runs the request (counted by body), answers when the gate is open."""

    def __init__(self) -> None:
        super().__init__()
        self.executions: dict[bytes, int] = {}
        self.open = asyncio.Event()
        self.open.set()

    async def render_post(self, request):
        self.executions[request.payload] = self.executions.get(request.payload, 0) + 1
        await self.open.wait()
        return Message(code=Code.CHANGED, payload=b"ok:" + request.payload)


class Tap:
    """Wrap a link's send: keep every datagram (what an attacker on the path sees)."""

    def __init__(self, link) -> None:
        self.sent: list[bytes] = []
        inner = link.send

        def send(peer, datagram):
            self.sent.append(datagram)
            inner(peer, datagram)

        link.send = send


async def server(static=SERVER_PRIV, app=None, clock=time.time):
    link = await UdpLink.open("127.0.0.1", 0)
    codec = SecureServerCodec(ServerEndpoint(static, {PROFILE.id: DIGEST}), clock=clock)
    app = app or Gate()
    endpoint = await create_link_endpoint(link, site=site_with(app), codec=codec)
    return link, endpoint, codec, app


async def client(server_addr, static=None, *, restart=False, unbound=False, pinned=True):
    link = await UdpLink.open("127.0.0.1", 0)
    tap = Tap(link)
    static = static or keys.generate_keypair()[0]
    codec = SecureClientCodec(ClientEndpoint(static, PROFILE.id, DIGEST, server_public=SERVER_PUB if pinned else None,
                                             restart=restart, unbound=unbound), server_addr, clock=time.time)
    endpoint = await create_link_endpoint(link, codec=codec)
    return link, endpoint, codec, tap


def post(endpoint, body: bytes):
    msg = Message(code=Code.POST, uri_path=["x"], payload=body)
    msg.remote = endpoint.remote(SERVER_KEY)
    return endpoint.context.request(msg).response


def forge_reset(link, frame: bytes, from_addr) -> None:
    """A RESET naming ``frame``, arriving at the client as if from the server
    (source addresses are not authenticated on UDP)."""
    link._protocol.datagram_received(sf.build_reset(frame[:4]), from_addr)


def data_frames(tap: Tap) -> list[bytes]:
    return [d for d in tap.sent if sf.classify(d) is sf.DatagramKind.DATA and len(d) > 4]


async def test_forged_reset_after_the_answer_sends_nothing_again():
    s_link, s_end, _, app = await server()
    c_link, c_end, c_codec, tap = await client(s_link.local_address)
    try:
        assert (await asyncio.wait_for(post(c_end, b"create-room"), 10)).payload == b"ok:create-room"
        assert (await asyncio.wait_for(post(c_end, b"second"), 10)).payload == b"ok:second"
        frames_before, handshakes = len(tap.sent), c_codec.handshakes
        for frame in data_frames(tap):  # every frame the attacker saw
            forge_reset(c_link, frame, s_link.local_address)
        await asyncio.sleep(0.3)
        assert len(tap.sent) == frames_before and c_codec.handshakes == handshakes
        assert app.executions == {b"create-room": 1, b"second": 1}
    finally:
        await c_end.shutdown()
        await s_end.shutdown()


async def test_forged_reset_while_pending_runs_the_request_once():
    s_link, s_end, s_codec, app = await server()
    c_link, c_end, c_codec, tap = await client(s_link.local_address)
    try:
        await asyncio.wait_for(post(c_end, b"warm-up"), 10)
        app.open.clear()  # the next request runs but is not answered yet
        pending = asyncio.ensure_future(post(c_end, b"create-room"))
        while app.executions.get(b"create-room") != 1:
            await asyncio.sleep(0.01)
        forge_reset(c_link, data_frames(tap)[-1], s_link.local_address)
        while c_codec.handshakes < 2:  # the client re-handshakes and sends the request again
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        app.open.set()
        answer = await asyncio.wait_for(pending, 10)
        assert answer.payload == b"ok:create-room"
        # the resend came in a new session but is the same CoAP message (device-keyed dedup)
        assert app.executions == {b"warm-up": 1, b"create-room": 1}
        assert s_codec.sessions_established == 2
    finally:
        app.open.set()
        await c_end.shutdown()
        await s_end.shutdown()


class _LaterLoop:
    """The event loop as CoAP's deduplication sees it, ``offset`` seconds on."""

    def __init__(self, loop) -> None:
        self._loop, self.offset = loop, 0.0

    def time(self) -> float:
        return self._loop.time() + self.offset

    def __getattr__(self, name):
        return getattr(self._loop, name)


async def test_a_copy_replayed_after_coap_forgot_its_exchange_runs_nothing():
    """Two clocks: the secure layer passes a byte-identical frame on as a
    duplicate for at least 247 s (its duplicate lifetime), CoAP deduplicates
    a fast peer's message for its exchange lifetime, 223.5 s.  A data frame
    replayed in between, and an XX3 (its first request inside) a day later,
    must be dropped, not run again (found by an audit: both ran twice).  The
    XX3 a day later is past its duplicate lifetime: the secure layer drops
    it itself (as it drops a data frame that late)."""
    for pinned, later in ((True, 230.0), (False, 86400.0)):
        offset = [0.0]
        s_link, s_end, s_codec, app = await server(clock=lambda: time.time() + offset[0])
        mman = s_end.interface.mman
        shifted = mman.loop = _LaterLoop(mman.loop)
        c_link, c_end, _, tap = await client(s_link.local_address, pinned=pinned)
        try:
            await asyncio.wait_for(post(c_end, b"create-room"), 10)
            await asyncio.wait_for(post(c_end, b"second"), 10)
            xx3 = [d for d in tap.sent if sf.classify(d) is sf.DatagramKind.XX3]
            captured = data_frames(tap)[-1] if pinned else xx3[0]
            offset[0] = shifted.offset = later
            mman._sweep_duplicates()  # CoAP's periodic sweep has run by then
            s_link._protocol.datagram_received(captured, c_link.local_address)  # from the client's address
            reason = "duplicate of an exchange CoAP has forgotten" if pinned else "XX3 repeated"
            await until(lambda: s_codec.dropped[reason] == 1, timeout=5)
            assert app.executions == {b"create-room": 1, b"second": 1}
        finally:
            await c_end.shutdown()
            await s_end.shutdown()


async def test_replayed_frames_after_a_server_restart_run_nothing():
    s_link, s_end, _, app = await server()
    addr = s_link.local_address
    c_link, c_end, _, tap = await client(addr)
    try:
        await asyncio.wait_for(post(c_end, b"create-room"), 10)
        await s_end.shutdown()
        # the server restarts (same key, same address): no sessions
        s_link2 = await UdpLink.open(*addr)
        codec2 = SecureServerCodec(ServerEndpoint(SERVER_PRIV, {PROFILE.id: DIGEST}), clock=time.time)
        app2 = Gate()
        s_end2 = await create_link_endpoint(s_link2, site=site_with(app2), codec=codec2)
        # the attacker replays everything it saw, from the client's address
        replayer = c_link.transport
        for datagram in tap.sent:
            replayer.sendto(datagram, addr)
        await asyncio.sleep(0.5)
        assert app2.executions == {}  # no session decrypts old frames; an old IK1 carries no POST
        # and the client, RESET for an answered request, sends nothing again
        assert app.executions == {b"create-room": 1}
        assert (await asyncio.wait_for(post(c_end, b"after"), 10)).payload == b"ok:after"
        assert app2.executions == {b"after": 1}
        await s_end2.shutdown()
    finally:
        await c_end.shutdown()


async def test_a_restarted_client_process_is_a_new_coap_peer():
    """Same device key, a new process whose message IDs collide with the old
    one's: the server must run its requests, not answer them from the old
    process's deduplication cache."""
    s_link, s_end, s_codec, app = await server()
    device = keys.generate_keypair()[0]
    c_link, c_end, _, _ = await client(s_link.local_address, device)
    try:
        start = c_end.interface.mman.message_id
        await asyncio.wait_for(post(c_end, b"old-1"), 10)
        await c_end.shutdown()
        c_link2, c_end2, _, _ = await client(s_link.local_address, device, restart=True, unbound=True)
        c_end2.interface.mman.message_id = start  # the same message ID as the old process's first request
        answer = await asyncio.wait_for(post(c_end2, b"new-1"), 10)
        assert answer.payload == b"ok:new-1"
        assert app.executions == {b"old-1": 1, b"new-1": 1}
        assert s_codec.device_restarts == 1
        assert s_codec.endpoint.sizes()["sessions"] == 1  # the old process's session was closed
        await c_end2.shutdown()
    finally:
        await s_end.shutdown()


async def restarted_server(addr, store):
    """A server gateway's secure layer as the runner builds it, on ``addr``."""
    from coap_gateway.app import server_endpoint

    link = await UdpLink.open(*addr)
    endpoint = server_endpoint(SERVER_PRIV, PROFILE, now=time.time(), store=store)
    codec = SecureServerCodec(endpoint, clock=time.time)
    app = Counting()
    return link, await create_link_endpoint(link, site=site_with(app), codec=codec), app


async def test_a_replayed_ik1_with_early_data_runs_nothing_after_a_server_restart(tmp_path):
    """IK1 carries an idempotent request as 0-RTT data (a PUT: a displayname).
    Replayed after the server restarted, it must not run again — the strike
    register is persisted in the state directory; and a server without one
    refuses early data for the early window after it starts."""
    from coap_gateway.app import ServerStore

    store = ServerStore(tmp_path / "state")
    s_link, s_end, app = await restarted_server(("127.0.0.1", 0), store)
    addr = s_link.local_address
    c_link, c_end, _, tap = await client(addr)
    try:
        assert (await asyncio.wait_for(put(c_end, b"displayname=alice"), 10)).payload == b"ok:displayname=alice"
        ik1 = [d for d in tap.sent if sf.classify(d) is sf.DatagramKind.IK1]
        assert len(ik1) == 1 and len(ik1[0]) > 104  # the PUT rode in IK1
        assert app.executions == {b"displayname=alice": 1}
    finally:
        await c_end.shutdown()
        await s_end.shutdown()
        store.close()
    for with_store in (True, False):
        store = ServerStore(tmp_path / "state") if with_store else None
        s_link, s_end, app = await restarted_server(addr, store)
        attacker = await UdpLink.open("127.0.0.1", 0)
        try:
            attacker.send(addr, ik1[0])
            await asyncio.sleep(0.5)
            assert app.executions == {}, f"replayed early data ran (store: {with_store})"
        finally:
            await attacker.close()
            await s_end.shutdown()
            if store is not None:
                store.close()


def test_without_a_state_directory_early_data_waits_until_the_last_runs_ik1s_are_stale(tmp_path):
    """The runner's server without a store: an IK1 the last run accepted stays
    acceptable until its minutes + the early window + 1 minute, and its
    minutes may be the window ahead of the server's clock — so early data
    waits twice the window and a minute, not the window once (before, this
    replay ran again for 11 minutes).  Sans-I/O: the endpoints as the runner
    builds them, driven with a clock."""
    from coap_gateway.app import ServerStore, server_endpoint
    from coap_gateway.secure import Deliver
    from coap_gateway.secure.noise import ClientSession

    start = 30_000_000 * 60.0  # a minute boundary
    early_put = bytes([0x41, 0x03, 0x00, 0x77, 0x05]) + b"\xb1x\xffname"
    ik1 = ClientSession(keys.generate_keypair()[0], PROFILE.id, DIGEST, now=start + 1 + 10 * 60,  # its clock +10 min
                        server_public=SERVER_PUB, message=early_put).datagram
    store = ServerStore(tmp_path)
    first = server_endpoint(SERVER_PRIV, PROFILE, now=start, store=store)
    assert [d.early for d in first.receive(start + 1, "A", ik1) if isinstance(d, Deliver)] == [True]
    store.close()
    restart = start + 2
    for t in range(int(restart), int(restart) + 40 * 60, 15):
        # restarted without the store; the attacker replays once, at t
        after = server_endpoint(SERVER_PRIV, PROFILE, now=restart)
        assert not [d for d in after.receive(float(t), "X", ik1) if isinstance(d, Deliver) and d.early], t


def test_a_strike_without_early_data_outlives_a_restart(tmp_path):
    """Every fresh IK1 is struck and the strike persisted, early data or not:
    else its replay after a restart would be its first sight."""
    from coap_gateway.app import ServerStore, server_endpoint
    from coap_gateway.secure import Deliver, DeviceRestarted
    from coap_gateway.secure.noise import ClientSession

    now = time.time()
    early_get = bytes([0x41, 0x01, 0x00, 0x78, 0x05]) + b"\xb1x"
    ik1 = ClientSession(keys.generate_keypair()[0], PROFILE.id, DIGEST, now=now, server_public=SERVER_PUB,
                        message=early_get, restart=True, unbound=True).datagram
    store = ServerStore(tmp_path)
    first = server_endpoint(SERVER_PRIV, PROFILE, now=now, store=store)
    first.early_data_from = now + 60  # its early data refused (say, a server just started)
    assert not [d for d in first.receive(now, "A", ik1) if isinstance(d, Deliver)]
    store.close()
    store = ServerStore(tmp_path)
    after = server_endpoint(SERVER_PRIV, PROFILE, now=now + 120, store=store)
    outs = after.receive(now + 120, "X", ik1)
    assert not [o for o in outs if isinstance(o, (Deliver, DeviceRestarted))]
    store.close()
