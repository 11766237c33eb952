/* shopstream dashboard: polls the JSON API every 5 s and redraws each panel in place.
 *
 * Every panel fetches on its own: a failed request (network error, timeout, non-2xx)
 * or a store reported "down" marks only that card as down; the others keep updating.
 * Charts are redrawn with Plotly.react; tables and text are rewritten in place.
 */
"use strict";

let refreshMs = 5000; // until /api/config says otherwise (SHOPSTREAM_DASHBOARD__REFRESH_S)
const FETCH_TIMEOUT_MS = 20000;
const API_HISTORY_MS = 15 * 60 * 1000;
const ACTIVITY_MINUTES = 15;
const TOP_N = 10;
const PRODUCT_LABEL_MAX = 18;
const SESSION_DAYS = 7;
const PLACE_LABEL_MAX = 22;
const SHARES_SHOWN = 7; // browsers and devices past these are summed as "other"

const PLOTLY_CONFIG = {displayModeBar: false, responsive: true};
const EVENT_ORDER = ["PageVisited", "AddedBasket", "CheckedProductReviews"];
const EVENT_COLORS = {
  PageVisited: "#3b6fd8",
  AddedBasket: "#f08c2e",
  CheckedProductReviews: "#2e9e6b",
};
const PALETTE = ["#3b6fd8", "#f08c2e", "#2e9e6b", "#c2417a", "#7b5cc4", "#8a6d3b", "#d64541", "#4aa3b5"];
const FUNNEL_COLORS = ["#3b6fd8", "#f08c2e", "#2e9e6b"];
const COLOR_BAR = "#3b6fd8";
const COLOR_LINE = "#f08c2e";
const COLOR_ERROR = "#d64541";
const COLOR_MUTED = "#9aa3ad";

const apiHistory = [];
let latestAsOf = null;
let userController = null;

/* ---------- formatting ---------- */

function isNumber(x) {
  return typeof x === "number" && Number.isFinite(x);
}

function fmtInt(n) {
  return isNumber(n) ? n.toLocaleString("en-US", {maximumFractionDigits: 0}) : "—";
}

function fmtNum(x, digits) {
  return isNumber(x)
    ? x.toLocaleString("en-US", {minimumFractionDigits: digits, maximumFractionDigits: digits})
    : "—";
}

function fmtMoney(x) {
  return fmtNum(x, 2);
}

/** A fraction (0.123) as a percentage with 1 decimal ("12.3%"). */
function fmtPct(fraction) {
  return isNumber(fraction) ? `${fmtNum(fraction * 100, 1)}%` : "—";
}

