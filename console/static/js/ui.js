// DOM helpers. Text is always set as text (never parsed as HTML): data from the server cannot
// inject markup or script.
import { t, has, lang } from "./i18n.js";
import { ApiError } from "./api.js";

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value") el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

const pad = (n) => String(n).padStart(2, "0");

// Times in the officer's local time, 24-hour, with the date when it is not today.
export function fmtTime(iso, withDate = true) {
  if (!iso) return "—";
  const d = new Date(iso);
  const today = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (!withDate || d.toDateString() === today.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

export function ago(iso) {
  if (!iso) return "—";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 90) return t("ago.s", { n: Math.round(s) });
  if (s < 5400) return t("ago.m", { n: Math.round(s / 60) });
  if (s < 172800) return t("ago.h", { n: Math.round(s / 3600) });
  return t("ago.d", { n: Math.round(s / 86400) });
}

export function metres(m) {
  if (m === null || m === undefined) return "—";
  return m >= 1000 ? `${(m / 1000).toFixed(1)} km` : `${Math.round(m)} m`;
}

// A datetime-local input value for a Date, and back to ISO with the browser's offset.
export function localInput(d) {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
export function fromLocalInput(v) {
  return new Date(v).toISOString();
}

let toastBox;
export function toast(message, kind = "info") {
  if (!toastBox) {
    toastBox = h("div", { class: "toasts", role: "status", "aria-live": "polite" });
    document.body.append(toastBox);
  }
  // A second line (an error's server text) smaller, under the message.
  const [first, ...rest] = String(message).split("\n");
  const el = h("div", { class: `toast toast-${kind}` }, first,
    rest.length ? h("small", { class: "error-more", text: rest.join("\n") }) : null);
  toastBox.append(el);
  // Never a wall of messages over the work: the three newest stay.
  while (toastBox.children.length > 3) toastBox.firstChild.remove();
  setTimeout(() => el.remove(), kind === "error" ? 9000 : 4000);
}

// A modal dialog (native <dialog>): resolves with the submitted form's values, or null.
export function dialog(title, fields, submitLabel) {
  return new Promise((resolve) => {
    const form = h("form", { method: "dialog", class: "form" });
    const inputs = {};
    for (const f of fields) {
      let input;
      if (f.type === "select") {
        input = h("select", { name: f.name, required: f.required },
          f.options.map(([v, label]) => h("option", { value: v, text: label })));
      } else if (f.type === "textarea") {
        input = h("textarea", { name: f.name, required: f.required, minlength: f.minlength, rows: 3 });
      } else {
        input = h("input", { name: f.name, type: f.type || "text", required: f.required,
          minlength: f.minlength, value: f.value, step: f.step, min: f.min, max: f.max });
      }
      inputs[f.name] = input;
      form.append(h("label", {}, h("span", { text: f.label }), input));
    }
    const dlg = h("dialog", { class: "dialog" }, h("h2", { text: title }), form);
    const cancel = h("button", { type: "button", class: "secondary", text: t("cancel"),
      onclick: () => { dlg.close(); } });
    form.append(h("div", { class: "actions" }, cancel,
      h("button", { type: "submit", class: "primary", text: submitLabel || t("ok") })));
    let result = null;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (!form.reportValidity()) return;
      result = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value]));
      dlg.close();
    });
    dlg.addEventListener("close", () => { dlg.remove(); resolve(result); });
    document.body.append(dlg);
    dlg.showModal();
    const first = Object.values(inputs)[0];
    if (first) first.focus();
  });
}

export function table(columns, rows, onRow) {
  return h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { text: c.label })))),
    h("tbody", {}, rows.length ? rows.map((r) => {
      const tr = h("tr", { class: onRow ? "clickable" : "" },
        columns.map((c) => h("td", { class: c.class || "" }, c.render ? c.render(r) : String(r[c.key] ?? "—"))));
      if (onRow) tr.addEventListener("click", () => onRow(r));
      return tr;
    }) : h("tr", {}, h("td", { colspan: columns.length, class: "empty", text: t("none") }))));
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", { text: title }), ...children);
}

