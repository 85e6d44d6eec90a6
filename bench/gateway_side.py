"""The gateway side: server gateway and client gateways over real UDP on loopback.

The server gateway listens on its own 127.0.0.x; each device's client
gateway binds another 127.0.0.x, so every frame between them is a real UDP
datagram the capture sees.  Secure mode (Noise IK: each client has the
server's key pinned), the default profile — what ``coap-gateway server`` and
``coap-gateway client`` run by default.

``CountingUdpLink`` is ``coap_gateway.links.UdpLink`` plus counters of what
the link itself sent and received, so the benchmark can check that the
capture saw every frame the link did.
"""

from __future__ import annotations

import tempfile
from collections.abc import Hashable
from typing import Any

from coap_gateway.app import (
    RunningServer,
    start_client,
    start_server,
)
from coap_gateway.codec import DEFAULT_PROFILE, Profile, load_profile
from coap_gateway.secure import keys
from coap_gateway.transport import UdpLink

from .devices import Device, Transport, new_nio


class CountingUdpLink(UdpLink):
    """A UdpLink that counts the datagrams it sends and receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames_out = self.bytes_out = self.frames_in = self.bytes_in = 0

    def send(self, peer: Hashable, datagram: bytes) -> None:
        self.frames_out += 1
        self.bytes_out += len(datagram)
        super().send(peer, datagram)

    def set_receiver(self, receiver) -> None:  # type: ignore[no-untyped-def]
        def counted(peer: Hashable, datagram: bytes) -> None:
            self.frames_in += 1
            self.bytes_in += len(datagram)
            receiver(peer, datagram)

        super().set_receiver(counted)

    def counters(self) -> dict[str, int]:
        return {"frames_out": self.frames_out, "bytes_out": self.bytes_out,
                "frames_in": self.frames_in, "bytes_in": self.bytes_in}


class GatewayDevice(Device):
    def __init__(self, transport: GatewayTransport, ip: str) -> None:
        super().__init__(ip)
        self.transport = transport
        self.link: CountingUdpLink | None = None
        self.client: Any = None

    async def start(self) -> None:
        t = self.transport
        self.link = await CountingUdpLink.open(self.ip, 0)
        self.client = await start_client(self.link, t.server, profile=t.profile,
                                         static_private=keys.generate_keypair()[0], fresh_key=True,
                                         server_public=keys.public_from_private(t.server_key))

    def nio(self, user: str = ""):
        client = new_nio(self.client.base_url, user)
        self._clients.append(client)
        return client

    def link_counters(self) -> dict[str, int] | None:
        return self.link.counters() if self.link is not None else None

    @property
    def retransmissions(self) -> int:
        return self.client.endpoint.counters.retransmissions if self.client is not None else 0

    async def close(self) -> None:
        await super().close()
        if self.client is not None:
            await self.client.stop()
            self.client = None


class GatewayTransport(Transport):
    name = "gateway"
    label = "gateway (CoAP+CBOR+Flate in Noise, UDP)"

    def __init__(self, homeserver: str, listen: tuple[str, int], *, profile: str = DEFAULT_PROFILE) -> None:
        self.homeserver = homeserver
        self.listen = listen
        self.profile: Profile = load_profile(profile)
        self.server_key = keys.generate_keypair()[0]
        self.link: CountingUdpLink | None = None
        self.running: RunningServer | None = None

    @property
    def server(self) -> tuple[str, int]:
        assert self.link is not None
        return self.link.local_address

    async def start(self) -> None:
        self.link = await CountingUdpLink.open(*self.listen)
        # a state directory, as `coap-gateway server` has by default (the key's): without
        # one the server refuses early data for its first ten minutes (replay protection)
        self._state = tempfile.TemporaryDirectory(prefix="bench-server-state-")
        self.running = await start_server(self.link, homeserver=self.homeserver, profile=self.profile,
                                          static_private=self.server_key, state_dir=self._state.name)

    async def stop(self) -> None:
        if self.running is not None:
            await self.running.stop()
            self.running = None
        if getattr(self, "_state", None) is not None:
            self._state.cleanup()
            self._state = None

    def bpf(self) -> str:
        host, port = self.server
        return f"udp and host {host} and port {port}"

    async def device(self, ip: str) -> GatewayDevice:
        device = GatewayDevice(self, ip)
        await device.start()
        return device
