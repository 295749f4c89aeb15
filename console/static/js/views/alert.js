// One alert on its own page: where notifications (e-mail, webhooks) link to.
import { api } from "../api.js";
import { h, clear, section, fmtTime } from "../ui.js";
import { t, has, register } from "../i18n.js";
import { makeMap, stateLegend } from "../map.js";
import { ensureWatch } from "../watch.js";
import { alertSummary, alertActions, drawAlertFixes, alertHistory } from "../alertpanel.js";

register({ zh: { "alertpage.title": "告警 #{id}", "alertpage.notified": "通知记录",
                 "ntf.email": "电子邮件", "ntf.webhook": "Webhook", "ntf.pending": "待发送", "ntf.delivered": "已送达",
                 "ntf.expired": "已过期未送达", "ntf.cancelled": "已取消" },
           en: { "alertpage.title": "Alert #{id}", "alertpage.notified": "Notifications",
                 "ntf.email": "E-mail", "ntf.webhook": "Webhook", "ntf.pending": "pending", "ntf.delivered": "delivered",
                 "ntf.expired": "expired undelivered", "ntf.cancelled": "cancelled" } });
const word = (prefix, v) => (v && has(`${prefix}.${v}`) ? t(`${prefix}.${v}`) : v || "");

let map = null;
export function destroy() { if (map) map.remove(); map = null; }

export async function render(main, [id]) {
  const watch = await ensureWatch();
  if (!watch || main.className !== "view-alert") return;
  const alert = await api(`/alerts/${id}`);
  let person = null;
  try { person = await api(`/supervisees/${alert.supervisee_id}`); } catch { /* shown as an id */ }
  const mapEl = h("div", { class: "map-box", id: "alert-map" });
  const info = h("div", { class: "alert-page-info" });
  main.append(h("h1", { text: t("alertpage.title", { id }) }), h("div", { class: "split" }, info, mapEl));
  const fill = async () => {
    const a = await api(`/alerts/${id}`);
    clear(info).append(alertSummary(a, person), alertActions(a, fill),
      section(t("al.history"), await alertHistory(a)));
    try {
      const sent = await api(`/alerts/${id}/notifications`);
      info.append(section(t("alertpage.notified"), h("ul", { class: "plain" }, sent.map((n) =>
        h("li", { text: `${fmtTime(n.created_at)} · ${word("ntf", n.channel || n.kind)} · ${word("ntf", n.status)}` })))));
    } catch { /* optional */ }
  };
  await fill();
  map = makeMap(mapEl);
  stateLegend(map);
  await drawAlertFixes(map, alert, watch.purpose);
}
