// Zones: the ones the caller may use, on a map and in a list; drawing a new one (polygon by
// clicking its vertices, circle by centre + radius, or a GeoJSON file); editing one the caller's
// units own (dragging its vertices, adding one at an edge's midpoint, removing one by
// double-click; a circle's centre and radius) and retiring it with a reason; assigning a zone to a
// supervisee as a prohibition order (with an early-warning buffer) or a curfew. The engine's
// refusal (geofence/zones.py, via the API's 422) is shown where it happened: the place it names is
// marked on the map and the vertices or edges there are named.
/* global L */
import { api } from "../api.js";
import { h, clear, section, table, toast, dialog, errorText, errorParts, badge } from "../ui.js";
import { t, register } from "../i18n.js";
import { makeMap, geoLayer, mapCrs, toMap, gcjToWgs, wgsToGcj, ZONE_STYLES } from "../map.js";
import { unitNames } from "../office.js";

register({
  zh: { "zn.title": "区域管理", "zn.list": "可用区域", "zn.new": "新建区域", "zn.poly": "绘制多边形",
        "zn.circle": "绘制圆形", "zn.upload": "上传 GeoJSON", "zn.finish": "完成", "zn.undo": "撤销上一点",
        "zn.cancel": "取消", "zn.hint.poly": "在地图上依次点击各顶点（至少 3 个），再点“完成”。已点 {n} 个顶点。",
        "zn.hint.circle": "在地图上点击圆心，再填写半径（米）。", "zn.radius": "半径（米）",
        "zn.name": "名称", "zn.kind": "类型", "zn.owner": "所属单位", "zn.save": "保存区域",
        "zn.filecrs": "文件坐标系", "zn.k.exclusion": "禁止进入区域", "zn.k.home_area": "活动区域",
        "zn.k.destination": "外出目的地", "zn.crs": "绘制坐标系", "zn.assign": "指定给对象",
        "zn.show": "定位", "zn.saved": "区域已保存", "zn.assigned": "已指定",
        "zn.who": "矫正对象", "zn.role": "用途", "zn.role.exclusion": "禁止令（进入即告警）",
        "zn.role.curfew": "宵禁（时段内须在区域内）", "zn.buffer": "预警缓冲（米，仅禁止令）",
        "zn.cstart": "宵禁开始（hh:mm，仅宵禁）", "zn.cend": "宵禁结束（hh:mm，仅宵禁）",
        "zn.err.title": "区域未保存：", "zn.err.at": "问题位置已在地图上标出（红色叉号）：",
        "zn.err.cross": "第 {a}–{b} 边与第 {c}–{d} 边相交", "zn.err.vertex": "第 {n} 个顶点",
        "zn.err.point": "经度 {lon}，纬度 {lat}", "zn.err.few": "顶点太少：多边形至少需要 3 个不同的顶点",
        "zn.err.size": "面积或半径不合理", "zn.err.file": "文件不是可读的 GeoJSON：",
        "zn.err.where": "文件中第 {p} 个多边形第 {r} 个环", "zn.err.wherepoly": "文件中第 {p} 个多边形",
        "zn.err.crs": "文件声明的坐标系 {name} 不支持：请使用经纬度坐标（WGS-84 / CGCS2000 或 GCJ-02）的 GeoJSON 文件。",
        "zn.noedit": "修改后生效；原形状保存在审计日志中。",
        "zn.edit": "编辑", "zn.retire": "停用", "zn.readonly": "只读", "zn.editing": "修改区域：{name}",
        "zn.hint.edit": "拖动红色顶点修改形状；点击边上的小圆点增加顶点，双击顶点删除。灰色虚线是原形状。",
        "zn.hint.editcircle": "拖动圆心或在地图上点击新的圆心，修改半径（米）。灰色虚线是原形状。",
        "zn.update": "保存修改", "zn.updated": "修改已保存（第 {v} 版）", "zn.version": "版本",
        "zn.cantedit": "此区域由多个多边形或带孔的多边形组成，不能在地图上逐点修改。",
        "zn.toomany": "此区域有 {n} 个顶点，太多，不能在地图上逐点修改。",
        "zn.reason": "停用原因", "zn.retired": "区域已停用",
        "zn.none": "尚无区域。", "zn.above": "上级单位", "zn.active": "启用", "zn.inactive": "已停用", "zn.needshape": "请先在地图上画出区域" },
  en: { "zn.title": "Zones", "zn.list": "Zones you can use", "zn.new": "New zone", "zn.poly": "Draw a polygon",
        "zn.circle": "Draw a circle", "zn.upload": "Upload GeoJSON", "zn.finish": "Finish", "zn.undo": "Undo last point",
        "zn.cancel": "Cancel", "zn.hint.poly": "Click the vertices on the map (at least 3), then Finish. {n} so far.",
        "zn.hint.circle": "Click the centre on the map, then give the radius (metres).", "zn.radius": "Radius (m)",
        "zn.name": "Name", "zn.kind": "Kind", "zn.owner": "Owner unit", "zn.save": "Save zone",
        "zn.filecrs": "File's coordinate system", "zn.k.exclusion": "Exclusion zone", "zn.k.home_area": "Home area",
        "zn.k.destination": "Travel destination", "zn.crs": "Drawn in", "zn.assign": "Assign",
        "zn.show": "Show", "zn.saved": "Zone saved", "zn.assigned": "Assigned",
        "zn.who": "Supervisee", "zn.role": "Use", "zn.role.exclusion": "Prohibition order (alert on entry)",
        "zn.role.curfew": "Curfew (must be inside during the hours)", "zn.buffer": "Warning buffer (m, prohibition only)",
        "zn.cstart": "Curfew from (hh:mm, curfew only)", "zn.cend": "Curfew until (hh:mm, curfew only)",
        "zn.err.title": "Zone not saved: ", "zn.err.at": "The place is marked on the map (red cross): ",
        "zn.err.cross": "edge {a}–{b} crosses edge {c}–{d}", "zn.err.vertex": "vertex {n}",
        "zn.err.point": "lon {lon}, lat {lat}", "zn.err.few": "Too few vertices: a polygon needs at least 3 distinct ones",
        "zn.err.size": "Unreasonable area or radius", "zn.err.file": "The file is not readable GeoJSON: ",
        "zn.err.where": "polygon {p}, ring {r} of the file", "zn.err.wherepoly": "polygon {p} of the file",
        "zn.err.crs": "The file's coordinate system {name} is not supported: use a GeoJSON file in longitudes and latitudes (WGS-84 / CGCS2000 or GCJ-02).",
        "zn.noedit": "Changes take effect at once; the previous shape is kept in the audit log.",
        "zn.edit": "Edit", "zn.retire": "Retire", "zn.readonly": "read-only", "zn.editing": "Editing: {name}",
        "zn.hint.edit": "Drag the red vertices; click a small dot on an edge to add a vertex, double-click a vertex to remove it. The grey dashes are the previous shape.",
        "zn.hint.editcircle": "Drag the centre or click a new one on the map; change the radius (metres). The grey dashes are the previous shape.",
        "zn.update": "Save changes", "zn.updated": "Changes saved (version {v})", "zn.version": "Version",
        "zn.cantedit": "This zone has several polygons or holes: it cannot be edited vertex by vertex on the map.",
        "zn.toomany": "This zone has {n} vertices, too many to edit one by one on the map.",
        "zn.reason": "Reason for retiring", "zn.retired": "Zone retired",
        "zn.none": "No zones yet.", "zn.above": "a unit above yours", "zn.active": "active", "zn.inactive": "retired", "zn.needshape": "Draw the zone on the map first" },
});

