// Key periods (重点时段): stricter reporting during holidays and sensitive dates. Everyone
// supervising sees them; only the city bureau creates them (POST /key-periods is city-only).
import { api } from "../api.js";
import { h, clear, section, table, toast, showError } from "../ui.js";
import { t, register } from "../i18n.js";
import { pageHead } from "../office.js";

register({
  zh: { "kp.title": "重点时段", "kp.name": "名称", "kp.from": "开始日期", "kp.to": "结束日期", "kp.levels": "适用管理等级",
        "kp.flags": "适用标记", "kp.factor": "定位间隔系数", "kp.extra": "每日加点名次数", "kp.all": "全部",
        "kp.new": "新建重点时段", "kp.create": "创建", "kp.done": "已创建", "kp.onlycity": "重点时段由市司法局设定。",
        "kp.flagshint": "以逗号分隔，留空表示全部", "kp.now": "进行中", "kp.none": "尚未设定重点时段。",
        "lv.strict": "严管", "lv.normal": "普管", "lv.lenient": "宽管" },
  en: { "kp.title": "Key periods", "kp.name": "Name", "kp.from": "From", "kp.to": "To", "kp.levels": "Levels",
        "kp.flags": "Flags", "kp.factor": "Interval factor", "kp.extra": "Extra roll-calls a day", "kp.all": "all",
        "kp.new": "New key period", "kp.create": "Create", "kp.done": "Created", "kp.onlycity": "Key periods are set by the city bureau.",
        "kp.flagshint": "comma-separated; empty means all", "kp.now": "in force", "kp.none": "No key periods yet.",
        "lv.strict": "Strict", "lv.normal": "Normal", "lv.lenient": "Lenient" },
});

const LEVELS = ["strict", "normal", "lenient"];

export async function render(main, _params, ctx) {
  const list = h("div", { id: "kp-list" });
  main.append(pageHead(t("kp.title")), h("div", { class: "split kp-split" }, section(t("kp.title"), list),
    ctx.me.role === "city_admin" ? section(t("kp.new"), form(() => load(list))) : h("p", { class: "notice", text: t("kp.onlycity") })));
  await load(list);
}

async function load(list) {
  const rows = await api("/key-periods");
  const today = new Date().toISOString().slice(0, 10);
  rows.sort((a, b) => b.starts_on.localeCompare(a.starts_on));
  const tbl = table([
    { label: t("kp.name"), render: (r) => h("span", {}, r.name, r.starts_on <= today && today <= r.ends_on
      ? h("span", { class: "badge badge-st-open kp-now", text: t("kp.now") }) : null) },
    { label: `${t("kp.from")} → ${t("kp.to")}`, render: (r) => `${r.starts_on} → ${r.ends_on}` },
    { label: t("kp.levels"), render: (r) => r.levels.length ? r.levels.map((l) => t(`lv.${l}`)).join("、") : t("kp.all") },
    { label: t("kp.flags"), render: (r) => r.flags.length ? r.flags.join("、") : t("kp.all") },
    { label: t("kp.factor"), class: "num", render: (r) => `×${r.interval_factor}` },
    { label: t("kp.extra"), class: "num", render: (r) => String(r.extra_rollcalls) },
  ], rows);
  if (!rows.length) tbl.querySelector("td.empty").textContent = t("kp.none");
  clear(list).append(tbl);
}

function form(onDone) {
  const today = new Date().toISOString().slice(0, 10);
  const name = h("input", { name: "name", id: "kp-name", required: true, maxlength: 200 });
  const from = h("input", { name: "from", id: "kp-from", type: "date", required: true, value: today });
  const to = h("input", { name: "to", id: "kp-to", type: "date", required: true, value: today });
  const levels = LEVELS.map((l) => h("label", { class: "check" }, h("input", { type: "checkbox", value: l }), h("span", { text: t(`lv.${l}`) })));
  const flags = h("input", { name: "flags", placeholder: t("kp.flagshint") });
  const factor = h("input", { name: "factor", type: "number", min: 0.01, max: 1, step: 0.01, value: "0.5", required: true });
  const extra = h("input", { name: "extra", type: "number", min: 0, max: 10, step: 1, value: "1", required: true });
  const msg = h("p", { class: "form-error", role: "alert" });
  const f = h("form", { class: "form", id: "kp-form" },
    h("label", {}, h("span", { text: t("kp.name") }), name),
    h("div", { class: "two" }, h("label", {}, h("span", { text: t("kp.from") }), from), h("label", {}, h("span", { text: t("kp.to") }), to)),
    h("fieldset", { class: "checks" }, h("legend", { text: t("kp.levels") }), levels),
    h("label", {}, h("span", { text: t("kp.flags") }), flags),
    h("div", { class: "two" }, h("label", {}, h("span", { text: t("kp.factor") }), factor), h("label", {}, h("span", { text: t("kp.extra") }), extra)),
    msg, h("div", { class: "actions" }, h("button", { class: "primary", type: "submit", text: t("kp.create") })));
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.textContent = "";
    try {
      await api("/key-periods", { method: "POST", body: {
        name: name.value, starts_on: from.value, ends_on: to.value,
        levels: levels.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value),
        flags: flags.value.split(/[,，、]/).map((s) => s.trim()).filter(Boolean),
        interval_factor: Number(factor.value), extra_rollcalls: Number(extra.value) } });
      toast(t("kp.done"));
      name.value = "";  // the rest stays as a start for the next one
      onDone();
    } catch (err) { showError(msg, err); }
  });
  return f;
}
