// The morning's numbers per office: open and overdue alerts, silent phones, roll-call answers in
// the last 7 days, permits waiting. Totals on top; with more than one district in view, each
// district's subtotal heads its offices; the cells that need attention stand out.
import { api } from "../api.js";
import { h, clear } from "../ui.js";
import { t, register } from "../i18n.js";
import { pageHead } from "../office.js";

register({
  zh: { "ov.title": "概览", "ov.office": "司法所", "ov.unit": "单位", "ov.people": "在矫人数", "ov.open": "未办结告警",
        "ov.overdue": "超时未签收", "ov.silent": "失联手机", "ov.rate": "点名应答率（7天）",
        "ov.pending": "待审批外出", "ov.total": "合计", "ov.refresh": "刷新", "ov.asof": "统计时间 {t}",
        "ov.noroll": "无点名", "ov.none": "您的辖区内没有司法所。", "ov.answered": "{a}/{s} 次",
        "ov.report": "月度合规统计报表", "ov.month": "月份", "ov.reportnote": "辖区内各司法所、各区的定位覆盖率、失联、告警与签收用时、点名、外出和处罚统计（不含位置）。" },
  en: { "ov.title": "Overview", "ov.office": "Office", "ov.unit": "Unit", "ov.people": "Supervised", "ov.open": "Open alerts",
        "ov.overdue": "Overdue acks", "ov.silent": "Silent phones", "ov.rate": "Roll-call answers (7 d)",
        "ov.pending": "Permits pending", "ov.total": "Total", "ov.refresh": "Refresh", "ov.asof": "As of {t}",
        "ov.noroll": "no roll-calls", "ov.none": "No offices in your jurisdiction.", "ov.answered": "{a}/{s}",
        "ov.report": "Monthly compliance report", "ov.month": "Month", "ov.reportnote": "Coverage, silences, alerts and time to acknowledge, roll-calls, permits and sanctions per office and district (no positions)." },
});

const COLS = [
  ["open_alerts", "ov.open", "warn"], ["overdue_alerts", "ov.overdue", "bad"], ["silent_phones", "ov.silent", "warn"],
  ["permits_pending", "ov.pending", "info"],
];

export async function render(main) {
  const body = h("div", { id: "overview" });
  main.append(pageHead(t("ov.title"), h("button", { class: "secondary", text: t("ov.refresh"), onclick: () => fill(body) })), body);
  await fill(body);
}

function rate(r, sent, answered) {
  if (r === null || r === undefined) return h("span", { class: "muted", text: t("ov.noroll") });
  const pct = Math.round(r * 100);
  return h("span", { class: `rate ${pct < 80 ? "bad" : pct < 95 ? "warn" : "good"}` },
    h("strong", { text: `${pct}%` }), h("small", { text: ` ${t("ov.answered", { a: answered, s: sent })}` }));
}

function cell(n, tone) {
  return h("td", { class: `num${n > 0 ? ` attn ${tone}` : " zero"}`, text: String(n) });
}

async function fill(body) {
  const data = await api("/duty/overview");
  const tot = data.totals;
  const tiles = h("div", { class: "tiles", id: "overview-totals" },
    h("div", { class: "tile" }, h("span", { class: "tile-n", text: String(tot.supervisees) }), h("span", { text: t("ov.people") })),
    COLS.map(([k, label, tone]) => h("div", { class: `tile${tot[k] > 0 ? ` attn ${tone}` : ""}`, dataset: { key: k } },
      h("span", { class: "tile-n", text: String(tot[k]) }), h("span", { text: t(label) }))),
    h("div", { class: "tile" }, h("span", { class: "tile-n" }, rate(tot.rollcall_answer_rate, tot.rollcalls_sent_7d, tot.rollcalls_answered_7d)),
      h("span", { text: t("ov.rate") })));
  const rows = data.offices;
  const line = (o, label, attrs) => h("tr", attrs,
    h("th", { scope: "row", text: label }), h("td", { class: "num", text: String(o.supervisees) }),
    COLS.map(([k, , tone]) => cell(o[k], tone)),
    h("td", { class: "num" }, rate(o.rollcall_answer_rate, o.rollcalls_sent_7d, o.rollcalls_answered_7d)));
  const byId = new Map(rows.map((o) => [o.office_id, o]));
  const districts = data.districts || [];
  const bodies = !rows.length ? [h("tbody", {}, h("tr", {}, h("td", { colspan: 7, class: "empty", text: t("ov.none") })))]
    : districts.length > 1 ? districts.map((d) => h("tbody", { class: "district", dataset: { district: d.district_id } },
      line(d, d.name || "—", { class: "district-row" }),
      d.offices.map((id) => line(byId.get(id), byId.get(id).name, { dataset: { office: id }, class: "in-district" }))))
      : [h("tbody", {}, rows.map((o) => line(o, o.name, { dataset: { office: o.office_id } })))];
  const tbl = h("table", { class: "grid overview-table", id: "overview-table" },
    h("thead", {}, h("tr", {}, h("th", { text: t(districts.length > 1 ? "ov.unit" : "ov.office") }), h("th", { class: "num", text: t("ov.people") }),
      COLS.map(([, label]) => h("th", { class: "num", text: t(label) })), h("th", { class: "num", text: t("ov.rate") }))),
    ...bodies,
    rows.length > 1 ? h("tfoot", {}, h("tr", {}, h("th", { text: t("ov.total") }), h("td", { class: "num", text: String(tot.supervisees) }),
      COLS.map(([k, , tone]) => cell(tot[k], tone)),
      h("td", { class: "num" }, rate(tot.rollcall_answer_rate, tot.rollcalls_sent_7d, tot.rollcalls_answered_7d)))) : null);
  const now = new Date();
  clear(body).append(tiles, h("section", { class: "card" }, tbl),
    h("p", { class: "fine", text: t("ov.asof", { t: now.toLocaleString(document.documentElement.lang) }) }),
    reportCard(now));
}

// Last month's compliance report (or any month) as PDF or CSV: plain links, the console's
// cookie signs the download in.
function reportCard(now) {
  const pad = (n) => String(n).padStart(2, "0");
  const last = new Date(now.getFullYear(), now.getMonth() - 1, 1);
  const input = h("input", { type: "month", id: "report-month", value: `${last.getFullYear()}-${pad(last.getMonth() + 1)}` });
  const link = (fmt) => h("a", { class: "button secondary", id: `report-${fmt}`, text: fmt.toUpperCase() });
  const pdf = link("pdf"), csv = link("csv");
  const point = () => {
    const [y, m] = input.value.split("-").map(Number);
    if (!y || !m) return;
    const next = m === 12 ? `${y + 1}-01` : `${y}-${pad(m + 1)}`;
    for (const [a, fmt] of [[pdf, "pdf"], [csv, "csv"]]) {
      a.href = `/api/v1/reports/compliance?from=${y}-${pad(m)}-01&to=${next}-01&format=${fmt}`;
    }
  };
  input.addEventListener("change", point);
  point();
  return h("section", { class: "card", id: "report-card" }, h("h3", { text: t("ov.report") }),
    h("p", { class: "fine", text: t("ov.reportnote") }),
    h("div", { class: "actions" }, h("label", {}, h("span", { text: `${t("ov.month")} ` }), input), pdf, csv));
}