function toDate(iso) {
  if (iso === null || iso === undefined || iso === "") {
    return null;
  }
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

function pad2(n) {
  return String(n).padStart(2, "0");
}

function fmtClock(date) {
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`;
}

function isToday(date) {
  const now = new Date();
  return date.getFullYear() === now.getFullYear()
    && date.getMonth() === now.getMonth()
    && date.getDate() === now.getDate();
}

/** Local HH:MM:SS; times of another day get their local date in front (YYYY-MM-DD HH:MM:SS). */
function fmtTime(iso) {
  const date = toDate(iso);
  if (!date) {
    return "—";
  }
  if (isToday(date)) {
    return fmtClock(date);
  }
  return `${date.getFullYear()}-${pad2(date.getMonth() + 1)}-${pad2(date.getDate())} ${fmtClock(date)}`;
}

function fmtDuration(ms) {
  if (!isNumber(ms) || ms < 0) {
    return "—";
  }
  const seconds = ms / 1000;
  if (seconds < 60) {
    return `${fmtNum(seconds, 1)} s`;
  }
  const whole = Math.round(seconds);
  const hours = Math.floor(whole / 3600);
  const minutes = Math.floor((whole % 3600) / 60);
  if (hours > 0) {
    return `${hours} h ${pad2(minutes)} m`;
  }
  return `${minutes} m ${pad2(whole % 60)} s`;
}

function fmtRate(perSecond) {
  return isNumber(perSecond) ? `${fmtNum(perSecond, 1)}/s` : "—";
}

function shorten(text, max) {
  const s = String(text);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

function slug(text) {
  return String(text || "unknown").toLowerCase().replace(/[^a-z0-9]+/g, "-");
}

function eventRank(name) {
  const i = EVENT_ORDER.indexOf(name);
  return i === -1 ? EVENT_ORDER.length : i;
}

function byEventOrder(a, b) {
  return eventRank(a) - eventRank(b) || a.localeCompare(b);
}

function eventColor(name, index) {
  return EVENT_COLORS[name] || PALETTE[index % PALETTE.length];
}

/* ---------- DOM helpers ---------- */

function setText(id, text) {
  const node = byId(id);
  if (node) {
    node.textContent = text;
  }
}

function td(text, className) {
  return el("td", {className}, [text]);
}

function timeCell(iso) {
  return el("td", {className: "time", title: iso || ""}, [fmtTime(iso)]);
}

function replaceRows(table, rows, emptyText, columns) {
  const tbody = table.tBodies[0];
  if (rows.length === 0 && emptyText) {
    tbody.replaceChildren(el("tr", {className: "empty"}, [el("td", {colspan: String(columns)}, [emptyText])]));
  } else {
    tbody.replaceChildren(...rows);
  }
}

/** Rewrites a <dl> from [[term, value], ...]. */
function replaceStats(dl, pairs) {
  const nodes = [];
  for (const [term, value] of pairs) {
    nodes.push(el("dt", {}, [term]), el("dd", {}, [value]));
  }
  dl.replaceChildren(...nodes);
}

/* ---------- panel state (up / loading / down) ---------- */

function sourcesOf(data) {
  if (Array.isArray(data && data.sources)) {
    return data.sources;
  }
  return data && data.source ? [data.source] : [];
}

function loadingText(source) {
  const detail = source.detail || source.name;
  return /^loading\b/i.test(detail) ? detail : `loading ${detail}`;
}

function renderSourceChips(cardNode, sources) {
  const holder = cardNode.querySelector(".sources");
  if (!holder) {
    return;
  }
  const chips = sources.map((source) => {
    const synced = source.synced_at ? `synced at ${fmtTime(source.synced_at)}` : "not synced yet";
    const title = source.error ? `${source.state}: ${source.error} (${synced})` : `${source.state} (${synced})`;
    return el("span", {className: `src ${slug(source.state)}`, title, dataset: {source: source.name}}, [source.name]);
  });
  holder.replaceChildren(...chips);
}

/**
 * Shows a card as up, loading or down.
 * errorText: a request error (the previous data stays on screen, marked stale);
 * otherwise the card's state comes from the answer's sources.
 */
function showPanelState(cardNode, sources, errorText) {
  const down = sources.filter((s) => s.state === "down");
  const loading = sources.filter((s) => s.state === "loading");
  const errors = errorText ? [errorText] : down.map((s) => `${s.name} is down: ${s.error || "no answer"}`);

  cardNode.classList.toggle("down", errors.length > 0);
  cardNode.classList.toggle("stale", Boolean(errorText));
  cardNode.classList.toggle("loading", !errorText && loading.length > 0);

  const errorNode = cardNode.querySelector(".panel-error");
  errorNode.textContent = errors.join("\n");
  errorNode.hidden = errors.length === 0;

  const statusNode = cardNode.querySelector(".panel-status");
  const status = errorText ? [] : loading.map((s) => `${s.name}: ${loadingText(s)}`);
  statusNode.textContent = status.join(" · ");
  statusNode.hidden = status.length === 0;

  if (!errorText) {
    renderSourceChips(cardNode, sources);
  }
}

function noteAsOf(iso) {
  const date = toDate(iso);
  if (!date || (latestAsOf && date <= latestAsOf)) {
    return;
  }
  latestAsOf = date;
  const node = byId("as-of");
  node.textContent = fmtClock(date);
  node.setAttribute("datetime", date.toISOString());
  node.title = date.toISOString();
}

/* ---------- fetching ---------- */

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/** The message of a non-2xx answer: FastAPI's {detail} (a string or a list of errors), else the status. */
async function errorMessage(response) {
  let detail = "";
  try {
    const body = await response.json();
    if (typeof body.detail === "string") {
      detail = body.detail;
    } else if (Array.isArray(body.detail)) {
      detail = body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    } else if (body.detail) {
      detail = JSON.stringify(body.detail);
    }
  } catch (ignored) {
    detail = "";
  }
  return detail || `${response.status} ${response.statusText}`.trim();
}

/** GETs JSON; throws ApiError(status, detail) on non-2xx and Error on network failure or timeout. */
async function fetchJson(url, controller) {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, FETCH_TIMEOUT_MS);
  try {
    let response;
    try {
      response = await fetch(url, {signal: controller.signal, headers: {Accept: "application/json"}, cache: "no-store"});
    } catch (err) {
      if (timedOut) {
        throw new Error(`no answer within ${FETCH_TIMEOUT_MS / 1000} s`);
      }
      throw err;
    }
    if (!response.ok) {
      throw new ApiError(response.status, await errorMessage(response));
    }
    return await response.json();
  } finally {
    clearTimeout(timer);
  }
}

function describeError(err, url) {
  if (err instanceof ApiError) {
    return `HTTP ${err.status} from ${url}: ${err.message}`;
  }
  if (err instanceof SyntaxError) {
    return `bad JSON from ${url}: ${err.message}`;
  }
  return `cannot reach ${url}: ${err.message || err}`;
}

/* ---------- charts ---------- */

function plotlyReady() {
  return typeof window.Plotly !== "undefined";
}

function baseLayout(extra) {
  return Object.assign({
    margin: {l: 40, r: 16, t: 8, b: 30},
    font: {family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 11, color: "#3a4450"},
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    showlegend: false,
    hoverlabel: {font: {size: 11}},
    uirevision: "keep",
  }, extra);
}

function emptyAnnotation(isEmpty, text) {
  return isEmpty
    ? [{text: text || "no data yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: {color: COLOR_MUTED, size: 12}}]
    : [];
}

function timeAxis(extra) {
  return Object.assign({type: "date", tickformat: "%H:%M", hoverformat: "%H:%M:%S", gridcolor: "#eef0f3", automargin: true}, extra);
}

function drawChart(id, traces, layout) {
  if (!plotlyReady()) {
    return;
  }
  Plotly.react(byId(id), traces, layout, PLOTLY_CONFIG);
}

function drawPlaceholders() {
  const ids = [
    "chart-events", "chart-purchases", "chart-funnel", "chart-top-revenue", "chart-top-units", "chart-payments",
    "chart-categories", "chart-places-events", "chart-places-revenue", "chart-browsers", "chart-devices", "chart-api",
  ];
  for (const id of ids) {
    drawChart(id, [], baseLayout({
      // a uirevision of its own: the first data draw must not inherit the empty chart's axis
      // ranges (a funnel would keep a normal y axis and show its last step on top)
      uirevision: "placeholder",
      xaxis: {visible: false},
      yaxis: {visible: false},
      annotations: emptyAnnotation(true, "waiting for data…"),
    }));
  }
}

/* ---------- 1. activity ---------- */

function activityRange(data) {
  const end = toDate(data.as_of);
  if (!end) {
    return undefined;
  }
  return [new Date(end.getTime() - (data.minutes || ACTIVITY_MINUTES) * 60000), end];
}

function renderEventsChart(data) {
  const events = data.events || {};
  const names = Object.keys(events).sort(byEventOrder);
  const traces = names.map((name, i) => ({
    type: "scatter",
    mode: "lines",
    name,
    x: events[name].map((p) => toDate(p.t)),
    y: events[name].map((p) => p.per_s),
    line: {color: eventColor(name, i), width: 2, shape: "linear"},
    hovertemplate: "%{y:,.2f}/s",
  }));
  const isEmpty = traces.every((t) => t.x.length === 0);
  drawChart("chart-events", traces, baseLayout({
    showlegend: true,
    legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: {size: 10}},
    margin: {l: 40, r: 12, t: 24, b: 30},
    xaxis: timeAxis({range: activityRange(data)}),
    yaxis: {title: {text: "events/s", font: {size: 10}}, rangemode: "tozero", gridcolor: "#eef0f3", automargin: true},
    hovermode: "x unified",
    annotations: emptyAnnotation(isEmpty),
  }));
}

function renderPurchasesChart(data) {
  const rows = data.purchases || [];
  const x = rows.map((r) => toDate(r.t));
  const traces = [
    {
      type: "bar",
      name: "purchases",
      x,
      y: rows.map((r) => r.purchases),
      width: 45000,
      marker: {color: COLOR_BAR, opacity: 0.8},
      hovertemplate: "%{y:,} purchases",
    },
    {
      type: "scatter",
      mode: "lines+markers",
      name: "revenue",
      x,
      y: rows.map((r) => r.revenue),
      yaxis: "y2",
      line: {color: COLOR_LINE, width: 2},
      marker: {size: 4},
      hovertemplate: "%{y:,.2f} revenue",
    },
  ];
  drawChart("chart-purchases", traces, baseLayout({
    showlegend: true,
    legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: {size: 10}},
    margin: {l: 40, r: 48, t: 24, b: 30},
    xaxis: timeAxis({range: activityRange(data)}),
    yaxis: {title: {text: "purchases/min", font: {size: 10}}, rangemode: "tozero", gridcolor: "#eef0f3", automargin: true},
    yaxis2: {title: {text: "revenue/min", font: {size: 10}}, overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, automargin: true},
    hovermode: "x unified",
    bargap: 0.15,
    annotations: emptyAnnotation(rows.length === 0),
  }));
}

function renderActivity(data) {
  renderEventsChart(data);
  renderPurchasesChart(data);
}

/* ---------- 2. funnel ---------- */

function renderFunnelTable(steps) {
  const rows = steps.map((s) => el("tr", {dataset: {step: s.step}}, [
    td(s.step, "step"),
    td(fmtInt(s.users), "num users"),
    td(s.rate_from_previous === null || s.rate_from_previous === undefined ? "—" : fmtPct(s.rate_from_previous), "num rate"),
  ]));
  replaceRows(byId("funnel-table"), rows, "no data", 3);
}

function renderFunnelChart(steps) {
  const trace = {
    type: "funnel",
    y: steps.map((s) => s.step),
    x: steps.map((s) => s.users),
    textinfo: "value+percent initial",
    textposition: "auto",
    marker: {color: steps.map((s, i) => FUNNEL_COLORS[i % FUNNEL_COLORS.length])},
    connector: {line: {color: "#cfd5dc", width: 1}, fillcolor: "#eef1f5"},
    hovertemplate: "%{y}: %{x:,} users<extra></extra>",
  };
  const isEmpty = steps.length === 0;
  drawChart("chart-funnel", isEmpty ? [] : [trace], baseLayout({
    margin: {l: 40, r: 16, t: 6, b: 6},
    yaxis: {automargin: true, visible: !isEmpty},
    xaxis: {visible: false},
    annotations: emptyAnnotation(isEmpty),
  }));
}

function renderFunnel(data) {
  const steps = data.steps || [];
  renderFunnelTable(steps);
  renderFunnelChart(steps);
}

/* ---------- 3. sales ---------- */

function renderKpis(data) {
  setText("kpi-purchases", fmtInt(data.purchases));
  setText("kpi-orders", fmtInt(data.orders));
  setText("kpi-revenue", fmtMoney(data.revenue));
}

/** A product as the page names it: the catalogue's name, else its id (the API gives the id as Name then). */
function productName(row) {
  return row.Name || row.ProductId;
}

/**
 * A horizontal bar chart, largest first from the top: `ids` are the axis' categories (unique),
 * `labels` what the axis shows for them (shortened to `labelMax`), the rest as plotly's bar trace.
 */
function drawBars(id, {ids, labels, labelMax, values, color, customdata, hovertemplate, text}) {
  const trace = {
    type: "bar",
    orientation: "h",
    y: ids,
    x: values,
    marker: {color},
    customdata,
    hovertemplate,
    text,
    textposition: "auto",
    cliponaxis: false,
  };
  const shown = ids.length > 0;
  drawChart(id, shown ? [trace] : [], baseLayout({
    margin: {l: 40, r: 12, t: 4, b: 24},
    yaxis: {
      type: "category",
      autorange: "reversed",
      automargin: true,
      tickvals: ids,
      ticktext: labels.map((label) => shorten(label, labelMax)),
      tickfont: {size: 10},
      visible: shown,
    },
    xaxis: {rangemode: "tozero", gridcolor: "#eef0f3", visible: shown, tickformat: "~s"},
    annotations: emptyAnnotation(!shown),
  }));
}

function renderTopChart(id, rows, key, color, valueFormat) {
  const sorted = rows.slice().sort((a, b) => b[key] - a[key]);
  drawBars(id, {
    ids: sorted.map((r) => r.ProductId), // the axis' categories: unique, whatever the names
    labels: sorted.map(productName),
    labelMax: PRODUCT_LABEL_MAX,
    values: sorted.map((r) => r[key]),
    color,
    customdata: sorted.map((r) => [r.Units, r.Revenue, r.Orders, productName(r), r.Category || "unknown"]),
    hovertemplate: "%{customdata[3]} (%{y}, %{customdata[4]})<br>revenue %{customdata[1]:,.2f}<br>units %{customdata[0]:,}" +
      "<br>orders %{customdata[2]:,}<extra></extra>",
    text: sorted.map((r) => (valueFormat === "money" ? fmtMoney(r[key]) : fmtInt(r[key]))),
  });
}

function renderPaymentsChart(rows) {
  const trace = {
    type: "pie",
    hole: 0.5,
    labels: rows.map((r) => r.PaymentType),
    values: rows.map((r) => r.Orders),
    text: rows.map((r) => `revenue ${fmtMoney(r.Revenue)}`),
    textinfo: "percent",
    textposition: "inside",
    insidetextorientation: "horizontal",
    hovertemplate: "%{label}<br>%{value:,} orders (%{percent})<br>%{text}<extra></extra>",
    marker: {colors: rows.map((r, i) => PALETTE[i % PALETTE.length])},
    sort: false,
  };
  drawChart("chart-payments", rows.length ? [trace] : [], baseLayout({
    margin: {l: 8, r: 8, t: 8, b: 8},
    showlegend: rows.length > 0,
    legend: {orientation: "v", x: 1, y: 0.5, yanchor: "middle", font: {size: 10}},
    annotations: emptyAnnotation(rows.length === 0),
  }));
}

function renderCategoriesChart(rows) {
  const labels = rows.map((r) => r.Category);
  drawBars("chart-categories", {
    ids: labels,
    labels,
    labelMax: PLACE_LABEL_MAX,
    values: rows.map((r) => r.Revenue),
    color: "#7b5cc4",
    customdata: rows.map((r) => [r.Units, r.Products, r.Share]),
    hovertemplate: "%{y}<br>revenue %{x:,.2f} (%{customdata[2]:.1%})<br>units %{customdata[0]:,}" +
      "<br>products sold %{customdata[1]:,}<extra></extra>",
    text: rows.map((r) => `${fmtMoney(r.Revenue)} (${fmtPct(r.Share)})`),
  });
}

function renderSales(data) {
  renderKpis(data);
  byId("kpis").classList.remove("stale");
  const top = (rows) => (rows || []).slice(0, TOP_N);
  renderTopChart("chart-top-revenue", top(data.by_revenue), "Revenue", COLOR_BAR, "money");
  renderTopChart("chart-top-units", top(data.by_units), "Units", "#2e9e6b", "int");
  const payments = (data.payment_types || []).slice().sort((a, b) => b.Orders - a.Orders);
  renderPaymentsChart(payments);
  renderCategoriesChart(data.by_category || []);
}

/* ---------- 3c. sessions (the batch's day sums and product engagement) ---------- */

/** A cell showing `text` with the raw figure in data-value (what the page was given). */
function valueCell(text, value, className) {
  return el("td", {className, dataset: {value: String(value)}}, [text]);
}

function renderSessions(data) {
  const days = (data.days || []).map((d) => el("tr", {dataset: {day: d.Day}}, [
    td(d.Day, "day"),
    valueCell(fmtInt(d.Sessions), d.Sessions, "num sessions"),
    valueCell(fmtInt(d.Users), d.Users, "num users"),
    valueCell(fmtDuration(d.AvgDurationS * 1000), d.AvgDurationS, "num duration"),
    valueCell(fmtNum(d.PagesPerSession, 2), d.PagesPerSession, "num pages"),
    valueCell(fmtPct(d.BounceRate), d.BounceRate, "num bounce"),
    valueCell(fmtPct(d.ConversionRate), d.ConversionRate, "num conversion"),
    valueCell(fmtMoney(Number(d.Revenue)), d.Revenue, "num revenue"),
    valueCell(fmtPct(d.BotShare), d.BotShare, "num bots"),
  ]));
  replaceRows(byId("session-days"), days, "no sessions yet: the DAG's sessions task writes them", 9);
  const products = (data.products || []).map((p) => el("tr", {dataset: {product: p.ProductId}}, [
    el("td", {className: "product", title: p.ProductId}, [productName(p)]),
    td(p.Category, "category"),
    td(fmtInt(p.Viewed), "num viewed"),
    td(fmtInt(p.Added), "num added"),
    td(fmtInt(p.Bought), "num bought"),
    valueCell(fmtPct(p.ViewToBasket), p.ViewToBasket, "num view-basket"),
    valueCell(fmtPct(p.BasketToPurchase), p.BasketToPurchase, "num basket-purchase"),
  ]));
  replaceRows(byId("engagement"), products, "no product views yet", 7);
}

/* ---------- 3b. places, browsers and devices (bots left out unless the switch says so) ---------- */

/** "&include_bots=true" when the top bar's switch is on: the funnel, sales, places and shares count bots too. */
function botsParam() {
  return byId("include-bots").checked ? "&include_bots=true" : "";
}

function placeLabel(row) {
  if (row.City === undefined || row.City === null) {
    return row.Country;
  }
  return row.City === "unknown" ? `unknown, ${row.Country}` : `${row.City}, ${row.Country}`;
}

function renderPlacesChart(id, rows, key, color, valueFormat) {
  const ids = rows.map(placeLabel);
  drawBars(id, {
    ids,
    labels: rows.map((r, i) => (r.Rank === i + 1 ? placeLabel(r) : `#${r.Rank} ${placeLabel(r)}`)),
    labelMax: PLACE_LABEL_MAX,
    values: rows.map((r) => r[key]),
    color,
    customdata: rows.map((r) => [r.Events, r.Purchases, r.Revenue, r.Region || ""]),
    hovertemplate: "%{y} %{customdata[3]}<br>clicks %{customdata[0]:,}<br>purchases %{customdata[1]:,}" +
      "<br>revenue %{customdata[2]:,.2f}<extra></extra>",
    text: rows.map((r) => (valueFormat === "money" ? fmtMoney(r[key]) : fmtInt(r[key]))),
  });
}

