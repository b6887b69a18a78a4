// The live queue: one WebSocket to /api/v1/ws/queue, reconnecting by itself.
//
// While the socket is down the page polls GET /jobs and /stats every 2 s, so it is never
// dead, and the header says "reconnecting". When the socket comes back, the server's
// queue_state snapshot replaces what we had, which is how the page learns what it missed.

import { get, wsUrl } from "./api.js";
import { ACTIVE, store } from "./state.js";

const POLL_MS = 2000;
const PING_MS = 20000;
const PONG_TIMEOUT_MS = 8000;
const BACKOFF_MS = [250, 500, 1000, 2000, 3000, 5000];

export class QueueLink extends EventTarget {
  constructor() {
    super();
    this.ws = null;
    this.state = "connecting"; // connecting | live | reconnecting
    this.failures = 0;
    this.everLive = false;
    this._pollTimer = null;
    this._retryTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
  }

  start() {
    this._poll(); // fill the page at once, whatever the socket does
    this._connect();
  }

  /** Send a client command if the socket is open; returns whether it was sent. */
  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  /** Drop the socket and connect again now (e.g. after a token was entered). */
  restart() {
    this.failures = 0;
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
      this.ws = null;
    }
    clearTimeout(this._retryTimer);
    this._connect();
  }

  _setState(state, detail) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, detail } }));
  }

  _connect() {
    clearTimeout(this._retryTimer);
    let ws;
    try {
      ws = new WebSocket(wsUrl("/ws/queue"));
    } catch {
      this._scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.failures = 0;
      this.everLive = true;
      this._stopPolling();
      this._setState("live", "Live updates over WebSocket");
      this._startPing();
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this._handle(msg);
    };
    ws.onclose = () => {
      this._stopPing();
      if (this.ws === ws) this.ws = null;
      this._setState("reconnecting", this.everLive
        ? "Live connection lost; polling every 2 s while reconnecting"
        : "Live connection not available yet; polling every 2 s while retrying");
      this._startPolling();
      this._scheduleRetry();
    };
    // onerror is always followed by onclose, which does the work.
    ws.onerror = () => {};
  }

  _scheduleRetry() {
    const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
    this.failures += 1;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  _startPing() {
    this._stopPing();
    this._pingTimer = setInterval(() => {
      if (!this.send({ type: "ping" })) return;
      clearTimeout(this._pongTimer);
      // A socket that stops answering is dead even if the browser has not noticed.
      this._pongTimer = setTimeout(() => this.ws && this.ws.close(), PONG_TIMEOUT_MS);
    }, PING_MS);
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
  }

  _handle(msg) {
    switch (msg.type) {
      case "queue_state":
        store.replaceAll(msg.jobs || []);
        store.setStats(msg.stats);
        return;
      case "stats_update":
        store.setStats(msg.stats);
        return;
      case "pong":
        clearTimeout(this._pongTimer);
        return;
      case "cleared":
        store.remove(msg.job_ids || []);
        return;
      case "error":
        this.dispatchEvent(new CustomEvent("server-error", { detail: msg }));
        return;
      case "job_started":
        this._patchOrFetch(msg, { status: "running", started_at: msg.started_at });
        return;
      case "job_progress":
        this._patchOrFetch(msg, {
          progress: { percent: msg.percent, message: msg.message ?? "" },
        });
        return;
      case "job_completed":
        this._patchOrFetch(msg, {
          status: "succeeded",
          result: msg.result,
          progress: { percent: 100, message: store.jobs.get(msg.job_id)?.progress?.message ?? "" },
        }, true);
        return;
      case "job_failed":
        this._patchOrFetch(msg, { status: msg.status || "failed", error: msg.error }, true);
        return;
      case "job_cancelled":
        this._patchOrFetch(msg, { status: "cancelled" }, true);
        return;
      default:
        // job_created, job_updated, ack … : any message that carries a whole job is the truth.
        if (msg.job && msg.job.id) store.upsert(msg.job);
    }
  }

  /**
   * Apply the fields a job_* message carries; fetch the whole job when it is one we do not
   * know, or when the message ends it (finished_at, duration, exit code come only that way).
   * Any message that carries a full job is authoritative.
   */
  _patchOrFetch(msg, fields, refetch = false) {
    if (msg.job && msg.job.id) {
      store.upsert(msg.job);
      return;
    }
    const id = msg.job_id;
    if (!id) return;
    const known = store.jobs.has(id);
    if (known) store.patch(id, fields);
    if (!known || refetch) refreshJob(id);
  }

  _startPolling() {
    if (this._pollTimer) return;
    this._pollTimer = setInterval(() => this._poll(), POLL_MS);
  }

  _stopPolling() {
    clearInterval(this._pollTimer);
    this._pollTimer = null;
  }

  async _poll() {
    try {
      const statuses = [...ACTIVE].map((s) => `status=${encodeURIComponent(s)}&`).join("");
      const [recent, active, stats] = await Promise.all([
        get("/jobs?limit=100"),
        get(`/jobs?${statuses}limit=200`),
        get("/stats"),
      ]);
      store.mergeMany([...(recent?.items || []), ...(active?.items || [])]);
      store.setStats(stats);
      this.dispatchEvent(new CustomEvent("poll", { detail: { ok: true } }));
    } catch (err) {
      this.dispatchEvent(new CustomEvent("poll", { detail: { ok: false, err } }));
    }
  }
}

/** Fetch one job and merge it; errors are quiet (the next event or poll will try again). */
export async function refreshJob(id) {
  try {
    store.upsert(await get(`/jobs/${encodeURIComponent(id)}`));
  } catch {
    /* the API may be restarting; the reconnect snapshot will bring it */
  }
}
