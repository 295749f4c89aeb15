// One alert: what happened (the engine's explanation), the fixes that decided it on the map, its
// history, and what the officer can do (acknowledge, resolve, escalate, suspend notifications).
/* global L */
import { api } from "./api.js";
import { h, fmtTime, ago, dialog, toast, badge, errorText, metres } from "./ui.js";
import { t, register, lang } from "./i18n.js";
import { fixMarker, toMap } from "./map.js";

register({
  zh: { "al.ack": "签收", "al.resolve": "办结", "al.escalate": "上报", "al.suspend": "暂停通知",
        "al.disposition": "处置结果", "al.note": "处置说明", "al.hours": "暂停时长（小时）", "al.reason": "原因",
        "al.opened": "发生时间", "al.count": "触发次数", "al.level": "上报层级", "al.deadline": "签收期限",
        "al.history": "处理记录", "al.who": "对象", "al.office": "司法所", "al.evidence": "判定依据的定位点",
        "al.done.ack": "已签收", "al.done.resolve": "已办结", "al.done.escalate": "已上报", "al.done.suspend": "已暂停通知",
        "al.level.0": "司法所", "al.level.1": "区司法局", "al.level.2": "市司法局", "al.late": "迟到数据",
        "al.suppressed": "通知已暂停", "al.open_person": "查看对象", "al.track": "轨迹回放", "al.position": "告警位置",
        "al.a.acknowledged": "签收", "al.a.resolved": "办结", "al.a.escalated": "上报至{level}",
        "al.a.escalated.auto": "超时未签收，自动上报至{level}", "al.a.suspended": "暂停通知至 {until}" },
  en: { "al.ack": "Acknowledge", "al.resolve": "Resolve", "al.escalate": "Escalate", "al.suspend": "Suspend notifications",
        "al.disposition": "Disposition", "al.note": "What was found and done", "al.hours": "Suspend for (hours)",
        "al.reason": "Reason", "al.opened": "Opened", "al.count": "Times raised", "al.level": "Escalation level",
        "al.deadline": "Acknowledge by", "al.history": "History", "al.who": "Supervisee", "al.office": "Office",
        "al.evidence": "Fixes that decided it", "al.done.ack": "Acknowledged", "al.done.resolve": "Resolved",
        "al.done.escalate": "Escalated", "al.done.suspend": "Notifications suspended",
        "al.level.0": "Office", "al.level.1": "District bureau", "al.level.2": "City bureau", "al.late": "late data",
        "al.suppressed": "notifications suspended", "al.open_person": "Open supervisee", "al.track": "Track playback",
        "al.position": "Alert position",
        "al.a.acknowledged": "acknowledged", "al.a.resolved": "resolved", "al.a.escalated": "escalated to the {level}",
        "al.a.escalated.auto": "not acknowledged in time: escalated to the {level}",
        "al.a.suspended": "notifications suspended until {until}" },
});

const DISPOSITIONS = ["confirmed_violation", "false_alarm", "device_problem", "authorised"];

// Draws the alert's position and the fixes around it on `map`; returns the layer (or null).
export async function drawAlertFixes(map, alert, purpose) {
  const layer = L.featureGroup().addTo(map);
  if (alert.lon !== null && alert.lat !== null) {
    L.circleMarker(toMap(alert.lon, alert.lat), { radius: 14, color: "#c62828", weight: 3, fill: false,
      className: "alert-ring" }).bindTooltip(t("al.position")).addTo(layer);
  }
  const first = alert.first_fix_time || alert.opened_at;
  const last = alert.last_fix_time || alert.opened_at;
  const from = new Date(new Date(first).getTime() - 30 * 60000).toISOString();
  const to = new Date(new Date(last).getTime() + 60000).toISOString();
  const evidence = new Set(((alert.reason || {}).evidence || []).map((e) => Math.round(Number(e.t ?? e[0]))));
  try {
    const fc = await api(`/supervisees/${alert.supervisee_id}/track`, { query: { from, to, purpose, limit: 500 } });
    const pts = fc.features.filter((f) => f.geometry.type === "Point").map((f) => f.properties);
    if (pts.length > 1) {
      L.polyline(pts.map((p) => toMap(p.lon, p.lat)), { color: "#555", weight: 1.5, dashArray: "4 4", interactive: false }).addTo(layer);
    }
    for (const p of pts) {
      const decided = evidence.has(Math.round(new Date(p.fix_time).getTime() / 1000));
      fixMarker(p, decided ? "#c62828" : "#888", { radius: decided ? 6 : 4, className: decided ? "evidence-fix" : "context-fix" })
        .bindTooltip(`${fmtTime(p.fix_time)} ±${metres(p.accuracy)} ${p.provider || ""}`).addTo(layer);
    }
  } catch (e) {
    if (e.status !== 404) toast(errorText(e), "error");
  }
  if (layer.getLayers().length) map.fitBounds(layer.getBounds().pad(0.5), { maxZoom: 16 });
  return layer;
}

