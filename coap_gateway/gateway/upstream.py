"""The one HTTP client to the homeserver (the server gateway's upstream).

Every request the server gateway forwards, and every long-poll sync push runs
for a device, goes through ``Upstream.fetch``: one place that builds the URL
(always the configured homeserver: the target is a path, never a host — not
an open proxy), reads the answer to the end but never past a cap, and turns
"unreachable", "too slow" and "too large" into one exception the callers
answer with a Matrix error.
"""

from __future__ import annotations

import logging

import aiohttp
from yarl import URL

from ..codec import MAX_RESPONSE_BODY, HttpResponse, matrix_error

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """The homeserver gave no usable answer; ``kind`` says why."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind

    def as_response(self) -> HttpResponse:
        """What the device is told instead of an answer."""
        if self.kind == self.TIMEOUT:
            return matrix_error(504, "M_UNKNOWN", "the homeserver did not answer in time")
        if self.kind == self.TOO_LARGE:
            return matrix_error(502, "M_UNKNOWN", "homeserver response too large for the gateway")
        return matrix_error(502, "M_UNKNOWN", "the homeserver is unreachable from the gateway")


class Upstream:
    """HTTP to one homeserver at ``base`` (scheme, host and port; no path)."""

    def __init__(self, base: str, *, timeout: float = 300.0):
        self.base = base.rstrip("/")
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout),
                                                  auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, method: str, target: str, *, body: bytes = b"", content_type: str | None = None,
                    token: str | None = None, max_body: int = MAX_RESPONSE_BODY,
                    timeout: float | None = None) -> HttpResponse:
        """The homeserver's answer to ``method target`` (a path and query,
        exactly as the client sent it); ``UpstreamError`` when there is none
        or it is longer than ``max_body``."""
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        # the target is a path (routes guarantees it): the host is always ours
        url = URL(self.base + target, encoded=True)
        request_timeout = aiohttp.ClientTimeout(total=timeout) if timeout is not None else None
        try:
            async with self.session.request(method, url, data=body or None, headers=headers,
                                            allow_redirects=False, timeout=request_timeout) as answer:
                # read to the end, never past the cap (content.read(n) may stop early)
                data = bytearray()
                async for chunk in answer.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > max_body:
                        raise UpstreamError(UpstreamError.TOO_LARGE, f"more than {max_body} bytes")
                # Synapse says "application/json"; any other type is kept exactly as sent
                return HttpResponse(answer.status, bytes(data), answer.headers.get("Content-Type"),
                                    [(k, v) for k, v in answer.headers.items()])
        except aiohttp.ClientError as exc:
            log.warning("homeserver unreachable: %s", exc)
            raise UpstreamError(UpstreamError.UNREACHABLE, type(exc).__name__) from exc
        except TimeoutError as exc:
            raise UpstreamError(UpstreamError.TIMEOUT) from exc


__all__ = ["Upstream", "UpstreamError"]