/** What the "find" box asks the places for: "" (the top ones) or "&find=…". */
function placesFind() {
  const find = byId("places-find").value.trim();
  return find ? `&find=${encodeURIComponent(find)}` : "";
}

function renderPlaces(data) {
  const level = byId("places-level").value; // cities or countries
  for (const node of document.querySelectorAll(".places-noun")) {
    node.textContent = level;
  }
  for (const node of document.querySelectorAll(".places-which")) {
    node.textContent = data.find ? `The ${level} matching “${data.find}”, ranked,` : "Top";
  }
  renderPlacesChart("chart-places-events", data[`${level}_by_events`] || [], "Events", COLOR_BAR, "int");
  renderPlacesChart("chart-places-revenue", data[`${level}_by_revenue`] || [], "Revenue", "#2e9e6b", "money");
}

/** The first SHARES_SHOWN names, and the rest summed as "other". */
function topShares(rows) {
  const shown = rows.slice(0, SHARES_SHOWN);
  const rest = rows.slice(SHARES_SHOWN);
  if (rest.length) {
    shown.push({
      Name: "other",
      Users: rest.reduce((n, r) => n + r.Users, 0),
      Share: rest.reduce((n, r) => n + r.Share, 0),
    });
  }
  return shown;
}

function renderSharesChart(id, rows) {
  const trace = {
    type: "pie",
    hole: 0.5,
    labels: rows.map((r) => r.Name),
    values: rows.map((r) => r.Users),
    textinfo: "percent",
    textposition: "inside",
    insidetextorientation: "horizontal",
    hovertemplate: "%{label}<br>%{value:,} users (%{percent})<extra></extra>",
    marker: {colors: rows.map((r, i) => PALETTE[i % PALETTE.length])},
    sort: false,
  };
  drawChart(id, rows.length ? [trace] : [], baseLayout({
    margin: {l: 8, r: 8, t: 8, b: 8},
    showlegend: rows.length > 0,
    legend: {orientation: "v", x: 1, y: 0.5, yanchor: "middle", font: {size: 10}},
    annotations: emptyAnnotation(rows.length === 0),
  }));
}

