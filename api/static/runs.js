// The Runs page: every run the store keeps, newest first, filtered by status, executor,
// label and time, searched by name or id, a page at a time. The filters live in the URL
// (#/runs?status=failed&q=deploy), so a view can be shared and the back button works.

import { get, HttpError } from "./api.js";
import { STATUSES, vocabulary } from "./state.js";
import { badge, clockTime, duration, h, jobDuration, jobTitle, relTime, STATUS_LABEL } from "./ui.js";

const PAGE = 50;
const MAX_PAGE = 200;
const SEARCH_DEBOUNCE_MS = 300;
const REFRESH_MS = 5000;
const TIME_PRESETS = [
  ["", "Any time"],
  ["1h", "Last hour"],
  ["24h", "Last 24 hours"],
  ["7d", "Last 7 days"],
  ["custom", "Between…"],
];
const PRESET_S = { "1h": 3600, "24h": 86400, "7d": 7 * 86400 };

/** The filters a Runs URL carries. */
export function parseRunsQuery(query) {
  const p = new URLSearchParams(query || "");
  return {
    q: p.get("q") || "",
    status: p.get("status") || "",
    executor: p.get("executor") || "",
    label: p.get("label") || "",
    time: p.get("time") || "",
    since: p.get("since") || "",
    until: p.get("until") || "",
    offset: Math.max(0, Number.parseInt(p.get("offset") || "0", 10) || 0),
    limit: Math.min(MAX_PAGE, Math.max(1, Number.parseInt(p.get("limit") || "", 10) || PAGE)),
  };
}

function toQuery(f) {
  const p = new URLSearchParams();
  for (const k of ["q", "status", "executor", "label", "time"]) if (f[k]) p.set(k, f[k]);
  if (f.time === "custom") {
    if (f.since) p.set("since", f.since);
    if (f.until) p.set("until", f.until);
  }
  if (f.limit && f.limit !== PAGE) p.set("limit", String(f.limit));
  if (f.offset) p.set("offset", String(f.offset));
  return p.toString();
}

