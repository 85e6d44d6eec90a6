"""A real Synapse homeserver as a child process, for tests and corpus recording.

``LocalSynapse`` generates a SQLite homeserver in a directory on first use,
rewrites its config for loopback-only testing (one plain-HTTP listener, open
registration, rate limits raised far out of the way) and runs it with the
current interpreter.  Running again in the same directory reuses the database,
so accounts survive a restart.

The child is a plain ``subprocess.Popen``, not an asyncio subprocess: the
object carries no event-loop state, so it can be started in one loop (say, a
session-scoped fixture's) and used or stopped from another.

Rate limits: everything is generous by default.  Two ways to get a real 429
``M_LIMIT_EXCEEDED``:

* ``extra_config`` is deep-merged over the generated config last, e.g.
  ``{"rc_presence": {"per_user": {"per_second": 0.1, "burst_count": 1}}}``;
* ``await synapse.override_ratelimit(user_id, 1, 1)`` tightens the message
  rate limit (``rc_message``) of one existing user only, through Synapse's
  admin API.  That is how the recorded corpus gets its 429 on a send.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import hmac
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

__all__ = ["GENEROUS_RATELIMITS", "LocalSynapse", "SynapseStartError", "free_port"]

START_DEADLINE = 60.0
STOP_GRACE = 10.0

# High enough that no scripted workload trips them by accident.
_PLENTY: dict[str, float] = {"per_second": 10_000, "burst_count": 10_000}

GENEROUS_RATELIMITS: dict[str, Any] = {
    "rc_message": _PLENTY,
    "rc_registration": _PLENTY,
    "rc_registration_token_validity": _PLENTY,
    # Every test client comes from 127.0.0.1, so the per-address login limit
    # (default: 5 logins, then one per ~5 minutes) would bite almost at once.
    "rc_login": {"address": _PLENTY, "account": _PLENTY, "failed_attempts": _PLENTY},
    "rc_joins": {"local": _PLENTY, "remote": _PLENTY},
    "rc_joins_per_room": _PLENTY,
    "rc_invites": {"per_room": _PLENTY, "per_user": _PLENTY, "per_issuer": _PLENTY},
    "rc_third_party_invite": _PLENTY,
    "rc_3pid_validation": _PLENTY,
    "rc_media_create": _PLENTY,
    "rc_presence": {"per_user": _PLENTY},
    "rc_room_creation": _PLENTY,
    "rc_user_directory": _PLENTY,
    "rc_profile": _PLENTY,
    "rc_reports": _PLENTY,
    "rc_delayed_event_mgmt": _PLENTY,
    "rc_key_requests": _PLENTY,
    "rc_admin_redaction": _PLENTY,
}


class SynapseStartError(RuntimeError):
    """Synapse exited or never became ready; the message holds its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path.name}: missing)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name}: empty)"


