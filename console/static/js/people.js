// What the supervisee list, page and track playback share: the words for levels, types and
// statuses, and the person's heading.
import { h, badge } from "./ui.js";
import { t, register } from "./i18n.js";

register({
  zh: {
    "lvl.strict": "严管", "lvl.normal": "普管", "lvl.lenient": "宽管",
    "stype.probation": "缓刑", "stype.parole": "假释", "stype.temporary_release": "暂予监外执行",
    "stype.public_surveillance": "管制",
    "basis.information_check": "信息化核查（手机定位）", "basis.electronic_device": "电子定位装置",
    "pp.active": "在矫", "pp.inactive": "已解矫", "pp.case": "案号", "pp.name": "姓名", "pp.type": "矫正类别",
    "pp.level": "监管等级", "pp.flags": "重点标记", "pp.office": "司法所", "pp.state": "状态",
    "pp.track": "轨迹回放", "pp.back": "返回对象列表", "pp.page": "对象详情",
    "pp.notfound": "未找到该矫正对象，或其不在您的辖区内。", "pp.why": "原因",
    "st.requested": "待审批", "st.approved": "已批准", "st.rejected": "已驳回", "st.revoked": "已撤销",
    "st.returned": "已返回", "st.expired": "已过期", "st.scheduled": "待发送", "st.sent": "已发送",
    "st.answered": "已应答", "st.missed": "未应答", "st.throttled": "未发送（限流）",
  },
  en: {
    "lvl.strict": "Strict", "lvl.normal": "Normal", "lvl.lenient": "Lenient",
    "stype.probation": "Probation", "stype.parole": "Parole", "stype.temporary_release": "Temporary release",
    "stype.public_surveillance": "Public surveillance",
    "basis.information_check": "Phone location check", "basis.electronic_device": "Electronic location device",
    "pp.active": "Under supervision", "pp.inactive": "Released", "pp.case": "Case no.", "pp.name": "Name",
    "pp.type": "Type", "pp.level": "Level", "pp.flags": "Key flags", "pp.office": "Office", "pp.state": "Status",
    "pp.track": "Track playback", "pp.back": "Back to the list", "pp.page": "Supervisee",
    "pp.notfound": "No such supervisee in your jurisdiction.", "pp.why": "Reason",
    "st.requested": "Requested", "st.approved": "Approved", "st.rejected": "Rejected", "st.revoked": "Revoked",
    "st.returned": "Returned", "st.expired": "Expired", "st.scheduled": "Scheduled", "st.sent": "Sent",
    "st.answered": "Answered", "st.missed": "Missed", "st.throttled": "Not sent (throttled)",
  },
});

// A translated word, or the value itself when there is none (a new status still shows).
export function word(prefix, v) {
  if (v === null || v === undefined || v === "") return "—";
  const k = `${prefix}.${v}`;
  const s = t(k);
  return s === k ? String(v) : s;
}

export function levelBadge(level) {
  return h("span", { class: `badge level level-${level}`, text: word("lvl", level) });
}

export function flagBadges(flags) {
  return (flags || []).length
    ? h("span", { class: "flags" }, flags.map((f) => h("span", { class: "badge flag", text: f })))
    : h("span", { class: "muted", text: "—" });
}

export function statusBadge(v) {
  const kind = { approved: "st-resolved", answered: "st-resolved", missed: "st-open", rejected: "st-open",
    requested: "st-acknowledged", sent: "st-acknowledged" }[v] || "muted";
  return badge(kind, word("st", v));
}

// The heading of the person's pages: name, case number, level and flags, and where to go next.
export function personHead(p, ...links) {
  return h("div", { class: "person-head" },
    h("h1", {}, h("span", { class: "pname", text: p.full_name }), h("span", { class: "pcase", text: p.case_number })),
    levelBadge(p.level), (p.key_flags || []).length ? flagBadges(p.key_flags) : null,
    p.active ? null : badge("muted", t("pp.inactive")),
    h("span", { class: "spacer" }), ...links);
}

// A person the caller may not see is "not found" (the API answers 404 outside the jurisdiction).
export function notFound(main) {
  main.append(h("p", { class: "notice error", id: "not-found", text: t("pp.notfound") }),
    h("a", { href: "#/supervisees", text: `← ${t("pp.back")}` }));
}

// The person, or null (and the page says so) when the caller may not see them.
export async function personOr404(api, main, id) {
  try {
    return await api(`/supervisees/${id}`);
  } catch (e) {
    if (e.status !== 404) throw e;
    notFound(main);
    return null;
  }
}

export async function officeNames(api) {
  try {
    const units = await api("/org/units");
    return new Map(units.map((u) => [u.id, u.name]));
  } catch { return new Map(); }
}
