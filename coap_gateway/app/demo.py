"""``coap-gateway demo``: the reference Matrix send through the codec.

Shows, byte by byte, what the HTTP+JSON request and response become as
plaintext CoAP under each profile.  Until the gateway pair exists this is
what ``make run`` shows.
"""

from __future__ import annotations

import base64
import hashlib

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import UintOption
from rich.console import Console
from rich.table import Table

from ..codec import load_profile, options, payload, profile_names, routes, status

REFERENCE_TARGET = "/_matrix/client/v3/rooms/!AbCdEfGhIjKlMnOp:example.org/send/m.room.message/txn42"
REFERENCE_BODY = b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}'
# a room-v4+ event ID: "$" + URL-safe unpadded base64 of a SHA-256
REFERENCE_EVENT_ID = "$" + base64.urlsafe_b64encode(hashlib.sha256(b"reference").digest()).decode().rstrip("=")
REFERENCE_RESPONSE = ('{"event_id":"%s"}' % REFERENCE_EVENT_ID).encode()


def encode_request(method: str, target: str, body: bytes, profile_name: str) -> tuple[bytes, Message]:
    """Plaintext CoAP bytes of an HTTP request under a profile (empty token, MID 0)."""
    profile = load_profile(profile_name)
    line = routes.http_to_coap(method, target, profile.routes)
    pl = payload.body_to_payload(body, payload.JSON_TYPE if body else None, profile)
    msg = Message(token=b"", code=Code(line.method), uri_path=line.uri_path, uri_query=line.uri_query, payload=pl.payload)
    msg.mtype, msg.mid = Type.CON, 0
    if pl.content_format is not None:
        msg.opt.content_format = pl.content_format
    return msg.encode(), msg


def encode_response(http_status: int, body: bytes, profile_name: str) -> tuple[bytes, Message]:
    """Plaintext CoAP bytes of a piggybacked response (ACK, empty token, MID 0)."""
    profile = load_profile(profile_name)
    st = status.http_to_coap(http_status)
    pl = payload.body_to_payload(body, payload.JSON_TYPE, profile)
    msg = Message(token=b"", code=Code(st.code), payload=pl.payload)
    msg.mtype, msg.mid = Type.ACK, 0
    if pl.content_format is not None:
        msg.opt.content_format = pl.content_format
    if st.http_status is not None:
        msg.opt.add_option(UintOption(options.HTTP_STATUS, st.http_status))
    return msg.encode(), msg


def run_demo(console: Console | None = None) -> None:
    console = console or Console()
    http_request = len(f"PUT {REFERENCE_TARGET} HTTP/1.1\r\n".encode()) + len(REFERENCE_BODY)
    console.print(f"[bold]Reference send[/]: PUT {REFERENCE_TARGET}")
    console.print(f"  body {REFERENCE_BODY.decode()}  ({len(REFERENCE_BODY)} B JSON)")
    console.print(f"  response {REFERENCE_RESPONSE.decode()}  ({len(REFERENCE_RESPONSE)} B JSON)\n")

    table = Table(title="Plaintext CoAP, no IP/UDP headers, no encryption")
    for col in ("profile", "request B", "of which options", "of which payload", "response B", "total B"):
        table.add_column(col, justify="right" if col != "profile" else "left")
    for name in profile_names():
        req, req_msg = encode_request("PUT", REFERENCE_TARGET, REFERENCE_BODY, name)
        resp, _ = encode_response(200, REFERENCE_RESPONSE, name)
        opt_len = len(req_msg.opt.encode())
        table.add_row(name, str(len(req)), str(opt_len), str(len(req_msg.payload)), str(len(resp)), str(len(req) + len(resp)))
    console.print(table)
    req, _ = encode_request("PUT", REFERENCE_TARGET, REFERENCE_BODY, profile_names()[-1])
    console.print(f"\nrequest bytes ({profile_names()[-1]}): [cyan]{req.hex()}[/]")
    console.print(f"HTTP/1.1 request line + JSON body alone: {http_request} B, before headers, TLS, TCP and IP.")
    console.print("\nTry: coap-gateway codec route PUT '/_matrix/client/v3/sync?timeout=30000'  ·  "
                  "echo '{\"body\":\"hi\"}' | coap-gateway codec encode")
