// The ktrdr dashboard: plain JavaScript over the status API, live through server-sent events.
// Text from the platform (ids, params, errors) is only ever set as text, never parsed as HTML.
"use strict";

const { lineChart, legend } = window.ktrdrCharts;
const PAGE = 50;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
const BACKTEST = "backtesting"; // the op type whose runs can be compared
const MAX_COMPARED = 10; // ktrdr.backtest.compare.MAX_COMPARED

const state = {
  role: null,
  workers: new Map(),
  types: [],
  view: null, // the current view: {name, onOps(list), onWorkers(), reload()}
  source: null,
  ticker: null,
  axes: new Map(), // a sweep's heatmap axes as chosen on its page, by op id: kept when the page is drawn again
};

// --- small helpers -----------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", body } = {}) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const json = (res.headers.get("content-type") || "").includes("json") ? await res.json() : null;
  if (res.status === 401 && path !== "/api/v1/session") {
    showLogin();
  }
  if (!res.ok) throw new ApiError(res.status, (json && json.error) || res.statusText);
  return json;
}

function toast(text) {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

function when(iso) {
  if (!iso) return "–";
  return iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z");
}

function ago(iso) {
  if (!iso) return "–";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 0) return "in " + span(-s);
  return span(s) + " ago";
}

function span(s) {
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return v.toLocaleString("en");
    return Math.abs(v) >= 1e4 ? v.toLocaleString("en", { maximumFractionDigits: 2 }) : v.toPrecision(4);
  }
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function statusBadge(status) {
  return h("span", { class: `status ${status}`, "data-status": status }, status);
}

function opLink(id) {
  return id ? h("a", { href: `#/op/${encodeURIComponent(id)}`, class: "mono" }, id) : "–";
}

function progressBar(op) {
  const p = op.progress || {};
  const done = op.status === "completed";
  const pct = done ? 100 : Math.max(0, Math.min(100, p.percentage || 0));
  const bar = h("span", { class: "bar" + (done ? " done" : ""), "data-progress": pct.toFixed(1) },
                h("span", { style: `width:${pct}%` }));
  if (TERMINAL.has(op.status) && !done) {
    return h("span", {}, h("span", { class: "bar ended", "data-progress": pct.toFixed(1) }, h("span", { style: `width:${pct}%` })));
  }
  let text = done ? "" : `${pct.toFixed(0)} %`;
  if (!done && p.items_total) text += ` · ${fmt(p.items_done || 0)}/${fmt(p.items_total)}`;
  if (!done && p.message) text += ` · ${p.message}`;
  if (op.status === "pending") text = "waiting for a worker" + (op.route ? ` (${op.route})` : "");
  return h("span", {}, bar, h("span", { class: "progress-text" }, text));
}

function kvTable(obj) {
  const rows = Object.entries(obj || {}).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { class: "mono" }, fmt(v))));
  return rows.length ? h("table", { class: "kv" }, rows) : h("p", { class: "muted" }, "none");
}

function metricsGrid(obj) {
  return h("div", { class: "metrics", id: "result" }, Object.entries(obj).map(([k, v]) =>
    h("div", {}, h("span", { class: "muted" }, k), h("b", { class: "mono" }, fmt(v)))));
}

function table(headers, rows, attrs) {
  return h("table", attrs || {},
           h("thead", {}, h("tr", {}, headers.map((c) => h("th", { class: c.num ? "num" : null }, c.label || c)))),
           h("tbody", {}, rows));
}

/** A number's cell, sorted by its value rather than its text. */
function numCell(v) {
  return h("td", { class: "num", "data-sort": typeof v === "number" ? v : "" }, fmt(v));
}

function sortKey(td) {
  if (!td) return null;
  const raw = (td.dataset.sort !== undefined ? td.dataset.sort : td.textContent).trim();
  if (raw === "" || raw === "–") return null;
  const n = Number(raw.replace(/,/g, ""));
  return Number.isFinite(n) ? n : raw;
}

/** Clicking a header sorts the rows by its column, clicking again the other way: numbers (a cell's
 * data-sort, else its text) numerically, text naturally, empty cells last either way. */
function sortable(tableEl) {
  const heads = [...tableEl.tHead.rows[0].cells];
  heads.forEach((th, col) => {
    th.classList.add("sortable");
    th.title = "sort by this column";
    th.addEventListener("click", () => {
      const dir = th.dataset.sorted === "asc" ? "desc" : "asc";
      for (const other of heads) { delete other.dataset.sorted; other.removeAttribute("aria-sort"); }
      th.dataset.sorted = dir;
      th.setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
      const sign = dir === "asc" ? 1 : -1;
      const body = tableEl.tBodies[0];
      const keyed = [...body.rows].map((tr) => ({ tr, key: sortKey(tr.cells[col]) }));
      keyed.sort((a, b) => {
        if (a.key === null || b.key === null) return (a.key === null) - (b.key === null);
        if (typeof a.key === "number" && typeof b.key === "number") return sign * (a.key - b.key);
        return sign * String(a.key).localeCompare(String(b.key), "en", { numeric: true });
      });
      body.append(...keyed.map((k) => k.tr));
    });
  });
  return tableEl;
}

// --- sign-in -------------------------------------------------------------------------------------

