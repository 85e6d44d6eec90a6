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

import cbor2

from ..errors import CodecError
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
#: the format of a kept store (``AnswerStore.to_cbor``)
STORE_VERSION = 1


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


_Key = tuple[str, str, bytes, "bytes | None"]


def token_digest(token: str | None) -> bytes | None:
    """What names an account in the store: a digest, so that neither the
    store nor its file holds access tokens."""
    if token is None:
        return None
    return hashlib.blake2b(token.encode("utf-8"), digest_size=16, person=b"coap-gw-account").digest()


def _key(request: HttpRequest) -> _Key | None:
    if request.method not in ("GET", "POST") or len(request.body) > MAX_KEYED_BODY:
        return None
    return request.method, request.target, request.body, token_digest(request.access_token)


def _size(key: _Key, response: HttpResponse) -> int:
    """What an entry counts against the store's bytes: the request body it
    is keyed by, and the answer."""
    return len(key[2]) + len(response.body) + sum(len(n) + len(v) for n, v in response.headers)


class AnswerStore:
    """The client gateway's side: the last tagged answer to each request (by
    method, target, body and token — a digest of it —, so one account never
    gets another's),
    least recently
    used dropped first, bounded in entries and bytes.  ``to_cbor`` and
    ``from_cbor`` keep it across restarts (the client gateway writes it
    beside its wire state): a device that reboots asks its client's start-up
    requests again with their ETags, as before the reboot."""

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

    def put(self, request: HttpRequest, tag: bytes | None, response: HttpResponse) -> bool:
        """Keep the answer to ``request`` when it came tagged; an untagged
        answer replaces (drops) what was held.  Whether what is held changed
        (the same answer under the same tag again is no change)."""
        key = _key(request)
        held = self._entries.get(key) if key is not None else None
        if held is not None and tag is not None and held == (tag, response):
            self._entries.move_to_end(key)  # type: ignore[arg-type]
            return False
        dropped = self.drop(request)
        if key is None or tag is None or response.status != 200:
            return dropped
        return self._insert(key, tag, response) or dropped

    def _insert(self, key: _Key, tag: bytes, response: HttpResponse) -> bool:
        size = _size(key, response)
        if size > self.max_bytes // 4:
            return False  # a few large answers must not push out every small one
        self._entries[key] = (tag, response)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            old_key, (_, old) = self._entries.popitem(last=False)
            self._bytes -= _size(old_key, old)
        return True

    def drop(self, request: HttpRequest) -> bool:
        key = _key(request)
        if key is not None and key in self._entries:
            self._bytes -= _size(key, self._entries.pop(key)[1])
            return True
        return False

    def to_cbor(self) -> bytes:
        """The store as a file holds it: ``[1, [entry…]]``, least recently
        used first, each entry ``[method, target, body, token digest or null, ETag,
        status, answer body, content type or null, [[name, value]…]]``."""
        entries = [[k[0], k[1], k[2], k[3], tag, r.status, r.body, r.content_type, [list(h) for h in r.headers]]
                   for k, (tag, r) in self._entries.items()]
        return cbor2.dumps([STORE_VERSION, entries])

    @classmethod
    def from_cbor(cls, data: bytes, max_entries: int = 32, max_bytes: int = 256 << 10) -> AnswerStore:
        """A store from ``to_cbor``'s bytes, within this store's bounds (what
        does not fit is dropped, oldest first); CodecError for anything else."""
        store = cls(max_entries, max_bytes)
        if len(data) > 2 * max_bytes:
            raise CodecError(f"a kept answer store of {len(data)} B")
        try:
            version, entries = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
            raise CodecError(f"kept answer store: {exc}") from exc
        if version != STORE_VERSION or not isinstance(entries, list):
            raise CodecError("kept answer store: not version 1")
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 9):
                raise CodecError("kept answer store: an entry is not 9 items")
            method, target, body, token, tag, status, answer, content_type, headers = entry
            if not (method in ("GET", "POST") and isinstance(target, str) and isinstance(body, bytes)
                    and len(body) <= MAX_KEYED_BODY and (token is None or (isinstance(token, bytes) and len(token) == 16))
                    and isinstance(tag, bytes) and 1 <= len(tag) <= ETAG_BYTES and status == 200
                    and isinstance(answer, bytes) and (content_type is None or isinstance(content_type, str))
                    and isinstance(headers, list)
                    and all(isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                            for h in headers)):
                raise CodecError("kept answer store: a malformed entry")
            response = HttpResponse(200, answer, content_type, [(n, v) for n, v in headers])
            store._insert((method, target, body, token), tag, response)
        return store


__all__ = ["ETAG_BYTES", "MAX_KEYED_BODY", "TAGGED_READS", "TAGGED_ROUTES", "AnswerStore", "etag", "tagged"]