const KINDS = ["exclusion", "destination", "home_area"];
let S = null;

export function destroy() {
  if (S) { S.map.stop(); S.map.remove(); }
  S = null;
}

// A position of a file or an error message in `crs` → a LatLng on this map.
function crsToMap(lon, lat, crs) {
  const map = mapCrs();
  if (crs === map) return L.latLng(lat, lon);
  const [x, y] = crs === "gcj02" ? gcjToWgs(lon, lat) : [lon, lat];
  return map === "gcj02" ? L.latLng(wgsToGcj(x, y)[1], wgsToGcj(x, y)[0]) : toMap(x, y);
}

export async function render(main, _params, ctx) {
  const [fc, units] = await Promise.all([api("/zones"), api("/org/units")]);
  const names = unitNames(units);
  const mapEl = h("div", { class: "map-box", id: "zones-map" });
  const listBox = h("div", { id: "zone-list" });
  const drawBox = h("div", { id: "zone-draw" });
  main.append(h("h1", { text: t("zn.title") }),
    h("div", { class: "split zones-split" },
      h("div", {}, section(t("zn.new"), drawBox), section(t("zn.list"), listBox)), mapEl));
  const map = makeMap(mapEl);
  S = { map, ctx, units, names, layer: null, draft: L.layerGroup().addTo(map), marks: L.layerGroup().addTo(map),
    handles: L.layerGroup().addTo(map), mode: null, vertices: [], circle: null, upload: null, editing: null,
    drawBox, listBox, drawTitle: drawBox.parentElement.querySelector("h2") };
  showZones(fc, true);
  drawIdle();
}