function showLogin(message) {
  document.getElementById("login").hidden = false;
  const err = document.getElementById("login-error");
  err.hidden = !message;
  err.textContent = message || "";
  document.getElementById("token").focus();
}

async function signIn(token) {
  const res = await fetch("/api/v1/session", {
    method: "POST", credentials: "same-origin", headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    showLogin(body.error || `sign-in failed (${res.status})`);
    return false;
  }
  document.getElementById("login").hidden = true;
  return true;
}

async function session() {
  try {
    const me = await api("/api/v1/session");
    state.role = me.role;
    document.getElementById("role").textContent = me.role === "viewer" ? "viewer (read-only)" : "operator";
    document.getElementById("signout").hidden = false;
    return true;
  } catch (e) {
    if (e.status === 401) { showLogin(); return false; }
    throw e;
  }
}

// --- live updates --------------------------------------------------------------------------------

function connectLive() {
  if (state.source) state.source.close();
  const pill = document.getElementById("live");
  const source = new EventSource("/api/v1/stream");
  state.source = source;
  source.addEventListener("hello", () => {
    pill.textContent = "live"; pill.className = "pill on";
    // Anything that changed while disconnected: load the view again.
    refreshWorkers().then(() => state.view && state.view.reload());
  });
  source.addEventListener("ops", (ev) => {
    const ops = JSON.parse(ev.data);
    if (state.view && state.view.onOps) state.view.onOps(ops);
  });
  source.addEventListener("workers", (ev) => {
    const { changed, gone } = JSON.parse(ev.data);
    for (const w of changed) state.workers.set(w.worker_id, w);
    for (const id of gone) state.workers.delete(id);
    if (state.view && state.view.onWorkers) state.view.onWorkers();
  });
  source.addEventListener("resync", () => state.view && state.view.reload());
  source.onerror = () => {
    pill.textContent = "reconnecting"; pill.className = "pill off";
    if (source.readyState === EventSource.CLOSED) {
      // Refused (signed out, or too many pages): find out which, then try again.
      session().then((ok) => ok && setTimeout(connectLive, 3000));
    }
  };
}

async function refreshWorkers() {
  const data = await api("/api/v1/workers");
  state.workers = new Map(data.workers.map((w) => [w.worker_id, w]));
}

// --- views ---------------------------------------------------------------------------------------

function workersTable() {
  const workers = [...state.workers.values()].sort((a, b) => a.worker_id.localeCompare(b.worker_id));
  if (!workers.length) return h("p", { class: "muted", id: "no-workers" }, "No workers hold a lease. Start one with `ktrdr worker backtest`.");
  const rows = workers.map((w) => {
    const expires = new Date(Date.parse(w.heartbeat_at) + w.lease_ttl_s * 1000).toISOString();
    const device = w.gpu ? `${w.device_name || "GPU"}${w.device_memory_mb ? ` (${fmt(w.device_memory_mb)} MB)` : ""}` : "CPU";
    return h("tr", { "data-worker-id": w.worker_id },
             h("td", { class: "id" }, w.worker_id), h("td", {}, w.worker_type), h("td", {}, w.host),
             h("td", {}, statusBadge(w.state)), h("td", { class: "mono" }, w.capabilities.join(" ")),
             h("td", {}, device), h("td", { class: "num" }, `${w.running.length}/${w.slots}`),
             h("td", {}, w.running.length ? w.running.map((r) => h("div", {}, opLink(r.op_id))) : "–"),
             h("td", { "data-ago": w.heartbeat_at }, ago(w.heartbeat_at)),
             h("td", { "data-ago": expires }, ago(expires)));
  });
  return table(["worker", "type", "host", "state", "capabilities", "device", { label: "busy", num: true }, "running",
                "heartbeat", "lease expires"], rows, { id: "workers" });
}

function opRow(op, pick) {
  return h("tr", { "data-op-id": op.op_id },
           pick ? h("td", { class: "pick" }, pick(op)) : null,
           h("td", { class: "id" }, opLink(op.op_id)), h("td", {}, op.type), h("td", {}, statusBadge(op.status)),
           h("td", {}, progressBar(op)), h("td", { class: "id" }, op.worker_id || "–"),
           h("td", {}, op.parent_id ? opLink(op.parent_id) : "–"),
           h("td", { title: op.created_at }, when(op.created_at)),
           h("td", { class: "error" }, op.error ? op.error.slice(0, 160) : ""));
}

const OP_HEADERS = ["operation", "type", "status", "progress", "worker", "parent", "created", "error"];

/** Ticked completed backtests, opened side by side on the compare page. The ticks are kept by id, so
 * they survive the list being drawn again (live changes, reloads, other pages or filters). */
function comparePicker() {
  const selected = new Set();
  let body = null; // the list's rows, as last drawn
  const count = h("span", { class: "muted", id: "compare-count" });
  const go = h("button", { class: "primary", id: "compare-selected", disabled: true, onclick: () => {
    location.hash = `#/compare?ids=${[...selected].map(encodeURIComponent).join(",")}`;
  } }, "compare selected");
  const clear = h("button", { id: "compare-clear", hidden: true, onclick: () => {
    selected.clear();
    for (const box of body ? body.querySelectorAll("input.pick:checked") : []) box.checked = false;
    describe();
  } }, "clear");
  function describe() {
    const n = selected.size;
    go.disabled = n < 2 || n > MAX_COMPARED;
    clear.hidden = n === 0;
    count.textContent = n === 0 ? `tick 2 to ${MAX_COMPARED} completed backtests to compare them`
      : `${n} selected` + (n < 2 ? ", tick one more" : n > MAX_COMPARED ? `, at most ${MAX_COMPARED}` : "");
  }
  describe();
  const pick = (op) => op.type === BACKTEST && op.status === "completed"
    ? h("input", { type: "checkbox", class: "pick", "data-op-id": op.op_id, title: "compare this backtest",
                   checked: selected.has(op.op_id), onchange: (ev) => {
                     if (ev.target.checked) selected.add(op.op_id); else selected.delete(op.op_id);
                     describe();
                   } })
    : null;
  const el = h("div", { class: "pager compare-bar" }, go, clear, count);
  // Shown where there is something to tick, or something ticked.
  const shown = (tbody) => {
    body = tbody;
    el.hidden = selected.size === 0 && !tbody.querySelector("input.pick");
  };
  return { pick, el, shown };
}

/** A paged list of ops, kept live: rows change in place; new ones appear on the first page. With
 * ``compare``, completed backtests have a box to tick and the list a button comparing those ticked. */
function opsList({ filters, pageSize = PAGE, showPager = true, compare = false }) {
  const tbody = h("tbody");
  const info = h("span", { class: "muted" });
  const prev = h("button", { onclick: () => { offset = Math.max(0, offset - pageSize); load(); } }, "← newer");
  const next = h("button", { onclick: () => { offset += pageSize; load(); } }, "older →");
  const picker = compare ? comparePicker() : null;
  const headers = picker ? ["", ...OP_HEADERS] : OP_HEADERS;
  const opRowHere = (op) => opRow(op, picker && picker.pick);
  const el = h("div", {}, picker ? picker.el : null,
               h("table", { class: "ops" }, h("thead", {}, h("tr", {}, headers.map((c) => h("th", {}, c)))), tbody),
               showPager ? h("div", { class: "pager" }, prev, next, info) : info);
  let offset = 0;
  let total = 0;
  let capped = false;
  let shown = new Map();

  function describe(count) {
    info.textContent = `${count ? offset + 1 : 0}–${offset + count} of ${fmt(total)}${capped ? "+" : ""}`;
  }

  function query() {
    const q = new URLSearchParams({ limit: pageSize, offset });
    const f = filters();
    if (f.status) q.set("status", f.status);
    if (f.type) q.set("type", f.type);
    if (f.parent_id) q.set("parent_id", f.parent_id);
    if (f.q) q.set("q", f.q);
    if (f.include_children) q.set("include_children", "true");
    return q;
  }

  async function load() {
    const data = await api(`/api/v1/operations?${query()}`);
    shown = new Map(data.operations.map((op) => [op.op_id, op]));
    tbody.replaceChildren(...data.operations.map(opRowHere));
    if (!data.operations.length) tbody.append(h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "no operations")));
    if (picker) picker.shown(tbody);
    total = data.total;
    capped = data.total_capped;
    describe(data.operations.length);
    prev.disabled = offset === 0;
    next.disabled = data.next_offset === null || data.next_offset === undefined;
  }

  function matches(op) {
    const f = filters();
    if (f.status && f.status !== op.status) return false;
    if (f.type && f.type !== op.type) return false;
    if (f.parent_id) return op.parent_id === f.parent_id;
    if (f.q && !op.op_id.includes(f.q)) return false;
    return f.include_children || !op.parent_id;
  }

  function onOps(ops) {
    for (const op of ops) {
      const row = tbody.querySelector(`tr[data-op-id="${CSS.escape(op.op_id)}"]`);
      if (row) {
        shown.set(op.op_id, op);
        row.replaceWith(opRowHere(op));
      } else if (offset === 0 && matches(op) && !shown.has(op.op_id)) {
        shown.set(op.op_id, op);
        const fresh = opRowHere(op);
        fresh.classList.add("new");
        const empty = tbody.querySelector("td[colspan]");
        if (empty) empty.parentElement.remove();
        tbody.prepend(fresh);
        while (tbody.children.length > pageSize) tbody.lastElementChild.remove();
        total += 1;
        describe(tbody.children.length);
      }
    }
    if (picker) picker.shown(tbody);
  }

  return { el, load, onOps, reset: () => { offset = 0; return load(); } };
}

