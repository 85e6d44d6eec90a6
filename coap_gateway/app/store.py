"""What a server gateway keeps on disk across restarts (SQLite, stdlib).

Today: the strike register of IK1 early data, so that a restart does not
reopen the replay window (a captured IK1 with a PUT inside would run again).
Each strike is committed before the early request it admits is delivered.
The file sits in the server's state directory, next to its key (mode 0600).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

FILENAME = "server-state.sqlite3"


class ServerStore:
    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.directory / FILENAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # created 0600 before SQLite opens it
        os.close(fd)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS strikes (key BLOB PRIMARY KEY, expires REAL NOT NULL)")

    def strikes(self, now: float) -> list[tuple[bytes, float]]:
        """The strikes still in force at ``now`` (expired ones are deleted)."""
        self._db.execute("DELETE FROM strikes WHERE expires <= ?", (now,))
        return [(bytes(k), e) for k, e in self._db.execute("SELECT key, expires FROM strikes")]

    def add_strike(self, key: bytes, expires: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO strikes VALUES (?, ?)", (key, expires))

    def close(self) -> None:
        self._db.close()


__all__ = ["FILENAME", "ServerStore"]