function showZones(fc, fit) {
  const { map } = S;
  if (S.layer) S.layer.remove();
  S.layer = geoLayer(fc, (f) => ({ ...(ZONE_STYLES[f.properties.kind] || ZONE_STYLES.home_area),
    className: `zone zone-${f.properties.kind} zone-id-${f.id}` }),
  (f, layer) => layer.bindTooltip(f.properties.name)).addTo(map);
  S.layer.bringToBack();
  S.features = fc.features;
  if (fit) {
    const b = S.layer.getBounds();
    // Not animated: leaving the screen during a zoom animation breaks Leaflet (_leaflet_pos).
    if (b.isValid()) map.fitBounds(b, { padding: [20, 20], animate: false });
  }
  const rows = fc.features.map((f) => ({ id: f.id, ...f.properties }));
  clear(S.listBox).append(rows.length ? table([
    { label: t("zn.name"), render: (r) => h("span", {}, r.name, r.active ? null : badge("muted", t("zn.inactive"))) },
    { label: t("zn.kind"), render: (r) => h("span", { class: `kind-tag kind-${r.kind}`, text: t(`zn.k.${r.kind}`) }) },
    { label: t("zn.owner"), render: (r) => S.names.get(r.owner_unit_id) || t("zn.above") },
    { label: t("zn.crs"), render: (r) => r.drawn_crs.toUpperCase() },
    { label: t("zn.version"), render: (r) => `v${r.version}` },
    { label: "", render: (r) => h("span", { class: "row-actions" },
      h("button", { class: "link", text: t("zn.show"), onclick: (e) => { e.stopPropagation(); focusZone(r.id); } }),
      r.active && (r.kind === "exclusion" || r.kind === "home_area")
        ? h("button", { class: "link assign", dataset: { zone: r.id }, text: t("zn.assign"),
          onclick: (e) => { e.stopPropagation(); assign(r); } }) : null,
      ...rowEdits(r)) },
  ], rows, (r) => focusZone(r.id)) : h("p", { class: "empty-state", text: t("zn.none") }),
  h("p", { class: "fine", text: t("zn.noedit") }));
}

// Edit and retire for an active zone of the caller's own units; a unit above's is read-only.
function rowEdits(r) {
  if (!r.active) return [];
  if (!S.names.has(r.owner_unit_id)) return [h("span", { class: "muted readonly", text: t("zn.readonly") })];
  return [
    h("button", { class: "link edit", dataset: { zone: r.id }, text: t("zn.edit"),
      onclick: (e) => { e.stopPropagation(); startEdit(r.id); } }),
    h("button", { class: "link retire danger-link", dataset: { zone: r.id }, text: t("zn.retire"),
      onclick: (e) => { e.stopPropagation(); retire(r); } }),
  ];
}

function focusZone(id) {
  S.layer.eachLayer((l) => {
    if (l.feature && l.feature.id === id) S.map.fitBounds(l.getBounds(), { padding: [80, 80], maxZoom: 15, animate: false });
  });
}

// --- drawing ---------------------------------------------------------------------------------

function resetDraft() {
  S.draft.clearLayers();
  S.marks.clearLayers();
  S.handles.clearLayers();
  S.centre = null;
  if (S.editing) S.layer.resetStyle();  // the zone's outline as it was before editing
  S.editing = null;
  S.drawTitle.textContent = t("zn.new");
  S.vertices = [];
  S.circle = null;
  S.upload = null;
  S.map.off("click", onMapClick);
  S.map.doubleClickZoom.enable();
  S.map.getContainer().classList.remove("drawing");
}