function renderAudience(data) {
  renderSharesChart("chart-browsers", topShares(data.browsers || []));
  renderSharesChart("chart-devices", topShares(data.devices || []));
  const bots = data.bots || {};
  const line = byId("bots-share");
  line.textContent = `bots: ${fmtPct(bots.user_share)} of users (${fmtInt(bots.users)} of ${fmtInt(bots.all_users)}), ` +
    `${fmtPct(bots.event_share)} of events (${fmtInt(bots.events)} of ${fmtInt(bots.all_events)})`;
  line.dataset.botUsers = String(bots.users ?? "");
  line.dataset.botEvents = String(bots.events ?? "");
}

/** The notes that say whether the bots are counted, after the switch. */
function noteBots() {
  const included = byId("include-bots").checked;
  for (const node of document.querySelectorAll(".bots-note")) {
    node.textContent = included ? "bots included" : "bots left out";
  }
}

/* ---------- 4. repeat buyers ---------- */

function latestIso(values) {
  let best = null;
  for (const iso of values) {
    const date = toDate(iso);
    if (date && (!best || date > best.date)) {
      best = {iso, date};
    }
  }
  return best ? best.iso : null;
}

function renderRepeat(data) {
  const rows = (data.rows || []).map((r) => el("tr", {dataset: {user: r.user_id, product: r.product_id}}, [
    td(r.user_id, "id"),
    el("td", {className: "product", title: r.product_id}, [r.product_name || r.product_id]),
    td(fmtInt(r.orders), "num orders"),
    td(fmtInt(r.units), "num units"),
    timeCell(r.first_bought),
    timeCell(r.last_bought),
  ]));
  replaceRows(byId("repeat-buyers"), rows, "no repeat buyers yet", 6);
  setText("repeat-total", fmtInt(data.total));
  const computedAt = latestIso((data.rows || []).map((r) => r.computed_at));
  const node = byId("repeat-computed-at");
  node.textContent = fmtTime(computedAt);
  node.title = computedAt || "";
}

