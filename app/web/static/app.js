// The dashboard page: polls the dashboard server's /api/* proxy, renders the tables, starts
// batches from a JSONL file and follows one batch (progress, rates, cost, a throughput chart).
// Every value from the API is inserted as text, never as HTML.
"use strict";

const REFRESH_MS = 2500;
// Health checks and supervisord program states. A batch's badge comes from the API's
// fields instead (batchBadge): which states are final is the API's to say.
const BADGE_BY_STATE = {
  ok: "ok", RUNNING: "ok",
  error: "error", FATAL: "error", BACKOFF: "error", UNKNOWN: "error",
  STARTING: "busy", STOPPING: "busy",
};

let lastSuccess = null;
// The batch followed in the detail panel (also in the URL: #batch=ID) and its samples.
let selected = null;
let samples = [];
const MAX_SAMPLES = 240;

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

// A batch's state: busy until the API says it is final (is_terminal), then ok when it ended
// with every request run (exit_code 0 at the CLI: end_reason "completed"), error when it
// failed, idle for the other endings (cancelled, stopped by its budget, expired).
function batchBadge(batch) {
  const text = String(batch.status || "unknown");
  let kind = "busy";
  if (batch.is_terminal) {
    kind = batch.end_reason === "completed" ? "ok" : batch.end_reason === "failed" ? "error" : "idle";
  }
  const label = batch.end_reason && batch.end_reason !== batch.status ? `${text} (${batch.end_reason})` : text;
  return el("span", { class: `badge ${kind}` }, label.toLowerCase());
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

function number(value) {
  if (value === undefined || value === null) return "–";
  return value >= 100 ? Math.round(value).toLocaleString("en-US") : value.toFixed(1);
}

function duration(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (h) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

function money(value) {
  if (value === undefined || value === null) return "–";
  return value < 1 ? `$${value.toFixed(4)}` : `$${value.toFixed(2)}`;
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
  renderBoxes(result.body.boxes || (queues && queues.gpu && queues.gpu.boxes) || null);
}

// GPU boxes, when the API reports them (GET /queues `boxes`) -------------------------

function renderBoxes(boxes) {
  const section = document.getElementById("boxes");
  if (!Array.isArray(boxes) || !boxes.length) {
    section.hidden = true;
    return;
  }
  section.hidden = false;
  fill("box-rows", boxes.map((box) => el("tr", { "data-box": box.box },
    el("td", { class: "name" }, box.box),
    el("td", { class: "num" }, box.slots ?? "–"),
    el("td", { class: "num" }, box.in_flight ?? "–"),
    el("td", { class: "num" }, number(box.requests_per_s)),
    el("td", { class: "num" }, number(box.tokens_per_s)),
    el("td", {}, typeof box.last_seen === "number" ? when(box.last_seen)
      : (box.last_seen ? String(box.last_seen) : "–")))));
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
    fill("batch-rows", [messageRow(10, result.message, "section-error")]);
    return;
  }
  const rows = (result.body.data || []).map((batch) => {
    const counts = batch.request_counts || {};
    const row = el("tr", { "data-batch": batch.id, class: batch.id === selected ? "clickable selected" : "clickable" },
      el("td", {}, el("code", { title: batch.errors ? batch.errors.message : null }, batch.id)),
      el("td", {}, batchBadge(batch)),
      el("td", { class: "num" }, counts.total ?? 0),
      el("td", { class: "num" }, counts.completed ?? 0),
      el("td", { class: counts.failed ? "num failed" : "num" }, counts.failed ?? 0),
      el("td", {}, progress(counts)),
      el("td", { class: "num" }, number(batch.requests_per_second)),
      el("td", { class: "num" }, duration(batch.seconds_left)),
      el("td", { class: "num" }, money(batch.cost_usd)),
      el("td", {}, when(batch.created_at)));
    row.addEventListener("click", () => select(batch.id));
    return row;
  });
  fill("batch-rows", rows.length ? rows : [messageRow(10, "no batches yet")]);
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
    if (selected) renderDetail(await getJSON(`api/batch/${encodeURIComponent(selected)}`));
    lastSuccess = new Date();
    document.getElementById("banner").hidden = true;
    document.getElementById("content").classList.remove("stale");
    document.getElementById("updated").textContent = `updated ${clock(lastSuccess)}`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

// Starting a batch ---------------------------------------------------------------------

function say(text, kind = "") {
  const message = document.getElementById("submit-message");
  message.textContent = text;
  message.className = `form-message ${kind}`;
}

async function submitBatch(event) {
  event.preventDefault();
  const file = document.getElementById("batch-file").files[0];
  if (!file) {
    say("choose a JSONL file first", "error");
    return;
  }
  const params = new URLSearchParams({ endpoint: document.getElementById("batch-endpoint").value });
  const defaults = document.getElementById("batch-defaults").value.trim();
  if (defaults) params.set("defaults", defaults);
  const budget = document.getElementById("batch-budget").value.trim();
  if (budget) params.set("max_cost_usd", budget);
  const shardSize = document.getElementById("batch-shard-size").value.trim();
  if (shardSize) params.set("shard_size", shardSize);
  const button = document.getElementById("batch-submit");
  button.disabled = true;
  say(`uploading ${file.name} (${file.size.toLocaleString("en-US")} bytes)…`);
  try {
    const response = await fetch(`api/batch?${params}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/x-ndjson" },
    });
    let body = null;
    try { body = await response.json(); } catch { body = null; }
    if (!response.ok || !body || !body.id) {
      say((body && body.error && body.error.message) || `HTTP ${response.status}`, "error");
      return;
    }
    say(`started ${body.id} (${file.name})`, "ok");
    select(body.id);
  } catch (err) {
    say(`the dashboard server is not answering (${err.message})`, "error");
  } finally {
    button.disabled = false;
  }
}

// The followed batch -------------------------------------------------------------------

function select(id) {
  if (id !== selected) samples = [];
  selected = id;
  if (location.hash !== `#batch=${id}`) history.replaceState(null, "", `#batch=${id}`);
  const section = document.getElementById("batch-detail");
  section.hidden = false;
  document.getElementById("detail-id").textContent = id;
  const base = `api/batch/${encodeURIComponent(id)}`;
  const output = document.getElementById("download-output");
  output.href = `${base}/results`;
  output.setAttribute("download", `${id}-output.jsonl`);
  const errors = document.getElementById("download-errors");
  errors.href = `${base}/errors`;
  errors.setAttribute("download", `${id}-errors.jsonl`);
  for (const row of document.querySelectorAll("#batch-rows tr[data-batch]")) {
    row.classList.toggle("selected", row.dataset.batch === id);
  }
  getJSON(base).then(renderDetail);
}

function renderDetail(result) {
  if (!selected) return;
  const failure = document.getElementById("detail-error");
  if (result.kind !== "ok") {
    failure.hidden = false;
    failure.textContent = result.message;
    return;
  }
  const batch = result.body;
  if (batch.id !== selected) return;
  const counts = batch.request_counts || {};
  const total = counts.total || 0;
  const done = (counts.completed || 0) + (counts.failed || 0);
  const percent = total ? Math.min(100, (100 * done) / total) : 0;
  document.getElementById("detail-status").replaceChildren(batchBadge(batch));
  document.getElementById("detail-bar").style.width = `${percent.toFixed(1)}%`;
  document.getElementById("detail-done").textContent =
    `${done.toLocaleString("en-US")} / ${total.toLocaleString("en-US")} (${percent.toFixed(0)}%)`;
  document.getElementById("detail-rps").textContent = number(batch.requests_per_second);
  document.getElementById("detail-tps").textContent = number(batch.tokens_per_second);
  document.getElementById("detail-left").textContent = duration(batch.seconds_left);
  document.getElementById("detail-elapsed").textContent = duration(batch.elapsed_seconds);
  document.getElementById("detail-cost").textContent = batch.cost_usd === null || batch.cost_usd === undefined
    ? "unknown (no GPU_PRICE_PER_HOUR)" : money(batch.cost_usd) +
      (batch.max_cost_usd ? ` of ${money(batch.max_cost_usd)} budget` : "");
  document.getElementById("detail-per-million").textContent = money(batch.usd_per_million_output_tokens);
  document.getElementById("detail-failed").textContent = String(counts.failed || 0);
  const usage = batch.usage || {};
  document.getElementById("detail-tokens").textContent =
    `${(usage.input_tokens || 0).toLocaleString("en-US")} / ${(usage.output_tokens || 0).toLocaleString("en-US")}`;
  failure.hidden = !batch.errors;
  failure.textContent = batch.errors ? batch.errors.message : "";
  // Final per the API: Cancel stays disabled in every final state, and while cancelling.
  const terminal = Boolean(batch.is_terminal);
  document.getElementById("batch-cancel").disabled = terminal || batch.status === "cancelling";
  // Retry: an ended batch with failed or unfinished lines (the API says when there is none
  // to send again: invalid input lines are not resent).
  const retry = document.getElementById("batch-retry");
  retry.hidden = !(terminal && (counts.failed || 0) > 0);
  renderChain(batch);
  document.getElementById("download-output").textContent = terminal ? "Download output" : "Download output (so far)";
  document.getElementById("download-errors").textContent = terminal ? "Download errors" : "Download errors (so far)";
  sample(done, usage.total_tokens || 0, terminal);
  drawChart();
}

function sample(done, tokens, terminal) {
  const now = Date.now() / 1000;
  const last = samples[samples.length - 1];
  if (last && (now - last.t < 0.5 || (terminal && last.terminal))) return;
  const point = { t: now, done, tokens, terminal, rps: 0, tps: 0 };
  if (last) {
    point.rps = Math.max(0, (done - last.done) / (now - last.t));
    point.tps = Math.max(0, (tokens - last.tokens) / (now - last.t));
  }
  samples.push(point);
  if (samples.length > MAX_SAMPLES) samples.shift();
}

function drawChart() {
  const canvas = document.getElementById("throughput-chart");
  const points = samples.slice(1);
  canvas.dataset.points = String(points.length);
  canvas.dataset.maxRps = points.length ? Math.max(...points.map((p) => p.rps)).toFixed(3) : "0";
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 520;
  const height = canvas.clientHeight || 160;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  ctx.strokeStyle = style.getPropertyValue("--line");
  ctx.strokeRect(0.5, 0.5, width - 1, height - 1);
  ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.font = "11px system-ui, sans-serif";
  if (points.length < 2) {
    ctx.fillText("collecting samples…", 8, 16);
    return;
  }
  const pad = 6;
  const maxRps = Math.max(...points.map((p) => p.rps), 1e-9);
  const maxTps = Math.max(...points.map((p) => p.tps), 1e-9);
  const x = (i) => pad + (i * (width - 2 * pad)) / (points.length - 1);
  const y = (value, max) => height - pad - (value / max) * (height - 2 * pad - 14);
  ctx.beginPath();
  ctx.moveTo(x(0), height - pad);
  points.forEach((p, i) => ctx.lineTo(x(i), y(p.tps, maxTps)));
  ctx.lineTo(x(points.length - 1), height - pad);
  ctx.closePath();
  ctx.fillStyle = style.getPropertyValue("--busy-bg");
  ctx.fill();
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p.rps, maxRps)) : ctx.moveTo(x(i), y(p.rps, maxRps))));
  ctx.strokeStyle = style.getPropertyValue("--busy");
  ctx.lineWidth = 2;
  ctx.stroke();
  ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.fillText(`peak ${number(maxRps)} req/s · ${number(maxTps)} tok/s`, 8, 14);
}

