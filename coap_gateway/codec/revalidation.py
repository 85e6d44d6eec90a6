"""Revalidation: a GET whose answer has not changed crosses the link as a few
bytes (CoAP ETag, RFC 7252 §5.10.6; 2.03 Valid, §5.9.1.3).

Clients ask some things again at every start — js-sdk and Element: /versions
(1.5 kB of JSON, ~416 B on the link), /capabilities, /pushrules — and the
answers rarely change.  The server gateway tags its answer to such a GET with
an ETag, a digest of the answer as it would cross the link; a client gateway that holds the answer
to the same request (method, target and token) sends that ETag with it again,
and the server answers 2.03 Valid, with no payload, when what it would send
has the same digest.  The homeserver is asked every time, so nothing stale is
ever served: only the link is spared.

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
})


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
    """Whether the server tags its answer (a 200 to a GET of a chosen route)."""
    return method == "GET" and route in TAGGED_ROUTES and status == 200


def _key(request: HttpRequest) -> tuple[str, str | None]:
    return request.target, request.access_token


class AnswerStore:
    """The client gateway's side: the last tagged answer to each GET (by
    target and token, so one account never gets another's), least recently
    used dropped first, bounded in entries and bytes.  In memory only: a
    restarted gateway asks once more."""

    def __init__(self, max_entries: int = 32, max_bytes: int = 256 << 10) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str | None], tuple[bytes, HttpResponse]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, request: HttpRequest) -> tuple[bytes, HttpResponse] | None:
        """The ETag and answer held for ``request`` (a GET), if any."""
        if request.method != "GET":
            return None
        entry = self._entries.get(_key(request))
        if entry is not None:
            self._entries.move_to_end(_key(request))
        return entry

    def put(self, request: HttpRequest, tag: bytes | None, response: HttpResponse) -> None:
        """Keep the answer to ``request`` when it came tagged; an untagged
        answer replaces (drops) what was held."""
        self.drop(request)
        if request.method != "GET" or tag is None or response.status != 200:
            return
        size = len(response.body) + sum(len(n) + len(v) for n, v in response.headers)
        if size > self.max_bytes // 4:
            return  # a few large answers must not push out every small one
        self._entries[_key(request)] = (tag, response)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self._bytes -= len(old.body) + sum(len(n) + len(v) for n, v in old.headers)

    def drop(self, request: HttpRequest) -> None:
        entry = self._entries.pop(_key(request), None)
        if entry is not None:
            self._bytes -= len(entry[1].body) + sum(len(n) + len(v) for n, v in entry[1].headers)


__all__ = ["ETAG_BYTES", "TAGGED_ROUTES", "AnswerStore", "etag", "tagged"]
