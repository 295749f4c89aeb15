// One supervisee: profile, level and key flags (with reasons and history), phones and their
// enrolment (OwnTracks QR code and Traccar Client URL, shown once), zones and curfews, travel
// permits, roll-calls, location requests, sanctions, notification suspensions and alerts. The
// small map shows the home area and the person's zones; no location data is read here.
import { api } from "../api.js";
import { h, clear, section, table, fmtTime, ago, dialog, toast, errorText, badge, metres } from "../ui.js";
import { t, register, lang } from "../i18n.js";
import { makeMap, geoLayer, zoneStyle, legend, ZONE_STYLES } from "../map.js";
import { word, levelBadge, flagBadges, statusBadge, personHead, officeNames, personOr404 } from "../people.js";

register({
  zh: {
    "sp.profile": "基本信息", "sp.basis": "监管方式", "sp.home": "执行地", "sp.nohome": "未设置执行地",
    "sp.levelcard": "监管等级与重点标记", "sp.change": "调整等级/标记", "sp.reason": "原因（必填）",
    "sp.flagsin": "重点标记（以逗号分隔）", "sp.changes": "调整记录", "sp.field": "项目", "sp.from": "原值",
    "sp.to": "新值", "sp.when": "时间", "sp.changed": "已调整，手机将按新的等级上报",
    "sp.devices": "定位设备", "sp.enrol": "登记新设备", "sp.label": "设备名称（如：本人手机）",
    "sp.device": "设备编号", "sp.name": "设备名称", "sp.akind": "告警类型", "sp.enrolled": "登记时间", "sp.revoke": "停用", "sp.revoked": "已停用",
    "sp.revokeq": "停用设备 {id}？停用后该设备上报的位置将被拒收。", "sp.inuse": "使用中",
    "sp.once": "以下配置只显示这一次：设备密钥无法再次查看。请当面让矫正对象扫码完成配置，关闭后如需重新配置只能重新签发密钥。",
    "sp.owntracks": "OwnTracks：用手机相机或 OwnTracks 扫描二维码", "sp.traccar": "Traccar Client：服务器地址",
    "sp.traccarid": "设备标识", "sp.secret": "设备密钥", "sp.link": "配置链接", "sp.done": "已完成配置，关闭",
    "sp.mode.mqtt": "MQTT 模式", "sp.mode.http": "HTTP 模式", "sp.copy": "复制",
    "sp.zones": "禁止区域与宵禁", "sp.addzone": "添加", "sp.role": "类型", "sp.role.exclusion": "禁止进入区域",
    "sp.role.curfew": "宵禁", "sp.zone": "区域", "sp.buffer": "预警缓冲（米）", "sp.cstart": "宵禁开始（hh:mm）",
    "sp.cend": "宵禁结束（hh:mm）", "sp.lift": "解除", "sp.liftq": "解除该区域/宵禁？", "sp.lifted": "已解除",
    "sp.permits": "外出审批", "sp.period": "期间", "sp.dest": "目的地", "sp.preason": "事由",
    "origin.officer": "工作人员", "origin.random": "随机抽查",
    "sp.rollcalls": "点名", "sp.rollnow": "立即点名", "sp.rollreason": "点名原因", "sp.rolldefault": "工作人员临时点名",
    "sp.rollsent": "点名已发出，应答将显示在下方", "sp.origin": "发起", "sp.answered": "应答",
    "sp.deadline": "应答期限", "sp.requests": "定位请求", "sp.rule": "规则", "sp.requested": "请求时间",
    "sp.alerts": "告警", "sp.noalerts": "没有告警", "sp.sanctions": "处罚", "sp.suggest": "系统建议",
    "sp.sanction": "记录处罚决定", "sp.skind": "处罚类型", "sp.recorded": "已记录",
    "sp.sk.reprimand": "训诫", "sp.sk.warning": "警告", "sp.sk.revocation_request": "提请撤销",
    "sp.sk.none": "暂无建议", "sp.outdays": "失联天数", "sp.reprimands": "近期训诫", "sp.ndays": "{n} 天",
    "sp.personmade": "由工作人员决定，系统不会自动处罚。",
    "sp.suspensions": "暂停通知", "sp.suspend": "暂停通知", "sp.hours": "时长（小时）", "sp.kind": "告警类型（留空为全部）",
    "sp.allkinds": "全部类型", "sp.cancelsus": "取消", "sp.cancelled": "已取消", "sp.until": "至",
    "sp.map": "执行地与区域",
    "sp.ok": "已保存",
  },
  en: {
    "sp.profile": "Profile", "sp.basis": "Monitoring", "sp.home": "Home area", "sp.nohome": "No home area set",
    "sp.levelcard": "Level and key flags", "sp.change": "Change level/flags", "sp.reason": "Reason (required)",
    "sp.flagsin": "Key flags (comma separated)", "sp.changes": "Changes", "sp.field": "Field", "sp.from": "From",
    "sp.to": "To", "sp.when": "When", "sp.changed": "Changed; the phone reports at the new level's interval",
    "sp.devices": "Phones", "sp.enrol": "Enrol a phone", "sp.label": "Label (e.g. own phone)",
    "sp.device": "Device", "sp.name": "Label", "sp.akind": "Alert kind", "sp.enrolled": "Enrolled", "sp.revoke": "Revoke", "sp.revoked": "Revoked",
    "sp.revokeq": "Revoke device {id}? Its reports will be refused.", "sp.inuse": "In use",
    "sp.once": "Shown once: the secret cannot be retrieved again. Have the supervisee scan the code now; after closing, a new secret must be issued to configure again.",
    "sp.owntracks": "OwnTracks: scan the code with the phone's camera or OwnTracks", "sp.traccar": "Traccar Client: server URL",
    "sp.traccarid": "Device identifier", "sp.secret": "Device secret", "sp.link": "Configuration link",
    "sp.done": "Configured, close", "sp.mode.mqtt": "MQTT mode", "sp.mode.http": "HTTP mode", "sp.copy": "Copy",
    "sp.zones": "Prohibited zones and curfews", "sp.addzone": "Add", "sp.role": "Kind", "sp.role.exclusion": "Prohibited zone",
    "sp.role.curfew": "Curfew", "sp.zone": "Zone", "sp.buffer": "Warning buffer (m)", "sp.cstart": "Curfew from (hh:mm)",
    "sp.cend": "Curfew until (hh:mm)", "sp.lift": "Lift", "sp.liftq": "Lift this zone/curfew?", "sp.lifted": "Lifted",
    "sp.permits": "Travel permits", "sp.period": "Period", "sp.dest": "Destination", "sp.preason": "Reason",
    "origin.officer": "Officer", "origin.random": "Random",
    "sp.rollcalls": "Roll-calls", "sp.rollnow": "Roll-call now", "sp.rollreason": "Reason", "sp.rolldefault": "Officer's roll-call",
    "sp.rollsent": "Roll-call sent; the answer appears below", "sp.origin": "Origin", "sp.answered": "Answered",
    "sp.deadline": "Answer by", "sp.requests": "Location requests", "sp.rule": "Rule", "sp.requested": "Requested",
    "sp.alerts": "Alerts", "sp.noalerts": "No alerts", "sp.sanctions": "Sanctions", "sp.suggest": "Suggestion",
    "sp.sanction": "Record a sanction", "sp.skind": "Sanction", "sp.recorded": "Recorded",
    "sp.sk.reprimand": "Reprimand", "sp.sk.warning": "Warning", "sp.sk.revocation_request": "Revocation request",
    "sp.sk.none": "No suggestion", "sp.outdays": "Out of contact", "sp.reprimands": "Recent reprimands",
    "sp.ndays": "{n} days",
    "sp.personmade": "A person decides; nothing is applied automatically.",
    "sp.suspensions": "Suspended notifications", "sp.suspend": "Suspend notifications", "sp.hours": "For (hours)",
    "sp.kind": "Alert kind (empty: all)", "sp.allkinds": "All kinds", "sp.cancelsus": "Cancel", "sp.cancelled": "Cancelled",
    "sp.until": "until", "sp.map": "Home area and zones",
    "sp.ok": "Saved",
  },
});