async function queuesPanel() {
  const data = await api("/api/v1/queues");
  const rows = data.queues.map((q) => h("tr", { "data-subject": q.subject },
    h("td", { class: "mono" }, q.subject), h("td", { class: "num" }, fmt(q.pending ?? q.stored)),
    h("td", { class: "num" }, fmt(q.in_progress)), h("td", { class: "num" }, fmt(q.waiting_pulls)),
    h("td", {}, q.oldest_wait_s === null ? "–" : span(q.oldest_wait_s))));
  const counts = h("p", { class: "counts" }, STATUSES.map((s) => h("span", {}, statusBadge(s), " ", fmt(data.ops[s] || 0))));
  return h("div", {}, counts,
           table(["job subject", { label: "waiting", num: true }, { label: "being worked", num: true },
                  { label: "idle pulls", num: true }, "oldest waiting for"], rows, { id: "queues" }));
}

function overviewView() {
  const workersBox = h("div", { class: "panel" }, h("h2", {}, "Workers"), h("div", {}));
  const queuesBox = h("div", { class: "panel" }, h("h2", {}, "Queues"), h("div", {}));
  const list = opsList({ filters: () => ({}), pageSize: 15, showPager: false });
  const opsBox = h("div", { class: "panel" }, h("h2", {}, "Latest operations ", h("a", { href: "#/ops" }, "all →")), list.el);
  const root = h("div", {}, workersBox, queuesBox, opsBox);
  let queueTimer = null;
  const drawWorkers = () => workersBox.lastChild.replaceWith(h("div", {}, workersTable()));
  const drawQueues = async () => queuesBox.lastChild.replaceWith(await queuesPanel());
  return {
    name: "overview", root,
    async reload() { drawWorkers(); await Promise.all([list.load(), drawQueues()]); },
    onOps(ops) {
      list.onOps(ops);
      // Queue depths are read from JetStream: at most twice a second however busy the fleet is.
      if (!queueTimer) queueTimer = setTimeout(() => { queueTimer = null; drawQueues().catch(() => {}); }, 500);
    },
    onWorkers: drawWorkers,
  };
}

