// The dashboard page: polls the dashboard server's /api/* proxy and renders three tables.
// Every value from the API is inserted as text, never as HTML.
"use strict";

const REFRESH_MS = 2500;
const BADGE_BY_STATE = {
  ok: "ok", RUNNING: "ok", completed: "ok",
  error: "error", FATAL: "error", BACKOFF: "error", failed: "error", UNKNOWN: "error",
  STARTING: "busy", STOPPING: "busy", validating: "busy", in_progress: "busy",
  finalizing: "busy", cancelling: "busy",
};

let lastSuccess = null;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name === "title") node.title = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function badge(state) {
  const text = state === undefined || state === null ? "unknown" : String(state);
  return el("span", { class: `badge ${BADGE_BY_STATE[text] || "idle"}` }, text.toLowerCase());
}

function fill(tbodyId, rows) {
  document.getElementById(tbodyId).replaceChildren(...rows);
}

function messageRow(columns, text, kind = "placeholder") {
  return el("tr", { class: kind }, el("td", { colspan: columns }, text));
}

function clock(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function when(seconds) {
  if (!seconds) return "—";
  const date = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  const day = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
  const ago = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
  const relative = ago < 60 ? `${ago}s ago`
    : ago < 3600 ? `${Math.floor(ago / 60)} min ago`
      : ago < 86400 ? `${Math.floor(ago / 3600)} h ago` : `${Math.floor(ago / 86400)} d ago`;
  return el("span", { title: date.toString() }, `${day} ${clock(date)}`,
    el("span", { class: "muted" }, ` · ${relative}`));
}

// One GET to the proxy, classified: ok, error (the API answered with an error),
// unreachable (the proxy could not reach the API) or offline (no dashboard server).
async function getJSON(path) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
  } catch (err) {
    return { kind: "offline", message: `the dashboard server is not answering (${err.message})` };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.ok && body !== null) return { kind: "ok", body };
  const message = (body && body.error && body.error.message) || `HTTP ${response.status}`;
  if (response.headers.get("X-API-Unreachable") === "true") return { kind: "unreachable", message };
  return { kind: "error", status: response.status, message };
}

// Dependencies -------------------------------------------------------------------------

const DETAILS = {
  temporal: (c) => c.address,
  s3: (c) => c.endpoint && `${c.endpoint} · bucket ${c.bucket}`,
  llama: (c) => c.url && `${c.url} · ${c.slots} slot${c.slots === 1 ? "" : "s"}`,
  supervisor: (c) => c.programs && `${Object.keys(c.programs).length} programs`,
};

function genericDetails(check) {
  return Object.entries(check)
    .filter(([key]) => !["status", "message", "programs"].includes(key))
    .map(([key, value]) => `${key} ${typeof value === "object" ? JSON.stringify(value) : value}`)
    .join(" · ");
}

function dependencyRow(id, label, check, details, extraClass) {
  return el("tr", { "data-check": id, class: extraClass },
    el("td", { class: "name" }, label),
    el("td", {}, badge(check.status)),
    el("td", { class: "details" }, details || "—"),
    el("td", { class: "message" }, check.message || "—"));
}

function renderHealth(result) {
  const overall = document.getElementById("overall");
  if (result.kind !== "ok") {
    overall.className = "status error";
    overall.textContent = "error";
    fill("dependency-rows", [messageRow(4, result.message, "section-error")]);
    return;
  }
  const health = result.body;
  document.getElementById("mode").textContent = `mode: ${health.mode}`;
  overall.className = `status ${health.status === "ok" ? "ok" : "degraded"}`;
  overall.textContent = health.status === "ok" ? "all systems ok" : health.status;
  const rows = [];
  for (const [name, check] of Object.entries(health.checks || {})) {
    const details = (DETAILS[name] || genericDetails)(check) || genericDetails(check);
    rows.push(dependencyRow(name, name, check, details));
    for (const [program, entry] of Object.entries(check.programs || {})) {
      rows.push(dependencyRow(`program:${program}`, el("span", {}, el("span", { class: "muted" }, "program "), program),
        entry, el("code", { class: "state" }, entry.state), "program"));
    }
  }
  fill("dependency-rows", rows.length ? rows : [messageRow(4, "no checks reported")]);
}

