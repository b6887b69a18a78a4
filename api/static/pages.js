// The dashboard's pages, chosen by the URL's hash: the overview (#/, the live queue with its
// charts), Runs (#/runs?filters), one run (#/runs/<id>) and Workers (#/workers). Each page
// polls only while it is shown.

import { OverviewCharts } from "./charts.js";
import { RunsPage } from "./runs.js";
import { RunView } from "./runview.js";
import { WorkersPage } from "./workers.js";

const $ = (sel) => document.querySelector(sel);

/** Which page a hash names: {page, id?, query?}. */
export function route(hash) {
  const path = (hash || "").replace(/^#\/?/, "");
  const [head, query = ""] = path.split("?", 2);
  const parts = head.split("/").filter(Boolean);
  if (parts[0] === "runs" && parts[1]) return { page: "run", id: decodeURIComponent(parts[1]) };
  if (parts[0] === "runs") return { page: "runs", query };
  if (parts[0] === "workers") return { page: "workers" };
  return { page: "overview" };
}

export class Pages {
  constructor() {
    this.overview = [$("#layout"), $("#overview-charts")];
    this.charts = new OverviewCharts({ el: $("#overview-charts") });
    this.runs = new RunsPage({ el: $("#page-runs") });
    this.run = new RunView({ el: $("#page-run") });
    this.workers = new WorkersPage({ el: $("#page-workers") });
    this.current = null;
    window.addEventListener("hashchange", () => this.go());
  }

  start() {
    this.go();
  }

  go() {
    const r = route(window.location.hash);
    const page = r.page;
    document.body.dataset.page = page;
    for (const el of this.overview) el.hidden = page !== "overview";
    $("#page-runs").hidden = page !== "runs";
    $("#page-run").hidden = page !== "run";
    $("#page-workers").hidden = page !== "workers";
    for (const a of document.querySelectorAll(".pages-nav a")) {
      const mine = a.dataset.page === page || (page === "run" && a.dataset.page === "runs");
      if (mine) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (page !== "overview") this.charts.hide();
    if (page !== "runs") this.runs.hide();
    if (page !== "run") this.run.hide();
    if (page !== "workers") this.workers.hide();
    if (page === "overview") this.charts.show();
    else if (page === "runs") this.runs.show(r.query);
    else if (page === "run") this.run.show(r.id);
    else this.workers.show();
    if (this.current !== null && this.current !== page) window.scrollTo(0, 0);
    this.current = page;
  }
}