function opsView(params) {
  const status = h("select", { id: "f-status" }, h("option", { value: "" }, "any status"),
                   STATUSES.map((s) => h("option", { value: s }, s)));
  const type = h("select", { id: "f-type" }, h("option", { value: "" }, "any type"),
                 state.types.map((t) => h("option", { value: t.name }, t.name)));
  const parent = h("input", { id: "f-parent", placeholder: "parent id", size: 28 });
  const search = h("input", { id: "f-search", placeholder: "search ids", size: 24 });
  const children = h("input", { id: "f-children", type: "checkbox" });
  status.value = params.get("status") || "";
  type.value = params.get("type") || "";
  parent.value = params.get("parent") || "";
  search.value = params.get("q") || "";
  const filters = () => ({ status: status.value, type: type.value, parent_id: parent.value.trim(),
                           q: search.value.trim(), include_children: children.checked });
  const list = opsList({ filters, compare: true });
  let timer = null;
  const changed = () => { clearTimeout(timer); timer = setTimeout(() => list.reset().catch(showError), 250); };
  for (const input of [status, type, children]) input.addEventListener("change", changed);
  for (const input of [parent, search]) input.addEventListener("input", changed);
  const root = h("div", {},
                 h("div", { class: "panel" }, h("h2", {}, "Operations"),
                   h("div", { class: "filters" }, status, type, parent, search,
                     h("label", {}, children, " with children")), list.el),
                 state.role === "operator" ? submitPanel() : null);
  return { name: "ops", root, reload: () => list.load(), onOps: list.onOps };
}

