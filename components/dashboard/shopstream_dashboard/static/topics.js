/* shopstream topic browser (/topics): the topics with their offsets and consumer lag, a
 * partition's latest records and the record at an offset, a record found by EventId
 * wherever the pipeline keeps it, and the rejects by reason with their replay buttons.
 *
 * The topics and the rejects refresh every refresh_s (from /api/config); a failed request
 * or a store reported "down" marks only that card as down.
 */
"use strict";

let refreshMs = 5000;
const FETCH_TIMEOUT_MS = 30000;
const REPLAY_TIMEOUT_MS = 660000; // the dashboard stops a replay after 600 s

const replayResults = new Map(); // "source|reason" -> {text, failed}: kept across refreshes
const openSamples = new Set(); // "source|reason" of the groups whose samples are shown

/* ---------- helpers ---------- */

function fmtInt(n) {
  return typeof n === "number" && Number.isFinite(n) ? n.toLocaleString("en-US") : "—";
}

function fmtTime(iso) {
  if (!iso) {
    return "—";
  }
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** A record's value as pretty JSON, or its text when it is not JSON. */
function pretty(value, raw) {
  if (value === null || value === undefined) {
    return raw === null || raw === undefined ? "null" : String(raw);
  }
  return JSON.stringify(value, null, 2);
}

function showError(panel, text) {
  const node = card(panel);
  node.classList.toggle("down", Boolean(text));
  const errorNode = node.querySelector(".panel-error");
  errorNode.textContent = text || "";
  errorNode.hidden = !text;
}

function showSources(panel, sources) {
  const holder = card(panel).querySelector(".sources");
  if (holder) {
    holder.replaceChildren(
      ...sources.map((s) => el("span", {className: `src ${s.state}`, title: s.error || s.detail || s.state,
        dataset: {source: s.name}}, [s.name])),
    );
  }
  const down = sources.filter((s) => s.state === "down");
  showError(panel, down.map((s) => `${s.name} is down: ${s.error || "no answer"}`).join("\n"));
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function requestJson(url, options, timeoutMs) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs || FETCH_TIMEOUT_MS);
  try {
    let response;
    try {
      response = await fetch(url, {cache: "no-store", ...options, signal: controller.signal,
        headers: {Accept: "application/json", ...((options && options.headers) || {})}});
    } catch (err) {
      throw new Error(controller.signal.aborted ? `no answer from ${url} in time` : `cannot reach ${url}: ${err.message}`);
    }
    if (!response.ok) {
      let detail = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (ignored) {
        // the status is all there is
      }
      throw new ApiError(response.status, `HTTP ${response.status}: ${detail}`);
    }
    return await response.json();
  } finally {
    clearTimeout(timer);
  }
}

function noteAsOf(iso) {
  const node = byId("as-of");
  node.textContent = fmtTime(iso);
  node.setAttribute("datetime", iso);
}

/* ---------- topics ---------- */

function partitionsTable(topic) {
  const rows = topic.partitions.map((p) => {
    const row = el("tr", {className: "clickable", dataset: {partition: String(p.partition)},
      title: `read the latest records of ${topic.topic}-${p.partition}`}, [
      el("td", {}, [String(p.partition)]),
      el("td", {className: "num first"}, [fmtInt(p.first)]),
      el("td", {className: "num next"}, [fmtInt(p.next)]),
      el("td", {className: "num records"}, [fmtInt(p.records)]),
    ]);
    row.addEventListener("click", () => {
      byId("rec-topic").value = topic.topic;
      byId("rec-partition").value = String(p.partition);
      loadLatest();
    });
    return row;
  });
  return el("table", {className: "data partitions"}, [
    el("thead", {}, [el("tr", {}, [el("th", {}, ["partition"]), el("th", {className: "num"}, ["first"]),
      el("th", {className: "num"}, ["next"]), el("th", {className: "num"}, ["records"])])]),
    el("tbody", {}, rows),
  ]);
}

function groupsTable(topic) {
  if (topic.groups.length === 0) {
    return el("p", {className: "note"}, ["no consumer group has committed offsets on it"]);
  }
  const rows = topic.groups.map((g) => el("tr", {dataset: {group: g.group}}, [
    el("td", {className: "id"}, [g.group]),
    el("td", {className: "state-cell"}, [g.state || "—"]),
    el("td", {className: `num lag${g.lag > 0 ? " behind" : ""}`}, [fmtInt(g.lag)]),
    el("td", {className: "per-partition"}, [
      g.partitions.map((p) => `${p.partition}: ${p.committed === null ? "none" : fmtInt(p.committed)} (lag ${fmtInt(p.lag)})`).join(", ")
        || "checkpoint's sum only",
    ]),
  ]));
  return el("table", {className: "data groups"}, [
    el("thead", {}, [el("tr", {}, [el("th", {}, ["consumer group"]), el("th", {}, ["state"]),
      el("th", {className: "num"}, ["lag"]), el("th", {}, ["partition: committed (lag)"])])]),
    el("tbody", {}, rows),
  ]);
}

