// Chinese first, English available. Each view registers its own strings with `register`.
const dict = { zh: {}, en: {} };
export let lang = localStorage.getItem("ccs.lang") === "en" ? "en" : "zh";

export function setLang(l) {
  lang = l === "en" ? "en" : "zh";
  localStorage.setItem("ccs.lang", lang);
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
}

export function register(strings) {
  for (const l of ["zh", "en"]) Object.assign(dict[l], strings[l] || {});
}

export function t(key, vars) {
  let s = dict[lang][key] ?? dict.zh[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

register({
  zh: {
    app: "社区矫正定位监管", ok: "确定", cancel: "取消", save: "保存", none: "无", loading: "加载中…",
    "ago.s": "{n} 秒前", "ago.m": "{n} 分钟前", "ago.h": "{n} 小时前", "ago.d": "{n} 天前",
    "nav.duty": "值班监控", "nav.overview": "概览", "nav.supervisees": "矫正对象", "nav.permits": "外出审批",
    "nav.zones": "区域管理", "nav.keyperiods": "重点时段", "nav.staff": "工作人员",
    "nav.notify": "通知渠道", "nav.audit": "审计日志", "nav.account": "账户", "nav.logout": "退出",
    "role.officer": "矫正工作人员", "role.office_head": "司法所负责人", "role.district_supervisor": "区司法局",
    "role.city_admin": "市司法局", "role.auditor": "审计员",
    "v.inside": "在区域内", "v.outside": "越界", "v.silent": "失联", "v.undecidable": "无法判定",
    "v.travel": "外出审批中",
    "kind.area_exit": "越界", "kind.exclusion_entry": "进入禁止区域", "kind.exclusion_approach": "接近禁止区域",
    "kind.curfew_breach": "违反宵禁", "kind.overdue_return": "外出逾期未归", "kind.communication_failure": "通信中断",
    "kind.location_failure": "定位失败", "kind.phone_off": "关机", "kind.missed_roll_call": "未应答点名",
    "kind.suspected_spoofing": "疑似虚假定位",
    "sev.critical": "紧急", "sev.high": "高", "sev.medium": "中", "sev.low": "低",
    "status.open": "待处理", "status.acknowledged": "已签收", "status.resolved": "已办结",
    "disp.confirmed_violation": "确认违规", "disp.false_alarm": "误报", "disp.device_problem": "设备问题",
    "disp.authorised": "已获批准",
    "err.forbidden": "无权执行此操作", "err.network": "网络错误，请重试",
  },
  en: {
    app: "Location supervision", ok: "OK", cancel: "Cancel", save: "Save", none: "None", loading: "Loading…",
    "ago.s": "{n} s ago", "ago.m": "{n} min ago", "ago.h": "{n} h ago", "ago.d": "{n} d ago",
    "nav.duty": "Duty view", "nav.overview": "Overview", "nav.supervisees": "Supervisees", "nav.permits": "Travel permits",
    "nav.zones": "Zones", "nav.keyperiods": "Key periods", "nav.staff": "Staff",
    "nav.notify": "Notifications", "nav.audit": "Audit log", "nav.account": "Account", "nav.logout": "Sign out",
    "role.officer": "Officer", "role.office_head": "Office head", "role.district_supervisor": "District supervisor",
    "role.city_admin": "City bureau", "role.auditor": "Auditor",
    "v.inside": "Inside", "v.outside": "Outside", "v.silent": "Silent", "v.undecidable": "Undecidable",
    "v.travel": "On approved travel",
    "kind.area_exit": "Left the area", "kind.exclusion_entry": "Entered a prohibited zone",
    "kind.exclusion_approach": "Near a prohibited zone", "kind.curfew_breach": "Curfew breach",
    "kind.overdue_return": "Overdue return", "kind.communication_failure": "Communication lost",
    "kind.location_failure": "Location failure", "kind.phone_off": "Phone off",
    "kind.missed_roll_call": "Missed roll-call", "kind.suspected_spoofing": "Suspected spoofing",
    "sev.critical": "Critical", "sev.high": "High", "sev.medium": "Medium", "sev.low": "Low",
    "status.open": "Open", "status.acknowledged": "Acknowledged", "status.resolved": "Resolved",
    "disp.confirmed_violation": "Confirmed violation", "disp.false_alarm": "False alarm",
    "disp.device_problem": "Device problem", "disp.authorised": "Authorised",
    "err.forbidden": "You may not do this", "err.network": "Network error, try again",
  },
});