function newOpId(type) {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return `${type}-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** POST with the id chosen here, tried again on a network error: the same id can only make one op. */
async function submit(type, params) {
  const body = { type, params, op_id: newOpId(type) };
  for (let attempt = 1; ; attempt++) {
    try {
      return await api("/api/v1/operations", { method: "POST", body });
    } catch (e) {
      if (e instanceof ApiError || attempt >= 4) throw e;
      await new Promise((r) => setTimeout(r, 300 * attempt));
    }
  }
}

function submitPanel() {
  const type = h("select", { id: "s-type" }, state.types.map((t) => h("option", { value: t.name }, t.name)));
  const params = h("textarea", { id: "s-params", rows: 3, cols: 70, spellcheck: "false" }, '{"steps": 20, "duration": 5}');
  const out = h("p", { class: "muted" });
  const go = h("button", { class: "primary", id: "s-submit", onclick: async () => {
    let parsed;
    try { parsed = JSON.parse(params.value || "{}"); } catch (e) { out.textContent = `params are not JSON: ${e.message}`; return; }
    go.disabled = true;
    try {
      const op = await submit(type.value, parsed);
      out.replaceChildren("submitted ", opLink(op.op_id));
    } catch (e) {
      out.textContent = `refused: ${e.message}`;
    } finally { go.disabled = false; }
  } }, "Submit");
  type.value = state.types.some((t) => t.name === "dummy") ? "dummy" : type.value;
  return h("div", { class: "panel" }, h("h2", {}, "Submit an operation"),
           h("div", { class: "filters" }, type, params, go), out);
}

function timeline(events) {
  if (!events.length) return h("p", { class: "muted" }, "no events kept for it");
  return h("ul", { class: "timeline" }, events.map((e) => h("li", { class: e.event },
    h("time", {}, when(e.timestamp)), h("b", {}, e.event), ` attempt ${e.attempt} on `, h("span", { class: "mono" }, e.worker_id),
    e.message ? ` · ${e.message}` : "", e.error ? h("div", { class: "error" }, e.error) : "")));
}

function attemptsTable(op) {
  if (!op.attempts.length) return h("p", { class: "muted" }, "none yet");
  const rows = op.attempts.map((a) => h("tr", {},
    Object.values(a).map((v) => h("td", { class: "mono" }, typeof v === "string" && v.includes("T") && v.length > 18 ? when(v) : fmt(v)))));
  return table(Object.keys(op.attempts[0]), rows);
}

function curvesChart(curves, { folds } = {}) {
  const box = h("div", {});
  const x = curves.time_ms;
  const equity = [{ name: "strategy", values: curves.equity, color: "#2563eb" }];
  if (curves.benchmark) equity.push({ name: "buy and hold", values: curves.benchmark, color: "#9ca3af", dash: "4 3" });
  const vlines = (folds || []).map((f) => ({ x: Date.parse(f.out_start) }));
  box.append(h("h2", {}, "Equity"), legend(equity),
             lineChart({ x, series: equity, xKind: "time", kind: "equity", vlines }));
  const dd = [{ name: "strategy", values: curves.drawdown_pct, color: "#b91c1c" }];
  if (curves.benchmark_drawdown_pct) dd.push({ name: "buy and hold", values: curves.benchmark_drawdown_pct, color: "#9ca3af", dash: "4 3" });
  box.append(h("h2", {}, "Drawdown %"), legend(dd),
             lineChart({ x, series: dd, xKind: "time", kind: "drawdown", height: 160, zeroTop: true, vlines }));
  return box;
}

function tradesTable(trades) {
  const rows = trades.shown.slice().reverse().map((t) => h("tr", {},
    h("td", {}, t.entry_time_ms ? when(new Date(t.entry_time_ms).toISOString()) : fmt(t.entry_bar)),
    h("td", {}, t.exit_time_ms ? when(new Date(t.exit_time_ms).toISOString()) : fmt(t.exit_bar)),
    h("td", {}, t.side > 0 ? "long" : "short"), h("td", { class: "num" }, fmt(t.size)),
    h("td", { class: "num" }, fmt(t.entry_price)), h("td", { class: "num" }, fmt(t.exit_price)),
    h("td", { class: "num" }, fmt(t.pnl)), h("td", { class: "num" }, fmt(t.bars_held))));
  return h("div", {}, h("h2", {}, `Trades (${fmt(trades.count)}${trades.count > trades.shown.length ? `, the last ${trades.shown.length}` : ""})`),
           table(["entry", "exit", "side", { label: "size", num: true }, { label: "entry price", num: true },
                  { label: "exit price", num: true }, { label: "pnl", num: true }, { label: "bars", num: true }], rows, { id: "trades" }));
}

function heatmapTable(hm, metric, descending) {
  const best = descending === false ? "lowest" : "highest";
  const rest = hm.rest && hm.rest.length
    ? h("p", { class: "muted", id: "heatmap-rest" },
        `Each cell: the best (${best}) ${metric} over ${hm.rest.join(", ")}, the best variant's value, not an average.`)
    : null;
  if (!hm.cells) {
    return h("div", {}, h("h2", {}, `${metric} by ${hm.x} and ${hm.y}`),
             h("p", { class: "muted", id: "heatmap-too-large" }, `Too large to draw here (${hm.too_large || "too many cells"}).`));
  }
  const values = hm.cells.flat().filter((v) => v !== null && v !== undefined);
  const lo = Math.min(...values), hi = Math.max(...values);
  const shade = (v) => {
    if (v === null || v === undefined || hi === lo) return "";
    const t = (v - lo) / (hi - lo);
    const good = descending === false ? 1 - t : t;
    return `background: hsl(${Math.round(120 * good)}, 70%, 80%)`;
  };
  const head = h("tr", {}, h("th", {}, `${hm.y} \\ ${hm.x}`), ...hm.x_values.map((v) => h("th", { class: "num" }, String(v))));
  const rows = hm.y_values.map((yv, i) => h("tr", {}, h("th", { class: "num" }, String(yv)),
    ...hm.cells[i].map((c) => h("td", { class: "num", style: shade(c) }, fmt(c)))));
  return h("div", {}, h("h2", {}, `${metric} by ${hm.x} and ${hm.y}`), rest,
           h("table", { id: "heatmap", "data-x": hm.x, "data-y": hm.y }, h("thead", {}, head), h("tbody", {}, rows)));
}

/** The heatmap, and with more than two parameters in the grid, a choice of the two it is drawn over
 * (read again from the API: the cells are made from the whole ranking, not the page's top of it). */
function heatmapPanel(opId, view) {
  const first = view.heatmap;
  const out = h("div", {}, heatmapTable(first, view.metric, view.descending));
  if (!first.parameters || first.parameters.length <= 2) return out;
  const choice = (id, value) => {
    const select = h("select", { id }, first.parameters.map((p) => h("option", { value: p }, p)));
    select.value = value;
    return select;
  };
  const xs = choice("heatmap-x", first.x), ys = choice("heatmap-y", first.y);
  let shown = { x: first.x, y: first.y };
  let asked = 0;
  async function redraw(ev) {
    // The same parameter on both axes: the other one takes the place this one left.
    if (xs.value === ys.value) {
      if (ev.target === xs) ys.value = shown.x; else xs.value = shown.y;
    }
    const axes = { x: xs.value, y: ys.value };
    const mine = ++asked;
    try {
      const fresh = await api(`/api/v1/operations/${encodeURIComponent(opId)}/chart?${new URLSearchParams(axes)}`);
      if (mine !== asked) return; // a later choice is on its way
      shown = axes;
      state.axes.set(opId, axes);
      out.replaceChildren(heatmapTable(fresh.heatmap, view.metric, view.descending));
    } catch (e) {
      if (mine === asked) out.replaceChildren(h("p", { class: "error", id: "heatmap-error" }, `heatmap: ${e.message}`));
    }
  }
  xs.addEventListener("change", redraw);
  ys.addEventListener("change", redraw);
  return h("div", {}, h("div", { class: "filters", id: "heatmap-axes" }, "Heatmap over",
                        h("label", {}, "x ", xs), h("label", {}, "y ", ys)), out);
}

