// wsmon dashboard: subscribes to /admin/events (Server-Sent Events) and renders each update.
// Every value from the server is written with textContent: client-supplied strings are data,
// never markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat();

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  // "2026-11-28T10:00:05.123456Z" -> "10:00:05"; the full value stays in the tooltip.
  function idCell(id) {
    const td = cell(id.slice(0, 8), "mono");
    td.title = id;
    return td;
  }

  // A link to the connection's trace, when tracing is on. Only http(s) URLs become links.
  function traceCell(c) {
    const td = document.createElement("td");
    if (c.trace_id && /^https?:\/\//.test(c.trace_url)) {
      const a = document.createElement("a");
      a.href = c.trace_url;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.textContent = c.trace_id.slice(0, 8);
      a.title = c.trace_id;
      td.append(a);
    } else if (c.trace_id) {
      td.textContent = c.trace_id.slice(0, 8);
      td.title = c.trace_id;
    }
    td.className = "mono";
    return td;
  }

  function timeCell(iso) {
    const td = cell(iso.slice(11, 19), "mono");
    td.title = iso;
    return td;
  }

  function seconds(s) {
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
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

  function renderConnections(list, active) {
    const rows = list.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.connectionId = c.connection_id;
      const client = cell(c.client_id, "client");
      client.title = c.client_id;
      tr.append(
        client,
        idCell(c.connection_id),
        cell(c.client_address || ""),
        timeCell(c.connected_at),
        timeCell(c.last_activity),
        cell(seconds(c.duration), "num"),
        cell(fmt.format(c.messages_received), "num"),
        cell(fmt.format(c.messages_sent), "num"),
        cell(fmt.format(c.bytes_received), "num"),
        cell(fmt.format(c.bytes_sent), "num"),
        cell(fmt.format(c.queue_depth), "num"),
        cell(c.idle ? "idle" : "", c.idle ? "idle" : ""),
        traceCell(c)
      );
      return tr;
    });
    $("connections").replaceChildren(...rows);
    $("table_note").textContent =
      active > list.length ? "(oldest " + list.length + " of " + fmt.format(active) + ")" : "";
  }

  function render(update) {
    const g = update.global_stats;
    for (const key of ["active_connections", "total_connections", "messages_received", "messages_sent"]) {
      $(key).textContent = fmt.format(g[key]);
    }
    renderCounts($("disconnects"), g.disconnects);
    renderCounts($("rejections"), g.rejections);
    renderConnections(update.connections, g.active_connections);
  }

  function setStatus(state, text) {
    const el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function connect() {
    const source = new EventSource("/admin/events");
    source.addEventListener("stats", (e) => {
      setStatus("live", "live");
      render(JSON.parse(e.data));
    });
    // EventSource reconnects by itself; show that it is trying.
    source.onerror = () => setStatus("down", "reconnecting…");
  }

  document.addEventListener("DOMContentLoaded", connect);
})();