function batchLink(id) {
  const link = el("a", { href: `#batch=${id}` }, id);
  link.addEventListener("click", (event) => { event.preventDefault(); select(id); });
  return link;
}

function renderChain(batch) {
  const chain = document.getElementById("detail-chain");
  const parts = [];
  if (batch.retry_of) parts.push("retry of ", batchLink(batch.retry_of));
  const retries = batch.retried_by || [];
  if (retries.length) {
    if (parts.length) parts.push("; ");
    parts.push("retried by ");
    retries.forEach((id, i) => { if (i) parts.push(", "); parts.push(batchLink(id)); });
  }
  chain.hidden = !parts.length;
  chain.replaceChildren(...parts);
}

async function retrySelected() {
  if (!selected) return;
  const original = selected;
  const button = document.getElementById("batch-retry");
  button.disabled = true;
  try {
    const response = await fetch(`api/batch/${encodeURIComponent(original)}/retry`, { method: "POST" });
    let body = null;
    try { body = await response.json(); } catch { body = null; }
    if (!response.ok || !body || !body.id) {
      say((body && body.error && body.error.message) || `HTTP ${response.status}`, "error");
      return;
    }
    const sent = body.retry || {};
    say(`started ${body.id}: retry of ${original} (${sent.failed || 0} failed, ${sent.unfinished || 0} unfinished)`, "ok");
    select(body.id);
  } catch (err) {
    say(`the dashboard server is not answering (${err.message})`, "error");
  } finally {
    button.disabled = false;
  }
}

async function cancelSelected() {
  if (!selected) return;
  const button = document.getElementById("batch-cancel");
  button.disabled = true;
  let response;
  try {
    response = await fetch(`api/batch/${encodeURIComponent(selected)}/cancel`, { method: "POST" });
  } catch (err) {
    say(`the dashboard server is not answering (${err.message})`, "error");
    button.disabled = false;
    return;
  }
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    say((body && body.error && body.error.message) || `HTTP ${response.status}`, "error");
    button.disabled = false;
    return;
  }
  say(`cancel requested for ${selected}; finished results are kept`, "ok");
  renderDetail({ kind: "ok", body });
}

document.getElementById("batch-form").addEventListener("submit", submitBatch);
document.getElementById("batch-cancel").addEventListener("click", cancelSelected);
document.getElementById("batch-retry").addEventListener("click", retrySelected);
const fromHash = /^#batch=(batch_[A-Za-z0-9_-]+)$/.exec(location.hash);
if (fromHash) select(fromHash[1]);

refresh();
