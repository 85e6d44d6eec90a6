"""The timeline form (codec.timeline): timestamps as differences, byte for byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.codec import load_profile, options, payload, timeline
from coap_gateway.codec.compression import compress
from coap_gateway.errors import CodecError, GatewayError
from tests.helpers.sync_bodies import ROOM

LB3, LB2 = load_profile("lb3"), load_profile("lb2")


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


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["origin_server_ts", "age", "unsigned", "content", "x"]), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_any_body_round_trips(a, b):
    body = json.dumps({"events": [a, b, {"origin_server_ts": 5, "unsigned": {"age": 7}}], "origin_server_ts": 9},
                      separators=(",", ":")).encode()
    for cbor in (payload.json_cbor.json_to_cbor(body, LB3.cbor_table),):
        form = timeline.encode(cbor, LB3)
        if form is None:  # a difference beyond a Matrix integer: the generic path
            continue
        assert json.loads(timeline.decode(form, LB3, 1 << 20)) == json.loads(body)