const ALERT_KINDS = ["area_exit", "exclusion_entry", "exclusion_approach", "curfew_breach", "overdue_return",
  "communication_failure", "location_failure", "phone_off", "missed_roll_call", "suspected_spoofing"];
let map = null;

export function destroy() { if (map) map.remove(); map = null; }

// Runs an action, tells the officer how it went, and redraws a part of the page on success.
async function act(fn, done, redraw) {
  try {
    await fn();
    if (done) toast(done);
    if (redraw) await redraw();
  } catch (e) { toast(errorText(e), "error"); }
}

function slot(id) { return h("div", { class: "slot", id }); }

export async function render(main, [id]) {
  let p = await personOr404(api, main, id);
  if (!p) return;
  const offices = await officeNames(api);
  const base = `/supervisees/${id}`;
  const head = h("div");
  const left = h("div", { class: "col" });
  const right = h("div", { class: "col" });
  main.append(h("a", { class: "back", href: "#/supervisees", text: `← ${t("pp.back")}` }), head,
    h("div", { class: "person-grid" }, left, right));
  const drawHead = () => clear(head).append(personHead(p,
    h("button", { class: "primary", id: "rollcall", text: t("sp.rollnow"), onclick: rollCall }),
    h("a", { class: "button", id: "open-track", href: `#/supervisees/${id}/track`, text: t("pp.track") })));

  const parts = {
    profile: slot("sp-profile"), level: slot("sp-level"), devices: slot("sp-devices"), enrolment: slot("sp-enrolment"),
    alerts: slot("sp-alerts"), rollcalls: slot("sp-rollcalls"), requests: slot("sp-requests"),
    sanctions: slot("sp-sanctions"), suspensions: slot("sp-suspensions"), zones: slot("sp-zones"),
    permits: slot("sp-permits"),
  };
  const mapEl = h("div", { id: "person-map", class: "person-map" });
  left.append(parts.profile, parts.enrolment, parts.level, parts.devices, parts.rollcalls, parts.requests);
  right.append(section(t("sp.map"), mapEl), parts.alerts, parts.zones, parts.permits, parts.sanctions, parts.suspensions);

  // --- profile and level ---
  const drawProfile = () => clear(parts.profile).append(section(t("sp.profile"), h("dl", { class: "facts" },
    h("dt", { text: t("pp.case") }), h("dd", { class: "mono", text: p.case_number }),
    h("dt", { text: t("pp.type") }), h("dd", { text: word("stype", p.supervision_type) }),
    h("dt", { text: t("sp.basis") }), h("dd", { text: word("basis", p.monitoring_basis) }),
    h("dt", { text: t("pp.office") }), h("dd", { text: offices.get(p.office_id) || `#${p.office_id}` }),
    h("dt", { text: t("pp.state") }), h("dd", { text: p.active ? t("pp.active") : t("pp.inactive") }))));

  const drawLevel = async () => {
    const changes = await api(`${base}/changes`);
    const show = (field, v) => (field === "level" ? word("lvl", v) : (Array.isArray(v) && v.length ? v.join("、") : "—"));
    clear(parts.level).append(section(t("sp.levelcard"),
      h("div", { class: "level-now" }, levelBadge(p.level), flagBadges(p.key_flags),
        h("button", { class: "secondary", id: "change-level", text: t("sp.change"), onclick: changeLevel })),
      h("h3", { text: t("sp.changes") }),
      table([
        { label: t("sp.when"), render: (c) => fmtTime(c.at) },
        { label: t("sp.field"), render: (c) => (c.field === "level" ? t("pp.level") : t("pp.flags")) },
        { label: t("sp.from"), render: (c) => show(c.field, c.old) },
        { label: t("sp.to"), render: (c) => show(c.field, c.new) },
        { label: t("pp.why"), render: (c) => h("span", { class: "reason", text: c.reason }) },
      ], [...changes].reverse())));
  };
  async function changeLevel() {
    const asked = dialog(t("sp.change"), [
      { name: "level", label: t("pp.level"), type: "select", required: true,
        options: ["strict", "normal", "lenient"].map((l) => [l, word("lvl", l)]) },
      { name: "flags", label: t("sp.flagsin"), value: (p.key_flags || []).join(", ") },
      { name: "reason", label: t("sp.reason"), type: "textarea", required: true, minlength: 3 },
    ], t("save"));
    document.querySelector("dialog.dialog select[name=level]").value = p.level;  // opens on the current level
    const v = await asked;
    if (!v) return;
    const key_flags = v.flags.split(/[,，、]/).map((s) => s.trim()).filter(Boolean);
    await act(async () => {
      p = await api(`${base}/level`, { method: "PUT", body: { level: v.level, key_flags, reason: v.reason } });
    }, t("sp.changed"), async () => { drawHead(); await drawLevel(); });
  }

  // --- devices and enrolment ---
  const drawDevices = async () => {
    const devices = await api(`${base}/devices`);
    clear(parts.devices).append(section(t("sp.devices"),
      table([
        { label: t("sp.device"), render: (d) => h("span", { class: "mono", text: d.id }) },
        { label: t("sp.name"), render: (d) => d.label || "—" },
        { label: t("sp.enrolled"), render: (d) => fmtTime(d.created_at) },
        { label: t("pp.state"), render: (d) => (d.active ? badge("st-resolved", t("sp.inuse"))
          : badge("muted", `${t("sp.revoked")} ${fmtTime(d.revoked_at)}`)) },
        { label: "", render: (d) => (d.active ? h("button", { class: "link danger-link", text: t("sp.revoke"),
          dataset: { device: d.id }, onclick: () => revoke(d.id) }) : "") },
      ], devices),
      h("div", { class: "actions" }, h("button", { class: "primary", id: "enrol", text: t("sp.enrol"), onclick: enrol }))));
  };
  async function revoke(deviceId) {
    if (!await dialog(t("sp.revokeq", { id: deviceId }), [], t("sp.revoke"))) return;
    await act(() => api(`/devices/${deviceId}`, { method: "DELETE" }), t("sp.revoked"), drawDevices);
  }
  async function enrol() {
    const v = await dialog(t("sp.enrol"), [{ name: "label", label: t("sp.label"), value: "本人手机" }], t("sp.enrol"));
    if (!v) return;
    await act(async () => {
      const cred = await api(`${base}/devices`, { method: "POST", body: { label: v.label || null } });
      showCredentials(cred);
    }, null, drawDevices);
  }
  function showCredentials(cred) {
    const e = cred.enrolment;
    const copy = (text) => h("button", { class: "link", text: t("sp.copy"),
      onclick: () => navigator.clipboard.writeText(text).then(() => toast(t("sp.copy")), () => {}) });
    const card = h("section", { class: "card enrolment", id: "enrolment" },
      h("h2", { text: `${t("sp.enrol")} · ${cred.device_id}` }),
      h("p", { class: "notice once", role: "alert", text: t("sp.once") }),
      h("div", { class: "enrol-grid" },
        h("figure", { class: "qr" },
          h("img", { id: "owntracks-qr", src: e.owntracks_qr_svg, alt: "OwnTracks QR", width: 280, height: 280 }),
          h("figcaption", { text: `${t("sp.owntracks")}（${t(`sp.mode.${e.owntracks_mode}`)}）` })),
        h("dl", { class: "facts enrol-facts" },
          h("dt", { text: t("sp.traccar") }),
          h("dd", {}, h("code", { id: "traccar-url", class: "wrap", text: e.traccar_client_url }), copy(e.traccar_client_url)),
          h("dt", { text: t("sp.traccarid") }), h("dd", {}, h("code", { text: e.traccar_client_device_identifier })),
          h("dt", { text: t("sp.secret") }), h("dd", {}, h("code", { id: "device-secret", class: "wrap", text: cred.secret })),
          h("dt", { text: t("sp.link") }),
          h("dd", {}, h("a", { href: e.owntracks_link, class: "wrap small", text: e.owntracks_link.slice(0, 64) + "…" }),
            copy(e.owntracks_link)))),
      h("div", { class: "actions" }, h("button", { class: "secondary", id: "enrol-done", text: t("sp.done"),
        onclick: () => clear(parts.enrolment) })));
    clear(parts.enrolment).append(card);
    card.scrollIntoView({ block: "start" });
  }

  // --- zones, with the map ---
  map = makeMap(mapEl);
  map.options.zoomSnap = 0.25;  // a small map: fit the area closely
  legend(map, [[ZONE_STYLES.home_area.color, t("sp.home")], [ZONE_STYLES.exclusion.color, t("sp.role.exclusion")],
    [ZONE_STYLES.curfew.color, t("sp.role.curfew")]]);
  let zoneLayer = null;
  const zoneNames = new Map();
  const drawZones = async () => {
    const [rows, all] = await Promise.all([api(`${base}/zones`), api("/zones")]);
    for (const f of all.features) zoneNames.set(f.id, f);
    const active = rows.filter((r) => r.active);
    clear(parts.zones).append(section(t("sp.zones"),
      table([
        { label: t("sp.role"), render: (r) => t(`sp.role.${r.role}`) },
        { label: t("sp.zone"), render: (r) => (zoneNames.get(r.zone_id) || { properties: { name: `#${r.zone_id}` } }).properties.name },
        { label: "", render: (r) => (r.role === "curfew" ? `${r.curfew_start}–${r.curfew_end}` : r.buffer_m ? `+${metres(r.buffer_m)}` : "") },
        { label: "", render: (r) => h("button", { class: "link danger-link", text: t("sp.lift"), onclick: async () => {
          if (await dialog(t("sp.liftq"), [], t("sp.lift"))) await act(() => api(`${base}/zones/${r.id}`, { method: "DELETE" }), t("sp.lifted"), drawZones);
        } }) },
      ], active),
      h("div", { class: "actions" }, h("button", { class: "secondary", id: "add-zone", text: t("sp.addzone"),
        onclick: () => addZone(all) }))));
    if (zoneLayer) zoneLayer.remove();
    const feats = [];
    const home = p.home_zone_id && zoneNames.get(p.home_zone_id);
    if (home) feats.push({ ...home, properties: { ...home.properties, kind: "home_area" } });
    for (const r of active) {
      const z = zoneNames.get(r.zone_id);
      if (z) feats.push({ ...z, properties: { ...z.properties, roles: [r.role] } });
    }
    zoneLayer = geoLayer({ type: "FeatureCollection", features: feats }, zoneStyle,
      (f, layer) => layer.bindTooltip(f.properties.name)).addTo(map);
    const b = zoneLayer.getBounds();
    if (b.isValid()) map.fitBounds(b, { padding: [12, 12] });
    if (!home) mapEl.append(h("p", { class: "map-note", text: t("sp.nohome") }));
  };
  async function addZone(all) {
    const v = await dialog(t("sp.zones"), [
      { name: "role", label: t("sp.role"), type: "select", required: true,
        options: [["exclusion", t("sp.role.exclusion")], ["curfew", t("sp.role.curfew")]] },
      { name: "zone_id", label: t("sp.zone"), type: "select", required: true,
        options: all.features.map((f) => [f.id, `${f.properties.name} (${f.properties.kind})`]) },
      { name: "buffer_m", label: t("sp.buffer"), type: "number", value: "0", min: 0, max: 5000 },
      { name: "curfew_start", label: t("sp.cstart"), type: "time" },
      { name: "curfew_end", label: t("sp.cend"), type: "time" },
    ], t("sp.addzone"));
    if (!v) return;
    const body = { zone_id: Number(v.zone_id), role: v.role, buffer_m: Number(v.buffer_m || 0) };
    if (v.role === "curfew") Object.assign(body, { curfew_start: v.curfew_start, curfew_end: v.curfew_end });
    await act(() => api(`${base}/zones`, { method: "POST", body }), t("sp.ok"), drawZones);
  }

  // --- permits, alerts, roll-calls, location requests ---
  const drawPermits = async () => {
    const permits = await api("/permits", { query: { supervisee_id: id } });
    clear(parts.permits).append(section(t("sp.permits"), table([
      { label: t("sp.preason"), key: "reason" },
      { label: t("sp.period"), render: (x) => `${fmtTime(x.start_at)} – ${fmtTime(x.end_at)}` },
      { label: t("sp.dest"), render: (x) => (zoneNames.get(x.destination_zone_id) || { properties: { name: `#${x.destination_zone_id}` } }).properties.name },
      { label: t("pp.state"), render: (x) => statusBadge(x.status) },
    ], permits)));
  };
  const drawAlerts = async () => {
    const page = await api("/alerts", { query: { supervisee_id: id, limit: 50 } });
    const grid = table([
      { label: t("sp.when"), render: (a) => fmtTime(a.opened_at) },
      { label: "", render: (a) => badge(`sev-${a.severity}`, t(`sev.${a.severity}`)) },
      { label: t("sp.akind"), render: (a) => h("a", { href: `#/alerts/${a.id}`, text: t(`kind.${a.kind}`) }) },
      { label: t("pp.state"), render: (a) => badge(`st-${a.status}`, t(`status.${a.status}`)) },
    ], page.items, (a) => { location.hash = `#/alerts/${a.id}`; });
    if (!page.items.length) grid.querySelector("td.empty").textContent = t("sp.noalerts");
    clear(parts.alerts).append(section(`${t("sp.alerts")} (${page.total})`, grid));
  };
  const drawRollCalls = async () => {
    const rows = await api(`${base}/rollcalls`);
    clear(parts.rollcalls).append(section(t("sp.rollcalls"), table([
      { label: t("sp.when"), render: (r) => fmtTime(r.sent_at || r.scheduled_at) },
      { label: t("sp.origin"), render: (r) => word("origin", r.origin) },
      { label: t("pp.state"), render: (r) => statusBadge(r.status) },
      { label: t("sp.answered"), render: (r) => (r.answered_at ? `${fmtTime(r.answered_at)}` : r.deadline ? `${t("sp.deadline")} ${fmtTime(r.deadline)}` : "—") },
      { label: t("sp.rollreason"), key: "reason" },
    ], rows.slice(0, 10))));
  };
  async function rollCall() {
    const v = await dialog(t("sp.rollnow"), [
      { name: "reason", label: t("sp.rollreason"), type: "text", required: true, minlength: 3, value: t("sp.rolldefault") },
    ], t("sp.rollnow"));
    if (v) await act(() => api(`${base}/rollcalls`, { method: "POST", body: { reason: v.reason } }), t("sp.rollsent"), drawRollCalls);
  }
  const drawRequests = async () => {
    const rows = await api(`${base}/location-requests`);
    clear(parts.requests).append(section(t("sp.requests"), table([
      { label: t("sp.requested"), render: (r) => `${fmtTime(r.requested_at)} (${ago(r.requested_at)})` },
      { label: t("sp.rule"), render: (r) => t(`kind.${r.rule}`) },
      { label: t("pp.state"), render: (r) => statusBadge(r.status) },
      { label: t("sp.answered"), render: (r) => fmtTime(r.answered_at) },
    ], rows.slice(0, 10))));
  };

  // --- sanctions and suspensions ---
  const drawSanctions = async () => {
    const s = await api(`${base}/sanction-suggestion`);
    clear(parts.sanctions).append(section(t("sp.sanctions"),
      h("dl", { class: "facts" },
        h("dt", { text: t("sp.suggest") }),
        h("dd", {}, h("strong", { id: "suggestion", text: s.suggestion ? t(`sp.sk.${s.suggestion}`) : t("sp.sk.none") }),
          s.suggestion && s.reason ? h("span", { class: "muted", id: "suggestion-reason",
            text: ` — ${lang === "zh" && s.reason_zh ? s.reason_zh : s.reason}` }) : null),
        h("dt", { text: t("sp.outdays") }), h("dd", { text: s.out_of_contact_days === null ? "—"
          : t("sp.ndays", { n: Number(s.out_of_contact_days).toFixed(1) }) }),
        h("dt", { text: t("sp.reprimands") }), h("dd", { text: String(s.recent_reprimands) })),
      h("p", { class: "fine", text: t("sp.personmade") }),
      h("div", { class: "actions" }, h("button", { class: "secondary", id: "sanction", text: t("sp.sanction"),
        onclick: async () => {
          const v = await dialog(t("sp.sanction"), [
            { name: "kind", label: t("sp.skind"), type: "select", required: true,
              options: ["reprimand", "warning", "revocation_request"].map((k) => [k, t(`sp.sk.${k}`)]) },
            { name: "reason", label: t("sp.reason"), type: "textarea", required: true, minlength: 3 },
          ], t("sp.sanction"));
          if (v) {
            await act(() => api(`${base}/sanctions`, { method: "POST", body: v }), t("sp.recorded"), async () => {
              p = await api(base); drawHead(); await Promise.all([drawSanctions(), drawLevel()]);
            });
          }
        } }))));
  };
  const drawSuspensions = async () => {
    const rows = await api(`${base}/suspensions`);
    const now = Date.now();
    clear(parts.suspensions).append(section(t("sp.suspensions"), table([
      { label: t("sp.period"), render: (s) => `${fmtTime(s.starts_at)} ${t("sp.until")} ${fmtTime(s.ends_at)}` },
      { label: t("sp.akind"), render: (s) => (s.kind ? t(`kind.${s.kind}`) : t("sp.allkinds")) },
      { label: t("pp.why"), key: "reason" },
      { label: "", render: (s) => (s.cancelled_at ? badge("muted", t("sp.cancelled"))
        : new Date(s.ends_at).getTime() > now ? h("button", { class: "link danger-link", text: t("sp.cancelsus"),
          onclick: () => act(() => api(`${base}/suspensions/${s.id}`, { method: "DELETE" }), t("sp.cancelled"), drawSuspensions) })
          : badge("muted", t("st.expired"))) },
    ], rows.slice(0, 10)),
    h("div", { class: "actions" }, h("button", { class: "secondary", id: "suspend", text: t("sp.suspend"), onclick: async () => {
      const v = await dialog(t("sp.suspend"), [
        { name: "hours", label: t("sp.hours"), type: "number", required: true, value: "24", min: 1, max: 2160 },
        { name: "kind", label: t("sp.kind"), type: "select", options: [["", t("sp.allkinds")], ...ALERT_KINDS.map((k) => [k, t(`kind.${k}`)])] },
        { name: "reason", label: t("sp.reason"), type: "textarea", required: true, minlength: 3 },
      ], t("sp.suspend"));
      if (!v) return;
      const start = new Date();
      await act(() => api(`${base}/suspensions`, { method: "POST", body: { kind: v.kind || null, reason: v.reason,
        starts_at: start.toISOString(), ends_at: new Date(start.getTime() + Number(v.hours) * 3600000).toISOString() } }),
      t("sp.ok"), drawSuspensions);
    } }))));
  };

  drawHead();
  drawProfile();
  // Each part loads on its own: one that fails says so and leaves the others.
  const loaders = [[drawLevel, parts.level], [drawDevices, parts.devices], [drawAlerts, parts.alerts],
    [drawRollCalls, parts.rollcalls], [drawRequests, parts.requests], [drawSanctions, parts.sanctions],
    [drawSuspensions, parts.suspensions], [async () => { await drawZones(); await drawPermits(); }, parts.zones]];
  await Promise.all(loaders.map(([fn, el]) => fn().catch((e) => {
    if (e.status !== 401) el.append(h("p", { class: "notice error", text: errorText(e) }));
  })));
}
