"""``coap-gateway`` CLI: codec encode/decode/route, errors exit 2, demo, the discovery entry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coap_gateway.app.cli import main


def run(args, stdin: bytes = b""):
    proc = subprocess.run([sys.executable, "-m", "coap_gateway", *args], input=stdin, capture_output=True, timeout=60)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_encode_msc3079_vector_and_decode_back():
    body = b'{"error":"something","errcode":"M_UNKNOWN"}'
    code, out, err = run(["codec", "encode", "--table", "1"], body)
    assert (code, out.strip()) == (0, "a21866694d5f554e4b4e4f574e186769736f6d657468696e67"), err
    code, out, _ = run(["codec", "decode", "--table", "1"], out.encode())
    assert code == 0 and json.loads(out) == json.loads(body)


def test_encode_decode_with_deflate_round_trips():
    body = b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}'
    code, out, err = run(["codec", "encode", "--deflate"], body)
    assert code == 0, err
    code, back, err = run(["codec", "decode", "--deflate"], out.encode())
    assert code == 0 and json.loads(back) == json.loads(body), err


def test_route_prints_code_options_and_size():
    code, out, err = run(["codec", "route", "PUT", "/_matrix/client/v3/rooms/!AbCdEfGhIjKlMnOp:example.org/send/m.room.message/txn42"])
    assert code == 0, err
    assert "0.03 PUT" in out and "client.send" in out and "options:   55 B" in out


@pytest.mark.parametrize(
    "args,stdin,message",
    [
        (["codec", "encode"], b"{not json", "not JSON"),
        (["codec", "encode"], b"\xff\xfe", "not UTF-8"),
        (["codec", "decode"], b"zz", "not hexadecimal"),
        (["codec", "decode"], b"ff", "invalid CBOR"),
        (["codec", "decode", "--deflate"], b"ffff", "deflate"),
        (["codec", "encode", "--table", "99"], b"{}", "not found"),
        (["codec", "route", "HEAD", "/x"], b"", "no CoAP equivalent"),
        (["codec", "route", "GET", "no-slash"], b"", "absolute path"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, stdin, message):
    code, out, err = run(args, stdin)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_demo_runs_in_process(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "msc3079" in out and "lb2" in out and "request bytes" in out


def test_advertisement_prints_the_well_known_entry_with_the_public_key_only(tmp_path):
    from coap_gateway.secure import keys

    key = tmp_path / "server.key"
    code, public_text, err = run(["keygen", str(key)])
    assert code == 0, err
    code, out, err = run(["advertisement", "--address", "udp://lb.example.org:5683", "--key", str(key)])
    assert code == 0, err
    entry = json.loads(out)["net.coap-gateway.low_bandwidth"]
    public = keys.decode_key(public_text.strip())
    assert entry["address"] == "udp://lb.example.org:5683" and entry["profile_name"] == "lb4"
    assert entry["noise_public_key"] == public_text.strip()
    assert entry["noise_fingerprint"] == keys.fingerprint(public)
    private_text = keys.encode_key(keys.read_private_key(key))
    assert private_text not in out  # never the private key
    # the same from the public key alone
    code, again, err = run(["advertisement", "--address", "udp://lb.example.org:5683", "--public-key", public_text.strip()])
    assert code == 0 and json.loads(again) == json.loads(out), err
