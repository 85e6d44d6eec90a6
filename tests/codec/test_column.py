"""The timeline form's column (codec.column): event IDs and Synapse tokens as raw bytes, byte by byte."""

from __future__ import annotations

import base64
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.codec import column, load_profile, payload
from coap_gateway.errors import CodecError

LB4 = load_profile("lb4")
#: a token as Synapse 1.163 issued it to @erin-t1 (synapse/handlers/auth.py's format)
TOKEN = "syt_ZXJpbi10MQ_zdXqPHRdLvnuKSoiqmAN_2JL63s"
EVENT_ID = "$" + "Ab" * 21 + "w"


def synapse_token(prefix: str, localpart: str, letters: str) -> str:
    """Synapse's generate_access_token / generate_refresh_token, written again."""
    base = f"{prefix}_{base64.b64encode(localpart.encode()).decode().rstrip('=')}_{letters}"
    num, crc = zlib.crc32(base.encode()), ""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    while num:
        num, rem = divmod(num, 62)
        crc = alphabet[rem] + crc
    return f"{base}_{crc.rjust(6, '0')}"


def test_a_token_entry_byte_by_byte():
    """kind 0 (syt), the localpart's length and bytes, the 20 letters as a
    base-52 number (a–z = 0–25, A–Z = 26–51) in 15 bytes; the CRC is not sent."""
    entry = column.token_entry(TOKEN)
    letters = "zdXqPHRdLvnuKSoiqmAN"
    number = 0
    for c in letters:
        number = number * 52 + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".index(c)
    assert entry == bytes([0, 7]) + b"erin-t1" + number.to_bytes(15, "big")
    assert entry.hex() == "00076572696e2d743101f0d2825c905225097343f8b5782f"
    assert TOKEN == synapse_token("syt", "erin-t1", letters)


def test_only_tokens_that_come_back_exactly_go_to_the_column():
    good = synapse_token("syr", "élan", "a" * 20)
    assert column.token_entry(good)[0] == 1
    assert column.token_entry(TOKEN[:-1] + "t") is None  # wrong CRC
    assert column.token_entry(TOKEN.replace("ZXJpbi10MQ", "ZXJpbi10MR")) is None  # non-zero trailing bits
    assert column.token_entry(synapse_token("syt", "erin", "a" * 19 + "1")) is None  # a digit among the letters
    assert column.token_entry("syt_" + TOKEN[4:] + "x") is None
    assert column.token_entry(synapse_token("sya", "erin", "a" * 20)) is None  # not a kind Synapse issues


def test_marks_in_the_body_and_the_column():
    doc = {"access_token": TOKEN, "e": [EVENT_ID, "%", "$$", "%%x", "&"],
           "c": {"body": "see you at 5pm", "x": {"body": "$"}}, EVENT_ID: "keys stay"}
    original = json.loads(json.dumps(doc))
    texts, randoms = column.to_column(doc, tokens=True, texts=True)
    # a text made only of one mark is escaped like any string, not moved
    assert doc == {"access_token": "%", "e": ["$", "%%", "$$$", "%%x", "&&"], "c": {"body": "&", "x": {"body": "$$"}},
                   EVENT_ID: "keys stay"}
    # texts as CBOR text strings, in walk order; then the random strings
    assert texts.hex() == "6e" + b"see you at 5pm".hex()
    assert randoms == column.token_entry(TOKEN) + base64.urlsafe_b64decode(EVENT_ID[1:] + "=")
    column.from_column(doc, texts + randoms, tokens=True, texts=True)
    assert doc == original


@pytest.mark.parametrize("body,col,tokens", [
    (["%"], b"", True),  # a mark, no entry
    (["%"], bytes([0, 7]) + b"erin-t1" + b"\xff" * 15, True),  # random part ≥ 52**20
    (["%"], bytes([2, 1]) + b"e" + bytes(15), True),  # no third kind of token
    (["%"], bytes([0, 0]) + bytes(15), True),  # an empty localpart
    (["%"], bytes([0, 7]) + b"erin-t1" + bytes(14), True),  # truncated
    (["%"], column.token_entry(TOKEN), False),  # tokens not in this profile's column
    (["$"], bytes(31), True),
    ([], bytes(32), True),  # an entry nobody names
    ({"body": "&"}, bytes.fromhex("6161"), True),  # texts not in this profile's column
    ({"body": "&"}, bytes.fromhex("4161"), True),  # a byte string is no text
    ({"body": "&"}, bytes.fromhex("62ff"), True),  # truncated
])
def test_a_column_that_does_not_match_its_body_is_refused(body, col, tokens):
    with pytest.raises(CodecError):
        column.from_column(body, col, tokens, texts=col[:1] != b"\x61")


