"""meshsim's web UI: the pure parts, the server through aiohttp's test client, and the page in headless Chromium.

The browser test drives Chromium over the DevTools protocol with aiohttp's
websocket client (no playwright/selenium: they download browsers of their
own).  It skips when there is no chromium.  Every wait polls a condition
with a deadline.  Each test gets its own address bases (127.X.Y.0 public,
127.X.Y+1.0 private), as in test_fabric.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from meshsim.cli import main
from meshsim.net import Fabric
from meshsim.model import LinkProfile
from meshsim.run import load_scenario
from meshsim.model import Topology
from meshsim.web import WebUI
from meshsim.web.layout import (
    RangeRule,
    format_rate,
    profile_label,
    range_rule_from_toml,
    relink,
)
from meshsim.web.live import ClientQueue, LiveStats
from meshsim.web.server import LINK_FIELDS
from tests.meshsim.support import REPO, open_app, until

PORT = 15683
AB = LinkProfile(rate_bps=1_000_000, delay=0.005, overhead=42)
BC = LinkProfile(rate_bps=500_000, delay=0.010, overhead=42)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chain(bases: tuple[str, str], *, ab: LinkProfile = AB, bc: LinkProfile = BC) -> Topology:
    topology = Topology(seed=1, public_base=bases[0], private_base=bases[1])
    for name in "ABC":
        topology.add_node(name)
    topology.add_link("A", "B", ab)
    topology.add_link("B", "C", bc)
    return topology


POSITIONS = {"A": (0.0, 0.0), "B": (100.0, 0.0), "C": (200.0, 50.0)}


@contextlib.asynccontextmanager
async def serving(ui: WebUI) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(ui.app)) as client:
        yield client


# ---------------------------------------------------------------- pure parts


def test_labels() -> None:
    assert format_rate(None) == "unlimited"
    assert format_rate(100) == "100bit/s"
    assert format_rate(9600) == "9.6kbit/s"
    assert format_rate(10_000_000) == "10Mbit/s"
    assert profile_label(LinkProfile(rate_bps=100, delay=0.5, jitter=0.1, loss=0.05)) == "100bit/s 500ms±100ms 5% loss"
    assert profile_label(LinkProfile(delay=2)) == "unlimited 2s"
    assert profile_label(LinkProfile(rate_bps=1e6, gemodel=(0.01, 0.3, 1, 0), duplicate=0.01)) == "1Mbit/s GE loss 1% dup"


def test_range_rule_from_the_chain_scenario() -> None:
    path = REPO / "meshsim" / "scenarios" / "100bps-chain.toml"
    scenario = load_scenario(path)
    rule = range_rule_from_toml(path.read_text(), scenario)
    assert rule is not None
    assert (rule.range, rule.profile_name, rule.explicit) == (110.0, "fast", frozenset())
    assert rule.profile == scenario.profiles["fast"]
    pair = REPO / "meshsim" / "scenarios" / "100bps-pair.toml"
    assert range_rule_from_toml(pair.read_text(), load_scenario(pair)) is None


def test_relink_follows_the_range_rule() -> None:
    rule = RangeRule(range=15, profile=AB, profile_name="radio", explicit=frozenset({frozenset("AD")}))
    order = "ABCD"
    ab, bc, ad = frozenset("AB"), frozenset("BC"), frozenset("AD")
    # C comes within 15 of B (exactly 15: in range, as in the scenario): a new link
    positions = {"A": (0, 0), "B": (10, 0), "C": (25, 0), "D": (500, 0)}
    assert relink(rule, "C", positions, {ab: True, ad: True}, set(), order) == [("add", "B", "C")]
    # B goes away: both its links fail; the explicit A-D link is never touched, however far
    positions["B"] = (100, 0)
    assert relink(rule, "B", positions, {ab: True, bc: True, ad: True}, set(), order) == [
        ("fail", "A", "B"), ("fail", "B", "C"),
    ]
    assert relink(rule, "D", positions, {ab: True, ad: True}, set(), order) == []
    # B comes back: the rule heals what it failed, not what was failed by hand (A-B here)
    positions["B"] = (10, 0)
    assert relink(rule, "B", positions, {ab: False, bc: False, ad: True}, {bc}, order) == [("heal", "B", "C")]
    # a node without a position links nothing
    assert relink(rule, "C", {**positions, "C": None}, {}, set(), order) == []


def deliver(link: str, size: int = 100, wire: int = 142) -> dict[str, Any]:
    return {"kind": "deliver", "t": 0.0, "pkt": 0, "link": link, "link_pkt": 0, "dup": False, "size": size, "wire": wire}


def test_live_stats_coalesce_a_burst_into_one_entry_per_link_and_kind() -> None:
    stats = LiveStats(rate_window=2.0)
    for i in range(1000):
        stats.feed({"kind": "offer", "t": 0.0, "pkt": i, "link": "A->B", "link_pkt": i, "size": 100})
        stats.feed(deliver("A->B"))
    for _ in range(3):
        stats.feed({"kind": "drop", "t": 0.0, "pkt": 1, "link": "A->B", "link_pkt": 1, "dup": False, "size": 100,
                    "node": "A", "reason": "loss"})
    stats.feed({"kind": "drop", "t": 0.0, "pkt": 2, "link": None, "link_pkt": None, "dup": False, "size": 10,
                "node": "C", "reason": "no_route"})
    stats.feed({"kind": "ingress", "t": 0.0})  # neither traffic on a link nor a change: ignored
    batch = stats.take(now=1.0)
    entries = {(e["kind"], e["link"], e.get("reason")): e for e in batch.traffic}
    assert entries == {
        ("offer", "A->B", None): {"kind": "offer", "link": "A->B", "count": 1000, "bytes": 100_000},
        ("deliver", "A->B", None): {"kind": "deliver", "link": "A->B", "count": 1000, "bytes": 100_000},
        ("drop", "A->B", "loss"): {"kind": "drop", "link": "A->B", "count": 3, "bytes": 300, "reason": "loss"},
        ("drop", None, "no_route"): {"kind": "drop", "link": None, "count": 1, "bytes": 10, "reason": "no_route",
                                     "node": "C"},
    }
    assert (batch.omitted, batch.links, batch.topology_changed) == (0, {"A->B"}, False)
    assert stats.link_stats("A->B") == {
        "arrived_packets": 1000, "arrived_bytes": 100_000, "arrived_wire_bytes": 142_000,
        "rate_bps": 142_000 * 8 / 2.0,
    }
    # nothing new: no traffic, but the rate is still in its window, so the link stays "moving"
    batch = stats.take(now=2.5)
    assert (batch.traffic, batch.links) == ([], {"A->B"})
    # past the window: the rate falls to 0, announced once
    batch = stats.take(now=3.5)
    assert batch.links == {"A->B"} and stats.link_stats("A->B")["rate_bps"] == 0
    assert stats.take(now=4.0).links == set()
    stats.feed({"kind": "link_down", "t": 4.0, "link": "B->C", "flushed": 0})
    batch = stats.take(now=4.1)
    assert batch.topology_changed and batch.links == {"B->C"}


def test_live_stats_cap_the_entries_per_tick_drops_first() -> None:
    stats = LiveStats(max_traffic=3)
    for i in range(10):
        for _ in range(i + 1):
            stats.feed(deliver(f"N{i}->M"))
    stats.feed({"kind": "drop", "t": 0, "pkt": 0, "link": "N0->M", "link_pkt": 0, "dup": False, "size": 1,
                "node": "N0", "reason": "queue"})
    batch = stats.take(now=0.1)
    assert batch.omitted == 8
    assert [(e["kind"], e["link"], e["count"]) for e in batch.traffic] == [
        ("drop", "N0->M", 1), ("deliver", "N9->M", 10), ("deliver", "N8->M", 9),
    ]
    # the counters are exact whatever was omitted
    assert stats.link_stats("N0->M")["arrived_packets"] == 1


async def test_client_queue_drops_the_oldest_and_counts() -> None:
    queue = ClientQueue(3)
    for i in range(5):
        queue.put(i)
    assert (len(queue), queue.dropped, queue.resync) == (3, 2, True)
    assert [await queue.get() for _ in range(3)] == [2, 3, 4]
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put(5)
    assert await waiting == 5
    queue.close()
    queue.put(6)  # ignored once closed
    with pytest.raises(EOFError):
        await queue.get()


# ---------------------------------------------------------------- the server, without a browser


async def test_topology_snapshot_page_and_static_files(bases: tuple[str, str]) -> None:
    async with Fabric(chain(bases), ports=[PORT]) as fabric:
        ui = WebUI(fabric, positions={"A": (0, 0), "B": (100, 0)}, title="three nodes")
        async with serving(ui) as client:
            response = await client.get("/api/topology")
            assert response.status == 200
            topology = await response.json()
            assert topology["attached"] and topology["title"] == "three nodes" and topology["ports"] == [PORT]
            assert [(n["name"], n["x"], n["y"]) for n in topology["nodes"]] == [
                ("A", 0, 0), ("B", 100, 0), ("C", None, None),
            ]
            assert topology["nodes"][0]["public_ip"] == fabric.public_address("A", 0)[0]
            assert [(e["id"], e["up"], e["by_range"]) for e in topology["edges"]] == [
                ("A<->B", True, False), ("B<->C", True, False),
            ]
            links = topology["edges"][0]["links"]
            assert set(links) == {"A->B", "B->A"}
            assert links["A->B"]["label"] == "1Mbit/s 5ms"
            assert links["A->B"]["profile"]["rate_bps"] == 1e6 and links["A->B"]["profile"]["overhead"] == 42

            snapshot = await (await client.get("/api/snapshot")).json()
            assert set(snapshot) == {"t", "counters", "in_flight_bytes", "links"}
            assert set(snapshot["links"]) == {"A->B", "B->A", "B->C", "C->B"}

            page = await client.get("/")
            text = await page.text()
            assert page.status == 200 and "static/vendor/d3.min.js" in text and "static/app.js" in text
            for name in ("app.js", "style.css", "vendor/d3.min.js", "vendor/LICENSE"):
                response = await client.get(f"/static/{name}")
                assert response.status == 200, name
            assert "d3js.org v7" in (await (await client.get("/static/vendor/d3.min.js")).text())[:200]


async def test_link_override_reshapes_the_running_fabric_without_flushing(bases: tuple[str, str]) -> None:
    # A->B at 8 kbit/s: five 100-byte datagrams (142 B on the wire) take 0.71 s, so they are queued
    slow = LinkProfile(rate_bps=8000, delay=0.01, overhead=42, limit_packets=50)
    async with Fabric(chain(bases, ab=slow), ports=[PORT]) as fabric:
        ui = WebUI(fabric)
        receiver = await open_app(fabric.private_address("C", PORT))
        sender = await open_app(fabric.private_address("A", 0))
        try:
            async with serving(ui) as client:
                for i in range(5):
                    sender.sendto(bytes([i]) * 100, fabric.public_address("C", PORT))
                await until(lambda: fabric.snapshot()["links"]["A->B"]["in_flight_packets"] == 5, what="a queue on A->B")

                async def post(body: Any, **kwargs: Any) -> tuple[int, Any]:
                    response = await client.post("/api/link", json=body, **kwargs)
                    return response.status, await response.json()

                status, answer = await post({"between": ["A", "B"], "direction": "forward", "rate_bps": 16000,
                                             "delay": 0.25, "jitter": 0.01, "loss": 0.0})
                assert status == 200, answer
                forward, backward = fabric.topology.link("A", "B").profile, fabric.topology.link("B", "A").profile
                assert (forward.rate_bps, forward.delay, forward.jitter) == (16000, 0.25, 0.01)
                assert (forward.overhead, forward.limit_packets) == (42, 50)  # the rest of the profile is kept
                assert backward == slow
                assert answer["edge"]["links"]["A->B"]["label"] == "16kbit/s 250ms±10ms"
                # nothing queued was lost: all five arrive, none flushed, on any link
                await receiver.until(5)
                assert all(sum(link["dropped"].values()) == 0 for link in fabric.snapshot()["links"].values())

                # the other direction only; written as [B, A], forward is B->A
                status, _ = await post({"between": ["B", "A"], "direction": "forward", "rate_bps": None, "loss": 0.5})
                assert status == 200
                assert fabric.topology.link("B", "A").profile.rate_bps is None
                assert fabric.topology.link("B", "A").profile.loss == 0.5
                assert fabric.topology.link("A", "B").profile.rate_bps == 16000
                # both directions
                status, _ = await post({"between": ["A", "B"], "delay": 0.002})
                assert status == 200
                assert fabric.topology.link("A", "B").profile.delay == fabric.topology.link("B", "A").profile.delay == 0.002

                status, answer = await post({"between": ["B", "C"], "up": False})
                assert status == 200 and answer["edge"]["up"] is False
                assert not fabric.topology.is_up("B", "C")
                status, answer = await post({"between": ["C", "B"], "up": True})
                assert status == 200 and answer["edge"]["up"] is True and fabric.topology.is_up("B", "C")

                # refused, and the fabric unchanged
                before = fabric.topology.link("A", "B").profile
                assert (await post({"between": ["A", "B"], "rate": 5}))[0] == 400
                assert (await post({"between": ["A", "B"], "rate_bps": -5}))[0] == 400
                assert (await post({"between": ["A", "B"], "loss": 2}))[0] == 400
                assert (await post({"between": ["A", "B"], "delay": "1s"}))[0] == 400
                assert (await post({"between": ["A", "B"], "direction": "up"}))[0] == 400
                assert (await post({"between": ["A", "B"], "up": "yes"}))[0] == 400
                assert (await post({"between": ["A"]}))[0] == 400
                assert (await post([1, 2]))[0] == 400
                status, answer = await post({"between": ["A", "C"], "delay": 1})
                assert status == 404 and "no link" in answer["error"]
                assert (await post({"between": ["A", "Z"], "delay": 1}))[0] == 404
                response = await client.post("/api/link", data=json.dumps({"between": ["A", "B"], "delay": 1}),
                                             headers={"Content-Type": "text/plain"})
                assert response.status == 415
                status, _ = await post({"between": ["A", "B"], "delay": 1}, headers={"Origin": "http://evil.example"})
                assert status == 403
                assert fabric.topology.link("A", "B").profile == before
        finally:
            receiver.close()
            sender.close()


async def test_moving_nodes_relinks_by_range(bases: tuple[str, str]) -> None:
    radio = LinkProfile(rate_bps=1_000_000, delay=0.001, overhead=42)
    topology = Topology(seed=0, public_base=bases[0], private_base=bases[1])
    for name in "ABC":
        topology.add_node(name)
    topology.add_link("A", "B", radio)
    rule = RangeRule(range=15, profile=radio, profile_name="radio")
    async with Fabric(topology, ports=[PORT]) as fabric:
        ui = WebUI(fabric, positions={"A": (0, 0), "B": (10, 0), "C": (40, 0)}, range_rule=rule)
        receiver = await open_app(fabric.private_address("C", PORT))
        sender = await open_app(fabric.private_address("A", 0))
        try:
            async with serving(ui) as client:

                async def move(name: str, x: float, y: float) -> Any:
                    response = await client.post("/api/node", json={"name": name, "x": x, "y": y})
                    assert response.status == 200
                    return await response.json()

                assert topology.path("A", "C") is None
                answer = await move("C", 20, 0)
                assert answer["node"] == {**answer["node"], "name": "C", "x": 20, "y": 0}
                assert answer["changes"] == [{"do": "add", "between": ["B", "C"]}]
                assert topology.link("B", "C").profile == radio and topology.is_up("B", "C")
                # the new link carries traffic: A -> B -> C
                sender.sendto(b"over the new link", fabric.public_address("C", PORT))
                await receiver.until(1)
                assert fabric.snapshot()["links"]["B->C"]["delivered_packets"] == 1

                answer = await move("B", 100, 0)
                assert answer["changes"] == [{"do": "fail", "between": ["A", "B"]}, {"do": "fail", "between": ["B", "C"]}]
                assert not topology.is_up("A", "B") and not topology.is_up("B", "C")
                edges = {e["id"]: e for e in (await (await client.get("/api/topology")).json())["edges"]}
                assert edges["A<->B"]["out_of_range"] and edges["A<->B"]["by_range"]

                # A-B healed by hand while B is away, then failed by hand: the rule no longer heals it
                await client.post("/api/link", json={"between": ["A", "B"], "up": True})
                await client.post("/api/link", json={"between": ["A", "B"], "up": False})
                answer = await move("B", 10, 0)
                assert answer["changes"] == [{"do": "heal", "between": ["B", "C"]}]
                assert not topology.is_up("A", "B") and topology.is_up("B", "C")

                topology_now = await (await client.get("/api/topology")).json()
                assert [(n["name"], n["x"], n["y"]) for n in topology_now["nodes"]] == [
                    ("A", 0, 0), ("B", 10, 0), ("C", 20, 0),
                ]
                for body, status in (({"name": "Z", "x": 1, "y": 1}, 404), ({"name": "A", "x": "1", "y": 1}, 400),
                                     ({"name": "A", "x": 1}, 400), ({"name": "A", "x": 1, "y": 1, "z": 0}, 400)):
                    assert (await client.post("/api/node", json=body)).status == status, body
        finally:
            receiver.close()
            sender.close()


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return json.loads(message.data)


async def test_websocket_hello_then_ticks_with_counters_and_traffic(bases: tuple[str, str]) -> None:
    async with Fabric(chain(bases), ports=[PORT]) as fabric:
        ui = WebUI(fabric, positions=POSITIONS, tick=0.05)
        receiver = await open_app(fabric.private_address("C", PORT))
        sender = await open_app(fabric.private_address("A", 0))
        try:
            async with serving(ui) as client, client.ws_connect("/ws") as ws:
                hello = await receive_json(ws)
                assert hello["type"] == "hello" and hello["version"] == 1 and hello["dropped_messages"] == 0
                assert {"seq", "t", "tick", "topology", "links", "fabric"} <= set(hello)
                assert [n["name"] for n in hello["topology"]["nodes"]] == ["A", "B", "C"]
                assert set(hello["links"]) == {"A->B", "B->A", "B->C", "C->B"}
                assert set(hello["links"]["A->B"]) == {
                    *LINK_FIELDS, "up", "dropped", "dropped_total",
                    "arrived_packets", "arrived_bytes", "arrived_wire_bytes", "rate_bps",
                }
                for i in range(10):
                    sender.sendto(bytes([i]) * 100, fabric.public_address("C", PORT))
                await receiver.until(10)
                seen: dict[str, int] = {}
                last_seq = hello["seq"]
                arrived = 0
                while arrived < 10:
                    message = await receive_json(ws)
                    assert message["seq"] > last_seq
                    last_seq = message["seq"]
                    if message["type"] != "tick":
                        continue
                    assert {"t", "links", "traffic", "omitted", "fabric", "dropped_messages"} <= set(message)
                    for entry in message["traffic"]:
                        key = f"{entry['kind']} {entry['link']}"
                        seen[key] = seen.get(key, 0) + entry["count"]
                    arrived = message["links"].get("B->C", {}).get("arrived_packets", arrived)
                assert seen["offer A->B"] == seen["deliver A->B"] == seen["deliver B->C"] == 10
                counters = message["links"]["B->C"]
                assert (counters["arrived_bytes"], counters["arrived_wire_bytes"]) == (1000, 1420)
                assert counters["offered_packets"] == 10 and counters["rate_bps"] > 0
                assert message["fabric"]["delivered_packets"] == 10

                # a change of a link reaches the browser as a topology message
                fabric.fail("A", "B")
                message = await receive_json(ws)
                while message["type"] != "topology":
                    message = await receive_json(ws)
                assert message["topology"]["edges"][0]["up"] is False
        finally:
            receiver.close()
            sender.close()


async def test_a_slow_browser_loses_the_oldest_messages_then_gets_the_full_state(bases: tuple[str, str]) -> None:
    async with Fabric(chain(bases), ports=[PORT]) as fabric:
        ui = WebUI(fabric, tick=60, queue_limit=3)  # no ticks of its own during the test
        async with serving(ui) as client, client.ws_connect("/ws") as ws:
            hello = await receive_json(ws)
            assert hello["type"] == "hello"
            # ten messages while the sender cannot run: seven are pushed out
            for i in range(10):
                ui.publish({"type": "tick", "t": 0.0, "links": {}, "traffic": [], "omitted": 0, "fabric": None, "i": i})
            state = await receive_json(ws)
            assert state["type"] == "state" and state["dropped_messages"] == 7
            assert state["seq"] == hello["seq"] + 10  # newer than everything still queued
            assert set(state["links"]) == {"A->B", "B->A", "B->C", "C->B"}
            rest = [await receive_json(ws) for _ in range(3)]
            assert [(m["i"], m["dropped_messages"]) for m in rest] == [(7, 7), (8, 7), (9, 7)]


async def test_ui_before_the_fabric_starts(bases: tuple[str, str]) -> None:
    ui = WebUI(title="waiting")
    async with serving(ui) as client, client.ws_connect("/ws") as ws:
        hello = await receive_json(ws)
        assert hello["topology"]["attached"] is False and hello["links"] == {}
        assert (await client.get("/api/snapshot")).status == 503
        assert (await client.post("/api/link", json={"between": ["A", "B"]})).status == 503
        async with Fabric(chain(bases), ports=[PORT]) as fabric:
            ui.attach(fabric)  # as `meshsim run --ui` does once the run has started the fabric
            state = await receive_json(ws)
            assert state["type"] == "state" and state["topology"]["attached"] is True
            assert len(state["topology"]["nodes"]) == 3


# ---------------------------------------------------------------- the command line


def test_cli_ui_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ui", "--help"])
    assert exited.value.code == 0
    assert "--listen" in capsys.readouterr().out
    assert main(["ui", "100bps-pair", "--phase", "nope"]) == 2
    assert "no phase 'nope'" in capsys.readouterr().err
    assert main(["ui", "100bps-pair", "--listen", "8080"]) == 2
    assert main(["ui", "no-such-scenario"]) == 2
    assert main(["run", "100bps-pair", "--out", "/nonexistent/x", "--ui", "nowhere"]) == 2


async def test_cli_ui_serves_the_scenario_until_interrupted(bases: tuple[str, str], tmp_path: Path) -> None:
    source = (REPO / "meshsim" / "scenarios" / "100bps-chain.toml").read_text()
    scenario = tmp_path / "chain.toml"
    scenario.write_text(source + f'\n[network]\npublic_base = "{bases[0]}"\nprivate_base = "{bases[1]}"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshsim.cli", "ui", str(scenario), "--listen", "127.0.0.1:0", "--port", str(PORT),
        "--phase", "chain", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        match = re.match(r"meshsim ui: (http://\S+)", first)
        assert match, first
        async with aiohttp.ClientSession() as session, session.get(match.group(1) + "api/topology") as response:
            topology = await response.json()
        assert len(topology["nodes"]) == 6 and topology["range"] == {"range": 110.0, "profile": "fast"}
        labels = {e["id"]: e["links"][f"{e['a']}->{e['b']}"]["label"] for e in topology["edges"]}
        assert labels["relay2<->relay1"] == "100bit/s 200ms"  # phase 'chain' applied
        assert labels["hs<->bob-laptop"] == "10Mbit/s 1ms"
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, err.decode()
        assert "meshsim:" in out.decode()  # the summary table
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------- the page, in headless Chromium


class DevTools:
    """A minimal Chrome DevTools Protocol client over one browser websocket (flat sessions)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())
        self.session_id: str | None = None

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True) -> dict[str, Any]:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if page and self.session_id is not None:
            request["sessionId"] = self.session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self.ws.send_str(json.dumps(request))
        answer = await asyncio.wait_for(future, 15)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    async def open_page(self, url: str) -> None:
        target = await self.send("Target.createTarget", {"url": "about:blank"}, page=False)
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, page=False)
        self.session_id = attached["sessionId"]
        await self.send("Page.navigate", {"url": url})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        return await until(lambda: self.evaluate(expression), timeout, what=expression)

    async def mouse(self, kind: str, x: float, y: float, *, pressed: bool) -> None:
        await self.send("Input.dispatchMouseEvent", {
            "type": kind, "x": x, "y": y, "button": "left", "buttons": 1 if pressed else 0, "clickCount": 1,
        })

    def close(self) -> None:
        self._reader.cancel()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[DevTools]:
    """Headless Chromium with remote debugging on a free port; a DevTools client attached to it."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="meshsim-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--no-pings", "--disable-domain-reliability", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        stderr_lines: list[str] = []
        drain: asyncio.Task[None] | None = None
        try:
            assert process.stderr is not None
            url = None
            async with asyncio.timeout(30):
                while url is None:
                    line = (await process.stderr.readline()).decode(errors="replace")
                    if not line:
                        raise AssertionError("chromium exited before DevTools listened:\n" + "".join(stderr_lines[-20:]))
                    stderr_lines.append(line)
                    match = re.search(r"DevTools listening on (ws://\S+)", line)
                    url = match.group(1) if match else None

            async def keep_draining() -> None:  # a full pipe would block the browser
                assert process.stderr is not None
                while await process.stderr.readline():
                    pass

            drain = asyncio.ensure_future(keep_draining())
            async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
                devtools = DevTools(ws)
                try:
                    yield devtools
                finally:
                    devtools.close()
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            if drain is not None:
                drain.cancel()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make system-packages installs it)")
@pytest.mark.timeout(60)
async def test_page_in_headless_chromium(bases: tuple[str, str]) -> None:
    async with Fabric(chain(bases), ports=[PORT]) as fabric:
        ui = WebUI(fabric, positions=POSITIONS, title="browser test", tick=0.05)
        await ui.start("127.0.0.1", 0)
        receiver = await open_app(fabric.private_address("C", PORT))
        sender = await open_app(fabric.private_address("A", 0))
        try:
            async with chromium() as browser:
                await browser.open_page(ui.url)
                await browser.wait_for("window.meshsim && window.meshsim.ready && window.meshsim.connected")

                # one element per node, per edge and per directed link, from the topology
                nodes = await browser.evaluate(
                    "[...document.querySelectorAll('#node-layer g.node')].map(g => g.dataset.name)")
                assert sorted(nodes) == ["A", "B", "C"]
                edges = await browser.evaluate(
                    "[...document.querySelectorAll('#edge-layer g.edge')].map(g => [g.dataset.a, g.dataset.b])")
                assert sorted(edges) == [["A", "B"], ["B", "C"]]
                counters = await browser.evaluate(
                    "[...document.querySelectorAll('.link-counter')].map(t => t.dataset.link)")
                assert sorted(counters) == ["A->B", "B->A", "B->C", "C->B"]
                assert await browser.evaluate(
                    "document.querySelector('g.edge[data-id=\"A<->B\"] text.profile').textContent") == "1Mbit/s 5ms"

                # datagrams through the fabric: the page's counters for their links go up, dots move
                for i in range(20):
                    sender.sendto(bytes([i]) * 100, fabric.public_address("C", PORT))
                await receiver.until(20)
                for link in ("A->B", "B->C"):
                    await browser.wait_for(
                        f"+document.querySelector('.link-counter[data-link=\"{link}\"]').dataset.arrivedBytes === 2000")
                assert await browser.evaluate(
                    "+document.querySelector('.link-counter[data-link=\"B->A\"]').dataset.arrivedBytes") == 0
                assert "2.8 kB" in await browser.evaluate(
                    "document.querySelector('.link-counter[data-link=\"A->B\"]').textContent")
                assert await browser.evaluate("window.meshsim.animated.deliver") > 0

                # a click on the link A-B opens the editor; submitting it reshapes the running fabric
                x, y = await browser.evaluate("""(() => {
                    const r = document.querySelector('g.edge[data-id="A<->B"] line.hit').getBoundingClientRect();
                    return [r.left + r.width / 2, r.top + r.height / 2]; })()""")
                await browser.mouse("mousePressed", x, y, pressed=True)
                await browser.mouse("mouseReleased", x, y, pressed=False)
                await browser.wait_for("!document.getElementById('editor').hidden && window.meshsim.selected === 'A<->B'")
                assert await browser.evaluate("document.getElementById('editor').elements.rate.value") == "1000000"
                await browser.evaluate("""(() => {
                    const f = document.getElementById('editor').elements;
                    f.direction.value = 'forward'; f.rate.value = '12345'; f.delay.value = '250';
                    f.jitter.value = '10'; f.loss.value = '5';
                    document.getElementById('editor').requestSubmit(); })()""")
                await until(lambda: fabric.topology.link("A", "B").profile.rate_bps == 12345, what="the new rate")
                forward = fabric.topology.link("A", "B").profile
                assert (forward.delay, forward.jitter, forward.loss, forward.overhead) == (0.25, 0.01, 0.05, 42)
                assert fabric.topology.link("B", "A").profile == AB
                await browser.wait_for(
                    "document.querySelector('g.edge[data-id=\"A<->B\"] text.profile').textContent.includes('12.3kbit/s')")
                # and down: the link fails in the fabric and is drawn down
                await browser.evaluate("""(() => { const form = document.getElementById('editor');
                    form.elements.up.checked = false; form.requestSubmit(); })()""")
                await until(lambda: not fabric.topology.is_up("A", "B"), what="A-B down")
                await browser.wait_for("document.querySelector('g.edge[data-id=\"A<->B\"]').classList.contains('down')")

                # dragging C moves it, by the pointer's movement in the scenario's units
                k = await browser.evaluate("window.meshsim.view.k")
                x, y = await browser.evaluate("""(() => {
                    const r = document.querySelector('g.node[data-name="C"] circle').getBoundingClientRect();
                    return [r.left + r.width / 2, r.top + r.height / 2]; })()""")
                await browser.mouse("mousePressed", x, y, pressed=True)
                for step in range(1, 6):
                    await browser.mouse("mouseMoved", x - 12 * step, y + 8 * step, pressed=True)
                await browser.mouse("mouseReleased", x - 60, y + 40, pressed=False)

                async def position_of_c() -> tuple[float, float] | None:
                    async with aiohttp.ClientSession() as session, session.get(ui.url + "api/topology") as response:
                        node = next(n for n in (await response.json())["nodes"] if n["name"] == "C")
                    moved = (node["x"], node["y"]) != POSITIONS["C"]
                    return (node["x"], node["y"]) if moved else None

                cx, cy = await until(position_of_c, what="C moved")
                assert cx == pytest.approx(200 - 60 / k, abs=0.01)
                assert cy == pytest.approx(50 + 40 / k, abs=0.01)
                assert ui.positions["C"] == (cx, cy)
        finally:
            receiver.close()
            sender.close()
            await ui.stop()