function renderTopics(data) {
  const sections = data.topics.map((t) => el("section", {className: "topic", dataset: {topic: t.topic}}, [
    el("h3", {}, [t.topic, " ", el("span", {className: "role"}, [
      `${t.role ? `${t.role} · ` : ""}${fmtInt(t.records)} records in ${t.partitions.length} partitions, end ${fmtInt(t.end)}`,
    ])]),
    el("div", {className: "topic-cols"}, [partitionsTable(t), groupsTable(t)]),
  ]));
  byId("topics").replaceChildren(...(sections.length ? sections : [el("p", {className: "note"}, ["no topics"])]));
  const select = byId("rec-topic");
  const chosen = select.value;
  select.replaceChildren(...data.topics.map((t) => el("option", {value: t.topic}, [t.topic])));
  if (data.topics.some((t) => t.topic === chosen)) {
    select.value = chosen;
  }
}

async function refreshTopics() {
  try {
    const data = await requestJson("/api/topics");
    noteAsOf(data.as_of);
    showSources("topics", [data.source]);
    if (data.source.state !== "down") {
      renderTopics(data);
    }
  } catch (err) {
    showError("topics", err.message);
  }
}

/* ---------- records ---------- */

function recordNode(r) {
  return el("article", {className: "record", dataset: {offset: String(r.offset)}}, [
    el("div", {className: "record-head"}, [
      el("strong", {}, [`${r.topic}-${r.partition}@${r.offset}`]),
      el("span", {className: "time"}, [fmtTime(r.timestamp)]),
      el("span", {className: "key"}, [`key ${r.key === null ? "none" : r.key}`]),
    ]),
    el("pre", {className: "json"}, [pretty(r.value, r.raw)]),
  ]);
}

function recordsTarget() {
  const topic = byId("rec-topic").value;
  const partition = byId("rec-partition").value || "0";
  return `/api/topics/${encodeURIComponent(topic)}/${encodeURIComponent(partition)}`;
}

async function loadLatest(event) {
  if (event) {
    event.preventDefault();
  }
  const n = byId("rec-n").value || "10";
  const url = `${recordsTarget()}?n=${encodeURIComponent(n)}`;
  byId("records-note").textContent = "reading…";
  try {
    const data = await requestJson(url);
    showError("records", "");
    byId("records-note").textContent =
      `${data.topic}-${data.partition}: offsets ${fmtInt(data.first)} to ${fmtInt(data.next - 1)}; the latest ${data.records.length}, newest first`;
    byId("records").replaceChildren(...data.records.map(recordNode));
  } catch (err) {
    byId("records-note").textContent = "";
    showError("records", err.message);
  }
}

async function loadAt() {
  const offset = byId("rec-offset").value;
  if (offset === "") {
    return;
  }
  const url = `${recordsTarget()}/${encodeURIComponent(offset)}`;
  byId("records-note").textContent = "reading…";
  try {
    const r = await requestJson(url);
    showError("records", "");
    byId("records-note").textContent = `the record at offset ${fmtInt(r.offset)}`;
    byId("records").replaceChildren(recordNode(r));
  } catch (err) {
    byId("records-note").textContent = "";
    byId("records").replaceChildren();
    showError("records", err.message);
  }
}

/* ---------- find by EventId ---------- */

function foundNode(f) {
  return el("article", {className: "found", dataset: {where: f.where, location: f.location}}, [
    el("div", {className: "found-head"}, [
      el("span", {className: "where"}, [f.where]),
      el("span", {className: "location"}, [f.location]),
    ]),
    el("pre", {className: "json"}, [JSON.stringify(f.record, null, 2)]),
  ]);
}

async function find(event) {
  event.preventDefault();
  const eventId = byId("find-id").value.trim();
  if (!eventId) {
    return;
  }
  const title = byId("find-title");
  title.hidden = false;
  title.className = "user-title pending";
  title.textContent = `searching for ${eventId}…`;
  byId("find-result").replaceChildren();
  try {
    const data = await requestJson(`/api/find/${encodeURIComponent(eventId)}`);
    showSources("find", data.sources);
    byId("find-note").textContent = "Searched MongoDB's events and dead letters, the lake's purchases, the quarantine, "
      + `and the latest ${fmtInt(data.scanned)} records of each partition of ${data.topics.join(", ")}.`;
    const places = [...new Set(data.found.map((f) => f.where))];
    title.className = `user-title ${data.found.length ? "" : "not-found"}`.trim();
    title.dataset.found = String(data.found.length);
    title.textContent = data.found.length
      ? `${data.event_id}: found in ${places.join(", ")}`
      : `${data.event_id}: found nowhere`;
    byId("find-result").replaceChildren(...data.found.map(foundNode));
  } catch (err) {
    title.className = "user-title failed";
    title.textContent = `the search for ${eventId} failed`;
    showError("find", err.message);
  }
}