// datetime-local values are local wall-clock times; the API wants ISO 8601 in UTC.
function localToIso(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

function apiQuery(f, now = Date.now()) {
  const p = new URLSearchParams({ limit: String(f.limit), offset: String(f.offset) });
  if (f.q.trim()) p.set("q", f.q.trim());
  if (f.status) p.set("status", f.status);
  if (f.executor) p.set("executor", f.executor);
  for (const pair of f.label.split(",").map((s) => s.trim()).filter(Boolean)) p.append("label", pair);
  if (PRESET_S[f.time]) p.set("since", new Date(now - PRESET_S[f.time] * 1000).toISOString());
  if (f.time === "custom") {
    if (f.since) p.set("since", localToIso(f.since));
    if (f.until) p.set("until", localToIso(f.until));
  }
  return p.toString();
}

export class RunsPage {
  constructor({ el }) {
    this.el = el;
    this.filters = parseRunsQuery("");
    this.visible = false;
    this._timer = null;
    this._searchTimer = null;
    this._seq = 0;
    this._build();
  }

  // ---------------------------------------------------------------- layout

  _build() {
    const opt = (value, label, selected) => h("option", { value, selected: value === selected }, label);
    this.form = h("form", { class: "runs-filters", role: "search", "aria-label": "Filter runs",
      onsubmit: (ev) => { ev.preventDefault(); this._apply(); } },
    field("Search", h("input", { type: "search", name: "q", placeholder: "Name or id",
      maxlength: "200", autocomplete: "off", "aria-describedby": "runs-error" })),
    field("Status", h("select", { name: "status" }, opt("", "Any status", ""))),
    field("Executor", h("select", { name: "executor" }, opt("", "Any executor", ""))),
    field("Label", h("input", { type: "text", name: "label", placeholder: "key=value",
      autocomplete: "off", "aria-describedby": "runs-error" })),
    field("Time", h("select", { name: "time" }, TIME_PRESETS.map(([v, l]) => opt(v, l, "")))),
    field("From", h("input", { type: "datetime-local", name: "since", step: "1" }), "runs-custom"),
    field("To", h("input", { type: "datetime-local", name: "until", step: "1" }), "runs-custom"),
    h("div", { class: "runs-filter-actions" },
      h("button", { type: "button", class: "btn btn-ghost btn-sm", onclick: () => this._reset() },
        "Reset")));
    this.form.addEventListener("change", (ev) => {
      if (ev.target.name !== "q") this._apply();
    });
    this.form.addEventListener("input", (ev) => {
      if (ev.target.name !== "q" && ev.target.name !== "label") return;
      clearTimeout(this._searchTimer);
      this._searchTimer = setTimeout(() => this._apply(), SEARCH_DEBOUNCE_MS);
    });

    this.errorEl = h("p", { id: "runs-error", class: "runs-error", role: "alert", hidden: true });
    this.countEl = h("span", { class: "count" });
    this.body = h("tbody");
    this.table = h("table", { class: "runs-table" },
      h("caption", { class: "sr-only" }, "Runs, newest first"),
      h("thead", {}, h("tr", {},
        ["Status", "Name", "Executor", "Labels", "Created", "Duration", "Attempt"]
          .map((t) => h("th", { scope: "col" }, t)))),
      this.body);
    this.emptyEl = h("div", { class: "empty runs-empty", hidden: true },
      h("p", {}, h("strong", {}, "No runs match.")),
      h("p", { class: "muted" }, "Change or reset the filters."));
    this.rangeEl = h("span", { class: "pager-range muted", "aria-live": "polite" });
    this.prev = h("button", { type: "button", class: "btn btn-sm", "data-page": "prev",
      onclick: () => this._page(-1) }, "‹ Newer");
    this.next = h("button", { type: "button", class: "btn btn-sm", "data-page": "next",
      onclick: () => this._page(1) }, "Older ›");

    this.el.replaceChildren(h("section", { class: "panel runs", "aria-labelledby": "runs-title" },
      h("div", { class: "panel-head" },
        h("h2", { id: "runs-title", tabindex: "-1" }, "Runs ", this.countEl)),
      this.form, this.errorEl,
      h("div", { class: "runs-scroll" }, this.table), this.emptyEl,
      h("nav", { class: "pager", "aria-label": "Pages" }, this.prev, this.rangeEl, this.next)));
  }

  _fillVocabulary() {
    const status = this.form.elements.status;
    if (status.options.length === 1) {
      status.append(...STATUSES.map((s) => h("option", { value: s }, STATUS_LABEL[s] || s)));
    }
    const executor = this.form.elements.executor;
    if (executor.options.length === 1) {
      executor.append(...vocabulary.executors.map((e) => h("option", { value: e }, e)));
    }
  }

  // ---------------------------------------------------------------- state

  /** Show the page with the filters of ``query`` (the part of the hash after "?"). */
  show(query) {
    this._fillVocabulary();
    this.visible = true;
    this.filters = parseRunsQuery(query);
    const els = this.form.elements;
    for (const k of ["q", "status", "executor", "label", "time", "since", "until"]) {
      if (els[k] !== document.activeElement) els[k].value = this.filters[k];
    }
    this.el.dataset.time = this.filters.time;
    this.load();
  }

  hide() {
    this.visible = false;
    clearTimeout(this._timer);
  }

  _read() {
    const els = this.form.elements;
    const f = { offset: 0, limit: this.filters.limit };
    for (const k of ["q", "status", "executor", "label", "time", "since", "until"]) f[k] = els[k].value;
    return f;
  }

  _go(f) {
    const q = toQuery(f);
    const hash = q ? `#/runs?${q}` : "#/runs";
    if (window.location.hash !== hash) window.location.hash = hash;
    else this.show(q);
  }

  _apply() {
    clearTimeout(this._searchTimer);
    this._go(this._read());
  }

  _reset() {
    this.form.reset();
    this._go({ ...parseRunsQuery(""), limit: this.filters.limit });
  }

  _page(dir) {
    const { offset, limit } = this.filters;
    this._go({ ...this.filters, offset: Math.max(0, offset + dir * limit) });
    this.el.querySelector("#runs-title")?.focus({ preventScroll: true });
  }

  // ---------------------------------------------------------------- data

  async load() {
    clearTimeout(this._timer);
    const seq = ++this._seq;
    this.el.dataset.loading = "1";
    try {
      const page = await get(`/runs?${apiQuery(this.filters)}`);
      if (seq !== this._seq) return;
      this._showError(null);
      this._render(page);
    } catch (err) {
      if (seq !== this._seq) return;
      this._showError(err);
    } finally {
      if (seq === this._seq) {
        delete this.el.dataset.loading;
        // Newest first: the first page gains runs as they come; the others hold still.
        if (this.visible && this.filters.offset === 0) {
          this._timer = setTimeout(() => this.visible && this.load(), REFRESH_MS);
        }
      }
    }
  }

  _showError(err) {
    const fields = this.form.querySelectorAll("[aria-invalid]");
    for (const el of fields) el.removeAttribute("aria-invalid");
    if (!err) {
      this.errorEl.hidden = true;
      return;
    }
    let text = err.message || "Could not load runs.";
    if (err instanceof HttpError && err.status === 422) {
      const named = (err.body.fields || []).map((f) => f.field.split(".")[0]);
      if (err.body.field) named.push(err.body.field);
      const problems = (err.body.fields || []).map((f) => `${f.field}: ${f.message}`);
      text = problems.length ? problems.join("; ") : text;
      for (const name of named) {
        const input = this.form.elements[name === "since" && this.filters.time !== "custom" ? "time" : name];
        if (input) input.setAttribute("aria-invalid", "true");
      }
    } else if (err instanceof TypeError) {
      text = "The API cannot be reached; retrying.";
      if (this.visible) this._timer = setTimeout(() => this.visible && this.load(), REFRESH_MS);
    }
    this.errorEl.textContent = text;
    this.errorEl.hidden = false;
  }

  _render(page) {
    const { items, total, offset } = page;
    this.countEl.textContent = String(total);
    // A refresh that changes nothing leaves the rows (and the focus, and a selection) alone.
    const sig = [Math.floor(Date.now() / 60000), total, offset, ...items.map((j) => `${j.id}:${j.status}:${j.finished_at}`)].join("|");
    if (sig === this._sig) return;
    this._sig = sig;
    const focused = document.activeElement?.closest?.(".run-row")?.dataset.jobId;
    this.body.replaceChildren(...items.map((job) => this._row(job)));
    if (focused) this.body.querySelector(`.run-row[data-job-id="${focused}"] .run-link`)?.focus();
    this.table.hidden = !items.length;
    this.emptyEl.hidden = items.length > 0;
    this.rangeEl.textContent = items.length
      ? `${offset + 1}–${offset + items.length} of ${total}`
      : `0 of ${total}`;
    this.prev.disabled = offset === 0;
    this.next.disabled = offset + items.length >= total;
  }

  _row(job) {
    const href = `#/runs/${encodeURIComponent(job.id)}`;
    const labels = Object.entries(job.labels || job.spec?.labels || {});
    const d = jobDuration(job);
    // The whole row opens the run; the name is the link keyboards and screen readers use.
    const open = (ev) => {
      if (!ev.target.closest("a") && !window.getSelection()?.toString()) window.location.hash = href;
    };
    return h("tr", { class: "run-row", dataset: { jobId: job.id, status: job.status }, onclick: open },
      h("td", { class: "run-status", "data-label": "Status" }, badge(job.status)),
      h("td", { class: "run-name", "data-label": "Name" },
        h("a", { href, class: "run-link" }, jobTitle(job)),
        h("span", { class: "mono muted run-id" }, job.id.slice(0, 12))),
      h("td", { "data-label": "Executor" }, job.executor || ""),
      h("td", { class: "run-labels", "data-label": "Labels" },
        labels.map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`))),
      h("td", { class: "num", "data-label": "Created", title: clockTime(job.created_at) },
        relTime(job.created_at)),
      h("td", { class: "num", "data-label": "Duration" }, d === null ? "—" : duration(d)),
      h("td", { class: "num", "data-label": "Attempt" }, String(job.attempt ?? 1)));
  }
}

function field(label, control, cls = "") {
  return h("label", { class: `runs-field ${cls}`.trim() },
    h("span", { class: "runs-field-label" }, label), control);
}
