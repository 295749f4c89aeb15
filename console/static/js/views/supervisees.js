// The jurisdiction's supervisees: searchable by name or case number, with level, flags and
// office; a row opens the person's page.
import { api } from "../api.js";
import { h, clear, table } from "../ui.js";
import { t, register } from "../i18n.js";
import { word, levelBadge, flagBadges, officeNames } from "../people.js";

register({
  zh: { "sl.title": "矫正对象", "sl.search": "按姓名或案号搜索", "sl.all": "全部等级", "sl.flagged": "仅重点人员",
        "sl.count": "共 {n} 人", "sl.nomatch": "没有符合条件的矫正对象", "sl.empty": "本辖区暂无矫正对象",
        "sl.inactive": "含已解矫" },
  en: { "sl.title": "Supervisees", "sl.search": "Search by name or case number", "sl.all": "All levels",
        "sl.flagged": "Key persons only", "sl.count": "{n} people", "sl.nomatch": "Nobody matches",
        "sl.empty": "No supervisees in this jurisdiction", "sl.inactive": "Include released" },
});

const LEVEL_ORDER = { strict: 0, normal: 1, lenient: 2 };

export async function render(main) {
  const [people, offices] = await Promise.all([api("/supervisees", { query: { limit: 1000 } }), officeNames(api)]);
  const search = h("input", { type: "search", id: "sl-search", placeholder: t("sl.search"), "aria-label": t("sl.search") });
  const level = h("select", { id: "sl-level", "aria-label": t("pp.level") },
    h("option", { value: "", text: t("sl.all") }),
    ["strict", "normal", "lenient"].map((l) => h("option", { value: l, text: word("lvl", l) })));
  const flagged = h("input", { type: "checkbox", id: "sl-flagged" });
  const inactive = h("input", { type: "checkbox", id: "sl-inactive" });
  const count = h("span", { class: "sl-count" });
  const body = h("div", { class: "sl-table" });
  main.append(h("div", { class: "list-head" }, h("h1", { text: t("sl.title") }), count),
    h("div", { class: "filters" }, search, level,
      h("label", { class: "check" }, flagged, t("sl.flagged")),
      h("label", { class: "check" }, inactive, t("sl.inactive"))),
    body);

  const columns = [
    { label: t("pp.name"), render: (p) => h("a", { href: `#/supervisees/${p.id}`, text: p.full_name }) },
    { label: t("pp.case"), key: "case_number", class: "mono" },
    { label: t("pp.type"), render: (p) => word("stype", p.supervision_type) },
    { label: t("pp.level"), render: (p) => levelBadge(p.level) },
    { label: t("pp.flags"), render: (p) => flagBadges(p.key_flags) },
    { label: t("pp.office"), render: (p) => offices.get(p.office_id) || `#${p.office_id}` },
    { label: t("pp.state"), render: (p) => (p.active ? t("pp.active") : t("pp.inactive")) },
  ];
  const show = () => {
    const q = search.value.trim().toLowerCase();
    const rows = people.filter((p) => (inactive.checked || p.active)
      && (!level.value || p.level === level.value)
      && (!flagged.checked || (p.key_flags || []).length)
      && (!q || p.full_name.toLowerCase().includes(q) || p.case_number.toLowerCase().includes(q)))
      .sort((a, b) => LEVEL_ORDER[a.level] - LEVEL_ORDER[b.level] || a.full_name.localeCompare(b.full_name, "zh"));
    count.textContent = t("sl.count", { n: rows.length });
    const grid = table(columns, rows, (p) => { location.hash = `#/supervisees/${p.id}`; });
    if (!rows.length) grid.querySelector("td.empty").textContent = people.length ? t("sl.nomatch") : t("sl.empty");
    clear(body).append(grid);
  };
  for (const el of [search, level, flagged, inactive]) el.addEventListener("input", show);
  show();
  search.focus();
}
