// The duty view: the jurisdiction on a map (last position + accuracy circle, zones, state colours)
// and beside it the live alert queue. Alerts appear as the feed announces them; acknowledging,
// resolving, escalating or suspending here is announced to every other open console by the same
// feed.
/* global L */
import { api } from "../api.js";
import { h, clear, fmtTime, ago, badge, toast, errorText, metres } from "../ui.js";
import { t, register } from "../i18n.js";
import { makeMap, geoLayer, zoneStyle, fixMarker, STATE_COLOURS, stateLegend } from "../map.js";
import { ensureWatch, forgetWatch } from "../watch.js";
import { openFeed, onFeed, onFeedStatus, closeFeed } from "../feed.js";
import { alertSummary, alertActions, drawAlertFixes, alertHistory } from "../alertpanel.js";
import { cue, unlockAudio } from "../sound.js";

register({
  zh: { "duty.queue": "告警队列", "duty.live": "实时", "duty.reconnecting": "重新连接中…", "duty.closed": "已断开",
        "duty.people": "人", "duty.empty": "当前没有待处理的告警", "duty.refresh": "刷新", "duty.mute": "静音",
        "duty.unmute": "开启提示音", "duty.last": "最后定位", "duty.noposition": "3 天内无定位",
        "duty.new": "新告警", "duty.back": "返回队列", "duty.needwatch": "值班监控需要填写查看目的。",
        "duty.start": "开始值班", "duty.newcount": "{n} 条新告警" },
  en: { "duty.queue": "Alert queue", "duty.live": "live", "duty.reconnecting": "reconnecting…", "duty.closed": "disconnected",
        "duty.people": "people", "duty.empty": "No open alerts", "duty.refresh": "Refresh", "duty.mute": "Mute",
        "duty.unmute": "Sound on", "duty.last": "Last fix", "duty.noposition": "no fix in 3 days",
        "duty.new": "New alert", "duty.back": "Back to the queue", "duty.needwatch": "The duty view needs a purpose.",
        "duty.start": "Start the duty watch", "duty.newcount": "{n} new" },
});

const SEVERITY_ORDER = { critical: 0, high: 1, medium: 2, low: 3 };
// Positions arrive every 5-15 minutes from real phones and alerts redraw a person at once, so
// the whole map is re-read every 2 minutes, and not at all while the tab is hidden (each read
// is an audited access to location data); a tab shown again re-reads if its map is stale.
const MAP_REFRESH_MS = 120000;
// The jurisdiction's district outlines under everything else (no fill, so zones stay readable).
const BOUNDARY_STYLE = { color: "#5d6b7a", weight: 1.5, dashArray: "5 4", fill: false, interactive: true };
let state = null;

export function destroy() {
  if (!state) return;
  document.title = t("app");
  clearInterval(state.timer);
  clearTimeout(state.soon);
  document.removeEventListener("visibilitychange", onVisible);
  state.unsub();
  state.map.remove();
  state = null;
}

export async function render(main, _params, ctx) {
  const watch = await ensureWatch();
  if (main.className !== "view-duty") return;  // the officer went elsewhere meanwhile
  if (!watch) {
    main.append(h("p", { class: "notice", text: t("duty.needwatch") }),
      h("button", { class: "primary", text: t("duty.start"), onclick: () => { location.reload(); } }));
    return;
  }
  unlockAudio();
  const mapEl = h("div", { id: "duty-map" });
  const status = h("span", { class: "feed-status", id: "feed-status", text: "…" });
  const counts = h("div", { class: "state-counts", id: "state-counts" });
  const list = h("ol", { class: "queue", id: "alert-queue" });
  const detail = h("div", { class: "queue-detail", id: "alert-detail", hidden: true });
  const muteBtn = h("button", { class: "link", id: "mute" });
  const newBadge = h("button", { class: "new-badge", id: "new-alerts", hidden: true, onclick: () => {
    list.scrollTop = 0;
    seen();
  } });
  const side = h("aside", { class: "duty-side" },
    h("div", { class: "side-head" }, h("h2", { text: t("duty.queue") }), newBadge, status, muteBtn),
    counts, list, detail);
  main.append(h("div", { class: "duty" }, mapEl, side));
  const map = makeMap(mapEl);
  stateLegend(map);
  state = { map, ctx, watch, list, detail, counts, people: new Map(), alerts: new Map(), selected: null,
    zonesLayer: null, boundsLayer: null, loadedAt: 0, peopleLayer: L.layerGroup().addTo(map), fixesLayer: null, fitted: false, muted: false,
    fresh: 0, newBadge, markers: new Map(),
    timer: null, soon: null, unsub: () => {} };
  const setMute = () => { muteBtn.textContent = state.muted ? t("duty.unmute") : t("duty.mute"); };
  muteBtn.addEventListener("click", () => { state.muted = !state.muted; setMute(); });
  setMute();

  onFeedStatus((s) => { status.textContent = t(`duty.${s}`); status.className = `feed-status ${s}`; });
  state.unsub = onFeed(onEvent);
  openFeed(watch, (why) => {
    // The watch ended (its sign-in did): ask for the purpose again by opening the view anew.
    if (why === "closed") { forgetWatch(); toast(t("duty.closed"), "error"); destroy(); render(clear(main), [], ctx); }
  });
  await Promise.all([loadMap(), loadQueue()]);
  // Everyone drawn and the queue filled: what the console benchmark calls a usable map.
  performance.mark("ccs-map-ready");
  state.timer = setInterval(() => { if (!document.hidden) loadMap().catch(() => {}); }, MAP_REFRESH_MS);
  document.addEventListener("visibilitychange", onVisible);
}

