// The console's maps (Leaflet, vendored). Without a tile server the map is a plain background
// with the shipped district boundaries drawn on it; with one (settings: CCS_CONSOLE_TILE_URL and
// CCS_CONSOLE_TILE_CRS) every overlay is converted into the tiles' system. Data from the API is
// WGS-84 (lon, lat); `toMap`/`fromMap` are the only places that know about GCJ-02.
/* global L */
import { t } from "./i18n.js";

let config = { tile_url: "", tile_crs: "wgs84", tile_attribution: "" };
export function setMapConfig(c) { config = { ...config, ...c }; }
export function mapCrs() { return config.tile_crs === "gcj02" && config.tile_url ? "gcj02" : "wgs84"; }

// GCJ-02: the same published formula as geofence/crs.py (Krasovsky 1940 ellipsoid).
const A = 6378245.0, EE = 0.00669342162296594323;
function inChina(lon, lat) { return lon >= 72.004 && lon <= 137.8347 && lat >= 0.8293 && lat <= 55.8271; }
function gcjDelta(lon, lat) {
  const x = lon - 105, y = lat - 35, px = Math.PI * x, py = Math.PI * y;
  const wig = 2 * Math.sin(6 * px) + 2 * Math.sin(2 * px), sq = Math.sqrt(Math.abs(x));
  const dlat = -100 + 2 * x + 3 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * sq
    + (wig + 2 * Math.sin(py) + 4 * Math.sin(py / 3) + 16 * Math.sin(py / 12) + 32 * Math.sin(py / 30)) * 20 / 3;
  const dlon = 300 + x + 2 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * sq
    + (wig + 2 * Math.sin(px) + 4 * Math.sin(px / 3) + 15 * Math.sin(px / 12) + 30 * Math.sin(px / 30)) * 20 / 3;
  const rl = lat * Math.PI / 180, magic = 1 - EE * Math.sin(rl) ** 2, sm = Math.sqrt(magic);
  return [dlon / (A * Math.cos(rl) / sm * Math.PI / 180), dlat / (A * (1 - EE) / (magic * sm) * Math.PI / 180)];
}
export function wgsToGcj(lon, lat) {
  if (!inChina(lon, lat)) return [lon, lat];
  const [dx, dy] = gcjDelta(lon, lat);
  return [lon + dx, lat + dy];
}
export function gcjToWgs(lon, lat) {
  if (!inChina(lon, lat)) return [lon, lat];
  let [x, y] = [lon, lat];
  for (let i = 0; i < 30; i++) {
    const [gx, gy] = wgsToGcj(x, y);
    const ex = gx - lon, ey = gy - lat;
    x -= ex; y -= ey;
    if (Math.abs(ex) < 1e-10 && Math.abs(ey) < 1e-10) break;
  }
  return [x, y];
}

// WGS-84 (lon, lat) → a Leaflet LatLng in the map's system, and back.
export function toMap(lon, lat) {
  const [x, y] = mapCrs() === "gcj02" ? wgsToGcj(lon, lat) : [lon, lat];
  return L.latLng(y, x);
}
export function fromMap(latlng) {
  return mapCrs() === "gcj02" ? gcjToWgs(latlng.lng, latlng.lat) : [latlng.lng, latlng.lat];
}

export const STATE_COLOURS = {
  inside: "#2e7d32", outside: "#c62828", silent: "#6d6d6d", undecidable: "#b8860b", travel: "#1565c0",
};
export const ZONE_STYLES = {
  home_area: { color: "#3d5a80", weight: 1.5, fillColor: "#98c1d9", fillOpacity: 0.08 },
  exclusion: { color: "#b00020", weight: 2, fillColor: "#e57373", fillOpacity: 0.25, dashArray: "6 4" },
  curfew: { color: "#6a1b9a", weight: 2, fillColor: "#ce93d8", fillOpacity: 0.2, dashArray: "2 4" },
  destination: { color: "#1565c0", weight: 1.5, fillColor: "#90caf9", fillOpacity: 0.15 },
};

export function makeMap(el) {
  // No zoom animation: a view that is left mid-animation (the officer clicks on) would make
  // Leaflet touch removed elements ("_leaflet_pos" errors); instant zooms are also calmer.
  const map = L.map(el, { zoomControl: true, attributionControl: !!config.tile_url, minZoom: 3,
    maxZoom: 19, worldCopyJump: false, preferCanvas: false, zoomAnimation: false,
    fadeAnimation: false, markerZoomAnimation: false });
  el.classList.add("map", config.tile_url ? "map-tiles" : "map-plain");
  if (config.tile_url) {
    L.tileLayer(config.tile_url, { attribution: config.tile_attribution, maxZoom: 19,
      subdomains: config.tile_subdomains || "abc" }).addTo(map);
    // Leaflet's default prefix links to the internet and carries a flag; a plain credit suits
    // a closed government network.
    map.attributionControl.setPrefix("Leaflet");
  }
  map.setView([30.59, 114.30], 10);
  return map;
}

// A GeoJSON FeatureCollection (WGS-84) as a layer in the map's system.
export function geoLayer(fc, style, onEach) {
  return L.geoJSON(fc, {
    coordsToLatLng: (c) => toMap(c[0], c[1]),
    style: typeof style === "function" ? style : () => style,
    onEachFeature: onEach,
  });
}

export function zoneStyle(feature) {
  const p = feature.properties || {};
  const roles = p.roles || [];
  if (roles.includes("exclusion") || p.kind === "exclusion" && !roles.includes("curfew")) return ZONE_STYLES.exclusion;
  if (roles.includes("curfew")) return ZONE_STYLES.curfew;
  return ZONE_STYLES[p.kind] || ZONE_STYLES.home_area;
}

// A fix: a dot in the state's colour and its accuracy circle (metres) around it.
export function fixMarker(pos, colour, opts = {}) {
  const ll = toMap(pos.lon, pos.lat);
  const group = L.featureGroup();
  if (pos.accuracy) {
    L.circle(ll, { radius: pos.accuracy, color: colour, weight: 1, opacity: 0.6, fillOpacity: 0.08,
      interactive: false }).addTo(group);
  }
  L.circleMarker(ll, { radius: opts.radius || 6, color: "#fff", weight: 1.5, fillColor: colour,
    fillOpacity: 1, className: opts.className || "" }).addTo(group);
  return group;
}

export function legend(map, entries) {
  const ctl = L.control({ position: "bottomleft" });
  ctl.onAdd = () => {
    const div = L.DomUtil.create("div", "legend");
    for (const [colour, label] of entries) {
      const row = L.DomUtil.create("div", "legend-row", div);
      const sw = L.DomUtil.create("span", "swatch", row);
      sw.style.background = colour;
      row.append(document.createTextNode(label));
    }
    return div;
  };
  ctl.addTo(map);
  return ctl;
}

export function stateLegend(map) {
  return legend(map, Object.entries(STATE_COLOURS).map(([k, c]) => [c, t(`v.${k}`)]));
}