function drawIdle() {
  resetDraft();
  S.mode = null;
  const file = h("input", { type: "file", id: "zone-file", accept: ".geojson,.json,application/geo+json,application/json",
    class: "visually-hidden", onchange: () => { if (file.files[0]) readFile(file.files[0]); } });
  clear(S.drawBox).append(h("div", { class: "actions" },
    h("button", { class: "primary", id: "draw-poly", text: t("zn.poly"), onclick: () => startPolygon() }),
    h("button", { class: "secondary", id: "draw-circle", text: t("zn.circle"), onclick: () => startCircle() }),
    h("label", { class: "button secondary", for: "zone-file", text: t("zn.upload") }), file));
}

function startPolygon() {
  resetDraft();
  S.mode = "polygon";
  S.map.doubleClickZoom.disable();
  S.map.on("click", onMapClick);
  S.map.getContainer().classList.add("drawing");
  const hint = h("p", { class: "hint", id: "draw-hint" });
  const finish = h("button", { class: "primary", id: "draw-finish", text: t("zn.finish"), onclick: () => {
    if (S.vertices.length < 3) { toast(t("zn.err.few"), "error"); return; }
    S.map.off("click", onMapClick);
    S.map.getContainer().classList.remove("drawing");
    finish.disabled = true; undo.disabled = true;
    redrawPolygon(true);
    S.drawBox.append(zoneForm(() => ({ type: "Polygon", coordinates: [closedRing()] }), mapCrs()));
  } });
  const undo = h("button", { class: "secondary", id: "draw-undo", text: t("zn.undo"), onclick: () => {
    S.vertices.pop(); redrawPolygon(false); updateHint(); } });
  const cancel = h("button", { class: "secondary", id: "draw-cancel", text: t("zn.cancel"), onclick: drawIdle });
  clear(S.drawBox).append(hint, h("div", { class: "actions" }, finish, undo, cancel));
  S.hint = hint;
  updateHint();
}

function updateHint() {
  if (S.hint) S.hint.textContent = t("zn.hint.poly", { n: S.vertices.length });
}

function closedRing() {
  const ring = S.vertices.map((ll) => [round(ll.lng), round(ll.lat)]);
  return [...ring, ring[0]];
}
const round = (v) => Math.round(v * 1e7) / 1e7;

function onMapClick(e) {
  if (S.mode === "polygon") {
    S.vertices.push(e.latlng);
    redrawPolygon(false);
    updateHint();
  } else if (S.mode === "circle") {
    S.circle = e.latlng;
    drawCircle();
  }
}

function redrawPolygon(closed) {
  S.draft.clearLayers();
  S.marks.clearLayers();
  const style = { ...ZONE_STYLES.exclusion, className: "draft-shape" };
  if (S.vertices.length > 1) (closed ? L.polygon(S.vertices, style) : L.polyline(S.vertices, style)).addTo(S.draft);
  S.vertices.forEach((ll, i) => {
    L.circleMarker(ll, { radius: 5, color: "#fff", weight: 2, fillColor: "#b00020", fillOpacity: 1,
      className: "draft-vertex", interactive: false })
      .bindTooltip(String(i + 1), { permanent: true, direction: "top", className: "vertex-label", offset: [0, -6] })
      .addTo(S.draft);
  });
}

// A new circle, or `edit` = { feature, centre (LatLng), radius (m) }: the centre is a draggable
// marker, and a click on the map moves it too.
function startCircle(edit) {
  resetDraft();
  S.mode = "circle";
  S.map.on("click", onMapClick);
  S.map.getContainer().classList.add("drawing");
  const radius = h("input", { type: "number", id: "circle-radius", min: 10, max: 50000, step: 10,
    value: String(edit ? edit.radius : 300), oninput: () => drawCircle() });
  S.radius = radius;
  if (edit) {
    beginEdit(edit.feature);
    S.circle = edit.centre;
    S.centre = L.marker(edit.centre, { draggable: true, keyboard: false,
      icon: L.divIcon({ className: "edit-vertex edit-centre", iconSize: [16, 16] }) }).addTo(S.handles);
    S.centre.on("drag", () => { S.circle = S.centre.getLatLng(); drawCircle(); });
  }
  clear(S.drawBox).append(h("p", { class: "hint", text: t(edit ? "zn.hint.editcircle" : "zn.hint.circle") }),
    h("label", { class: "inline" }, h("span", { text: t("zn.radius") }), radius),
    // (an edit's Cancel is beside its Save)
    ...(edit ? [] : [h("div", { class: "actions" }, h("button", { class: "secondary", id: "draw-cancel", text: t("zn.cancel"), onclick: drawIdle }))]),
    zoneForm(() => S.circle && { type: "Point", coordinates: [round(S.circle.lng), round(S.circle.lat)] }, mapCrs(),
      () => Number(radius.value), edit && edit.feature));
  drawCircle();
}