function onVisible() {
  if (state && !document.hidden && Date.now() - state.loadedAt > MAP_REFRESH_MS) loadMap().catch(() => {});
}

async function loadMap() {
  if (!state) return;
  let data;
  try {
    data = await api("/duty", { query: { watch: state.watch.id } });
  } catch (e) {
    if (e.code === "watch_closed") { forgetWatch(); closeFeed(); }
    throw e;
  }
  if (!state) return;
  const { map } = state;
  state.loadedAt = Date.now();
  if (state.boundsLayer) state.boundsLayer.remove();
  state.boundsLayer = geoLayer(data.boundaries || { type: "FeatureCollection", features: [] }, BOUNDARY_STYLE,
    (f, layer) => layer.bindTooltip(f.properties.name)).addTo(map);
  if (state.zonesLayer) state.zonesLayer.remove();
  state.zonesLayer = geoLayer(data.zones, zoneStyle, (f, layer) => layer.bindTooltip(f.properties.name)).addTo(map);
  state.zonesLayer.bringToBack();
  state.boundsLayer.bringToBack();
  state.peopleLayer.clearLayers();
  state.markers.clear();
  state.people.clear();
  for (const p of data.supervisees) {
    state.people.set(p.id, p);
    drawPerson(p);
  }
  renderCounts();
  if (!state.fitted) {
    let b = state.zonesLayer.getBounds();
    if (!b.isValid()) b = state.boundsLayer.getBounds();  // nobody here yet: the district
    if (b.isValid()) map.fitBounds(b, { padding: [20, 20] });
    state.fitted = true;
  }
  renderQueue();
}

function renderCounts() {
  const tally = {};
  for (const p of state.people.values()) tally[p.state] = (tally[p.state] || 0) + 1;
  clear(state.counts).append(...Object.keys(STATE_COLOURS).map((k) =>
    h("span", { class: `count state-${k}`, dataset: { state: k } },
      h("span", { class: "swatch" }), `${t(`v.${k}`)} ${tally[k] || 0}`)));
  state.counts.querySelectorAll(".count .swatch").forEach((sw) => {
    sw.style.background = STATE_COLOURS[sw.parentElement.dataset.state];
  });
}

function drawPerson(p) {
  if (state.markers.has(p.id)) state.markers.get(p.id).remove();
  state.markers.delete(p.id);
  if (!p.position) return;
  const m = fixMarker(p.position, STATE_COLOURS[p.state], { className: `person state-${p.state}` });
  m.bindTooltip(`${p.full_name} · ${t(`v.${p.state}`)} · ${ago(p.position.fix_time)} · ±${metres(p.position.accuracy)}`);
  m.on("click", () => { location.hash = `#/supervisees/${p.id}`; });
  m.addTo(state.peopleLayer);
  state.markers.set(p.id, m);
}

// An alert that puts someone outside recolours them at once; the full map follows shortly.
const OUTSIDE_KINDS = ["area_exit", "exclusion_entry", "curfew_breach", "overdue_return"];
function markOutside(alert) {
  const p = state.people.get(alert.supervisee_id);
  if (!p || !OUTSIDE_KINDS.includes(alert.kind) || p.state === "outside") return;
  p.state = "outside";
  if (alert.lon !== null && alert.lat !== null) {
    p.position = { ...(p.position || {}), lon: alert.lon, lat: alert.lat,
      accuracy: (alert.reason || {}).accuracy_m ?? null, fix_time: alert.last_fix_time || alert.opened_at };
  }
  drawPerson(p);
  renderCounts();
}

async function loadQueue() {
  const [open, acked] = await Promise.all([
    api("/alerts", { query: { status: "open", limit: 500 } }),
    api("/alerts", { query: { status: "acknowledged", limit: 500 } }),
  ]);
  if (!state) return;
  for (const a of [...open.items, ...acked.items]) state.alerts.set(a.id, a);
  renderQueue();
}

function sorted() {
  return [...state.alerts.values()].filter((a) => a.status !== "resolved").sort((a, b) =>
    (a.status === "open" ? 0 : 1) - (b.status === "open" ? 0 : 1)
    || SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity]
    || new Date(b.updated_at) - new Date(a.updated_at));
}

