// The /iot/ page (iot/templates/iot/devices.html): one uPlot chart per metric of the
// selected device, loaded from /iot/devices/{key}/series/ and then moved by the readings
// the page's socket (/ws/iot/, iot/consumers.py) forwards; range buttons and drag-to-zoom
// reload the history at the resolution the server picks (raw, 1-minute or hourly rollups
// with a min–max band); the open alerts are refetched when the socket says they changed;
// the command form posts to /iot/devices/{key}/commands/ and follows the command's status.
import { uPlot } from "./vendor/iot.js";

const root = document.getElementById("iot");
const panel = document.getElementById("device");
const statusEl = document.getElementById("iot-status");

const RESOLUTION = {
  raw: "Raw readings",
  "1m": "1-minute averages · min–max band",
  "1h": "Hourly averages · min–max band",
};
const BUCKET_MS = { raw: 0, "1m": 60_000, "1h": 3_600_000 };
const STATUS_LABEL = { online: "Online", offline: "Offline", never: "Never connected", revoked: "Revoked" };
const COMMAND_FINAL = new Set(["acked", "failed", "timed_out"]);
const COMMAND_LABEL = { pending: "pending", sent: "sent", acked: "acknowledged", failed: "failed", timed_out: "timed out" };
// The ingest's live messages do not name the alerts a batch changed: while readings arrive,
// the open alerts are refetched at most this often (and every ALERTS_POLL_MS regardless,
// for the no-data sweep and alerts resolved elsewhere).
const ALERTS_AFTER_READINGS_MS = 3000;
const ALERTS_POLL_MS = 30_000;
const COMMAND_POLL_MS = 1000;
const COMMAND_POLL_MAX_MS = 10 * 60_000;

// --- small things ------------------------------------------------------------------------

function formatValue(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return value.toExponential(2);
  return String(Number(value.toFixed(abs >= 100 ? 1 : 2)));
}

