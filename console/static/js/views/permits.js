// Travel permits (外出审批): the inbox of the tier the caller acts on (office: opinion, or the
// decision for up to 7 days; district; city), trips under way, overdue returns, and everything;
// one permit's facts, history and the actions the caller's tier may take. The server decides
// anyway (store/permits.py); the console only offers what the role can do.
import { api } from "../api.js";
import { h, clear, section, table, toast, dialog, errorText, badge, localInput, fromLocalInput } from "../ui.js";
import { t, register } from "../i18n.js";
import { chips, pageHead, fmtDay } from "../office.js";

register({
  zh: { "pm.title": "外出审批", "pm.inbox": "待我处理", "pm.underway": "外出中", "pm.overdue": "逾期未归",
        "pm.all": "全部", "pm.new": "代为申请外出", "pm.id": "编号", "pm.who": "矫正对象", "pm.reason": "事由",
        "pm.span": "外出时间", "pm.days": "天数", "pm.tier": "审批层级", "pm.status": "状态", "pm.opinion": "司法所意见",
        "pm.dest": "目的地", "pm.details": "说明", "pm.start": "开始", "pm.end": "结束", "pm.history": "办理记录",
        "pm.pick": "在左侧选择一项外出申请查看详情。", "pm.empty.inbox": "没有待您处理的外出申请。",
        "pm.empty": "没有符合条件的外出申请。", "pm.mytier": "您的审批层级：{tier}",
        "pm.tier.office": "司法所", "pm.tier.district": "区司法局", "pm.tier.city": "市司法局",
        "pm.st.requested": "待审批", "pm.st.approved": "已批准", "pm.st.rejected": "未批准", "pm.st.revoked": "已撤销",
        "pm.st.returned": "已销假",
        "pm.r.medical": "就医", "pm.r.schooling": "就学", "pm.r.litigation": "诉讼", "pm.r.family": "家庭变故",
        "pm.r.work": "工作需要",
        "pm.do.opinion": "出具所意见", "pm.do.approve": "批准", "pm.do.reject": "不予批准", "pm.do.amend": "变更结束时间",
        "pm.do.revoke": "撤销", "pm.do.return": "登记销假", "pm.recommend": "意见", "pm.yes": "同意外出",
        "pm.no": "不同意外出", "pm.note": "说明", "pm.newend": "新的结束时间", "pm.done": "已办理",
        "pm.waiting": "等待司法所意见", "pm.overdue_by": "已逾期 {d}",
        "pm.a.requested": "提出申请", "pm.a.office_opinion": "司法所意见", "pm.a.approved": "批准",
        "pm.a.rejected": "不予批准", "pm.a.revoked": "撤销", "pm.a.amended": "变更", "pm.a.returned": "销假",
        "pm.by.staff": "工作人员 #{id}", "pm.by.device": "手机 {id}" },
  en: { "pm.title": "Travel permits", "pm.inbox": "My inbox", "pm.underway": "Under way", "pm.overdue": "Overdue returns",
        "pm.all": "All", "pm.new": "Request for a supervisee", "pm.id": "No.", "pm.who": "Supervisee", "pm.reason": "Reason",
        "pm.span": "Dates", "pm.days": "Days", "pm.tier": "Decided by", "pm.status": "Status", "pm.opinion": "Office's opinion",
        "pm.dest": "Destination", "pm.details": "Details", "pm.start": "Start", "pm.end": "End", "pm.history": "History",
        "pm.pick": "Pick a permit on the left to see it.", "pm.empty.inbox": "Nothing waiting for you.",
        "pm.empty": "No permits match.", "pm.mytier": "You act as: {tier}",
        "pm.tier.office": "Judicial office", "pm.tier.district": "District bureau", "pm.tier.city": "City bureau",
        "pm.st.requested": "Requested", "pm.st.approved": "Approved", "pm.st.rejected": "Rejected", "pm.st.revoked": "Revoked",
        "pm.st.returned": "Returned",
        "pm.r.medical": "Medical", "pm.r.schooling": "Schooling", "pm.r.litigation": "Litigation", "pm.r.family": "Family",
        "pm.r.work": "Work",
        "pm.do.opinion": "Give the office's opinion", "pm.do.approve": "Approve", "pm.do.reject": "Reject",
        "pm.do.amend": "Change the end", "pm.do.revoke": "Revoke", "pm.do.return": "Record the return",
        "pm.recommend": "Opinion", "pm.yes": "Recommend", "pm.no": "Do not recommend", "pm.note": "Note",
        "pm.newend": "New end", "pm.done": "Done", "pm.waiting": "waiting for the office's opinion",
        "pm.overdue_by": "overdue by {d}",
        "pm.a.requested": "requested", "pm.a.office_opinion": "office's opinion", "pm.a.approved": "approved",
        "pm.a.rejected": "rejected", "pm.a.revoked": "revoked", "pm.a.amended": "amended", "pm.a.returned": "returned",
        "pm.by.staff": "staff #{id}", "pm.by.device": "phone {id}" },
});

