// DOM helpers. Text is always set as text (never parsed as HTML): data from the server cannot
// inject markup or script.
import { t, lang } from "./i18n.js";

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
  const el = h("div", { class: `toast toast-${kind}`, text: message });
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

export function errorText(e) {
  return e && e.detail ? e.detail : String(e);
}

export { lang };
