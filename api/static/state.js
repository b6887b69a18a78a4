// The page's model of the queue: jobs by id and the latest stats, and the API's vocabulary.
//
// Every source (queue WebSocket, job SSE stream, polling, our own POSTs) writes here; views
// listen for "jobs" and "stats" events and redraw what changed.

import { get } from "./api.js";

// The API's names for things, from GET /meta (filled by loadVocabulary before the page
// starts): statuses in lifecycle order, the ones a job ends in, and the rest (active).
export const STATUSES = [];
export const TERMINAL = new Set();
export const ACTIVE = new Set();
export const vocabulary = { executors: [], eventTypes: [], streamEndEvents: [] };

/** Read the vocabulary from the API; rejects (with HttpError or TypeError) if it cannot. */
export async function loadVocabulary() {
  const meta = await get("/meta");
  STATUSES.splice(0, STATUSES.length, ...meta.statuses);
  TERMINAL.clear();
  for (const s of meta.terminal_statuses) TERMINAL.add(s);
  ACTIVE.clear();
  for (const s of STATUSES) if (!TERMINAL.has(s)) ACTIVE.add(s);
  vocabulary.executors = meta.executors;
  vocabulary.eventTypes = meta.event_types;
  vocabulary.streamEndEvents = meta.stream_end_events;
}

// A job only moves forward through the statuses; every end ranks the same.
const rank = (s) => (TERMINAL.has(s) ? STATUSES.length : Math.max(0, STATUSES.indexOf(s)));

export const isTerminal = (job) => TERMINAL.has(job.status);
export const isActive = (job) => ACTIVE.has(job.status);

class Store extends EventTarget {
  constructor() {
    super();
    this.jobs = new Map();
    this.stats = null;
    // Ended jobs the user cleared: kept out even if a poll still lists them.
    this.cleared = new Set();
  }

  _emit(type, ids) {
    this.dispatchEvent(new CustomEvent(type, { detail: { ids } }));
  }

  /** Merge a full job object. A late, older snapshot cannot move a job backwards. */
  upsert(job, { emit = true } = {}) {
    if (!job || !job.id || this.cleared.has(job.id)) return false;
    const cur = this.jobs.get(job.id);
    if (cur && (job.attempt ?? 1) === (cur.attempt ?? 1) && rank(job.status) < rank(cur.status)) {
      return false;
    }
    if (cur && (job.attempt ?? 1) < (cur.attempt ?? 1)) return false;
    this.jobs.set(job.id, { ...cur, ...job });
    if (emit) this._emit("jobs", [job.id]);
    return true;
  }

  /** Change some fields of a known job (from a job_* event that carries only a few). */
  patch(id, fields) {
    const cur = this.jobs.get(id);
    if (!cur) return false;
    if (fields.status && rank(fields.status) < rank(cur.status)) return false;
    if (isTerminal(cur) && fields.progress) return false;
    this.jobs.set(id, { ...cur, ...fields });
    this._emit("jobs", [id]);
    return true;
  }

  /** Replace the whole set (the queue_state snapshot is authoritative). */
  replaceAll(jobs) {
    const next = new Map();
    for (const j of jobs) {
      if (!this.cleared.has(j.id)) next.set(j.id, j);
    }
    this.jobs = next;
    this._emit("jobs", null);
  }

  /** Merge a polled page without dropping jobs the page does not include. */
  mergeMany(jobs) {
    const changed = [];
    for (const j of jobs) if (this.upsert(j, { emit: false })) changed.push(j.id);
    if (changed.length) this._emit("jobs", changed);
  }

  remove(ids) {
    for (const id of ids) {
      this.jobs.delete(id);
      this.cleared.add(id);
    }
    this._emit("jobs", null);
  }

  setStats(stats) {
    if (!stats) return;
    this.stats = stats;
    this._emit("stats", null);
  }
}

export const store = new Store();
