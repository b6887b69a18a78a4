// One run, full page (#/runs/<id>): its record, its attempts, and the whole log in a
// virtualised pane with ANSI colours. A run still going is followed: the record is re-read
// and new log lines are fetched until it ends.

import { apiUrl, get, HttpError } from "./api.js";
import { LogPane } from "./logpane.js";
import { TERMINAL } from "./state.js";
import { badge, clockTime, duration, h, jobDuration, jobTitle, setBadge } from "./ui.js";

const LOG_PAGE = 10000; // the API's largest page
const FOLLOW_MS = 1000;

export class RunView {
  constructor({ el }) {
    this.el = el;
    this.id = null;
    this.job = null;
    this.seq = 0; // the last log line fetched
    this._timer = null;
    this._gen = 0;
  }

  async show(id) {
    this.hide();
    const gen = ++this._gen;
    this.id = id;
    this.seq = 0;
    this.job = null;
    this.pane = new LogPane({ label: "Run log", empty: "Loading the log…" });
    this._build();
    try {
      await this._refresh(gen);
    } catch (err) {
      if (gen !== this._gen) return;
      this._fail(err);
      return;
    }
    await this._loadLogs(gen);
    if (gen !== this._gen) return;
    this.pane.emptyEl.textContent = "This run has logged nothing.";
    this.el.querySelector(".runview-log").dataset.loaded = "1";
    this._follow(gen);
  }

  hide() {
    this._gen += 1;
    clearTimeout(this._timer);
    this.id = null;
  }

  // ---------------------------------------------------------------- layout

  _build() {
    const id = this.id;
    this.el.replaceChildren(h("article", { class: "panel runview", "aria-labelledby": "runview-title" },
      h("div", { class: "panel-head runview-head" },
        h("div", { class: "runview-heading" },
          h("a", { href: "#/runs", class: "back-link" }, "‹ All runs"),
          h("h2", { id: "runview-title", tabindex: "-1" }, "Run"),
          h("p", { class: "mono muted detail-id" }, id)),
        h("span", { class: "runview-badge" }, badge("queued"))),
      h("div", { class: "runview-body" },
        h("p", { class: "runview-error detail-error", role: "alert", hidden: true }),
        h("dl", { class: "meta runview-meta" }),
        h("section", { class: "runview-attempts", hidden: true },
          h("h3", {}, "Attempts"),
          h("div", { class: "runs-scroll" }, h("table", { class: "runs-table attempts-table" },
            h("thead", {}, h("tr", {}, ["#", "Runner", "Claimed", "Started", "Ended", "Outcome",
              "Exit"].map((t) => h("th", { scope: "col" }, t)))),
            h("tbody")))),
        h("section", { class: "runview-log" },
          h("div", { class: "runview-log-head" },
            h("h3", {}, "Log ", h("span", { class: "count runview-lines" })),
            h("div", { class: "panel-actions" },
              h("button", { type: "button", class: "btn btn-sm", "data-action": "end",
                onclick: () => this.pane.scrollToEnd() }, "Jump to end"),
              h("a", { class: "btn btn-sm btn-ghost", href: apiUrl(`/jobs/${encodeURIComponent(id)}/logs?format=text`),
                download: `${id}.log` }, "Download"))),
          this.pane.el))));
    this.el.querySelector("#runview-title").focus({ preventScroll: true });
  }

  _fail(err) {
    const msg = err instanceof HttpError && err.status === 404
      ? "No such run: it may have been removed."
      : `Could not load the run: ${err.message || err}`;
    const box = this.el.querySelector(".runview-error");
    box.textContent = msg;
    box.hidden = false;
    this.el.querySelector(".runview-log").hidden = true;
  }

  // ---------------------------------------------------------------- data

  async _refresh(gen) {
    const run = await get(`/runs/${encodeURIComponent(this.id)}`);
    if (gen !== this._gen) return;
    this.job = run;
    this._render(run);
  }

  async _loadLogs(gen) {
    for (;;) {
      const page = await get(`/jobs/${encodeURIComponent(this.id)}/logs?since=${this.seq}&limit=${LOG_PAGE}`);
      if (gen !== this._gen) return;
      const items = page?.items || [];
      if (items.length) {
        this.pane.append(items);
        this.seq = Number(items[items.length - 1].seq);
        this.el.querySelector(".runview-lines").textContent = String(this.pane.length);
      }
      if (items.length < LOG_PAGE) return;
    }
  }

  _follow(gen) {
    if (gen !== this._gen || !this.job || TERMINAL.has(this.job.status)) return;
    this._timer = setTimeout(async () => {
      try {
        await this._refresh(gen);
        await this._loadLogs(gen);
      } catch {
        /* the API is restarting or gone for a moment: the next round tries again */
      }
      this._follow(gen);
    }, FOLLOW_MS);
  }

  _render(run) {
    const q = (s) => this.el.querySelector(s);
    q("#runview-title").textContent = jobTitle(run);
    this.el.dataset.status = run.status;
    setBadge(q(".runview-badge .badge"), run.status);
    const err = q(".runview-error");
    err.hidden = !run.error;
    err.textContent = run.error || "";
    const d = jobDuration(run);
    const labels = Object.entries(run.spec?.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    const rows = [
      ["Executor", run.executor],
      ["Type", run.type],
      ["Attempt", String(run.attempt ?? 1)],
      ["Runner", run.runner_id],
      ["Created", clockTime(run.created_at)],
      ["Started", run.started_at ? clockTime(run.started_at) : "—"],
      ["Finished", run.finished_at ? clockTime(run.finished_at) : "—"],
      ["Duration", d === null ? "—" : duration(d)],
      ["Exit code", run.exit_code],
      ["Labels", labels],
    ];
    q(".runview-meta").replaceChildren(...rows
      .filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => h("div", { class: "meta-item", dataset: { key: k.toLowerCase() } },
        h("dt", {}, k), h("dd", {}, String(v)))));
    const attempts = run.attempts || [];
    q(".runview-attempts").hidden = !attempts.length;
    q(".attempts-table tbody").replaceChildren(...attempts.map((a) => h("tr", {},
      h("td", { class: "num", "data-label": "#" }, String(a.attempt)),
      h("td", { class: "mono", "data-label": "Runner" }, a.runner_id || "—"),
      h("td", { class: "num", "data-label": "Claimed" }, clockTime(a.claimed_at)),
      h("td", { class: "num", "data-label": "Started" }, clockTime(a.started_at)),
      h("td", { class: "num", "data-label": "Ended" }, clockTime(a.ended_at)),
      h("td", { "data-label": "Outcome" }, a.outcome || "—"),
      h("td", { class: "num", "data-label": "Exit" }, a.exit_code ?? "—"))));
  }
}
