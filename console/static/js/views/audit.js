// The audit log for auditors and the city bureau: filtered, paged (newest first, by chain order),
// and the hash chain's verification. Reading it is itself recorded, with the purpose given here.
import { api } from "../api.js";
import { h, clear, section, table, toast, errorText, fmtTime, badge } from "../ui.js";
import { t, register } from "../i18n.js";
import { pageHead } from "../office.js";

register({
  zh: { "au.title": "审计日志", "au.verify": "校验哈希链", "au.ok": "哈希链完整：共 {n} 条记录，链头序号 {seq}",
        "au.bad": "哈希链异常：{n} 处问题，首个在序号 {seq}：{msg}", "au.purpose": "查阅目的（记入审计日志）",
        "au.action": "操作", "au.target": "对象前缀", "au.object": "对象", "au.staff": "工作人员 ID", "au.since": "起", "au.until": "止",
        "au.search": "查询", "au.more": "更早的记录", "au.seq": "序号", "au.at": "时间", "au.who": "操作人",
        "au.why": "目的", "au.detail": "详情", "au.from": "来源", "au.default": "例行审计检查",
        "au.checking": "正在校验…", "au.none": "没有符合条件的记录。", "au.head": "链头哈希 {h}" },
  en: { "au.title": "Audit log", "au.verify": "Verify the hash chain", "au.ok": "Chain intact: {n} rows, head at seq {seq}",
        "au.bad": "Chain broken: {n} problems, the first at seq {seq}: {msg}", "au.purpose": "Purpose (recorded in the audit log)",
        "au.action": "Action", "au.target": "Target prefix", "au.object": "Target", "au.staff": "Staff id", "au.since": "From", "au.until": "Until",
        "au.search": "Search", "au.more": "Older rows", "au.seq": "Seq", "au.at": "Time", "au.who": "Who",
        "au.why": "Purpose", "au.detail": "Detail", "au.from": "From", "au.default": "Routine audit review",
        "au.checking": "Verifying…", "au.none": "No rows match.", "au.head": "head hash {h}" },
});

export async function render(main) {
  const purpose = h("input", { name: "purpose", id: "audit-purpose", required: true, minlength: 3, value: t("au.default") });
  const action = h("input", { name: "action", id: "audit-action", placeholder: "permit.approve" });
  const target = h("input", { name: "target", id: "audit-target", placeholder: "permit:" });
  const staff = h("input", { name: "staff", id: "audit-staff", type: "number", min: 1 });
  const since = h("input", { name: "since", type: "datetime-local" });
  const until = h("input", { name: "until", type: "datetime-local" });
  const result = h("div", { id: "audit-verify", class: "verify", role: "status" });
  const rowsBox = h("div", { id: "audit-rows" });
  const more = h("button", { class: "secondary", id: "audit-more", text: t("au.more"), hidden: true });
  let cursor = null;
  const query = () => ({ purpose: purpose.value, action: action.value.trim(), target_prefix: target.value.trim(),
    staff_id: staff.value, since: since.value ? new Date(since.value).toISOString() : "",
    until: until.value ? new Date(until.value).toISOString() : "", limit: 100 });
  const load = async (append) => {
    try {
      const page = await api("/audit", { query: { ...query(), before_seq: append ? cursor : "" } });
      cursor = page.next_before_seq;
      more.hidden = !cursor;
      const tbl = rowsTable(page.items);
      if (append) rowsBox.querySelector("tbody").append(...tbl.querySelector("tbody").children);
      else clear(rowsBox).append(tbl);
    } catch (e) { toast(errorText(e), "error"); }
  };
  more.addEventListener("click", () => load(true));
  const verifyBtn = h("button", { class: "secondary", id: "audit-verify-btn", text: t("au.verify"), onclick: () => verify(result, purpose.value) });
  const filters = h("form", { class: "form filters", id: "audit-filters" },
    h("label", { class: "wide" }, h("span", { text: t("au.purpose") }), purpose),
    h("label", {}, h("span", { text: t("au.action") }), action), h("label", {}, h("span", { text: t("au.target") }), target),
    h("label", {}, h("span", { text: t("au.staff") }), staff), h("label", {}, h("span", { text: t("au.since") }), since),
    h("label", {}, h("span", { text: t("au.until") }), until),
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit", text: t("au.search") })));
  filters.addEventListener("submit", (e) => { e.preventDefault(); if (filters.reportValidity()) load(false); });
  main.append(pageHead(t("au.title"), verifyBtn), result, section(t("au.title"), filters, rowsBox, h("div", { class: "actions" }, more)));
  await Promise.all([load(false), verify(result, purpose.value)]);
}

function rowsTable(items) {
  const tbl = table([
    { label: t("au.seq"), class: "num", render: (a) => String(a.seq) },
    { label: t("au.at"), render: (a) => fmtTime(a.at) },
    { label: t("au.who"), render: (a) => a.staff_username || (a.staff_id ? `#${a.staff_id}` : "—") },
    { label: t("au.action"), render: (a) => h("code", { text: a.action }) },
    { label: t("au.object"), render: (a) => a.target || "—" },
    { label: t("au.why"), render: (a) => a.purpose || "—" },
    { label: t("au.detail"), class: "detail", render: (a) => a.detail && Object.keys(a.detail).length
      ? h("code", { class: "json", text: JSON.stringify(a.detail) }) : "—" },
    { label: t("au.from"), render: (a) => a.remote || "—" },
  ], items);
  tbl.classList.add("audit-table");
  if (!items.length) tbl.querySelector("td.empty").textContent = t("au.none");
  return tbl;
}

async function verify(box, purpose) {
  clear(box).append(h("span", { class: "muted", text: t("au.checking") }));
  try {
    const v = await api("/audit/verify", { query: { purpose } });
    box.className = `verify ${v.ok ? "ok" : "bad"}`;
    clear(box).append(badge(v.ok ? "st-resolved" : "st-open", v.ok ? "✓" : "✗"), " ",
      h("strong", { text: v.ok ? t("au.ok", { n: v.rows, seq: v.head_seq ?? "—" })
        : t("au.bad", { n: v.problem_count, seq: v.first_problem ? v.first_problem.seq : "?", msg: v.first_problem ? v.first_problem.message : "" }) }),
      h("small", { class: "muted", text: `  ${t("au.head", { h: (v.head_hash || "").slice(0, 16) })}…` }));
  } catch (e) { clear(box).append(h("span", { class: "form-error", text: errorText(e) })); }
}
