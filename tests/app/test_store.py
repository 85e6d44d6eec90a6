"""The server gateway's store: who held sync observations, and where (the
devices a restarted gateway wakes); the strike register's rows."""

from __future__ import annotations

import sqlite3

from coap_gateway.app import ServerStore
from coap_gateway.app.store import PURGE_EVERY


def test_watchers_survive_a_restart_once_and_stay_bounded(tmp_path):
    store = ServerStore(tmp_path, max_devices=3)
    store.add_watcher(b"a" * 32, ("192.0.2.1", 5683))
    store.add_watcher(b"b" * 32, "client-b")  # meshsim's emulated links name their ends
    store.add_watcher(b"c" * 32, object())  # an address that cannot be written down: not kept
    store.add_watcher(b"a" * 32, ("192.0.2.9", 40000))  # it moved: the newer address
    store.close()
    store = ServerStore(tmp_path, max_devices=3)  # restarted
    assert sorted(store.take_watchers()) == [(b"a" * 32, ("192.0.2.9", 40000)), (b"b" * 32, "client-b")]
    assert store.take_watchers() == []  # each restart wakes them once; they are kept again as they register
    for i in range(5):
        store.add_watcher(bytes([i]) * 32, ("192.0.2.1", 6000 + i))
    store.remove_watcher(bytes([4]) * 32)  # cancelled its observations
    assert sorted(port for _, (_, port) in store.take_watchers()) == [6002, 6003]  # the newest 3, less the cancelled
    store.close()


def test_expired_strikes_are_deleted_as_new_ones_come(tmp_path):
    """Rows were deleted only at start: a server up for months kept every strike."""
    store = ServerStore(tmp_path)
    assert store.strikes(0.0) == []
    for i in range(5000):  # one strike a second, each in force for 11 minutes
        store.add_strike(i.to_bytes(32, "big"), i + 660.0, float(i))
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT COUNT(*) FROM strikes").fetchone()[0]
    assert 660 <= rows <= 660 + PURGE_EVERY
    in_force = store.strikes(4999.0)
    assert len(in_force) == 660 and min(e for _, e in in_force) == 4340 + 660.0
    store.close()
