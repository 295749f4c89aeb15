// Track playback: the fixes of a period (asked with its purpose, which goes into the audit log),
// the path with accuracy circles, a time slider that moves a marker through the fixes, the stops
// (fixes within ~100 m for at least 10 min, found here in the browser) and the moments alerts
// opened; the same period as GPX, CSV, GeoJSON or KML through the cookie (audited with the format;
// a file always holds the whole period, while the playback shows at most LIMIT fixes and says so).
/* global L */
import { api, downloadUrl } from "../api.js";
import { h, clear, section, table, fmtTime, toast, errorText, metres, localInput, fromLocalInput } from "../ui.js";
import { t, register } from "../i18n.js";
import { makeMap, toMap, fixMarker, legend } from "../map.js";
import { currentWatch } from "../watch.js";
import { personHead, personOr404 } from "../people.js";

register({
  zh: { "tr.title": "轨迹回放", "tr.from": "开始时间", "tr.to": "结束时间", "tr.purpose": "查看目的（记入审计日志）",
        "tr.show": "查询轨迹", "tr.fixes": "{n} 个定位点", "tr.empty": "该时段内没有定位记录。可以选择更长的时段。",
        "tr.ask": "请选择时段并填写查看目的，然后点击“查询轨迹”。", "tr.stops": "停留点",
        "tr.stopsnone": "没有停留（100 米内停留 10 分钟以上）", "tr.alerts": "告警时刻", "tr.alertsnone": "该时段内没有告警",
        "tr.start": "开始", "tr.end": "结束", "tr.dur": "时长", "tr.n": "定位点", "tr.time": "时间", "tr.acc": "精度",
        "tr.provider": "定位方式", "tr.speed": "速度", "tr.export": "导出本时段", "tr.path": "轨迹",
        "tr.stop": "停留点", "tr.alert": "告警位置", "tr.current": "当前点", "tr.prev": "上一点", "tr.next": "下一点",
        "tr.play": "播放", "tr.pause": "暂停", "tr.min": "{n} 分钟", "tr.kind": "告警", "tr.last24": "最近 24 小时",
        "tr.last7": "最近 7 天", "tr.limit": "本时段共有 {total} 个定位点，这里只显示了前 {n} 个，请缩短时段。导出的文件包含全部定位点。",
        "tr.exportnote": "导出同样记入审计日志。" },
  en: { "tr.title": "Track playback", "tr.from": "From", "tr.to": "To", "tr.purpose": "Purpose (recorded in the audit log)",
        "tr.show": "Show the track", "tr.fixes": "{n} fixes", "tr.empty": "No fixes in this period. Try a longer one.",
        "tr.ask": "Choose a period and a purpose, then press “Show the track”.", "tr.stops": "Stops",
        "tr.stopsnone": "No stops (10 min or longer within 100 m)", "tr.alerts": "Alert moments", "tr.alertsnone": "No alerts in this period",
        "tr.start": "From", "tr.end": "To", "tr.dur": "Duration", "tr.n": "Fixes", "tr.time": "Time", "tr.acc": "Accuracy",
        "tr.provider": "Provider", "tr.speed": "Speed", "tr.export": "Export this period", "tr.path": "Path",
        "tr.stop": "Stop", "tr.alert": "Alert position", "tr.current": "Current fix", "tr.prev": "Previous", "tr.next": "Next",
        "tr.play": "Play", "tr.pause": "Pause", "tr.min": "{n} min", "tr.kind": "Alert", "tr.last24": "Last 24 h",
        "tr.last7": "Last 7 days",
        "tr.limit": "This period holds {total} fixes; only the first {n} are shown: choose a shorter period. The exported files hold them all.",
        "tr.exportnote": "Exports are audited too." },
});

const STOP_RADIUS_M = 100;
const STOP_MIN_S = 600;
const LIMIT = 10000;
const COLOURS = { path: "#1f4e79", fix: "#1f4e79", current: "#d9480f", stop: "#6a1b9a", alert: "#c62828" };
let state = null;

export function destroy() {
  if (!state) return;
  clearInterval(state.timer);
  state.map.remove();
  state = null;
}

