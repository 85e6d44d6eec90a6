"""Long-polls held for many devices must not starve anybody's short requests.

Hundreds of sync-push registrations — inside the documented limits (4 per
session, 1024 in all) — each hold one long-poll to the homeserver.  While
they are held, another device's ``/versions`` and send must still be
answered.  The homeserver is scripted (a fake, this is one layer: the server
gateway's upstream): it answers ``/versions``, sends and ``timeout=0`` syncs
at once and holds every ``/sync`` long-poll for its whole timeout, as an idle
Synapse does.  Devices are client gateways over real UDP on loopback,
plaintext (the secure layer is not what is tested).

No timing is a performance target here: "answered at all, well inside the
request timeout, while N long-polls are held" is the property; the measured
latency is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from aiohttp import web

from coap_gateway.app.runner import RunningClient, start_client, start_server
from coap_gateway.gateway import ClientGateway
from coap_gateway.push import SyncPushClientConfig, SyncPushServerConfig
from coap_gateway.secure import ClientEndpoint, keys
from coap_gateway.transport import (
    SERVER_KEY,
    SecureClientCodec,
    UdpLink,
    create_link_endpoint,
    profile_wire_digest,
)
from tests.helpers.scripted import ScriptedServer
from tests.helpers.sync_bodies import PROFILE, empty_body, token

DEVICES = 150
PER_DEVICE = 4  # the per-session limit of sync push (SyncPushServerConfig.max_per_session)
#: the bound asserted: far above any healthy answer, well under the request timeout
BOUND = 10.0
REQUEST_TIMEOUT = 30.0
#: aiohttp's default connector limit: more held long-polls than this starved everyone
AIOHTTP_DEFAULT_LIMIT = 100


async def until(predicate, timeout: float = 60.0) -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class HoldingHomeserver(ScriptedServer):
    """``/versions`` and sends at once; ``/sync`` with ``timeout=0`` at once
    (an idle answer from ``since``), a long-poll held for its timeout."""

    def __init__(self) -> None:
        self.held = 0
        self.most_held = 0
        self.closing = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/_matrix/client/versions", self.versions)
        self.app.router.add_get("/_matrix/client/v3/sync", self.sync)
        self.app.router.add_put("/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", self.send)

    async def versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": ["v1.11"]})

    async def send(self, request: web.Request) -> web.Response:
        return web.json_response({"event_id": "$" + request.match_info["txn"]})

    async def sync(self, request: web.Request) -> web.Response:
        timeout = int(request.query.get("timeout", "0")) / 1000
        if timeout > 0:
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), timeout)
            finally:
                self.held -= 1
        return web.Response(body=empty_body(1), content_type="application/json")

    def on_stop(self) -> None:
        self.closing.set()


async def _timed(http: aiohttp.ClientSession, method: str, url: str, **kwargs) -> tuple[float, int]:
    start = time.perf_counter()
    try:
        async with http.request(method, url, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT), **kwargs) as r:
            await r.read()
            return time.perf_counter() - start, r.status
    except TimeoutError:
        return time.perf_counter() - start, 0


async def _honest_requests(http: aiohttp.ClientSession, base_url: str) -> dict[str, tuple[float, int]]:
    send = f"{base_url}/_matrix/client/v3/rooms/!room:hs/send/m.room.message/t1"
    return {
        "versions": await _timed(http, "GET", f"{base_url}/_matrix/client/versions"),
        "send": await _timed(http, "PUT", send, json={"msgtype": "m.text", "body": "hi"},
                             headers={"Authorization": "Bearer honest"}),
    }


async def _devices(server_port: int, count: int, *, sync_push: SyncPushClientConfig | bool):
    clients = []
    for _ in range(count):
        link = await UdpLink.open("127.0.0.1", 0)
        clients.append(await start_client(link, ("127.0.0.1", server_port), profile=PROFILE, sync_push=sync_push))
    return clients


def _sync_url(base_url: str, n: int, timeout_ms: int) -> str:
    # another filter, another stream: each device runs PER_DEVICE sync loops
    return f"{base_url}/_matrix/client/v3/sync?since={token(1)}&timeout={timeout_ms}&filter={n}"


async def test_held_sync_push_long_polls_do_not_starve_other_devices():
    async with HoldingHomeserver() as hs:
        link = await UdpLink.open("127.0.0.1", 0)
        server = await start_server(link, homeserver=hs.url, profile=PROFILE, static_private=None,
                                    sync_push=SyncPushServerConfig())
        port = link.local_address[1]
        # devices that stop polling keep their observations: the server's loops run on
        crowd = await _devices(port, DEVICES, sync_push=SyncPushClientConfig(min_idle=3600))
        honest, = await _devices(port, 1, sync_push=True)
        push = server.gateway.sync_push
        polls: list[asyncio.Task] = []
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                for d, client in enumerate(crowd):
                    for n in range(PER_DEVICE):
                        headers = {"Authorization": f"Bearer device{d}"}
                        polls.append(asyncio.create_task(http.get(_sync_url(client.base_url, n, 1000),
                                                                  headers=headers)))
                await until(lambda: len(push.observations) == DEVICES * PER_DEVICE, timeout=60)
                # every loop's first poll (timeout 0) answered, its long-poll held — or
                # as many as the homeserver connections allow
                await until(lambda: hs.held >= AIOHTTP_DEFAULT_LIMIT, timeout=60)
                with contextlib.suppress(TimeoutError):
                    await until(lambda: hs.held == DEVICES * PER_DEVICE, timeout=15)
                held = hs.held
                answers = await _honest_requests(http, honest.base_url)
                print(f"\n{held} long-polls held ({len(push.observations)} observations); honest device: "
                      + ", ".join(f"{k} {s:.3f} s (status {st})" for k, (s, st) in answers.items()))
                for name, (seconds, status) in answers.items():
                    assert status == 200 and seconds < BOUND, (name, seconds, status)
                # the pool holds every observation's long-poll at once: none waits for another
                assert held == DEVICES * PER_DEVICE
        finally:
            for task in polls:
                task.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
            for client in [*crowd, honest]:
                await client.stop()
            await server.stop()


async def test_held_plain_long_polls_do_not_starve_other_devices():
    # without sync push every /sync long-poll is forwarded as it comes: held
    # the same way upstream, through the plain path
    async with HoldingHomeserver() as hs:
        link = await UdpLink.open("127.0.0.1", 0)
        server = await start_server(link, homeserver=hs.url, profile=PROFILE, static_private=None, sync_push=False)
        port = link.local_address[1]
        crowd = await _devices(port, DEVICES, sync_push=False)
        honest, = await _devices(port, 1, sync_push=False)
        polls: list[asyncio.Task] = []
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                for d, client in enumerate(crowd):
                    for n in range(PER_DEVICE):
                        polls.append(asyncio.create_task(http.get(_sync_url(client.base_url, n, 30_000),
                                                                  headers={"Authorization": f"Bearer device{d}"})))
                # every poll reached the server gateway; as many as it has connections for are held
                await until(lambda: server.gateway.counters.requests >= DEVICES * PER_DEVICE, timeout=60)
                await until(lambda: hs.held >= AIOHTTP_DEFAULT_LIMIT, timeout=60)
                held = hs.held
                answers = await _honest_requests(http, honest.base_url)
                print(f"\n{held} plain long-polls held; honest device: "
                      + ", ".join(f"{k} {s:.3f} s (status {st})" for k, (s, st) in answers.items()))
                for name, (seconds, status) in answers.items():
                    assert status == 200 and seconds < BOUND, (name, seconds, status)
        finally:
            # the held polls are answered: the client gateways wait for them to stop
            hs.closing.set()
            for task in polls:
                task.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
            for client in [*crowd, honest]:
                await client.stop()
            await server.stop()


async def _session_of(device_key: bytes, server_addr, server_public: bytes) -> RunningClient:
    """A client gateway with a session of the device ``device_key`` that
    does not announce a restart: the device's other sessions stay open."""
    codec = SecureClientCodec(ClientEndpoint(device_key, PROFILE.id, profile_wire_digest(PROFILE),
                                             server_public=server_public), server_addr)
    endpoint = await create_link_endpoint(await UdpLink.open("127.0.0.1", 0), codec=codec)
    gateway = ClientGateway(endpoint, SERVER_KEY, PROFILE, sync_push=SyncPushClientConfig(min_idle=3600))
    await gateway.start()
    return RunningClient(endpoint, gateway, codec)