function renderQueue() {
  if (!state) return;
  const items = sorted();
  clear(state.list);
  if (!items.length) state.list.append(h("li", { class: "empty", text: t("duty.empty") }));
  for (const a of items) {
    const p = state.people.get(a.supervisee_id);
    const li = h("li", { class: `queue-item sev-${a.severity} st-${a.status}${state.selected === a.id ? " selected" : ""}${a._fresh ? " fresh" : ""}`,
      dataset: { alertId: a.id, status: a.status }, tabindex: 0 },
      h("div", { class: "qi-top" }, badge(`sev-${a.severity}`, t(`sev.${a.severity}`)),
        h("strong", { text: t(`kind.${a.kind}`) }), h("time", { text: fmtTime(a.opened_at, false) })),
      h("div", { class: "qi-who", text: p ? `${p.full_name} · ${p.case_number}` : `#${a.supervisee_id}` }),
      h("div", { class: "qi-status" }, badge(`st-${a.status}`, t(`status.${a.status}`)),
        a.escalation_level ? badge("muted", t(`al.level.${a.escalation_level}`)) : null,
        a.suppressed ? badge("muted", t("al.suppressed")) : null));
    li.addEventListener("click", () => select(a.id));
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") select(a.id); });
    state.list.append(li);
  }
}

async function select(id) {
  if (!state) return;
  seen();
  state.selected = id;
  renderQueue();
  // The officer's own step and the feed's announcement of it both redraw the panel: only the
  // latest drawing may add the history and the fixes (else they appear twice).
  const drawing = state.drawing = (state.drawing || 0) + 1;
  const current = () => state && state.drawing === drawing;
  let alert;
  try {
    alert = await api(`/alerts/${id}`);
  } catch (e) { toast(errorText(e), "error"); return; }
  if (!current()) return;
  state.alerts.set(id, alert);
  const d = clear(state.detail);
  d.hidden = false;
  d.append(
    h("button", { class: "link", text: `← ${t("duty.back")}`, onclick: () => { state.selected = null; d.hidden = true;
      if (state.fixesLayer) state.fixesLayer.remove(); renderQueue(); } }),
    alertSummary(alert, state.people.get(alert.supervisee_id)),
    alertActions(alert, () => refreshAlert(id)),
    h("p", {}, h("a", { href: `#/alerts/${id}`, text: "↗ " + t("al.history") }), " · ",
      h("a", { href: `#/supervisees/${alert.supervisee_id}/track`, text: t("al.track") })));
  if (state.fixesLayer) state.fixesLayer.remove();
  const fixes = await drawAlertFixes(state.map, alert, state.watch.purpose);
  if (!current()) { fixes.remove(); return; }
  state.fixesLayer = fixes;
  try {
    const history = await alertHistory(alert);
    if (current()) d.append(history);
  } catch { /* shown on the alert's page */ }
}

async function refreshAlert(id) {
  try {
    const a = await api(`/alerts/${id}`);
    if (!state) return;
    state.alerts.set(id, a);
    if (a.status === "resolved" && state.selected === id) { state.selected = null; state.detail.hidden = true; }
    renderQueue();
    if (state.selected === id) select(id);
  } catch (e) { toast(errorText(e), "error"); }
}

function onEvent(topic, data) {
  if (!state || !data.alert_id) return;
  const id = data.alert_id;
  const known = state.alerts.get(id);
  if (topic === "alert.opened" || topic === "alert.updated" || !known) {
    // The event carries no position: the alert itself is read (and that read is audited).
    api(`/alerts/${id}`).then((a) => {
      if (!state) return;
      a._fresh = topic === "alert.opened";
      state.alerts.set(id, a);
      markOutside(a);
      renderQueue();
      if (topic === "alert.opened" && (a.severity === "critical" || a.severity === "high") && !state.muted) cue(a.severity);
      if (topic === "alert.opened") noteNew();
    }).catch(() => {});
    scheduleMapRefresh();
    return;
  }
  if (topic === "alert.resolved" || topic === "alert.cleared") {
    if (topic === "alert.resolved") known.status = "resolved";
    else known.cleared_at = new Date().toISOString();
    if (topic === "alert.resolved" && state.selected === id) { state.selected = null; state.detail.hidden = true; }
  } else if (topic === "alert.acknowledged") {
    known.status = "acknowledged";
  } else if (topic === "alert.escalated") {
    known.escalation_level = data.escalation_level ?? known.escalation_level;
  } else if (topic === "alert.suspended") {
    known.suppressed = true;
  }
  renderQueue();
  if (state.selected === id && topic !== "alert.resolved") select(id);
  scheduleMapRefresh();
}

// New alerts since the officer last looked: a count beside the queue and in the tab's title
// (a toast per alert would bury the screen on a busy night).
function noteNew() {
  state.fresh += 1;
  state.newBadge.textContent = t("duty.newcount", { n: state.fresh });
  state.newBadge.hidden = false;
  document.title = `(${state.fresh}) ${t("app")}`;
}

function seen() {
  if (!state) return;
  state.fresh = 0;
  state.newBadge.hidden = true;
  document.title = t("app");
}

// A busy night brings many events: the whole map (one audited read) is reloaded at most every
// 15 s because of them, besides its regular minute.
function scheduleMapRefresh() {
  if (!state || state.soon) return;
  state.soon = setTimeout(() => { if (state) { state.soon = null; loadMap().catch(() => {}); } }, 15000);
}
