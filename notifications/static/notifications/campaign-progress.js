// The campaign page's live progress (notifications/admin/campaigns.py): the campaign is
// read again every second while it can still change, and the bar, the counts by status
// (the campaign's and each variant's) and the chart over time (charts.js) follow.
import { drawChart } from "./charts.js";
const panel = document.getElementById("campaign-live");
const statusBadge = document.getElementById("campaign-status");
const summary = document.getElementById("campaign-summary");
const rows = document.querySelector("#campaign-counts tbody");
const COLUMNS = ["audience", "sent", "delivered", "failed", "suppressed", "held"];
const SETTLED = new Set(["completed", "cancelled", "draft"]);
// Once a button of the page's form is pressed, its answer (a redirect with the message
// saying what was done) brings the new page: a reload for the status that action itself
// changed would cancel that answer and lose the message.
let submitting = false;
document.addEventListener("submit", () => { submitting = true; });

function cell(tag, text) {
  const node = document.createElement(tag);
  node.textContent = text;
  return node;
}

function row(label, progress) {
  const tr = document.createElement("tr");
  tr.append(cell("th", label), ...COLUMNS.map((key) => cell("td", (progress[key] ?? 0).toLocaleString())));
  return tr;
}

function show(campaign) {
  const p = campaign.progress;
  const share = (n) => (p.audience ? (100 * n) / p.audience : 0);
  for (const key of ["sent", "failed", "suppressed"]) {
    document.getElementById(`bar-${key}`).style.width = `${share(p[key])}%`;
  }
  document.getElementById("campaign-bar").setAttribute("aria-valuenow", p.percent);
  statusBadge.textContent = campaign.status;
  statusBadge.dataset.status = campaign.status;
  summary.textContent = `${p.percent}% of ${p.audience.toLocaleString()} recipients · ${campaign.throttle_per_second}/s`
    + (p.held ? ` · ${p.held.toLocaleString()} held` : "");
  rows.replaceChildren(row("All", p), ...(campaign.variants.length > 1
    ? campaign.variants.map((v) => row(`Variant ${v.name}`, v.progress)) : []));
}

async function poll() {
  if (submitting) return;
  try {
    const response = await fetch(panel.dataset.url, { credentials: "same-origin" });
    if (response.ok) {
      const campaign = await response.json();
      if (submitting) return;
      if (campaign.status !== rendered) {
        // The buttons and fields were for the status the page was rendered with.
        location.reload();
        return;
      }
      show(campaign);
      const canvas = document.querySelector("#campaign-chart canvas[data-chart]");
      if (canvas && campaign.chart) {
        canvas.dataset.chart = JSON.stringify(campaign.chart);
        drawChart(canvas, campaign.chart);
      }
      if (SETTLED.has(campaign.status)) return;
    }
  } catch (error) {
    summary.textContent = `progress unavailable: ${error}`;
  }
  setTimeout(poll, 1000);
}

const initial = JSON.parse(document.getElementById("campaign-payload").textContent);
const rendered = initial.status;
show(initial);
if (!SETTLED.has(rendered)) setTimeout(poll, 1000);