@pytest.mark.parametrize("entry", [
    "7802" + b"hi".hex(),  # a 1-byte length where the header holds it
    "7b" + (2).to_bytes(8, "big").hex() + b"hi".hex(),  # an 8-byte length
    "7900" + "18" + b"x".hex() * 24,  # a 2-byte length of 24
    "7f62" + b"hi".hex() + "ff",  # indefinite length
    "c26161",  # a tag
    "62fffe",  # not UTF-8
    "63eda080",  # a surrogate, as UTF-8 bytes
    "78",  # a header cut short
])
def test_a_text_entry_has_its_shortest_definite_length(entry):
    """§5.1: a text entry is a CBOR text string with the shortest length;
    another spelling of the same text is refused, not read."""
    with pytest.raises(CodecError):
        column.from_column({"body": "&"}, bytes.fromhex(entry), tokens=True, texts=True)
    text = "x" * 24
    doc = {"body": "&"}
    column.from_column(doc, bytes.fromhex("7818") + text.encode(), tokens=True, texts=True)
    assert doc == {"body": text}


def test_a_mark_of_a_kind_the_column_does_not_have_is_refused():
    """§5.1: each kind (text, event_id, token) only where the table lists it."""
    raw = base64.urlsafe_b64decode(EVENT_ID[1:] + "=")
    with pytest.raises(CodecError, match="event"):
        column.from_column(["$"], raw, tokens=True, texts=True, event_ids=False)
    doc = [EVENT_ID]
    assert column.to_column(doc, tokens=True, texts=True, event_ids=False) == [b"", b""] and doc == [EVENT_ID]
    column.from_column(doc, b"", tokens=True, texts=True, event_ids=False)
    assert doc == [EVENT_ID]


def test_a_login_answer_travels_with_its_token_in_the_column():
    answer = json.dumps({"user_id": "@erin-t1:localhost", "access_token": TOKEN, "home_server": "localhost",
                         "device_id": "WVWIYXURMJ"}, separators=(",", ":")).encode()
    lb3 = load_profile("lb3")
    form, plain = payload.body_to_payload(answer, "application/json", LB4), payload.body_to_payload(answer, "application/json", lb3)
    assert form.content_format == payload.options.CF_TIMELINE and plain.content_format is None
    assert payload.payload_to_body(form.payload, form.content_format, LB4)[0] == payload.payload_to_body(plain.payload, None, lb3)[0]
    # measured: 84 B → 63 B + the 3-byte option
    assert len(form.payload) + 3 <= len(plain.payload) - 15, (len(form.payload), len(plain.payload))


tokens = st.builds(synapse_token, st.sampled_from(["syt", "syr"]), st.text(min_size=1, max_size=12),
                   st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=20, max_size=20))
strings = st.text(alphabet="$%&ab", max_size=4) | tokens | st.sampled_from([EVENT_ID, TOKEN, "$" + "A" * 43])
values = st.recursive(strings | st.integers(0, 9), lambda c: st.lists(c, max_size=4) | st.dictionaries(
    strings | st.just("body"), c, max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(values)
def test_the_column_round_trips(doc):
    original = json.loads(json.dumps(doc))
    sections = column.to_column(doc, tokens=True, texts=True)
    column.from_column(doc, b"".join(sections), tokens=True, texts=True)
    assert doc == original


def test_the_walk_order_is_the_one_the_spec_gives():
    """§5.1: an object's own string values first, then what it holds:
    ``{"a":{"x":s1},"b":s2}`` visits s2 before s1."""
    first, second = EVENT_ID, "$" + "c-" * 21 + "Q"
    doc = {"a": {"x": first}, "b": second}
    _, randoms = column.to_column(doc, tokens=False)
    assert randoms == base64.urlsafe_b64decode(second[1:] + "=") + base64.urlsafe_b64decode(first[1:] + "=")