/* ---------- rejects and replay ---------- */

function sampleNode(s) {
  const mark = s.replayed_at
    ? el("span", {className: "replayed-mark"}, [`replayed ${fmtTime(s.replayed_at)}${s.replayed_as ? ` as ${s.replayed_as}` : ""}`])
    : el("span", {className: "count-note"}, ["not replayed"]);
  return el("article", {className: "record", dataset: {id: s.id}}, [
    el("div", {className: "record-head"}, [
      el("strong", {}, [s.topic === null ? s.id : `${s.topic}-${s.partition}@${s.offset}`]),
      el("span", {className: "time"}, [fmtTime(s.at)]),
      mark,
    ]),
    el("pre", {className: "json"}, [pretty(s.value, s.raw)]),
  ]);
}

async function replay(source, reason, dryRun, resultNode) {
  const key = `${source}|${reason}`;
  resultNode.hidden = false;
  resultNode.className = "json replay-result";
  resultNode.textContent = dryRun ? "dry run…" : "replaying…";
  try {
    const summary = await requestJson("/api/replay", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({source, reason, dry_run: dryRun}),
    }, REPLAY_TIMEOUT_MS);
    replayResults.set(key, {text: JSON.stringify(summary, null, 2), failed: false});
  } catch (err) {
    replayResults.set(key, {text: err.message, failed: true});
  }
  showReplayResult(key, resultNode);
  refreshRejects();
}

function showReplayResult(key, node) {
  const result = replayResults.get(key);
  node.hidden = !result;
  if (result) {
    node.textContent = result.text;
    node.className = `json replay-result${result.failed ? " failed" : ""}`;
  }
}

function groupNode(source, g) {
  const key = `${source}|${g.reason}`;
  const result = el("pre", {className: "json replay-result", hidden: ""}, []);
  showReplayResult(key, result);
  const run = el("button", {type: "button", className: "replay"}, ["Replay"]);
  const dry = el("button", {type: "button", className: "replay-dry"}, ["Dry run"]);
  run.addEventListener("click", () => replay(source, g.reason, false, result));
  dry.addEventListener("click", () => replay(source, g.reason, true, result));
  const samples = el("details", {}, [el("summary", {}, [`the first ${g.samples.length}`]), ...g.samples.map(sampleNode)]);
  samples.open = openSamples.has(key);
  samples.addEventListener("toggle", () => (samples.open ? openSamples.add(key) : openSamples.delete(key)));
  return el("div", {className: "reject-group", dataset: {source, reason: g.reason}}, [
    el("div", {className: "reject-head"}, [
      el("span", {className: "reason"}, [g.reason]),
      el("span", {className: "count", title: "records"}, [fmtInt(g.count)]),
      el("span", {className: "replayed", title: "replayed"}, [`${fmtInt(g.replayed)} replayed`]),
      dry,
      run,
    ]),
    samples,
    result,
  ]);
}

function renderRejectSet(source, id, set) {
  const total = byId(`${id}-total`);
  if (!set) {
    total.textContent = "(not read: the store is down)";
    return;
  }
  total.textContent = `${fmtInt(set.total)} in ${fmtInt(set.reasons)} reasons, ${fmtInt(set.replayed)} replayed`;
  total.dataset.total = String(set.total);
  const groups = set.groups.map((g) => groupNode(source, g));
  byId(id).replaceChildren(...(groups.length ? groups : [el("p", {className: "note"}, ["none"])]));
}

async function refreshRejects() {
  try {
    const data = await requestJson("/api/rejects");
    showSources("rejects", data.sources);
    renderRejectSet("dead-letters", "dead-letters", data.dead_letters);
    renderRejectSet("quarantine", "quarantine", data.quarantine);
  } catch (err) {
    showError("rejects", err.message);
  }
}

/* ---------- start ---------- */

function refreshAll() {
  if (document.visibilityState === "hidden") {
    return;
  }
  refreshTopics();
  refreshRejects();
}

async function start() {
  byId("find-form").addEventListener("submit", find);
  byId("records-form").addEventListener("submit", loadLatest);
  byId("rec-at").addEventListener("click", loadAt);
  try {
    const config = await requestJson("/api/config");
    if (config.refresh_s > 0) {
      refreshMs = config.refresh_s * 1000;
      byId("refresh-s").textContent = String(config.refresh_s);
    }
  } catch (err) {
    console.warn(`keeping a ${refreshMs / 1000} s refresh: ${err.message}`);
  }
  refreshAll();
  setInterval(refreshAll, Math.max(refreshMs, 2000));
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", start);
} else {
  start();
}
