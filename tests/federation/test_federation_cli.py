"""``coap-gateway federation``: starts from a peers table, prints the homeserver.yaml lines, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys

from coap_gateway.federation import CA_KEY, Peer, PeersTable, dump_peers
from coap_gateway.secure import keys


async def _run(*args: str, until: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "coap_gateway", "federation", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    output = b""
    if until is not None:
        while until not in output:
            line = await asyncio.wait_for(proc.stderr.readline(), timeout)
            if not line:
                break
            output += line
        proc.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, output + rest[1]


async def test_federation_command_runs_and_stops(tmp_path):
    other = keys.generate_keypair()[0]
    peers = tmp_path / "peers.toml"
    peers.write_text(dump_peers(PeersTable([Peer(keys.public_from_private(other), "udp://127.0.0.1:9", ("b.example",))])))
    key = tmp_path / "gw" / "federation.key"
    code, out = await _run("--homeserver", "http://127.0.0.1:9", "--peers", str(peers), "--key", str(key),
                           "--generate-key", "--listen", "udp://127.0.0.1:0", "--proxy", "127.0.0.1:0",
                           until=b"federation-ca.pem")
    text = out.decode()
    assert code == 0, text
    assert "https_proxy: http://127.0.0.1:" in text and "federation_custom_ca_list:" in text and "b.example" in text
    assert stat.S_IMODE(os.stat(tmp_path / "gw" / CA_KEY).st_mode) == 0o600
    assert "federation gateway stopped" in text


async def test_federation_command_without_peers_is_one_line_and_exit_2(tmp_path):
    code, out = await _run("--homeserver", "http://127.0.0.1:9", "--key", str(tmp_path / "k"))
    assert code == 2 and out.decode().strip().splitlines() == ["coap-gateway: error: --peers is required"]
    bad = tmp_path / "peers.toml"
    bad.write_text("[[peer]]\nservers = ['b']\n")
    code, out = await _run("--homeserver", "http://127.0.0.1:9", "--key", str(tmp_path / "k"), "--peers", str(bad))
    assert code == 2 and "missing" in out.decode()


async def test_a_sigterm_while_starting_stops_it_in_order(tmp_path):
    """A SIGTERM that arrives before the gateway waits for one (here: right after
    the key is made, while the CA and proxy are still being set up) ends it with
    status 0, not the default action's kill (-15: the race CI once lost)."""
    other = keys.generate_keypair()[0]
    peers = tmp_path / "peers.toml"
    peers.write_text(dump_peers(PeersTable([Peer(keys.public_from_private(other), "udp://127.0.0.1:9", ("b.example",))])))
    code, out = await _run("--homeserver", "http://127.0.0.1:9", "--peers", str(peers), "--key",
                           str(tmp_path / "gw" / "federation.key"), "--generate-key", "--listen", "udp://127.0.0.1:0",
                           "--proxy", "127.0.0.1:0", until=b"generated a new server key")
    assert code == 0, out.decode()


def test_the_request_timeout_is_set_from_the_command_line_or_the_config_file():
    """Link requests ended after 4 x 120 s whatever the homeserver's own client_timeout."""
    import pytest

    from coap_gateway.app.cli import build_parser
    from coap_gateway.app.daemon import ConfigError, merged
    from coap_gateway.app.federation import FEDERATION_OPTIONS, federation_config
    from coap_gateway.codec import DEFAULT_PROFILE, load_profile
    from coap_gateway.federation import FederationGateway

    profile = load_profile(DEFAULT_PROFILE)
    args = build_parser().parse_args(["federation", "--request-timeout", "300"])
    options = merged(args, {"homeserver": "http://127.0.0.1:9", "request_timeout": 45}, FEDERATION_OPTIONS)
    config = federation_config(options, profile)
    assert config.request_timeout == 300.0
    assert FederationGateway(config, PeersTable([])).upstream.timeout == 300.0
    assert federation_config({"homeserver": "h", "request_timeout": 45}, profile).request_timeout == 45.0
    assert federation_config({"homeserver": "h"}, profile).request_timeout == 120.0
    for bad in ("0", "-1", "soon", "inf", "nan", True):
        with pytest.raises(ConfigError, match="--request-timeout"):
            federation_config({"homeserver": "h", "request_timeout": bad}, profile)
