// Small helpers shared by the office screens (zones, permits, key periods, staff, notifications,
// audit, overview).
import { h } from "./ui.js";

// Organisation unit id → name, for the units the caller sees.
export function unitNames(units) {
  return new Map(units.map((u) => [u.id, u.name]));
}

// A row of filter buttons ("chips"); `onPick(value)` when one is chosen. Returns the element.
export function chips(options, current, onPick, id) {
  const box = h("div", { class: "chips", role: "tablist", id });
  for (const [value, label] of options) {
    box.append(h("button", { type: "button", class: `chip${value === current ? " on" : ""}`, role: "tab",
      "aria-selected": value === current ? "true" : "false", dataset: { value }, text: label,
      onclick: () => {
        box.querySelectorAll(".chip").forEach((b) => {
          b.classList.toggle("on", b.dataset.value === value);
          b.setAttribute("aria-selected", b.dataset.value === value ? "true" : "false");
        });
        onPick(value);
      } }));
  }
  return box;
}

// A page title with actions on the right.
export function pageHead(title, ...actions) {
  return h("div", { class: "page-head" }, h("h1", { text: title }), h("div", { class: "actions" }, ...actions));
}

// A short date (yyyy-mm-dd hh:mm, local).
export function fmtDay(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}
