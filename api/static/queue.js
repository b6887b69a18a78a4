// The queue list: running first, then claimed and queued, then ended jobs newest first.
//
// Rows are keyed by job id and updated in place, so a progress bar animates from its old
// width to its new one instead of being redrawn.

import { HttpError, post } from "./api.js";
import { waitingReason, waitingText } from "./flow.js";
import { store, isActive, isTerminal } from "./state.js";
import {
  badge, clockTime, duration, h, jobDuration, jobSummary, jobTitle, parseTime, progressBar,
  relTime, setBadge, setProgress, shortId, toast,
} from "./ui.js";

const GROUP = { running: 0, claimed: 1, queued: 2 };

function time(t) {
  return parseTime(t)?.getTime() ?? 0;
}

/** running (oldest start first), claimed, queued (next up first), ended (newest first). */
export function compareJobs(a, b) {
  const ga = GROUP[a.status] ?? 3;
  const gb = GROUP[b.status] ?? 3;
  if (ga !== gb) return ga - gb;
  if (ga === 0) return time(a.started_at) - time(b.started_at) || a.id.localeCompare(b.id);
  if (ga < 3) return time(a.created_at) - time(b.created_at) || a.id.localeCompare(b.id);
  const ea = time(a.finished_at) || time(a.created_at);
  const eb = time(b.finished_at) || time(b.created_at);
  return eb - ea || time(b.created_at) - time(a.created_at) || b.id.localeCompare(a.id);
}