// Queues -------------------------------------------------------------------------------

function renderQueues(result) {
  if (result.kind !== "ok") {
    fill("queue-rows", [messageRow(6, result.message, "section-error")]);
    return;
  }
  const { queues, supervisor_reachable: supervisorReachable } = result.body;
  const rows = Object.entries(queues || {}).map(([name, q]) => {
    const state = q.worker.state ?? (supervisorReachable ? "UNKNOWN" : null);
    return el("tr", { "data-queue": name },
      el("td", { class: "name" }, name),
      el("td", {}, el("code", {}, q.task_queue)),
      el("td", { class: "num" }, q.backlog),
      el("td", { class: "num" }, q.live_pollers),
      el("td", {}, q.worker.program),
      el("td", {}, state === null
        ? el("span", { class: "muted" }, "unknown (supervisord not reachable)")
        : badge(state)));
  });
  fill("queue-rows", rows.length ? rows : [messageRow(6, "no task queues")]);
}

// Batches ------------------------------------------------------------------------------

function progress(counts) {
  const total = counts.total || 0;
  const done = (counts.completed || 0) + (counts.failed || 0);
  const percent = total ? Math.min(100, Math.round((100 * done) / total)) : 0;
  const bar = el("span", { class: "bar" }, el("span", { class: "done", style: `width:${percent}%` }));
  return el("span", { class: "progress" }, bar, el("span", { class: "muted" }, `${percent}%`));
}

function renderBatches(result) {
  if (result.kind !== "ok") {
    fill("batch-rows", [messageRow(7, result.message, "section-error")]);
    return;
  }
  const rows = (result.body.data || []).map((batch) => {
    const counts = batch.request_counts || {};
    return el("tr", { "data-batch": batch.id },
      el("td", {}, el("code", { title: batch.errors ? batch.errors.message : null }, batch.id)),
      el("td", {}, badge(batch.status)),
      el("td", { class: "num" }, counts.total ?? 0),
      el("td", { class: "num" }, counts.completed ?? 0),
      el("td", { class: counts.failed ? "num failed" : "num" }, counts.failed ?? 0),
      el("td", {}, progress(counts)),
      el("td", {}, when(batch.created_at)));
  });
  fill("batch-rows", rows.length ? rows : [messageRow(7, "no batches yet")]);
}

// Polling ------------------------------------------------------------------------------

function showDown(result) {
  const offline = result.kind === "offline";
  const banner = document.getElementById("banner");
  document.getElementById("banner-title").textContent =
    offline ? "Dashboard server unreachable" : "API unreachable";
  // The title already says what is down; the message adds where and why.
  const detail = result.message.replace(/^API unreachable:\s*/, "");
  document.getElementById("banner-message").textContent = detail +
    (lastSuccess ? ` — showing data from ${clock(lastSuccess)}, retrying…` : " — retrying…");
  banner.hidden = false;
  document.getElementById("content").classList.add("stale");
  const overall = document.getElementById("overall");
  overall.className = "status error";
  overall.textContent = offline ? "dashboard unreachable" : "API unreachable";
  document.getElementById("updated").textContent =
    lastSuccess ? `last update ${clock(lastSuccess)}` : "";
}

async function refresh() {
  try {
    const results = await Promise.all(
      ["api/health", "api/queues", "api/batches"].map((path) => getJSON(path)));
    const down = results.find((r) => r.kind === "offline" || r.kind === "unreachable");
    if (down) {
      showDown(down);
      return;
    }
    const [health, queues, batches] = results;
    renderHealth(health);
    renderQueues(queues);
    renderBatches(batches);
    lastSuccess = new Date();
    document.getElementById("banner").hidden = true;
    document.getElementById("content").classList.remove("stale");
    document.getElementById("updated").textContent = `updated ${clock(lastSuccess)}`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
