"""tshark with the project's Lua dissector (coap_gateway/tools/wireshark),
for the tests that read secure captures."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from coap_gateway.tools.wireshark import PLUGIN

FIELDS = ["frame.number", "cgw.kind", "cgw.decrypted", "coap.code", "cgw.method", "cgw.route", "cgw.session",
          "_ws.col.Info"]
#: frames Wireshark itself calls malformed: the Malformed Packet item or an expert
#: item of the Malformed group (what tshark's "malformed" count means)
MALFORMED = "_ws.malformed || _ws.expert.group == 0x07000000"


def tshark() -> str:
    """tshark's path; a test that needs it fails in CI (make system-packages
    installs it) and is skipped only on a developer machine without it."""
    path = shutil.which("tshark")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("tshark is not installed: `make system-packages` (apt-get install tshark) must run in CI")
        pytest.skip("tshark is not installed (apt-get install tshark)")
    return path


def run(pcap: Path, *args: str, keylog: Path | None = None, plugin: bool = True) -> str:
    command = [tshark(), "-n", "-r", str(pcap)]
    if plugin:
        command += ["-X", f"lua_script:{PLUGIN}"]
    if keylog is not None:
        command += ["-o", f"cgw.keylog:{keylog}"]
    done = subprocess.run(command + list(args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Lua: Error" not in done.stderr and "lua_script" not in done.stderr, done.stderr
    return done.stdout


def frames(pcap: Path, *args: str, keylog: Path | None = None, plugin: bool = True) -> list[dict[str, str]]:
    """One dict per frame: FIELDS → text ('' when absent; the first occurrence)."""
    out = run(pcap, "-T", "fields", "-E", "occurrence=f", *[a for f in FIELDS for a in ("-e", f)], *args,
              keylog=keylog, plugin=plugin)
    return [dict(zip(FIELDS, line.split("\t"), strict=True)) for line in out.splitlines()]


def malformed(pcap: Path, *args: str, keylog: Path | None = None, plugin: bool = True) -> list[str]:
    """The numbers of the frames tshark finds malformed."""
    out = run(pcap, "-Y", MALFORMED, "-T", "fields", "-e", "frame.number", *args, keylog=keylog, plugin=plugin)
    return out.split()


def frame_count(pcap: Path, *args: str, keylog: Path | None = None, plugin: bool = True) -> int:
    return len(run(pcap, "-T", "fields", "-e", "frame.number", *args, keylog=keylog, plugin=plugin).split())


def assert_reads_secure_capture(pcap: Path, keylog: Path) -> list[dict[str, str]]:
    """The checks of issue 13.5 on a secure capture with its key log: nothing
    malformed, every sealed frame decrypted, every request with its method and
    route, handshakes named.  Returns the frames."""
    rows = frames(pcap, keylog=keylog)
    assert rows, "empty capture"
    assert malformed(pcap, keylog=keylog) == []
    handshakes = [r for r in rows if r["cgw.kind"] not in ("", "0")]
    assert handshakes and all(r["_ws.col.Info"].split(":")[0].split()[0] in
                              ("IK1", "IK2", "XX1", "XX2", "XX3", "RESET", "REFUSE") for r in handshakes), handshakes
    data = [r for r in rows if r["cgw.kind"] == "0"]
    assert data and all(r["cgw.decrypted"] == "1" for r in data), [r for r in data if r["cgw.decrypted"] != "1"]
    requests = [r for r in rows if r["coap.code"] and 1 <= int(r["coap.code"]) <= 31]
    assert requests and all(r["cgw.method"] and r["cgw.route"] for r in requests), \
        [r for r in requests if not r["cgw.route"]]
    return rows