function rankingTable(view, opId) {
  const metric = view.metric;
  const rows = view.ranking.map((r) => h("tr", {},
    numCell(r.rank), h("td", { class: "mono" }, Object.entries(r.parameters).map(([k, v]) => `${k}=${v}`).join(" ")),
    numCell(r.metrics && r.metrics[metric]),
    numCell(r.neighbourhood),
    numCell(r.metrics && r.metrics.total_return_pct),
    numCell(r.metrics && r.metrics.max_drawdown_pct),
    numCell(r.metrics && r.metrics.trades), h("td", {}, r.op_id ? opLink(r.op_id) : "–"),
    h("td", {}, r.excluded || "")));
  const met = view.eligible === null || view.eligible === undefined ? "" : `, ${fmt(view.eligible)} meet the objective`;
  return h("div", {}, h("h2", {}, `Ranking by ${view.objective || metric} (${fmt(view.completed)} of ${fmt(view.combinations)} variants, ${fmt(view.failed)} failed${met})`),
           view.no_best ? h("p", { class: "warning", id: "no-best" }, `No best: ${view.no_best}`) : null,
           view.heatmap ? heatmapPanel(opId, view) : null,
           sortable(table([{ label: "rank", num: true }, "parameters", { label: metric, num: true }, { label: "neighbourhood", num: true }, { label: "return %", num: true },
                           { label: "max dd %", num: true }, { label: "trades", num: true }, "full run", "excluded"], rows, { id: "ranking" })));
}

function trainingCharts(view) {
  const x = view.epochs.map((e) => e.epoch);
  const loss = [{ name: "train loss", values: view.epochs.map((e) => e.train_loss), color: "#2563eb" },
                { name: "validation loss", values: view.epochs.map((e) => e.val_loss), color: "#b45309" }];
  const acc = [{ name: "train accuracy", values: view.epochs.map((e) => e.train_accuracy), color: "#2563eb" },
               { name: "validation accuracy", values: view.epochs.map((e) => e.val_accuracy), color: "#b45309" }];
  return h("div", {}, h("h2", {}, "Loss per epoch"), legend(loss), lineChart({ x, series: loss, xKind: "number", kind: "loss", height: 200 }),
           h("h2", {}, "Accuracy per epoch"), legend(acc), lineChart({ x, series: acc, xKind: "number", kind: "accuracy", height: 200 }));
}

function foldsTable(view) {
  const rows = view.folds.map((f) => h("tr", {}, Object.entries(f).map(([, v]) => h("td", { class: "mono" }, fmt(v)))));
  return view.folds.length ? h("div", {}, h("h2", {}, "Folds"), table(Object.keys(view.folds[0]), rows)) : null;
}

async function resultPanel(op) {
  let view;
  const axes = state.axes.get(op.op_id);
  const query = axes ? `?${new URLSearchParams(axes)}` : "";
  try { view = await api(`/api/v1/operations/${encodeURIComponent(op.op_id)}/chart${query}`); } catch (e) {
    return e.status === 404 ? null : h("p", { class: "error" }, `result: ${e.message}`);
  }
  const box = h("div", { class: "panel", id: "result-view", "data-kind": view.kind });
  if (view.kind === "backtest") {
    box.append(h("p", {}, h("a", { href: `#/compare?ids=${encodeURIComponent(op.op_id)},`, id: "compare-link" },
                             "compare with other backtests…")));
    if (view.curves) box.append(curvesChart(view.curves));
    box.append(tradesTable(view.trades));
  } else if (view.kind === "folds") {
    if (view.curves) box.append(curvesChart(view.curves, { folds: view.fold_windows }));
    const folds = foldsTable(view);
    if (folds) box.append(folds);
  } else if (view.kind === "ranking") {
    box.append(rankingTable(view, op.op_id));
  } else if (view.kind === "epochs") {
    box.append(trainingCharts(view));
  } else {
    return null;
  }
  return box;
}

