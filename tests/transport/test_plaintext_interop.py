"""Plaintext mode is standard CoAP: stock aiocoap and tshark read it cleanly."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import aiocoap
import aiocoap.resource as resource
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import UintOption

from coap_gateway.app.demo import REFERENCE_BODY, REFERENCE_RESPONSE, REFERENCE_TARGET
from coap_gateway.codec import options, payload, routes, status
from coap_gateway.codec.profile import load_profile
from coap_gateway.transport.coap import create_link_endpoint
from coap_gateway.transport.links import UdpLink
from meshsim import PcapWriter

PROFILE = load_profile("lb2")
AIOCOAP_CLIENT = str(Path(sys.executable).with_name("aiocoap-client"))


class Hello(resource.Resource):
    async def render_get(self, request):
        return Message(code=Code.CONTENT, payload=b"hello from the gateway", content_format=0)


async def test_stock_aiocoap_client_talks_to_our_endpoint():
    site = resource.Site()
    site.add_resource(["hello"], Hello())
    link = await UdpLink.open("127.0.0.1", 0)
    server = await create_link_endpoint(link, site=site)
    host, port = link.local_address
    proc = await asyncio.create_subprocess_exec(
        AIOCOAP_CLIENT, f"coap://{host}:{port}/hello", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    await server.shutdown()
    assert proc.returncode == 0, err.decode()
    assert b"hello from the gateway" in out


async def test_our_client_talks_to_a_stock_aiocoap_server():
    site = resource.Site()
    site.add_resource(["hello"], Hello())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stock = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    link = await UdpLink.open("127.0.0.1", 0)
    client = await create_link_endpoint(link)
    msg = Message(code=Code.GET, uri_path=["hello"])
    msg.remote = client.remote(("127.0.0.1", port))
    response = await asyncio.wait_for(client.context.request(msg).response, 30)
    assert response.payload == b"hello from the gateway"
    await client.shutdown(), await stock.shutdown()


def gateway_frames() -> list[bytes]:
    """Plaintext frames the gateway really sends: a routed request with a
    deflated CBOR body, its response, a 429 with Max-Age, a 418 with HTTP-Status,
    and a literal path with a long query."""
    frames = []
    line = routes.http_to_coap("PUT", REFERENCE_TARGET, PROFILE.routes)
    pl = payload.body_to_payload(REFERENCE_BODY, payload.JSON_TYPE, PROFILE)
    req = Message(code=Code(line.method), uri_path=line.uri_path, payload=pl.payload)
    frames.append(req)
    rp = payload.body_to_payload(REFERENCE_RESPONSE, payload.JSON_TYPE, PROFILE)
    resp = Message(code=Code.CONTENT, payload=rp.payload)
    if rp.content_format is not None:
        resp.opt.content_format = rp.content_format
    frames.append(resp)
    for http, retry in ((429, "5"), (418, None)):
        st = status.http_to_coap(http, retry)
        m = Message(code=Code(st.code), payload=b'{"errcode":"M_LIMIT_EXCEEDED"}', content_format=options.CF_JSON)
        if st.max_age is not None:
            m.opt.max_age = st.max_age
        if st.http_status is not None:
            m.opt.add_option(UintOption(options.HTTP_STATUS, st.http_status))
        frames.append(m)
    long = routes.http_to_coap("GET", "/_matrix/client/v3/unknown?filter=" + "%7B" * 200 + "&x=1", PROFILE.routes)
    frames.append(Message(code=Code(long.method), uri_path=long.uri_path, uri_query=long.uri_query))
    out = []
    for mid, m in enumerate(frames):
        m.mtype, m.mid, m.token = aiocoap.CON if m.code.is_request() else aiocoap.ACK, mid, b"\x2a"
        out.append(m.encode())
    return out


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (make test installs it as root)")
def test_tshark_decodes_gateway_frames_without_errors(tmp_path):
    pcap = tmp_path / "frames.pcap"
    writer = PcapWriter(pcap)
    frames = gateway_frames()
    for i, frame in enumerate(frames):
        src, dst = (("127.0.0.2", 40000), ("127.0.0.1", 5683)) if i % 2 == 0 else (("127.0.0.1", 5683), ("127.0.0.2", 40000))
        writer.write_udp(1_000_000_000 * (i + 1), src, dst, frame, ip_id=i, ttl=64)
    writer.close()
    decoded = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "coap.code", "-e", "coap.opt.uri_path",
                              "-e", "_ws.expert.severity"], capture_output=True, text=True, timeout=120)
    assert decoded.returncode == 0, decoded.stderr
    lines = decoded.stdout.strip().splitlines()
    assert len(lines) == len(frames)
    assert all(line.split("\t")[0] for line in lines)  # every frame decoded as CoAP with a code
    assert "!" in lines[0]  # the route code as the first Uri-Path
    verbose = subprocess.run(["tshark", "-r", str(pcap), "-V"], capture_output=True, text=True, timeout=120).stdout
    assert "Malformed" not in verbose
    # tshark's expert severities: chat 2097152, note 4194304, warn 6291456, error 8388608
    assert "8388608" not in decoded.stdout