async def test_a_device_gets_no_larger_share_from_more_sessions():
    # each observation holds one homeserver long-poll: a device that opens
    # session after session must not collect them all
    server_key = keys.generate_keypair()[0]
    device = keys.generate_keypair()[0]
    async with HoldingHomeserver() as hs:
        link = await UdpLink.open("127.0.0.1", 0)
        server = await start_server(link, homeserver=hs.url, profile=PROFILE, static_private=server_key)
        public = keys.public_from_private(server_key)
        sessions = [await _session_of(device, link.local_address, public) for _ in range(3)]
        other = await _session_of(keys.generate_keypair()[0], link.local_address, public)
        push = server.gateway.sync_push
        try:
            async with aiohttp.ClientSession() as http:
                async def poll(client: RunningClient, n: int, token: str = "device") -> int:
                    headers = {"Authorization": f"Bearer {token}"}
                    async with http.get(_sync_url(client.base_url, n, 50), headers=headers) as r:
                        await r.read()
                        return r.status

                # three sessions of one device, two streams each: four observations, two declined
                for s, client in enumerate(sessions):
                    for n in (2 * s, 2 * s + 1):
                        assert await poll(client, n) == 200
                # a poll's answer (its 50-ms timeout, at the client gateway) does not wait
                # for the server to have taken the registration: wait for that
                await until(lambda: len(push.observations) == 4 and push.counters.declined == 2, timeout=30)
                # (the server's CoAP layer knows the device, not the session: one remote)
                assert len({o.remote for o in push.observations.values()}) == 1
                # another device has its own share
                for n in range(4):
                    assert await poll(other, n, "other") == 200
                await until(lambda: len(push.observations) == 8 and push.counters.declined == 2, timeout=30)
                await until(lambda: hs.held == 8)
        finally:
            for client in [*sessions, other]:
                await client.stop()
            await server.stop()