function drawCircle() {
  S.draft.clearLayers();
  if (!S.circle) return;
  if (S.centre) S.centre.setLatLng(S.circle);
  L.circle(S.circle, { ...ZONE_STYLES.exclusion, radius: Number(S.radius.value) || 0, className: "draft-shape" }).addTo(S.draft);
}

// --- editing ---------------------------------------------------------------------------------

const MAX_EDIT_VERTICES = 400;  // more is a surveyed boundary: replace it by a file, not by hand

function startEdit(id) {
  const f = S.features.find((x) => x.id === id);
  if (!f) return;
  const drawn = f.properties.drawn_geometry || {};
  if (drawn.type === "Point" && drawn.radius_m) {
    const [lon, lat] = drawn.coordinates;
    startCircle({ feature: f, centre: crsToMap(lon, lat, f.properties.drawn_crs), radius: drawn.radius_m });
    return;
  }
  const polys = f.geometry.coordinates;  // the stored MultiPolygon, WGS-84
  if (polys.length !== 1 || polys[0].length !== 1) { toast(t("zn.cantedit"), "error"); return; }
  const ring = polys[0][0].slice(0, -1);
  if (ring.length > MAX_EDIT_VERTICES) { toast(t("zn.toomany", { n: ring.length }), "error"); return; }
  resetDraft();
  S.mode = "edit";
  S.map.doubleClickZoom.disable();
  beginEdit(f);
  S.vertices = ring.map(([lon, lat]) => toMap(lon, lat));
  drawEditable();
  clear(S.drawBox).append(h("p", { class: "hint", id: "edit-hint", text: t("zn.hint.edit") }),
    zoneForm(() => ({ type: "Polygon", coordinates: [closedRing()] }), mapCrs(), null, f));
}

// The zone being edited: its saved outline turns grey (the previous shape) and comes into view.
function beginEdit(f) {
  S.editing = f;
  S.drawTitle.textContent = t("zn.editing", { name: f.properties.name });
  S.layer.eachLayer((l) => {
    if (l.feature && l.feature.id === f.id) {
      l.setStyle({ color: "#5f6368", weight: 2, dashArray: "5 5", fillColor: "#9e9e9e", fillOpacity: 0.06 });
      S.map.fitBounds(l.getBounds(), { padding: [100, 100], maxZoom: 17, animate: false });
    }
  });
}

// The polygon with a draggable marker on each vertex (numbered as in error messages) and a small
// handle on each edge's midpoint that adds a vertex there; a double-click removes a vertex.
function drawEditable() {
  S.draft.clearLayers();
  S.handles.clearLayers();
  const poly = L.polygon(S.vertices, { ...ZONE_STYLES.exclusion, className: "draft-shape" }).addTo(S.draft);
  const mids = S.vertices.map((_, i) => {
    const mid = L.marker(midpoint(i), { keyboard: false,
      icon: L.divIcon({ className: "edit-mid", iconSize: [12, 12] }) }).addTo(S.handles);
    mid.on("click", (e) => { L.DomEvent.stop(e); S.vertices.splice(i + 1, 0, mid.getLatLng()); drawEditable(); });
    return mid;
  });
  S.vertices.forEach((ll, i) => {
    const m = L.marker(ll, { draggable: true, keyboard: false, zIndexOffset: 1000,
      icon: L.divIcon({ className: "edit-vertex", iconSize: [16, 16] }) })
      .bindTooltip(String(i + 1), { permanent: true, direction: "top", className: "vertex-label", offset: [0, -8] })
      .addTo(S.handles);
    m.on("drag", () => {
      S.vertices[i] = m.getLatLng();
      poly.setLatLngs(S.vertices);
      mids.forEach((mid, j) => mid.setLatLng(midpoint(j)));
    });
    m.on("dragend", drawEditable);
    m.on("dblclick", (e) => {
      L.DomEvent.stop(e);
      if (S.vertices.length <= 3) { toast(t("zn.err.few"), "error"); return; }
      S.vertices.splice(i, 1);
      drawEditable();
    });
  });
}

