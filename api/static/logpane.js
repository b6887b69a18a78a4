// A log pane that stays smooth at any length: only the lines in view (plus a margin) are in
// the DOM; a spacer gives the scrollbar the whole log's height. Lines keep one height (no
// wrapping; long lines scroll sideways), so line i sits at i × height.
//
// ANSI colours render through ansi.js; the style a line ends with carries to the next, so the
// pane keeps the style in force at the start of each line that needs one (a sparse map).

import { endStyle, hasEscapes, lineNodes, PLAIN, stripAnsi } from "./ansi.js";
import { h } from "./ui.js";

const OVERSCAN = 30; // lines drawn above and below the view
const FOLLOW_SLACK_PX = 4;

export class LogPane {
  /** ``label``: the accessible name; ``empty``: what to show before any line arrives. */
  constructor({ label = "Log", empty = "No log lines yet." } = {}) {
    this.lines = []; // strings
    this.stderr = new Set(); // indexes of stderr lines
    this.steps = new Map(); // index -> step name, for lines of a named step
    this.styles = new Map(); // index -> style in force at the line's start (non-plain only)
    this.tailStyle = PLAIN;
    this.follow = true;
    this.lineHeight = 0;
    this._frame = 0;
    this._drawn = [-1, -1, -1];

    this.spacer = h("div", { class: "logpane-spacer" });
    this.win = h("div", { class: "logpane-lines" });
    this.emptyEl = h("p", { class: "logpane-empty muted" }, empty);
    this.el = h("div", {
      class: "logpane", tabindex: "0", role: "log", "aria-label": label,
      dataset: { lines: "0", follow: "1" },
    }, this.spacer, this.win, this.emptyEl);
    this.el.addEventListener("scroll", () => {
      this.follow = this._atBottom();
      this.el.dataset.follow = this.follow ? "1" : "";
      this._schedule();
    }, { passive: true });
    new ResizeObserver(() => this._schedule(true)).observe(this.el);
  }

  get length() {
    return this.lines.length;
  }

  clear() {
    this.lines = [];
    this.stderr.clear();
    this.steps.clear();
    this.styles.clear();
    this.tailStyle = PLAIN;
    this.follow = true;
    this._resize();
  }

  /** Add lines: strings, or ``{line, stream, step}`` records of the logs API. */
  append(items) {
    if (!items.length) return;
    for (const it of items) {
      const text = typeof it === "string" ? it : String(it.line ?? "");
      const i = this.lines.length;
      if (this.tailStyle !== PLAIN) this.styles.set(i, this.tailStyle);
      if (hasEscapes(text)) this.tailStyle = endStyle(text, this.tailStyle);
      this.lines.push(text);
      if (typeof it === "object" && it) {
        if (it.stream === "stderr") this.stderr.add(i);
        if (it.step) this.steps.set(i, it.step);
      }
    }
    this._resize();
  }

  /** Scroll to the last line and keep following new ones. */
  scrollToEnd() {
    this.follow = true;
    this.el.dataset.follow = "1";
    this.el.scrollTop = this.el.scrollHeight;
    this._schedule(true);
  }

  /** The whole log as plain text (escapes removed). */
  text() {
    return this.lines.map(stripAnsi).join("\n");
  }

  // ---------------------------------------------------------------- drawing

  _atBottom() {
    const el = this.el;
    return el.scrollTop + el.clientHeight >= el.scrollHeight - FOLLOW_SLACK_PX;
  }

  _measure() {
    if (this.lineHeight) return this.lineHeight;
    const probe = h("div", { class: "logpane-line" }, "Mg");
    this.win.append(probe);
    this.lineHeight = probe.getBoundingClientRect().height || 0;
    probe.remove();
    return this.lineHeight;
  }

  _resize() {
    const n = this.lines.length;
    this.el.dataset.lines = String(n);
    this.emptyEl.hidden = n > 0;
    const lh = this._measure();
    this.spacer.style.height = `${n * lh}px`;
    if (this.follow) this.el.scrollTop = this.el.scrollHeight;
    this._schedule(true);
  }

  _schedule(force = false) {
    if (force) this._drawn = [-1, -1, -1];
    if (this._frame) return;
    this._frame = requestAnimationFrame(() => {
      this._frame = 0;
      this._draw();
    });
  }

  _draw() {
    const lh = this._measure();
    if (!lh) return; // not laid out yet (hidden): the ResizeObserver calls again
    if (this.follow) this.el.scrollTop = this.el.scrollHeight;
    const n = this.lines.length;
    const top = this.el.scrollTop;
    const first = Math.max(0, Math.floor(top / lh) - OVERSCAN);
    const last = Math.min(n, Math.ceil((top + this.el.clientHeight) / lh) + OVERSCAN);
    if (this._drawn[0] === first && this._drawn[1] === last && this._drawn[2] === n) return;
    this._drawn = [first, last, n];
    const rows = [];
    for (let i = first; i < last; i += 1) rows.push(this._line(i));
    this.win.style.transform = `translateY(${first * lh}px)`;
    this.win.replaceChildren(...rows);
    this.el.dataset.first = String(first);
    this.el.dataset.last = String(last);
  }

  _line(i) {
    const { nodes } = lineNodes(this.lines[i], this.styles.get(i) || PLAIN);
    const step = this.steps.get(i);
    return h("div", {
      class: `logpane-line${this.stderr.has(i) ? " stderr" : ""}`,
      dataset: { n: String(i + 1) },
    }, step ? h("span", { class: "log-step" }, `${step} `) : null, nodes);
  }
}