/* ---------- 6. pipeline health ---------- */

function renderServices(services) {
  const restarted = (s) => (s.restarts ? ` \u21bb${s.restarts}` : "");
  const badges = services.map((s) => el("span", {
    className: `badge ${s.state === "up" ? "up" : "down"}`,
    dataset: {service: s.name, restarts: s.restarts ?? ""},
    title: (s.detail || s.state) + (s.restarts == null ? "" : `; restarted ${s.restarts} time(s) since invoke up`),
  }, [s.name + restarted(s)]));
  byId("services").replaceChildren(...badges);
}

function renderApiTraffic(api) {
  const dl = byId("api-traffic");
  if (!api) {
    replaceStats(dl, [["traffic", "no figures (the API did not answer)"]]);
    return;
  }
  const pairs = [
    ["requests", fmtRate(api.requests_per_s)],
    ["5xx errors", fmtRate(api.errors_per_s)],
    ["4xx rejected", fmtRate(api.rejected_per_s)],
    ["error rate", fmtPct(api.error_rate)],
  ];
  const topics = Object.keys(api.published_per_s || {}).sort();
  for (const topic of topics) {
    pairs.push([`published to ${topic}`, fmtRate(api.published_per_s[topic])]);
  }
  replaceStats(dl, pairs);
}

