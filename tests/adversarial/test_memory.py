"""What hostile but authenticated devices can make the server gateway hold
in block-wise uploads: their share per device, all of it together, and
nothing once their session is gone.

Real UDP on loopback, secure sessions (Noise IK), the server gateway as
deployed in front of a stand-in homeserver (this layer never reaches it:
an unfinished upload is not forwarded).  ``bench/hostile.py`` measures the
memory per device of the whole attack (sessions, tokens, handles, held
sync loops, uploads) on a server in its own process.
"""

from __future__ import annotations

import contextlib
import hashlib

from aiocoap.numbers.codes import Code

from bench.hostile import HostileDevice, stand_in_homeserver
from coap_gateway.app import start_server
from coap_gateway.codec import load_profile
from coap_gateway.secure import ServerLimits, keys
from coap_gateway.transport import UdpLink, assembly_bytes

PROFILE = load_profile("lb3")
BLOCK = 1024


async def start(max_sessions: int = 1024):
    homeserver = await stand_in_homeserver()
    server_private = keys.generate_keypair()[0]
    link = await UdpLink.open("127.0.0.1", 0)
    server = await start_server(link, homeserver=homeserver.url, profile=PROFILE, static_private=server_private,
                                limits=ServerLimits(max_sessions=max_sessions, handshake_rate=1000,
                                                    handshake_burst=1000))
    return homeserver, server, link.local_address, keys.public_from_private(server_private)


async def test_unfinished_uploads_go_with_their_session():
    # sessions are capped (LRU): a device whose session is closed can never
    # send the rest of its upload, so what it had in assembly is dropped —
    # before, each new device key left 16 KiB behind for the blockwise lifetime
    homeserver, server, address, public = await start(max_sessions=4)
    devices = []
    try:
        for n in range(16):
            device = await HostileDevice.connect(address, public, PROFILE, host="127.0.0.1")
            devices.append(device)
            codes = await device.partial_upload(16 * BLOCK)
            assert codes == [Code.CONTINUE] * 16
        held = assembly_bytes(server.gateway)
        assert held <= 4 * 16 * BLOCK, held  # only the 4 live sessions' uploads
        assert server.codec.endpoint.sizes()["sessions"] <= 4
    finally:
        for device in devices:
            await device.close()
        await server.stop()
        await homeserver.close()


async def test_all_devices_together_are_capped():
    homeserver, server, address, public = await start()
    server.gateway.config.max_upload_total = 40 * BLOCK
    devices = []
    try:
        answers = []
        for _ in range(3):
            device = await HostileDevice.connect(address, public, PROFILE, host="127.0.0.1")
            devices.append(device)
            answers.append(await device.partial_upload(16 * BLOCK))
        # each within its own 256 KiB share; together past 40 KiB: refused
        assert answers[0] == answers[1] == [Code.CONTINUE] * 16
        assert answers[2][:8] == [Code.CONTINUE] * 8 and answers[2][8] == Code.SERVICE_UNAVAILABLE
        assert assembly_bytes(server.gateway) <= 40 * BLOCK
        assert server.gateway.counters.refused_uploads >= 1
    finally:
        for device in devices:
            with contextlib.suppress(Exception):
                await device.close()
        await server.stop()
        await homeserver.close()


class _Host:
    """What the server codec asks of the CoAP layer, doing nothing."""

    def send_datagram(self, addr, datagram) -> None:
        pass

    def forget_remote(self, key) -> None:
        pass

    def remembers(self, key, message_id) -> bool:
        return True


async def test_device_epochs_stay_bounded_under_throwaway_restarting_keys():
    """Each static key that announced RESTART kept an epoch entry for ever
    (2000 throwaway keys: 2000 entries).  Bounded now, and a restarted device
    that lost its session and comes back soon keeps its epoch: its old
    process's exchanges, still in CoAP's memory, must not match its new ones."""
    from coap_gateway.secure.keys import public_from_private
    from coap_gateway.transport import SecureServerCodec
    from tests.helpers.secure_world import NOW, get, new_client, new_server

    now = [NOW]
    codec = SecureServerCodec(new_server(max_sessions=8, max_tracked_addresses=16), clock=lambda: now[0])
    codec.bind(_Host())

    def connect(seed: str, addr, **flags) -> None:
        for out in new_client(seed=seed, **flags).send(now[0], get(0x10)):
            codec.incoming(addr, out.data)

    device = public_from_private(hashlib.sha256(b"device").digest())
    connect("device", "D", restart=True, unbound=True)
    assert codec.device_key(device).epoch == 1
    for i in range(300):
        connect(f"throwaway{i}", ("10.0.0.1", 1000 + i), restart=True, unbound=True)
        if i == 10:  # the device's session was evicted (at i = 7); it comes back (no new process)
            assert codec.device_address(codec.device_key(device)) is None
            connect("device", "D")
            assert codec.device_key(device).epoch == 1
    sizes = codec.sizes()
    assert sizes["devices"] <= 8 and sizes["epochs"] <= 2 * 8, sizes
    # gone for longer than CoAP remembers anything of it: forgotten however few come and go
    now[0] += 1000
    for i in range(3):
        connect(f"later{i}", ("10.0.0.2", i), restart=True, unbound=True)
    assert codec.sizes()["epochs"] <= 8 + 3


async def test_an_unfinished_upload_waits_on_disk_not_in_memory(tmp_path):
    """A device parks an upload at its limit: its bytes are in an anonymous
    file (in the spool directory), not in the server's memory — what made a
    hostile device cost 845 KiB instead of ~224 KiB (bench/hostile.py)."""
    import os

    from coap_gateway.gateway import UploadSpool
    from coap_gateway.transport.coap import _assemblies

    homeserver, server, address, public = await start()
    server.gateway.config.spool_dir = tmp_path
    device = await HostileDevice.connect(address, public, PROFILE, host="127.0.0.1")
    try:
        assert await device.partial_upload(64 * BLOCK) == [Code.CONTINUE] * 64
        (held,) = [request.payload for request in _assemblies(server.gateway).values()]
        assert isinstance(held, UploadSpool) and len(held) == 64 * BLOCK
        assert os.fstat(held._file.fileno()).st_size == 64 * BLOCK
        assert assembly_bytes(server.gateway) == 64 * BLOCK
    finally:
        await device.close()
        await server.stop()
        await homeserver.close()


def test_the_spool_gives_back_exactly_what_was_appended(tmp_path):
    from coap_gateway.gateway import UploadSpool

    spool = UploadSpool(b"first ", tmp_path)
    spool += b"second "
    spool += b""
    spool += bytes(range(256))
    assert len(spool) == 13 + 256
    assert spool.take() == b"first second " + bytes(range(256))
    assert spool._file.closed
