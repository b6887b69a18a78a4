// Launchbay dashboard: wires the live queue link, the forms, the queue and the detail panel.
// Plain ES modules, no build step, nothing fetched from outside this server.

import { setToken, setUnauthorizedHandler, getToken } from "./api.js";
import { DetailPanel } from "./detail.js";
import { rerunFailed } from "./flow.js";
import { JobForms } from "./forms.js";
import { QueueLink } from "./live.js";
import { Pages } from "./pages.js";
import { QueueView } from "./queue.js";
import { loadVocabulary, store, TERMINAL } from "./state.js";
import { toast } from "./ui.js";

const $ = (sel) => document.querySelector(sel);
const wide = window.matchMedia("(min-width: 1100px)");

const typeTitles = {};
const link = new QueueLink();
const pages = new Pages();

const detail = new DetailPanel({
  el: $("#detail"),
  typeTitles,
  onClose: () => queue.setSelected(null),
});

const queue = new QueueView({
  list: $("#queue"),
  empty: $("#queue-empty"),
  count: $("#queue-count"),
  filter: $("#queue-filter"),
  typeTitles,
  onOpen: (id, from) => {
    queue.setSelected(id);
    detail.open(id, from);
  },
});

const forms = new JobForms({
  picker: $("#type-picker"),
  form: $("#job-form"),
  onSubmitted: (job) => {
    store.upsert(job);
    queue.highlight(job.id);
    // On a wide screen the side panel does not hide the queue, so follow the new job there.
    if (wide.matches) {
      queue.setSelected(job.id);
      detail.open(job.id, null);
    }
  },
});

// ---------------------------------------------------------------- connection pill

const CONN_TEXT = { connecting: "connecting", live: "live", reconnecting: "reconnecting" };

link.addEventListener("state", (ev) => {
  const { state, detail: why } = ev.detail;
  const pill = $("#conn");
  pill.dataset.state = state;
  pill.querySelector(".conn-text").textContent = CONN_TEXT[state] || state;
  pill.title = why || "";
  document.body.dataset.conn = state;
});

link.addEventListener("server-error", (ev) => {
  toast(`Server: ${ev.detail.error || "error"}`, "error");
});

// ---------------------------------------------------------------- stats chips

function renderStats() {
  const s = store.stats;
  if (!s) return;
  const set = (key, n) => {
    const chip = document.querySelector(`.chip[data-stat="${key}"]`);
    if (!chip) return;
    chip.querySelector(".chip-n").textContent = String(n);
    chip.dataset.zero = n ? "" : "1";
  };
  set("running", s.running ?? 0);
  set("queued", (s.queued ?? 0) + (s.claimed ?? 0));
  set("succeeded", s.succeeded ?? 0);
  set("failed", (s.failed ?? 0) + (s.timed_out ?? 0));
  set("cancelled", s.cancelled ?? 0);
  const w = s.workers || {};
  const chip = document.querySelector('.chip[data-stat="workers"]');
  chip.querySelector(".chip-n").textContent = String(w.count ?? 0);
  chip.lastChild.textContent = ` ${w.count === 1 ? "worker" : "workers"}` +
    (w.capacity ? ` · ${w.active ?? 0}/${w.capacity} busy` : "");
  chip.dataset.zero = w.count ? "" : "1";
  chip.title = w.count ? `${w.count} live worker(s), ${w.active ?? 0} of ${w.capacity ?? "?"} slots busy`
    : "No live worker: jobs wait in the queue until one starts";
}

store.addEventListener("stats", renderStats);

// The tab title counts active jobs, so a background tab still tells you something.
store.addEventListener("jobs", () => {
  let active = 0;
  for (const j of store.jobs.values()) if (!TERMINAL.has(j.status)) active += 1;
  document.title = active ? `(${active}) Launchbay` : "Launchbay";
});

// ---------------------------------------------------------------- re-runs (flow.js)

document.addEventListener("lb:open", (ev) => {
  queue.setSelected(ev.detail.id);
  detail.open(ev.detail.id, null);
});
$("#rerun-failed").addEventListener("click", (ev) => rerunFailed(ev.currentTarget));

// ---------------------------------------------------------------- clear completed

$("#clear-completed").addEventListener("click", () => {
  const ended = [...store.jobs.values()].filter((j) => TERMINAL.has(j.status)).map((j) => j.id);
  if (!ended.length) {
    toast("Nothing to clear: no ended jobs.");
    return;
  }
  link.send({ type: "clear_completed" });
  if (detail.openId && ended.includes(detail.openId)) detail.close();
  store.remove(ended);
  toast(`Cleared ${ended.length} ended job${ended.length === 1 ? "" : "s"}.`);
});

// ---------------------------------------------------------------- theme

const THEMES = ["auto", "light", "dark"];
const THEME_LABEL = { auto: "Auto", light: "Light", dark: "Dark" };

function currentTheme() {
  try {
    const t = localStorage.getItem("lb.theme");
    return THEMES.includes(t) ? t : "auto";
  } catch {
    return "auto";
  }
}

function applyTheme(mode) {
  const root = document.documentElement;
  if (mode === "auto") delete root.dataset.theme;
  else root.dataset.theme = mode;
  const btn = $("#theme-toggle");
  btn.dataset.mode = mode;
  btn.querySelector(".theme-label").textContent = THEME_LABEL[mode];
  const next = THEMES[(THEMES.indexOf(mode) + 1) % THEMES.length];
  btn.setAttribute("aria-label", `Theme: ${mode === "auto" ? "follows the system" : mode}. ` +
    `Switch to ${next === "auto" ? "the system theme" : next}`);
  btn.title = `Theme: ${THEME_LABEL[mode]} (click for ${THEME_LABEL[next]})`;
}

$("#theme-toggle").addEventListener("click", () => {
  const next = THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length];
  try {
    if (next === "auto") localStorage.removeItem("lb.theme");
    else localStorage.setItem("lb.theme", next);
  } catch {
    /* storage disabled: the choice lasts for this page */
  }
  applyTheme(next);
});

applyTheme(currentTheme());

// ---------------------------------------------------------------- token

const dialog = $("#token-dialog");
let asked = false;

setUnauthorizedHandler(() => {
  if (dialog.open || (asked && getToken())) return;
  asked = true;
  $("#token-input").value = "";
  dialog.showModal();
});

$("#token-form").addEventListener("submit", () => {
  const value = $("#token-input").value.trim();
  if (!value) return;
  setToken(value);
  asked = false;
  if (!started) {
    retryNow(); // the start was waiting for the vocabulary: ask for it again at once
    return;
  }
  link.restart();
  link._poll();
  pages.go(); // the shown page asks again, with the token
  forms.load().then(() => Object.assign(typeTitles, forms.typeTitles));
});

$("#token-cancel").addEventListener("click", () => dialog.close());

// ---------------------------------------------------------------- start

const VOCABULARY_RETRY_MS = 2000;
let started = false;
let retryNow = () => {};

// Nothing reads a job before the API's vocabulary (GET /meta) is in: it is retried until the
// API answers (it may be restarting, or waiting for the token dialog).
async function start() {
  for (;;) {
    try {
      await loadVocabulary();
      break;
    } catch {
      await new Promise((resolve) => {
        retryNow = resolve;
        setTimeout(resolve, VOCABULARY_RETRY_MS);
      });
    }
  }
  started = true;
  pages.start();
  forms.load().then(() => {
    Object.assign(typeTitles, forms.typeTitles);
    queue.render();
  });
  link.start();
  queue.render();
}

start();

// For tests and for people poking at the page from the console.
window.launchbay = { store, link, detail, queue, forms };