function midpoint(i) {
  const a = S.vertices[i], b = S.vertices[(i + 1) % S.vertices.length];
  return L.latLng((a.lat + b.lat) / 2, (a.lng + b.lng) / 2);
}

async function readFile(file) {
  resetDraft();
  S.mode = "upload";
  let geom;
  const crs = h("select", { id: "file-crs" }, ["wgs84", "gcj02"].map((c) => h("option", { value: c, text: c.toUpperCase() })));
  crs.value = mapCrs();
  const err = h("p", { class: "form-error", role: "alert" });
  clear(S.drawBox).append(h("p", { class: "hint", text: file.name }),
    h("label", { class: "inline" }, h("span", { text: t("zn.filecrs") }), crs), err,
    h("div", { class: "actions" }, h("button", { class: "secondary", id: "draw-cancel", text: t("zn.cancel"), onclick: drawIdle })));
  let declared;
  try {
    const obj = JSON.parse(await file.text());
    const feature = obj.type === "FeatureCollection" ? obj.features[0] || {} : obj.type === "Feature" ? obj : {};
    geom = obj.type === "FeatureCollection" || obj.type === "Feature" ? feature.geometry : obj;
    if (!geom || !geom.type) throw new Error("no geometry");
    declared = declaredCrs(obj.crs || feature.crs || geom.crs);
  } catch (e) { err.textContent = t("zn.err.file") + String(e.message || e); return; }
  // A file in projected metres (Web Mercator, a Gauss-Krüger zone...) is not drawn nor sent.
  if (declared && !declared.crs) { err.textContent = t("zn.err.crs", { name: declared.name }); return; }
  if (declared) crs.value = declared.crs;
  S.upload = geom;
  const show = () => {
    S.draft.clearLayers();
    L.geoJSON(geom, { coordsToLatLng: (c) => crsToMap(c[0], c[1], crs.value),
      style: () => ({ ...ZONE_STYLES.exclusion, className: "draft-shape" }) }).addTo(S.draft);
    const b = L.featureGroup(S.draft.getLayers()).getBounds();
    if (b.isValid()) S.map.fitBounds(b, { padding: [30, 30], animate: false });
  };
  crs.addEventListener("change", show);
  show();
  S.drawBox.append(zoneForm(() => geom, () => crs.value));
}

// The coordinate system a file declares (GeoJSON 2008 `crs`; RFC 7946 files have none and are
// WGS-84, or GCJ-02 when exported from Chinese maps: the officer says which): null when none is
// declared, { name, crs } for longitudes and latitudes, { name } for anything else.
function declaredCrs(member) {
  if (!member) return null;
  const name = String((member.properties || {}).name || (member.properties || {}).href || JSON.stringify(member));
  // CGCS2000 (EPSG:4490) differs from WGS-84 by centimetres.
  return /(?:CRS84|EPSG:{1,2}(?:4326|4490))$/i.test(name.trim()) ? { name, crs: "wgs84" } : { name };
}

// --- saving ----------------------------------------------------------------------------------

// The name, kind and owner of a new zone; of an edited one (`edit`: its feature) the name, with
// kind and owner shown but fixed. Saved by POST, or by PUT for an edit.
function zoneForm(geometry, crs, radius, edit) {
  const name = h("input", { name: "name", id: "zone-name", required: true, maxlength: 200,
    value: edit ? edit.properties.name : undefined });
  const kind = h("select", { name: "kind", id: "zone-kind" }, KINDS.map((k) => h("option", { value: k, text: t(`zn.k.${k}`) })));
  const owner = h("select", { name: "owner", id: "zone-owner" },
    S.units.map((u) => h("option", { value: u.id, text: u.name })));
  // An officer's zones belong to their office; the default is the most local unit.
  owner.value = String((S.units.find((u) => u.id === S.ctx.me.org_unit_id) || S.units[S.units.length - 1] || {}).id);
  if (edit) {
    kind.value = edit.properties.kind;
    owner.value = String(edit.properties.owner_unit_id);
    kind.disabled = owner.disabled = true;
  }
  const err = h("div", { class: "zone-error", id: "zone-error", role: "alert", hidden: true });
  const form = h("form", { class: "form zone-form" },
    h("label", {}, h("span", { text: t("zn.name") }), name),
    h("div", { class: "two" }, h("label", {}, h("span", { text: t("zn.kind") }), kind),
      h("label", {}, h("span", { text: t("zn.owner") }), owner)),
    err, h("div", { class: "actions" }, h("button", { class: "primary", type: "submit", id: "zone-save",
      text: t(edit ? "zn.update" : "zn.save") }),
    edit ? h("button", { class: "secondary", type: "button", id: "draw-cancel", text: t("zn.cancel"), onclick: drawIdle }) : null));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const geom = geometry();
    if (!geom) { toast(t("zn.needshape"), "error"); return; }
    const drawnCrs = typeof crs === "function" ? crs() : crs;
    S.marks.clearLayers();
    err.hidden = true;
    const body = edit ? { name: name.value, crs: drawnCrs, geometry: geom }
      : { name: name.value, kind: kind.value, owner_unit_id: Number(owner.value), crs: drawnCrs, geometry: geom };
    if (radius) body.radius_m = radius();
    try {
      const saved = await api(edit ? `/zones/${edit.id}` : "/zones", { method: edit ? "PUT" : "POST", body });
      toast(edit ? t("zn.updated", { v: saved.properties.version }) : t("zn.saved"));
      showZones(await api("/zones"), false);
      drawIdle();  // the map stays where the officer drew it
    } catch (ex) {
      showError(err, ex, geom, drawnCrs);
    }
  });
  return form;
}

