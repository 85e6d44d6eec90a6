"""What a server gateway keeps on disk across restarts (SQLite, stdlib).

The strike register of IK1 early data, so that a restart does not reopen the
replay window (a captured IK1 with a PUT inside would run again); each
strike is committed before the early request it admits is delivered.  And
each device's bound state (its access tokens by handle, its handles and
transaction scope: ``codec.DeviceState.to_json``), so that a restart costs a
device a reconnect, not its definitions again; written when it changes (a
device's first requests), at most ``max_devices`` rows, least recently
written dropped.  Access tokens are stored in the clear: the file sits in
the server's state directory, next to its key, mode 0600.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

FILENAME = "server-state.sqlite3"


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
        self._db.execute("CREATE TABLE IF NOT EXISTS devices (key BLOB PRIMARY KEY, state TEXT NOT NULL, "
                         "written INTEGER NOT NULL)")
        self.max_devices = max_devices
        self._written = self._db.execute("SELECT COALESCE(MAX(written), 0) FROM devices").fetchone()[0]

    def strikes(self, now: float) -> list[tuple[bytes, float]]:
        """The strikes still in force at ``now`` (expired ones are deleted)."""
        self._db.execute("DELETE FROM strikes WHERE expires <= ?", (now,))
        return [(bytes(k), e) for k, e in self._db.execute("SELECT key, expires FROM strikes")]

    def add_strike(self, key: bytes, expires: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO strikes VALUES (?, ?)", (key, expires))

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

    def close(self) -> None:
        self._db.close()


__all__ = ["FILENAME", "ServerStore"]
