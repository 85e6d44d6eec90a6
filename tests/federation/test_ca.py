"""The federation CA: written whole, its leaves renewed before they expire, one TLS context per name, bounded."""

from __future__ import annotations

import datetime
import os
import ssl

import pytest

from coap_gateway.errors import KeyFileError
from coap_gateway.federation import CA_CERT, CA_KEY, FederationCA
from coap_gateway.federation import ca as ca_module


def _handshake(server: ssl.SSLContext, name: str, cafile: str) -> None:
    """A TLS handshake in memory, the client verifying ``name`` against the CA; raises when it fails."""
    client = ssl.create_default_context(cafile=cafile)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    ends = [client.wrap_bio(bios[0], bios[1], server_hostname=name),
            server.wrap_bio(bios[2], bios[3], server_side=True)]
    done = [False, False]
    for _ in range(10):
        for i, end in enumerate(ends):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
    assert all(done)


def test_a_leaf_is_issued_again_before_it_expires(tmp_path):
    """The gateway runs for months: a leaf with less than a week left is replaced (it
    was kept for the life of the process, and after 30 days every TLS handshake failed)."""
    now = [datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)]
    ca = FederationCA(tmp_path, clock=lambda: now[0])
    first = ca.server_context("b.example")
    assert ca.leaf_expiry("b.example") == now[0] + datetime.timedelta(days=ca_module.LEAF_DAYS)
    now[0] += datetime.timedelta(days=22)
    assert ca.server_context("b.example") is first  # 8 days left: kept
    now[0] += datetime.timedelta(days=2)
    renewed = ca.server_context("b.example")
    assert renewed is not first
    assert ca.leaf_expiry("b.example") == now[0] + datetime.timedelta(days=ca_module.LEAF_DAYS)


def test_one_context_per_name_and_a_bounded_number(tmp_path, monkeypatch):
    ca = FederationCA(tmp_path)
    context = ca.server_context("b.example")
    # the name as a CONNECT may write it: one context, valid for the name with and without the dot
    assert ca.server_context("B.Example.") is context and ca.contexts_kept == 1
    _handshake(context, "b.example", str(tmp_path / CA_CERT))
    _handshake(context, "b.example.", str(tmp_path / CA_CERT))
    monkeypatch.setattr(ca_module, "MAX_CONTEXTS", 3)
    for i in range(6):
        ca.server_context(f"n{i}.example")
    assert ca.contexts_kept == 3


def test_the_ca_is_written_whole_and_half_of_one_is_refused_clearly(tmp_path):
    ca = FederationCA(tmp_path)
    assert ca.created and sorted(os.listdir(tmp_path)) == sorted([CA_CERT, CA_KEY])  # no temporary file left
    assert os.stat(tmp_path / CA_KEY).st_mode & 0o777 == 0o600
    assert not FederationCA(tmp_path).created
    certificate = (tmp_path / CA_CERT).read_bytes()
    (tmp_path / CA_CERT).unlink()
    with pytest.raises(KeyFileError, match=f"{CA_KEY} without {CA_CERT}"):
        FederationCA(tmp_path)
    (tmp_path / CA_CERT).write_bytes(certificate)
    (tmp_path / CA_KEY).unlink()
    with pytest.raises(KeyFileError, match=f"{CA_CERT} without {CA_KEY}"):
        FederationCA(tmp_path)