// The engine says what is wrong and, for a shape, where: "[lon lat]" of the problem and, for a
// file, "polygon i ring j". The place is marked on the map; drawn vertices and edges are named.
function showError(box, ex, geom, crs) {
  // What is wrong in the console's language, then the engine's own words (they name the place).
  const detail = ex.detail || "";
  const lines = [h("strong", { text: t("zn.err.title") }), h("span", { class: "reason", text: errorParts(ex).text })];
  if (detail && !ex.errors && ex.code !== "network") lines.push(h("span", { class: "engine", text: detail }));
  const at = detail.match(/\[\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)[\s,]+(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*\]/i);
  // Of a file, the engine names the polygon (and ring) where it found the problem.
  const inFile = S.mode === "upload" ? detail.match(/polygon (\d+)(?: ring (\d+))?/) : null;
  const fileWhere = inFile && (inFile[2] !== undefined
    ? t("zn.err.where", { p: Number(inFile[1]) + 1, r: Number(inFile[2]) + 1 })
    : t("zn.err.wherepoly", { p: Number(inFile[1]) + 1 }));
  const onGlobe = at && Math.abs(Number(at[1])) <= 180 && Math.abs(Number(at[2])) <= 90;
  if (onGlobe) {
    const lon = Number(at[1]), lat = Number(at[2]);
    const ll = crsToMap(lon, lat, crs);
    L.marker(ll, { icon: L.divIcon({ className: "error-mark", html: "", iconSize: [26, 26] }), keyboard: false })
      .bindTooltip(detail, { permanent: false }).addTo(S.marks);
    L.circleMarker(ll, { radius: 16, color: "#b3261e", weight: 3, fill: false, className: "error-ring" }).addTo(S.marks);
    const ring = S.mode === "upload" ? fileRing(geom, inFile ? Number(inFile[1]) : 0)
      : S.mode === "polygon" || S.mode === "edit" ? geom.coordinates[0] : null;
    const place = (ring && namePlace(lon, lat, ring)) || t("zn.err.point", { lon: lon.toFixed(6), lat: lat.toFixed(6) });
    lines.push(h("p", { class: "where", id: "zone-error-where" },
      t("zn.err.at"), fileWhere ? `${fileWhere}，${place}` : place));
    // Close enough to see the vertices apart from the mark.
    const shape = L.featureGroup(S.draft.getLayers()).getBounds();
    if (shape.isValid()) S.map.fitBounds(shape.extend(ll), { padding: [80, 80], maxZoom: 17, animate: false });
    else if (!S.map.getBounds().contains(ll)) S.map.panTo(ll, { animate: false });
  }
  else if (fileWhere) lines.push(h("p", { class: "where", id: "zone-error-where", text: fileWhere }));
  if (/too_few_points/.test(ex.code || "")) lines.push(h("p", { text: t("zn.err.few") }));
  if (/absurd_size/.test(ex.code || "")) lines.push(h("p", { text: t("zn.err.size") }));
  clear(box).append(...lines);
  box.hidden = false;
}

