// Draws the charts of the staff pages with Chart.js (the bundle of vendor/chart.js, pinned
// in package.json): each <canvas data-chart="{spec}"> that notifications/admin/charts.py
// put in the page, and any a page adds or updates later (drawChart, updateChart).
import { Chart } from "./vendor/chart.js";

const charts = new WeakMap();

function datasets(spec) {
  return spec.series.map((s) => ({
    label: s.name,
    data: s.values,
    borderColor: s.color,
    backgroundColor: spec.type === "bar" ? s.color : `${s.color}33`,
    borderWidth: spec.type === "bar" ? 0 : 2,
    pointRadius: spec.type === "line" ? 0 : undefined,
    pointHitRadius: 6,
    spanGaps: false,
    tension: 0.2,
    fill: false,
  }));
}

function options(spec) {
  const unit = spec.unit ? ` ${spec.unit}` : "";
  return {
    responsive: true,
    maintainAspectRatio: false,
    animation: { duration: 300 },
    interaction: { mode: "index", intersect: false },
    plugins: {
      legend: { position: "bottom", labels: { boxWidth: 12 } },
      tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${item.formattedValue}${unit}` } },
    },
    scales: {
      x: { stacked: spec.stacked, ticks: { maxTicksLimit: 12, autoSkip: true } },
      y: { stacked: spec.stacked, beginAtZero: true, ticks: { callback: (value) => `${value}${unit}` } },
    },
  };
}

export function drawChart(canvas, spec = JSON.parse(canvas.dataset.chart)) {
  const existing = charts.get(canvas);
  if (existing) {
    existing.data.labels = spec.labels;
    existing.data.datasets = datasets(spec);
    existing.update();
    return existing;
  }
  const chart = new Chart(canvas, { type: spec.type, data: { labels: spec.labels, datasets: datasets(spec) }, options: options(spec) });
  charts.set(canvas, chart);
  canvas.dataset.drawn = "1";
  return chart;
}

export function drawAll(root = document) {
  for (const canvas of root.querySelectorAll("canvas[data-chart]")) drawChart(canvas);
}

drawAll();