export class QueueView {
  constructor({ list, empty, count, filter, typeTitles, onOpen }) {
    this.list = list;
    this.empty = empty;
    this.count = count;
    this.filterEl = filter;
    this.typeTitles = typeTitles;
    this.onOpen = onOpen;
    this.rows = new Map();
    this.filter = "all";
    this.selectedId = null;

    store.addEventListener("jobs", () => this.render());
    list.addEventListener("click", (ev) => this._onClick(ev));
    filter.addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-filter]");
      if (!b) return;
      this.filter = b.dataset.filter;
      for (const x of filter.querySelectorAll("button")) {
        x.setAttribute("aria-pressed", String(x === b));
      }
      this.render();
    });
    setInterval(() => this._tick(), 1000);
  }

  setSelected(id) {
    this.selectedId = id;
    for (const [rid, row] of this.rows) row.classList.toggle("selected", rid === id);
  }

  /** Flash a row (e.g. the job just submitted) and bring it into view. */
  highlight(id) {
    const row = this.rows.get(id);
    if (!row) return;
    row.classList.remove("flash");
    void row.offsetWidth; // restart the animation
    row.classList.add("flash");
    row.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  render() {
    const all = [...store.jobs.values()];
    const shown = all
      .filter((j) => this.filter === "all"
        || (this.filter === "active" ? isActive(j) : isTerminal(j)))
      .sort(compareJobs);

    const keep = new Set(shown.map((j) => j.id));
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.remove();
        this.rows.delete(id);
      }
    }
    let prev = null;
    for (const job of shown) {
      let row = this.rows.get(job.id);
      if (!row) {
        row = this._createRow(job);
        this.rows.set(job.id, row);
      }
      this._updateRow(row, job);
      // Move only rows that are out of place, so most rows are left untouched.
      const want = prev ? prev.nextSibling : this.list.firstChild;
      if (want !== row) this.list.insertBefore(row, want);
      prev = row;
    }
    const active = all.filter(isActive).length;
    this.count.textContent = all.length ? `${all.length}${active ? ` · ${active} active` : ""}` : "";
    this.empty.hidden = shown.length > 0;
    if (!shown.length && all.length) {
      this.empty.querySelector("p").replaceChildren(h("strong", {}, "Nothing here."));
    } else if (!all.length) {
      this.empty.querySelector("p").replaceChildren(h("strong", {}, "No jobs yet."));
    }
  }

  _createRow(job) {
    const titleId = `row-title-${job.id}`;
    const row = h("li", { class: "job-row row-enter", dataset: { jobId: job.id } },
      h("div", { class: "row-status" }, badge(job.status)),
      h("button", { type: "button", class: "row-main", "aria-describedby": `row-sub-${job.id}` },
        h("span", { class: "row-title", id: titleId }),
        h("span", { class: "row-sub", id: `row-sub-${job.id}` },
          h("span", { class: "mono row-id" }, shortId(job.id)),
          h("span", { class: "row-exec" }),
          h("span", { class: "row-params" }))),
      h("div", { class: "row-progress" },
        progressBar(`Progress of job ${shortId(job.id)}`),
        h("span", { class: "row-pct" }),
        h("span", { class: "row-msg" })),
      h("div", { class: "row-time" },
        h("span", { class: "row-rel" }),
        h("span", { class: "row-dur" })),
      h("div", { class: "row-actions" }));
    row.addEventListener("animationend", () => row.classList.remove("row-enter", "flash"));
    return row;
  }

  _updateRow(row, job) {
    row.dataset.status = job.status;
    row.classList.toggle("selected", job.id === this.selectedId);
    setBadge(row.querySelector(".badge"), job.status);
    const title = jobTitle(job, this.typeTitles);
    const titleEl = row.querySelector(".row-title");
    if (titleEl.textContent !== title) titleEl.textContent = title;
    row.querySelector(".row-exec").textContent = job.executor || "";
    row.querySelector(".row-params").textContent = jobSummary(job);

    const pct = job.status === "succeeded" ? 100 : job.progress?.percent ?? 0;
    setProgress(row.querySelector(".progress"), pct, job.status);
    row.querySelector(".row-pct").textContent = `${Math.round(pct)}%`;
    row.querySelector(".row-msg").textContent = rowMessage(job);
    this._updateTimes(row, job);

    const actions = row.querySelector(".row-actions");
    const cancellable = isActive(job);
    let btn = actions.querySelector(".cancel-btn");
    if (cancellable && !btn) {
      btn = h("button", { type: "button", class: "btn btn-sm btn-danger cancel-btn",
        "aria-describedby": `row-title-${job.id}` }, "Cancel");
      actions.append(btn);
    } else if (!cancellable && btn) {
      btn.remove();
      btn = null;
    }
    if (btn) {
      const pending = !!job.cancel_requested || btn.dataset.pending === "1";
      btn.disabled = pending;
      btn.title = pending ? "Cancelling…" : "Cancel this job";
    }
  }

  _updateTimes(row, job, now = Date.now()) {
    const rel = row.querySelector(".row-rel");
    const text = relTime(job.created_at, now);
    if (rel.textContent !== text) rel.textContent = text;
    rel.title = job.created_at ? `Created ${new Date(job.created_at).toLocaleString()}` : "";
    const d = jobDuration(job, now);
    row.querySelector(".row-dur").textContent = d === null ? "" : duration(d);
  }

  _tick() {
    const now = Date.now();
    for (const [id, row] of this.rows) {
      const job = store.jobs.get(id);
      if (job) this._updateTimes(row, job, now);
    }
  }

  _onClick(ev) {
    const row = ev.target.closest(".job-row");
    if (!row) return;
    const cancel = ev.target.closest(".cancel-btn");
    if (cancel) {
      ev.stopPropagation();
      cancelJob(row.dataset.jobId, cancel);
      return;
    }
    this.onOpen(row.dataset.jobId, row.querySelector(".row-main"));
  }
}

function rowMessage(job) {
  if (job.status === "failed" || job.status === "timed_out") {
    return job.error || (job.exit_code != null ? `exit code ${job.exit_code}` : "");
  }
  if (job.status === "cancelled") return job.progress?.message ? `stopped: ${job.progress.message}` : "";
  if (isActive(job) && job.cancel_requested) return "cancelling…";
  if (job.status === "queued" && job.not_before && waitingReason(job) === "backoff") {
    return `attempt ${job.attempt} after ${clockTime(job.not_before)}`;
  }
  if (job.status === "queued" && waitingText(job)) return waitingText(job); // issue 14
  if (job.status === "queued") return job.progress?.message || "waiting for a worker";
  if (job.status === "claimed") return "starting…";
  return job.progress?.message || "";
}

/** Ask the API to cancel; the queue stream brings the status change to every tab. */
export async function cancelJob(id, button) {
  if (button) {
    button.disabled = true;
    button.dataset.pending = "1";
  }
  try {
    store.upsert(await post(`/jobs/${encodeURIComponent(id)}/cancel`));
  } catch (err) {
    if (button) {
      button.disabled = false;
      button.dataset.pending = "";
    }
    const why = err instanceof HttpError ? err.message : `could not reach the API (${err.message})`;
    toast(`Cancel failed: ${why}`, "error");
  }
}
