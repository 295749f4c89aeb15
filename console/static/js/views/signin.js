// Sign-in with the existing staff accounts (same lockout and throttling as the API's /auth/token).
import { api } from "../api.js";
import { h, showError } from "../ui.js";
import { t, register, lang, setLang } from "../i18n.js";

register({
  zh: { "signin.title": "登录", "signin.user": "用户名", "signin.password": "密码", "signin.go": "登录",
        "signin.note": "仅限授权工作人员使用。所有对位置信息的访问都会记入审计日志。" },
  en: { "signin.title": "Sign in", "signin.user": "Username", "signin.password": "Password", "signin.go": "Sign in",
        "signin.note": "For authorised staff only. Every access to location data is recorded in the audit log." },
});

export function render(root, done) {
  const user = h("input", { name: "username", id: "username", autocomplete: "username", required: true });
  const pass = h("input", { name: "password", id: "password", type: "password", autocomplete: "current-password", required: true });
  const msg = h("p", { class: "form-error", role: "alert" });
  const btn = h("button", { type: "submit", class: "primary", id: "signin", text: t("signin.go") });
  const form = h("form", { class: "signin-form" },
    h("label", {}, h("span", { text: t("signin.user") }), user),
    h("label", {}, h("span", { text: t("signin.password") }), pass),
    msg, btn);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.textContent = "";
    btn.disabled = true;
    try {
      const me = await api("/auth/console", { method: "POST", form: { username: user.value, password: pass.value } });
      done(me);
    } catch (err) {
      showError(msg, err);
      pass.value = "";
      pass.focus();
    } finally {
      btn.disabled = false;
    }
  });
  const other = h("button", { class: "link", type: "button", text: lang === "zh" ? "English" : "中文",
    onclick: () => { setLang(lang === "zh" ? "en" : "zh"); root.replaceChildren(); render(root, done); } });
  root.append(h("div", { class: "signin" },
    h("div", { class: "signin-card" },
      h("div", { class: "brand big" }, h("span", { class: "emblem", text: "矫" }), h("span", { text: t("app") })),
      h("h1", { text: t("signin.title") }), form,
      h("p", { class: "fine", text: t("signin.note") }), other)));
  user.focus();
}