function distance(a, b) {
  const r = Math.PI / 180, dLat = (b.lat - a.lat) * r, dLon = (b.lon - a.lon) * r;
  const s = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * r) * Math.cos(b.lat * r) * Math.sin(dLon / 2) ** 2;
  return 2 * 6371008.8 * Math.asin(Math.sqrt(s));
}

const secs = (p) => new Date(p.fix_time).getTime() / 1000;

// Stops: runs of consecutive fixes that stay within STOP_RADIUS_M of the run's first fix for at
// least STOP_MIN_S; each is reported with its mean position and its first and last fix.
export function findStops(points) {
  const stops = [];
  let i = 0;
  while (i < points.length) {
    let j = i + 1;
    while (j < points.length && distance(points[i], points[j]) <= STOP_RADIUS_M) j++;
    const last = j - 1;
    if (last > i && secs(points[last]) - secs(points[i]) >= STOP_MIN_S) {
      const run = points.slice(i, j);
      stops.push({ first: i, last, lon: run.reduce((s, p) => s + p.lon, 0) / run.length,
        lat: run.reduce((s, p) => s + p.lat, 0) / run.length, from: points[i].fix_time, to: points[last].fix_time,
        minutes: Math.round((secs(points[last]) - secs(points[i])) / 60) });
      i = j;
    } else {
      i++;
    }
  }
  return stops;
}

// The index of the first fix at or after `iso` (the last fix when every fix is earlier).
function indexAt(points, iso) {
  const target = new Date(iso).getTime() / 1000;
  const k = points.findIndex((p) => secs(p) >= target);
  return k < 0 ? points.length - 1 : k;
}

export async function render(main, [id]) {
  const person = await personOr404(api, main, id);
  if (!person) return;
  const now = new Date();
  const from = h("input", { type: "datetime-local", id: "tr-from", required: true, value: localInput(new Date(now.getTime() - 86400000)) });
  const to = h("input", { type: "datetime-local", id: "tr-to", required: true, value: localInput(new Date(now.getTime() + 60000)) });
  const watch = currentWatch();
  const purpose = h("input", { type: "text", id: "tr-purpose", required: true, minlength: 3, maxlength: 200,
    value: watch ? watch.purpose : "", placeholder: t("tr.purpose") });
  const quick = (hours, label) => h("button", { type: "button", class: "link", text: label, onclick: () => {
    const end = new Date();
    from.value = localInput(new Date(end.getTime() - hours * 3600000));
    to.value = localInput(new Date(end.getTime() + 60000));
  } });
  const form = h("form", { class: "track-form", id: "track-form" },
    h("label", {}, h("span", { text: t("tr.from") }), from),
    h("label", {}, h("span", { text: t("tr.to") }), to),
    h("label", { class: "grow" }, h("span", { text: t("tr.purpose") }), purpose),
    h("div", { class: "quick" }, quick(24, t("tr.last24")), quick(168, t("tr.last7"))),
    h("button", { type: "submit", class: "primary", id: "tr-show", text: t("tr.show") }));
  const mapEl = h("div", { id: "track-map", class: "track-map" });
  const side = h("aside", { class: "track-side", id: "track-side" }, h("p", { class: "notice", text: t("tr.ask") }));
  const player = h("div", { class: "player", id: "player", hidden: true });
  main.append(personHead(person, h("a", { class: "button secondary", href: `#/supervisees/${id}`, text: `← ${t("pp.page")}` })),
    form, h("div", { class: "track-layout" }, h("div", { class: "track-main" }, mapEl, player), side));
  const map = makeMap(mapEl);
  legend(map, [[COLOURS.path, t("tr.path")], [COLOURS.current, t("tr.current")], [COLOURS.stop, t("tr.stop")],
    [COLOURS.alert, t("tr.alert")]]);
  state = { map, layer: L.featureGroup().addTo(map), marker: null, timer: null };
  const s = state;

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!form.reportValidity()) return;
    const period = { from: fromLocalInput(from.value), to: fromLocalInput(to.value), purpose: purpose.value.trim() };
    try {
      const [fc, alerts] = await Promise.all([
        api(`/supervisees/${id}/track`, { query: { ...period, limit: LIMIT } }),
        api("/alerts", { query: { supervisee_id: id, limit: 500 } }),
      ]);
      if (state !== s) return;
      const points = fc.features.filter((f) => f.geometry.type === "Point").map((f) => f.properties);
      const [a0, a1] = [Date.parse(period.from), Date.parse(period.to)];
      const inPeriod = alerts.items.filter((a) => Date.parse(a.opened_at) >= a0 && Date.parse(a.opened_at) < a1)
        .sort((a, b) => Date.parse(a.opened_at) - Date.parse(b.opened_at));
      show(s, id, period, points, inPeriod, side, player, fc.truncated ? fc.total : null);
    } catch (err) { toast(errorText(err), "error"); }
  });
  // Nothing is read until the officer confirms the period and the purpose (the duty watch's
  // purpose is offered, not assumed).
  purpose.focus();
}

