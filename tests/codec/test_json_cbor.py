"""JSON ⇄ CBOR codec: MSC3079 vectors, exact round trips, hostile input."""

from __future__ import annotations

import json
import math

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coap_gateway.codec import json_cbor
from coap_gateway.codec.tables import load_cbor_table, parse_cbor_table
from coap_gateway.errors import CodecError, TableError

V1 = load_cbor_table(1)
V2 = load_cbor_table(2)
TABLES = [V1, V2]


def same_json(a, b) -> bool:
    """Canonical compare: equal values *and* equal types (1 != 1.0 != True)."""
    return json.dumps(a, sort_keys=True, allow_nan=True) == json.dumps(b, sort_keys=True, allow_nan=True) and _types(a) == _types(b)


def _types(v):
    if isinstance(v, dict):
        return {k: _types(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_types(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return type(v).__name__


# ------------------------------------------------------------- MSC3079


MSC3079_VECTORS = [
    (
        {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "Hello World"},
         "sender": "@alice:localhost", "room_id": "!foo:localhost",
         "unsigned": {"bool_value": True, "null_value": None}},
        "a5026e6d2e726f6f6d2e6d65737361676503a2181b6b48656c6c6f20576f726c64181c666d2e74657874056e21666f6f3a6c6f63616c686f7374067040616c6963653a6c6f63616c686f737409a26a626f6f6c5f76616c7565f56a6e756c6c5f76616c7565f6",
    ),
    ({"error": "something", "errcode": "M_UNKNOWN"}, "a21866694d5f554e4b4e4f574e186769736f6d657468696e67"),
]


@pytest.mark.parametrize("value,hexdata", MSC3079_VECTORS)
def test_msc3079_vectors_byte_for_byte(value, hexdata):
    assert json_cbor.encode(value, V1).hex() == hexdata
    assert json_cbor.decode(bytes.fromhex(hexdata), V1) == value


def test_v1_replaces_keys_at_any_depth_but_never_values():
    value = {"content": {"body": "type", "type": ["event_id"]}}
    data = json_cbor.encode(value, V1)
    assert cbor2.loads(data) == {3: {27: "type", 2: ["event_id"]}}


def test_digit_string_key_stays_a_string():
    assert cbor2.loads(json_cbor.encode({"8": 1}, V1)) == {"8": 1}
    assert json_cbor.decode(json_cbor.encode({"8": 1, "origin_server_ts": 2}, V1), V1) == {"8": 1, "origin_server_ts": 2}


def test_text_key_wins_over_its_code():
    # {1: "a", "event_id": "b"} can only come from another encoder; MSC3079 says text wins
    data = cbor2.dumps({1: "from-code", "event_id": "from-text"})
    assert json_cbor.decode(data, V1) == {"event_id": "from-text"}


# ------------------------------------------------------------ v2 extras


def test_v2_extends_v1_every_v1_code_still_decodes():
    for code, name in V1.key_names.items():
        assert V2.key_names[code] == name
    assert V2.version == 2 and V2.binary_fields


def test_v2_value_codes_and_escapes_round_trip():
    value = {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"}}
    data = json_cbor.encode(value, V2)
    model = cbor2.loads(data)
    assert model[2] == V2.value_codes["type"]["m.room.message"]
    assert json_cbor.decode(data, V2) == value
    # a genuine integer or array under an enumerated key is escaped, not confused
    for odd in (0, 1, 7, -3, 2**53 - 1, [], [1], [[2]], True, None, 1.5, {"a": 1}, "not-in-table"):
        assert same_json(json_cbor.decode(json_cbor.encode({"type": odd}, V2), V2), {"type": odd})


def test_unknown_value_code_is_an_error():
    with pytest.raises(CodecError, match="unknown value code"):
        json_cbor.decode(cbor2.dumps({2: 9999}), V2)
    with pytest.raises(CodecError, match="one-element"):
        json_cbor.decode(cbor2.dumps({2: [1, 2]}), V2)
    with pytest.raises(CodecError, match="only integers and arrays"):
        json_cbor.decode(cbor2.dumps({2: ["x"]}), V2)


EVENT_ID = "$" + "aGVsbG8gd29ybGQgdGhpcyBpcyBhIHRlc3QgZXZlbnQ"  # 43 chars, url-safe alphabet
SIG = "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"


def test_binary_fields_travel_as_bytes_only_when_exact():
    sha = "1Qr/x3ReVU8VAdqhkpHT6yW5eGOvh60zpLtOJZDGUN4"
    value = {"event_id": EVENT_ID, "hashes": {"sha256": sha}, "signatures": {"hs": {"ed25519:a": SIG}}}
    data = json_cbor.encode(value, V2)
    model = cbor2.loads(data)
    k = V2.key_codes
    assert model[k["event_id"]][0] == json_cbor.MARK_EVENT_ID_URL and len(model[k["event_id"]]) == 33
    assert isinstance(model[k["hashes"]][k["sha256"]], bytes) and len(model[k["hashes"]][k["sha256"]]) == 33
    assert json_cbor.decode(data, V2) == value
    assert len(data) < len(json_cbor.encode(value, V1))
    # non-zero trailing bits: decoding then encoding would not give the same text
    not_exact = sha[:-1] + "5"
    assert json_cbor.string_to_binary(not_exact) is None
    assert json_cbor.decode(json_cbor.encode({"x": not_exact}, V2), V2) == {"x": not_exact}
    # short base64-looking words and URL-safe tokens stay text
    for text in ("abcd", "Hello", "syt_YWxpY2U_KSVFyxKdsZaDhMBcFxNm_2c0GHk", "s33_14_0_1_1_1_1_14_0_1_1_1_1_1"):
        assert json_cbor.string_to_binary(text) is None
    # room v12 room IDs are "!" + URL-safe base64 of 32 bytes
    room = "!t1uJ9a9-s-hz8paJZT9LSMaZfYScK3MEvKWzuu6MVFM"
    assert json_cbor.string_to_binary(room)[0] == json_cbor.MARK_ROOM_ID_URL
    assert json_cbor.string_to_binary("!AbCdEfGhIjKlMnOp:example.org") is None
    # binary keys (event IDs as receipt map keys) round-trip too
    receipts = {EVENT_ID: {"m.read": {"@a:hs": {"ts": 1}}}}
    assert json_cbor.decode(json_cbor.encode(receipts, V2), V2) == receipts


def test_bad_binary_fields_are_rejected():
    with pytest.raises(CodecError, match="marker"):
        json_cbor.decode(cbor2.dumps({"x": b"\x09" + bytes(32)}), V2)
    for mark in json_cbor.BINARY_FORMS:  # every marker's text form comes back as bytes and again as text
        for raw in (bytes(range(32)), bytes(range(200, 232))):  # the second needs "+/" or "-_"
            text = json_cbor.binary_to_string(bytes([mark]) + raw)
            assert json_cbor.binary_to_string(json_cbor.string_to_binary(text)) == text
    with pytest.raises(CodecError, match="shorter"):
        json_cbor.decode(cbor2.dumps({"x": b"\x00" + bytes(3)}), V2)
    with pytest.raises(CodecError, match="expected a string"):
        json_cbor.decode(cbor2.dumps({"x": b"\x00" + bytes(32)}), V1)


# ------------------------------------------------------- property tests

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)  # Matrix canonical JSON's range
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.sampled_from(["m.room.message", "join", "M_FORBIDDEN", "m.text", EVENT_ID, SIG, "", "8", "-1",
                       "!t1uJ9a9-s-hz8paJZT9LSMaZfYScK3MEvKWzuu6MVFM", "$" + SIG[:43], "main"])
)
json_keys = st.text() | st.sampled_from(["type", "membership", "msgtype", "event_id", "1", "8", "-1", "body", "errcode", EVENT_ID])
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_round_trip_is_exact_v1(value):
    assert same_json(json_cbor.decode(json_cbor.encode(value, V1), V1), value)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_round_trip_is_exact_v2(value):
    assert same_json(json_cbor.decode(json_cbor.encode(value, V2), V2), value)


@settings(max_examples=1000)
@given(json_values)
def test_round_trip_through_json_text(value):
    text = json.dumps(value).encode()
    assert same_json(json.loads(json_cbor.cbor_to_json(json_cbor.json_to_cbor(text, V2), V2)), value)


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_exceptions(data):
    for table in TABLES:
        try:
            json_cbor.decode(data, table)
        except CodecError:
            pass


def test_special_numbers_round_trip():
    for value in (-0.0, 1.0, 1e308, 5e-324, 2**53 - 1, -(2**53) + 1, 0):
        assert same_json(json_cbor.decode(json_cbor.encode([value], V2), V2), [value])
    assert json_cbor.cbor_to_json(json_cbor.json_to_cbor(b"[1.0,-0.0,1e+300,5e-324]", V2), V2) == b"[1.0,-0.0,1e+300,5e-324]"


NOT_MATRIX_NUMBERS = [float("nan"), float("inf"), float("-inf"), 2**53, -(2**53), 2**64, -(2**64) - 1, 2**200,
                      10**9600]


@pytest.mark.parametrize("value", NOT_MATRIX_NUMBERS, ids=lambda v: f"{v:.3g}" if isinstance(v, float) else
                         f"{v.bit_length()} bits")
def test_numbers_matrix_json_does_not_have_are_refused_both_ways(value):
    for table in TABLES:
        with pytest.raises(json_cbor.NotMatrixJson):
            json_cbor.encode({"n": [value]}, table)
        with pytest.raises(json_cbor.NotMatrixJson):  # as a peer sends it (a bignum, a CBOR NaN)
            json_cbor.decode(cbor2.dumps({"n": [value]}), table)
    if isinstance(value, float) or value.bit_length() > 14000:  # what json.dumps cannot write: an error, not a crash
        with pytest.raises(CodecError):
            json_cbor.dump_json({"n": value})


@pytest.mark.parametrize("body", [b"NaN", b"[Infinity]", b'{"a":-Infinity}', b"1e400", b"[-1e400]",
                                  b"9007199254740992", b"-9007199254740992", b"[" + b"9" * 9600 + b"]",
                                  b"-" + b"1" * 5000])
def test_json_text_with_such_numbers_is_refused(body):
    with pytest.raises(json_cbor.NotMatrixJson):
        json_cbor.parse_json(body)
    with pytest.raises(json_cbor.NotMatrixJson):
        json_cbor.json_to_cbor(body, V2)


def test_the_range_edges_are_json():
    assert json_cbor.parse_json(b"[9007199254740991,-9007199254740991,1E2,0.5]") == [2**53 - 1, -(2**53) + 1, 100.0, 0.5]


def test_non_ascii_and_empty_containers():
    value = {"body": "héllo 🌍 \u0000 \u2028", "": {}, "x": [], "y": [{}], "émoji🙂": "ok"}
    for t in TABLES:
        assert json_cbor.decode(json_cbor.encode(value, t), t) == value


# ------------------------------------------------------------ hostile CBOR


@pytest.mark.parametrize(
    "hexdata,reason",
    [
        ("c074323031332d30332d32315432303a30343a30305a", "tag 0"),  # a date: JSON has none
        ("d9010283010203", "tag 258"),  # a set
        ("d81c01", "tag 28"),  # shared value
        ("e0", "simple"),  # unassigned simple value
        ("f7", "undefined"),
        ("a201020103", "Duplicate"),  # duplicate map key
        ("a1f501", "bool"),  # a map key that is not text/int/bytes
        ("a11a0001869f01", "unknown key code"),
        ("5bffffffffffffffff", "premature"),  # announces 2^64 bytes
        ("9bffffffffffffffff", "premature"),
        ("", "premature"),
        ("ff", "invalid"),
        ("0102", "after the item"),  # trailing data: cbor2.loads (6.x) would ignore it
        ("a0a0", "after the item"),
    ],
)
def test_hostile_cbor_is_a_clean_error(hexdata, reason):
    with pytest.raises(CodecError, match=reason if reason == "after the item" else None):
        json_cbor.decode(bytes.fromhex(hexdata), V2)


def test_decode_prefix_says_where_the_item_ends():
    value, end = json_cbor.decode_prefix(bytes.fromhex("820102") + b"rest", V2)
    assert (value, end) == ([1, 2], 3)


def test_nesting_is_bounded_both_ways():
    deep = []
    for _ in range(json_cbor.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(CodecError, match="nesting"):
        json_cbor.encode(deep, V2)
    with pytest.raises(CodecError):
        json_cbor.decode(b"\x81" * 100_000 + b"\x01", V2)


EVENT_RAW = bytes(range(32))
EVENT_TEXT = "$" + __import__("base64").urlsafe_b64encode(EVENT_RAW).decode().rstrip("=")  # the same in both alphabets


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("model", [
    {EVENT_TEXT: 1, b"\x01" + EVENT_RAW: 2},  # the text of an event ID and its binary form
    {b"\x01" + EVENT_RAW: 1, b"\x02" + EVENT_RAW: 2},  # markers 0x01 and 0x02 spell this one the same
    {27: "v1's code", -1: "v2's alias"},  # two codes of "body"
], ids=["text and bytes", "two markers", "two codes"])
def test_two_keys_of_one_name_are_refused(model, ordered):
    """§6.6: duplicate keys are refused, also when two different CBOR keys
    decode to one name (the plain decoder used to keep the last)."""
    with pytest.raises(CodecError, match="twice"):
        json_cbor.decode(cbor2.dumps(model), V2, ordered=ordered)


def test_a_code_and_the_text_of_its_name_is_the_one_pair_allowed():
    """§6.2 (MSC3079): the text wins; the ordered decoder (no encoder writes
    both) refuses it."""
    data = cbor2.dumps({-1: "code", "body": "text"})
    assert json_cbor.decode(data, V2) == {"body": "text"}
    with pytest.raises(CodecError, match="twice"):
        json_cbor.decode(data, V2, ordered=True)


@pytest.mark.parametrize("model", [{10**5000: 1}, {2: 10**5000}, {"x": [10**5000]}, {2: [10**5000]}],
                         ids=["key code", "value code", "number", "escaped value"])
def test_a_huge_integer_is_a_clean_error_wherever_it_stands(model):
    """A bignum of 5000 digits where a key or value code belongs: the error
    message must not print it (``str`` of an int beyond 4300 digits raises
    ValueError, which escaped as a crash)."""
    with pytest.raises(CodecError):
        json_cbor.decode(cbor2.dumps(model), V2)


def test_short_repr_is_bounded_and_safe_for_any_value():
    assert json_cbor.short_repr(10**5000) == f"<integer of {(10**5000).bit_length()} bits>"
    assert json_cbor.short_repr([1, 10**5000]) == "<list>"
    assert json_cbor.short_repr(-(2**64) + 1) == str(-(2**64) + 1)
    assert len(json_cbor.short_repr("x" * 10**6)) <= 41


def table_code_bomb(cap: int) -> bytes:
    """A CBOR array of ``{"kind": "sender_notification_permission"}``, 3
    bytes each (a key code and a value code), up to ``cap`` bytes: 14 times
    ``cap`` of JSON."""
    item = json_cbor.encode({"kind": "sender_notification_permission"}, V2)
    assert len(item) == 3
    n = (cap - 9) // len(item)
    return b"\x9b" + n.to_bytes(8, "big") + item * n


def test_a_body_of_table_codes_is_stopped_at_the_cap_before_its_json_is_built():
    """§5.2: the cap bounds what a body decodes to, not only the inflated
    CBOR.  The decoder's budget stops it (``decode`` writes no JSON)."""
    bomb = table_code_bomb(100_000)
    with pytest.raises(json_cbor.BodyTooLarge):
        json_cbor.decode(bomb, V2, max_output=100_000)
    with pytest.raises(json_cbor.BodyTooLarge):
        json_cbor.cbor_to_json(bomb, V2, max_output=100_000)
    assert len(json_cbor.cbor_to_json(bomb, V2)) > 13 * 100_000  # no cap given: no cap applied


def test_the_cap_on_json_is_exact():
    """What the budget does not count (digits, ``false``, escapes) the final
    length check does: a body of exactly the cap passes, one byte less fails."""
    data = json_cbor.encode({"type": "m.room.message", "a": [False] * 50, "b": "\u0000" * 50}, V2)
    body = json_cbor.cbor_to_json(data, V2)
    assert len(body) > 5 * len(data)  # the budget counted little of it
    assert json_cbor.cbor_to_json(data, V2, max_output=len(body)) == body
    with pytest.raises(json_cbor.BodyTooLarge):
        json_cbor.cbor_to_json(data, V2, max_output=len(body) - 1)


_KEYS = st.sampled_from(["", "a", "type", "msgtype", "membership", "kind", "body", "join", "pdus"]) | st.text(max_size=5)
_BUDGET_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5) | st.sampled_from(["m.text", "join", "sender_notification_permission", "\u0000"]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(_KEYS, c, max_size=4), max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(_BUDGET_VALUES)
def test_the_budget_never_refuses_a_body_its_cap_holds(value):
    """The decoder's budget is a lower bound of the JSON it writes: a body
    is never refused under a cap of exactly its own size."""
    data = json_cbor.encode(value, V2)
    body = json_cbor.cbor_to_json(data, V2)
    assert json_cbor.cbor_to_json(data, V2, max_output=len(body)) == body


def test_lone_surrogate_is_a_clean_error():
    with pytest.raises(CodecError):
        json_cbor.json_to_cbor(b'{"body":"\\ud800"}', V2)


def test_not_json_is_a_clean_error():
    for body in (b"{", b"\xff\xfe", b"", b"{'a':1}"):
        with pytest.raises(CodecError):
            json_cbor.parse_json(body)


# ------------------------------------------------------------ table loading


def _doc(**over):
    doc = {"format": "coap-gateway/cbor-table", "version": 9, "extends": None, "binary_fields": False,
           "keys": [[1, "a"], [2, "b"]], "values": {}}
    doc.update(over)
    return doc


@pytest.mark.parametrize(
    "doc,message",
    [
        (_doc(keys=[[1, "a"], [1, "b"]]), "used twice"),
        (_doc(keys=[[1, "a"], [2, "a"]]), "listed twice"),
        (_doc(keys=[[1, "a"], ["2", "b"]]), "integer"),
        (_doc(values={"t": [[0, "x"], [0, "y"]]}), "used twice"),
        (_doc(values={"t": [[0, "x"], [1, "x"]]}), "listed twice"),
        (_doc(values={"t": [[-1, "x"]]}), "non-negative"),
        (_doc(format="other"), "not a"),
        (_doc(binary_fields="yes"), "binary_fields"),
    ],
)
def test_bad_tables_fail_to_load(doc, message):
    with pytest.raises(TableError, match=message):
        parse_cbor_table(doc)


def test_alias_must_be_shorter_than_inherited_code():
    base = parse_cbor_table(_doc(keys=[[1, "a"], [30, "b"]]))
    ext = {"format": "coap-gateway/cbor-table", "version": 10, "extends": 9, "binary_fields": True,
           "keys": [[-1, "b"], [40, "c"]], "values": {}}
    table = parse_cbor_table(ext, base)
    assert table.key_codes["b"] == -1 and table.key_names[30] == "b" and table.key_names[-1] == "b"
    with pytest.raises(TableError, match="not shorter"):
        parse_cbor_table(dict(ext, keys=[[31, "b"]]), base)
    with pytest.raises(TableError, match="used twice"):
        parse_cbor_table(dict(ext, keys=[[1, "z"]]), base)


def test_duplicate_json_member_in_a_table_file_fails():
    from coap_gateway.codec.datafiles import parse_json_document

    with pytest.raises(TableError, match="duplicate member"):
        parse_json_document(b'{"a": 1, "a": 2}')


def test_spec_number_vectors_6_1():
    """docs/protocol.md §6.1: numbers keep their JSON kind (vectors quoted there)."""
    from coap_gateway.codec import load_profile
    from coap_gateway.codec.json_cbor import cbor_to_json, json_to_cbor

    table = load_profile("lb3").cbor_table
    for text, cbor in ((b'{"a":1.0}', "a16161f93c00"), (b'{"a":1}', "a1616101"), (b'{"a":-0.0}', "a16161f98000")):
        assert json_to_cbor(text, table).hex() == cbor
        assert cbor_to_json(bytes.fromhex(cbor), table) == text
    assert cbor_to_json(json_to_cbor(b'{"a":1.5e0}', table), table) == b'{"a":1.5}'  # spelling not kept


def test_spec_binary_threshold_6_4_does_not_count_the_sigil():
    from coap_gateway.codec import load_profile
    from coap_gateway.codec.json_cbor import json_to_cbor

    table = load_profile("lb3").cbor_table
    sixteen = "$" + "A" * 21 + "Q"  # 22 characters after the sigil: 16 bytes
    fifteen = "$" + "A" * 20  # 20 characters: 15 bytes
    assert json_to_cbor(('{"event_id":"%s"}' % sixteen).encode(), table)[2] == 0x51  # bytes(17): marker + 16
    assert json_to_cbor(('{"event_id":"%s"}' % fifteen).encode(), table)[2] == 0x75  # text(21)