function relative(date) {
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  if (seconds < 5) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.floor(hours / 24)} d ago`;
}

function refreshTimes() {
  for (const el of document.querySelectorAll("time[data-relative][datetime]")) {
    el.textContent = relative(new Date(el.getAttribute("datetime")));
    el.title = new Date(el.getAttribute("datetime")).toLocaleString();
  }
}

function cookie(name) {
  const match = document.cookie.match(new RegExp(`(?:^|; )${name}=([^;]*)`));
  return match ? decodeURIComponent(match[1]) : "";
}

function rangeLabel(fromMs, toMs) {
  const options = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return `${new Date(fromMs).toLocaleString([], options)} – ${new Date(toMs).toLocaleString([], options)}`;
}

// --- the device list ---------------------------------------------------------------------

function setStatus(key, status) {
  for (const dot of document.querySelectorAll(`.device-row[data-key="${CSS.escape(key)}"] .dot`)) {
    dot.dataset.status = status;
    dot.title = STATUS_LABEL[status] || status;
  }
  if (panel && panel.dataset.key === key) {
    document.getElementById("device-status-dot").dataset.status = status;
    document.getElementById("device-status").textContent = STATUS_LABEL[status] || status;
  }
}

function seen(key, tsMs) {
  const iso = new Date(tsMs).toISOString();
  const row = document.querySelector(`.device-row[data-key="${CSS.escape(key)}"] .last-seen`);
  if (row) row.innerHTML = `<time datetime="${iso}" data-relative>just now</time>`;
  if (panel && panel.dataset.key === key) {
    const el = document.getElementById("device-last-seen");
    el.setAttribute("datetime", iso);
    el.textContent = "just now";
  }
}

// A device whose reading was stored is online unless revoked (iot/services/storage.py
// marks it so with the reading; no status frame follows then).
function markOnline(key) {
  const dot = document.querySelector(`.device-row[data-key="${CSS.escape(key)}"] .dot`);
  const current = dot ? dot.dataset.status : panel && panel.dataset.key === key ? document.getElementById("device-status-dot").dataset.status : null;
  if (current && current !== "online" && current !== "revoked") setStatus(key, "online");
}

function showLatest(key, metrics) {
  markOnline(key);
  const row = document.querySelector(`.device-row[data-key="${CSS.escape(key)}"]`);
  let newest = 0;
  for (const [metric, points] of Object.entries(metrics)) {
    const last = points[points.length - 1];
    if (!last) continue;
    newest = Math.max(newest, last[0]);
    const el = row && row.querySelector(`.latest-value[data-metric="${CSS.escape(metric)}"]`);
    if (el) {
      el.textContent = formatValue(last[1]);
      el.classList.remove("flash");
      void el.offsetWidth; // restart the animation
      el.classList.add("flash");
    }
  }
  if (newest) seen(key, newest);
}

const kindSelect = document.getElementById("kind");
if (kindSelect) kindSelect.addEventListener("change", () => kindSelect.form.submit());

// --- the charts --------------------------------------------------------------------------

const view = {
  // seconds of the range while following live, or null while zoomed into a fixed range
  range: 3600,
  from: 0,
  to: 0,
  bucket: "raw",
  charts: new Map(),
};

function chartOptions(metric, width) {
  const accent = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#2f6fed";
  return {
    width,
    height: 200,
    legend: { show: false },
    cursor: { drag: { x: true, y: false, setScale: false }, points: { size: 6 } },
    scales: { x: { time: true } },
    axes: [
      { stroke: "#6a7385", grid: { stroke: "#eef0f4" }, ticks: { stroke: "#e3e6ec" } },
      { stroke: "#6a7385", grid: { stroke: "#eef0f4" }, ticks: { stroke: "#e3e6ec" }, size: 56, values: (u, vals) => vals.map(formatValue) },
    ],
    series: [
      {},
      { label: metric, stroke: accent, width: 2, points: { show: (u) => u.data[0].length < 60 } },
      { label: "min", stroke: "transparent", points: { show: false } },
      { label: "max", stroke: "transparent", points: { show: false } },
    ],
    bands: [{ series: [3, 2], fill: "rgba(47, 111, 237, 0.14)" }],
    hooks: {
      setSelect: [
        (u) => {
          if (u.select.width < 4) return;
          const min = u.posToVal(u.select.left, "x");
          const max = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          zoomTo(min * 1000, max * 1000);
        },
      ],
      setCursor: [
        (u) => {
          const chart = view.charts.get(metric);
          const i = u.cursor.idx;
          if (!chart) return;
          const value = i === null || i === undefined ? lastValue(chart) : chart.data[1][i];
          chart.valueEl.textContent = formatValue(value);
        },
      ],
    },
  };
}

function lastValue(chart) {
  const values = chart.data[1];
  return values.length ? values[values.length - 1] : null;
}

function chartFor(metric) {
  let chart = view.charts.get(metric);
  if (chart) return chart;
  const container = document.getElementById("charts");
  let figure = container.querySelector(`.chart[data-metric="${CSS.escape(metric)}"]`);
  if (!figure) {
    figure = document.createElement("figure");
    figure.className = "chart";
    figure.dataset.metric = metric;
    figure.dataset.points = "0";
    figure.innerHTML = '<figcaption><span class="chart-metric"></span> <span class="chart-value"></span></figcaption><div class="chart-canvas"></div>';
    figure.querySelector(".chart-metric").textContent = metric;
    container.appendChild(figure);
    document.getElementById("charts-empty").classList.add("hidden");
  }
  const canvas = figure.querySelector(".chart-canvas");
  const data = [[], [], [], []];
  chart = {
    metric,
    figure,
    valueEl: figure.querySelector(".chart-value"),
    data,
    counts: [],
    loading: false,
    // live points that arrived while the history was loading
    pending: [],
    plot: new uPlot(chartOptions(metric, Math.max(canvas.clientWidth, 200)), data, canvas),
  };
  view.charts.set(metric, chart);
  return chart;
}

function draw(chart) {
  const xs = chart.data[0];
  chart.plot.setData(chart.data, false);
  if (view.range !== null) {
    const now = Date.now() / 1000;
    chart.plot.setScale("x", { min: now - view.range, max: now });
  } else {
    chart.plot.setScale("x", { min: view.from / 1000, max: view.to / 1000 });
  }
  chart.figure.dataset.points = String(xs.length);
  chart.figure.classList.toggle("empty", xs.length === 0);
  chart.figure.dataset.lastX = xs.length ? String(Math.round(xs[xs.length - 1] * 1000)) : "";
  chart.figure.dataset.bucket = view.bucket;
  chart.valueEl.textContent = formatValue(lastValue(chart));
}

// Adds one live reading: a point of its own at raw resolution, or into the rollup bucket
// it falls in (the running average, min and max), as the server's rollups would.
function addPoint(chart, tsMs, value) {
  const [xs, avg, lows, highs] = chart.data;
  const size = BUCKET_MS[view.bucket];
  const x = (size ? Math.floor(tsMs / size) * size : tsMs) / 1000;
  const last = xs.length - 1;
  if (last >= 0 && x < xs[last]) return; // older than what is shown: the history has it
  if (last >= 0 && x === xs[last]) {
    if (!size) return; // the same reading again
    const n = chart.counts[last];
    avg[last] = (avg[last] * n + value) / (n + 1);
    lows[last] = Math.min(lows[last], value);
    highs[last] = Math.max(highs[last], value);
    chart.counts[last] = n + 1;
    return;
  }
  xs.push(x);
  avg.push(value);
  lows.push(value);
  highs.push(value);
  chart.counts.push(1);
}

function trim(chart) {
  if (view.range === null) return;
  const start = Date.now() / 1000 - view.range;
  const xs = chart.data[0];
  let drop = 0;
  while (drop < xs.length && xs[drop] < start) drop += 1;
  if (drop) {
    for (const column of chart.data) column.splice(0, drop);
    chart.counts.splice(0, drop);
  }
}

function onReadings(metrics) {
  for (const [metric, points] of Object.entries(metrics)) {
    const chart = chartFor(metric);
    if (chart.loading) {
      chart.pending.push(...points);
      continue;
    }
    if (view.range === null) continue; // a fixed zoomed range does not move
    for (const [ts, value] of points) addPoint(chart, ts, value);
    trim(chart);
    draw(chart);
  }
}

let loadSeq = 0;

async function loadChart(chart, fromMs, toMs, seq) {
  chart.loading = true;
  chart.pending = [];
  chart.figure.dataset.state = "loading";
  const url = new URL(panel.dataset.seriesUrl, location.href);
  url.search = new URLSearchParams({ metric: chart.metric, from: String(Math.floor(fromMs)), to: String(Math.ceil(toMs)), bucket: "auto" });
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    const body = await response.json();
    if (seq !== loadSeq) return null;
    if (!response.ok) throw new Error(Object.values(body.errors || {}).flat().join(" ") || response.statusText);
    const points = body.points;
    chart.data = [points.map((p) => p[0] / 1000), points.map((p) => p[1]), points.map((p) => p[2]), points.map((p) => p[3])];
    chart.counts = points.map((p) => p[4]);
    view.bucket = body.bucket;
    chart.loading = false;
    if (view.range !== null) for (const [ts, value] of chart.pending) addPoint(chart, ts, value);
    chart.pending = [];
    chart.figure.dataset.state = "ready";
    chart.figure.classList.toggle("truncated", body.truncated);
    draw(chart);
    return body;
  } catch (error) {
    chart.loading = false;
    chart.figure.dataset.state = "error";
    chart.valueEl.textContent = `could not load: ${error.message}`;
    return null;
  }
}

async function loadAll(fromMs, toMs) {
  const seq = ++loadSeq;
  view.from = fromMs;
  view.to = toMs;
  const results = await Promise.all([...view.charts.values()].map((chart) => loadChart(chart, fromMs, toMs, seq)));
  if (seq !== loadSeq) return;
  const answered = results.find(Boolean);
  if (answered) view.bucket = answered.bucket;
  const resolution = document.getElementById("resolution");
  resolution.textContent = RESOLUTION[view.bucket] || view.bucket;
  resolution.dataset.bucket = view.bucket;
  document.getElementById("range-hint").textContent = results.some((r) => r && r.truncated)
    ? "This range holds more raw readings than one chart shows: the newest are drawn. Choose a longer range for averages."
    : "Drag across a chart to zoom in; longer ranges show averages with a min–max band.";
}

function follow(seconds) {
  view.range = seconds;
  for (const button of document.querySelectorAll(".range")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.seconds) === seconds));
  }
  document.getElementById("zoom-reset").classList.add("hidden");
  const live = document.getElementById("live-chip");
  live.textContent = "Live";
  live.classList.remove("paused");
  const now = Date.now();
  return loadAll(now - seconds * 1000, now);
}

function zoomTo(fromMs, toMs) {
  view.range = null;
  for (const button of document.querySelectorAll(".range")) button.setAttribute("aria-pressed", "false");
  document.getElementById("zoom-reset").classList.remove("hidden");
  const live = document.getElementById("live-chip");
  live.textContent = rangeLabel(fromMs, toMs);
  live.classList.add("paused");
  return loadAll(fromMs, toMs);
}

let lastRange = 3600;

function setUpCharts() {
  if (!panel) return;
  for (const metric of (panel.dataset.metrics || "").split(",").filter(Boolean)) chartFor(metric);
  for (const button of document.querySelectorAll(".range")) {
    button.addEventListener("click", () => {
      lastRange = Number(button.dataset.seconds);
      follow(lastRange);
    });
  }
  document.getElementById("zoom-reset").addEventListener("click", () => follow(lastRange));
  const pressed = document.querySelector('.range[aria-pressed="true"]');
  lastRange = pressed ? Number(pressed.dataset.seconds) : 3600;
  follow(lastRange);
  const charts = document.getElementById("charts");
  new ResizeObserver(() => {
    for (const chart of view.charts.values()) {
      const width = chart.figure.querySelector(".chart-canvas").clientWidth;
      if (width && width !== chart.plot.width) chart.plot.setSize({ width, height: 200 });
    }
  }).observe(charts);
  // A live range slides even when no reading arrives.
  setInterval(() => {
    if (view.range === null) return;
    for (const chart of view.charts.values()) if (!chart.loading) draw(chart);
  }, 5000);
}

// --- alerts ------------------------------------------------------------------------------

let alertsTimer = null;
let alertsFetchedAt = 0;
let alertsAfterReadings = null;

function refetchAlerts() {
  clearTimeout(alertsTimer);
  alertsTimer = setTimeout(async () => {
    alertsFetchedAt = Date.now();
    const response = await fetch(root.dataset.alertsUrl, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    renderAlerts((await response.json()).alerts);
  }, 250);
}

// Readings may have opened or resolved an alert: refetch soon, but at most once every
// ALERTS_AFTER_READINGS_MS however many devices publish.
function alertsMayHaveChanged() {
  if (alertsAfterReadings !== null) return;
  const wait = Math.max(0, alertsFetchedAt + ALERTS_AFTER_READINGS_MS - Date.now());
  alertsAfterReadings = setTimeout(() => {
    alertsAfterReadings = null;
    refetchAlerts();
  }, wait);
}

function renderAlerts(alerts) {
  const list = document.getElementById("alert-list");
  list.replaceChildren(
    ...alerts.map((alert) => {
      const li = document.createElement("li");
      li.className = `alert-item severity-${alert.severity}`;
      li.dataset.id = alert.id;
      li.dataset.rule = alert.rule;
      const reason = alert.reason === "no_data" ? "no data" : alert.reason;
      const value = alert.value === null ? "" : ` · ${formatValue(alert.value)}`;
      li.innerHTML =
        '<span class="device-line"><span class="alert-rule"></span><a class="device-key"></a></span>' +
        `<span class="device-line muted small"><span class="alert-reason"></span><span>since <time data-relative datetime="${alert.since}"></time></span></span>`;
      li.querySelector(".alert-rule").textContent = alert.rule;
      const link = li.querySelector(".device-key");
      link.textContent = alert.device;
      link.href = `?device=${encodeURIComponent(alert.device)}`;
      li.querySelector(".alert-reason").textContent = reason + value;
      return li;
    }),
  );
  const count = document.getElementById("alerts-count");
  count.textContent = String(alerts.length);
  count.classList.toggle("alarm", alerts.length > 0);
  document.getElementById("alerts-empty").classList.toggle("hidden", alerts.length > 0);
  refreshTimes();
}

// --- the socket --------------------------------------------------------------------------

let socket = null;
let attempts = 0;
let pinger = null;

function setConnection(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${root.dataset.socket}`);
  socket.addEventListener("open", () => {
    const watch = (root.dataset.watch || "").split(",").filter(Boolean);
    socket.send(JSON.stringify({ type: "watch", devices: [...new Set(watch)].slice(0, 50) }));
  });
  socket.addEventListener("message", (event) => {
    const frame = JSON.parse(event.data);
    switch (frame.type) {
      case "watching":
        if (attempts > 0 && panel && view.range !== null) follow(view.range); // catch up on the gap
        attempts = 0;
        setConnection("live", "Live");
        break;
      case "readings":
        alertsMayHaveChanged();
        showLatest(frame.device, frame.metrics);
        if (panel && frame.device === panel.dataset.key) onReadings(frame.metrics);
        break;
      case "status":
        setStatus(frame.device, frame.status);
        if (frame.status === "online") seen(frame.device, Date.now());
        break;
      case "alerts":
        refetchAlerts();
        break;
      case "resync":
        if (panel && view.range !== null) follow(view.range);
        refetchAlerts();
        break;
      case "error":
        console.warn("iot socket:", frame.field, frame.message);
        break;
      default:
        break;
    }
  });
  socket.addEventListener("close", () => {
    clearInterval(pinger);
    attempts += 1;
    const delay = Math.min(30_000, 500 * 2 ** Math.min(attempts, 6)) * (0.75 + Math.random() / 2);
    setConnection("reconnecting", "Reconnecting…");
    setTimeout(connect, delay);
  });
  clearInterval(pinger);
  pinger = setInterval(() => socket.readyState === WebSocket.OPEN && socket.send('{"type":"ping"}'), 30_000);
}

