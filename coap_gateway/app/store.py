"""What a server gateway keeps on disk across restarts (SQLite, stdlib).

The strike register of IK1s, so that a restart does not reopen the replay
window (a captured IK1 with a PUT inside would run again); each strike is
committed before anything of its handshake is acted on, and expired ones
are deleted as new ones come (at most the server's ``max_strikes`` are in
force, plus ``PURGE_EVERY`` expired).  And
each device's bound state (its access tokens by handle, its handles and
transaction scope: ``codec.DeviceState.to_json``), so that a restart costs a
device a reconnect, not its definitions again; written when it changes (a
device's first requests), at most ``max_devices`` rows, least recently
written dropped.  Access tokens are stored in the clear: the file sits in
the server's state directory, next to its key, mode 0600.  And the devices
that hold sync observations, with the address of their session: after a
restart the gateway sends each of them WAKE, so that it comes back at once
instead of at its next request (``watchers``, at most ``max_devices``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Hashable
from pathlib import Path

FILENAME = "server-state.sqlite3"
#: strikes added between deletions of the expired ones (an indexed delete: cheap, not per insert)
PURGE_EVERY = 256


class ServerStore:
    def __init__(self, directory: str | os.PathLike[str], *, max_devices: int = 4096):
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.directory / FILENAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # created 0600 before SQLite opens it
        os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS strikes (key BLOB PRIMARY KEY, expires REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS strikes_by_expiry ON strikes (expires)")
        self._strikes_added = 0
        self._db.execute("CREATE TABLE IF NOT EXISTS devices (key BLOB PRIMARY KEY, state TEXT NOT NULL, "
                         "written INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS watchers (key BLOB PRIMARY KEY, address TEXT NOT NULL)")
        self.max_devices = max_devices
        self._written = self._db.execute("SELECT COALESCE(MAX(written), 0) FROM devices").fetchone()[0]
        self._watching: dict[bytes, str] = {}

    def strikes(self, now: float) -> list[tuple[bytes, float]]:
        """The strikes still in force at ``now`` (expired ones are deleted)."""
        self._db.execute("DELETE FROM strikes WHERE expires <= ?", (now,))
        return [(bytes(k), e) for k, e in self._db.execute("SELECT key, expires FROM strikes")]

    def add_strike(self, key: bytes, expires: float, now: float) -> None:
        """Keep ``key`` struck until ``expires``; every ``PURGE_EVERY`` strikes,
        those expired at ``now`` go (the server holds no more than its
        register's capacity in force, so neither does the table)."""
        self._db.execute("INSERT OR REPLACE INTO strikes VALUES (?, ?)", (key, expires))
        self._strikes_added += 1
        if self._strikes_added % PURGE_EVERY == 0:
            self._db.execute("DELETE FROM strikes WHERE expires <= ?", (now,))

    def load_device(self, key: bytes) -> str | None:
        row = self._db.execute("SELECT state FROM devices WHERE key = ?", (key,)).fetchone()
        return row[0] if row is not None else None

    def save_device(self, key: bytes, state: str) -> None:
        self._written += 1
        self._db.execute("INSERT OR REPLACE INTO devices VALUES (?, ?, ?)", (key, state, self._written))
        self._db.execute("DELETE FROM devices WHERE written <= ?", (self._written - self.max_devices,))

    def delete_device(self, key: bytes) -> None:
        self._db.execute("DELETE FROM devices WHERE key = ?", (key,))

    def devices(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]

    def add_watcher(self, key: bytes, address: Hashable) -> None:
        """Device ``key`` holds a sync observation from ``address`` (a link
        address that is a string or a tuple of strings and numbers — UDP's
        (host, port), meshsim's names; others are not kept)."""
        text = _address_text(address)
        if text is None or self._watching.get(key) == text:
            return
        if len(self._watching) >= self.max_devices:
            self._watching.clear()  # only spares repeated writes: bounded as the table is
        self._watching[key] = text
        self._db.execute("INSERT OR REPLACE INTO watchers VALUES (?, ?)", (key, text))
        self._db.execute("DELETE FROM watchers WHERE rowid NOT IN (SELECT rowid FROM watchers "
                         "ORDER BY rowid DESC LIMIT ?)", (self.max_devices,))

    def remove_watcher(self, key: bytes) -> None:
        """Device ``key`` cancelled its observations (its gateway stopped)."""
        self._watching.pop(key, None)
        self._db.execute("DELETE FROM watchers WHERE key = ?", (key,))

    def take_watchers(self) -> list[tuple[bytes, Hashable]]:
        """The devices that held observations when the gateway stopped, and
        their addresses; forgotten here (they are kept again as they register)."""
        rows = [(bytes(k), _address_of(a)) for k, a in self._db.execute("SELECT key, address FROM watchers")]
        self._db.execute("DELETE FROM watchers")
        self._watching.clear()
        return rows

    def close(self) -> None:
        self._db.close()


def _address_text(address: Hashable) -> str | None:
    if isinstance(address, str) or (isinstance(address, tuple) and address
                                    and all(isinstance(part, (str, int)) for part in address)):
        return json.dumps(address)
    return None


def _address_of(text: str) -> Hashable:
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value


__all__ = ["FILENAME", "ServerStore"]