/** Adds one point per health answer (null values when the API gave no figures) and keeps 15 minutes. */
function recordApiPoint(asOf, api) {
  const t = toDate(asOf) || new Date();
  const last = apiHistory[apiHistory.length - 1];
  if (last && t <= last.t) {
    return;
  }
  apiHistory.push({
    t,
    requests: api ? api.requests_per_s : null,
    errors: api ? api.errors_per_s : null,
  });
  const cutoff = t.getTime() - API_HISTORY_MS;
  while (apiHistory.length && apiHistory[0].t.getTime() < cutoff) {
    apiHistory.shift();
  }
}

function renderApiChart() {
  const x = apiHistory.map((p) => p.t);
  const traces = [
    {
      type: "scatter", mode: "lines", name: "requests/s", x, y: apiHistory.map((p) => p.requests),
      line: {color: COLOR_BAR, width: 2}, hovertemplate: "%{y:,.1f} req/s",
    },
    {
      type: "scatter", mode: "lines", name: "5xx/s", x, y: apiHistory.map((p) => p.errors), yaxis: "y2",
      line: {color: COLOR_ERROR, width: 1.5}, hovertemplate: "%{y:,.2f} 5xx/s",
    },
  ];
  drawChart("chart-api", traces, baseLayout({
    showlegend: true,
    legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: {size: 10}},
    margin: {l: 40, r: 36, t: 20, b: 26},
    xaxis: timeAxis(),
    yaxis: {rangemode: "tozero", gridcolor: "#eef0f3", automargin: true},
    yaxis2: {overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, automargin: true, tickfont: {color: COLOR_ERROR}},
    hovermode: "x unified",
    annotations: emptyAnnotation(apiHistory.length === 0),
  }));
}

function renderLag(lag) {
  const rows = lag.map((l) => el("tr", {dataset: {topic: l.topic, group: l.group}}, [
    td(l.topic, "id"),
    td(l.group, "id"),
    td(fmtInt(l.lag), `num lag${l.lag > 0 ? " behind" : ""}`),
    td(fmtInt(l.end), "num end"),
  ]));
  replaceRows(byId("lag"), rows, "no consumer groups", 4);
}

/** One line under the lag: where a stage read records again because the broker lost some. */
function renderRewinds(rewinds, asOf) {
  const line = byId("rewinds");
  if (!rewinds) {
    line.textContent = "offset rewinds: —";
    line.classList.remove("warn");
    return;
  }
  const stages = Object.entries(rewinds.by_stage || {}).map(([stage, n]) => `${stage} ${fmtInt(n)}`).join(", ");
  const last = (rewinds.latest || [])[0];
  line.textContent = last
    ? `offset rewinds: ${fmtInt(rewinds.count)} (${stages}); last: ${last.stage} ${last.topic}-${last.partition} ` +
      `read again from ${fmtInt(last.resumed_from)} (committed ${fmtInt(last.committed)}, end ${fmtInt(last.end)}: ` +
      `${last.reason}), ${secondsAgo(last.at, asOf)}`
    : "offset rewinds: none";
  line.classList.toggle("warn", rewinds.count > 0);
  line.title = last ? fmtTime(last.at) : "";
}

function runSortKey(run) {
  const date = toDate(run.start) || toDate(run.end);
  return date ? date.getTime() : Number.POSITIVE_INFINITY; // not started yet: newest
}

function runDuration(run, asOf) {
  const start = toDate(run.start);
  if (!start) {
    return "—";
  }
  const end = toDate(run.end);
  if (end) {
    return fmtDuration(end - start);
  }
  const now = toDate(asOf) || new Date();
  return `${fmtDuration(now - start)} so far`;
}

function renderDagRuns(runs, asOf) {
  const sorted = runs.slice().sort((a, b) => runSortKey(b) - runSortKey(a));
  const rows = sorted.map((r) => el("tr", {dataset: {run: r.run_id, state: r.state}}, [
    td(r.run_id, "id run-id"),
    el("td", {}, [el("span", {className: `state state-${slug(r.state)}`}, [r.state])]),
    timeCell(r.start),
    td(runDuration(r, asOf), "num"),
    td(fmtInt(r.drained), "num drained"),
    td(fmtInt(r.counted), "num counted"),
  ]));
  replaceRows(byId("dag-runs"), rows, "no DAG runs yet", 6);
}

function secondsAgo(iso, asOf) {
  const then = toDate(iso);
  if (!then) {
    return "—";
  }
  const now = toDate(asOf) || new Date();
  return `${fmtInt(Math.max(0, Math.round((now - then) / 1000)))} s ago`;
}

function renderStreaming(streaming, asOf) {
  const dl = byId("streaming");
  if (!streaming) {
    replaceStats(dl, [["last batch", "no figures (the streaming job did not answer)"]]);
    return;
  }
  replaceStats(dl, [
    ["last batch", streaming.batch_id === null || streaming.batch_id === undefined ? "—" : `#${fmtInt(streaming.batch_id)}`],
    ["when", secondsAgo(streaming.batch_at, asOf)],
    ["rows in / out", `${fmtInt(streaming.input_rows)} / ${fmtInt(streaming.output_rows)}`],
    ["batch time", isNumber(streaming.batch_ms) ? `${fmtInt(streaming.batch_ms)} ms` : "—"],
    ["freshness", isNumber(streaming.freshness_s) ? `${fmtNum(streaming.freshness_s, 1)} s` : "—"],
  ]);
  const when = dl.querySelectorAll("dd")[1];
  if (when && streaming.batch_at) {
    when.title = fmtTime(streaming.batch_at);
  }
}

