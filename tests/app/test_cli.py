"""``coap-gateway`` CLI: codec encode/decode/route, errors exit 2, demo."""

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