// --- commands ----------------------------------------------------------------------------

function showErrors(errors) {
  for (const field of ["name", "params"]) {
    const el = document.getElementById(`command-${field}-error`);
    const input = document.getElementById(`command-${field}`);
    const messages = errors[field] || [];
    el.textContent = messages.join(" ");
    el.classList.toggle("hidden", !messages.length);
    if (messages.length) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", el.id);
    } else {
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-describedby");
    }
  }
  const other = Object.entries(errors)
    .filter(([field]) => field !== "name" && field !== "params")
    .map(([field, messages]) => `${field}: ${messages.join(" ")}`);
  const general = document.getElementById("command-error");
  general.textContent = other.join(" ");
  general.classList.toggle("hidden", !other.length);
}

function commandEntry(command) {
  const li = document.createElement("li");
  li.className = "command";
  li.dataset.id = command.id;
  li.innerHTML =
    '<span class="command-name"></span> <code class="command-params"></code> <span class="chip command-status"></span> ' +
    '<span class="command-result muted small"></span> <time class="command-time muted small" data-relative></time>';
  li.querySelector(".command-name").textContent = command.name;
  const sent = li.querySelector(".command-time");
  sent.setAttribute("datetime", command.created_at || new Date().toISOString());
  sent.textContent = "just now";
  li.querySelector(".command-params").textContent = JSON.stringify(command.params);
  return li;
}

