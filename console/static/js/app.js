// The console's shell: sign-in check, navigation by role, and the hash router (#/duty, ...).
// Each view is a module exporting `render(main, params, ctx)` and optionally `destroy()`.
import { api, setUnauthorizedHandler } from "./api.js";
import { h, clear, errorText } from "./ui.js";
import { t, lang, setLang } from "./i18n.js";
import { setMapConfig } from "./map.js";
import { closeFeed } from "./feed.js";
import { forgetWatch } from "./watch.js";

const SUPERVISORS = ["officer", "office_head", "district_supervisor", "city_admin"];
const MANAGERS = ["office_head", "district_supervisor", "city_admin"];
const EVERYONE = [...SUPERVISORS, "auditor"];

// [name, pattern, module, roles, in the menu]
const ROUTES = [
  ["duty", /^duty$/, "./views/duty.js", SUPERVISORS, true],
  ["overview", /^overview$/, "./views/overview.js", EVERYONE, true],
  ["supervisees", /^supervisees$/, "./views/supervisees.js", SUPERVISORS, true],
  ["supervisee", /^supervisees\/(\d+)$/, "./views/supervisee.js", SUPERVISORS, false],
  ["track", /^supervisees\/(\d+)\/track$/, "./views/track.js", SUPERVISORS, false],
  ["alert", /^alerts\/(\d+)$/, "./views/alert.js", SUPERVISORS, false],
  ["permits", /^permits$/, "./views/permits.js", SUPERVISORS, true],
  ["zones", /^zones$/, "./views/zones.js", SUPERVISORS, true],
  ["keyperiods", /^key-periods$/, "./views/keyperiods.js", SUPERVISORS, true],
  ["staff", /^staff$/, "./views/staff.js", MANAGERS, true],
  ["notify", /^notifications$/, "./views/notify.js", SUPERVISORS, true],
  ["audit", /^audit$/, "./views/audit.js", ["auditor", "city_admin"], true],
  ["account", /^account$/, "./views/account.js", EVERYONE, false],
];
const PATHS = { duty: "duty", overview: "overview", supervisees: "supervisees", permits: "permits",
  zones: "zones", keyperiods: "key-periods", staff: "staff", notify: "notifications", audit: "audit" };

const ctx = { me: null, config: null };
let current = null;
let routing = 0;

function home() {
  return ctx.me && SUPERVISORS.includes(ctx.me.role) ? "duty" : ctx.me && ctx.me.role === "auditor" ? "audit" : "overview";
}

async function boot() {
  setLang(lang);
  ctx.config = await api("/console/config");
  setMapConfig(ctx.config);
  // A 401 while nobody is signed in (boot's own /auth/me) is answered by boot: one sign-in form.
  setUnauthorizedHandler(() => { if (ctx.me) signedOut(); });
  try {
    ctx.me = await api("/auth/me");
  } catch (e) {
    if (e.status === 401) return showSignIn();
    throw e;
  }
  shell();
}

function signedOut() {
  closeFeed();
  forgetWatch();
  ctx.me = null;
  showSignIn();
}

async function showSignIn() {
  const root = clear(document.getElementById("app"));
  const mod = await import("./views/signin.js");
  mod.render(root, async (me) => { ctx.me = me; if (!location.hash) location.hash = `#/${home()}`; shell(); });
}

export function ctxMe() { return ctx.me; }

function shell() {
  const root = clear(document.getElementById("app"));
  const nav = h("nav", { class: "nav", "aria-label": "main" });
  for (const [name, , , roles, menu] of ROUTES) {
    if (!menu || !roles.includes(ctx.me.role)) continue;
    nav.append(h("a", { href: `#/${PATHS[name]}`, dataset: { route: name }, text: t(`nav.${name}`) }));
  }
  const langBtn = h("button", { class: "link", text: lang === "zh" ? "English" : "中文", title: "language",
    onclick: () => { setLang(lang === "zh" ? "en" : "zh"); shell(); } });
  const logout = h("button", { class: "link", id: "logout", text: t("nav.logout"), onclick: async () => {
    try { await api("/auth/logout", { method: "POST" }); } finally { signedOut(); }
  } });
  const header = h("header", { class: "top" },
    h("div", { class: "brand" }, h("span", { class: "emblem", text: "矫" }), h("span", { text: t("app") })),
    nav,
    h("div", { class: "who" },
      h("a", { href: "#/account", class: "me", text: `${ctx.me.full_name} · ${t(`role.${ctx.me.role}`)}` }),
      langBtn, logout));
  const main = h("main", { id: "main" });
  root.append(header, main);
  route();
}

async function route() {
  if (!ctx.me) return;
  const seq = ++routing;
  const path = (location.hash || "").replace(/^#\/?/, "") || home();
  const main = document.getElementById("main");
  if (!main) return;
  if (current && current.destroy) current.destroy();
  current = null;
  // A question the last screen asked (the duty watch's purpose) does not follow the officer.
  document.querySelectorAll("dialog[open]").forEach((d) => d.close());
  for (const [name, pattern, module, roles] of ROUTES) {
    const m = path.match(pattern);
    if (!m) continue;
    document.querySelectorAll(".nav a").forEach((a) => a.classList.toggle("active", a.dataset.route === name));
    clear(main);
    main.className = `view-${name}`;
    if (!roles.includes(ctx.me.role)) {
      main.append(h("p", { class: "notice", text: t("err.forbidden") }));
      return;
    }
    const mod = await import(module);
    if (seq !== routing) return;  // another navigation started meanwhile
    current = mod;
    try {
      await mod.render(main, m.slice(1), ctx);
    } catch (e) {
      if (e.status !== 401) main.append(h("p", { class: "notice error", text: errorText(e) }));
    }
    return;
  }
  location.hash = `#/${home()}`;
}

window.addEventListener("hashchange", route);
boot().catch((e) => {
  clear(document.getElementById("app")).append(h("p", { class: "notice error", text: errorText(e) }));
});