export function badge(kind, text) {
  return h("span", { class: `badge badge-${kind}`, text: text ?? t(`v.${kind}`) });
}

// What went wrong, in the console's language: worded by the API's `error` code, else by the
// HTTP status; a validation error names each field and its reason. The server's own (English)
// text follows as `more` only where it says what the words cannot: which vertex, which cases,
// how many days, why a URL is refused.
const SAYS_MORE = /^(invalid_zone\.|invalid(\.|$)|bad_request$|conflict$|zone_in_use$|invalid_url$|role_unit_mismatch$|permit\.(too_long|short_notice|yearly_cap)$)/;
const minutes = (s) => Math.max(1, Math.ceil(Number(s) / 60));

export function errorParts(e) {
  if (!(e instanceof ApiError)) return { text: t("err.unexpected"), more: String(e) };
  const code = e.code || "";
  if (code === "network") return { text: t("err.network"), more: "" };
  if (e.errors) {
    const lines = [], odd = [];
    for (const d of e.errors) {
      const [field, reason, worded] = fieldReason(d);
      lines.push(t("err.field", { field, reason }));
      if (!worded && d.msg) odd.push(d.msg);
    }
    return { text: t("err.fields") + lines.join(lang === "zh" ? "；" : "; "), more: odd.join("; ") };
  }
  const more = SAYS_MORE.test(code) || (!code && e.status === 422) ? e.detail || "" : "";
  if (code === "sign_in_refused") {
    const b = e.body;
    const policy = b.lockout_after && b.lockout_s ? t("err.lockout", { n: b.lockout_after, m: minutes(b.lockout_s) }) : "";
    return { text: t("err.code.sign_in_refused"), more: policy };
  }
  if (code === "too_many_attempts") {
    return { text: t("err.code.too_many_attempts", { m: minutes(e.body.retry_after_s || 900) }), more: "" };
  }
  if (code && has(`err.code.${code}`)) return { text: t(`err.code.${code}`), more };
  const s = e.status;
  if (s >= 500) return { text: t("err.5xx"), more: "" };
  if (has(`err.${s}`)) return { text: t(`err.${s}`), more };
  return { text: t("err.other", { status: s }), more };
}

// A validation error's field (the last name of its location), its reason, and whether the
// reason was worded from its type (if not, pydantic's message is shown as well: a validator's
// own words, such as why a time range is refused).
function fieldReason(d) {
  const names = (d.loc || []).slice(1).filter((x) => typeof x === "string");
  const name = names.length ? names[names.length - 1] : "";
  const field = name && has(`f.${name}`) ? t(`f.${name}`) : name || "—";
  const c = d.ctx || {};
  const type = d.type || "";
  const map = {
    missing: ["vr.missing"], string_too_short: ["vr.too_short", c.min_length], string_too_long: ["vr.too_long", c.max_length],
    too_short: ["vr.items_short", c.min_length], too_long: ["vr.items_long", c.max_length],
    greater_than_equal: ["vr.ge", c.ge], greater_than: ["vr.gt", c.gt], less_than_equal: ["vr.le", c.le], less_than: ["vr.lt", c.lt],
    string_pattern_mismatch: ["vr.pattern"], extra_forbidden: ["vr.extra"], json_invalid: ["vr.json"],
    enum: ["vr.choice"], literal_error: ["vr.choice"], bool_parsing: ["vr.bool"], bool_type: ["vr.bool"],
  };
  let key = map[type];
  if (!key && /^(int|float|decimal)_/.test(type)) key = ["vr.number"];
  if (!key && /^(datetime|date|time|timezone)_/.test(type)) key = ["vr.datetime"];
  if (key) return [field, t(key[0], { n: key[1] }), true];
  return [field, t("vr.other"), false];
}

export function errorText(e) {
  const { text, more } = errorParts(e);
  return more ? `${text}\n${more}` : text;
}

// The error into a message element: the worded line, then the server's own text smaller.
export function showError(el, e) {
  const { text, more } = errorParts(e);
  el.replaceChildren(text, ...(more ? [h("small", { class: "error-more", text: more })] : []));
}

export { lang };
