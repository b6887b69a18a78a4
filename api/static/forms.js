// The job-type picker and the forms generated from each type's parameter schema.
//
// Inputs are named exactly as the parameters (name="seconds") and carry type, min, max,
// step, required and the default, so the browser's constraint validation checks them
// before anything is sent. The server's 422 answer is shown next to the field it names.

import { HttpError, get, post } from "./api.js";
import {
  artifactsField, checkCustom, field, paramField, readParam, showFieldError, splitArgs,
  updateArgvPreview,
} from "./fields.js";
import { vocabulary } from "./state.js";
import { h, toast } from "./ui.js";

const CUSTOM_KINDS = [
  {
    name: "process",
    title: "Process",
    description: "Run a command on a worker host, as an argv list (no shell).",
  },
  {
    name: "docker",
    title: "Docker",
    description: "Run one command in a container image, with CPU and memory limits.",
  },
];

export class JobForms {
  /** ``onSubmitted(job)`` is called with the created job. */
  constructor({ picker, form, onSubmitted }) {
    this.picker = picker;
    this.form = form;
    this.onSubmitted = onSubmitted;
    this.types = [];
    this.selected = null;
    this.typeTitles = {};
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this._submit();
    });
    form.addEventListener("input", (ev) => this._onInput(ev.target));
    form.addEventListener("focusout", (ev) => {
      const el = ev.target;
      if (!(el instanceof HTMLInputElement || el instanceof HTMLTextAreaElement)) return;
      if (!el.value && !el.dataset.touched) return; // leaving an empty field is not an error yet
      el.dataset.touched = "1";
      checkCustom(el);
      showFieldError(el, el.validity.valid ? "" : el.validationMessage);
    });
  }

  async load() {
    try {
      this.types = (await get("/job-types")) || [];
    } catch (err) {
      this.types = [];
      this.picker.replaceChildren(h("p", { class: "field-error" },
        `Could not load job types: ${err.message}`));
    }
    for (const t of this.types) this.typeTitles[t.name] = t.title || t.name;
    this._renderPicker();
    const first = this.types[0]?.name || "process";
    this.select(this.selected || first);
  }

  _renderPicker() {
    const button = (kind, group) => h("button", {
      type: "button",
      class: "type-btn",
      "aria-pressed": "false",
      dataset: { kind: kind.name, group },
      title: kind.description || "",
      onclick: () => this.select(kind.name),
    }, h("span", { class: "type-title", text: kind.title || kind.name }));

    const builtins = this.types.map((t) => button(t, "builtin"));
    this.picker.replaceChildren(
      h("p", { class: "picker-label", id: "picker-builtin" }, "Built-in"),
      h("div", { class: "type-grid", role: "group", "aria-labelledby": "picker-builtin" }, builtins),
      h("p", { class: "picker-label", id: "picker-custom" }, "Your own"),
      h("div", { class: "type-grid", role: "group", "aria-labelledby": "picker-custom" },
        // Only the forms of executors this API knows.
        CUSTOM_KINDS.filter((k) => vocabulary.executors.includes(k.name))
          .map((k) => button(k, "custom"))),
    );
  }

  select(name) {
    this.selected = name;
    for (const b of this.picker.querySelectorAll(".type-btn")) {
      b.setAttribute("aria-pressed", String(b.dataset.kind === name));
    }
    const type = this.types.find((t) => t.name === name);
    if (type) this._renderBuiltin(type);
    else if (name === "docker") this._renderDocker();
    else this._renderProcess();
  }

  // ---------------------------------------------------------------- rendering

  _renderBuiltin(type) {
    const params = (type.params || []).map((p) => paramField(p));
    this._renderForm(type.title || type.name, type.description, "builtin",
      params.length ? params : [h("p", { class: "muted small" }, "This job type takes no parameters.")]);
  }

  _renderProcess() {
    const kind = CUSTOM_KINDS[0];
    this._renderForm(kind.title, kind.description, "process", [
      field({
        name: "command", label: "Command", required: true,
        placeholder: "python3 -c \"print('hello')\"",
        help: "Split into arguments like a shell would (quotes group words); never run by a shell.",
        mono: true, argv: true,
      }),
      artifactsField(),
    ]);
  }

  _renderDocker() {
    const kind = CUSTOM_KINDS[1];
    this._renderForm(kind.title, kind.description, "docker", [
      field({ name: "image", label: "Image", required: true, placeholder: "busybox:latest", mono: true }),
      field({
        name: "command", label: "Command", required: true, placeholder: "sh -c 'echo hi > out.txt'",
        help: "argv of the one step, split like a shell would.", mono: true, argv: true,
      }),
      artifactsField(),
      h("div", { class: "field-row" },
        field({ name: "cpu", label: "CPUs", type: "number", min: 0.1, max: 64, step: 0.1, placeholder: "1" }),
        field({ name: "memory_mb", label: "Memory (MiB)", type: "number", min: 4, max: 262144, step: 1, placeholder: "256" }),
      ),
    ]);
  }

  _renderForm(title, description, executor, fields) {
    this.form.dataset.executor = executor;
    const options = h("details", { class: "options" },
      h("summary", {}, "Options"),
      h("fieldset", { class: "fields", dataset: { group: "spec" } },
        h("legend", { class: "sr-only" }, "Job options"),
        field({ id: "opt-name", name: "name", label: "Job name", placeholder: "optional", maxlength: 200 }),
        field({
          id: "opt-timeout_s", name: "timeout_s", label: "Timeout (s)", type: "number", min: 1, step: "any",
          placeholder: "none", help: "Stop the job after this many seconds.",
        }),
      ));
    this.form.replaceChildren(
      h("div", { class: "form-intro" },
        h("h3", { class: "form-title", text: title }),
        description ? h("p", { class: "muted small", text: description }) : null),
      h("fieldset", { class: "fields", dataset: { group: executor === "builtin" ? "params" : "spec" } },
        h("legend", { class: "sr-only" }, `${title} parameters`), fields),
      options,
      h("p", { class: "form-error", role: "alert", hidden: true }),
      h("div", { class: "form-actions" },
        h("button", { type: "submit", class: "btn btn-primary", id: "submit-job" },
          h("span", { class: "btn-label" }, "Submit"))),
    );
    for (const el of this.form.querySelectorAll("[data-argv]")) updateArgvPreview(el);
  }

  // ---------------------------------------------------------------- validation

  _onInput(el) {
    if (!(el instanceof HTMLInputElement || el instanceof HTMLTextAreaElement)) return;
    if (el.dataset.serverError) {
      el.dataset.serverError = "";
      el.setCustomValidity("");
    }
    checkCustom(el);
    if (el.dataset.argv !== undefined) updateArgvPreview(el);
    // Once the user edits a field, its old message (browser or server) goes away.
    if (el.validity.valid) showFieldError(el, "");
    else if (el.dataset.touched) showFieldError(el, el.validationMessage);
  }

  _clearErrors() {
    for (const el of this.form.querySelectorAll("input, textarea")) {
      el.dataset.serverError = "";
      checkCustom(el);
      showFieldError(el, "");
    }
    const formError = this.form.querySelector(".form-error");
    formError.hidden = true;
    formError.textContent = "";
  }

  _showFormError(text) {
    const formError = this.form.querySelector(".form-error");
    formError.textContent = text;
    formError.hidden = false;
  }

  // ---------------------------------------------------------------- submit

  async _submit() {
    this._clearErrors();
    for (const el of this.form.querySelectorAll("input, textarea")) checkCustom(el);
    if (!this.form.checkValidity()) {
      let first = null;
      for (const el of this.form.querySelectorAll("input, textarea")) {
        el.dataset.touched = "1";
        if (!el.validity.valid) {
          showFieldError(el, el.validationMessage);
          first = first || el;
        }
      }
      if (first) {
        first.closest("details")?.setAttribute("open", "");
        first.focus();
      }
      return;
    }
    let spec;
    try {
      spec = this._spec();
    } catch (err) {
      this._showFormError(err.message);
      return;
    }
    const btn = this.form.querySelector("button[type=submit]");
    btn.disabled = true;
    btn.classList.add("busy");
    try {
      const job = await post("/jobs", spec);
      toast(`Submitted ${job.name || job.type || job.executor} · ${job.id.slice(0, 8)}`, "ok");
      this.onSubmitted(job);
    } catch (err) {
      this._showServerErrors(err);
    } finally {
      btn.disabled = false;
      btn.classList.remove("busy");
    }
  }

  /** The JobSpec the form describes. */
  _spec() {
    const executor = this.form.dataset.executor;
    const val = (group, name) => this.form.querySelector(
      `[data-group="${group}"] [name="${CSS.escape(name)}"]`);
    const spec = { executor };
    const name = val("spec", "name")?.value.trim();
    if (name) spec.name = name;
    const timeout = val("spec", "timeout_s")?.value;
    if (timeout) spec.timeout_s = Number(timeout);

    if (executor === "builtin") {
      const type = this.types.find((t) => t.name === this.selected);
      spec.type = type.name;
      spec.params = {};
      for (const p of type.params || []) {
        const v = readParam(p, val("params", p.name));
        if (v !== undefined) spec.params[p.name] = v;
      }
    } else {
      if (executor === "process") {
        spec.command = splitArgs(val("spec", "command").value);
      } else {
        spec.image = val("spec", "image").value.trim();
        spec.steps = [{ name: "main", command: splitArgs(val("spec", "command").value) }];
      }
      const globs = val("spec", "artifacts").value.split(",").map((x) => x.trim()).filter(Boolean);
      if (globs.length) spec.artifacts = globs;
    }
    if (executor === "docker") {
      const cpu = val("spec", "cpu").value;
      const mem = val("spec", "memory_mb").value;
      if (cpu || mem) {
        spec.resources = {};
        if (cpu) spec.resources.cpu = Number(cpu);
        if (mem) spec.resources.memory_mb = Number(mem);
      }
    }
    return spec;
  }

  _showServerErrors(err) {
    if (!(err instanceof HttpError)) {
      this._showFormError(`Could not reach the API: ${err.message}`);
      return;
    }
    const body = err.body || {};
    const fields = body.fields || (body.field ? [{ field: body.field, message: body.error }] : []);
    let shown = 0;
    let first = null;
    for (const f of fields) {
      const el = this._inputForField(f.field);
      if (!el) continue;
      el.dataset.serverError = f.message;
      el.setCustomValidity(f.message);
      showFieldError(el, f.message);
      first = first || el;
      shown += 1;
    }
    if (first) {
      first.closest("details")?.setAttribute("open", "");
      first.focus();
    }
    if (!shown) this._showFormError(body.error || err.message);
  }

  /** The input a server field path names: params.seconds, steps.0.command, resources.cpu… */
  _inputForField(path) {
    if (!path) return null;
    const parts = String(path).split(".");
    const pick = (group, name) => this.form.querySelector(
      `[data-group="${group}"] [name="${CSS.escape(name)}"]`);
    if (parts[0] === "params") return pick("params", parts[1] || "");
    if (parts[0] === "steps" || parts[0] === "command") return pick("spec", "command");
    if (parts[0] === "resources") return pick("spec", parts[1] || "");
    return pick("spec", parts[0]) || pick("params", parts[parts.length - 1]);
  }
}
