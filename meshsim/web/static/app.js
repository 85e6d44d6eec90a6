// meshsim web UI: the topology as D3 draws it, live over a websocket.
//
// Messages (see docs/meshsim.md, "Web UI"): "hello"/"state" carry everything,
// "topology" the nodes and edges, "tick" counters and coalesced traffic.
// Counters are absolute and numbered (seq): an older message never overwrites
// a newer one. window.meshsim is this page's state, for the console and tests.
(function () {
  "use strict";

  const TRAVEL_MS = 700;        // a dot's trip along a link
  const MAX_ANIMATIONS = 300;   // dots, pulses and crosses on screen at once
  const PAD_X = 120, PAD_Y = 60;  // pixels around the topology when fitting (labels are centred under nodes)

  const state = {
    connected: false,
    attached: false,
    ready: false,
    title: "meshsim",
    nodes: new Map(),           // name -> {name, index, public_ip, private_ip, x, y, fx, fy, placed}
    edges: [],                  // {id, a, b, up, links, by_range, out_of_range, source, target}
    links: {},                  // directed link id -> counters
    linkSeq: {},
    topologySeq: -Infinity,
    range: null,
    fabric: null,
    t: 0,
    tAt: performance.now(),
    tick: 0.1,
    messages: 0,
    ticks: 0,
    droppedMessages: 0,
    animated: { offer: 0, deliver: 0, drop: 0, skipped: 0 },
    view: { k: 1, x: 0, y: 0 },
    fitted: false,
    dragging: null,
    selected: null,
  };
  window.meshsim = state;

  const svg = d3.select("#canvas");
  const rangeLayer = d3.select("#range-layer");
  const edgeLayer = d3.select("#edge-layer");
  const packetLayer = d3.select("#packet-layer");
  const nodeLayer = d3.select("#node-layer");
  const form = document.getElementById("editor");
  let simulation = null;

  // ---------------------------------------------------------------- coordinates

  const sx = (x) => state.view.k * x + state.view.x;
  const sy = (y) => state.view.k * y + state.view.y;
  const ix = (px) => (px - state.view.x) / state.view.k;
  const iy = (py) => (py - state.view.y) / state.view.k;

  function fit() {
    const element = svg.node();
    const width = element.clientWidth, height = element.clientHeight;
    const placed = [...state.nodes.values()].filter((n) => Number.isFinite(n.x) && Number.isFinite(n.y));
    if (!placed.length || !width || !height) return;
    const [x0, x1] = d3.extent(placed, (n) => n.x);
    const [y0, y1] = d3.extent(placed, (n) => n.y);
    const scales = [];
    if (x1 - x0 > 1e-9) scales.push((width - 2 * PAD_X) / (x1 - x0));
    if (y1 - y0 > 1e-9) scales.push((height - 2 * PAD_Y) / (y1 - y0));
    const k = scales.length ? Math.max(Math.min(...scales), 1e-6) : 1;
    state.view = { k, x: width / 2 - k * (x0 + x1) / 2, y: height / 2 - k * (y0 + y1) / 2 };
    state.fitted = true;
    place();
  }

  // ---------------------------------------------------------------- formatting

  function fmtBytes(n) {
    if (n < 1000) return `${n} B`;
    if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
    return `${(n / 1e6).toFixed(2)} MB`;
  }

  function fmtRate(bps) {
    if (!bps) return "0 bit/s";
    if (bps < 1e3) return `${bps.toFixed(bps < 10 ? 1 : 0)} bit/s`;
    if (bps < 1e6) return `${(bps / 1e3).toFixed(1)} kbit/s`;
    return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  }

  function edgeLabel(edge) {
    if (!edge.up) return "down" + (edge.out_of_range ? " (out of range)" : "");
    const [forward, backward] = [edge.links[`${edge.a}->${edge.b}`], edge.links[`${edge.b}->${edge.a}`]];
    if (forward.label === backward.label) return forward.label;
    return `→ ${forward.label} | ← ${backward.label}`;
  }

  // ---------------------------------------------------------------- drawing

  function render() {
    const edges = edgeLayer.selectAll("g.edge").data(state.edges, (e) => e.id).join((enter) => {
      const g = enter.append("g").attr("class", "edge")
        .attr("data-a", (e) => e.a).attr("data-b", (e) => e.b).attr("data-id", (e) => e.id);
      g.append("line").attr("class", "wire");
      g.append("line").attr("class", "hit");
      g.append("text").attr("class", "profile").attr("text-anchor", "middle");
      g.append("text").attr("class", "link-counter forward").attr("text-anchor", "middle")
        .attr("data-link", (e) => `${e.a}->${e.b}`);
      g.append("text").attr("class", "link-counter backward").attr("text-anchor", "middle")
        .attr("data-link", (e) => `${e.b}->${e.a}`);
      g.on("click", (event, e) => openEditor(e.id));
      return g;
    });
    edges.classed("down", (e) => !e.up).classed("selected", (e) => e.id === state.selected);
    edges.select("text.profile").text(edgeLabel);

    const nodes = nodeLayer.selectAll("g.node").data([...state.nodes.values()], (n) => n.name).join((enter) => {
      const g = enter.append("g").attr("class", "node").attr("data-name", (n) => n.name);
      g.append("circle").attr("r", 11);
      g.append("text").attr("class", "name").attr("text-anchor", "middle").attr("y", -17);
      g.append("text").attr("class", "address").attr("text-anchor", "middle").attr("y", 25);
      g.call(drag);
      return g;
    });
    nodes.classed("floating", (n) => !n.placed);
    nodes.select("text.name").text((n) => n.name);
    nodes.select("text.address").text((n) => `${n.public_ip} (bind ${n.private_ip})`);
    nodes.select("circle").attr("data-name", (n) => n.name);
    updateCounters();
    updateTable();
    place();
  }

  function place() {
    edgeLayer.selectAll("g.edge").each(function (e) {
      if (!e.source || !e.target || !Number.isFinite(e.source.x) || !Number.isFinite(e.target.x)) return;
      const x1 = sx(e.source.x), y1 = sy(e.source.y), x2 = sx(e.target.x), y2 = sy(e.target.y);
      const g = d3.select(this);
      g.selectAll("line").attr("x1", x1).attr("y1", y1).attr("x2", x2).attr("y2", y2);
      const dx = x2 - x1, dy = y2 - y1, length = Math.hypot(dx, dy) || 1;
      let nx = -dy / length, ny = dx / length;
      if (ny < 0 || (ny === 0 && nx < 0)) { nx = -nx; ny = -ny; }   // labels below (or right of) the line
      const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
      // along a steep line, labels start beside it rather than centred on it
      const steep = Math.abs(nx) > 0.7;
      g.selectAll("text").attr("text-anchor", steep ? (nx > 0 ? "start" : "end") : "middle");
      g.select("text.profile").attr("x", mx - nx * 10).attr("y", my - ny * 10 + 4)
        .attr("text-anchor", steep ? (nx > 0 ? "end" : "start") : "middle");
      g.select("text.forward").attr("x", mx + nx * 12).attr("y", my + ny * 16 + 4);
      g.select("text.backward").attr("x", mx + nx * 12).attr("y", my + ny * 16 + 18);
    });
    nodeLayer.selectAll("g.node").attr("transform", (n) =>
      Number.isFinite(n.x) ? `translate(${sx(n.x)},${sy(n.y)})` : "translate(-1000,-1000)");
    if (state.dragging) showRange(state.nodes.get(state.dragging));
  }

  function showRange(node) {
    const circles = state.range && node ? [node] : [];
    rangeLayer.selectAll("circle").data(circles).join("circle")
      .attr("cx", (n) => sx(n.x)).attr("cy", (n) => sy(n.y)).attr("r", state.range ? state.range.range * state.view.k : 0);
  }

  function updateCounters() {
    edgeLayer.selectAll("text.link-counter").each(function () {
      const id = this.getAttribute("data-link");
      const c = state.links[id];
      if (!c) return;
      const [src, dst] = id.split("->");
      let text = "";   // an idle link says nothing
      if (c.offered_packets) {
        text = `${src}→${dst} ${fmtBytes(c.arrived_wire_bytes)} · ${fmtRate(c.rate_bps)}`;
        if (c.in_flight_packets) text += ` · ${c.in_flight_packets} in flight`;
        if (c.dropped_total) text += ` · ✕${c.dropped_total}`;
      }
      this.textContent = text;
      this.classList.toggle("lossy", c.dropped_total > 0);
      const data = this.dataset;
      data.arrivedPackets = c.arrived_packets;
      data.arrivedBytes = c.arrived_bytes;
      data.arrivedWireBytes = c.arrived_wire_bytes;
      data.rateBps = c.rate_bps;
      data.offeredPackets = c.offered_packets;
      data.inFlight = c.in_flight_packets;
      data.dropped = c.dropped_total;
    });
  }

  function updateTable() {
    const rows = [];
    for (const edge of state.edges) {
      for (const [id, link] of Object.entries(edge.links)) rows.push({ id, link, edge, c: state.links[id] || {} });
    }
    const tr = d3.select("#links-table tbody").selectAll("tr").data(rows, (r) => r.id).join("tr");
    tr.classed("down", (r) => !r.edge.up);
    tr.html("");
    tr.append("td").text((r) => r.id);
    tr.append("td").text((r) => (r.edge.up ? r.link.label : "down"));
    tr.append("td").text((r) => fmtBytes(r.c.arrived_wire_bytes || 0));
    tr.append("td").text((r) => fmtRate(r.c.rate_bps || 0));
    tr.append("td").text((r) => r.c.in_flight_packets || 0);
    tr.append("td").attr("title", (r) => Object.entries(r.c.dropped || {}).map(([k, v]) => `${k} ${v}`).join(", "))
      .text((r) => r.c.dropped_total || 0);
  }

  function updateHeader() {
    document.getElementById("title").textContent = state.title;
    document.title = state.title;
    const status = document.getElementById("status");
    const [text, cls] = !state.connected ? ["disconnected", "closed"]
      : !state.attached ? ["waiting for the fabric to start", "waiting"] : ["live", "connected"];
    status.textContent = text;
    status.className = `status ${cls}`;
    const f = state.fabric;
    if (f) {
      const dropped = Object.values(f.dropped || {}).reduce((a, b) => a + b, 0);
      document.getElementById("fabric-counters").textContent =
        `received ${f.received_packets} · delivered ${f.delivered_packets} · dropped outside links ${dropped}` +
        (f.kernel_drops ? ` · kernel drops ${f.kernel_drops}` : "");
    }
    document.getElementById("dropped-messages").textContent =
      state.droppedMessages ? `${state.droppedMessages} live messages skipped` : "";
  }

  setInterval(() => {
    if (!state.attached) return;
    const t = state.connected ? state.t + (performance.now() - state.tAt) / 1000 : state.t;
    document.getElementById("clock").textContent = `t = ${t.toFixed(1)} s`;
  }, 200);

  // ---------------------------------------------------------------- traffic

  function endpoints(linkId) {
    const [src, dst] = linkId.split("->").map((name) => state.nodes.get(name));
    if (!src || !dst || !Number.isFinite(src.x) || !Number.isFinite(dst.x)) return null;
    return [sx(src.x), sy(src.y), sx(dst.x), sy(dst.y)];
  }

  function room() {
    if (packetLayer.node().childElementCount < MAX_ANIMATIONS && !document.hidden) return true;
    state.animated.skipped += 1;
    return false;
  }

  function animate(traffic) {
    for (const entry of traffic || []) {
      if (entry.kind === "drop" && entry.link === null) {
        const node = state.nodes.get(entry.node);
        if (node && Number.isFinite(node.x) && room()) cross(sx(node.x), sy(node.y) - 18, entry);
        continue;
      }
      const ends = entry.link && endpoints(entry.link);
      if (!ends || !room()) continue;
      const [x1, y1, x2, y2] = ends;
      state.animated[entry.kind] += 1;
      if (entry.kind === "deliver") {
        const r = 4 + Math.min(6, Math.log2(entry.count));
        const g = packetLayer.append("g").attr("transform", `translate(${x1},${y1})`);
        g.append("circle").attr("class", "packet").attr("r", r);
        if (entry.count > 1) g.append("text").attr("class", "packet-count").attr("x", r + 2).attr("y", -r).text(`×${entry.count}`);
        g.append("title").text(`${entry.count} arrived on ${entry.link}, ${entry.bytes} B`);
        g.transition().duration(TRAVEL_MS).ease(d3.easeLinear).attr("transform", `translate(${x2},${y2})`).remove();
      } else if (entry.kind === "offer") {
        const x = x1 + (x2 - x1) * 0.12, y = y1 + (y2 - y1) * 0.12;
        packetLayer.append("circle").attr("class", "offer-pulse").attr("cx", x).attr("cy", y).attr("r", 3)
          .transition().duration(500).attr("r", 12).style("opacity", 0).remove();
      } else if (entry.kind === "drop") {
        cross(x1 + (x2 - x1) * 0.25, y1 + (y2 - y1) * 0.25, entry);
      }
    }
  }

  function cross(x, y, entry) {
    const g = packetLayer.append("g").attr("transform", `translate(${x},${y})`);
    g.append("text").attr("class", "drop-mark").attr("text-anchor", "middle").attr("y", 5).text("✕");
    g.append("text").attr("class", "drop-reason").attr("x", 9).attr("y", 4)
      .text(`${entry.reason}${entry.count > 1 ? " ×" + entry.count : ""}`);
    g.transition().delay(600).duration(1200).style("opacity", 0).remove();
  }

  // ---------------------------------------------------------------- messages

  function setTime(t) {
    state.t = t;
    state.tAt = performance.now();
  }

  function applyTopology(topology, seq) {
    if (seq < state.topologySeq) return;
    state.topologySeq = seq;
    state.attached = topology.attached;
    state.title = topology.title;
    state.range = topology.range;
    const seen = new Set();
    for (const n of topology.nodes) {
      seen.add(n.name);
      let node = state.nodes.get(n.name);
      if (!node) state.nodes.set(n.name, (node = { name: n.name }));
      Object.assign(node, { index: n.index, public_ip: n.public_ip, private_ip: n.private_ip });
      if (state.dragging === n.name) continue;   // the pointer wins until it lets go
      if (n.x !== null && n.y !== null) {
        Object.assign(node, { x: n.x, y: n.y, fx: n.x, fy: n.y, placed: true });
      } else {
        Object.assign(node, { fx: null, fy: null, placed: false });
      }
    }
    for (const name of [...state.nodes.keys()]) if (!seen.has(name)) state.nodes.delete(name);
    state.edges = topology.edges.map((e) => ({ ...e, source: state.nodes.get(e.a), target: state.nodes.get(e.b) }));
    if (state.selected && !state.edges.some((e) => e.id === state.selected)) closeEditor();
    startSimulation();
    render();
    if (!state.fitted) fit();
  }

  function applyLinks(links, seq) {
    for (const [id, counters] of Object.entries(links || {})) {
      if ((state.linkSeq[id] ?? -Infinity) > seq) continue;
      state.linkSeq[id] = seq;
      state.links[id] = counters;
    }
    updateCounters();
    updateTable();
  }

  function handle(message) {
    state.messages += 1;
    if (message.dropped_messages !== undefined) state.droppedMessages = message.dropped_messages;
    if (message.fabric) state.fabric = message.fabric;
    switch (message.type) {
      case "hello":
      case "state":
        // a full state is newer than every message numbered up to its seq
        state.tick = message.tick;
        setTime(message.t);
        applyTopology(message.topology, message.seq + 0.5);
        applyLinks(message.links, message.seq + 0.5);
        state.ready = state.attached;
        break;
      case "topology":
        setTime(message.t);
        applyTopology(message.topology, message.seq);
        break;
      case "tick":
        state.ticks += 1;
        setTime(message.t);
        applyLinks(message.links, message.seq);
        animate(message.traffic);
        break;
    }
    updateHeader();
  }

  function connect() {
    const url = new URL("ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    socket.onopen = () => { state.connected = true; updateHeader(); };
    socket.onmessage = (event) => handle(JSON.parse(event.data));
    socket.onclose = () => {
      state.connected = false;
      state.ready = false;
      updateHeader();
      setTimeout(connect, 2000);
    };
  }

  // ---------------------------------------------------------------- layout of nodes without a position

  let simulated = "";   // what the simulation was last started on: nodes, placed or not, and edges

  function startSimulation() {
    const nodes = [...state.nodes.values()];
    if (nodes.every((n) => n.placed)) {
      if (simulation) simulation.stop();
      simulation = null;
      simulated = "";
      return;
    }
    const shape = JSON.stringify([nodes.map((n) => [n.name, n.placed]), state.edges.map((e) => e.id)]);
    if (shape === simulated) return;   // a profile or a counter changed: no need to shake the layout
    simulated = shape;
    const anchors = nodes.filter((n) => n.placed);
    const cx = anchors.length ? d3.mean(anchors, (n) => n.x) : 0;
    const cy = anchors.length ? d3.mean(anchors, (n) => n.y) : 0;
    if (!simulation) {
      simulation = d3.forceSimulation()
        .force("charge", d3.forceManyBody().strength(-500))
        .force("link", d3.forceLink().distance(150))
        .on("tick", () => { if (!state.dragging) fit(); else place(); });
    }
    simulation.force("x", d3.forceX(cx).strength(0.04)).force("y", d3.forceY(cy).strength(0.04));
    simulation.nodes(nodes);
    simulation.force("link").links(state.edges.map((e) => ({ source: e.source, target: e.target })));
    simulation.alpha(0.6).restart();
  }

  // ---------------------------------------------------------------- dragging nodes

  const drag = d3.drag()
    .subject((event, n) => ({ x: sx(n.x), y: sy(n.y) }))
    .on("start", function (event, n) {
      state.dragging = n.name;
      n.dragStart = [n.x, n.y];
      d3.select(this).classed("dragging", true);
    })
    .on("drag", function (event, n) {
      n.x = ix(event.x);
      n.y = iy(event.y);
      n.fx = n.x;
      n.fy = n.y;
      place();
    })
    .on("end", function (event, n) {
      d3.select(this).classed("dragging", false);
      state.dragging = null;
      showRange(null);
      const [x0, y0] = n.dragStart;
      if (x0 === n.x && y0 === n.y) return;
      n.placed = true;
      postJson("api/node", { name: n.name, x: n.x, y: n.y }).catch((error) => {
        console.error("moving", n.name, error);
      });
      if (simulation) simulation.alpha(0.3).restart();
    });

  // ---------------------------------------------------------------- the link editor

  async function postJson(path, body) {
    const response = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    return answer;
  }

  function editedEdge() {
    return state.edges.find((e) => e.id === state.selected);
  }

  function fillEditor() {
    const edge = editedEdge();
    if (!edge) return;
    const direction = form.elements.direction.value;
    const id = direction === "reverse" ? `${edge.b}->${edge.a}` : `${edge.a}->${edge.b}`;
    const p = edge.links[id].profile;
    form.elements.rate.value = p.rate_bps === null ? "" : p.rate_bps;
    form.elements.delay.value = +(p.delay * 1000).toPrecision(12);
    form.elements.jitter.value = +(p.jitter * 1000).toPrecision(12);
    form.elements.loss.value = +(p.loss * 100).toPrecision(12);
    form.elements.up.checked = edge.up;
  }

  function openEditor(id) {
    state.selected = id;
    const edge = editedEdge();
    document.getElementById("editor-title").textContent = `${edge.a} ↔ ${edge.b}`;
    document.getElementById("editor-forward").textContent = `${edge.a} → ${edge.b}`;
    document.getElementById("editor-reverse").textContent = `${edge.b} → ${edge.a}`;
    document.getElementById("editor-error").textContent = "";
    form.elements.direction.value = "both";
    fillEditor();
    form.hidden = false;
    render();
  }

  function closeEditor() {
    state.selected = null;
    form.hidden = true;
    render();
  }

  form.elements.direction.addEventListener("change", fillEditor);
  document.getElementById("editor-close").addEventListener("click", closeEditor);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const edge = editedEdge();
    if (!edge) return;
    const f = form.elements;
    const body = { between: [edge.a, edge.b], direction: f.direction.value, up: f.up.checked };
    const number = (input, scale) => (input.value === "" ? undefined : Number(input.value) * scale);
    body.rate_bps = f.rate.value === "" ? null : Number(f.rate.value);
    for (const [key, input, scale] of [["delay", f.delay, 1e-3], ["jitter", f.jitter, 1e-3], ["loss", f.loss, 1e-2]]) {
      const value = number(input, scale);
      if (value !== undefined) body[key] = value;
    }
    const error = document.getElementById("editor-error");
    try {
      await postJson("api/link", body);
      error.textContent = "";
      state.applied = (state.applied || 0) + 1;
    } catch (failure) {
      error.textContent = failure.message;
    }
  });

  document.getElementById("fit").addEventListener("click", fit);
  window.addEventListener("resize", fit);
  updateHeader();
  connect();
})();
