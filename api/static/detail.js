// The detail panel of one job: status, times, a live progress bar and message from the
// job's SSE stream, the log tail, the result and artifacts with download links.

import { lineNodes } from "./ansi.js";
import { API, apiUrl, get, withToken } from "./api.js";
import { refreshJob } from "./live.js";
import { rerunJob, waitingReason, waitingText } from "./flow.js";
import { cancelJob } from "./queue.js";
import { isActive, isTerminal, store, vocabulary } from "./state.js";
import {
  badge, bytes, clockTime, duration, h, jobDuration, jobTitle, progressBar, setBadge,
  setProgress,
} from "./ui.js";

const LOG_LINES = 400;
const RESULT_CHARS = 20000;

export class DetailPanel {
  constructor({ el, typeTitles, onClose }) {
    this.el = el;
    this.typeTitles = typeTitles;
    this.onClose = onClose;
    this.id = null;
    this.es = null;
    this.logs = new Map(); // seq -> line record
    this.returnFocus = null;
    this._sseRetry = null;
    this._endedSeen = false;
    store.addEventListener("jobs", (ev) => {
      const ids = ev.detail.ids;
      if (!this.id || (ids && !ids.includes(this.id))) return;
      // A fresh snapshot may not list an older job: fetch it rather than show stale data.
      if (!store.jobs.has(this.id)) refreshJob(this.id);
      else {
        if (!this._endedSeen && isTerminal(store.jobs.get(this.id))) {
          // However the end reached us (queue socket, SSE, a poll), show the whole log tail.
          this._endedSeen = true;
          this._loadLogs(this.id);
        }
        this._update();
      }
    });
    setInterval(() => this.id && this._updateTimes(), 1000);
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && this.id && !document.querySelector("dialog[open]")) this.close();
    });
  }

  get openId() {
    return this.id;
  }

  async open(id, returnFocus) {
    if (this.id === id) {
      this.el.querySelector("#detail-title")?.focus();
      return;
    }
    this._stopStream();
    this.id = id;
    this.returnFocus = returnFocus || null;
    this.logs = new Map();
    this._endedSeen = false;
    this._build();
    this.el.querySelector(".detail-log").hidden = false;
    this._renderLogs();
    this.el.hidden = false;
    document.body.classList.add("has-detail");
    this.el.querySelector("#detail-title").focus({ preventScroll: true });
    // A queued job is read again: the API's answer says why it waits (flow.js).
    if (!store.jobs.has(id) || store.jobs.get(id).status === "queued") await refreshJob(id);
    this._update();
    this._loadLogs(id);
    this._startStream();
  }

  close() {
    if (!this.id) return;
    this._stopStream();
    this.id = null;
    this.el.hidden = true;
    this.el.replaceChildren();
    document.body.classList.remove("has-detail");
    this.onClose();
    if (this.returnFocus && document.contains(this.returnFocus)) this.returnFocus.focus();
  }

  // ---------------------------------------------------------------- layout

  _build() {
    const bar = progressBar("Job progress");
    this.el.replaceChildren(
      h("div", { class: "detail-head" },
        h("div", { class: "detail-heading" },
          h("h2", { id: "detail-title", tabindex: "-1" }, "Job"),
          h("p", { class: "detail-id mono muted", title: "Job id" }, this.id)),
        h("button", { type: "button", class: "icon-btn close-btn", "aria-label": "Close details",
          onclick: () => this.close() },
        h("span", { "aria-hidden": "true" }, "✕"))),
      h("div", { class: "detail-body" },
        h("div", { class: "detail-status" },
          badge("queued"),
          h("span", { class: "detail-pct", "aria-hidden": "true" }),
          h("div", { class: "detail-actions" })),
        bar,
        h("p", { class: "detail-message", "aria-live": "polite" }),
        h("div", { class: "detail-error", role: "alert", hidden: true }),
        h("dl", { class: "meta" }),
        section("Result", "detail-result", h("pre", { class: "code result" })),
        section("Artifacts", "detail-artifacts", h("ul", { class: "artifacts" })),
        section("Session", "detail-session", h("ol", { class: "session-runs" })),
        section("Log", "detail-log", [
          h("pre", { class: "code log", tabindex: "0", "aria-label": "Log tail" }),
          h("a", { class: "full-log-link small", href: `#/runs/${encodeURIComponent(this.id)}` },
            "Whole run and log ›")]),
        h("details", { class: "spec-details" },
          h("summary", {}, "Spec"),
          h("pre", { class: "code spec" }))),
    );
  }

  _update() {
    const job = store.jobs.get(this.id);
    if (!job || !this.el.firstChild) return;
    const q = (s) => this.el.querySelector(s);
    q("#detail-title").textContent = jobTitle(job, this.typeTitles);
    this.el.dataset.status = job.status;
    setBadge(q(".detail-status .badge"), job.status);

    const pct = job.status === "succeeded" ? 100 : job.progress?.percent ?? 0;
    setProgress(q(".progress"), pct, job.status);
    q(".detail-pct").textContent = `${Math.round(pct)}%`;
    let message = job.progress?.message || "";
    if (isActive(job) && job.cancel_requested) message = "Cancelling…";
    else if (job.status === "queued" && job.not_before && waitingReason(job) === "backoff") {
      message = `Retrying after ${clockTime(job.not_before)} (attempt ${job.attempt})`;
    } else if (waitingText(job)) message = waitingText(job); // why it waits (issue 14)
    else if (job.status === "queued" && !message) message = "Waiting for a worker…";
    q(".detail-message").textContent = message;

    const err = q(".detail-error");
    err.hidden = !job.error;
    err.textContent = job.error || "";

    const actions = q(".detail-actions");
    const btn = actions.querySelector("button.cancel-btn");
    const rerun = actions.querySelector("button.rerun-btn");
    if (isTerminal(job) && !rerun) {
      actions.append(h("button", { type: "button", class: "btn btn-sm rerun-btn",
        onclick: (ev) => rerunJob(job.id, ev.currentTarget) }, "Re-run"));
    } else if (!isTerminal(job) && rerun) {
      rerun.remove();
    }
    if (isActive(job) && !btn) {
      actions.append(h("button", { type: "button", class: "btn btn-sm btn-danger cancel-btn",
        onclick: (ev) => cancelJob(job.id, ev.currentTarget) }, "Cancel"));
    } else if (!isActive(job) && btn) {
      btn.remove();
    } else if (btn) {
      btn.disabled = !!job.cancel_requested;
    }

    this._renderMeta(job);
    this._renderResult(job);
    this._renderArtifacts(job);
    this._renderSession(job);
    q(".spec").textContent = job.spec ? JSON.stringify(job.spec, null, 2) : "";
    q(".spec-details").hidden = !job.spec;
    if (isTerminal(job)) this._stopStream();
  }

  _renderMeta(job) {
    const rows = [
      ["Executor", job.executor],
      ["Type", job.type],
      ["Attempt", job.attempt > 1 ? String(job.attempt) : job.attempt ? "1" : ""],
      ["Runner", job.runner_id],
      ["Created", clockTime(job.created_at), "created"],
      ["Started", job.started_at ? clockTime(job.started_at) : "—"],
      ["Finished", job.finished_at ? clockTime(job.finished_at) : "—"],
      ["Duration", "", "duration"],
      ["Exit code", job.exit_code ?? null],
    ];
    const dl = this.el.querySelector(".meta");
    dl.replaceChildren(...rows
      .filter(([, v, key]) => key || (v !== null && v !== undefined && v !== ""))
      .map(([k, v, key]) => h("div", { class: "meta-item", dataset: { key: key || k.toLowerCase() } },
        h("dt", {}, k), h("dd", {}, String(v ?? "")))));
    const steps = job.steps || [];
    if (steps.length) {
      dl.append(h("div", { class: "meta-item meta-wide" }, h("dt", {}, "Steps"),
        h("dd", {}, steps.map((s) => h("span", { class: "step" },
          `${s.name}${s.exit_code !== null && s.exit_code !== undefined ? ` → ${s.exit_code}` : ""}`)))));
    }
    this._updateTimes();
  }

  _updateTimes() {
    const job = store.jobs.get(this.id);
    const dd = this.el.querySelector('.meta-item[data-key="duration"] dd');
    if (!job || !dd) return;
    const d = jobDuration(job);
    dd.textContent = d === null ? "—" : duration(d);
  }

  _renderResult(job) {
    const sec = this.el.querySelector(".detail-result");
    const has = job.result !== null && job.result !== undefined;
    sec.hidden = !has;
    if (!has) return;
    let text = typeof job.result === "string" ? job.result : JSON.stringify(job.result, null, 2);
    if (text.length > RESULT_CHARS) {
      text = `${text.slice(0, RESULT_CHARS)}\n… (${text.length - RESULT_CHARS} more characters; ` +
        "GET the job for all of it)";
    }
    const pre = sec.querySelector("pre");
    if (pre.textContent !== text) pre.textContent = text;
  }

  _renderArtifacts(job) {
    const sec = this.el.querySelector(".detail-artifacts");
    const arts = job.artifacts || [];
    sec.hidden = !arts.length;
    const list = sec.querySelector("ul");
    list.replaceChildren(...arts.map((a) => h("li", {},
      h("a", {
        href: apiUrl(`/jobs/${encodeURIComponent(job.id)}/artifacts/${
          a.name.split("/").map(encodeURIComponent).join("/")}`),
        download: a.name.split("/").pop(),
      }, svgDownload(), h("span", { class: "mono" }, a.name)),
      h("span", { class: "artifact-meta muted small" },
        [bytes(a.size), a.content_type].filter(Boolean).join(" · "),
        a.sha256 ? h("span", { class: "mono", title: `sha256 ${a.sha256}` },
          ` · sha256 ${a.sha256.slice(0, 10)}…`) : null))));
  }

  // The runs of the job's session (issue 16), each linked to its run page; read again
  // when this job's status changes (a run of the session ended or started meanwhile).
  async _renderSession(job) {
    const sec = this.el.querySelector(".detail-session");
    if (!sec) return;
    sec.hidden = !job.session_id;
    if (!job.session_id) return;
    const key = `${job.id}:${job.session_id}:${job.status}`;
    if (this._sessionKey === key) return;
    this._sessionKey = key;
    let session;
    try {
      session = await get(`/sessions/${encodeURIComponent(job.session_id)}`);
    } catch {
      return; // deleted, or not readable with this token: the section stays as it was
    }
    if (this._sessionKey !== key || !session) return;
    sec.querySelector("h3").textContent =
      `Session ${session.name ? `${session.name} · ` : ""}${session.id}`;
    sec.querySelector("ol").replaceChildren(...(session.runs || []).map((run) => h("li",
      { class: run.id === job.id ? "current" : "" },
      h("a", { href: `#/runs/${encodeURIComponent(run.id)}`, class: "mono" }, run.id.slice(0, 12)),
      " ", badge(run.status),
      run.id === job.id ? h("span", { class: "muted small" }, " (this job)") : null)));
  }

  // ---------------------------------------------------------------- logs

  async _loadLogs(id) {
    // /logs pages forward from a line number; walk to the end (bounded) to show the tail.
    try {
      let since = 0;
      for (let i = 0; i < 20; i += 1) {
        const page = await get(`/jobs/${encodeURIComponent(id)}/logs?since=${since}&limit=1000`);
        if (this.id !== id) return;
        const items = page?.items || [];
        this._addLogs(items);
        if (items.length < 1000 || page.next_since === undefined || page.next_since <= since) break;
        since = page.next_since;
      }
    } catch {
      if (this.id === id) this._renderLogs();
    }
  }

  _addLogs(items) {
    for (const it of items) {
      if (it && it.seq !== undefined) this.logs.set(Number(it.seq), it);
    }
    if (this.logs.size > LOG_LINES * 2) {
      const keys = [...this.logs.keys()].sort((a, b) => a - b);
      for (const k of keys.slice(0, keys.length - LOG_LINES)) this.logs.delete(k);
    }
    this._renderLogs();
  }

  _renderLogs() {
    const pre = this.el.querySelector(".log");
    if (!pre) return;
    const sec = this.el.querySelector(".detail-log");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    const lines = [...this.logs.values()].sort((a, b) => a.seq - b.seq).slice(-LOG_LINES);
    if (!lines.length) {
      pre.replaceChildren(h("span", { class: "muted" }, "No log lines yet."));
      sec.dataset.empty = "1";
      return;
    }
    sec.dataset.empty = "";
    pre.replaceChildren(...lines.map((l) => h("span", {
      class: `log-line${l.stream === "stderr" ? " stderr" : ""}`,
    }, l.step ? h("span", { class: "log-step" }, `${l.step} `) : null, lineNodes(l.line).nodes, "\n")));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  // ---------------------------------------------------------------- SSE

  _startStream() {
    const id = this.id;
    const job = store.jobs.get(id);
    if (!id || (job && isTerminal(job))) return;
    clearTimeout(this._sseRetry);
    const es = new EventSource(withToken(`${API}/jobs/${encodeURIComponent(id)}/events`));
    this.es = es;
    const parse = (ev) => {
      try {
        return JSON.parse(ev.data);
      } catch {
        return null;
      }
    };
    es.addEventListener("status", (ev) => {
      const data = parse(ev);
      if (data && data.id) store.upsert(data);
    });
    es.addEventListener("progress", (ev) => {
      const data = parse(ev);
      if (data) store.patch(id, { progress: { percent: data.percent, message: data.message ?? "" } });
    });
    es.addEventListener("log", (ev) => {
      const data = parse(ev);
      if (!data) return;
      this._addLogs(Array.isArray(data.lines) ? data.lines : [data]);
    });
    for (const name of vocabulary.streamEndEvents) {
      es.addEventListener(name, (ev) => {
        const data = parse(ev);
        if (data && data.id) store.upsert(data);
        this._stopStream();
        refreshJob(id);
        this._loadLogs(id); // the whole tail, whatever the stream delivered
      });
    }
    es.onerror = () => {
      // A closed stream (404, wrong type, API gone) is not retried by the browser: we do it,
      // while the job is still worth watching. A stream that is merely reconnecting is left.
      if (es.readyState !== EventSource.CLOSED || this.es !== es) return;
      this.es = null;
      this._sseRetry = setTimeout(() => {
        if (this.id === id) {
          refreshJob(id);
          // Lines may have come and the job ended while we were not listening: fetch them,
          // since a stream is only reopened for a job that is still running.
          this._loadLogs(id);
          this._startStream();
        }
      }, 3000);
    };
  }

  _stopStream() {
    clearTimeout(this._sseRetry);
    if (this.es) {
      this.es.close();
      this.es = null;
    }
  }
}

function section(title, cls, body) {
  return h("section", { class: `detail-section ${cls}`, hidden: true },
    h("h3", {}, title), body);
}

function svgDownload() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "dl-icon");
  svg.innerHTML = '<path d="M8 2v8m0 0 3-3M8 10 5 7M3 13h10" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linecap="round" stroke-linejoin="round"/>';
  return svg;
}
