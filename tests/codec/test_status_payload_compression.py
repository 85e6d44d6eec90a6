"""Status map, compression with a cap, and body ⇄ payload."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.codec import json_cbor, options, payload, status
from coap_gateway.codec.compression import FlateDictionary, compress, decompress
from coap_gateway.codec.profile import load_profile
from coap_gateway.errors import (
    CodecError,
    CompressionError,
    DecompressionBombError,
    StatusError,
)

# ------------------------------------------------------------------ status


def test_every_final_http_status_comes_back_exactly():
    for http in range(200, 600):
        st_ = status.http_to_coap(http)
        assert status.coap_to_http(st_.code, st_.http_status, st_.max_age) == (http, None)


def test_statuses_with_a_coap_twin_need_no_extra_option():
    for http, code in [(200, "2.05"), (201, "2.01"), (204, "2.04"), (403, "4.03"), (404, "4.04"),
                       (409, "4.09"), (413, "4.13"), (429, "4.29"), (502, "5.02"), (503, "5.03")]:
        st_ = status.http_to_coap(http)
        assert status.format_code(st_.code) == code and st_.http_status is None
    # the statuses the 2019 proxy collapsed into 5.00 are all distinct now
    codes = {(status.http_to_coap(h).code, status.http_to_coap(h).http_status) for h in (201, 204, 405, 409, 413, 429, 502, 503)}
    assert len(codes) == 8


def test_retry_after_survives():
    st_ = status.http_to_coap(429, "5")
    assert st_.max_age == 5 and st_.retry_after_header is None
    assert status.coap_to_http(st_.code, st_.http_status, st_.max_age) == (429, "5")
    st_ = status.http_to_coap(503, "120")
    assert status.coap_to_http(st_.code, st_.http_status, st_.max_age) == (503, "120")
    # forms Max-Age cannot carry go verbatim in a header option
    for http, value in [(429, "Wed, 21 Oct 2026 07:28:00 GMT"), (429, "007"), (500, "3"), (429, str(2**40))]:
        st_ = status.http_to_coap(http, value)
        assert st_.max_age is None and st_.retry_after_header == value


def test_foreign_coap_codes_map_sensibly_and_bad_ones_fail():
    assert status.coap_to_http(status.coap_code(2, 3))[0] == 200
    assert status.coap_to_http(status.coap_code(5, 5))[0] == 502
    assert status.coap_to_http(status.coap_code(4, 31))[0] == 400
    for bad in (0, status.coap_code(0, 1), status.coap_code(3, 0), status.coap_code(7, 1), 256):
        with pytest.raises(StatusError):
            status.coap_to_http(bad)
    with pytest.raises(StatusError):
        status.coap_to_http(status.coap_code(4, 0), http_status=503)  # wrong class
    with pytest.raises(StatusError):
        status.coap_to_http(status.coap_code(4, 0), http_status=404)  # has a twin
    for bad in (100, 199, 600, "200"):
        with pytest.raises(StatusError):
            status.http_to_coap(bad)


# ------------------------------------------------------------- compression

DICT = FlateDictionary(b'{"msgtype":"m.text","body":"' * 20)


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_deflate_round_trip(data):
    for d in (DICT, FlateDictionary(b"")):
        assert decompress(compress(data, d), d) == data


def test_deflate_bomb_is_refused_within_the_cap():
    bomb = compress(b"\x00" * (10 << 20))
    assert len(bomb) < 20_000
    with pytest.raises(DecompressionBombError):
        decompress(bomb, max_size=1 << 20)
    assert len(decompress(compress(b"a" * 1000), max_size=1000)) == 1000
    with pytest.raises(DecompressionBombError):
        decompress(compress(b"a" * 1001), max_size=1000)


@pytest.mark.parametrize("content_format", [None, options.CF_CBOR, options.CF_TIMELINE])
def test_a_bomb_of_table_codes_is_refused_within_the_cap(content_format):
    """§5.2: 1 KiB of deflate inflates to 1 MiB of CBOR that stands for 14 MiB
    of JSON (3-byte maps of a key code and a value code): the cap bounds
    the JSON too, whatever the Content-Format, and the decoder stops early."""
    lb4 = load_profile("lb4")
    item = json_cbor.encode({"kind": "sender_notification_permission"}, lb4.cbor_table)
    cap = 1 << 20
    n = (cap - 9) // len(item)
    cbor = b"\x9b" + n.to_bytes(8, "big") + item * n
    if content_format is None:
        wire = compress(cbor, lb4.flate)
        assert len(wire) < 1100
    elif content_format == options.CF_TIMELINE:
        wire = compress(cbor, payload.timeline.dictionary(lb4))
    else:
        wire = cbor
    with pytest.raises(json_cbor.BodyTooLarge):
        payload.payload_to_body(wire, content_format, lb4, max_size=cap)


def test_corrupt_truncated_and_trailing_data_are_refused():
    good = compress(b"hello world " * 20, DICT)
    with pytest.raises(CompressionError, match="truncated"):
        decompress(good[:-2], DICT)
    with pytest.raises(CompressionError, match="after the end"):
        decompress(good + b"x", DICT)
    with pytest.raises(CompressionError):
        decompress(b"\xff\xff\xff", DICT)
    # Raw deflate has no dictionary ID (the zlib wrapper's DICTID costs 4+ bytes),
    # so a wrong dictionary is not detected here: it yields other bytes.  That is
    # why both ends compare the profile's dictionary digest in the handshake.
    original = b'{"msgtype":"m.text","body":"x"}'
    try:
        assert decompress(compress(original, DICT), FlateDictionary(b"other" * 10)) != original
    except CompressionError:
        pass


@settings(max_examples=1000)
@given(st.binary(max_size=64))
def test_random_bytes_never_escape_decompress(data):
    try:
        decompress(data, DICT, max_size=4096)
    except CompressionError:
        pass


def test_dictionary_is_bounded_by_the_window():
    with pytest.raises(CompressionError):
        FlateDictionary(os.urandom(32 * 1024 + 1))


# ----------------------------------------------------------------- payload

LB2 = load_profile("lb2")
MSC = load_profile("msc3079")


def test_json_body_is_deflated_cbor_when_that_is_smaller():
    body = b'{"msgtype":"m.text","body":"Hello, see you at 5pm, and bring the usual things"}'
    pl = payload.body_to_payload(body, "application/json", LB2)
    cbor = json_cbor.json_to_cbor(body, LB2.cbor_table)
    # deflate is chosen exactly when it beats CBOR plus the 2-byte Content-Format option
    assert pl.content_format is None and len(pl.payload) < len(cbor) + 2 < len(body)
    back, content_type = payload.payload_to_body(pl.payload, pl.content_format, LB2)
    # canonical equality: CBOR is canonical, so key order may change
    assert (json.loads(back), content_type) == (json.loads(body), "application/json")


def test_incompressible_body_goes_uncompressed_with_cf_60():
    # random bytes under a key the dictionary has never seen: nothing to match
    body = b'{"zq":"' + base64.b64encode(hashlib.sha256(b"x").digest()).rstrip(b"=") + b'"}'
    pl = payload.body_to_payload(body, "application/json", LB2)
    assert pl.content_format == options.CF_CBOR
    assert payload.payload_to_body(pl.payload, pl.content_format, LB2)[0] == body


def test_msc3079_profile_never_compresses():
    pl = payload.body_to_payload(b'{"body":"' + b"a" * 200 + b'"}', "application/json", MSC)
    assert pl.content_format == options.CF_CBOR
    with pytest.raises(CodecError):
        payload.payload_to_body(b"\x01\x02", None, MSC)


def test_invalid_json_passes_through_verbatim():
    for body in (b"{not json", b'{"a":"\\ud800"}'):
        pl = payload.body_to_payload(body, "application/json", LB2)
        assert pl == payload.CoapPayload(body, options.CF_JSON)
        assert payload.payload_to_body(pl.payload, pl.content_format, LB2) == (body, "application/json")


def test_media_types_keep_their_content_type():
    png = b"\x89PNG\r\n\x1a\n" + bytes(50)
    assert payload.body_to_payload(png, "image/png", LB2) == payload.CoapPayload(png, options.CF_IMAGE_PNG)
    assert payload.payload_to_body(png, options.CF_IMAGE_PNG, LB2) == (png, "image/png")
    odd = payload.body_to_payload(b"x", "image/webp", LB2)
    assert odd == payload.CoapPayload(b"x", options.CF_OCTET_STREAM, "image/webp")
    assert payload.payload_to_body(b"x", odd.content_format, LB2, odd.content_type_header) == (b"x", "image/webp")
    assert payload.body_to_payload(b"", "application/json", LB2) == payload.CoapPayload(b"", None)


def test_header_option_validation():
    assert payload.decode_header(payload.encode_header("Retry-After", "5")) == ("Retry-After", "5")
    for name, value in [("Bad Name", "x"), ("X", "a\r\nb"), ("", "x")]:
        with pytest.raises(CodecError):
            payload.encode_header(name, value)
    for data in (b"no separator", b"\xff: x", b"X: " + b"a" * 2000):
        with pytest.raises(CodecError):
            payload.decode_header(data)


def test_verbatim_bodies_have_their_own_cap():
    big = bytes(2 << 20)  # 2 MiB of media: over the JSON cap, under the media cap
    assert payload.payload_to_body(big, options.CF_IMAGE_PNG, LB2, max_size=1 << 20, max_verbatim=50 << 20)[0] == big
    with pytest.raises(CodecError):
        payload.payload_to_body(big, options.CF_IMAGE_PNG, LB2, max_size=1 << 20)
    with pytest.raises(CodecError):
        payload.payload_to_body(big, options.CF_IMAGE_PNG, LB2, max_size=1 << 20, max_verbatim=1 << 20)
