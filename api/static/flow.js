// Re-runs from the dashboard (issue 14): one ended job again (the detail panel's Re-run
// button), or every failed job (the queue's "Re-run failed" button). A new job opens in
// the detail panel through the "lb:open" event (app.js).

import { HttpError, post } from "./api.js";
import { store } from "./state.js";
import { shortId, toast } from "./ui.js";

function why(err) {
  return err instanceof HttpError ? err.message : `could not reach the API (${err.message})`;
}

export async function rerunJob(id, button) {
  if (button) button.disabled = true;
  try {
    const job = await post(`/jobs/${encodeURIComponent(id)}/rerun`);
    store.upsert(job);
    toast(`Re-running ${shortId(id)} as ${shortId(job.id)}.`);
    document.dispatchEvent(new CustomEvent("lb:open", { detail: { id: job.id } }));
  } catch (err) {
    toast(`Re-run failed: ${why(err)}`, "error");
  } finally {
    if (button) button.disabled = false;
  }
}

export async function rerunFailed(button) {
  if (button) button.disabled = true;
  try {
    const done = await post("/jobs/rerun", { status: ["failed"] });
    for (const job of done.items) store.upsert(job);
    toast(done.count ? `Re-queued ${done.count} failed job${done.count === 1 ? "" : "s"}.`
      : "No failed jobs to re-run.");
  } catch (err) {
    toast(`Re-run failed: ${why(err)}`, "error");
  } finally {
    if (button) button.disabled = false;
  }
}

// The API says why a queued job waits when it is read (GET); events carry no reason, so
// the last one read is kept for as long as the job waits in the same spell: the same
// attempt and the same due time. A job can leave the queue and come back (a retry) without
// this tab seeing it leave (a reconnect's snapshot, a coalesced feed), so a reason read in
// an earlier spell is never shown for a later one.
const reasons = new Map();

function spell(job) {
  return `${job.attempt ?? 1} ${job.not_before ?? ""}`;
}

function reasonOf(job) {
  if (job.status !== "queued") {
    reasons.delete(job.id);
    return null;
  }
  if (job.waiting) reasons.set(job.id, { spell: spell(job), waiting: job.waiting });
  const kept = reasons.get(job.id);
  return kept && kept.spell === spell(job) ? kept.waiting : null;
}

/** Why a queued job waits, as the API names it (a queued job with a delay and no word
 * from the API yet is a retry's backoff). */
export function waitingReason(job) {
  return reasonOf(job)?.reason || (job.not_before ? "backoff" : "");
}

/** Why a queued job waits, in a sentence (the API's machine-readable ``waiting``). */
export function waitingText(job) {
  return reasonOf(job)?.message || "";
}
