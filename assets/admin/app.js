// wsmon dashboard. Totals and charts follow /admin/events (Server-Sent Events); the connection
// table pages through /api/v1/connections on the server (this node's, or the node chosen in the
// node list, through the cluster) and refreshes on each event, as does the node list
// (/api/v1/cluster, at most every CLUSTER_EVERY ms). Every
// value from the server is written with textContent: client-supplied strings are data, never
// markup. Credentials are the browser's (Basic auth), so nothing here handles tokens.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat();
  const HISTORY = 300; // points kept for the time charts (5 min at 1 update/s)
  const CLUSTER_EVERY = 2000;

  const state = {
    role: "open",
    cursors: [null], // cursor of each page visited; the last is the current page
    next: null,
    selected: null,
    generation: 0, // of the latest table request; older answers are dropped
    inflight: 0,
    last: null, // previous update, for rates
    times: [],
    active: [],
    rateIn: [],
    rateOut: [],
    charts: {},
    self: null, // this node's id
    clusterAt: 0,
  };

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function titled(text, full, className) {
    const td = cell(text, className);
    td.title = full;
    return td;
  }

  function seconds(s) {
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function safeUrl(url) {
    return /^https?:\/\//.test(url || "") ? url : null;
  }

  function traceCell(c) {
    const td = document.createElement("td");
    td.className = "mono";
    if (!c.trace_id) return td;
    const url = safeUrl(c.trace_url);
    if (url) {
      const a = document.createElement("a");
      a.href = url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.textContent = c.trace_id.slice(0, 8);
      a.title = c.trace_id;
      a.addEventListener("click", (e) => e.stopPropagation());
      td.append(a);
    } else {
      td.textContent = c.trace_id.slice(0, 8);
      td.title = c.trace_id;
    }
    return td;
  }

  // ---- charts -------------------------------------------------------------------------------

  function chartSize(el) {
    return { width: Math.max(el.clientWidth, 200), height: 160 };
  }

  // The time charts show at least the last minute: uPlot fits the time axis to the data, and
  // with one sample (the first update) it has no span and is stretched over years.
  const MIN_WINDOW_S = 60;
  function showWindow(u) {
    const t = state.times;
    if (t.length && t[t.length - 1] - t[0] < MIN_WINDOW_S) {
      const max = t[t.length - 1];
      u.setScale("x", { min: max - MIN_WINDOW_S, max });
    }
  }

  function makeCharts() {
    if (!window.uPlot) return;
    const axes = [{ stroke: "#888", grid: { stroke: "rgba(128,128,128,0.15)" } }, { stroke: "#888", grid: { stroke: "rgba(128,128,128,0.15)" } }];
    const el1 = $("chart_active");
    // The window shown, in seconds, on the element (what the browser test reads).
    const hooks = {
      setScale: [(u, key) => {
        if (key === "x") el1.dataset.windowS = String(Math.round(u.scales.x.max - u.scales.x.min));
      }],
    };
    state.charts.active = new uPlot(
      { ...chartSize(el1), legend: { show: false }, axes, hooks, series: [{}, { label: "active", stroke: "#1f6feb", width: 2 }] },
      [[], []],
      el1
    );
    const el2 = $("chart_rate");
    state.charts.rate = new uPlot(
      {
        ...chartSize(el2), axes,
        series: [{}, { label: "in/s", stroke: "#1a7f37", width: 2 }, { label: "out/s", stroke: "#b35900", width: 2 }],
      },
      [[], [], []],
      el2
    );
    const el3 = $("chart_durations");
    state.charts.durations = new uPlot(
      {
        ...chartSize(el3),
        legend: { show: false },
        scales: { x: { time: false } },
        axes: [{ ...axes[0], values: (u, ticks) => ticks.map((t) => state.durationLabels[t] || "") }, axes[1]],
        series: [{}, { label: "connections", fill: "rgba(31,111,235,0.4)", stroke: "#1f6feb", points: { show: false }, paths: uPlot.paths.bars({ size: [0.8] }) }],
      },
      [[], []],
      el3
    );
  }

  function durationLabel(le) {
    if (le === null) return "> 1 d";
    if (le < 60) return "≤ " + le + " s";
    if (le < 3600) return "≤ " + le / 60 + " m";
    return "≤ " + le / 3600 + " h";
  }

  function updateCharts(g, now) {
    const last = state.last;
    state.times.push(now / 1000);
    state.active.push(g.active_connections);
    const dt = last ? (now - last.at) / 1000 : 0;
    state.rateIn.push(dt > 0 ? Math.max(0, (g.messages_received - last.received) / dt) : 0);
    state.rateOut.push(dt > 0 ? Math.max(0, (g.messages_sent - last.sent) / dt) : 0);
    for (const series of [state.times, state.active, state.rateIn, state.rateOut]) {
      if (series.length > HISTORY) series.shift();
    }
    $("rate_received").textContent = fmt.format(Math.round(state.rateIn[state.rateIn.length - 1])) + " /s";
    $("rate_sent").textContent = fmt.format(Math.round(state.rateOut[state.rateOut.length - 1])) + " /s";
    state.last = { at: now, received: g.messages_received, sent: g.messages_sent };
    if (!state.charts.active) return;
    state.charts.active.setData([state.times, state.active]);
    state.charts.rate.setData([state.times, state.rateIn, state.rateOut]);
    showWindow(state.charts.active);
    showWindow(state.charts.rate);
    const buckets = g.connection_durations || [];
    state.durationLabels = buckets.map((b) => durationLabel(b.le));
    state.charts.durations.setData([buckets.map((_, i) => i), buckets.map((b) => b.count)]);
  }

  function renderBars(container, counts) {
    const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
    const max = Math.max(1, ...entries.map(([, n]) => n));
    const rows = entries.map(([name, n]) => {
      const row = document.createElement("div");
      row.className = "bar-row" + (n === 0 ? " zero" : "");
      const label = document.createElement("span");
      label.textContent = name;
      const track = document.createElement("span");
      track.className = "bar-track";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = (100 * n) / max + "%";
      track.append(bar);
      const value = document.createElement("span");
      value.className = "num";
      value.textContent = fmt.format(n);
      row.append(label, track, value);
      return row;
    });
    container.replaceChildren(...rows);
  }

  function renderCounts(tbody, counts) {
    const rows = Object.entries(counts).map(([name, n]) => {
      const tr = document.createElement("tr");
      tr.append(cell(name), cell(fmt.format(n), "num"));
      if (n === 0) tr.className = "zero";
      return tr;
    });
    tbody.replaceChildren(...rows);
  }

  function render(update) {
    const g = update.global_stats;
    for (const key of ["active_connections", "total_connections", "messages_received", "messages_sent"]) {
      $(key).textContent = fmt.format(g[key]);
    }
    renderBars($("disconnect_bars"), g.disconnects);
    renderCounts($("rejections"), g.rejections);
    updateCharts(g, Date.now());
    refreshTable(true);
    if (Date.now() - state.clusterAt >= CLUSTER_EVERY) refreshCluster();
  }

  // ---- the node list --------------------------------------------------------------------------

  async function refreshCluster() {
    state.clusterAt = Date.now();
    let view;
    try {
      const response = await fetch("/api/v1/cluster", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      view = await response.json();
    } catch (_) {
      return;
    }
    state.self = view.node_id;
    const rows = view.nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.dataset.node = n.id;
      if (n.status !== "alive") tr.className = "unknown";
      tr.append(
        cell(n.id + (n.self ? " (this node)" : ""), "mono"),
        cell(n.address),
        cell(n.status),
        cell(fmt.format(n.active_connections), "num"),
        cell(n.self ? "now" : seconds(n.heartbeat_age_ms / 1000) + " ago", "num"),
        cell(n.version)
      );
      return tr;
    });
    $("nodes").replaceChildren(...rows);
    const b = view.backplane;
    $("cluster_note").textContent = !b.configured
      ? "single node"
      : (b.up ? "Redis up" : "Redis unreachable") + " · " + fmt.format(view.totals.active_connections) + " open in all";
    const select = $("node");
    const chosen = select.value || view.node_id;
    const options = view.nodes.map((n) => {
      const o = document.createElement("option");
      o.value = n.id;
      o.textContent = n.id;
      return o;
    });
    select.replaceChildren(...options);
    select.value = view.nodes.some((n) => n.id === chosen) ? chosen : view.node_id;
    if (select.value !== chosen) resetPaging();
  }

  // ---- the connection table -----------------------------------------------------------------

  function query() {
    const params = new URLSearchParams();
    const node = $("node").value;
    if (node && node !== state.self) params.set("node", node);
    params.set("limit", $("limit").value);
    params.set("sort", $("sort").value);
    const search = $("search").value.trim();
    if (search) params.set("search", search);
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) params.set("cursor", cursor);
    return "/api/v1/connections?" + params.toString();
  }

  // `fromPush`: a periodic refresh, skipped while another request is under way. A user's
  // action always fetches; only the newest answer is rendered.
  async function refreshTable(fromPush) {
    if (fromPush && state.inflight > 0) return;
    const generation = ++state.generation;
    state.inflight++;
    try {
      const response = await fetch(query(), { headers: { Accept: "application/json" } });
      if (generation !== state.generation) return;
      if (!response.ok) {
        // A cursor from a page that no longer exists: start over from the first page.
        if (response.status === 400 && state.cursors.length > 1) resetPaging();
        return;
      }
      const page = await response.json();
      if (generation === state.generation) renderTable(page);
    } finally {
      state.inflight--;
    }
  }

  function renderTable(page) {
    const rows = page.connections.map((c) => {
      c.node = page.node;
      const tr = document.createElement("tr");
      tr.dataset.connectionId = c.connection_id;
      if (state.selected && state.selected.connection_id === c.connection_id) tr.className = "selected";
      tr.append(
        cell(page.node, "mono"),
        titled(c.client_id, c.client_id, "client"),
        titled(c.connection_id.slice(0, 8), c.connection_id, "mono"),
        cell(c.client_address || ""),
        titled((c.user_agent || "").slice(0, 24), c.user_agent || "", "agent"),
        titled(c.connected_at.slice(11, 19), c.connected_at, "mono"),
        titled(c.last_activity.slice(11, 19), c.last_activity, "mono"),
        cell(seconds(c.duration), "num"),
        cell(fmt.format(c.messages_received), "num"),
        cell(fmt.format(c.messages_sent), "num"),
        cell(fmt.format(c.bytes_received), "num"),
        cell(fmt.format(c.bytes_sent), "num"),
        cell(fmt.format(c.queue_depth), "num"),
        cell(c.idle ? "idle" : "", c.idle ? "idle" : ""),
        traceCell(c)
      );
      tr.addEventListener("click", () => showDetail(c));
      return tr;
    });
    $("connections").replaceChildren(...rows);
    state.next = page.next_cursor;
    const pageNo = state.cursors.length;
    $("page_label").textContent = "page " + pageNo;
    $("prev").disabled = pageNo === 1;
    $("next").disabled = !page.next_cursor;
    $("table_note").textContent = fmt.format(page.active_connections) + " open";
    if (state.selected) {
      const fresh = page.connections.find(
        (c) => c.connection_id === state.selected.connection_id && c.node === state.selected.node
      );
      if (fresh) fillDetail(fresh);
    }
  }

  function resetPaging() {
    state.cursors = [null];
    refreshTable();
  }

  // ---- detail and disconnect ----------------------------------------------------------------

  const DETAIL_FIELDS = [
    ["node", "Node"], ["client_id", "Client id"], ["connection_id", "Connection id"], ["client_address", "Address"],
    ["user_agent", "User agent"], ["connected_at", "Connected at"], ["last_activity", "Last activity"],
    ["duration", "Duration (s)"], ["messages_received", "Messages in"], ["messages_sent", "Messages out"],
    ["bytes_received", "Bytes in"], ["bytes_sent", "Bytes out"], ["queue_depth", "Queue depth"],
    ["idle", "Idle"], ["trace_id", "Trace id"], ["closing", "Closing"],
  ];

  function fillDetail(c) {
    state.selected = c;
    const items = [];
    for (const [key, label] of DETAIL_FIELDS) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      const v = c[key];
      dd.textContent = v === null || v === undefined ? "" : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(1) : String(v);
      items.push(dt, dd);
    }
    $("detail_fields").replaceChildren(...items);
    const link = $("detail_trace");
    const url = c.trace_id ? safeUrl(c.trace_url) : null;
    link.hidden = !url;
    if (url) link.href = url;
  }

  function showDetail(c) {
    fillDetail(c);
    $("detail_status").textContent = "";
    $("kick_confirm").hidden = true;
    $("kick").hidden = false;
    $("kick_area").hidden = state.role === "viewer";
    $("detail").hidden = false;
  }

  async function kick() {
    const c = state.selected;
    if (!c) return;
    $("kick_confirm").hidden = true;
    let url = "/api/v1/connections/" + encodeURIComponent(c.connection_id);
    if (c.node && c.node !== state.self) url += "?node=" + encodeURIComponent(c.node);
    const response = await fetch(url, { method: "DELETE" });
    $("detail_status").textContent =
      response.status === 202 ? "Disconnect requested." : response.status === 404 ? "Already gone." : "Refused (" + response.status + ").";
    $("kick").hidden = false;
    refreshTable();
  }

  // ---- wiring -------------------------------------------------------------------------------

  function setStatus(s, text) {
    const el = $("status");
    el.dataset.state = s;
    el.textContent = text;
  }

  async function loadRole() {
    try {
      const response = await fetch("/api/v1/whoami");
      if (response.ok) state.role = (await response.json()).role;
    } catch (_) {
      /* offline: keep the default */
    }
    $("role").textContent = state.role === "open" ? "" : state.role;
  }

  function connect() {
    const source = new EventSource("/admin/events");
    source.addEventListener("stats", (e) => {
      setStatus("live", "live");
      render(JSON.parse(e.data));
    });
    source.onerror = () => setStatus("down", "reconnecting…");
  }

  document.addEventListener("DOMContentLoaded", async () => {
    makeCharts();
    $("controls").addEventListener("submit", (e) => e.preventDefault());
    $("search").addEventListener("input", resetPaging);
    $("sort").addEventListener("change", resetPaging);
    $("limit").addEventListener("change", resetPaging);
    $("node").addEventListener("change", resetPaging);
    $("next").addEventListener("click", () => {
      if (state.next) {
        state.cursors.push(state.next);
        refreshTable();
      }
    });
    $("prev").addEventListener("click", () => {
      if (state.cursors.length > 1) {
        state.cursors.pop();
        refreshTable();
      }
    });
    $("detail_close").addEventListener("click", () => {
      $("detail").hidden = true;
      state.selected = null;
    });
    $("kick").addEventListener("click", () => {
      $("kick").hidden = true;
      $("kick_confirm").hidden = false;
    });
    $("kick_no").addEventListener("click", () => {
      $("kick_confirm").hidden = true;
      $("kick").hidden = false;
    });
    $("kick_yes").addEventListener("click", kick);
    await loadRole();
    await refreshCluster();
    connect();
  });
})();