function showCommand(li, command) {
  const status = li.querySelector(".command-status");
  status.textContent = COMMAND_LABEL[command.status] || command.status.replace("_", " ");
  status.dataset.status = command.status;
  li.dataset.status = command.status;
  const result = li.querySelector(".command-result");
  if (command.error) result.textContent = command.error;
  else if (command.result !== null && command.result !== undefined) result.textContent = JSON.stringify(command.result);
}

async function followCommand(li, id) {
  const url = `${panel.dataset.commandUrl}${id}/`;
  const started = Date.now();
  while (Date.now() - started < COMMAND_POLL_MAX_MS) {
    await new Promise((resolve) => setTimeout(resolve, COMMAND_POLL_MS));
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) continue;
    const command = await response.json();
    showCommand(li, command);
    if (COMMAND_FINAL.has(command.status)) return;
  }
}

function setUpCommands() {
  const form = document.getElementById("command-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = document.getElementById("command-name").value.trim();
    const text = document.getElementById("command-params").value.trim() || "{}";
    let params;
    try {
      params = JSON.parse(text);
    } catch (error) {
      showErrors({ params: [`Not valid JSON: ${error.message}`] });
      return;
    }
    const errors = {};
    if (!name) errors.name = ["Name the command, e.g. reboot."];
    if (params === null || typeof params !== "object" || Array.isArray(params)) errors.params = ["Expected a JSON object, e.g. {\"delay\": 5}."];
    if (Object.keys(errors).length) {
      showErrors(errors);
      return;
    }
    const button = document.getElementById("command-send");
    button.disabled = true;
    try {
      const response = await fetch(panel.dataset.commandUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": cookie("csrftoken") },
        body: JSON.stringify({ name, params }),
      });
      const body = await response.json().catch(() => ({ errors: { command: [response.statusText] } }));
      if (!response.ok) {
        showErrors(body.errors || { command: [response.statusText] });
        return;
      }
      showErrors({});
      const li = commandEntry(body);
      showCommand(li, body);
      document.getElementById("command-log").prepend(li);
      if (!COMMAND_FINAL.has(body.status)) followCommand(li, body.id);
    } catch (error) {
      showErrors({ command: [`Not sent: ${error.message}`] });
    } finally {
      button.disabled = false;
    }
  });
}

refreshTimes();
setInterval(refreshTimes, 15_000);
setInterval(refetchAlerts, ALERTS_POLL_MS);
setUpCharts();
setUpCommands();
connect();
