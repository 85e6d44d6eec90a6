"""RecordingProxy: byte-exact forwarding, and records that are safe and faithful."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from coap_gateway.tools.dictbuild.recorder import MAX_RECORDED_BODY, RecordingProxy
from coap_gateway.tools.synapse_process import LocalSynapse

pytestmark = pytest.mark.synapse

RECORD_KEYS = {
    "method", "raw_path", "request_content_type", "request_body", "status",
    "response_content_type", "retry_after", "response_body",
}


@pytest.fixture
async def proxy(synapse: LocalSynapse, tmp_path: Path) -> AsyncIterator[RecordingProxy]:
    recording = RecordingProxy(synapse.base_url, jsonl_path=tmp_path / "records.jsonl")
    await recording.start()
    try:
        yield recording
    finally:
        await recording.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def register(session: aiohttp.ClientSession, base_url: str) -> str:
    body = {"username": f"rec-{os.urandom(3).hex()}", "password": "pw", "auth": {"type": "m.login.dummy"}}
    async with session.post(f"{base_url}/_matrix/client/v3/register", json=body) as response:
        assert response.status == 200
        return (await response.json())["access_token"]


async def test_raw_percent_encoded_path_reaches_synapse_unchanged(
    proxy: RecordingProxy, session: aiohttp.ClientSession
) -> None:
    token = await register(session, proxy.base_url)
    raw_path = "/_matrix/client/v3/rooms/%21x%3Alocalhost/state"
    # encoded=True: aiohttp would otherwise turn %21 and %3A back into ! and :
    url = URL(proxy.base_url + raw_path, encoded=True)
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        body = await response.json()
    # Synapse parsed the room ID out of the path: a Matrix error about that room.
    assert response.status in (403, 404)
    assert body["errcode"] in ("M_FORBIDDEN", "M_NOT_FOUND")
    record = proxy.records[-1]
    assert record["raw_path"] == raw_path
    assert record["status"] == response.status
    assert record["response_body"] == body


async def test_forwarded_request_line_is_byte_exact(
    synapse: LocalSynapse, session: aiohttp.ClientSession
) -> None:
    # A second proxy as the first one's upstream records what was forwarded.
    async with RecordingProxy(synapse.base_url) as inner, RecordingProxy(inner.base_url) as outer:
        token = await register(session, outer.base_url)
        raw_path = (
            "/_matrix/client/v3/rooms/%21a%2Fb%3Alocalhost/messages"
            "?dir=b&limit=1&filter=%7B%22a%22%3A1%7D&x=a+b%20c"
        )
        url = URL(outer.base_url + raw_path, encoded=True)
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status in (403, 404)
        assert outer.records[-1]["raw_path"] == raw_path
        assert inner.records[-1]["raw_path"] == raw_path
        assert inner.records[-1]["response_body"] == outer.records[-1]["response_body"]



async def test_records_never_contain_the_authorization_header(
    proxy: RecordingProxy, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token = await register(session, proxy.base_url)
    async with session.get(
        f"{proxy.base_url}/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 200
    whoami = proxy.records[-1]
    assert set(whoami) == RECORD_KEYS
    assert token not in json.dumps(whoami)
    assert "authorization" not in json.dumps(proxy.records).lower()
    # The JSONL file holds the same records.
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == proxy.records


async def test_non_json_bodies_are_recorded_as_base64(
    proxy: RecordingProxy, session: aiohttp.ClientSession
) -> None:
    token = await register(session, proxy.base_url)
    auth = {"Authorization": f"Bearer {token}"}
    blob = b"\x89PNG\r\n\x1a\n" + os.urandom(64)
    async with session.post(
        f"{proxy.base_url}/_matrix/media/v3/upload?filename=x.png",
        data=blob,
        headers={**auth, "Content-Type": "image/png"},
    ) as response:
        assert response.status == 200
        content_uri = (await response.json())["content_uri"]
    upload = proxy.records[-1]
    assert upload["request_content_type"] == "image/png"
    assert base64.b64decode(upload["request_body"]["$base64"]) == blob
    assert upload["response_body"]["content_uri"] == content_uri

    media_path = content_uri.removeprefix("mxc://")
    async with session.get(f"{proxy.base_url}/_matrix/client/v1/media/download/{media_path}", headers=auth) as response:
        assert await response.read() == blob
    assert base64.b64decode(proxy.records[-1]["response_body"]["$base64"]) == blob

    # A broken JSON body is kept verbatim (and Synapse says M_NOT_JSON).
    broken = b'{"msgtype": "m.text", "bo'
    async with session.put(
        f"{proxy.base_url}/_matrix/client/v3/rooms/%21x%3Alocalhost/send/m.room.message/t1",
        data=broken,
        headers={**auth, "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
    record = proxy.records[-1]
    assert base64.b64decode(record["request_body"]["$base64"]) == broken
    assert record["response_body"]["errcode"] == "M_NOT_JSON"

    # Empty bodies are null.
    async with session.get(f"{proxy.base_url}/_matrix/client/versions") as response:
        assert response.status == 200
    assert proxy.records[-1]["request_body"] is None


async def test_oversized_bodies_are_not_recorded(
    proxy: RecordingProxy, session: aiohttp.ClientSession
) -> None:
    token = await register(session, proxy.base_url)
    blob = bytes(MAX_RECORDED_BODY + 1)
    async with session.post(
        f"{proxy.base_url}/_matrix/media/v3/upload",
        data=blob,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
    ) as response:
        assert response.status == 200
    record = proxy.records[-1]
    assert record["truncated"] is True
    assert record["request_body"] is None
    assert "content_uri" in record["response_body"]