// The outer ring of a file's polygon `p` (or of its one polygon), if it has one.
function fileRing(geom, p) {
  const poly = geom.type === "MultiPolygon" ? (geom.coordinates || [])[p] : geom.type === "Polygon" ? geom.coordinates : null;
  return Array.isArray(poly) && Array.isArray(poly[0]) ? poly[0] : null;
}

// A point of a ring (closed, as drawn or in the file): the vertex it is, or the edges that cross there.
function namePlace(lon, lat, closedRing) {
  const ring = closedRing.slice(0, -1);
  const n = ring.length;
  const near = (a, b) => Math.abs(a[0] - b[0]) < 1e-7 && Math.abs(a[1] - b[1]) < 1e-7;
  const v = ring.findIndex((p) => near(p, [lon, lat]));
  if (v >= 0) return t("zn.err.vertex", { n: v + 1 });
  for (let i = 0; i < n; i++) {
    for (let j = i + 2; j < n; j++) {
      if (i === 0 && j === n - 1) continue;  // neighbours through the closing vertex
      const x = crossing(ring[i], ring[(i + 1) % n], ring[j], ring[(j + 1) % n]);
      if (x && Math.abs(x[0] - lon) < 1e-6 && Math.abs(x[1] - lat) < 1e-6) {
        return t("zn.err.cross", { a: i + 1, b: (i + 1) % n + 1, c: j + 1, d: (j + 1) % n + 1 });
      }
    }
  }
  return null;
}

function crossing(p, p2, q, q2) {
  const r = [p2[0] - p[0], p2[1] - p[1]], s = [q2[0] - q[0], q2[1] - q[1]];
  const d = r[0] * s[1] - r[1] * s[0];
  if (Math.abs(d) < 1e-18) return null;
  const u = ((q[0] - p[0]) * s[1] - (q[1] - p[1]) * s[0]) / d;
  const w = ((q[0] - p[0]) * r[1] - (q[1] - p[1]) * r[0]) / d;
  if (u < 0 || u > 1 || w < 0 || w > 1) return null;
  return [p[0] + u * r[0], p[1] + u * r[1]];
}

// --- retiring --------------------------------------------------------------------------------

async function retire(zone) {
  const v = await dialog(`${t("zn.retire")}：${zone.name}`, [
    { name: "reason", label: t("zn.reason"), type: "textarea", required: true, minlength: 2 },
  ], t("zn.retire"));
  if (!v) return;
  try {
    await api(`/zones/${zone.id}/retire`, { method: "POST", body: { reason: v.reason } });
    toast(t("zn.retired"));
    if (S.editing && S.editing.id === zone.id) drawIdle();
    showZones(await api("/zones"), false);
  } catch (e) { toast(errorText(e), "error"); }
}

// --- assigning -------------------------------------------------------------------------------

async function assign(zone) {
  let people;
  try { people = await api("/supervisees", { query: { limit: 1000 } }); } catch (e) { toast(errorText(e), "error"); return; }
  const roles = zone.kind === "exclusion" ? ["exclusion", "curfew"] : ["curfew"];
  const v = await dialog(`${t("zn.assign")}：${zone.name}`, [
    { name: "supervisee", label: t("zn.who"), type: "select", required: true,
      options: people.filter((p) => p.active).map((p) => [p.id, `${p.full_name}（${p.case_number}）`]) },
    { name: "role", label: t("zn.role"), type: "select", required: true, options: roles.map((r) => [r, t(`zn.role.${r}`)]) },
    { name: "buffer_m", label: t("zn.buffer"), type: "number", value: "200", min: 0, max: 5000, step: 10 },
    { name: "curfew_start", label: t("zn.cstart"), type: "time", value: "22:00" },
    { name: "curfew_end", label: t("zn.cend"), type: "time", value: "06:00" },
  ], t("zn.assign"));
  if (!v) return;
  const body = { zone_id: zone.id, role: v.role };
  if (v.role === "exclusion") body.buffer_m = Number(v.buffer_m || 0);
  else Object.assign(body, { curfew_start: v.curfew_start, curfew_end: v.curfew_end });
  try {
    await api(`/supervisees/${v.supervisee}/zones`, { method: "POST", body });
    const p = people.find((x) => String(x.id) === String(v.supervisee));
    toast(`${t("zn.assigned")}：${zone.name} → ${p ? p.full_name : v.supervisee}`);
  } catch (e) { toast(errorText(e), "error"); }
}

