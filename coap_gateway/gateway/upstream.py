"""The one HTTP client to the homeserver (the server gateway's upstream).

Every request the server gateway forwards, and every long-poll sync push runs
for a device, goes through ``Upstream.fetch``: one place that builds the URL
(always the configured homeserver: the target is a path, never a host — not
an open proxy), reads the answer to the end but never past a cap, and turns
"unreachable", "too slow", "too large" and "encoded" into one exception the callers
answer with a Matrix error.

It asks for the body as it is (``Accept-Encoding: identity``): the gateway
transcodes JSON itself and cannot read a gzip stream.  aiohttp would offer
gzip and deflate by default, and a Synapse listener with ``compress: true``
then gzips every JSON answer, which the device would get as undecodable
bytes labelled JSON.  An answer that comes encoded anyway (a proxy in
between) is refused, never passed on.  It keeps no cookies: one jar shared by
every account behind the gateway would hand one user's cookies to the next.

Connections come from three pools, never shared.  A long-poll holds its
connection for as long as the homeserver holds the request (30 s and more);
with one pool, a few hundred sync-push observations took every connection
(aiohttp's default is 100) and every other request — ``/versions``, a send —
waited behind them for a minute while the homeserver idled:

* **long-polls** (``fetch(long_poll=True)``, sync push's loops): the caller
  bounds how many run at once — one per observation, and the global limit
  is checked before an observation starts — and says so
  (``reserve_long_polls``), so this pool is exactly that large: a loop never
  waits for a connection, and never takes one from anybody else;
* **plain long-polls**: any other request that asks the homeserver to hold
  it (``timeout``/``timeout_ms`` > 0 in the query of a GET — a ``/sync``
  forwarded as it came, without sync push or over its limits — or of a
  sliding sync's POST, Element X's only sync): bounded; when it is full the
  next one waits, among long-polls only;
* **ordinary requests**: everything else, bounded too.  Nothing held long
  gets in here, so a short request waits for a connection only when that
  many short requests run at once.

A pool is shared by every device, and a request the homeserver holds (a
``publicRooms`` waiting on federation) holds its connection: one device
with 120 such requests took all 100 ordinary connections, and everybody
else's ``/versions`` waited.  So the server gateway gives each device a
share of each pool it forwards to (``PoolShares``), and bounds how many
requests may wait for a connection in all.
"""

from __future__ import annotations

import logging
import re
import resource
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .. import __version__
from ..codec import MAX_RESPONSE_BODY, HttpResponse, matrix_error
from ..push import SyncPushServerConfig

log = logging.getLogger(__name__)

#: the pools (see the module docstring)
ORDINARY = "ordinary"
LONG_POLL = "long_poll"
PLAIN_LONG_POLL = "plain_long_poll"

#: query parameters with which a Matrix GET asks the homeserver to hold it
#: (/sync and /events: timeout; media downloads of pending uploads: timeout_ms)
_HOLD_PARAMETERS = ("timeout", "timeout_ms")

#: on every request upstream: the body as it is, and who asks (the homeserver
#: shows it as each device's last user agent)
UPSTREAM_HEADERS = {"Accept-Encoding": "identity", "User-Agent": f"coap-gateway/{__version__}"}


#: what a request target must not hold: controls, space, DEL, a fragment (one
#: regex search, not a Python loop per character: it runs on every request)
_NOT_IN_TARGET = re.compile(r"[\x00-\x20#\x7f]")


