// ANSI SGR colours for log lines: "\x1b[1;31m" and friends become styled spans.
//
// Only SGR sequences (ESC [ … m) are understood; every other escape or control sequence is
// dropped, and all text goes into text nodes (never markup), so a log cannot inject HTML.
// The style in force at a line's end carries to the next line, as in a terminal.

// ESC [ params final-byte (CSI), ESC ] … BEL/ST (OSC), a lone ESC + one char, or a C0
// control other than tab.
// eslint-disable-next-line no-control-regex
const ESCAPES = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[^[\]]?|[\x00-\x08\x0b-\x1f\x7f]/g;

/** The style of plain text. Styles are immutable: parsing returns new ones. */
export const PLAIN = Object.freeze({});

const isPlain = (s) => s === PLAIN || Object.keys(s).length === 0;

/** True when ``text`` may hold an escape or control character worth parsing. */
export function hasEscapes(text) {
  // eslint-disable-next-line no-control-regex
  return /[\x00-\x08\x0b-\x1f\x7f]/.test(text);
}

// The 256-colour palette past the 16 named ones: a 6×6×6 cube, then 24 greys.
function xterm256(n) {
  if (n < 16) return null;
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `rgb(${v}, ${v}, ${v})`;
  }
  const i = n - 16;
  const c = (k) => (k === 0 ? 0 : 55 + k * 40);
  return `rgb(${c(Math.floor(i / 36))}, ${c(Math.floor(i / 6) % 6)}, ${c(i % 6)})`;
}

// Extended colour (38/48 ; 5 ; n  or  38/48 ; 2 ; r ; g ; b) starting at codes[i]:
// [value, codes consumed]. A value is a palette index 0–15 (a named colour) or a CSS colour.
function extended(codes, i) {
  if (codes[i + 1] === 5 && codes.length > i + 2) {
    const n = codes[i + 2];
    if (!(n >= 0 && n <= 255)) return [null, 2];
    return [n < 16 ? n : xterm256(n), 2];
  }
  if (codes[i + 1] === 2 && codes.length > i + 4) {
    const [r, g, b] = codes.slice(i + 2, i + 5).map((v) => Math.max(0, Math.min(255, v || 0)));
    return [`rgb(${r}, ${g}, ${b})`, 4];
  }
  return [null, 0];
}

/** Apply one SGR parameter list (``"1;31"``) to ``style``; the new style. */
export function applySgr(style, params) {
  const codes = params === "" ? [0] : params.split(/[;:]/).map((p) => (p === "" ? 0 : Number(p)));
  let s = { ...style };
  for (let i = 0; i < codes.length; i += 1) {
    const c = codes[i];
    if (c === 0) s = {};
    else if (c === 1) s.bold = true;
    else if (c === 2) s.dim = true;
    else if (c === 3) s.italic = true;
    else if (c === 4) s.underline = true;
    else if (c === 7) s.inverse = true;
    else if (c === 9) s.strike = true;
    else if (c === 22) { delete s.bold; delete s.dim; }
    else if (c === 23) delete s.italic;
    else if (c === 24) delete s.underline;
    else if (c === 27) delete s.inverse;
    else if (c === 29) delete s.strike;
    else if (c >= 30 && c <= 37) s.fg = c - 30;
    else if (c >= 90 && c <= 97) s.fg = c - 90 + 8;
    else if (c === 39) delete s.fg;
    else if (c >= 40 && c <= 47) s.bg = c - 40;
    else if (c >= 100 && c <= 107) s.bg = c - 100 + 8;
    else if (c === 49) delete s.bg;
    else if (c === 38 || c === 48) {
      const [value, used] = extended(codes, i);
      if (value !== null) s[c === 38 ? "fg" : "bg"] = value;
      i += used;
    }
  }
  return Object.keys(s).length ? Object.freeze(s) : PLAIN;
}

/**
 * Split one line into styled runs: ``{ runs: [{text, style}], end: style }``.
 * ``start`` is the style in force when the line begins (from the line before).
 */
export function parseLine(text, start = PLAIN) {
  const runs = [];
  let style = start;
  let last = 0;
  ESCAPES.lastIndex = 0;
  for (let m = ESCAPES.exec(text); m; m = ESCAPES.exec(text)) {
    if (m.index > last) runs.push({ text: text.slice(last, m.index), style });
    if (m[2] === "m") style = applySgr(style, m[1]);
    last = ESCAPES.lastIndex;
  }
  if (last < text.length) runs.push({ text: text.slice(last), style });
  return { runs, end: style };
}

/** The style in force after ``text``, without building runs (for lines not on screen). */
export function endStyle(text, start = PLAIN) {
  let style = start;
  ESCAPES.lastIndex = 0;
  for (let m = ESCAPES.exec(text); m; m = ESCAPES.exec(text)) {
    if (m[2] === "m") style = applySgr(style, m[1]);
  }
  return style;
}

/** Text with every escape and control sequence removed (for copying and searching). */
export function stripAnsi(text) {
  return hasEscapes(text) ? text.replace(ESCAPES, "") : text;
}

function styledSpan(run) {
  const span = document.createElement("span");
  const s = run.style;
  const cls = [];
  let { fg, bg } = s;
  if (s.inverse) [fg, bg] = [bg ?? "default-bg", fg ?? "default-fg"];
  if (typeof fg === "number") cls.push(`ansi-fg-${fg}`);
  else if (fg === "default-fg") cls.push("ansi-fg-inv");
  else if (fg) span.style.color = fg;
  if (typeof bg === "number") cls.push(`ansi-bg-${bg}`);
  else if (bg === "default-bg") cls.push("ansi-bg-inv");
  else if (bg) span.style.backgroundColor = bg;
  if (s.bold) cls.push("ansi-bold");
  if (s.dim) cls.push("ansi-dim");
  if (s.italic) cls.push("ansi-italic");
  if (s.underline) cls.push("ansi-underline");
  if (s.strike) cls.push("ansi-strike");
  if (cls.length) span.className = cls.join(" ");
  span.textContent = run.text;
  return span;
}

/** Nodes for one line: text nodes for plain runs, spans for styled ones. */
export function lineNodes(text, start = PLAIN) {
  if (isPlain(start) && !hasEscapes(text)) return { nodes: [document.createTextNode(text)], end: PLAIN };
  const { runs, end } = parseLine(text, start);
  const nodes = runs.map((r) => (isPlain(r.style) ? document.createTextNode(r.text) : styledSpan(r)));
  return { nodes, end };
}
