"""The server gateway encodes the same homeserver bytes once (codec/payload.py)."""

from __future__ import annotations

import json

from coap_gateway.codec import load_profile
from coap_gateway.codec import payload as pl


def test_a_body_said_again_is_encoded_once_and_identically():
    profile = load_profile("lb3")
    body = json.dumps({"versions": ["v1.1", "v1.11"], "unstable_features": {"org.matrix.msc3575": True}}).encode()
    first = pl.body_to_payload(body, "application/json", profile)
    again = pl.body_to_payload(bytes(body), "application/json", profile)  # equal bytes, another object
    assert again is first
    assert first == pl._json_payload(body, profile, True)  # what encoding it afresh gives
    plain = pl.body_to_payload(body, "application/json", profile, allow_deflate=False)
    assert plain == pl._json_payload(body, profile, False) and plain is not first


def test_the_cache_is_bounded():
    profile = load_profile("lb3")
    for n in range(pl._ENCODED_MAX_ENTRIES + 50):
        pl.body_to_payload(b'{"n":%d}' % n, "application/json", profile)
    assert len(pl._ENCODED[id(profile)][1]) <= pl._ENCODED_MAX_ENTRIES
    big = b'{"x":"' + b"a" * pl._ENCODED_MAX_BODY + b'"}'
    assert pl.body_to_payload(big, "application/json", profile) is not pl.body_to_payload(big, "application/json",
                                                                                            profile)