class UpstreamError(Exception):
    """The homeserver gave no usable answer; ``kind`` says why."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    ENCODED = "encoded"  # a content coding (gzip…) although identity was asked for
    TARGET = "target"  # not a request target (a mapping let a space or a control through)

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind

    def as_response(self) -> HttpResponse:
        """What the device is told instead of an answer."""
        if self.kind == self.TIMEOUT:
            return matrix_error(504, "M_UNKNOWN", "the homeserver did not answer in time")
        if self.kind == self.TOO_LARGE:
            return matrix_error(502, "M_UNKNOWN", "homeserver response too large for the gateway")
        if self.kind == self.TARGET:
            return matrix_error(400, "M_UNRECOGNIZED", "the request's path cannot be sent to the homeserver")
        if self.kind == self.ENCODED:
            return matrix_error(502, "M_UNKNOWN", "the homeserver's answer is content-encoded; the gateway "
                                                  "asks for identity and does not decode it")
        return matrix_error(502, "M_UNKNOWN", "the homeserver is unreachable from the gateway")


def may_be_held(method: str, target: str) -> bool:
    """Whether the homeserver may hold this request before answering: a GET
    with a nonzero ``timeout`` (or ``timeout_ms``) in its query, or a POST
    to a client ``…/sync`` with one (sliding sync, MSC3575/MSC4186: the one
    POST that long-polls; ``keys/query``'s timeout bounds a wait for other
    servers, not for news)."""
    path, sep, query = target.partition("?")
    if not sep:
        return False
    if method != "GET" and not (method == "POST" and path.startswith("/_matrix/client/")
                                and path.endswith("/sync")):
        return False
    for parameter in query.split("&"):
        name, _, value = parameter.partition("=")
        # digits only, and not all zeros (no int(): a 5000-digit value is fine here)
        if name in _HOLD_PARAMETERS and value.isascii() and value.isdigit() and value.strip("0"):
            return True
    return False


def pool_of(method: str, target: str, long_poll: bool = False) -> str:
    """Which pool a request takes its connection from."""
    if long_poll:
        return LONG_POLL
    return PLAIN_LONG_POLL if may_be_held(method, target) else ORDINARY


class PoolShares:
    """The forwarded requests each device has in each pool, and in all (sans-I/O).

    A device may have ``per_device`` requests in a pool at once; a pool takes
    ``connections[pool] + waiting`` requests in all — beyond its connections
    they wait in aiohttp's queue, which bounds nothing by itself."""

    #: why ``take`` refused
    DEVICE = "device"
    POOL = "pool"

    def __init__(self, per_device: int, waiting: int, connections: Mapping[str, int] | None = None):
        if per_device < 1 or waiting < 0:
            raise ValueError("a device's share must be positive, the waiting room not negative")
        self.per_device = per_device
        self.waiting = waiting
        self.connections = dict(connections or {})
        self._in_pool: Counter[str] = Counter()
        self._by_device: Counter[tuple[str, Hashable]] = Counter()

    def take(self, pool: str, device: Hashable) -> str | None:
        """Take a place for one request of ``device`` in ``pool``; None when
        taken, else why not (``DEVICE``: its share is full, ``POOL``: so is the pool)."""
        if self._by_device[(pool, device)] >= self.per_device:
            return self.DEVICE
        if self._in_pool[pool] >= self.connections.get(pool, 0) + self.waiting:
            return self.POOL
        self._by_device[(pool, device)] += 1
        self._in_pool[pool] += 1
        return None

    def give_back(self, pool: str, device: Hashable) -> None:
        """The request ``take`` placed has its answer (or none)."""
        for counter, key in ((self._by_device, (pool, device)), (self._in_pool, pool)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]  # only what is in flight is remembered

    def held(self, pool: str, device: Hashable | None = None) -> int:
        """Requests in ``pool`` now: the device's, or everybody's."""
        return self._in_pool[pool] if device is None else self._by_device[(pool, device)]


