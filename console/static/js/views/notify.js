// Notification channels: one's own (e-mail, or a webhook such as an SMS gateway, from a minimum
// severity up) and, for heads and administrators, the webhook receivers of their units.
import { api } from "../api.js";
import { h, clear, section, table, toast, dialog, errorText, badge } from "../ui.js";
import { t, register } from "../i18n.js";
import { pageHead, unitNames } from "../office.js";

register({
  zh: { "nt.title": "通知渠道", "nt.mine": "我的通知渠道", "nt.hooks": "Webhook 接收端", "nt.channel": "方式",
        "nt.address": "地址", "nt.min": "最低级别", "nt.via": "经由", "nt.add": "添加渠道", "nt.remove": "停用",
        "nt.email": "电子邮件", "nt.webhook": "Webhook（短信网关等）", "nt.addrhint": "邮箱地址，或接收端使用的号码/账号",
        "nt.live": "控制台的实时告警始终开启；以下渠道用于离开控制台时接收告警。", "nt.none": "尚未设置其他渠道，只在控制台内接收告警。",
        "nt.hname": "名称", "nt.url": "URL", "nt.unit": "所属单位", "nt.state": "状态", "nt.hadd": "登记接收端",
        "nt.secret": "签名密钥只显示这一次，请立即保存：", "nt.done": "已保存", "nt.stopped": "已停用",
        "nt.active": "启用", "nt.inactive": "已停用", "nt.nohooks": "尚未登记 Webhook 接收端。",
        "nt.carries": "内容", "nt.c.alerts": "告警", "nt.c.both": "告警和月度合规报表", "nt.c.reports": "仅月度合规报表" },
  en: { "nt.title": "Notifications", "nt.mine": "My channels", "nt.hooks": "Webhook receivers", "nt.channel": "Channel",
        "nt.address": "Address", "nt.min": "From severity", "nt.via": "Via", "nt.add": "Add a channel", "nt.remove": "Stop",
        "nt.email": "E-mail", "nt.webhook": "Webhook (SMS gateway…)", "nt.addrhint": "E-mail address, or the receiver's handle (phone number…)",
        "nt.live": "Live alerts in the console are always on; these channels reach you away from it.", "nt.none": "No other channels: alerts reach you in the console only.",
        "nt.hname": "Name", "nt.url": "URL", "nt.unit": "Unit", "nt.state": "State", "nt.hadd": "Register a receiver",
        "nt.secret": "The signing secret is shown this once; keep it now:", "nt.done": "Saved", "nt.stopped": "Stopped",
        "nt.active": "active", "nt.inactive": "stopped", "nt.nohooks": "No webhook receivers yet.",
        "nt.carries": "Carries", "nt.c.alerts": "alerts", "nt.c.both": "alerts and the monthly report", "nt.c.reports": "the monthly report only" },
});

const MANAGERS = ["office_head", "district_supervisor", "city_admin"];
const SEVERITIES = ["low", "medium", "high", "critical"];

export async function render(main, _params, ctx) {
  const mine = h("div", { id: "channel-list" });
  const hooks = h("div", { id: "webhook-list" });
  const units = await api("/org/units");
  const S = { ctx, units, names: unitNames(units), mine, hooks, webhooks: [] };
  main.append(pageHead(t("nt.title")), h("p", { class: "fine", text: t("nt.live") }),
    section(t("nt.mine"), mine, h("div", { class: "actions" },
      h("button", { class: "primary", id: "channel-add", text: t("nt.add"), onclick: () => addChannel(S) }))),
    section(t("nt.hooks"), hooks, MANAGERS.includes(ctx.me.role) ? h("div", { class: "actions" },
      h("button", { class: "secondary", id: "webhook-add", text: t("nt.hadd"), onclick: () => addHook(S) })) : null));
  await load(S);
}

