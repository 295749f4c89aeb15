// The duty watch: the purpose is asked once when the duty view opens (POST /alerts/watch writes
// the one audit row); the live feed, the duty map and the alert pages then name the watch.
import { api } from "./api.js";
import { dialog } from "./ui.js";
import { t, register } from "./i18n.js";

register({
  zh: { "watch.title": "开始值班监控", "watch.purpose": "查看目的（记入审计日志）",
        "watch.default": "日常值班监控", "watch.open": "开始" },
  en: { "watch.title": "Start the duty watch", "watch.purpose": "Purpose (recorded in the audit log)",
        "watch.default": "Routine duty monitoring", "watch.open": "Start" },
});

const KEY = "ccs.watch";

export function currentWatch() {
  try { return JSON.parse(sessionStorage.getItem(KEY) || "null"); } catch { return null; }
}

export function forgetWatch() { sessionStorage.removeItem(KEY); }

let pending = null;

// One question at a time: two views asking at once share the same dialog.
export function ensureWatch() {
  const w = currentWatch();
  if (w) return Promise.resolve(w);
  if (!pending) pending = ask().finally(() => { pending = null; });
  return pending;
}

async function ask() {
  const v = await dialog(t("watch.title"), [
    { name: "purpose", label: t("watch.purpose"), required: true, minlength: 3, value: t("watch.default") },
  ], t("watch.open"));
  if (!v) return null;
  const r = await api("/alerts/watch", { method: "POST", body: { purpose: v.purpose } });
  const watch = { id: r.watch, purpose: v.purpose };
  sessionStorage.setItem(KEY, JSON.stringify(watch));
  return watch;
}