const TIER = { officer: "office", office_head: "office", district_supervisor: "district", city_admin: "city" };
const TIER_ORDER = { office: 0, district: 1, city: 2 };
const REASONS = ["medical", "schooling", "litigation", "family", "work"];
const DAY = 86400000;

let S = null;
export function destroy() { S = null; }

export async function render(main, _params, ctx) {
  const tier = TIER[ctx.me.role];
  const [people, zones, staff] = await Promise.all([api("/supervisees", { query: { limit: 1000 } }), api("/zones"),
    api("/staff").catch(() => [])]);
  S = { ctx, tier, staff: new Map(staff.map((s) => [s.id, `${s.full_name}（${t(`role.${s.role}`)}）`])), people: new Map(people.map((p) => [p.id, p])), zones: new Map(zones.features.map((z) => [z.id, z])),
    filter: "inbox", permits: [], selected: null };
  const listBox = h("div", { id: "permit-list" });
  const detail = h("div", { id: "permit-detail", class: "card permit-detail" }, h("p", { class: "empty-state", text: t("pm.pick") }));
  S.listBox = listBox; S.detail = detail;
  main.append(
    pageHead(t("pm.title"), h("span", { class: "tier-note", text: t("pm.mytier", { tier: t(`pm.tier.${tier}`) }) }),
      h("button", { class: "secondary", id: "permit-new", text: t("pm.new"), onclick: () => create(people) })),
    chips([["inbox", t("pm.inbox")], ["underway", t("pm.underway")], ["overdue", t("pm.overdue")], ["all", t("pm.all")]],
      S.filter, (v) => { S.filter = v; showList(); }, "permit-filter"),
    h("div", { class: "split permits-split" }, listBox, detail));
  await load();
}

async function load() {
  const permits = await api("/permits");
  if (!S) return;
  S.permits = permits;
  showList();
}

// What the caller's tier may do with a permit now.
function actionsFor(p) {
  const mine = S.tier, need = p.required_tier;
  const pending = p.status === "requested";
  return {
    opinion: pending && mine === "office" && need !== "office" && !p.office_opinion,
    decide: pending && mine === need && (need === "office" || !!p.office_opinion),
    amend: pending || p.status === "approved",
    revoke: p.status === "approved" && TIER_ORDER[mine] >= TIER_ORDER[need],
    ret: inForce(p) && new Date(p.start_at) <= new Date(),
  };
}

// A trip is on under its approved span, also while an amendment of it waits for its decision
// (as the engine sees it: alerts/checks.py).
const inForce = (p) => p.status === "approved" || (p.status === "requested" && !!p.approved_end_at);
const approvedEnd = (p) => new Date(p.approved_end_at || p.end_at);
const underway = (p) => inForce(p) && new Date(p.start_at) <= new Date() && approvedEnd(p) > new Date();
const overdue = (p) => inForce(p) && approvedEnd(p) <= new Date();

