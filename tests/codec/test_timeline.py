"""The timeline form (codec.timeline): timestamps as differences, byte for byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.codec import load_profile, options, payload, timeline
from coap_gateway.codec.compression import compress, decompress
from coap_gateway.errors import CodecError, GatewayError
from tests.helpers.sync_bodies import ROOM

LB4, LB3, LB2 = load_profile("lb4"), load_profile("lb3"), load_profile("lb2")


def first_sync(events: int = 10) -> bytes:
    """A first sync as Synapse writes it: events a few ms apart, written at one moment."""
    written = 1796383627722
    timeline_events = []
    for i in range(events):
        ts = written - 257 + 21 * i + (i % 3)
        timeline_events.append({
            "content": {"body": f"message number {i}, see you at the pier", "msgtype": "m.text"},
            "event_id": "$" + f"{i:02d}" * 21 + "w", "origin_server_ts": ts, "sender": "@erin:localhost",
            "type": "m.room.message", "unsigned": {"age": written - ts, "membership": "join"}})
    state = [{"content": {"join_rule": "invite"}, "event_id": "$" + "Jr" * 21 + "w", "origin_server_ts": written - 300,
              "sender": "@erin:localhost", "state_key": "", "type": "m.room.join_rules", "unsigned": {"age": 300}}]
    doc = {"next_batch": "s34_3_0_1_1_1_1_6_0_1_1_1_1_1",
           "rooms": {"join": {ROOM: {"timeline": {"events": timeline_events, "limited": False,
                                                  "prev_batch": "s1_2_0_1_1_1_1_3_0_1_1_1_1_1"},
                                     "state": {"events": state}, "unread_notifications": {}}}}}
    return json.dumps(doc, separators=(",", ":")).encode()


def test_a_first_sync_travels_with_its_timestamps_as_differences():
    body = first_sync()
    form = payload.body_to_payload(body, "application/json", LB3)
    generic = payload.body_to_payload(body, "application/json", LB2)  # same table and preset, no text dictionary
    assert form.content_format == options.CF_TIMELINE and generic.content_format is None
    back, content_type = payload.payload_to_body(form.payload, form.content_format, LB3)
    assert content_type == "application/json" and json.loads(back) == json.loads(body)
    # byte for byte what the generic path gives the client (CBOR's key order)
    assert back == payload.payload_to_body(generic.payload, None, LB2)[0]
    # 11 timestamps and 11 ages: ~5 B each as deflate sees them, 1-2 B as differences
    # (and the text dictionary knows some of the words): 307 B → 256 B here
    assert len(form.payload) + 3 <= len(generic.payload) - 40, (len(form.payload), len(generic.payload))


def test_the_differences_byte_by_byte():
    """ts 1000, 1021, 1019; ages written at 1100: differences 1000, 21, -2;
    ages 100, then the change of ts + age: 0, 0."""
    events = [{"origin_server_ts": ts, "unsigned": {"age": 1100 - ts}} for ts in (1000, 1021, 1019)]
    doc = json.loads(json.dumps({"chunk": events}))
    timeline._walk(doc, encode=True)
    assert [(e["origin_server_ts"], e["unsigned"]["age"]) for e in doc["chunk"]] == [(1000, 100), (21, 0), (-2, 0)]
    timeline._walk(doc, encode=False)
    assert doc == {"chunk": events}


def test_bodies_it_does_not_pay_for_go_as_before():
    one = json.dumps({"event_id": "$x", "origin_server_ts": 1796383627722}).encode()
    assert payload.body_to_payload(one, "application/json", LB3).content_format != options.CF_TIMELINE
    assert payload.body_to_payload(first_sync(), "application/json", LB2).content_format != options.CF_TIMELINE
    assert timeline.dictionary(LB2) is None


def test_a_broken_timeline_payload_is_refused():
    with pytest.raises(GatewayError):
        payload.payload_to_body(b"\x00\x01garbage", options.CF_TIMELINE, LB3)
    with pytest.raises(CodecError):  # the timeline form only exists with the compact form's dictionary
        payload.payload_to_body(b"\x03\x00", options.CF_TIMELINE, LB2)
    # differences that add up beyond a Matrix integer
    doc = {"a": [{"origin_server_ts": 2**53 - 1}, {"origin_server_ts": 2**53 - 1}]}
    data = compress(__import__("coap_gateway.codec.json_cbor", fromlist=["encode"]).encode(
        doc, LB3.cbor_table, canonical=False), timeline.dictionary(LB3))
    with pytest.raises(CodecError):
        payload.payload_to_body(data, options.CF_TIMELINE, LB3)
    # a deflate bomb stops at the cap
    bomb = compress(b"\x80" * 100_000, timeline.dictionary(LB3))
    with pytest.raises(GatewayError):
        payload.payload_to_body(bomb, options.CF_TIMELINE, LB3, max_size=10_000)


EVENT_IDS = ["$" + "Ab" * 21 + "w", "$" + "c-" * 21 + "Q", "$" + "A" * 43]  # URL-safe base64 of 32 B


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8)
    | st.sampled_from(EVENT_IDS + ["$", "$$", "$" * 30, "$" + "Ab" * 21 + "+"]),
    # "" sorts before 2-byte codes (join: 24) in canonical CBOR, "x" before
    # 3-byte ones (pdus: 257): keys whose wire order is not the plain order
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["origin_server_ts", "age", "unsigned", "content", "x", "", "join", "pdus"]), children,
        max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_any_body_round_trips(a, b):
    body = json.dumps({"events": [a, b, {"origin_server_ts": 5, "unsigned": {"age": 7}}], "origin_server_ts": 9},
                      separators=(",", ":")).encode()
    for profile in (LB3, LB4):
        cbor = payload.json_cbor.json_to_cbor(body, profile.cbor_table)
        form = timeline.encode(cbor, profile)
        if form is None:  # a difference beyond a Matrix integer: the generic path
            continue
        back = timeline.decode(form, profile, 1 << 20)
        assert json.loads(back) == json.loads(body)
        assert back == payload.json_cbor.cbor_to_json(cbor, profile.cbor_table)  # byte for byte


@pytest.mark.parametrize("profile", [LB3, LB4], ids=["lb3", "lb4"])
def test_members_come_back_in_the_plain_paths_order(profile):
    """§5.1: "the same bytes as the plain path would give".  The walk uses
    canonical order, where "" comes before 2-byte codes and 1-character keys
    before 3-byte ones; the plain decoder writes coded members first."""
    def event(i):
        return {"": 1, "a": 2, "join": 3, "pdus": 4, "origin_server_ts": 1700000000000 + i,
                "content": {"body": "hi", "": [], "x": 0}, "event_id": EVENT_IDS[i % 3]}
    body = json.dumps({"chunk": [event(i) for i in range(30)], "": {"join": 1}}).encode()
    cbor = payload.json_cbor.json_to_cbor(body, profile.cbor_table)
    plain = payload.json_cbor.cbor_to_json(cbor, profile.cbor_table)
    assert plain.index(b'"join":3') < plain.index(b'"":1')  # what the plain path writes
    form = payload.body_to_payload(body, "application/json", profile)
    assert form.content_format == options.CF_TIMELINE
    assert payload.payload_to_body(form.payload, form.content_format, profile)[0] == plain


def test_a_timeline_body_is_capped_as_json_too():
    """§5.2: the cap bounds the JSON the form stands for, not only its
    inflated bytes (timestamps as differences and the column expand)."""
    form = payload.body_to_payload(first_sync(), "application/json", LB4)
    body = payload.payload_to_body(form.payload, form.content_format, LB4)[0]
    assert len(decompress(form.payload, timeline.dictionary(LB4))) < len(body) // 2
    assert payload.payload_to_body(form.payload, form.content_format, LB4, max_size=len(body))[0] == body
    with pytest.raises(payload.json_cbor.BodyTooLarge):
        payload.payload_to_body(form.payload, form.content_format, LB4, max_size=len(body) - 1)


# ------------------------------------------------------------- lb4: template and column


def test_lb4_carries_event_ids_as_a_column_after_the_body():
    """Values only, depth first; ``$``-only strings get one ``$`` more; keys
    (receipts name events by key) stay in the body."""
    first, second = EVENT_IDS[0], EVENT_IDS[1]
    doc = {"a": [{"event_id": first, "origin_server_ts": 10}, {"origin_server_ts": 20, "redacts": second}],
           "b": "$", "c": {first: "$$"}, "d": "$" + "Ab" * 21 + "+"}  # the last: not URL-safe, marker 0x00 stays inline
    cbor = payload.json_cbor.encode(doc, LB4.cbor_table)
    data = decompress(timeline.encode(cbor, LB4), timeline.dictionary(LB4))
    body, end = payload.json_cbor.decode_prefix(data, LB4.cbor_table, ordered=True)
    column = data[end:]
    assert column == payload.json_cbor.string_to_binary(first)[1:] + payload.json_cbor.string_to_binary(second)[1:]
    assert body == {"a": [{"event_id": "$", "origin_server_ts": 10}, {"origin_server_ts": 10, "redacts": "$"}],
                    "b": "$$", "c": {first: "$$$"}, "d": doc["d"]}
    assert json.loads(timeline.decode(timeline.encode(cbor, LB4), LB4, 1 << 20)) == doc


def test_lb4_refuses_a_column_that_does_not_match_its_body():
    cbor = payload.json_cbor.encode({"e": [{"event_id": EVENT_IDS[0], "origin_server_ts": 1},
                                           {"event_id": EVENT_IDS[1], "origin_server_ts": 2}]}, LB4.cbor_table)
    preset = timeline.dictionary(LB4)
    data = decompress(timeline.encode(cbor, LB4), preset)
    for broken in (data[:-32], data[:-1], data + b"\0", data + bytes(32)):
        with pytest.raises(CodecError):
            timeline.decode(compress(broken, preset), LB4, 1 << 20)
    # lb3 has no column: the same bytes after its body are trailing data
    with pytest.raises(CodecError):
        timeline.decode(compress(data, timeline.dictionary(LB3)), LB3, 1 << 20)


def test_a_column_without_event_ids_neither_takes_nor_accepts_them():
    """§5.1: a mark whose kind the table's ``columns`` does not list is
    refused; the encoder of such a profile leaves event IDs in the body."""
    from dataclasses import replace
    no_ids = replace(LB4, timeline=replace(LB4.timeline, columns=frozenset({"token", "text"})))
    doc = {"e": [{"event_id": EVENT_IDS[0], "origin_server_ts": 1}, {"event_id": EVENT_IDS[1], "origin_server_ts": 2}]}
    cbor = payload.json_cbor.encode(doc, LB4.cbor_table)
    ours = timeline.encode(cbor, no_ids)
    assert payload.json_cbor.string_to_binary(EVENT_IDS[0]) in decompress(ours, timeline.dictionary(no_ids))
    assert json.loads(timeline.decode(ours, no_ids, 1 << 20)) == doc
    with pytest.raises(CodecError, match="event"):
        timeline.decode(timeline.encode(cbor, LB4), no_ids, 1 << 20)


def test_lb4_template_holds_the_default_push_rules():
    """A first sync's push rules as Synapse writes them (the template with
    another user name) cost ~20 B instead of ~90."""
    template = LB4.timeline.template["account_data"]
    rules = json.loads(json.dumps(template).replace('"pattern": "user"', '"pattern": "erin"'))
    sync = json.loads(first_sync())
    with_rules = json.dumps({"account_data": rules, **sync}, separators=(",", ":")).encode()
    costs = {}
    for profile in (LB3, LB4):
        sizes = [len(timeline.encode(payload.json_cbor.json_to_cbor(body, profile.cbor_table), profile))
                 for body in (first_sync(), with_rules)]
        costs[profile.name] = sizes[1] - sizes[0]
    assert costs["lb4"] <= 25 and costs["lb3"] >= 80, costs  # measured: 20 vs 94
    assert LB4.timeline.columns == {"event_id", "token", "text"} and LB4.timeline.version == 2
