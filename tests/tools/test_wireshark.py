"""Captures Wireshark reads (issue 13.5): the Lua dissector with and without
the key log, on secure captures made by the real gateways over UDP loopback
(through meshsim's relay, which writes the pcap) and by the secure endpoints
in memory (rekeying, NAT rebinding, XX).  The shipped 100 bit/s pair is
checked in tests/meshsim/run/test_run.py with the same helper."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from coap_gateway.app.runner import start_client, start_server
from coap_gateway.codec import DEFAULT_PROFILE, load_profile
from coap_gateway.secure import SessionKeys, keys
from coap_gateway.tools.wireshark import PLUGIN, current_plugin
from coap_gateway.transport import KeyLog, UdpLink
from meshsim import LinkProfile, PcapWriter, Relay
from tests.helpers import wireshark
from tests.helpers.secure_world import World, get, new_client, new_server, post

ROOM = "!wireshark:hs"
EVENT_ID = "$" + "A" * 43


def yes(value: str) -> bool:
    return value in ("1", "True")


def test_generated_route_tables_are_current():
    assert current_plugin() == PLUGIN.read_text(encoding="utf-8"), "run: python -m coap_gateway.tools.wireshark"


def test_every_private_option_has_its_name_in_the_dissector():
    import re

    from coap_gateway.codec import options

    names = dict(re.findall(r'\[(\d+)\] = "([A-Za-z-]+)"', PLUGIN.read_text(encoding="utf-8").split("OPTION_NAMES")[1]
                            .split("}")[0]))
    private = {name: number for name, number in vars(options).items()
               if name.isupper() and isinstance(number, int) and number >= 65000 and not name.startswith("CF_")}
    for name, number in private.items():
        assert names.get(str(number), "").upper().replace("-", "_") == name, (name, number)


# ---------------------------------------------------------------- the real gateways


MEGOLM_BODY = ('{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"' + "QUJD" * 50 + '","device_id":"DEV",'
               '"sender_key":"' + "A" * 43 + '","session_id":"' + "B" * 43 + '"}').encode()


async def stub_homeserver() -> tuple[web.AppRunner, str]:
    async def anything(request: web.Request) -> web.Response:
        if request.method == "PUT" and "/send/" in request.path:
            return web.json_response({"event_id": EVENT_ID})
        if request.path.endswith("/createRoom"):
            return web.json_response({"room_id": ROOM})
        if request.path.endswith("/versions"):
            return web.json_response({"versions": ["v1.11"]})
        return web.json_response({"chunk": [], "start": "t1", "end": "t2"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def record_gateways(tmp_path: Path) -> tuple[Path, Path, int]:
    """Two client gateways (one IK with the server key, one XX on first
    contact) through a relay that writes the pcap; their key log."""
    profile = load_profile(DEFAULT_PROFILE)
    pcap, keylog = tmp_path / "capture.pcap", tmp_path / "capture.keylog"
    runner, homeserver = await stub_homeserver()
    key_log = KeyLog(keylog)
    server_private = keys.generate_keypair()[0]
    server_link = await UdpLink.open("127.0.0.1", 0)
    server = await start_server(server_link, homeserver=homeserver, profile=profile, static_private=server_private,
                                sync_push=False, state_dir=tmp_path, key_log=key_log)
    server_port = server_link.local_address[1]
    clients, links = [], [server_link]
    with PcapWriter(pcap) as capture:
        relay = Relay(("127.0.0.1", 0), ("127.0.0.1", server_port), LinkProfile(rate_bps=1e6, delay=0.001),
                      capture=capture)
        await relay.start()
        try:
            for pinned in (True, False):
                link = await UdpLink.open("127.0.0.1", 0)
                links.append(link)
                clients.append(await start_client(
                    link, relay.listen_address, profile=profile, static_private=keys.generate_keypair()[0],
                    server_public=keys.public_from_private(server_private) if pinned else None,
                    pins=None if pinned else keys.PinStore(tmp_path / "pins.json"), server_name="hs",
                    sync_push=False, key_log=key_log))
            auth = {"Authorization": "Bearer secret-token"}
            async with aiohttp.ClientSession() as http:
                for client in clients:
                    base = client.base_url
                    async with http.put(f"{base}/_matrix/client/v3/profile/@a:hs/displayname",
                                        json={"displayname": "A"}, headers=auth) as r:
                        assert r.status == 200, await r.text()
                    async with http.post(f"{base}/_matrix/client/v3/createRoom", json={}, headers=auth) as r:
                        assert r.status == 200
                    for txn in ("t1", "t2"):  # the second send uses the room handle alone
                        async with http.put(f"{base}/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/{txn}",
                                            json={"msgtype": "m.text", "body": "hello " + txn}, headers=auth) as r:
                            assert r.status == 200 and (await r.json())["event_id"] == EVENT_ID
                    for txn in ("e1", "e2"):  # the encrypted schema: the template once, then its handle
                        async with http.put(f"{base}/_matrix/client/v3/rooms/{ROOM}/send/m.room.encrypted/{txn}",
                                            data=MEGOLM_BODY, headers=auth | {"Content-Type": "application/json"}) as r:
                            assert r.status == 200
                    async with http.get(f"{base}/_matrix/client/v3/rooms/{ROOM}/messages?dir=b&limit=5",
                                        headers=auth) as r:
                        assert r.status == 200
        finally:
            for client in clients:
                await client.stop()
            await server.stop()
            await relay.stop()
            for link in links:
                await link.close()
            await runner.cleanup()
            key_log.close()
    return pcap, keylog, server_port  # the pcap shows client <-> server addresses


async def test_gateway_capture_decrypted_with_the_key_log(tmp_path: Path) -> None:
    wireshark.tshark()
    started = time.monotonic()
    pcap, keylog, port = await record_gateways(tmp_path)
    assert len(keylog.read_text().splitlines()) == 2  # one line per session, both gateways writing it once
    ports = ("-o", f"cgw.ports:{port}")

    # before: Wireshark's CoAP dissector on the sealed bytes
    as_coap = ("-d", f"udp.port=={port},coap")
    total = wireshark.frame_count(pcap, *as_coap, plugin=False)
    before = wireshark.malformed(pcap, *as_coap, plugin=False)

    rows = await asyncio.to_thread(wireshark.assert_reads_secure_capture, pcap, keylog)
    kinds = {r["cgw.kind"] for r in rows}
    assert {"1", "2", "3", "4", "5"} <= kinds  # IK1, IK2, XX1, XX2, XX3
    routes = [r["cgw.route"] for r in rows if r["cgw.route"]]
    send = f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/"
    # the second send names the room by its handle: resolved from the first
    assert sum(route.startswith(send) for route in routes) == 4, routes
    assert all("<room" not in route for route in routes), routes
    assert f"/_matrix/client/v3/rooms/{ROOM}/messages" in routes
    encrypted = [r for r in routes if "/send/m.room.encrypted/" in r]
    assert len(encrypted) == 4 and all("; payload: the ciphertext)" in r for r in encrypted), encrypted
    assert [r.split("(body template #")[1].split(";")[0] for r in encrypted] == ["2 defined", "2 handle"] * 2
    assert "/_matrix/client/v3/profile/@a:hs/displayname" in routes
    assert "/_matrix/client/v3/createRoom" in routes
    assert {r["cgw.method"] for r in rows if r["cgw.route"]} == {"PUT", "POST", "GET"}
    assert len({r["cgw.session"] for r in rows if r["cgw.session"]}) == 2
    # the port preference works as well as the heuristic
    assert wireshark.frames(pcap, *ports, keylog=keylog) == rows
    # without the plugin, tshark parses the sealed bytes as CoAP options
    assert total == len(rows) and len(before) > len(rows) // 2
    print(f"gateway capture: {total} frames, malformed {len(before)} as CoAP, 0 with the dissector; "
          f"{len(routes)} requests routed; {time.monotonic() - started:.1f} s")


async def test_gateway_capture_without_the_key_log_shows_sealed_frames(tmp_path: Path) -> None:
    wireshark.tshark()
    pcap, _, _ = await record_gateways(tmp_path)
    rows = wireshark.frames(pcap)
    assert wireshark.malformed(pcap) == []
    data = [r for r in rows if r["cgw.kind"] == "0"]
    assert data and not any(yes(r["cgw.decrypted"]) for r in data)
    # no CoAP parsed out of sealed bytes: only the 4-byte empty ACKs are plain CoAP
    assert all(r["_ws.col.Info"].startswith("Sealed ") for r in data if r["coap.code"] == "")
    assert not any(r["cgw.route"] for r in rows)
    handshakes = {r["_ws.col.Info"].split()[0] for r in rows if r["cgw.kind"] not in ("", "0")}
    assert {"IK1", "IK2", "XX1", "XX2", "XX3"} <= handshakes


# ---------------------------------------------------------------- the endpoints in memory


def record_world(tmp_path: Path, rekey_interval: int = 8) -> tuple[Path, Path, int]:
    """Secure endpoints in memory, every datagram written to a pcap: rekeying
    (every 8 counters), piggybacked answers, a NAT rebinding, an XX client."""
    server_addr = ("10.0.0.1", 5683)
    world = World(new_server(rekey_interval=rekey_interval))
    world.server.export_keys = True
    pcap, keylog = tmp_path / "world.pcap", tmp_path / "world.keylog"
    clock = [1_700_000_000 * 10**9]
    addresses = {"A": ("10.0.0.2", 40000), "B": ("10.0.0.3", 40001), "A2": ("10.0.0.2", 40999)}
    current = ["A"]
    with PcapWriter(pcap) as capture:
        def tap(direction: str, data: bytes) -> bool:
            clock[0] += 10**6
            client = addresses[current[0]]
            src, dst = (client, server_addr) if direction == "up" else (server_addr, client)
            capture.write_udp(clock[0], src, dst, data)
            return False

        world.drop = tap
        world.add("A", new_client(rekey_interval=rekey_interval))
        world.client_send("A", get(0x100))  # IK1 with an early GET, answered in IK2
        for i in range(20):  # counters 1 … 20: epochs 0, 1, 2
            world.client_send("A", post(0x101 + i))
        world.move("A", "A2")  # NAT rebinding: the same session from a new port
        current[0] = "A2"
        for i in range(3):
            world.client_send("A2", post(0x200 + i))
        current[0] = "B"
        world.add("B", new_client(server_public=None, seed="xx client", rekey_interval=rekey_interval))
        world.client_send("B", post(0x300))  # XX, the POST in XX3
        world.client_send("B", get(0x301))
    key_log = KeyLog(keylog)
    for event in world.server_events:
        if isinstance(event, SessionKeys):
            key_log.write(event)
    key_log.close()
    return pcap, keylog, len(world.executions)


def test_in_memory_capture_rekeyed_rebound_and_xx(tmp_path: Path) -> None:
    wireshark.tshark()
    pcap, keylog, executed = record_world(tmp_path)
    rows = wireshark.assert_reads_secure_capture(pcap, keylog)
    counters = [r for r in rows if r["cgw.kind"] == "0"]
    # every request and its piggybacked answer, decrypted: A's 23 POSTs, the
    # answer to XX3's POST, B's GET and its answer
    assert len(counters) == 2 * (20 + 3) + 1 + 2
    requests = [r for r in rows if r["cgw.method"]]
    assert len(requests) == executed == 1 + 20 + 3 + 2  # early GET, 23 POSTs, XX3's POST, a GET
    assert {r["_ws.col.Info"].split(":")[0] for r in rows if r["cgw.kind"] == "1"} == {"IK1"}
    assert any(r["_ws.col.Info"].startswith("XX3: ") for r in rows)  # its first request decrypted


def test_in_memory_capture_without_key_log(tmp_path: Path) -> None:
    wireshark.tshark()
    pcap, _, _ = record_world(tmp_path)
    assert wireshark.malformed(pcap) == []
    rows = wireshark.frames(pcap)
    assert all(not yes(r["cgw.decrypted"]) for r in rows if r["cgw.kind"] == "0")
    assert not any(r["coap.code"] for r in rows)  # nothing parsed as CoAP
    # a key log of other sessions decrypts nothing, and says so without errors
    other = tmp_path / "other.keylog"
    other.write_text("COAP_GATEWAY_SESSION eph=" + "00" * 32 + " sid=" + "00" * 8 + " pattern=IK c2s=" + "11" * 32
                     + " s2c=" + "22" * 32 + " rekey=8\n")
    assert wireshark.malformed(pcap, keylog=other) == []
    assert not any(yes(r["cgw.decrypted"]) for r in wireshark.frames(pcap, keylog=other))
    assert hashlib.sha256(pcap.read_bytes()).hexdigest()  # the capture is untouched


def test_reset_and_wake_are_named(tmp_path: Path) -> None:
    """The two datagrams that find a lost session: RESET (a server with no
    session for a frame) and WAKE (a federation responder asking its
    initiator for the session), on the federation port."""
    from coap_gateway.secure import frame as sf

    wireshark.tshark()
    pcap = tmp_path / "kinds.pcap"
    responder, initiator = ("10.0.0.1", 5684), ("10.0.0.2", 5684)
    with PcapWriter(pcap) as capture:
        capture.write_udp(1_700_000_000 * 10**9, responder, initiator, sf.WAKE_DATAGRAM)
        capture.write_udp(1_700_000_001 * 10**9, responder, initiator, sf.build_reset(b"\x40\x00\x12\x34"))
    assert wireshark.malformed(pcap) == []
    infos = [r["_ws.col.Info"] for r in wireshark.frames(pcap)]
    assert infos == ["WAKE: open or check the session", "RESET: no session for the frame 40001234"]