class LocalSynapse:
    """A Synapse homeserver on loopback, living in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        server_name: str = "localhost",
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_config: dict[str, Any] | None = None,
        compress: bool = False,
        x_forwarded: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        #: the listener's ``compress``: gzip every answer to a client that accepts it
        self.compress = compress
        #: the listener's ``x_forwarded``: trust X-Forwarded-For (a listener behind a proxy)
        self.x_forwarded = x_forwarded
        self.server_name = server_name
        self.host = host
        self.port = port
        self.extra_config = extra_config or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._admin_token: str | None = None

    # -- paths and properties ------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.data_dir / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "homeserver.log"

    @property
    def _output_path(self) -> Path:
        # stdout/stderr of the child: import errors and config errors land
        # here, before Synapse's own logging is set up.
        return self.data_dir / "homeserver.out"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("LocalSynapse has no port before start()")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- config --------------------------------------------------------------

    def _generate_config(self) -> None:
        subprocess.run(
            [
                sys.executable, "-m", "synapse.app.homeserver",
                "--server-name", self.server_name,
                "--config-path", str(self.config_path),
                "--generate-config",
                "--report-stats=no",
            ],
            cwd=self.data_dir,
            check=True,
            capture_output=True,
        )

    def _write_log_config(self) -> Path:
        path = self.data_dir / "log_config.yaml"
        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"},
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "plain",
                    "filename": str(self.log_path),
                    "encoding": "utf8",
                },
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _write_config(self) -> None:
        """Rewrite homeserver.yaml for this run (port may differ per run)."""
        assert self.port is not None
        config = yaml.safe_load(self.config_path.read_text())
        config.update(
            {
                "server_name": self.server_name,
                "public_baseurl": f"{self.base_url}/",
                "pid_file": str(self.data_dir / "homeserver.pid"),
                "listeners": [
                    {
                        "port": self.port,
                        "bind_addresses": [self.host],
                        "type": "http",
                        "tls": False,
                        "x_forwarded": self.x_forwarded,
                        "resources": [
                            {"names": ["client", "federation"], "compress": self.compress}
                        ],
                    }
                ],
                "database": {
                    "name": "sqlite3",
                    "args": {"database": str(self.data_dir / "homeserver.db")},
                },
                "media_store_path": str(self.data_dir / "media_store"),
                "log_config": str(self._write_log_config()),
                "report_stats": False,
                "enable_registration": True,
                "enable_registration_without_verification": True,
                "suppress_key_server_warning": True,
                "trusted_key_servers": [],
                "presence": {"enabled": True},
                # Password hashing at the default cost (12) makes every
                # register and login take ~0.3 s; this is a throwaway server.
                "bcrypt_rounds": 4,
                # Let user-directory search find users who share no room, and
                # let rooms be published to the room directory (the default
                # rules deny publication).
                "user_directory": {"enabled": True, "search_all_users": True},
                "room_list_publication_rules": [{"action": "allow"}],
                **GENEROUS_RATELIMITS,
            }
        )
        config = _deep_merge(config, self.extra_config)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Generate (first time) or reuse the config, start, wait for ready."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            await asyncio.to_thread(self._generate_config)
        if self.port is None:
            self.port = free_port(self.host)
        self._write_config()
        self._admin_token = None

        with open(self._output_path, "ab") as output:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Keep a Ctrl-C at the terminal from reaching Synapse before
                # our orderly stop() does.
                start_new_session=True,
            )
        _live_processes.add(self._process)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        url = f"{self.base_url}/_matrix/client/versions"
        deadline = time.monotonic() + START_DEADLINE
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise SynapseStartError(
                        f"Synapse exited with status {self._process.returncode} "
                        f"before it was ready\n{self._diagnostics()}"
                    )
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise SynapseStartError(
                        f"Synapse not ready within {START_DEADLINE:.0f} s\n"
                        f"{self._diagnostics()}"
                    )
                await asyncio.sleep(0.05)  # poll interval, not synchronisation

    def _diagnostics(self) -> str:
        return (
            f"--- tail of {self.log_path} ---\n{_tail(self.log_path)}\n"
            f"--- tail of {self._output_path} ---\n{_tail(self._output_path)}"
        )

    async def stop(self) -> None:
        """SIGTERM, up to 10 s grace, then SIGKILL.  Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        _live_processes.discard(process)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)

    async def __aenter__(self) -> LocalSynapse:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- admin API -----------------------------------------------------------

    async def admin_token(self) -> str:
        """Access token of a server admin, registered via the shared secret.

        A fresh admin per run (random name) so nothing has to be remembered
        across restarts.
        """
        if self._admin_token is not None:
            return self._admin_token
        secret = yaml.safe_load(self.config_path.read_text())["registration_shared_secret"]
        username = f"harness-admin-{os.urandom(4).hex()}"
        password = os.urandom(16).hex()
        url = f"{self.base_url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                response.raise_for_status()
                nonce = (await response.json())["nonce"]
            mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
            mac.update(b"\x00".join([nonce.encode(), username.encode(), password.encode(), b"admin"]))
            body = {
                "nonce": nonce,
                "username": username,
                "password": password,
                "admin": True,
                "mac": mac.hexdigest(),
            }
            async with session.post(url, json=body) as response:
                response.raise_for_status()
                self._admin_token = (await response.json())["access_token"]
        return self._admin_token

    async def override_ratelimit(
        self, user_id: str, messages_per_second: int, burst_count: int
    ) -> None:
        """Set ``user_id``'s own message rate limit (0, 0 means unlimited).

        The user must already be registered.  Synapse wants whole numbers.
        """
        token = await self.admin_token()
        url = f"{self.base_url}/_synapse/admin/v1/users/{user_id}/override_ratelimit"
        body = {"messages_per_second": messages_per_second, "burst_count": burst_count}
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=body, headers=headers) as response,
        ):
            response.raise_for_status()


# Synapse children still alive at interpreter exit (a test run that crashed
# before stop()) are terminated rather than left listening on loopback.
_live_processes: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _terminate_leftovers() -> None:
    for process in list(_live_processes):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
