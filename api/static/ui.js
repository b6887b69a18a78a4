// Small view helpers shared by the queue, the detail panel and the forms.

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an element: h("div", {class: "x", dataset: {id}}, child, "text"). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Status icons: each status has its own shape, so status never rests on colour alone.
const ICONS = {
  queued: '<circle cx="8" cy="8" r="6" fill="none" stroke="currentColor" stroke-width="1.8" stroke-dasharray="2.6 2.1"/>',
  claimed: '<circle cx="8" cy="8" r="6" fill="none" stroke="currentColor" stroke-width="1.8"/><path d="M8 2a6 6 0 0 1 0 12z" fill="currentColor"/>',
  running: '<circle cx="8" cy="8" r="6" fill="none" stroke="currentColor" stroke-opacity=".3" stroke-width="2"/><path class="spin" d="M8 2a6 6 0 0 1 6 6" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round"/>',
  succeeded: '<circle cx="8" cy="8" r="7" fill="currentColor"/><path d="M4.8 8.2 7 10.4l4.2-4.6" fill="none" stroke="var(--on-status)" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/>',
  failed: '<path d="M8 1 15 14H1z" fill="currentColor" stroke="currentColor" stroke-width="1" stroke-linejoin="round"/><path d="M8 5.5v4M8 11.6v.4" stroke="var(--on-status)" stroke-width="1.7" stroke-linecap="round"/>',
  cancelled: '<circle cx="8" cy="8" r="6" fill="none" stroke="currentColor" stroke-width="1.8"/><path d="M3.8 12.2 12.2 3.8" stroke="currentColor" stroke-width="1.8"/>',
  timed_out: '<circle cx="8" cy="8.6" r="5.8" fill="none" stroke="currentColor" stroke-width="1.8"/><path d="M8 5.4V9l2.2 1.4M6.3 1.5h3.4" fill="none" stroke="currentColor" stroke-width="1.7" stroke-linecap="round"/>',
};

export const STATUS_LABEL = {
  queued: "queued",
  claimed: "claimed",
  running: "running",
  succeeded: "succeeded",
  failed: "failed",
  cancelled: "cancelled",
  timed_out: "timed out",
};

export function statusIcon(status) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "status-icon");
  svg.innerHTML = ICONS[status] || ICONS.queued;
  return svg;
}

/** A badge with an icon and the status in words. */
export function badge(status) {
  const el = h("span", { class: "badge", dataset: { status } });
  el.append(statusIcon(status), h("span", { class: "badge-text", text: STATUS_LABEL[status] || status }));
  return el;
}

export function setBadge(el, status) {
  if (el.dataset.status === status) return;
  el.dataset.status = status;
  el.replaceChildren(statusIcon(status),
    h("span", { class: "badge-text", text: STATUS_LABEL[status] || status }));
}

/** A progress bar (role=progressbar) whose fill animates between values. */
export function progressBar(label) {
  const fill = h("span", { class: "progress-fill" });
  return h("div", {
    class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": 0, "aria-label": label,
  }, fill);
}

export function setProgress(el, percent, status) {
  const p = Math.max(0, Math.min(100, Math.round(Number(percent) || 0)));
  if (el.getAttribute("aria-valuenow") !== String(p)) {
    el.setAttribute("aria-valuenow", String(p));
    el.setAttribute("aria-valuetext", `${p}%`);
    el.firstChild.style.width = `${p}%`;
  }
  if (status && el.dataset.status !== status) el.dataset.status = status;
}

// ---------------------------------------------------------------- formatting

export function shortId(id) {
  return (id || "").slice(0, 8);
}

export function parseTime(t) {
  if (!t) return null;
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function relTime(t, now = Date.now()) {
  const d = parseTime(t);
  if (!d) return "";
  const s = Math.round((now - d.getTime()) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ago`;
  const hr = Math.floor(m / 60);
  if (hr < 24) return `${hr} h ago`;
  return d.toLocaleDateString();
}

export function clockTime(t) {
  const d = parseTime(t);
  if (!d) return "—";
  const sameDay = d.toDateString() === new Date().toDateString();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return sameDay ? time : `${d.toLocaleDateString()} ${time}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Seconds the job has run: to its end, or to now while it runs. */
export function jobDuration(job, now = Date.now()) {
  const start = parseTime(job.started_at);
  if (!start) return null;
  const end = parseTime(job.finished_at);
  if (end) return Math.max(0, (end - start) / 1000);
  if (job.status === "running" || job.status === "claimed") return Math.max(0, (now - start) / 1000);
  return job.duration_s ?? null;
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** What a person calls the job: its name, else the job type, command or image. */
export function jobTitle(job, typeTitles = {}) {
  if (job.name) return job.name;
  const spec = job.spec || {};
  if (job.type) return typeTitles[job.type] || job.type;
  if (spec.command) return spec.command.join(" ");
  if (spec.steps && spec.steps.length) {
    return job.executor === "docker" && spec.image
      ? `${spec.image}: ${spec.steps[0].command.join(" ")}`
      : spec.steps.map((s) => s.name).join(", ");
  }
  if (spec.image) return spec.image;
  return job.executor || "job";
}

/** A one-line summary of what the job was asked to do. */
export function jobSummary(job) {
  const spec = job.spec || {};
  if (spec.params && Object.keys(spec.params).length) {
    return Object.entries(spec.params)
      .map(([k, v]) => `${k}=${Array.isArray(v) ? `[${v.length}]` : v}`)
      .join(" ");
  }
  return "";
}

// ---------------------------------------------------------------- toasts

export function toast(message, kind = "info") {
  const host = document.getElementById("toasts");
  if (!host) return;
  const el = h("div", { class: `toast toast-${kind}` }, message);
  host.append(el);
  setTimeout(() => {
    el.classList.add("toast-out");
    el.addEventListener("animationend", () => el.remove(), { once: true });
    setTimeout(() => el.remove(), 600);
  }, 3600);
}

/** A page part that reads the API while it is shown: ``load()`` calls ``refresh()`` (the
 * subclass's fetch and render), then again every ``refreshMs`` while visible; ``failed()``
 * is told when a read fails (the last view stays). */
export class PolledView {
  constructor(refreshMs) {
    this.refreshMs = refreshMs;
    this.visible = false;
    this._timer = null;
  }

  show() {
    this.visible = true;
    this.load();
  }

  hide() {
    this.visible = false;
    clearTimeout(this._timer);
  }

  async load() {
    clearTimeout(this._timer);
    try {
      await this.refresh();
    } catch (err) {
      this.failed(err);
    } finally {
      if (this.visible) this._timer = setTimeout(() => this.visible && this.load(), this.refreshMs);
    }
  }

  async refresh() {}

  failed(_err) {}
}