function showList() {
  const pick = {
    inbox: (p) => { const a = actionsFor(p); return a.opinion || a.decide; },
    underway, overdue, all: () => true,
  }[S.filter];
  const rows = S.permits.filter(pick);
  const who = (p) => { const s = S.people.get(p.supervisee_id); return s ? `${s.full_name}（${s.case_number}）` : `#${p.supervisee_id}`; };
  const cols = [
    { label: t("pm.id"), class: "num", render: (p) => `#${p.id}` },
    { label: t("pm.who"), render: who },
    { label: t("pm.reason"), render: (p) => t(`pm.r.${p.reason}`) },
    { label: t("pm.span"), render: (p) => `${fmtDay(p.start_at)} → ${fmtDay(p.end_at)}` },
    { label: t("pm.days"), class: "num", render: (p) => String(Math.ceil((new Date(p.end_at) - new Date(p.start_at)) / DAY)) },
    { label: t("pm.tier"), render: (p) => t(`pm.tier.${p.required_tier}`) },
    { label: t("pm.status"), render: (p) => statusBadge(p) },
  ];
  const tbl = table(cols, rows, (p) => select(p.id));
  tbl.id = "permit-table";
  tbl.querySelectorAll("tbody tr").forEach((tr, i) => {
    if (!rows[i]) return;
    tr.dataset.permitId = rows[i].id;
    if (rows[i].id === S.selected) tr.classList.add("selected");
  });
  if (!rows.length) tbl.querySelector("td.empty").textContent = S.filter === "inbox" ? t("pm.empty.inbox") : t("pm.empty");
  clear(S.listBox).append(tbl);
}

function statusBadge(p) {
  if (overdue(p)) return badge("st-open", `${t("pm.overdue")}`);
  if (p.status === "requested" && p.required_tier !== "office" && !p.office_opinion) {
    return h("span", {}, badge("muted", t("pm.st.requested")), " ", h("small", { class: "muted", text: t("pm.waiting") }));
  }
  const kind = { requested: "sev-medium", approved: "st-resolved", rejected: "muted", revoked: "muted", returned: "st-acknowledged" }[p.status];
  return badge(kind || "muted", t(`pm.st.${p.status}`));
}

async function select(id) {
  S.selected = id;
  showList();
  let p;
  try { p = await api(`/permits/${id}`); } catch (e) { toast(errorText(e), "error"); return; }
  if (!S || S.selected !== id) return;
  const person = S.people.get(p.supervisee_id);
  const dest = S.zones.get(p.destination_zone_id);
  const a = actionsFor(p);
  const act = (label, id2, cls, fn) => h("button", { class: cls, id: id2, text: label, onclick: fn });
  const box = h("div", { class: "actions permit-actions" },
    a.opinion ? act(t("pm.do.opinion"), "permit-opinion", "primary", () => opinion(p)) : null,
    a.decide ? act(t("pm.do.approve"), "permit-approve", "primary", () => decide(p, true)) : null,
    a.decide ? act(t("pm.do.reject"), "permit-reject", "danger", () => decide(p, false)) : null,
    a.amend ? act(t("pm.do.amend"), "permit-amend", "secondary", () => amend(p)) : null,
    a.ret ? act(t("pm.do.return"), "permit-return", "secondary", () => noteAction(p, "return", t("pm.do.return"))) : null,
    a.revoke ? act(t("pm.do.revoke"), "permit-revoke", "secondary", () => noteAction(p, "revoke", t("pm.do.revoke"))) : null);
  clear(S.detail).append(
    h("div", { class: "alert-head" }, h("h2", { text: `#${p.id} ${person ? person.full_name : ""}` }), statusBadge(p)),
    h("dl", { class: "facts" },
      h("dt", { text: t("pm.who") }), h("dd", { text: person ? `${person.full_name}（${person.case_number}）` : `#${p.supervisee_id}` }),
      h("dt", { text: t("pm.reason") }), h("dd", { text: t(`pm.r.${p.reason}`) }),
      h("dt", { text: t("pm.dest") }), h("dd", { text: dest ? dest.properties.name : `#${p.destination_zone_id}` }),
      h("dt", { text: t("pm.span") }), h("dd", { text: `${fmtDay(p.start_at)} → ${fmtDay(p.end_at)}` }),
      h("dt", { text: t("pm.tier") }), h("dd", { text: t(`pm.tier.${p.required_tier}`) }),
      h("dt", { text: t("pm.opinion") }), h("dd", { id: "permit-opinion-text", text: opinionText(p.office_opinion) }),
      p.details ? [h("dt", { text: t("pm.details") }), h("dd", { text: p.details })] : null),
    box,
    h("h3", { text: t("pm.history") }),
    h("ol", { class: "history permit-history" }, p.history.map((e) =>
      h("li", {}, h("time", { text: fmtDay(e.at) }), " ",
        h("strong", { text: t(`pm.a.${e.action}`) }), " · ",
        h("span", { text: actor(e) }),
        e.detail && e.detail.note ? h("q", { text: e.detail.note }) : null))));
}

