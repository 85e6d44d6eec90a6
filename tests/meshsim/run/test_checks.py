"""What a run is judged by: the physical bound, the assertions per message, the room history."""

from __future__ import annotations

from meshsim.run import Copy, evaluate_assertions, history_counts, physical_bound


# ---------------------------------------------------------------- the physical bound


def test_the_bound_passes_when_traffic_took_its_time() -> None:
    # 2 × 100 bytes at 100 bit/s need 16 s; the last arrived 17 s after the window began
    copies = {"a->b": [Copy(10.0, 100.0, 18.0, 100, 58), Copy(11.0, 100.0, 27.0, 100, 58)]}
    result = physical_bound(copies, [("shaped", 10.0, 30.0)])
    window = result["windows"][0]
    assert result["ok"] and window["ok"]
    assert (window["busiest_link"], window["bits"], window["min_seconds"], window["span_seconds"]) == ("a->b", 1600, 16.0, 17.0)


def test_the_bound_fails_when_traffic_beat_physics() -> None:
    copies = {"a->b": [Copy(10.0, 100.0, 12.0, 100, 58), Copy(10.5, 100.0, 14.0, 100, 58)],
              "b->a": [Copy(10.0, None, 10.0, 5000, 4958)]}  # unshaped: needs no time
    result = physical_bound(copies, [("shaped", 10.0, 30.0)])
    assert not result["ok"]
    assert "a->b carried 1600 bits, which needs 16.000 s, in 4.000 s" in result["detail"]
    assert result["windows"][0]["busiest_link"] == "a->b"
    assert physical_bound({}, [("empty", 0.0, 1.0)], early_deliveries=2)["ok"] is False


def test_copies_outside_a_window_do_not_count_in_it() -> None:
    copies = {"a->b": [Copy(1.0, 100.0, 9.0, 100, 58), Copy(20.0, 100.0, 28.0, 100, 58)]}
    windows = physical_bound(copies, [("first", 0.0, 10.0), ("second", 10.0, 30.0)])["windows"]
    assert [w["bits"] for w in windows] == [800, 800]
    assert [w["span_seconds"] for w in windows] == [9.0, 18.0]


def test_assertions_per_message() -> None:
    def message(msg_id: str, latency: float | None, appearances: int = 1, history: int | None = 1) -> dict:
        received = None if latency is None else 10.0 + latency
        return {"id": msg_id, "send_at": 10.0, "history_count": history,
                "deliveries": {"bob": {"received_at": received, "latency": latency, "appearances": appearances if received else 0,
                                       "event_ids": ["$x"] if received else []}}}

    messages = [message("a#1", 5.0), message("a#2", 50.0), message("b", None), message("c", 1.0, history=2)]
    groups = {"a": ["a#1", "a#2"]}
    results = evaluate_assertions([
        {"check": "delivered", "messages": ["a"], "within": None},
        {"check": "latency", "messages": ["a"], "within": 30.0},
        {"check": "delivered", "messages": ["b"], "within": None},
        {"check": "exactly_once", "messages": ["c"], "within": None},
    ], messages, groups)
    assert [r["passed"] for r in results] == [True, False, False, False]
    assert results[0]["message_ids"] == ["a#1", "a#2"]
    assert results[1]["detail"] == "a#2→bob: latency 50.0 s > 30 s"
    assert results[2]["detail"] == "b→bob: not received"
    assert "2 times in the room's history" in results[3]["detail"]


# ---------------------------------------------------------------- the room history


def test_history_counts_each_message_by_body_and_only_messages() -> None:
    chunk = [
        {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "ping"}},
        {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "pong"}},
        {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "pong"}},  # stored twice
        {"type": "m.room.topic", "content": {"body": "ping"}},  # not a message
        {"type": "m.room.message", "content": {"body": "someone else's"}},
        {"type": "m.room.redaction", "content": None},
    ]
    counts = history_counts(chunk, {"ping": "p1", "pong": "p2", "never": "p3"})
    assert counts == {"p1": 1, "p2": 2, "p3": 0}
    assert list(counts) == ["p1", "p2", "p3"]  # in the order the messages are given
