"""Refresh tokens (``"refresh_token": true`` at login, ``POST /refresh``)
through the gateways: every answer as Synapse gives it, and no access token
ever crosses the link upward — the login's and each refreshed one are bound
by the server gateway where they are issued (docs/protocol.md §8a)."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from tests.helpers.devices import FAST, Device

pytestmark = pytest.mark.synapse


async def _refreshing(base: str, name: str) -> list[tuple]:
    """Log in with a refresh token, use it, refresh twice, use each token."""
    seen: list[tuple] = []
    async with aiohttp.ClientSession() as http:
        async def whoami(token: str) -> tuple:
            async with http.get(f"{base}/_matrix/client/v3/account/whoami",
                                headers={"Authorization": f"Bearer {token}"}) as answer:
                return answer.status, str((await answer.json()).get("user_id")).startswith(f"@{name}:")

        async with http.post(f"{base}/_matrix/client/v3/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
                "password": "pw-" + name, "refresh_token": True}) as answer:
            login = await answer.json()
            seen.append(("login", answer.status, "refresh_token" in login, "expires_in_ms" in login))
        tokens, refresh = [login["access_token"]], login["refresh_token"]
        seen.append(("whoami", *await whoami(tokens[-1])))
        for _ in range(2):
            async with http.post(f"{base}/_matrix/client/v3/refresh", json={"refresh_token": refresh}) as answer:
                fresh = await answer.json()
                seen.append(("refresh", answer.status, sorted(fresh)))
            tokens.append(fresh["access_token"])
            refresh = fresh["refresh_token"]
            seen.append(("whoami new", *await whoami(tokens[-1])))
        # a refresh token used once is spent
        async with http.post(f"{base}/_matrix/client/v3/refresh", json={"refresh_token": login["refresh_token"]}) as answer:
            seen.append(("spent", answer.status, (await answer.json()).get("errcode")))
    assert len(set(tokens)) == 3
    return seen


async def test_refresh_tokens_through_the_gateways_as_against_synapse(synapse, server_key):
    names = [f"rf{uuid.uuid4().hex[:6]}" for _ in range(2)]
    async with aiohttp.ClientSession() as http:
        for name in names:
            async with http.post(f"{synapse.base_url}/_matrix/client/v3/register", json={
                    "username": name, "password": "pw-" + name, "auth": {"type": "m.login.dummy"},
                    "inhibit_login": True}) as answer:
                assert answer.status == 200
    direct = await _refreshing(synapse.base_url, names[0])
    async with Device(FAST, synapse, server_key, 1) as device:  # secure, lb4, sync push: the defaults
        through = await _refreshing(device.client.base_url, names[1])
        counters = device.client.gateway.binding.counters
        assert counters.token_sent == 0 and counters.token_rebinds == 0
    assert direct == through
    assert all(s[1:] == (200, True) for s in through if s[0].startswith("whoami"))
    assert through[0] == ("login", 200, True, True) and through[-1][:2] == ("spent", 401)
