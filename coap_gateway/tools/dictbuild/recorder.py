"""A recording reverse proxy: client → proxy → homeserver, one record per exchange.

The proxy forwards the request line untouched: the raw path and query as the
client sent them (``request.raw_path``), re-sent with ``yarl.URL(...,
encoded=True)`` so neither aiohttp nor yarl re-quotes them.  The recorded
``raw_path`` is therefore exactly what a gateway in the same position sees.

Record fields::

    method, raw_path, request_content_type, request_body,
    status, response_content_type, retry_after, response_body
    [truncated: true]   only when a body exceeded MAX_RECORDED_BODY

A body is recorded as parsed JSON when its Content-Type says JSON and it
parses, as ``{"$base64": "..."}`` otherwise, and as null when empty (or when
too large, with ``truncated``).  The Authorization header is forwarded but
never recorded; ``access_token`` query parameters are recorded as sent, since
they are part of the raw path a gateway has to carry.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

__all__ = ["MAX_RECORDED_BODY", "RecordingProxy", "encode_body"]

MAX_RECORDED_BODY = 1024 * 1024

# Hop-by-hop headers, and ones aiohttp computes itself for the new hop.
_NOT_FORWARDED = frozenset(
    {
        "host", "connection", "keep-alive", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length", "accept-encoding",
    }
)
# Response headers worth handing back to the client.
_RETURNED = ("Content-Type", "Retry-After", "Content-Disposition", "Cache-Control", "Location")


def _is_json_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def encode_body(body: bytes, content_type: str | None) -> Any:
    """JSON value, ``{"$base64": ...}`` or None (empty), per the record rules."""
    if not body:
        return None
    if _is_json_type(content_type):
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            pass  # a deliberately broken body (M_NOT_JSON) is kept verbatim
    return {"$base64": base64.b64encode(body).decode("ascii")}


class RecordingProxy:
    """aiohttp reverse proxy to ``upstream_base_url`` that records exchanges."""

    def __init__(
        self,
        upstream_base_url: str,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        jsonl_path: Path | None = None,
    ) -> None:
        self.upstream_base_url = upstream_base_url.rstrip("/")
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.jsonl_path = jsonl_path
        self.records: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._jsonl: IO[str] | None = None

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("RecordingProxy has no address before start()")
        return f"http://{self.listen_host}:{self.listen_port}"

    async def start(self) -> None:
        # Media uploads may exceed aiohttp's 1 MiB default request limit.
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
        )
        if self.jsonl_path is not None:
            self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen_host, self.listen_port)
        await site.start()
        self.listen_port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    async def __aenter__(self) -> RecordingProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        request_body = await request.read()
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
        )
        url = URL(self.upstream_base_url + request.raw_path, encoded=True)
        try:
            async with self._session.request(
                request.method,
                url,
                data=request_body or None,
                headers=headers,
                allow_redirects=False,
                # Only what the client sent: no User-Agent/Accept of our own.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            ) as upstream:
                response_body = await upstream.read()
                status = upstream.status
                returned = CIMultiDict(
                    (name, upstream.headers[name]) for name in _RETURNED if name in upstream.headers
                )
        except aiohttp.ClientError as exc:
            # Not an exchange with the homeserver, so nothing is recorded.
            return web.Response(status=502, text=f"upstream failed: {exc!r}")

        self._record(request, request_body, status, returned, response_body)
        return web.Response(status=status, body=response_body, headers=returned)

    def _record(
        self,
        request: web.Request,
        request_body: bytes,
        status: int,
        response_headers: CIMultiDict[str],
        response_body: bytes,
    ) -> None:
        request_type = request.headers.get("Content-Type")
        response_type = response_headers.get("Content-Type")
        record: dict[str, Any] = {
            "method": request.method,
            "raw_path": request.raw_path,
            "request_content_type": request_type,
            "request_body": None,
            "status": status,
            "response_content_type": response_type,
            "retry_after": response_headers.get("Retry-After"),
            "response_body": None,
        }
        truncated = False
        if len(request_body) > MAX_RECORDED_BODY:
            truncated = True
        else:
            record["request_body"] = encode_body(request_body, request_type)
        if len(response_body) > MAX_RECORDED_BODY:
            truncated = True
        else:
            record["response_body"] = encode_body(response_body, response_type)
        if truncated:
            record["truncated"] = True

        self.records.append(record)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            self._jsonl.flush()
