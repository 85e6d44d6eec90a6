"""The server gateway's store: who held sync observations, and where (the
devices a restarted gateway wakes)."""

from __future__ import annotations

from coap_gateway.app import ServerStore


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