function opView(opId) {
  const root = h("div", {}, h("p", { class: "muted" }, "loading…"));
  let current = null;
  let children = null;
  let refetch = null;

  async function cancel() {
    const reason = encodeURIComponent("cancelled from the dashboard");
    try {
      const reply = await api(`/api/v1/operations/${encodeURIComponent(opId)}?reason=${reason}`, { method: "DELETE" });
      toast(reply.message || `cancel ${reply.accepted ? "accepted" : "refused"}`);
    } catch (e) { toast(`cancel refused: ${e.message}`); }
  }

  async function load() {
    let op;
    try { op = await api(`/api/v1/operations/${encodeURIComponent(opId)}`); } catch (e) {
      root.replaceChildren(h("div", { class: "panel" }, h("h1", {}, opId), h("p", { class: "error", id: "op-error" }, e.message)));
      return;
    }
    current = op;
    const events = await api(`/api/v1/operations/${encodeURIComponent(opId)}/events`).catch(() => ({ events: [] }));
    const head = h("div", { class: "panel", id: "op-head", "data-status": op.status },
      h("h1", {}, h("span", { class: "mono" }, op.op_id), " ", statusBadge(op.status)),
      h("p", {}, progressBar(op)),
      !TERMINAL.has(op.status) && state.role === "operator"
        ? h("button", { class: "danger", id: "cancel", onclick: cancel }, "Cancel") : null,
      op.error ? h("p", { class: "error", id: "op-error" }, op.error) : null,
      op.cancel_reason ? h("p", { class: "muted" }, `cancelled: ${op.cancel_reason}`) : null,
      op.warnings.length ? h("ul", {}, op.warnings.map((w) => h("li", { class: "muted" }, w))) : null);
    const facts = { type: op.type, parent: op.parent_id, worker: op.worker_id, attempt: `${op.attempt} of ${op.max_attempts}`,
                    route: op.route, "why this route": op.route_reason, created: when(op.created_at),
                    started: when(op.started_at), completed: when(op.completed_at),
                    duration: op.started_at && op.completed_at ? span((Date.parse(op.completed_at) - Date.parse(op.started_at)) / 1000) : null };
    const parts = [head,
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Operation"), kvTable(facts)),
        h("div", { class: "panel" }, h("h2", {}, "Parameters"), kvTable(op.params))),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Attempts"), attemptsTable(op)),
        h("div", { class: "panel" }, h("h2", {}, "Events"), timeline(events.events)))];
    if (op.status === "completed") {
      const panel = await resultPanel(op);
      if (panel) parts.push(panel);
    }
    if (op.result) parts.push(h("div", { class: "panel" }, h("h2", {}, "Result"), metricsGrid(flatResult(op.result))));
    if (!children) children = opsList({ filters: () => ({ parent_id: opId }), pageSize: PAGE, compare: true });
    await children.load();
    if (children.el.querySelector("tbody tr[data-op-id]")) parts.push(h("div", { class: "panel" }, h("h2", {}, "Children"), children.el));
    root.replaceChildren(...parts);
  }

  return {
    name: "op", root, reload: load,
    onOps(ops) {
      if (children) children.onOps(ops);
      const mine = ops.find((o) => o.op_id === opId);
      if (!mine) return;
      // The progress bar moves at once; the rest of the page is read again at most twice a second.
      const bar = root.querySelector("#op-head p");
      if (bar && current && !TERMINAL.has(mine.status)) bar.replaceChildren(progressBar(mine));
      if (current && mine.status !== current.status && !refetch) {
        refetch = setTimeout(() => { refetch = null; load().catch(showError); }, 500);
      }
    },
  };
}

function flatResult(result) {
  const out = {};
  for (const [k, v] of Object.entries(result)) {
    if (v && typeof v === "object" && !Array.isArray(v) && k === "metrics") {
      for (const [mk, mv] of Object.entries(v)) if (typeof mv !== "object") out[mk] = mv;
    } else if (v === null || typeof v !== "object") out[k] = v;
  }
  return out;
}

const COMPARE_COLORS = ["#2563eb", "#b45309", "#15803d", "#7c3aed", "#be123c", "#0e7490", "#4d7c0f", "#a16207",
                        "#1d4ed8", "#9d174d"];

function compareView(params) {
  const input = h("input", { id: "compare-ids", size: 80, value: params.get("ids") || "",
                             placeholder: "backtest ids, comma-separated (2 to 10)" });
  const out = h("div", {});
  const go = () => { location.hash = `#/compare?ids=${input.value.replace(/\s+/g, "")}`; };
  const box = h("div", { class: "panel" }, h("h2", {}, "Compare backtests"),
                h("form", { onsubmit: (ev) => { ev.preventDefault(); go(); } }, input, h("button", {}, "compare")), out);
  return {
    name: "compare", root: box,
    async reload() {
      const ids = (params.get("ids") || "").split(",").filter(Boolean);
      if (ids.length < 2) {
        out.replaceChildren(h("p", { class: "muted" }, "Give two or more backtest ids (each backtest's page links here)."));
        return;
      }
      const data = await api(`/api/v1/backtests/compare?ids=${encodeURIComponent(ids.join(","))}`);
      const runs = ids.map((id, i) => ({ id, color: COMPARE_COLORS[i % COMPARE_COLORS.length] }));
      const series = runs.filter((r) => data.curves[r.id]).map((r) => ({
        name: r.id, color: r.color, x: data.curves[r.id].time_ms, values: data.curves[r.id].growth_pct }));
      const rows = ["strategy", "symbol", "timeframe", "start", "end"].map((k) =>
        h("tr", {}, h("th", {}, k), ...ids.map((id) => h("td", {}, String(data.runs[id][k] ?? "–")))));
      rows.push(h("tr", {}, h("th", {}, "parameters"), ...ids.map((id) => h("td", { class: "mono" },
        Object.entries(data.runs[id].parameters).map(([k, v]) => `${k}=${v}`).join(" ") || "defaults"))));
      for (const [name, values] of Object.entries(data.metrics)) {
        rows.push(h("tr", { "data-metric": name }, h("th", {}, name), ...ids.map((id) => h("td", { class: "num" }, fmt(values[id])))));
      }
      out.replaceChildren(
        h("h2", {}, "Equity, % of starting capital"), legend(series),
        lineChart({ x: series.length ? series[0].x : [], series, xKind: "time", kind: "compare" }),
        h("table", { id: "compare-metrics" }, h("thead", {}, h("tr", {}, h("th", {}, ""), ...ids.map((id) => h("th", {}, opLink(id))))),
          h("tbody", {}, rows)));
    },
  };
}