class Upstream:
    """HTTP to one homeserver at ``base`` (scheme, host and port; no path).

    ``max_connections``: ordinary requests at once; ``max_long_polls``:
    ``long_poll`` requests (set by their caller, ``reserve_long_polls``);
    ``max_plain_long_polls``: other requests the homeserver may hold."""

    def __init__(self, base: str, *, timeout: float = 300.0, max_connections: int = 100,
                 max_long_polls: int = SyncPushServerConfig.max_observations, max_plain_long_polls: int = 256):
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.limits = {ORDINARY: max_connections, LONG_POLL: max_long_polls, PLAIN_LONG_POLL: max_plain_long_polls}
        if min(self.limits.values()) < 1:
            raise ValueError("upstream connection limits must be positive")
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def reserve_long_polls(self, count: int) -> None:
        """``long_poll`` requests will never be more than ``count`` at once:
        their pool holds that many connections.  Before the first request."""
        if count < 1:
            raise ValueError("long-polls reserved must be positive")
        if LONG_POLL in self._sessions:
            raise RuntimeError("the long-poll pool is already in use")
        self.limits[LONG_POLL] = count

    def pool(self, method: str, target: str, long_poll: bool = False) -> str:
        """Which pool a request takes its connection from."""
        return pool_of(method, target, long_poll)

    def session(self, pool: str = ORDINARY) -> aiohttp.ClientSession:
        session = self._sessions.get(pool)
        if session is None:
            if not self._sessions:
                _check_descriptors(sum(self.limits.values()))
            # limit_per_host=0: the one host is the homeserver, the pool limit is the bound
            connector = aiohttp.TCPConnector(limit=self.limits[pool], limit_per_host=0)
            session = self._sessions[pool] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout), auto_decompress=False,
                headers=UPSTREAM_HEADERS, cookie_jar=aiohttp.DummyCookieJar())
        return session

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    async def fetch(self, method: str, target: str, *, body: bytes = b"", content_type: str | None = None,
                    token: str | None = None, max_body: int = MAX_RESPONSE_BODY,
                    timeout: float | None = None, long_poll: bool = False,
                    authorizations: Sequence[str] = (), forwarded_for: str | None = None) -> HttpResponse:
        """The homeserver's answer to ``method target`` (a path and query,
        exactly as the client sent it); ``UpstreamError`` when there is none
        or it is longer than ``max_body``.  ``long_poll``: one of the
        requests ``reserve_long_polls`` counted (sync push's loops).
        ``authorizations``: Authorization headers sent verbatim, in order
        (federation's X-Matrix), instead of a bearer ``token``.
        ``forwarded_for``: the device's IP address, as ``X-Forwarded-For``
        (a homeserver whose listener has ``x_forwarded`` then limits and
        records each device by its own address, not all by the gateway's)."""
        headers: CIMultiDict[str] = CIMultiDict()
        if content_type is not None:
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        for value in authorizations:
            headers.add("Authorization", value)
        if forwarded_for is not None:
            headers["X-Forwarded-For"] = forwarded_for
        # the target is a path (routes guarantees it): the host is always ours.  Checked here
        # too: yarl drops CR/LF but would put a space or a '#' into the request line as it is
        if not target.startswith("/") or _NOT_IN_TARGET.search(target):
            raise UpstreamError(UpstreamError.TARGET, repr(target[:80]))
        url = URL(self.base + target, encoded=True)
        request_timeout = aiohttp.ClientTimeout(total=timeout) if timeout is not None else None
        session = self.session(self.pool(method, target, long_poll))
        try:
            async with session.request(method, url, data=body or None, headers=headers,
                                       allow_redirects=False, timeout=request_timeout) as answer:
                # read to the end, never past the cap (content.read(n) may stop early)
                data = bytearray()
                async for chunk in answer.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > max_body:
                        raise UpstreamError(UpstreamError.TOO_LARGE, f"more than {max_body} bytes")
                coding = answer.headers.get("Content-Encoding", "identity").strip().lower()
                if data and coding != "identity":
                    log.warning("the homeserver answered %s %s with Content-Encoding %r although identity was "
                                "asked for: refused", method, target.partition("?")[0], coding)
                    raise UpstreamError(UpstreamError.ENCODED, coding)
                # Synapse says "application/json"; any other type is kept exactly as sent
                return HttpResponse(answer.status, bytes(data), answer.headers.get("Content-Type"),
                                    [(k, v) for k, v in answer.headers.items()])
        except aiohttp.ClientError as exc:
            log.warning("homeserver unreachable: %s", exc)
            raise UpstreamError(UpstreamError.UNREACHABLE, type(exc).__name__) from exc
        except TimeoutError as exc:
            raise UpstreamError(UpstreamError.TIMEOUT) from exc


def _check_descriptors(connections: int) -> None:
    """Warn when the pools could need more descriptors than the process may open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < connections + 64:
        log.warning("up to %d homeserver connections, but only %d open files allowed: raise the limit "
                    "(ulimit -n, LimitNOFILE=)", connections, soft)


__all__ = ["LONG_POLL", "ORDINARY", "PLAIN_LONG_POLL", "PoolShares", "Upstream", "UpstreamError", "may_be_held",
           "pool_of"]
