// The Workers page: every live worker and agent (executors, tags, slots, the jobs it holds,
// its last heartbeat), with draining, stale and lost ones marked. Re-read every few seconds
// while the page is shown (GET /runners).

import { get } from "./api.js";
import { badge, clockTime, h, jobTitle, PolledView, relTime } from "./ui.js";

const REFRESH_MS = 3000;
const STATE_TEXT = {
  live: "live",
  draining: "draining",
  stale: "heartbeat late",
  lost: "lost",
};
const STATE_HELP = {
  live: "Heartbeat on time; takes jobs.",
  draining: "Takes no new jobs; hands running ones back.",
  stale: "Its heartbeat is overdue: it may be gone.",
  lost: "Gone from the registry while it held jobs, or lost an attempt in the last hour.",
};

export class WorkersPage extends PolledView {
  constructor({ el }) {
    super(REFRESH_MS);
    this.el = el;
    this.summary = h("p", { class: "workers-summary muted", "aria-live": "polite" });
    this.list = h("ul", { class: "workers-list", "aria-label": "Workers and agents" });
    this.emptyEl = h("div", { class: "empty", hidden: true },
      h("p", {}, h("strong", {}, "No worker is running.")),
      h("p", { class: "muted" }, "Jobs wait in the queue until one starts: ",
        h("code", {}, "launchbay worker"), " or ", h("code", {}, "launchbay agent"), "."));
    this.errorEl = h("p", { class: "runs-error", role: "alert", hidden: true });
    el.replaceChildren(h("section", { class: "panel workers", "aria-labelledby": "workers-title" },
      h("div", { class: "panel-head" },
        h("h2", { id: "workers-title", tabindex: "-1" }, "Workers ",
          h("span", { class: "count workers-count" })),
        this.summary),
      this.errorEl, this.list, this.emptyEl));
  }

  async refresh() {
    const board = await get("/runners");
    this.errorEl.hidden = true;
    this._render(board);
  }

  failed(err) {
    this.errorEl.textContent = `Could not read the workers: ${err.message || err}`;
    this.errorEl.hidden = false;
  }

  _render(board) {
    const c = board.counts;
    const live = board.items.filter((r) => r.state !== "lost").length;
    this.el.querySelector(".workers-count").textContent = String(live);
    const parts = [`${c.live} live`];
    if (c.draining) parts.push(`${c.draining} draining`);
    if (c.stale) parts.push(`${c.stale} late`);
    if (c.lost) parts.push(`${c.lost} lost`);
    parts.push(`${board.busy} of ${board.capacity} slots busy`);
    this.summary.textContent = parts.join(" · ");
    this.emptyEl.hidden = board.items.length > 0;
    // Keep the keyboard focus on the same link across a refresh.
    const focused = this.list.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
    this.list.replaceChildren(...board.items.map((r) => this._card(r, board.now)));
    if (focused) this.list.querySelector(`a[href="${CSS.escape(focused)}"]`)?.focus();
  }

  _card(r, now) {
    const nowMs = new Date(now).getTime();
    const kind = r.kind === "agent" ? "agent" : r.kind ? "worker" : "";
    const slots = [];
    for (let i = 0; i < Math.max(r.capacity, r.active); i += 1) {
      slots.push(h("span", { class: `slot${i < r.active ? " busy" : ""}`, "aria-hidden": "true" }));
    }
    const beat = r.state === "lost"
      ? (r.last_seen ? `lost an attempt ${relTime(r.last_seen, nowMs)}` : "no heartbeat")
      : `heartbeat ${relTime(r.last_seen, nowMs)}`;
    return h("li", { class: "worker-card", dataset: { runnerId: r.id, state: r.state } },
      h("div", { class: "worker-head" },
        h("div", { class: "worker-title" },
          h("h3", { class: "mono" }, r.id),
          h("p", { class: "muted small" },
            [kind, r.hostname, r.pid ? `pid ${r.pid}` : null].filter(Boolean).join(" · ") || "unknown host")),
        h("span", { class: "worker-state", dataset: { state: r.state }, title: STATE_HELP[r.state] || "" },
          h("span", { class: "worker-dot", "aria-hidden": "true" }), STATE_TEXT[r.state] || r.state)),
      h("dl", { class: "worker-facts" },
        fact("Executors", r.executors.length ? r.executors.map((e) => h("span", { class: "tag" }, e)) : "—"),
        fact("Tags", r.tags.length ? r.tags.map((t) => h("span", { class: "tag" }, t)) : "none"),
        r.state === "lost"
          ? fact("Slots", `unknown · holds ${r.active} job${r.active === 1 ? "" : "s"}`)
          : fact("Slots", h("span", { class: "slots", role: "img",
            "aria-label": `${r.active} of ${r.capacity} slots busy` }, slots),
          h("span", { class: "slots-text" }, ` ${r.active}/${r.capacity} busy`)),
        fact("Last seen", h("span", { title: r.last_seen ? clockTime(r.last_seen) : "" }, beat)),
        r.lost_attempts ? fact("Lost attempts", `${r.lost_attempts} in the last hour`) : null),
      r.jobs.length
        ? h("ul", { class: "worker-jobs", "aria-label": "Current jobs" }, r.jobs.map((j) => h("li", {},
          badge(j.status),
          h("a", { href: `#/runs/${encodeURIComponent(j.id)}` }, jobTitle(j)),
          h("span", { class: "mono muted small" }, j.id.slice(0, 8)))))
        : h("p", { class: "muted small worker-idle" }, r.state === "lost" ? "Holds no job now." : "Idle."));
  }
}

function fact(label, ...value) {
  return h("div", { class: "worker-fact" }, h("dt", {}, label), h("dd", {}, ...value));
}
