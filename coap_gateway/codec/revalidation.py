"""Revalidation: a request whose answer has not changed gets it back as a few
bytes (CoAP ETag, RFC 7252 §5.10.6; 2.03 Valid, §5.9.1.3).

Clients ask some things again at every start — js-sdk and Element: /versions
(1.5 kB of JSON, ~416 B on the link), /capabilities, /pushrules — and, in
encrypted rooms, the same ``keys/query`` again and again (a POST that only
reads: four times in a row as js-sdk sets up one room).  The answers rarely
change.  The server gateway tags its answer to such a request with an ETag, a
digest of the answer as it would cross the link; a client gateway that holds
the answer to the same request (method, target, body and token) sends that
ETag with it again, and the server answers 2.03 Valid, with no payload, when
what it would send has the same digest.  The homeserver is asked every time,
so nothing stale is ever served: only the link is spared.

Sans-I/O: the digest, the server's choice of routes, the client's bounded
store.  The ETag is opaque to the client, so a server may change how it
computes it; ETag is an elective option, so a peer that does not know this
ignores it and gets (or gives) the whole answer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from .mapping import HttpRequest, HttpResponse

#: 8 bytes, the most CoAP allows: a changed answer has a 2^-64 chance of
#: passing for the old one (4 bytes would save 8 B per round trip, at 2^-32)
ETAG_BYTES = 8

#: GETs worth tagging: asked at every client start, rarely different.  The
#: server's choice alone (the client keeps whatever comes tagged); each tag
#: costs 9 B the first time, so one-off GETs are not tagged.
TAGGED_ROUTES = frozenset({
    "client.versions",
    "client.capabilities", "client.r0.capabilities",
    "client.pushrules", "client.r0.pushrules", "client.pushrules_global",
    "client.login", "client.r0.login",  # GET: the login flows
    "client.profile", "client.r0.profile",
    "client.room_keys_version", "client.r0.room_keys_version", "client.unstable.room_keys_version",
    "client.thirdparty_protocols",
    "client.filter_get", "client.r0.filter_get",
    "client.members", "client.r0.members", "client.joined_members", "client.r0.joined_members",
})

#: POSTs that only read (so a held answer stays right until it changes)
TAGGED_READS = frozenset({"client.keys_query", "client.r0.keys_query"})

#: a request body longer than this is not a key of the store
MAX_KEYED_BODY = 4096


def etag(code: int, options: bytes, payload: bytes) -> bytes:
    """The digest of a CoAP answer as it would cross the link (its code, its
    encoded options without the ETag, its payload): what the client rebuilds
    the HTTP answer from — the homeserver's other headers (Date…) never cross,
    so they must not change it."""
    h = hashlib.blake2b(digest_size=ETAG_BYTES, person=b"coap-gw-etag")
    h.update(bytes([code]))
    h.update(len(options).to_bytes(8, "big"))
    h.update(options)
    h.update(payload)
    return h.digest()


def tagged(method: str, route: str | None, status: int) -> bool:
    """Whether the server tags its answer: a 200 to a GET of a chosen route,
    or to a POST that only reads."""
    return status == 200 and ((method == "GET" and route in TAGGED_ROUTES)
                              or (method == "POST" and route in TAGGED_READS))


_Key = tuple[str, str, bytes, "str | None"]


def _key(request: HttpRequest) -> _Key | None:
    if request.method not in ("GET", "POST") or len(request.body) > MAX_KEYED_BODY:
        return None
    return request.method, request.target, request.body, request.access_token


def _size(key: _Key, response: HttpResponse) -> int:
    """What an entry counts against the store's bytes: the request body it
    is keyed by, and the answer."""
    return len(key[2]) + len(response.body) + sum(len(n) + len(v) for n, v in response.headers)


class AnswerStore:
    """The client gateway's side: the last tagged answer to each request (by
    method, target, body and token, so one account never gets another's),
    least recently
    used dropped first, bounded in entries and bytes.  In memory only: a
    restarted gateway asks once more."""

    def __init__(self, max_entries: int = 32, max_bytes: int = 256 << 10) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[_Key, tuple[bytes, HttpResponse]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, request: HttpRequest) -> tuple[bytes, HttpResponse] | None:
        """The ETag and answer held for ``request``, if any."""
        key = _key(request)
        if key is None or key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, request: HttpRequest, tag: bytes | None, response: HttpResponse) -> None:
        """Keep the answer to ``request`` when it came tagged; an untagged
        answer replaces (drops) what was held."""
        self.drop(request)
        key = _key(request)
        if key is None or tag is None or response.status != 200:
            return
        size = _size(key, response)
        if size > self.max_bytes // 4:
            return  # a few large answers must not push out every small one
        self._entries[key] = (tag, response)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            old_key, (_, old) = self._entries.popitem(last=False)
            self._bytes -= _size(old_key, old)

    def drop(self, request: HttpRequest) -> None:
        key = _key(request)
        if key is not None and key in self._entries:
            self._bytes -= _size(key, self._entries.pop(key)[1])


__all__ = ["ETAG_BYTES", "MAX_KEYED_BODY", "TAGGED_READS", "TAGGED_ROUTES", "AnswerStore", "etag", "tagged"]
