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
  constructor(status, message, detail) { super(message); this.status = status; this.detail = detail || []; }
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
  if (!res.ok) throw new ApiError(res.status, (json && json.error) || res.statusText, json && json.detail);
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

/** A figure short enough for a progress line: 0.61, 12.3, 1,234. */
function short(v) {
  const a = Math.abs(v);
  if (a >= 100) return Math.round(v).toLocaleString("en");
  return a >= 0.01 || a === 0 ? v.toFixed(2) : v.toPrecision(2);
}

function num(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/** What a running op is doing, in words: `42 % · epoch 7/10 · loss 0.61` for a training (its step
 * names the epoch, its context the loss), `8 % · simulate · 1,200/3,000` for a backtest. */
function progressWords(op, pct) {
  const p = op.progress || {};
  const c = p.context || {};
  const parts = [`${pct.toFixed(0)} %`];
  if (p.step) parts.push(p.step);
  const loss = num(c.train_loss) ?? num(c.running_train_loss);
  if (loss !== null) {
    parts.push(`loss ${short(loss)}`);
    if (num(c.train_loss) !== null && num(c.val_loss) !== null) parts.push(`val loss ${short(c.val_loss)}`);
    return parts.join(" · ");
  }
  // A step that counts already ("step 3/40", "epoch 2/10") says what the items would.
  const counted = /\d+\s*\/\s*\d+/.test(p.step || "");
  if (p.items_total && !counted) parts.push(`${fmt(p.items_done || 0)}/${fmt(p.items_total)}`);
  if (p.message && !counted) parts.push(p.message);
  return parts.join(" · ");
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
  let text = done ? "" : progressWords(op, pct);
  if (op.status === "pending") text = "waiting for a worker" + (op.route ? ` (${op.route})` : "");
  return h("span", { class: "progress" }, bar, h("span", { class: "progress-text" }, text));
}

function kvTable(obj, attrs) {
  const rows = Object.entries(obj || {}).filter(([, v]) => v !== undefined).map(([k, v]) =>
    h("tr", { "data-key": k }, h("th", {}, k), h("td", { class: "mono" }, v instanceof Node ? v : fmt(v))));
  return rows.length ? h("table", { class: "kv", ...(attrs || {}) }, rows) : h("p", { class: "muted" }, "none");
}

/** A wide table scrolls sideways inside its own box, never the page (a phone's 390 px). */
function scroll(el) {
  return h("div", { class: "scroll" }, el);
}

/** Rows shown ``pageSize`` at a time with a pager: ``items`` are turned into rows only when shown. */
function pagedTable({ id, headers, items, row, pageSize = PAGE }) {
  const tbody = h("tbody");
  const info = h("span", { class: "muted", id: `${id}-shown` });
  let offset = 0;
  const prev = h("button", { id: `${id}-prev`, onclick: () => { offset = Math.max(0, offset - pageSize); draw(); } }, "← previous");
  const next = h("button", { id: `${id}-next`, onclick: () => { offset += pageSize; draw(); } }, "next →");
  function draw() {
    tbody.replaceChildren(...items.slice(offset, offset + pageSize).map(row));
    info.textContent = `${items.length ? offset + 1 : 0}–${Math.min(items.length, offset + pageSize)} of ${fmt(items.length)}`;
    prev.disabled = offset === 0;
    next.disabled = offset + pageSize >= items.length;
  }
  draw();
  const tableEl = h("table", { id }, h("thead", {}, h("tr", {}, headers.map((c) =>
    h("th", { class: c.num ? "num" : null }, c.label || c)))), tbody);
  return h("div", {}, scroll(tableEl),
           items.length > pageSize ? h("div", { class: "pager", id: `${id}-pager` }, prev, next, info) : null);
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
    const { changed, gone, beats } = JSON.parse(ev.data);
    for (const w of changed) state.workers.set(w.worker_id, w);
    // Leases that changed in their heartbeat alone: the ids, and one time for all of them.
    if (beats) for (const id of beats.ids) { const w = state.workers.get(id); if (w) w.heartbeat_at = beats.at; }
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

/** One params field's input, made from its JSON schema: a checkbox, a number, a list of choices, a
 * comma-separated list, or (anything nested) JSON. ``read()`` gives its value, ``undefined`` when it is
 * left empty or at its default (the type's default then applies). */
function schemaField(name, prop, required, defs) {
  const resolve = (s) => (s && s.$ref ? defs[s.$ref.split("/").pop()] || {} : s || {});
  let s = resolve(prop);
  const choices = (s.anyOf || []).map(resolve).filter((x) => x.type !== "null");
  const nullable = (s.anyOf || []).some((x) => x.type === "null");
  if (choices.length === 1) s = { ...choices[0], default: prop.default, description: prop.description };
  const plain = !s.anyOf && !s.$ref;
  const hint = [prop.description, prop.default !== undefined && prop.default !== null ? `default ${JSON.stringify(prop.default)}` : null]
    .filter(Boolean).join(" · ");
  const id = `s-field-${name}`;
  let input, read;
  if (plain && s.type === "boolean" && !nullable) {
    input = h("input", { type: "checkbox", id, checked: prop.default === true });
    read = () => (input.checked === (prop.default === true) ? undefined : input.checked);
  } else if (plain && s.enum) {
    input = h("select", { id }, (required && prop.default === undefined ? [] : [h("option", { value: "" }, prop.default !== undefined && prop.default !== null ? `${prop.default} (default)` : "(default)")]),
              s.enum.filter((v) => v !== prop.default).map((v) => h("option", { value: v }, String(v))));
    read = () => (input.value === "" ? undefined : input.value);
  } else if (plain && (s.type === "integer" || s.type === "number")) {
    input = h("input", { type: "number", id, step: s.type === "integer" ? 1 : "any", min: s.minimum ?? s.exclusiveMinimum,
                         max: s.maximum ?? s.exclusiveMaximum, placeholder: prop.default ?? "" });
    read = () => (input.value.trim() === "" ? undefined : Number(input.value));
  } else if (plain && s.type === "array" && (s.items || {}).type === "string") {
    input = h("input", { id, placeholder: "comma-separated" });
    read = () => (input.value.trim() === "" ? undefined : input.value.split(",").map((v) => v.trim()).filter(Boolean));
  } else if (plain && s.type === "string") {
    input = h("input", { id, placeholder: s.format === "date-time" ? "2024-01-01 or 2024-01-01T12:00" : prop.default ?? "" });
    read = () => (input.value.trim() === "" ? undefined : input.value.trim());
  } else if (choices.length > 1 && choices.every((c) => ["integer", "number", "string", "boolean"].includes(c.type))) {
    // One of several plain kinds (180d or 4000 bars; false or a message): a number or true/false if it reads as one.
    input = h("input", { id, placeholder: prop.default !== undefined && prop.default !== null ? String(prop.default) : choices.map((c) => c.type).join(" or ") });
    read = () => {
      const v = input.value.trim();
      if (v === "") return undefined;
      if (v === "true" || v === "false") return v === "true";
      return choices.some((c) => c.type === "integer" || c.type === "number") && /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
    };
  } else {
    input = h("textarea", { id, rows: 2, spellcheck: "false", placeholder: prop.default !== undefined && prop.default !== null ? JSON.stringify(prop.default) : "JSON" });
    read = () => {
      if (input.value.trim() === "") return undefined;
      try { return JSON.parse(input.value); } catch (e) { throw new Error(`${name}: not JSON (${e.message})`); }
    };
  }
  input.dataset.field = name;
  const error = h("span", { class: "error field-error", id: `${id}-error`, hidden: true });
  const el = h("label", { class: "field", "data-field": name, for: id },
               h("span", {}, h("b", {}, name), required ? h("span", { class: "required", title: "required" }, " *") : null),
               input, hint ? h("small", { class: "muted" }, hint) : null, error);
  return { name, el, input, read, error };
}

/** Submit any declared type: a form made from the type's params schema (``GET /api/v1/optypes``), or
 * the params as JSON. A refusal's message is shown beside the field it names. */
function submitPanel() {
  const type = h("select", { id: "s-type" }, state.types.map((t) => h("option", { value: t.name }, t.name)));
  const fieldsBox = h("div", { class: "form", id: "s-form" });
  const raw = h("textarea", { id: "s-params", rows: 4, spellcheck: "false", placeholder: '{"steps": 20, "duration": 5}' });
  const asJson = h("details", { id: "s-json" }, h("summary", {}, "or give the params as JSON"), raw);
  const out = h("p", { class: "muted", id: "s-out" });
  const preview = h("code", { id: "s-preview" });
  let fields = [];
  const summary = h("p", { class: "muted", id: "s-summary" });

  function build() {
    const t = opType(type.value);
    const schema = (t && t.params) || { properties: {} };
    const required = new Set(schema.required || []);
    fields = Object.entries(schema.properties || {}).map(([name, prop]) => schemaField(name, prop, required.has(name), schema.$defs || {}));
    // Required fields first, then the rest as the schema lists them.
    fields.sort((a, b) => required.has(b.name) - required.has(a.name));
    fieldsBox.replaceChildren(...fields.map((f) => f.el));
    summary.textContent = t ? `${t.summary || ""}${t.cli ? ` (CLI: ${t.cli})` : ""}` : "";
    show();
  }

  function values() {
    if (asJson.open && raw.value.trim()) {
      try { return JSON.parse(raw.value); } catch (e) { throw new Error(`params are not JSON: ${e.message}`); }
    }
    const params = {};
    for (const f of fields) {
      const v = f.read();
      if (v !== undefined) params[f.name] = v;
    }
    return params;
  }

  function show() {
    try { preview.textContent = JSON.stringify(values()); } catch (e) { preview.textContent = e.message; }
  }

  function mark(detail) {
    for (const f of fields) { f.error.hidden = true; f.input.classList.remove("invalid"); }
    for (const d of detail || []) {
      const name = String(d.field || "").replace(/^params\./, "").split(".")[0];
      const f = fields.find((x) => x.name === name);
      if (!f) continue;
      f.input.classList.add("invalid");
      f.error.textContent = d.message || "invalid";
      f.error.hidden = false;
    }
  }

  const go = h("button", { class: "primary", id: "s-submit", onclick: async (ev) => {
    ev.preventDefault();
    let parsed;
    try { parsed = values(); } catch (e) { out.textContent = e.message; return; }
    go.disabled = true;
    mark([]);
    try {
      const op = await submit(type.value, parsed);
      out.replaceChildren("submitted ", opLink(op.op_id));
    } catch (e) {
      out.textContent = `refused: ${e.message}`;
      mark(e.detail);
    } finally { go.disabled = false; }
  } }, "Submit");
  type.addEventListener("change", () => { out.textContent = ""; build(); });
  fieldsBox.addEventListener("input", show);
  fieldsBox.addEventListener("change", show);
  type.value = state.types.some((t) => t.name === "dummy") ? "dummy" : type.value;
  build();
  return h("div", { class: "panel", id: "submit" }, h("h2", {}, "Submit an operation"),
           h("form", { onsubmit: (ev) => { ev.preventDefault(); go.click(); } },
             h("div", { class: "filters" }, h("label", {}, "type ", type), summary), fieldsBox, asJson,
             h("p", { class: "muted preview" }, "params: ", preview), h("div", { class: "filters" }, go), out));
}

const TRAINING = "training";
// Op types whose completed ops store a result the page draws (others' pages ask only when the record
// names a stored result, or their declaration gives a view): a completed dummy's page asks for no chart.
const CHARTED = new Set([BACKTEST, "walkforward", "sweep", TRAINING]);

function charted(op) {
  return Boolean(op.result_object || CHARTED.has(op.type) || (opType(op.type) || {}).view);
}

function opType(name) {
  return state.types.find((t) => t.name === name) || null;
}

function eventText(e) {
  const bits = [];
  if (e.message) bits.push(e.message);
  if (e.context) bits.push(Object.entries(e.context).map(([k, v]) => `${k}=${fmt(v)}`).join(", "));
  if (e.checkpoint !== undefined && e.checkpoint !== null) bits.push(e.checkpoint ? `checkpoint ${e.checkpoint}` : "no checkpoint to resume from");
  return bits.length ? ` · ${bits.join(" · ")}` : "";
}

function timeline(events) {
  if (!events.length) return h("p", { class: "muted" }, "no events kept for it");
  return h("ul", { class: "timeline" }, events.map((e) => h("li", { class: e.event, "data-event": e.event },
    h("time", {}, when(e.timestamp)), h("b", {}, e.event), ` attempt ${e.attempt} on `, h("span", { class: "mono" }, e.worker_id),
    h("span", { class: "event-text" }, eventText(e)), e.error ? h("div", { class: "error" }, e.error) : "")));
}

function attemptsTable(op) {
  if (!op.attempts.length) {
    const type = opType(op.type);
    const why = type && type.runs === "coordinator"
      ? "none of its own: the coordinator runs it, its children (below) are its work"
      : TERMINAL.has(op.status) ? "none: it never reached a worker" : "none yet";
    return h("p", { class: "muted", id: "attempts-none" }, why);
  }
  const rows = op.attempts.map((a) => h("tr", {},
    Object.values(a).map((v) => h("td", { class: "mono" }, typeof v === "string" && v.includes("T") && v.length > 18 ? when(v) : fmt(v)))));
  return scroll(table(Object.keys(op.attempts[0]), rows, { id: "attempts" }));
}

function curvesChart(curves, { folds, title } = {}) {
  const box = h("div", {});
  const x = curves.time_ms;
  const equity = [{ name: "strategy", values: curves.equity, color: "#2563eb" }];
  if (curves.benchmark) equity.push({ name: "buy and hold", values: curves.benchmark, color: "#9ca3af", dash: "4 3" });
  // A walk-forward's folds: a line where each out-of-sample part starts, labelled with its fold's number.
  const vlines = (folds || []).map((f) => ({ x: Date.parse(f.out_start), label: `fold ${f.index}` }));
  box.append(h("h2", {}, title || "Equity"), legend(equity),
             lineChart({ x, series: equity, xKind: "time", kind: "equity", vlines }));
  const dd = [{ name: "strategy", values: curves.drawdown_pct, color: "#b91c1c" }];
  if (curves.benchmark_drawdown_pct) dd.push({ name: "buy and hold", values: curves.benchmark_drawdown_pct, color: "#9ca3af", dash: "4 3" });
  box.append(h("h2", {}, "Drawdown %"), legend(dd),
             lineChart({ x, series: dd, xKind: "time", kind: "drawdown", height: 160, zeroTop: true,
                         vlines: vlines.map((v) => ({ x: v.x })) }));
  return box;
}

function tradesTable(trades) {
  const row = (t) => h("tr", {},
    h("td", {}, t.entry_time_ms ? when(new Date(t.entry_time_ms).toISOString()) : fmt(t.entry_bar)),
    h("td", {}, t.exit_time_ms ? when(new Date(t.exit_time_ms).toISOString()) : fmt(t.exit_bar)),
    h("td", {}, t.side > 0 ? "long" : "short"), h("td", { class: "num" }, fmt(t.size)),
    h("td", { class: "num" }, fmt(t.entry_price)), h("td", { class: "num" }, fmt(t.exit_price)),
    h("td", { class: "num" }, fmt(t.pnl)), h("td", { class: "num" }, fmt(t.bars_held)));
  const kept = trades.count > trades.shown.length ? `, the last ${fmt(trades.shown.length)} kept here` : "";
  return h("div", {}, h("h2", {}, `Trades (${fmt(trades.count)}${kept}), newest first`),
           pagedTable({ id: "trades", items: trades.shown.slice().reverse(), row,
                        headers: ["entry", "exit", "side", { label: "size", num: true }, { label: "entry price", num: true },
                                  { label: "exit price", num: true }, { label: "pnl", num: true }, { label: "bars", num: true }] }));
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
           scroll(sortable(table([{ label: "rank", num: true }, "parameters", { label: metric, num: true }, { label: "neighbourhood", num: true }, { label: "return %", num: true },
                                  { label: "max dd %", num: true }, { label: "trades", num: true }, "full run", "excluded"], rows, { id: "ranking" }))));
}

function trainingCharts(view) {
  const x = view.epochs.map((e) => e.epoch);
  const loss = [{ name: "train loss", values: view.epochs.map((e) => e.train_loss), color: "#2563eb" },
                { name: "validation loss", values: view.epochs.map((e) => e.val_loss), color: "#b45309" }];
  const acc = [{ name: "train accuracy", values: view.epochs.map((e) => e.train_accuracy), color: "#2563eb" },
               { name: "validation accuracy", values: view.epochs.map((e) => e.val_accuracy), color: "#b45309" }];
  // Epochs are counted: whole-number ticks only.
  return h("div", {}, h("h2", {}, "Loss per epoch"), legend(loss), lineChart({ x, series: loss, xKind: "number", xInteger: true, kind: "loss", height: 200 }),
           h("h2", {}, "Accuracy per epoch"), legend(acc), lineChart({ x, series: acc, xKind: "number", xInteger: true, kind: "accuracy", height: 200 }));
}

/** `2021-01-01 → 2021-01-17 15:00`: a window's ends, midnight written as the day alone. */
function windowText(start, end) {
  const day = (iso) => (iso ? when(iso).replace(/:00Z$/, "").replace(/ 00:00$/, "") : "–");
  return `${day(start)} → ${day(end)}`;
}

function foldsTable(view, opId) {
  if (!view.folds.length) return null;
  const metric = view.metric || "metric";
  const child = (fold, part, text) => h("a", { href: `#/op/${encodeURIComponent(`${opId}-f${fold}${part}`)}` }, text);
  const chosen = (c) => Object.entries(c || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  const rows = view.folds.map((f) => h("tr", { "data-fold": f.fold },
    numCell(f.fold),
    h("td", { class: "window" }, child(f.fold, "is", windowText(f.in_start, f.in_end))),
    h("td", { class: "window" }, child(f.fold, "oos", windowText(f.out_start, f.out_end))),
    h("td", { class: "mono" }, chosen(f.chosen) || "–"),
    numCell((f.in_sample || {})[metric]), numCell((f.out_of_sample || {})[metric]),
    numCell((f.out_of_sample || {}).total_return_pct), numCell((f.out_of_sample || {}).trades),
    numCell(f.warmup_bars)));
  return h("div", {}, h("h2", {}, `Folds (${view.folds.length}): each in-sample part chooses, its out-of-sample part tests`),
           scroll(sortable(table([{ label: "fold", num: true }, "in sample", "out of sample", "chosen parameters",
                                  { label: `in-sample ${metric}`, num: true }, { label: `out-of-sample ${metric}`, num: true },
                                  { label: "oos return %", num: true }, { label: "oos trades", num: true },
                                  { label: "warm-up bars", num: true }], rows, { id: "folds" }))));
}

/** What a completed op's stored result draws, split in two: ``charts`` (and heatmaps) that lead the
 * page, then ``tables`` (paged). Null when it stored nothing to draw. */
async function resultView(op) {
  let view;
  const axes = state.axes.get(op.op_id);
  const query = axes ? `?${new URLSearchParams(axes)}` : "";
  try { view = await api(`/api/v1/operations/${encodeURIComponent(op.op_id)}/chart${query}`); } catch (e) {
    return e.status === 404 ? null : { error: h("p", { class: "error" }, `result: ${e.message}`) };
  }
  const charts = h("div", { class: "panel", id: "result-view", "data-kind": view.kind });
  const tables = h("div", { class: "panel", id: "result-tables" });
  if (view.kind === "backtest") {
    if (view.curves) charts.append(curvesChart(view.curves));
    charts.append(h("p", {}, h("a", { href: `#/compare?ids=${encodeURIComponent(op.op_id)},`, id: "compare-link" },
                                "compare with other backtests…")));
    tables.append(tradesTable(view.trades));
  } else if (view.kind === "folds") {
    if (view.curves) charts.append(curvesChart(view.curves, { folds: view.fold_windows, title: "Out-of-sample equity, the folds joined" }));
    const folds = foldsTable(view, op.op_id);
    if (folds) tables.append(folds);
  } else if (view.kind === "ranking") {
    charts.append(rankingTable(view, op.op_id));
  } else if (view.kind === "epochs") {
    charts.append(trainingCharts(view));
  } else if (view.kind === "view") {
    declaredView(view, charts, tables);
  } else {
    return null;
  }
  return { charts: charts.childNodes.length ? charts : null, tables: tables.childNodes.length ? tables : null };
}

const VIEW_COLORS = ["#2563eb", "#b45309", "#15803d", "#7c3aed", "#be123c", "#0e7490"];

/** A type's own view of its result, from its declaration (``ktrdr.optypes.views``): its figures as
 * cards and its charts into ``charts``, its tables (sortable) into ``tables``. */
function declaredView(view, charts, tables) {
  const figures = Object.entries(view.figures || {});
  if (figures.length) {
    charts.append(h("div", { class: "cards", id: "view-figures" }, figures.map(([k, v]) =>
      headlineCard(k, k, typeof v === "number" ? short(v) : fmt(v), String(v)))));
  }
  for (const c of view.charts || []) {
    const series = c.series.map((s, i) => ({ name: s.name, values: s.values, color: VIEW_COLORS[i % VIEW_COLORS.length] }));
    charts.append(...[h("h2", {}, c.title), legend(series),
                      lineChart({ x: c.x, series, xKind: "number", kind: "view", bars: c.kind === "bars", height: 220 }),
                      c.x_label ? h("p", { class: "muted" }, c.x_label) : null].filter(Boolean));
  }
  (view.tables || []).forEach((t, n) => {
    const kept = t.total ? ` (the first ${fmt(t.rows.length)} of ${fmt(t.total)})` : "";
    const rows = t.rows.map((r) => h("tr", {}, r.map((v) => (typeof v === "number" ? numCell(v) : h("td", {}, fmt(v))))));
    const numeric = t.columns.map((_, i) => t.rows.length > 0 && t.rows.every((r) => typeof r[i] === "number" || r[i] === null));
    tables.append(h("h2", {}, t.title + kept),
                  scroll(sortable(table(t.columns.map((c, i) => ({ label: c, num: numeric[i] })), rows, { id: `view-table-${n}` }))));
  });
}

// The figures a result page leads with, in this order, where the result has them.
const HEADLINE = [
  ["total_return_pct", "return", (v) => `${v >= 0 ? "+" : ""}${v.toFixed(2)} %`],
  ["sharpe_ratio", "Sharpe", (v) => v.toFixed(2)],
  ["max_drawdown_pct", "max drawdown", (v) => `${v.toFixed(2)} %`],
  ["trades", "trades", (v) => fmt(v)],
  ["win_rate", "win rate", (v) => `${(100 * v).toFixed(1)} %`],
  ["profit_factor", "profit factor", (v) => v.toFixed(2)],
  ["buy_and_hold_return_pct", "buy and hold", (v) => `${v >= 0 ? "+" : ""}${v.toFixed(2)} %`],
  ["efficiency", "efficiency", (v) => v.toFixed(2)],
  ["test_accuracy", "test accuracy", (v) => `${(100 * v).toFixed(1)} %`],
  ["val_accuracy", "validation accuracy", (v) => `${(100 * v).toFixed(1)} %`],
  ["best_val_loss", "best validation loss", (v) => short(v)],
  ["epochs_run", "epochs", (v) => fmt(v)],
];

function headlineCard(key, label, text, title) {
  return h("div", { class: "card", "data-metric": key, title: title || null }, h("span", { class: "muted" }, label), h("b", {}, text));
}

function paramText(obj) {
  return Object.entries(obj || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

/** The result's key figures, large, first on the page. */
function headline(op) {
  const r = op.result;
  if (!r || typeof r !== "object") return null;
  const figures = { ...(r.metrics && typeof r.metrics === "object" ? r.metrics : {}) };
  for (const k of ["efficiency", "buy_and_hold_return_pct"]) if (num(r[k]) !== null && figures[k] === undefined) figures[k] = r[k];
  const cards = HEADLINE.filter(([k]) => num(figures[k]) !== null)
    .map(([k, label, show]) => headlineCard(k, label, show(figures[k]), String(figures[k])));
  if (r.best && typeof r.best === "object") {
    const value = num(r.best.metrics ? r.best.metrics[r.metric] : null);
    cards.unshift(headlineCard("best", `best by ${r.metric}`, paramText(r.best.parameters) || "defaults"),
                  ...(value !== null ? [headlineCard(r.metric, r.metric, short(value), String(value))] : []));
  } else if (r.no_best) {
    cards.unshift(headlineCard("best", "best", `none: ${r.no_best}`));
  }
  if (num(r.completed) !== null && num(r.combinations) !== null) {
    cards.push(headlineCard("variants", "variants", `${fmt(r.completed)} of ${fmt(r.combinations)}` +
                            (num(r.eligible) !== null ? `, ${fmt(r.eligible)} met the objective` : "")));
  }
  if (typeof r.model === "string") cards.push(headlineCard("model", "model", r.model));
  if (!cards.length) return null;
  const timeframe = r.timeframe || (Array.isArray(r.timeframes) ? r.timeframes.join(",") : null);
  const what = [r.strategy || r.model_name, r.symbol && `on ${r.symbol}`, timeframe, r.start && `${windowText(r.start, r.end)}`]
    .filter(Boolean).join(" ");
  const chosen = r.parameters && Object.keys(r.parameters).length ? ` · ${paramText(r.parameters)}` : "";
  return h("div", { class: "panel", id: "headline" }, what ? h("h2", {}, what + chosen) : null,
           h("div", { class: "cards" }, cards));
}

/** A running training's loss and accuracy per epoch, drawn as its worker reports them: read from
 * ``/epochs`` when the page opens, then again (only what is new) each time the live feed says the
 * epoch moved on. */
function liveTraining(opId) {
  const epochs = new Map();
  let since = 0, total = null, busy = false, again = false, seenKey = null;
  const el = h("div", { class: "panel", id: "training-live", "data-epochs": 0 });
  function draw() {
    const list = [...epochs.values()].sort((a, b) => a.epoch - b.epoch);
    el.dataset.epochs = list.length;
    const last = list.length ? list[list.length - 1] : null;
    el.replaceChildren(h("h2", {}, last ? `Training, live: epoch ${last.epoch}${total ? ` of ${total}` : ""}` : "Training, live"),
                       last ? trainingCharts({ epochs: list }) : h("p", { class: "muted" }, "no epoch finished yet"));
  }
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do {
        again = false;
        const data = await api(`/api/v1/operations/${encodeURIComponent(opId)}/epochs?since=${since}`);
        for (const e of data.epochs) {
          // An attempt that starts over: the epochs after the one it reports are gone.
          for (const k of [...epochs.keys()]) if (k > e.epoch) epochs.delete(k);
          epochs.set(e.epoch, e);
        }
        since = data.last_seq;
        total = data.total_epochs ?? total;
        if (data.more) again = true;
      } while (again);
      draw();
    } finally { busy = false; }
  }
  draw();
  return {
    el, refresh,
    /** The op as the live feed pushed it: read what is new when its epoch (or an epoch's end) moved. */
    seen(op) {
      const c = (op.progress && op.progress.context) || {};
      const key = `${c.epoch}|${c.train_loss}`;
      if (key !== seenKey) { seenKey = key; refresh().catch(() => {}); }
    },
  };
}

function cancelControl(op) {
  const opId = op.op_id;
  const type = opType(op.type);
  const reason = h("input", { id: "cancel-reason", placeholder: "reason (optional)", size: 28 });
  const yes = h("button", { class: "danger", id: "cancel-yes", onclick: async () => {
    yes.disabled = true;
    const why = encodeURIComponent(reason.value.trim() || "cancelled from the dashboard");
    try {
      const reply = await api(`/api/v1/operations/${encodeURIComponent(opId)}?reason=${why}`, { method: "DELETE" });
      toast(reply.message || `cancel ${reply.accepted ? "accepted" : "refused"}`);
    } catch (e) { toast(`cancel refused: ${e.message}`); } finally { yes.disabled = false; }
  } }, "Yes, cancel it");
  const confirm = h("span", { class: "confirm", id: "cancel-confirm", hidden: true },
                    "Cancel this operation", type && type.runs === "coordinator" ? " and its children" : "", "? ",
                    reason, " ", yes, " ",
                    h("button", { id: "cancel-no", onclick: () => { confirm.hidden = true; ask.hidden = false; } }, "No, keep it running"));
  const ask = h("button", { class: "danger", id: "cancel", onclick: () => { confirm.hidden = false; ask.hidden = true; reason.focus(); } }, "Cancel");
  return h("span", {}, ask, confirm);
}

function opView(opId) {
  const root = h("div", {}, h("p", { class: "muted" }, "loading…"));
  let current = null;
  let children = null;
  let refetch = null;
  let live = null; // a running training's live chart, kept while the page is drawn again
  let cancel = null; // kept too: a live update must not close a confirm the user is reading

  async function load() {
    let op;
    try { op = await api(`/api/v1/operations/${encodeURIComponent(opId)}`); } catch (e) {
      root.replaceChildren(h("div", { class: "panel" }, h("h1", {}, opId), h("p", { class: "error", id: "op-error" }, e.message)));
      return;
    }
    current = op;
    const events = await api(`/api/v1/operations/${encodeURIComponent(opId)}/events`).catch(() => ({ events: [] }));
    const head = h("div", { class: "panel", id: "op-head", "data-status": op.status },
      h("h1", {}, h("span", { class: "mono" }, op.op_id), " ", statusBadge(op.status), " ", h("span", { class: "muted type" }, op.type)),
      h("p", {}, progressBar(op)),
      !TERMINAL.has(op.status) && state.role === "operator" ? (cancel ||= cancelControl(op)) : null,
      op.error ? h("p", { class: "error", id: "op-error" }, op.error) : null,
      op.cancel_reason ? h("p", { class: "muted" }, `cancelled: ${op.cancel_reason}`) : null,
      op.warnings.length ? h("ul", {}, op.warnings.map((w) => h("li", { class: "muted" }, w))) : null);
    const facts = { type: op.type, parent: op.parent_id ? opLink(op.parent_id) : null, worker: op.worker_id,
                    attempt: `${op.attempt} of ${op.max_attempts}`,
                    route: op.route, "why this route": op.route_reason, created: when(op.created_at),
                    started: when(op.started_at), completed: when(op.completed_at),
                    duration: op.started_at && op.completed_at ? span((Date.parse(op.completed_at) - Date.parse(op.started_at)) / 1000) : null };
    // The result first (its key figures, then its charts, then its tables), the record's details after.
    const parts = [head];
    const lead = op.status === "completed" ? headline(op) : null;
    if (lead) parts.push(lead);
    if (op.type === TRAINING && !TERMINAL.has(op.status)) {
      if (!live) live = liveTraining(opId);
      live.refresh().catch(() => {});
      parts.push(live.el);
    }
    if (op.status === "completed" && charted(op)) {
      const view = await resultView(op);
      if (view) parts.push(...[view.charts, view.tables, view.error].filter(Boolean));
    }
    if (!children) children = opsList({ filters: () => ({ parent_id: opId }), pageSize: PAGE, compare: true });
    await children.load();
    if (children.el.querySelector("tbody tr[data-op-id]")) parts.push(h("div", { class: "panel", id: "children" }, h("h2", {}, "Children"), children.el));
    if (op.result) parts.push(h("div", { class: "panel" }, h("h2", {}, "All figures"), metricsGrid(flatResult(op.result))));
    parts.push(
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Operation"), kvTable(facts, { id: "op-facts" })),
        h("div", { class: "panel" }, h("h2", {}, "Parameters"), kvTable(op.params, { id: "op-params" }))),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Attempts"), attemptsTable(op)),
        h("div", { class: "panel" }, h("h2", {}, "Events"), timeline(events.events))));
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
      if (live && !TERMINAL.has(mine.status)) live.seen(mine);
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

/** A row that opens a page: its first cell a link, and a click anywhere else on it too. */
function openRow(attrs, href, ...cells) {
  return h("tr", { ...attrs, class: "opens", onclick: (ev) => { if (!ev.target.closest("a")) location.hash = href; } }, ...cells);
}

function modelHref(m) {
  return `#/model/${encodeURIComponent(m.name)}/${encodeURIComponent(m.version)}`;
}

function datasetHref(d) {
  return `#/dataset/${encodeURIComponent(d.symbol)}/${encodeURIComponent(d.timeframe)}`;
}

function sizeText(bytes) {
  return bytes >= 1048576 ? `${(bytes / 1048576).toFixed(2)} MiB` : `${fmt(Math.ceil(bytes / 1024))} KiB`;
}

function modelsView() {
  const box = h("div", { class: "panel" }, h("h2", {}, "Models"), h("p", { class: "muted" }, "loading…"));
  return {
    name: "models", root: box,
    async reload() {
      const data = await api("/api/v1/models");
      const rows = data.models.map((m) => openRow({ "data-model": m.ref }, modelHref(m),
        h("td", { class: "mono" }, h("a", { href: modelHref(m) }, m.ref)), h("td", {}, m.strategy || "–"), h("td", {}, `${m.symbol || "–"} ${(m.timeframes || []).join(",")}`),
        h("td", {}, `${when(m.start)} → ${when(m.end)}`),
        h("td", { class: "num" }, fmt(m.metrics.test_accuracy)), h("td", { class: "num" }, fmt(m.metrics.epochs_run)),
        h("td", {}, m.metrics.device || "–"), h("td", {}, m.op_id ? opLink(m.op_id) : "–"), h("td", {}, when(m.created_at))));
      box.lastChild.replaceWith(rows.length
        ? scroll(sortable(table(["model", "strategy", "data", "training range", { label: "test accuracy", num: true },
                                 { label: "epochs", num: true }, "device", "trained by", "created"], rows, { id: "models" })))
        : h("p", { class: "muted" }, "No models yet: `ktrdr train STRATEGY` stores one."));
    },
  };
}

/** One model version: what trained it and on which bars, its metrics and features, and its loss
 * and accuracy per epoch when the training that made it stored them. */
function modelView(name, version) {
  const root = h("div", {}, h("p", { class: "muted" }, "loading…"));
  return {
    name: "models", root,
    async reload() {
      let m;
      try { m = await api(`/api/v1/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}`); } catch (e) {
        root.replaceChildren(h("div", { class: "panel" }, h("h1", {}, `${name}@${version}`), h("p", { class: "error", id: "model-error" }, e.message)));
        return;
      }
      const meta = m.metadata || {};
      const facts = { model: m.ref, strategy: meta.strategy, symbol: meta.symbol,
                      timeframes: Array.isArray(meta.timeframes) ? meta.timeframes.join(", ") : meta.timeframes,
                      "training bars": meta.start ? windowText(meta.start, meta.end) : undefined,
                      "trained by": m.op_id ? opLink(m.op_id) : undefined,
                      "attempt / worker": meta.worker_id ? `${meta.attempt ?? "–"} on ${meta.worker_id}` : undefined,
                      size: sizeText(m.size), created: when(m.created_at), digest: m.digest, features: m.features };
      const cards = HEADLINE.filter(([k]) => num(m.metrics[k]) !== null)
        .map(([k, label, show]) => headlineCard(k, label, show(m.metrics[k]), String(m.metrics[k])));
      const parts = [
        h("div", { class: "panel", id: "model-head" }, h("h1", {}, h("span", { class: "mono" }, m.ref)),
          cards.length ? h("div", { class: "cards", id: "headline" }, cards) : null),
      ];
      const history = h("div", { class: "panel", id: "model-history" }, h("h2", {}, "Training history"));
      if (m.op_id) {
        const view = await api(`/api/v1/operations/${encodeURIComponent(m.op_id)}/chart`).catch((e) => ({ kind: "none", why: e.message }));
        history.append(view.kind === "epochs" && view.epochs.length ? trainingCharts(view)
          : h("p", { class: "muted" }, `not stored${view.why ? ` (${view.why})` : ""}`));
      } else {
        history.append(h("p", { class: "muted" }, "not stored: no training op is named in its metadata"));
      }
      parts.push(history,
        h("div", { class: "grid2" },
          h("div", { class: "panel" }, h("h2", {}, "Model"), kvTable(facts, { id: "model-facts" })),
          h("div", { class: "panel" }, h("h2", {}, "Metrics"), kvTable(m.metrics, { id: "model-metrics" }))));
      if (m.feature_names.length) {
        parts.push(h("div", { class: "panel" }, h("h2", {}, `Features (${fmt(m.features)})`),
                     h("p", { class: "mono features" }, m.feature_names.join(", ") + (m.features > m.feature_names.length ? ", …" : ""))));
      }
      root.replaceChildren(...parts);
    },
  };
}

function datasetsView() {
  const box = h("div", { class: "panel" }, h("h2", {}, "Shared datasets"), h("p", { class: "muted" }, "loading…"));
  const row = (d) => openRow({ "data-dataset": `${d.symbol}/${d.timeframe}` }, datasetHref(d),
    h("td", { class: "mono" }, h("a", { href: datasetHref(d) }, d.symbol)), h("td", {}, d.timeframe), h("td", { class: "num" }, fmt(d.bars)),
    h("td", {}, d.start ? `${when(d.start)} → ${when(d.end)}` : "–"),
    h("td", { class: "num" }, d.gaps === undefined ? "–" : `${fmt(d.gaps)} (${fmt(d.unexpected)} unexpected)`),
    h("td", { class: "num" }, `${(d.size / 1048576).toFixed(2)} MiB`), h("td", {}, d.note || when(d.modified)));
  return {
    name: "datasets", root: box,
    async reload() {
      const data = await api("/api/v1/datasets");
      const tbody = h("tbody", {}, data.datasets.map(row));
      box.lastChild.replaceWith(data.datasets.length
        ? scroll(h("table", { id: "datasets" }, h("thead", {}, h("tr", {}, ["symbol", "timeframe", "bars", "range", "gaps", "size", "modified"]
            .map((c) => h("th", {}, c)))), tbody))
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

/** One shared dataset: its symbol, timeframe, bars, range and the gaps that are not weekends. */
function datasetView(symbol, timeframe) {
  const root = h("div", {}, h("p", { class: "muted" }, "loading…"));
  return {
    name: "datasets", root,
    async reload() {
      let d;
      try { d = await api(`/api/v1/datasets/${encodeURIComponent(symbol)}/${encodeURIComponent(timeframe)}`); } catch (e) {
        root.replaceChildren(h("div", { class: "panel" }, h("h1", {}, `${symbol} ${timeframe}`), h("p", { class: "error", id: "dataset-error" }, e.message)));
        return;
      }
      const facts = { symbol: d.symbol, timeframe: d.timeframe, bars: d.bars, range: d.start ? windowText(d.start, d.end) : undefined,
                      first: d.start ? when(d.start) : undefined, last: d.end ? when(d.end) : undefined,
                      gaps: d.gaps === undefined ? undefined : `${fmt(d.gaps)} (${fmt(d.unexpected)} not weekends)`,
                      size: sizeText(d.size), modified: when(d.modified), digest: d.digest, note: d.note };
      const gaps = d.unexpected_gaps || [];
      root.replaceChildren(...[
        h("div", { class: "panel", id: "dataset-head" }, h("h1", {}, h("span", { class: "mono" }, d.symbol), " ", d.timeframe),
          h("div", { class: "cards" }, headlineCard("bars", "bars", fmt(d.bars)),
            d.start ? headlineCard("range", "range", windowText(d.start, d.end)) : null,
            d.gaps !== undefined ? headlineCard("gaps", "gaps, not weekends", fmt(d.unexpected)) : null)),
        h("div", { class: "panel" }, h("h2", {}, "Dataset"), kvTable(facts, { id: "dataset-facts" })),
        gaps.length ? h("div", { class: "panel" }, h("h2", {}, `Gaps that are not weekends (the first ${gaps.length})`),
          scroll(table(Object.keys(gaps[0]), gaps.map((g) => h("tr", {}, Object.values(g).map((v) =>
            h("td", { class: "mono" }, typeof v === "string" && v.includes("T") ? when(v) : fmt(v))))), { id: "gaps" }))) : null,
      ].filter(Boolean));
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
  else if (path.startsWith("/model/")) view = modelView(...path.slice(7).split("/").map(decodeURIComponent));
  else if (path.startsWith("/dataset/")) view = datasetView(...path.slice(9).split("/").map(decodeURIComponent));
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

/** `ktrdr up` prints a link carrying the token after #token=: take it, drop it from the address bar,
 * and sign in with it. False when the address carries no token. */
async function tokenFromAddress() {
  const m = location.hash.match(/^#token=([^&]+)/);
  if (!m) return false;
  history.replaceState(null, "", location.pathname);
  return (await signIn(decodeURIComponent(m[1]))) || null;
}

// The link pasted into a tab already open (on the sign-in form, or signed in): signed in at once,
// without a reload.
window.addEventListener("hashchange", () => {
  if (/^#token=/.test(location.hash)) {
    tokenFromAddress().then((ok) => ok && start()).catch(showError);
    return;
  }
  if (state.role) route();
});

(async () => {
  // A refused token leaves the form up, saying why; otherwise the page starts (asking for a token
  // if there is no session).
  if ((await tokenFromAddress()) !== null) await start();
})().catch(showError);
