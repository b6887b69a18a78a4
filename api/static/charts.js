// Three small charts on the overview, drawn as inline SVG (no library): jobs ended per minute
// by outcome, p50/p95 run time, and queue depth, over the last hour (GET /insights/overview).

import { get } from "./api.js";
import { duration, h, PolledView } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 300;
const H = 90;
const REFRESH_MS = 15000;
const OUTCOMES = ["succeeded", "failed", "timed_out", "cancelled"];
const OUTCOME_LABEL = { succeeded: "succeeded", failed: "failed", timed_out: "timed out", cancelled: "cancelled" };

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c);
  return el;
}

// A round top for an axis: 1, 2, 5, 10, 20, 50…
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function svgFrame(label, max, unit) {
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": label });
  for (const f of [0, 0.5, 1]) {
    const y = H - f * (H - 4);
    svg.append(s("line", { x1: 0, x2: W, y1: y, y2: y, class: "chart-grid" }));
  }
  svg.append(s("text", { x: 2, y: 12, class: "chart-axis" }, document.createTextNode(unit(max))));
  return svg;
}

const yOf = (v, max) => H - (v / max) * (H - 4);

function barsChart(buckets) {
  const totals = buckets.map((b) => OUTCOMES.reduce((n, k) => n + b[k], 0));
  const max = niceMax(Math.max(...totals, 0));
  const ended = totals.reduce((a, b) => a + b, 0);
  const svg = svgFrame(`Jobs ended per minute over the last hour: ${ended} in all`, max, (v) => `${v}/min`);
  const bw = W / buckets.length;
  buckets.forEach((b, i) => {
    let base = H;
    for (const k of OUTCOMES) {
      if (!b[k]) continue;
      const hgt = (b[k] / max) * (H - 4);
      base -= hgt;
      svg.append(s("rect", { x: i * bw + 0.5, y: base, width: Math.max(1, bw - 1), height: hgt,
        class: `chart-bar st-${k}` }, s("title", {}, document.createTextNode(`${b[k]} ${OUTCOME_LABEL[k]}`))));
    }
  });
  return svg;
}

function linePath(buckets, key, max) {
  const step = W / buckets.length;
  let d = "";
  let pen = false;
  buckets.forEach((b, i) => {
    const v = b[key];
    if (v === null || v === undefined) {
      pen = false;
      return;
    }
    const x = (i + 0.5) * step;
    d += `${pen ? "L" : "M"}${x.toFixed(1)} ${yOf(v, max).toFixed(1)}`;
    pen = true;
  });
  return d;
}

function runTimeChart(buckets, runTime) {
  const max = niceMax(Math.max(0, ...buckets.map((b) => b.p95_s ?? 0)));
  const svg = svgFrame(
    `Run time over the last hour: p50 ${fmt(runTime.p50_s)}, p95 ${fmt(runTime.p95_s)}`,
    max, (v) => duration(v));
  for (const [key, cls] of [["p95_s", "chart-line p95"], ["p50_s", "chart-line p50"]]) {
    svg.append(s("path", { d: linePath(buckets, key, max) || "M0 0", class: cls }));
    // Single points (a minute between gaps) still show.
    const step = W / buckets.length;
    buckets.forEach((b, i) => {
      const prev = buckets[i - 1]?.[key];
      const next = buckets[i + 1]?.[key];
      if (b[key] !== null && b[key] !== undefined && (prev === null || prev === undefined) &&
        (next === null || next === undefined)) {
        svg.append(s("circle", { cx: (i + 0.5) * step, cy: yOf(b[key], max), r: 1.8, class: `chart-dot ${cls}` }));
      }
    });
  }
  return svg;
}

function depthChart(buckets) {
  const max = niceMax(Math.max(0, ...buckets.map((b) => b.queue_depth)));
  const now = buckets.length ? buckets[buckets.length - 1].queue_depth : 0;
  const svg = svgFrame(`Queue depth over the last hour: ${now} waiting now`, max, (v) => String(v));
  const step = W / buckets.length;
  let d = `M0 ${H}`;
  buckets.forEach((b, i) => {
    const y = yOf(b.queue_depth, max).toFixed(1);
    d += `L${(i * step).toFixed(1)} ${y}L${((i + 1) * step).toFixed(1)} ${y}`;
  });
  d += `L${W} ${H}Z`;
  svg.append(s("path", { d, class: "chart-area" }));
  return svg;
}

const fmt = (v) => (v === null || v === undefined ? "—" : duration(v));

function card(key, title, figure, svg, legend) {
  return h("figure", { class: "chart", dataset: { chart: key } },
    h("figcaption", {}, h("span", { class: "chart-title" }, title),
      h("span", { class: "chart-figure" }, figure)),
    svg,
    h("div", { class: "chart-foot", "aria-hidden": "true" },
      h("span", { class: "muted small" }, "−60 min"),
      h("span", { class: "muted small" }, "now")),
    legend ? h("ul", { class: "chart-legend" }, legend) : null);
}

function key(cls, text) {
  return h("li", {}, h("span", { class: `chart-key ${cls}`, "aria-hidden": "true" }), text);
}

export class OverviewCharts extends PolledView {
  constructor({ el }) {
    super(REFRESH_MS);
    this.el = el;
  }

  // (a failed read keeps the last charts; the next refresh tries again)
  async refresh() {
    this.render(await get("/insights/overview?minutes=60"));
  }

  render(view) {
    const b = view.buckets;
    const t = view.totals;
    const lastDepth = b.length ? b[b.length - 1].queue_depth : 0;
    this.el.replaceChildren(
      card("throughput", "Jobs per minute", `${t.ended} ended`, barsChart(b),
        OUTCOMES.map((k) => key(`st-${k}`, `${OUTCOME_LABEL[k]} ${t[k]}`))),
      card("runtime", "Run time", `p50 ${fmt(view.run_time.p50_s)} · p95 ${fmt(view.run_time.p95_s)}`,
        runTimeChart(b, view.run_time), [key("p50", "p50"), key("p95", "p95")]),
      card("depth", "Queue depth", `${lastDepth} waiting`, depthChart(b), null),
    );
    this.el.dataset.loaded = "1";
  }
}