// `total`: the period's number of fixes when the API cut the answer at LIMIT (null otherwise).
function show(s, id, period, points, alerts, side, player, total) {
  clearInterval(s.timer);
  s.layer.clearLayers();
  clear(side);
  clear(player);
  const exports = h("div", { class: "exports", id: "exports" }, h("strong", { text: t("tr.export") }),
    ["gpx", "csv", "geojson", "kml"].map((f) => h("a", { class: "button secondary", id: `export-${f}`, download: "",
      href: downloadUrl(`/supervisees/${id}/track`, { ...period, format: f }),
      text: { gpx: "GPX", csv: "CSV", geojson: "GeoJSON", kml: "KML" }[f] })),
    h("span", { class: "fine", text: t("tr.exportnote") }));
  if (!points.length) {
    player.hidden = true;
    side.append(h("p", { class: "notice", id: "track-empty", text: t("tr.empty") }), exports);
    return;
  }
  const latlngs = points.map((p) => toMap(p.lon, p.lat));
  L.polyline(latlngs, { color: COLOURS.path, weight: 3, opacity: 0.8, interactive: false }).addTo(s.layer);
  for (const p of points) {
    fixMarker(p, COLOURS.fix, { radius: 3, className: "track-fix" })
      .bindTooltip(`${fmtTime(p.fix_time)} ±${metres(p.accuracy)} ${p.provider || ""}`).addTo(s.layer);
  }
  const stops = findStops(points);
  stops.forEach((st, k) => {
    L.circle(toMap(st.lon, st.lat), { radius: STOP_RADIUS_M, color: COLOURS.stop, weight: 2, fillOpacity: 0.12,
      className: "track-stop" }).bindTooltip(`${t("tr.stop")} ${k + 1} · ${fmtTime(st.from)} · ${t("tr.min", { n: st.minutes })}`)
      .addTo(s.layer);
  });
  for (const a of alerts) {
    if (a.lon === null || a.lat === null) continue;
    L.circleMarker(toMap(a.lon, a.lat), { radius: 11, color: COLOURS.alert, weight: 3, fill: false, className: "track-alert" })
      .bindTooltip(`${fmtTime(a.opened_at)} ${t(`kind.${a.kind}`)}`).addTo(s.layer);
  }
  s.map.fitBounds(s.layer.getBounds().pad(0.15), { maxZoom: 17 });

  // The player: a slider over the fixes, the alert moments as ticks above it.
  s.marker = L.featureGroup().addTo(s.layer);
  const slider = h("input", { type: "range", id: "track-slider", min: 0, max: points.length - 1, step: 1, value: 0,
    "aria-label": t("tr.time") });
  const info = h("div", { class: "fix-info", id: "fix-info", "aria-live": "polite" });
  const ticks = h("div", { class: "ticks" });
  const span = Math.max(1, points.length - 1);
  for (const a of alerts) {
    const k = indexAt(points, a.opened_at);
    const tick = h("button", { type: "button", class: "tick", title: `${fmtTime(a.opened_at)} ${t(`kind.${a.kind}`)}`,
      "aria-label": t(`kind.${a.kind}`), onclick: () => go(k) });
    tick.style.left = `${(100 * k) / span}%`;
    ticks.append(tick);
  }
  for (const st of stops) {
    const band = h("span", { class: "stop-band", title: `${t("tr.stop")} ${fmtTime(st.from)}` });
    band.style.left = `${(100 * st.first) / span}%`;
    band.style.width = `${Math.max(0.8, (100 * (st.last - st.first)) / span)}%`;
    ticks.append(band);
  }
  const playBtn = h("button", { type: "button", class: "secondary", id: "play", text: `▶ ${t("tr.play")}` });
  const go = (k) => {
    const i = Math.max(0, Math.min(points.length - 1, k));
    slider.value = String(i);
    const p = points[i];
    s.marker.clearLayers();
    fixMarker(p, COLOURS.current, { radius: 8, className: "track-current" }).addTo(s.marker);
    clear(info).append(...[
      h("span", { class: "fi-index", text: `${i + 1} / ${points.length}` }),
      h("span", {}, h("b", { text: `${t("tr.time")} ` }), h("time", { id: "fix-time", text: fmtTime(p.fix_time) })),
      h("span", {}, h("b", { text: `${t("tr.acc")} ` }), `±${metres(p.accuracy)}`),
      h("span", {}, h("b", { text: `${t("tr.provider")} ` }), p.provider || p.source || "—"),
      p.speed !== null && p.speed !== undefined ? h("span", {}, h("b", { text: `${t("tr.speed")} ` }), `${(p.speed * 3.6).toFixed(1)} km/h`) : null,
    ].filter(Boolean));
    if (!s.map.getBounds().contains(toMap(p.lon, p.lat))) s.map.panTo(toMap(p.lon, p.lat));
  };
  slider.addEventListener("input", () => go(Number(slider.value)));
  const stopPlaying = () => { clearInterval(s.timer); s.timer = null; playBtn.textContent = `▶ ${t("tr.play")}`; };
  playBtn.addEventListener("click", () => {
    if (s.timer) { stopPlaying(); return; }
    if (Number(slider.value) >= points.length - 1) go(0);
    playBtn.textContent = `❚❚ ${t("tr.pause")}`;
    s.timer = setInterval(() => {
      if (Number(slider.value) >= points.length - 1) { stopPlaying(); return; }
      go(Number(slider.value) + 1);
    }, 400);
  });
  player.hidden = false;
  player.append(
    h("div", { class: "player-row" },
      h("button", { type: "button", class: "secondary", id: "prev", text: `◀ ${t("tr.prev")}`, onclick: () => go(Number(slider.value) - 1) }),
      playBtn,
      h("button", { type: "button", class: "secondary", id: "next", text: `${t("tr.next")} ▶`, onclick: () => go(Number(slider.value) + 1) }),
      h("span", { class: "ends" }, h("span", { text: fmtTime(points[0].fix_time) }), " – ",
        h("span", { text: fmtTime(points[points.length - 1].fix_time) }))),
    h("div", { class: "slider-box" }, ticks, slider), info);

  const summary = h("p", { class: "track-count", id: "track-count", text: t("tr.fixes", { n: points.length }) });
  const stopsTable = table([
    { label: "#", render: (st) => String(stops.indexOf(st) + 1) },
    { label: t("tr.start"), render: (st) => fmtTime(st.from) },
    { label: t("tr.end"), render: (st) => fmtTime(st.to) },
    { label: t("tr.dur"), render: (st) => t("tr.min", { n: st.minutes }) },
    { label: t("tr.n"), class: "num", render: (st) => String(st.last - st.first + 1) },
  ], stops, (st) => go(st.first));
  stopsTable.id = "stops";
  if (!stops.length) stopsTable.querySelector("td.empty").textContent = t("tr.stopsnone");
  const alertsTable = table([
    { label: t("tr.time"), render: (a) => fmtTime(a.opened_at) },
    { label: t("tr.kind"), render: (a) => h("a", { href: `#/alerts/${a.id}`, text: t(`kind.${a.kind}`),
      onclick: (e) => e.stopPropagation() }) },
  ], alerts, (a) => go(indexAt(points, a.opened_at)));
  alertsTable.id = "track-alerts";
  if (!alerts.length) alertsTable.querySelector("td.empty").textContent = t("tr.alertsnone");
  side.append(summary);
  if (total !== null) side.append(h("p", { class: "notice", id: "track-limit", text: t("tr.limit", { n: points.length, total }) }));
  side.append(section(t("tr.stops"), stopsTable), section(t("tr.alerts"), alertsTable), exports);
  go(0);
}