function renderHealth(data) {
  renderServices(data.services || []);
  renderApiTraffic(data.api);
  renderLag(data.lag || []);
  renderRewinds(data.rewinds, data.as_of);
  renderDagRuns(data.dag_runs || [], data.as_of);
  renderStreaming(data.streaming, data.as_of);
  recordApiPoint(data.as_of, data.api);
  renderApiChart();
}

/* ---------- polling ---------- */

const PANELS = {
  activity: {url: () => `/api/activity?minutes=${ACTIVITY_MINUTES}`, render: renderActivity, controller: null},
  funnel: {
    url: () => `/api/funnel?window=${encodeURIComponent(byId("funnel-window").value)}${botsParam()}`,
    render: renderFunnel,
    controller: null,
  },
  sales: {url: () => `/api/sales?n=${TOP_N}${botsParam()}`, render: renderSales, controller: null, onError: markKpisStale},
  places: {url: () => `/api/places?n=${TOP_N}${botsParam()}${placesFind()}`, render: renderPlaces, controller: null},
  audience: {url: () => `/api/audience?${botsParam().slice(1)}`, render: renderAudience, controller: null},
  sessions: {url: () => `/api/sessions?days=${SESSION_DAYS}&n=${TOP_N}`, render: renderSessions, controller: null},
  repeat: {url: () => `/api/repeat-buyers?n=${TOP_N}`, render: renderRepeat, controller: null},
  health: {url: () => "/api/health", render: renderHealth, controller: null},
};

function markKpisStale() {
  byId("kpis").classList.add("stale");
}

/**
 * Fetches one panel's data and redraws it. A request still running is left alone on a
 * timer tick (no pile-up when the backend is slow) and replaced when `force` is set.
 */
async function refreshPanel(name, force) {
  const panel = PANELS[name];
  if (panel.controller) {
    if (!force) {
      return;
    }
    panel.controller.abort();
  }
  const controller = new AbortController();
  panel.controller = controller;
  const cardNode = card(name);
  const url = panel.url();
  cardNode.setAttribute("aria-busy", "true");
  let data;
  try {
    data = await fetchJson(url, controller);
  } catch (err) {
    if (panel.controller === controller) {
      showPanelState(cardNode, [], describeError(err, url));
      if (panel.onError) {
        panel.onError(err);
      }
    }
    return;
  } finally {
    if (panel.controller === controller) {
      panel.controller = null;
      cardNode.removeAttribute("aria-busy");
    }
  }
  try {
    panel.render(data);
    showPanelState(cardNode, sourcesOf(data), null);
    noteAsOf(data.as_of);
  } catch (err) {
    console.error(`${name}: cannot show the answer`, err, data);
    showPanelState(cardNode, [], `cannot show the answer of ${url}: ${err.message}`);
  }
}

function refreshAll() {
  if (document.hidden) {
    return;
  }
  for (const name of Object.keys(PANELS)) {
    refreshPanel(name, false);
  }
}

/* ---------- 5. user lookup (on submit only) ---------- */

function resetUserResult() {
  byId("user-agent").replaceChildren();
  byId("user-customer").replaceChildren();
  byId("user-counts").tBodies[0].replaceChildren();
  byId("user-purchases").tBodies[0].replaceChildren();
  byId("user-sessions").tBodies[0].replaceChildren();
  setText("user-counts-note", "");
  setText("user-purchases-note", "");
  setText("user-sessions-note", "");
}

function showUserMessage(text, className) {
  const result = byId("user-result");
  resetUserResult();
  const title = byId("user-title");
  title.textContent = text;
  title.className = `user-title ${className || ""}`.trim();
  result.classList.add("message-only");
  result.hidden = false;
}

function renderUserCounts(counts) {
  const table = byId("user-counts");
  const note = byId("user-counts-note");
  if (counts === null || counts === undefined) {
    note.textContent = "MongoDB is down";
    note.className = "note warn";
    note.hidden = false;
    table.hidden = true;
    table.tBodies[0].replaceChildren();
    return;
  }
  const names = Object.keys(counts).sort(byEventOrder);
  const rows = names.map((name) => el("tr", {dataset: {event: name}}, [td(name, "event"), td(fmtInt(counts[name]), "num count")]));
  table.hidden = false;
  replaceRows(table, rows, "no events", 2);
  note.textContent = "";
  note.className = "note";
  note.hidden = true;
}

/** A lookup table whose store is down: emptied and hidden, the note saying why. */
function showDown(table, note, text) {
  note.textContent = text;
  note.className = "note warn";
  table.hidden = true;
  table.tBodies[0].replaceChildren();
}

function renderUserPurchases(purchases) {
  const table = byId("user-purchases");
  const note = byId("user-purchases-note");
  if (purchases === null || purchases === undefined) {
    showDown(table, note, "the lake is down");
    return;
  }
  const n = purchases.length;
  note.textContent = n === 1 ? "1 purchase" : `${fmtInt(n)} purchases`;
  note.className = "note";
  const rows = purchases.map((p) => el("tr", {dataset: {order: p.OrderId}}, [
    td(p.OrderId, "id"),
    timeCell(p.TimeStamp),
    td(fmtMoney(p.TotalPrice), "num total"),
    td(p.PaymentType, "payment"),
    td(fmtInt(p.Items), "num items"),
    el("td", {className: "products", title: (p.Products || []).map((x) => x.ProductId).join(", ")},
      [(p.Products || []).map(productName).join(", ")]),
  ]));
  table.hidden = n === 0;
  replaceRows(table, rows, null, 6);
}