// The server records "recommend: …" / "do not recommend: …"; shown in the console's language.
function opinionText(o) {
  if (!o) return "—";
  const m = o.match(/^(do not recommend|recommend): ([\s\S]*)$/);
  return m ? `${t(m[1] === "recommend" ? "pm.yes" : "pm.no")}：${m[2]}` : o;
}

const actor = (e) => e.staff_id ? S.staff.get(e.staff_id) || t("pm.by.staff", { id: e.staff_id })
  : e.device_id ? t("pm.by.device", { id: e.device_id }) : "";

async function run(p, path, body) {
  try {
    await api(`/permits/${p.id}/${path}`, { method: "POST", body });
    toast(t("pm.done"));
    await load();
    if (S) select(p.id);
  } catch (e) { toast(errorText(e), "error"); }
}

async function opinion(p) {
  const v = await dialog(t("pm.do.opinion"), [
    { name: "recommend", label: t("pm.recommend"), type: "select", required: true, options: [["yes", t("pm.yes")], ["no", t("pm.no")]] },
    { name: "note", label: t("pm.note"), type: "textarea", required: true, minlength: 2 },
  ], t("pm.do.opinion"));
  if (v) run(p, "opinion", { recommend: v.recommend === "yes", note: v.note });
}

async function decide(p, approve) {
  const v = await dialog(approve ? t("pm.do.approve") : t("pm.do.reject"), [
    { name: "note", label: t("pm.note"), type: "textarea", required: !approve, minlength: approve ? undefined : 2 },
  ], approve ? t("pm.do.approve") : t("pm.do.reject"));
  if (v) run(p, approve ? "approve" : "reject", { note: v.note || null });
}

async function amend(p) {
  const v = await dialog(t("pm.do.amend"), [
    { name: "end", label: t("pm.newend"), type: "datetime-local", required: true, value: localInput(new Date(p.end_at)) },
    { name: "note", label: t("pm.note"), type: "textarea", required: true, minlength: 2 },
  ], t("pm.do.amend"));
  if (v) run(p, "amend", { end_at: fromLocalInput(v.end), note: v.note });
}

async function noteAction(p, path, title) {
  const v = await dialog(title, [{ name: "note", label: t("pm.note"), type: "textarea", required: true, minlength: 2 }], title);
  if (v) run(p, path, { note: v.note });
}

async function create(people) {
  const dests = [...S.zones.values()].filter((z) => z.properties.active && ["destination", "home_area"].includes(z.properties.kind));
  const start = new Date(Date.now() + DAY);
  const v = await dialog(t("pm.new"), [
    { name: "supervisee", label: t("pm.who"), type: "select", required: true,
      options: people.filter((p) => p.active).map((p) => [p.id, `${p.full_name}（${p.case_number}）`]) },
    { name: "reason", label: t("pm.reason"), type: "select", required: true, options: REASONS.map((r) => [r, t(`pm.r.${r}`)]) },
    { name: "zone", label: t("pm.dest"), type: "select", required: true, options: dests.map((z) => [z.id, z.properties.name]) },
    { name: "start", label: t("pm.start"), type: "datetime-local", required: true, value: localInput(start) },
    { name: "end", label: t("pm.end"), type: "datetime-local", required: true, value: localInput(new Date(start.getTime() + 3 * DAY)) },
    { name: "details", label: t("pm.details"), type: "textarea" },
  ], t("pm.new"));
  if (!v) return;
  try {
    const p = await api(`/supervisees/${v.supervisee}/permits`, { method: "POST", body: {
      reason: v.reason, destination_zone_id: Number(v.zone), start_at: fromLocalInput(v.start),
      end_at: fromLocalInput(v.end), details: v.details || "" } });
    toast(t("pm.done"));
    await load();
    select(p.id);
  } catch (e) { toast(errorText(e), "error"); }
}