function modelsView() {
  const box = h("div", { class: "panel" }, h("h2", {}, "Models"), h("p", { class: "muted" }, "loading…"));
  return {
    name: "models", root: box,
    async reload() {
      const data = await api("/api/v1/models");
      const rows = data.models.map((m) => h("tr", { "data-model": m.ref },
        h("td", { class: "mono" }, m.ref), h("td", {}, m.strategy || "–"), h("td", {}, `${m.symbol || "–"} ${(m.timeframes || []).join(",")}`),
        h("td", {}, `${when(m.start)} → ${when(m.end)}`),
        h("td", { class: "num" }, fmt(m.metrics.test_accuracy)), h("td", { class: "num" }, fmt(m.metrics.epochs_run)),
        h("td", {}, m.metrics.device || "–"), h("td", {}, m.op_id ? opLink(m.op_id) : "–"), h("td", {}, when(m.created_at))));
      box.lastChild.replaceWith(rows.length
        ? sortable(table(["model", "strategy", "data", "training range", { label: "test accuracy", num: true },
                          { label: "epochs", num: true }, "device", "trained by", "created"], rows, { id: "models" }))
        : h("p", { class: "muted" }, "No models yet: `ktrdr train STRATEGY` stores one."));
    },
  };
}

function datasetsView() {
  const box = h("div", { class: "panel" }, h("h2", {}, "Shared datasets"), h("p", { class: "muted" }, "loading…"));
  const row = (d) => h("tr", { "data-dataset": `${d.symbol}/${d.timeframe}` },
    h("td", { class: "mono" }, d.symbol), h("td", {}, d.timeframe), h("td", { class: "num" }, fmt(d.bars)),
    h("td", {}, d.start ? `${when(d.start)} → ${when(d.end)}` : "–"),
    h("td", { class: "num" }, d.gaps === undefined ? "–" : `${fmt(d.gaps)} (${fmt(d.unexpected)} unexpected)`),
    h("td", { class: "num" }, `${(d.size / 1048576).toFixed(2)} MiB`), h("td", {}, d.note || when(d.modified)));
  return {
    name: "datasets", root: box,
    async reload() {
      const data = await api("/api/v1/datasets");
      const tbody = h("tbody", {}, data.datasets.map(row));
      box.lastChild.replaceWith(data.datasets.length
        ? h("table", { id: "datasets" }, h("thead", {}, h("tr", {}, ["symbol", "timeframe", "bars", "range", "gaps", "size", "modified"]
            .map((c) => h("th", {}, c)))), tbody)
        : h("p", { class: "muted" }, "No shared datasets: `ktrdr data import FILE --publish` shares one."));
      // Each summary is computed once per content on the coordinator: fill rows in as they arrive.
      for (const d of data.datasets.filter((x) => x.bars === undefined)) {
        const full = await api(`/api/v1/datasets/${encodeURIComponent(d.symbol)}/${encodeURIComponent(d.timeframe)}`).catch(() => null);
        const old = tbody.querySelector(`tr[data-dataset="${CSS.escape(`${d.symbol}/${d.timeframe}`)}"]`);
        if (full && old) old.replaceWith(row(full));
      }
    },
  };
}

// --- routing -------------------------------------------------------------------------------------

function showError(e) {
  if (e && e.status === 401) return;
  toast(e && e.message ? e.message : String(e));
}

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  let view;
  if (path.startsWith("/op/")) view = opView(decodeURIComponent(path.slice(4)));
  else if (path === "/ops") view = opsView(params);
  else if (path === "/models") view = modelsView();
  else if (path === "/compare") view = compareView(params);
  else if (path === "/datasets") view = datasetsView();
  else view = overviewView();
  state.view = view;
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.dataset.nav === view.name || (view.name === "op" && a.dataset.nav === "ops"));
  }
  document.getElementById("view").replaceChildren(view.root);
  view.reload().catch(showError);
}

async function start() {
  if (!(await session())) return;
  state.types = (await api("/api/v1/optypes")).types;
  await refreshWorkers();
  route();
  connectLive();
  clearInterval(state.ticker);
  state.ticker = setInterval(() => {
    for (const cell of document.querySelectorAll("[data-ago]")) cell.textContent = ago(cell.dataset.ago);
  }, 1000);
}

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (await signIn(document.getElementById("token").value.trim())) start().catch(showError);
});

document.getElementById("signout").addEventListener("click", async () => {
  await fetch("/api/v1/session", { method: "DELETE", credentials: "same-origin" });
  if (state.source) state.source.close();
  state.role = null;
  document.getElementById("signout").hidden = true;
  document.getElementById("role").textContent = "";
  showLogin();
});

window.addEventListener("hashchange", () => { if (state.role) route(); });

(async () => {
  // `ktrdr up` prints a link carrying the token after #token=: take it, then drop it from the address bar.
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    history.replaceState(null, "", location.pathname);
    await signIn(decodeURIComponent(m[1]));
  }
  await start();
})().catch(showError);