/** The user's latest sessions (MongoDB's, newest first); null when MongoDB is down. */
function renderUserSessions(sessions) {
  const table = byId("user-sessions");
  const note = byId("user-sessions-note");
  if (sessions === null || sessions === undefined) {
    showDown(table, note, "MongoDB is down");
    return;
  }
  note.textContent = sessions.length ? "" : "no sessions yet (the DAG's sessions task writes them)";
  note.className = "note";
  const rows = sessions.map((x) => el("tr", {dataset: {session: x.SessionId}}, [
    timeCell(x.Start),
    td(fmtDuration(x.DurationMs), "num duration"),
    td(fmtInt(x.Pages), "num pages"),
    td(x.Purchased ? "yes" : "no", "purchased"),
    td(fmtMoney(x.Revenue), "num revenue"),
    td(x.Device, "device"),
    td(x.City, "city"),
  ]));
  table.hidden = sessions.length === 0;
  replaceRows(table, rows, null, 7);
}

/** Signup date and home of the customer (PostgreSQL's customers); none when not there yet. */
function renderUserCustomer(customer) {
  const dl = byId("user-customer");
  if (!customer) {
    replaceStats(dl, [["customer", "no customer record"]]);
    return;
  }
  replaceStats(dl, [
    ["signed up", customer.SignupDate],
    ["home", `${customer.HomeCity}, ${customer.HomeCountry}`],
  ]);
  dl.querySelectorAll("dd")[1].dataset.homeCity = customer.HomeCity;
}

/** Browser, device and place of the user's newest event (the read model's; none before one is read). */
function renderUserAgent(agent) {
  const dl = byId("user-agent");
  if (!agent) {
    replaceStats(dl, [["browser", "no event read yet"]]);
    return;
  }
  const place = [agent.City, agent.Region, agent.Country].filter((x) => x && x !== "unknown").join(", ");
  replaceStats(dl, [
    ["browser", `${agent.Browser} (${agent.Os})`],
    ["device", agent.IsBot ? `${agent.Device} (a bot)` : agent.Device],
    ["place", place || "unknown"],
    ["as of", fmtTime(agent.TimeStamp)],
  ]);
  const dd = dl.querySelectorAll("dd");
  dd[0].dataset.browser = agent.Browser;
  dd[1].dataset.device = agent.Device;
  dd[2].dataset.city = agent.City;
}

function renderUser(data) {
  const result = byId("user-result");
  result.classList.remove("message-only");
  const title = byId("user-title");
  title.className = "user-title";
  title.textContent = `UserId ${data.UserId}`;
  renderUserAgent(data.agent);
  renderUserCustomer(data.customer);
  renderUserCounts(data.event_counts);
  renderUserPurchases(data.purchases);
  renderUserSessions(data.sessions);
  result.hidden = false;
}

async function lookupUser(event) {
  event.preventDefault();
  const userId = byId("user-id").value.trim();
  if (!userId) {
    return;
  }
  if (userController) {
    userController.abort();
  }
  const controller = new AbortController();
  userController = controller;
  const cardNode = card("user");
  const url = `/api/users/${encodeURIComponent(userId)}`;
  showPanelState(cardNode, [], null);
  showUserMessage(`looking up ${userId}…`, "pending");
  let data;
  try {
    data = await fetchJson(url, controller);
  } catch (err) {
    if (userController !== controller) {
      return;
    }
    userController = null;
    if (err instanceof ApiError && err.status === 404) {
      showPanelState(cardNode, [], null);
      showUserMessage(err.message, "not-found");
    } else {
      showPanelState(cardNode, [], describeError(err, url));
      showUserMessage(`lookup of ${userId} failed`, "failed");
    }
    return;
  }
  if (userController !== controller) {
    return;
  }
  userController = null;
  try {
    renderUser(data);
    showPanelState(cardNode, sourcesOf(data), null);
  } catch (err) {
    console.error("user: cannot show the answer", err, data);
    showPanelState(cardNode, [], `cannot show the answer of ${url}: ${err.message}`);
  }
}

/* ---------- start ---------- */

function warnNoPlotly() {
  const note = el("div", {className: "global-error", role: "alert"}, [
    "Charts are unavailable: /static/vendor/plotly.min.js did not load. Tables and figures still update.",
  ]);
  document.querySelector(".topbar").after(note);
}

function start() {
  if (plotlyReady()) {
    drawPlaceholders();
  } else {
    warnNoPlotly();
  }
  byId("funnel-window").addEventListener("change", () => refreshPanel("funnel", true));
  byId("places-level").addEventListener("change", () => refreshPanel("places", true));
  byId("places-find").addEventListener("input", () => refreshPanel("places", true));
  byId("include-bots").addEventListener("change", () => {
    noteBots();
    for (const name of ["funnel", "sales", "places", "audience"]) {
      refreshPanel(name, true);
    }
  });
  noteBots();
  byId("user-form").addEventListener("submit", lookupUser);
  document.addEventListener("visibilitychange", refreshAll);
  refreshAll();
  loadConfig().finally(() => setInterval(refreshAll, refreshMs));
}

/** The server's refresh interval: the page asks as often as the dashboard reads the stores. */
async function loadConfig() {
  try {
    const config = await fetchJson("/api/config", new AbortController());
    if (config.refresh_s > 0) {
      refreshMs = config.refresh_s * 1000;
      byId("refresh-s").textContent = String(config.refresh_s);
    }
  } catch (err) {
    console.warn(`keeping a ${refreshMs / 1000} s refresh: ${describeError(err, "/api/config")}`);
  }
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", start);
} else {
  start();
}
