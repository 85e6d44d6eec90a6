"""The key log file: opt-in, 0600, one line per session, appended."""

from __future__ import annotations

import os
import stat

import pytest

from coap_gateway.errors import KeyFileError
from coap_gateway.secure import SessionKeys
from coap_gateway.transport import KEYLOG_ENV, KeyLog


def keys(n: int) -> SessionKeys:
    return SessionKeys(bytes([n]) * 8, bytes([n]) * 32, "IK", b"\x01" * 32, b"\x02" * 32,
                       (("IK1", b"\x03" * 32), ("IK2", b"\x04" * 32)), 1 << 16)


def test_off_unless_a_path_or_the_environment_names_one(tmp_path):
    assert KeyLog.from_settings(None, environ={}) is None
    assert KeyLog.from_settings("", environ={KEYLOG_ENV: ""}) is None
    from_env = KeyLog.from_settings(None, environ={KEYLOG_ENV: str(tmp_path / "env.keylog")})
    assert from_env is not None and from_env.path == str(tmp_path / "env.keylog")
    explicit = KeyLog.from_settings(tmp_path / "flag.keylog", environ={KEYLOG_ENV: str(tmp_path / "env.keylog")})
    assert explicit is not None and explicit.path == str(tmp_path / "flag.keylog")  # the flag wins
    from_env.close()
    explicit.close()


def test_created_0600_appended_one_line_per_session(tmp_path):
    path = tmp_path / "capture.keylog"
    old = os.umask(0)
    try:
        log = KeyLog(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    log.write(keys(1))
    log.write(keys(1))  # the same session from the other gateway of this process
    log.write(keys(2))
    log.close()
    again = KeyLog(path)
    again.write(keys(3))
    again.close()
    lines = path.read_text().splitlines()
    assert [line.split()[2] for line in lines] == ["sid=" + bytes([n]).hex() * 8 for n in (1, 2, 3)]
    assert lines[0] == ("COAP_GATEWAY_SESSION eph=" + "01" * 32 + " sid=" + "01" * 8 + " pattern=IK c2s=" + "01" * 32
                        + " s2c=" + "02" * 32 + " ik1=" + "03" * 32 + " ik2=" + "04" * 32 + " rekey=65536")


def test_a_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "open.keylog"
    path.write_text("")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        KeyLog(path)
    with pytest.raises(KeyFileError, match="cannot open"):
        KeyLog(tmp_path / "missing-dir" / "x.keylog")
