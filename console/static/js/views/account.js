// One's own account: password change (every session of the account ends; sign in again).
import { api } from "../api.js";
import { h, section, toast, showError } from "../ui.js";
import { t, register } from "../i18n.js";

register({
  zh: { "acct.title": "我的账户", "acct.pw": "修改密码", "acct.current": "当前密码", "acct.new": "新密码",
        "acct.repeat": "再次输入新密码", "acct.mismatch": "两次输入的新密码不一致",
        "acct.done": "密码已修改，请重新登录", "acct.user": "用户名", "acct.role": "角色" },
  en: { "acct.title": "My account", "acct.pw": "Change password", "acct.current": "Current password",
        "acct.new": "New password", "acct.repeat": "New password again", "acct.mismatch": "The new passwords differ",
        "acct.done": "Password changed: sign in again", "acct.user": "Username", "acct.role": "Role" },
});

export function render(main, _params, ctx) {
  const cur = h("input", { type: "password", name: "current", autocomplete: "current-password", required: true });
  const nw = h("input", { type: "password", name: "new", autocomplete: "new-password", required: true, minlength: 12 });
  const again = h("input", { type: "password", name: "again", autocomplete: "new-password", required: true, minlength: 12 });
  const msg = h("p", { class: "form-error", role: "alert" });
  const form = h("form", { class: "form narrow" },
    h("label", {}, h("span", { text: t("acct.current") }), cur),
    h("label", {}, h("span", { text: t("acct.new") }), nw),
    h("label", {}, h("span", { text: t("acct.repeat") }), again), msg,
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit", text: t("acct.pw") })));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.textContent = "";
    if (nw.value !== again.value) { msg.textContent = t("acct.mismatch"); return; }
    try {
      await api("/auth/password", { method: "POST", body: { current_password: cur.value, new_password: nw.value } });
      toast(t("acct.done"));
      setTimeout(() => location.reload(), 1200);
    } catch (err) { showError(msg, err); }
  });
  main.append(h("h1", { text: t("acct.title") }),
    section(ctx.me.full_name,
      h("dl", { class: "facts" }, h("dt", { text: t("acct.user") }), h("dd", { text: ctx.me.username }),
        h("dt", { text: t("acct.role") }), h("dd", { text: t(`role.${ctx.me.role}`) }))),
    section(t("acct.pw"), form));
}
