"""Route tables and the HTTP request line ⇄ CoAP mapping."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.codec import routes
from coap_gateway.codec.routes import load_route_table, parse_route_table
from coap_gateway.errors import RouteError, TableError

V1 = load_route_table(1)
V2 = load_route_table(2)
SAMPLES = json.loads((Path(__file__).parents[1] / "vectors" / "route_samples.json").read_text())


def test_tables_load_and_have_the_expected_shape():
    assert V1.version == 1 and len(V1) == 57
    assert V2.version == 2 and len(V2) > 200
    # MSC3079's one-character codes: '0' versions, '9' send, '7' sync
    assert V1.by_code[ord("9")].template == "/_matrix/client/r0/rooms/{roomId}/send/{eventType}/{txnId}"
    assert V1.by_code[ord("7")].template == "/_matrix/client/r0/sync"
    assert V1.by_code[ord("0")].template == "/_matrix/client/versions"
    # the hottest v2 endpoints cost one byte
    for name in ("client.send", "client.sync", "client.state_event", "client.messages", "federation.v1.send"):
        assert V2.by_name[name].code < 128, name


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s['method']} {s['path'][:60]}")
def test_real_request_lines_map_exactly(sample):
    line = routes.http_to_coap(sample["method"], sample["path"], V2)
    if sample["template_name"] is None:
        assert line.template is None
    else:
        assert line.template is not None and line.template.name == sample["template_name"]
        raw_params = [p for p in line.uri_path[1:]]
        assert [unquote(p) for p in routes.join_chunks(raw_params)] == sample["params"]
    # every option fits CoAP's 255-byte limit, and the way back is byte-exact
    assert all(len(o.encode()) <= 255 for o in line.uri_path + line.uri_query)
    assert routes.coap_to_http(line.method, line.uri_path, line.uri_query, V2) == (sample["method"], sample["path"])


def test_msc3079_paths_are_accepted_in_its_profile():
    # a client of the MSC sends /9/{room}/{type}/{txn}
    method, target = routes.coap_to_http(3, ["9", "!foo:localhost", "m.room.message", "t1"], [], V1)
    assert (method, target) == ("PUT", "/_matrix/client/r0/rooms/!foo:localhost/send/m.room.message/t1")
    # ... and full paths as well
    assert routes.coap_to_http(1, ["_matrix", "client", "r0", "sync"], ["since=s1"], V1) == (
        "GET", "/_matrix/client/r0/sync?since=s1")


REFERENCE = "/_matrix/client/v3/rooms/!AbCdEfGhIjKlMnOp:example.org/send/m.room.message/txn42"


def test_reference_send_route_bytes():
    line = routes.http_to_coap("PUT", REFERENCE, V2)
    assert line.uri_path == ("!", "!AbCdEfGhIjKlMnOp:example.org", "m.room.message", "txn42")
    options = Message(code=Code.PUT, uri_path=line.uri_path).opt.encode()
    # 1+1 code, 1+1+29 room, 1+1+14 type (two header bytes: > 12), 1+5 txn
    assert options.hex() == (
        "b121" + "0d10" + b"!AbCdEfGhIjKlMnOp:example.org".hex()
        + "0d01" + b"m.room.message".hex() + "05" + b"txn42".hex()
    )
    assert len(options) == 55


def test_percent_encoding_is_kept_exactly():
    for target in (
        "/_matrix/client/v3/rooms/%21r%3Ahs/send/m.room.message/t",
        "/_matrix/client/v3/rooms/!r:hs/send/m.room.message/t",
        "/_matrix/client/v3/rooms/%21r:hs/send/m.room.message/t%2F1",
        "/_matrix/client/v3/ro%6Fms/!r:hs/send/m.room.message/t",  # escaped literal: literal form
    ):
        line = routes.http_to_coap("PUT", target, V2)
        assert routes.coap_to_http(line.method, line.uri_path, line.uri_query, V2) == ("PUT", target)
    assert routes.http_to_coap("PUT", "/_matrix/client/v3/ro%6Fms/!r:hs/send/m.room.message/t", V2).template is None


def test_trailing_slash_empty_state_key_is_its_own_parameter():
    line = routes.http_to_coap("PUT", "/_matrix/client/v3/rooms/!r:hs/state/m.room.name/", V2)
    assert line.template.name == "client.state_event" and line.uri_path[-1] == ""
    line2 = routes.http_to_coap("PUT", "/_matrix/client/v3/rooms/!r:hs/state/m.room.name", V2)
    assert line2.template.name != line.template.name


@pytest.mark.parametrize("target", ["/", "//", "/a", "/a/b", "/é/x", "/_matrix", "/x?", "/x?a&&b=", "/x?=", "/unknown/endpoint?q=1"])
def test_unknown_paths_pass_through_literally(target):
    line = routes.http_to_coap("GET", target, V2)
    assert line.template is None
    assert routes.coap_to_http(line.method, line.uri_path, line.uri_query, V2) == ("GET", target)


def test_query_order_empties_and_long_values_are_kept():
    long_filter = "filter=" + "%7B%22room%22%3A" * 40  # 647 bytes
    target = f"/_matrix/client/v3/sync?b=2&a=1&{long_filter}&&timeout=30000"
    line = routes.http_to_coap("GET", target, V2)
    assert line.uri_query[:2] == ("b=2", "a=1")
    assert max(len(q) for q in line.uri_query) == 255
    assert routes.coap_to_http(line.method, line.uri_path, line.uri_query, V2)[1] == target


@settings(max_examples=1000)
@given(st.text(alphabet=st.characters(blacklist_characters="&#", blacklist_categories=("Cs", "Cc", "Zs")), max_size=900))
def test_chunking_round_trips_any_value(value):
    chunks = routes.chunk_value(value)
    assert all(len(c.encode()) <= 255 for c in chunks)
    assert all(len(c.encode()) >= routes.CONTINUED_LEN for c in chunks[:-1])
    assert len(chunks[-1].encode()) < routes.CONTINUED_LEN
    assert routes.join_chunks(chunks) == [value]


@pytest.mark.parametrize(
    "method,path,query,message",
    [
        (1, ["\x7e\x7e"[0], "x"], [], "unknown route code|takes"),
        (1, [chr(0x7FF)], [], "unknown route code"),
        (3, ["!", "!r:hs"], [], "takes 3 parameters"),
        (3, ["!", "!r:hs", "a/b", "t"], [], "forbidden"),  # would add a path segment
        (1, ["_matrix", ".."], [], "dot segments"),
        (1, ["_matrix", "a b"], [], "forbidden"),
        (1, ["_matrix", "a\r\nHost: evil"], [], "forbidden"),
        (1, ["_matrix"], ["a&b"], "forbidden"),
        (1, ["_matrix"], ["x" * 253], "continuation"),
        (1, ["_matrix"], ["x" * 256], "exceeds"),
        (9, ["_matrix"], [], "not a request method"),
        (1, ["", "long"], [], "escaped literal"),
    ],
)
def test_bad_coap_requests_are_refused(method, path, query, message):
    with pytest.raises(RouteError, match=message):
        routes.coap_to_http(method, path, query, V2)


@pytest.mark.parametrize("method,target", [("OPTIONS", "/x"), ("GET", "x"), ("GET", "/a/../b"), ("GET", "/a#f"), ("HEAD", "/")])
def test_bad_http_requests_are_refused(method, target):
    with pytest.raises(RouteError):
        routes.http_to_coap(method, target, V2)


def _table(*templates):
    return {"format": "coap-gateway/routes", "version": 9,
            "routes": [{"code": 33 + i, "template": t, "name": f"r{i}"} for i, t in enumerate(templates)]}


@pytest.mark.parametrize(
    "doc,message",
    [
        (_table("/a/{x}/c", "/a/b/{y}"), "ambiguous"),
        (_table("/a/{x}", "/a/{y}"), "ambiguous"),
        (_table("/a", "/a"), "duplicate template"),
        ({"format": "coap-gateway/routes", "version": 9, "routes": [
            {"code": 33, "template": "/a", "name": "x"}, {"code": 33, "template": "/b", "name": "y"}]}, "duplicate code"),
        ({"format": "coap-gateway/routes", "version": 9, "routes": [
            {"code": 33, "template": "/a", "name": "x"}, {"code": 34, "template": "/b", "name": "x"}]}, "duplicate name"),
        ({"format": "coap-gateway/routes", "version": 9, "routes": [{"code": 0xD800, "template": "/a", "name": "x"}]}, "scalar"),
        (_table("a/b"), "start with"),
        (_table("/a/{x"), "bad segment"),
    ],
)
def test_bad_route_tables_fail_to_load(doc, message):
    with pytest.raises(TableError, match=message):
        parse_route_table(doc)


def test_more_specific_template_wins_where_allowed():
    table = parse_route_table(_table("/a/{x}/c", "/a/b/c"))
    assert table.match(["a", "b", "c"]).template == "/a/b/c"
    assert table.match(["a", "z", "c"]).template == "/a/{x}/c"
