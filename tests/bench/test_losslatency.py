"""Latency under loss in virtual time (bench/losslatency.py): the in-process
homeserver, runs that once lost a message, and the targets' arithmetic.

No Synapse: the runs are the gateways' own code over emulated links in
virtual time (see the module's docstring for what the stand-in is)."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench import targets
from bench.losslatency import (
    SEND_PREFIX,
    SYNC,
    MemoryHomeserver,
    percentile,
    run_in_virtual_time,
    summarise,
    sync_token,
)
from tests.helpers.loops import run_in_fresh_loop

TOKENS = {"tok-a": "@alice:localhost", "tok-b": "@bob:localhost"}


def test_the_stand_in_homeserver_answers_as_synapse_does():
    async def scenario():
        hs = MemoryHomeserver(TOKENS)
        body = json.dumps({"msgtype": "m.text", "body": "hi"}).encode()
        first = await hs.fetch("PUT", SEND_PREFIX + "t1", body=body, token="tok-a")
        again = await hs.fetch("PUT", SEND_PREFIX + "t1", body=body, token="tok-a")  # a retried send
        assert first.status == 200 and again.body == first.body and len(hs.events) == 1
        assert (await hs.fetch("GET", SYNC, token="nobody")).status == 401
        # the sender's own event carries its transaction ID, the other's does not
        mine = json.loads((await hs.fetch("GET", f"{SYNC}?since={sync_token(0)}&timeout=0", token="tok-a")).body)
        theirs = json.loads((await hs.fetch("GET", f"{SYNC}?since={sync_token(0)}&timeout=0", token="tok-b")).body)
        (room,) = mine["rooms"]["join"].values()
        (event,) = room["timeline"]["events"]
        assert event["unsigned"]["transaction_id"] == "t1" and event["content"]["body"] == "hi"
        (other,) = next(iter(theirs["rooms"]["join"].values()))["timeline"]["events"]
        assert "transaction_id" not in other["unsigned"]
        assert mine["next_batch"] == sync_token(1) and list(mine)[0] == "next_batch"
        # a long-poll at the head waits for the next event
        waiting = asyncio.create_task(hs.fetch("GET", f"{SYNC}?since={sync_token(1)}&timeout=30000", token="tok-b"))
        await asyncio.sleep(0)
        assert not waiting.done()
        await hs.fetch("PUT", SEND_PREFIX + "t2", body=body, token="tok-b")
        woken = json.loads((await waiting).body)
        assert woken["next_batch"] == sync_token(2) and "rooms" in woken
        idle = json.loads((await hs.fetch("GET", f"{SYNC}?since={sync_token(2)}&timeout=0", token="tok-a")).body)
        assert "rooms" not in idle and idle["next_batch"] == sync_token(2)
    run_in_fresh_loop(scenario())


def test_a_notification_retransmitted_for_minutes_still_arrives():
    """A notification re-sent for minutes while alice's ACKs were lost: with
    a fixed duplicate window (247 s) her secure layer refused the late copies
    as replays, never acknowledged them, and the observation died — bob's
    last message never reached her.  Found as seed 3 at 30 % loss; since the
    echo rides in the send's answer, the traffic differs and seed 115 is
    such a run (fails with the fixed window, checked when the echo fold
    landed).  With the window following the link's exchange lifetime it arrives."""
    run = run_in_virtual_time(0.3, 115)
    assert all(s is not None for _, _, s in run.latencies), run.latencies
    assert run.duplicates == 0 and run.undecodable == 0
    assert run.retransmissions >= 10  # the link really was that bad


def test_latency_targets_at_20_percent_loss_over_20_seeds():
    runs = [run_in_virtual_time(0.2, seed) for seed in range(1, targets.LOSS_TARGET_SEEDS + 1)]
    summary = summarise(runs)
    (row,) = summary["rows"]
    print(f"\n20 % loss, {row['seeds']} seeds: median {row['median_s']} s, 95th percentile {row['p95_s']} s, "
          f"max {row['max_s']} s, {row['retransmissions_per_run']} retransmissions per run")
    assert row["messages"] == 6 * targets.LOSS_TARGET_SEEDS
    assert row["undelivered"] == row["duplicates"] == row["undecodable"] == 0
    results = {"loss_latency": summary}
    for key in ("loss.median", "loss.p95"):
        target = targets.BY_KEY[key]
        assert target.measure(results) <= target.limit, (key, target.measure(results))


def test_a_lost_or_doubled_message_fails_the_targets_whatever_the_times():
    row = {"loss": 0.2, "seeds": 20, "undelivered": 1, "duplicates": 0, "undecodable": 0, "median_s": 10.0,
           "p95_s": 20.0}
    assert targets.BY_KEY["loss.median"].measure({"loss_latency": {"rows": [row]}}) == float("inf")
    assert targets.BY_KEY["loss.p95"].measure({"loss_latency": {"rows": [dict(row, seeds=5)]}}) is None


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5), ([5.0], 0.95, 5.0), (list(range(101)), 0.95, 95.0)])
def test_percentile_is_numpys_linear(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_a_notification_acknowledged_after_ten_minutes_keeps_its_observation():
    """At 100 bit/s with 2 s of delay a notification's retransmissions run
    for many minutes (here 14 of them: 15 minutes; a queue ahead of it
    stretches every wait further).  alice's ACKs are lost for 10.5 minutes,
    then the 11th retransmission is acknowledged.  The server's push loop
    must wait for the message layer — an ACK, an RST or the last
    retransmission — not end the observation on a clock of its own: it gave
    up after 600 s and ended the observation in silence, so alice's
    gateway, which had the notification and acknowledged it, never knew,
    and bob's next message waited for its hourly check."""
    import looptime

    from bench.losslatency import radio, two_devices

    async def scenario():
        loop = asyncio.get_running_loop()
        async with two_devices(7, alice_retransmit=14) as world:
            world.reshape_alice(radio(0.0))
            alice_end, _ = world.links[0]
            push = world.servers[0].gateway.sync_push
            alice_push = world.clients[0].gateway.sync_push
            (observation,) = push.observations.values()
            registrations, timeouts = alice_push.counters.registrations, world.servers[0].endpoint.counters.timeouts
            alice_end.stages[0].set_profile(radio(1.0), loop.time())  # alice → server: everything lost
            t0 = loop.time()
            assert await world.bob.send("while alice's ACKs are lost")
            assert await world.alice.wait_for("while alice's ACKs are lost", t0 + 120) is not None
            await asyncio.sleep(t0 + 630 - loop.time())  # retransmission 11 comes at ~650 s
            alice_end.stages[0].set_profile(radio(0.0), loop.time())
            retransmitted = world.servers[0].endpoint.counters.retransmissions
            await asyncio.sleep(300)  # the next retransmission is acknowledged
            assert push.observations and next(iter(push.observations.values())) is observation
            assert world.servers[0].endpoint.counters.timeouts == timeouts
            t1 = loop.time()
            assert await world.bob.send("and after")
            arrived = await world.alice.wait_for("and after", t1 + 120)
            assert arrived is not None, "the observation ended unseen: pushed nothing more"
            assert alice_push.counters.registrations == registrations
            assert world.alice.seen["while alice's ACKs are lost"] and len(world.alice.seen["and after"]) == 1
            return retransmitted

    loop = looptime.new_event_loop(start=0.0)
    try:
        retransmitted = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert retransmitted >= 10  # the notification really was retransmitted for 10 minutes
