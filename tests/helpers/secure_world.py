"""The secure endpoints exchanging bytes in memory: a server, clients at
addresses, and a CoAP-like application with deduplication (``World``)."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable

from coap_gateway.secure import frame as sf
from coap_gateway.secure.client import ClientEndpoint
from coap_gateway.secure.events import Deliver, Transmit
from coap_gateway.secure.keys import public_from_private as public_key
from coap_gateway.secure.server import ServerEndpoint, ServerLimits

PROFILE, DIGEST = 2, b"\x12\x34"
NOW = 1_700_000_000.0
SERVER_STATIC = hashlib.sha256(b"endpoint server").digest()
SERVER_PUBLIC = public_key(SERVER_STATIC)


def coap(type_: int, code: int, mid: int, token: bytes = b"", rest: bytes = b"") -> bytes:
    return bytes([0x40 | type_ << 4 | len(token), code]) + mid.to_bytes(2, "big") + token + rest


def get(mid: int, token: bytes = b"\x01", path: bytes = b"7") -> bytes:
    return coap(sf.CON, 0x01, mid, token, bytes([0xB0 | len(path)]) + path)


def post(mid: int, token: bytes = b"\x02", body: bytes = b"hello") -> bytes:
    return coap(sf.CON, 0x02, mid, token, b"\xb1" + b"9" + b"\xff" + body)


def new_client(server_public: bytes | None = SERVER_PUBLIC, *, seed: str = "client", **kw) -> ClientEndpoint:
    return ClientEndpoint(hashlib.sha256(seed.encode()).digest(), PROFILE, DIGEST, server_public=server_public, **kw)


def new_server(**limits) -> ServerEndpoint:
    return ServerEndpoint(SERVER_STATIC, {PROFILE: DIGEST, 1: b"\xaa\xbb"}, limits=ServerLimits(**limits))


class World:
    """One server, clients at addresses, a CoAP-like application with deduplication.

    The application answers each CON request with a piggybacked 2.05 (NON with a
    NON 2.05) and keeps answers by (session, MID), as aiocoap's dedup cache does:
    ``executions`` counts requests actually run.
    """

    def __init__(self, server: ServerEndpoint, *, answer_size: int = 8) -> None:
        self.server = server
        self.clients: dict[Hashable, ClientEndpoint] = {}
        self.received: Counter[Hashable] = Counter()  # bytes the server received from an address
        self.sent: Counter[Hashable] = Counter()  # bytes the server sent to an address
        self.executions: list[Deliver] = []
        self.server_events: list = []
        self.client_events: defaultdict[Hashable, list] = defaultdict(list)
        self.cache: dict[tuple[bytes, int], bytes] = {}
        self.answer_size = answer_size
        self.answering = True
        self.drop: Callable[[str, bytes], bool] = lambda direction, data: False
        self.now = NOW

    def add(self, addr: Hashable, client: ClientEndpoint) -> ClientEndpoint:
        self.clients[addr] = client
        return client

    def move(self, old: Hashable, new: Hashable) -> None:
        self.clients[new] = self.clients.pop(old)

    def client_send(self, addr: Hashable, message: bytes) -> list:
        outs = self.clients[addr].send(self.now, message)
        self._client_outputs(addr, outs)
        return outs

    def to_server(self, addr: Hashable, data: bytes) -> list:
        self.received[addr] += len(data)
        outs = self.server.receive(self.now, addr, data)
        self._server_outputs(outs)
        return outs

    def timers(self) -> None:
        self._server_outputs(self.server.handle_timer(self.now))

    def _client_outputs(self, addr: Hashable, outs: list) -> None:
        for out in outs:
            self.client_events[addr].append(out)
            if isinstance(out, Transmit) and not self.drop("up", out.data):
                self.to_server(addr, out.data)

    def _server_outputs(self, outs: list) -> None:
        for out in outs:
            self.server_events.append(out)
            if isinstance(out, Transmit):
                self.sent[out.addr] += len(out.data)
                client = self.clients.get(out.addr)
                if client is not None and not self.drop("down", out.data):
                    self._client_outputs(out.addr, client.receive(self.now, out.data))
            elif isinstance(out, Deliver) and out.counter is not None:
                self._app(out)

    def _app(self, d: Deliver) -> None:
        header = sf.parse_coap_header(d.message)
        if not header.is_request:
            return
        key = (d.session_id, header.message_id)
        answer = self.cache.get(key)
        if answer is None:
            if d.duplicate:
                return
            self.executions.append(d)
            payload = b"\xff" + (b"re:" + d.message[-3:]).ljust(self.answer_size, b".")
            if header.type == sf.CON:
                answer = coap(sf.ACK, 0x45, header.message_id, header.token, payload)
            else:
                answer = coap(sf.NON, 0x45, (header.message_id + 0x8000) & 0xFFFF, header.token, payload)
            self.cache[key] = answer
            if not self.answering:
                return
        self._server_outputs(self.server.send(self.now, d.session_id, answer))

    def answers(self, addr: Hashable) -> list[bytes]:
        return [e.message for e in self.client_events[addr] if isinstance(e, Deliver) and e.counter is not None]


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]
