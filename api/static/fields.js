// Form fields built from a parameter schema, their custom checks, and the argv splitter.

import { h } from "./ui.js";

// ---------------------------------------------------------------- fields

export function artifactsField() {
  return field({
    name: "artifacts", label: "Artifacts", placeholder: "out.txt, reports/*.json",
    help: "Files to keep when the job ends: globs relative to its workspace, comma separated.",
    mono: true,
  });
}

export function humanize(name) {
  const s = name.replace(/_/g, " ").replace(/\burl(s?)\b/gi, "URL$1").replace(/\bid\b/gi, "ID");
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** One labelled input with a help line and an error slot. */
export function field(opts) {
  const id = opts.id || `f-${opts.name}`;
  const helpId = `${id}-help`;
  const errId = `${id}-err`;
  const common = {
    id,
    name: opts.name,
    required: !!opts.required,
    placeholder: opts.placeholder,
    "aria-describedby": `${opts.help ? `${helpId} ` : ""}${errId}`,
    class: opts.mono ? "mono" : undefined,
    dataset: opts.dataset,
  };
  let input;
  if (opts.type === "textarea") {
    input = h("textarea", { ...common, rows: opts.rows || 4, spellcheck: "false" });
    if (opts.value !== undefined && opts.value !== null) input.value = opts.value;
  } else {
    input = h("input", {
      ...common,
      type: opts.type || "text",
      min: opts.min,
      max: opts.max,
      step: opts.step,
      maxlength: opts.maxlength,
      inputmode: opts.inputmode,
      value: opts.value,
      spellcheck: opts.mono ? "false" : undefined,
    });
  }
  if (opts.argv) input.dataset.argv = "";
  const label = h("label", { for: id, class: "field-label" }, opts.label,
    opts.required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null,
    opts.range ? h("span", { class: "range", text: opts.range }) : null);
  return h("div", { class: "field" },
    label,
    input,
    opts.argv ? h("code", { class: "argv-preview", "aria-label": "argv preview" }) : null,
    opts.help ? h("p", { class: "field-help", id: helpId, text: opts.help }) : null,
    h("p", { class: "field-error", id: errId, "aria-live": "polite" }));
}

/** A field for one job-type parameter, from its schema. */
export function paramField(p) {
  const opts = {
    name: p.name,
    label: humanize(p.name),
    required: !!p.required,
    help: p.description,
    value: p.default,
  };
  if (p.type === "integer" || p.type === "number") {
    Object.assign(opts, {
      type: "number",
      min: p.min,
      max: p.max,
      step: p.type === "integer" ? 1 : "any",
      inputmode: p.type === "integer" ? "numeric" : "decimal",
      range: p.min !== undefined && p.max !== undefined ? `${p.min}–${p.max}` : undefined,
    });
  } else if (p.type === "array") {
    const many = p.max_items ? `up to ${p.max_items}, ` : "";
    Object.assign(opts, {
      type: "textarea",
      rows: Math.min(6, Math.max(3, p.max_items || 4)),
      value: Array.isArray(p.default) ? p.default.join("\n") : undefined,
      placeholder: /url/i.test(p.name) ? "https://example.com\nhttps://example.org" : "one per line",
      range: `${many}one per line`,
      mono: true,
      dataset: { kind: "array", maxItems: p.max_items ?? "", items: p.items ?? "string" },
    });
  }
  return field(opts);
}

export function readParam(p, el) {
  if (!el) return undefined;
  const raw = el.value;
  if (p.type === "array") {
    const items = raw.split("\n").map((s) => s.trim()).filter(Boolean);
    if (!items.length) return undefined;
    return p.items === "integer" || p.items === "number" ? items.map(Number) : items;
  }
  if (raw.trim() === "") return undefined;
  if (p.type === "integer") return parseInt(raw, 10);
  if (p.type === "number") return parseFloat(raw);
  return raw;
}

/** Checks the browser has no attribute for: list sizes, URL lists, argv that will not split. */
export function checkCustom(el) {
  if (el.dataset.serverError) return; // keep the server's word until the user edits
  let msg = "";
  if (el.dataset.kind === "array") {
    const items = el.value.split("\n").map((s) => s.trim()).filter(Boolean);
    const max = Number(el.dataset.maxItems || 0);
    if (max && items.length > max) msg = `At most ${max} items (one per line); you have ${items.length}.`;
    else if (/url/i.test(el.name)) {
      const bad = items.find((u) => !/^https?:\/\/[^\s/]+/i.test(u));
      if (bad) msg = `Not an http(s) URL: ${bad}`;
    }
  } else if (el.dataset.argv !== undefined && el.value.trim()) {
    try {
      if (!splitArgs(el.value).length) msg = "Enter a command.";
    } catch (err) {
      msg = err.message;
    }
  }
  el.setCustomValidity(msg);
}

export function showFieldError(el, message) {
  const slot = document.getElementById(`${el.id}-err`);
  if (slot) slot.textContent = message || "";
  el.toggleAttribute("aria-invalid", !!message);
  el.closest(".field")?.classList.toggle("has-error", !!message);
}

export function updateArgvPreview(el) {
  const out = el.parentElement.querySelector(".argv-preview");
  if (!out) return;
  try {
    const argv = splitArgs(el.value);
    out.textContent = argv.length ? JSON.stringify(argv) : "";
    out.hidden = !argv.length;
  } catch {
    out.hidden = true;
  }
}

/**
 * Split a command line into argv the way a POSIX shell would split words: whitespace
 * separates, '…' is literal, "…" allows \" \\ \$ \`, a backslash escapes one character.
 * No expansion of any kind happens — the API receives a list and never runs a shell.
 */
export function splitArgs(line) {
  const out = [];
  let cur = "";
  let inWord = false;
  let quote = null;
  for (let i = 0; i < line.length; i += 1) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = null;
      else cur += c;
    } else if (quote === '"') {
      if (c === '"') quote = null;
      else if (c === "\\" && i + 1 < line.length && '"\\$`'.includes(line[i + 1])) cur += line[++i];
      else cur += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      inWord = true;
    } else if (c === "\\" && i + 1 < line.length) {
      cur += line[++i];
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) out.push(cur);
      cur = "";
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (quote) throw new Error(`Unclosed ${quote === "'" ? "single" : "double"} quote.`);
  if (inWord) out.push(cur);
  return out;
}