async function load(S) {
  const [channels, webhooks] = await Promise.all([api("/me/channels"), api("/webhooks")]);
  S.webhooks = webhooks;
  const hookName = new Map(webhooks.map((w) => [w.id, w.name]));
  const stop = (path) => async () => {
    try { await api(path, { method: "DELETE" }); toast(t("nt.stopped")); await load(S); } catch (e) { toast(errorText(e), "error"); }
  };
  const active = channels.filter((c) => c.active);
  const ct = table([
    { label: t("nt.channel"), render: (c) => t(`nt.${c.channel}`) },
    { label: t("nt.address"), render: (c) => c.address },
    { label: t("nt.via"), render: (c) => c.webhook_id ? hookName.get(c.webhook_id) || `#${c.webhook_id}` : "—" },
    { label: t("nt.min"), render: (c) => badge(`sev-${c.min_severity}`, t(`sev.${c.min_severity}`)) },
    { label: t("nt.carries"), render: (c) => t(`nt.c.${carries(c)}`) },
    { label: "", render: (c) => h("button", { class: "link", text: t("nt.remove"), onclick: stop(`/me/channels/${c.id}`) }) },
  ], active);
  if (!active.length) ct.querySelector("td.empty").textContent = t("nt.none");
  clear(S.mine).append(ct);
  const manager = MANAGERS.includes(S.ctx.me.role);
  const ht = table([
    { label: t("nt.hname"), render: (w) => w.name },
    { label: t("nt.url"), render: (w) => h("code", { class: "url", text: w.url }) },
    { label: t("nt.unit"), render: (w) => S.names.get(w.org_unit_id) || `#${w.org_unit_id}` },
    { label: t("nt.state"), render: (w) => badge(w.active ? "st-resolved" : "muted", t(w.active ? "nt.active" : "nt.inactive")) },
    { label: "", render: (w) => manager && w.active && S.names.has(w.org_unit_id)
      ? h("button", { class: "link", text: t("nt.remove"), onclick: stop(`/webhooks/${w.id}`) }) : "" },
  ], webhooks);
  if (!webhooks.length) ht.querySelector("td.empty").textContent = t("nt.nohooks");
  clear(S.hooks).append(ht);
}

function carries(c) {
  return c.reports ? (c.alerts ? "both" : "reports") : "alerts";
}

async function addChannel(S) {
  const hooks = S.webhooks.filter((w) => w.active);
  const v = await dialog(t("nt.add"), [
    { name: "channel", label: t("nt.channel"), type: "select", required: true,
      options: [["email", t("nt.email")], ...(hooks.length ? [["webhook", t("nt.webhook")]] : [])] },
    { name: "address", label: t("nt.addrhint"), required: true, minlength: 3 },
    ...(hooks.length ? [{ name: "webhook_id", label: t("nt.via"), type: "select", options: hooks.map((w) => [w.id, w.name]) }] : []),
    { name: "min_severity", label: t("nt.min"), type: "select", required: true, options: SEVERITIES.map((s) => [s, t(`sev.${s}`)]) },
    // Heads and bureau staff may have the monthly compliance report e-mailed (e-mail only).
    ...(MANAGERS.includes(S.ctx.me.role) ? [{ name: "carries", label: t("nt.carries"), type: "select",
      options: ["alerts", "both", "reports"].map((k) => [k, t(`nt.c.${k}`)]) }] : []),
  ], t("nt.add"));
  if (!v) return;
  const body = { channel: v.channel, address: v.address, min_severity: v.min_severity };
  if (v.carries && v.carries !== "alerts") Object.assign(body, { reports: true, alerts: v.carries === "both" });
  if (v.channel === "webhook") body.webhook_id = Number(v.webhook_id);
  try { await api("/me/channels", { method: "POST", body }); toast(t("nt.done")); await load(S); }
  catch (e) { toast(errorText(e), "error"); }
}

async function addHook(S) {
  const v = await dialog(t("nt.hadd"), [
    { name: "name", label: t("nt.hname"), required: true },
    { name: "url", label: t("nt.url"), type: "url", required: true },
    { name: "unit", label: t("nt.unit"), type: "select", required: true, options: S.units.map((u) => [u.id, u.name]) },
  ], t("nt.hadd"));
  if (!v) return;
  try {
    const w = await api("/webhooks", { method: "POST", body: { name: v.name, url: v.url, org_unit_id: Number(v.unit) } });
    await dialog(t("nt.secret"), [{ name: "secret", label: w.name, value: w.secret }], t("ok"));
    await load(S);
  } catch (e) { toast(errorText(e), "error"); }
}