export function alertActions(alert, onChanged) {
  const act = async (what, fn) => {
    try {
      await fn();
      toast(t(`al.done.${what}`));
      onChanged();
    } catch (e) { toast(errorText(e), "error"); }
  };
  const box = h("div", { class: "actions alert-actions" });
  if (alert.status === "open") {
    box.append(h("button", { class: "primary", id: "ack", text: t("al.ack"),
      onclick: () => act("ack", () => api(`/alerts/${alert.id}/acknowledge`, { method: "POST" })) }));
  }
  if (alert.status !== "resolved") {
    box.append(h("button", { class: "primary", id: "resolve", text: t("al.resolve"), onclick: async () => {
      const v = await dialog(t("al.resolve"), [
        { name: "disposition", label: t("al.disposition"), type: "select", required: true,
          options: DISPOSITIONS.map((d) => [d, t(`disp.${d}`)]) },
        { name: "note", label: t("al.note"), type: "textarea", required: true, minlength: 3 },
      ], t("al.resolve"));
      if (v) act("resolve", () => api(`/alerts/${alert.id}/resolve`, { method: "POST", body: v }));
    } }));
    if (alert.escalation_level < 2) {
      box.append(h("button", { class: "secondary", id: "escalate", text: t("al.escalate"),
        onclick: () => act("escalate", () => api(`/alerts/${alert.id}/escalate`, { method: "POST" })) }));
    }
    box.append(h("button", { class: "secondary", id: "suspend", text: t("al.suspend"), onclick: async () => {
      const v = await dialog(t("al.suspend"), [
        { name: "hours", label: t("al.hours"), type: "number", required: true, value: "24", min: 1, max: 2160 },
        { name: "reason", label: t("al.reason"), type: "textarea", required: true, minlength: 3 },
      ], t("al.suspend"));
      if (!v) return;
      const now = new Date();
      act("suspend", () => api(`/supervisees/${alert.supervisee_id}/suspensions`, { method: "POST", body: {
        kind: alert.kind, starts_at: now.toISOString(),
        ends_at: new Date(now.getTime() + Number(v.hours) * 3600000).toISOString(), reason: v.reason } }));
    } }));
  }
  return box;
}

export function alertSummary(alert, person) {
  return h("div", { class: "alert-detail", dataset: { alertId: alert.id } },
    h("div", { class: "alert-head" },
      badge(`sev-${alert.severity}`, t(`sev.${alert.severity}`)),
      h("strong", { text: t(`kind.${alert.kind}`) }),
      badge(`st-${alert.status}`, t(`status.${alert.status}`)),
      alert.suppressed ? badge("muted", t("al.suppressed")) : null,
      alert.late ? badge("muted", t("al.late")) : null),
    h("p", { class: "explanation", text: lang === "zh" ? alert.explanation_zh : alert.explanation }),
    h("dl", { class: "facts" },
      h("dt", { text: t("al.who") }),
      h("dd", {}, h("a", { href: `#/supervisees/${alert.supervisee_id}`,
        text: person ? `${person.full_name} (${person.case_number})` : `#${alert.supervisee_id}` })),
      h("dt", { text: t("al.opened") }), h("dd", { text: `${fmtTime(alert.opened_at)} (${ago(alert.opened_at)})` }),
      h("dt", { text: t("al.count") }), h("dd", { text: String(alert.count) }),
      h("dt", { text: t("al.level") }), h("dd", { text: t(`al.level.${alert.escalation_level}`) }),
      alert.ack_deadline && alert.status === "open" ? [h("dt", { text: t("al.deadline") }),
        h("dd", { text: fmtTime(alert.ack_deadline) })] : null));
}

// One step of an alert's history in the console's language (an unknown step as recorded).
function historyText(e) {
  const d = e.detail || {};
  if (e.action === "escalated") {
    const level = t(`al.level.${d.to_level}`);
    return t(d.by_hand ? "al.a.escalated" : "al.a.escalated.auto", { level: lang === "zh" ? level : level.toLowerCase() });
  }
  if (e.action === "suspended") return t("al.a.suspended", { until: fmtTime(d.until) });
  return ["acknowledged", "resolved"].includes(e.action) ? t(`al.a.${e.action}`) : e.action;
}

export async function alertHistory(alert) {
  const rows = await api(`/alerts/${alert.id}/history`);
  return h("ol", { class: "history" }, rows.map((e) =>
    h("li", {}, h("time", { text: fmtTime(e.created_at || e.at) }), " ", h("span", { text: historyText(e) }),
      e.detail && e.detail.note ? h("q", { text: e.detail.note }) : null)));
}
