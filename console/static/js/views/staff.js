// Staff accounts of the caller's subtree: create, disable/enable, unlock, change the role — never
// above the caller's own rank (api/routes/staff.py refuses it anyway). Every change ends the
// account's sessions at once.
import { api } from "../api.js";
import { h, clear, section, table, toast, dialog, errorText, showError, badge, fmtTime } from "../ui.js";
import { t, register } from "../i18n.js";
import { pageHead, unitNames } from "../office.js";

register({
  zh: { "st.title": "工作人员", "st.user": "用户名", "st.name": "姓名", "st.role": "角色", "st.unit": "所在单位",
        "st.state": "状态", "st.active": "正常", "st.disabled": "已停用", "st.locked": "已锁定至 {t}",
        "st.new": "新建账号", "st.pw": "初始密码（至少 12 位，请告知本人尽快修改）", "st.create": "创建",
        "st.disable": "停用", "st.enable": "启用", "st.unlock": "解除锁定", "st.rerole": "更改角色",
        "st.done": "已保存（该账号的登录已全部失效）", "st.self": "本人", "st.created": "账号已创建",
        "st.confirm.disable": "停用 {u}？该账号将立即退出登录。" },
  en: { "st.title": "Staff", "st.user": "Username", "st.name": "Name", "st.role": "Role", "st.unit": "Unit",
        "st.state": "State", "st.active": "active", "st.disabled": "disabled", "st.locked": "locked until {t}",
        "st.new": "New account", "st.pw": "Initial password (12+ characters; ask them to change it)", "st.create": "Create",
        "st.disable": "Disable", "st.enable": "Enable", "st.unlock": "Unlock", "st.rerole": "Change role",
        "st.done": "Saved (the account's sessions have ended)", "st.self": "you", "st.created": "Account created",
        "st.confirm.disable": "Disable {u}? They are signed out at once." },
});

const RANK = { officer: 0, office_head: 1, district_supervisor: 2, city_admin: 3, auditor: 3 };
const ROLE_UNIT = { officer: ["judicial_office"], office_head: ["judicial_office"], district_supervisor: ["district_bureau"],
  city_admin: ["city_bureau"], auditor: ["city_bureau", "district_bureau"] };

function grantable(myRole) {
  return Object.keys(RANK).filter((r) => RANK[r] <= RANK[myRole]
    && (!["city_admin", "auditor"].includes(r) || myRole === "city_admin"));
}

export async function render(main, _params, ctx) {
  const units = await api("/org/units");
  const list = h("div", { id: "staff-list" });
  main.append(pageHead(t("st.title")), h("div", { class: "split staff-split" },
    section(t("st.title"), list), section(t("st.new"), createForm(ctx, units, () => load(list, ctx, units)))));
  await load(list, ctx, units);
}

async function load(list, ctx, units) {
  const names = unitNames(units);
  const rows = await api("/staff");
  const mine = ctx.me.role;
  const patch = async (s, body) => {
    try { await api(`/staff/${s.id}`, { method: "PATCH", body }); toast(t("st.done")); await load(list, ctx, units); }
    catch (e) { toast(errorText(e), "error"); }
  };
  const tbl = table([
    { label: t("st.name"), render: (s) => h("span", {}, s.full_name, s.id === ctx.me.id ? h("small", { class: "muted", text: ` (${t("st.self")})` }) : null) },
    { label: t("st.user"), render: (s) => h("code", { text: s.username }) },
    { label: t("st.role"), render: (s) => t(`role.${s.role}`) },
    { label: t("st.unit"), render: (s) => names.get(s.org_unit_id) || `#${s.org_unit_id}` },
    { label: t("st.state"), render: (s) => !s.active ? badge("muted", t("st.disabled"))
      : s.locked_until && new Date(s.locked_until) > new Date() ? badge("st-open", t("st.locked", { t: fmtTime(s.locked_until) }))
        : badge("st-resolved", t("st.active")) },
    { label: "", render: (s) => {
      if (s.id === ctx.me.id || RANK[s.role] > RANK[mine] || (["city_admin", "auditor"].includes(s.role) && mine !== "city_admin")) return "";
      const box = h("span", { class: "row-actions", dataset: { staff: s.username } });
      box.append(s.active
        ? h("button", { class: "link danger-link", text: t("st.disable"), onclick: async () => {
          if (await dialog(t("st.confirm.disable", { u: s.username }), [], t("st.disable"))) patch(s, { active: false }); } })
        : h("button", { class: "link", text: t("st.enable"), onclick: () => patch(s, { active: true }) }));
      if (s.locked_until) box.append(h("button", { class: "link", text: t("st.unlock"), onclick: () => patch(s, { unlock: true }) }));
      const unit = units.find((u) => u.id === s.org_unit_id);
      const roles = grantable(mine).filter((r) => r !== s.role && unit && ROLE_UNIT[r].includes(unit.kind));
      if (roles.length) {
        box.append(h("button", { class: "link", text: t("st.rerole"), onclick: async () => {
          const v = await dialog(`${t("st.rerole")}：${s.full_name}`, [{ name: "role", label: t("st.role"), type: "select",
            required: true, options: roles.map((r) => [r, t(`role.${r}`)]) }], t("st.rerole"));
          if (v) patch(s, { role: v.role });
        } }));
      }
      return box;
    } },
  ], rows);
  tbl.id = "staff-table";
  clear(list).append(tbl);
}

function createForm(ctx, units, onDone) {
  const roles = grantable(ctx.me.role);
  const role = h("select", { name: "role", id: "staff-role" }, roles.map((r) => h("option", { value: r, text: t(`role.${r}`) })));
  const unit = h("select", { name: "unit", id: "staff-unit" });
  const fillUnits = () => {
    clear(unit).append(...units.filter((u) => ROLE_UNIT[role.value].includes(u.kind)).map((u) => h("option", { value: u.id, text: u.name })));
  };
  role.addEventListener("change", fillUnits);
  fillUnits();
  const user = h("input", { name: "username", id: "staff-username", required: true, minlength: 3, pattern: "[A-Za-z0-9._@\\-]+", autocomplete: "off" });
  const name = h("input", { name: "full_name", id: "staff-name", required: true });
  const pw = h("input", { name: "password", id: "staff-password", type: "password", required: true, minlength: 12, autocomplete: "new-password" });
  const msg = h("p", { class: "form-error", role: "alert" });
  const f = h("form", { class: "form", id: "staff-form" },
    h("div", { class: "two" }, h("label", {}, h("span", { text: t("st.user") }), user), h("label", {}, h("span", { text: t("st.name") }), name)),
    h("div", { class: "two" }, h("label", {}, h("span", { text: t("st.role") }), role), h("label", {}, h("span", { text: t("st.unit") }), unit)),
    h("label", {}, h("span", { text: t("st.pw") }), pw), msg,
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit", text: t("st.create") })));
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.textContent = "";
    try {
      await api("/staff", { method: "POST", body: { username: user.value, full_name: name.value, role: role.value,
        org_unit_id: Number(unit.value), password: pw.value } });
      toast(t("st.created"));
      f.reset(); fillUnits();
      onDone();
    } catch (err) { showError(msg, err); }
  });
  return f;
}
