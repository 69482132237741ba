
"use strict";
const STATUSES = ["active", "expiring", "lapsed", "pending", "renewal_pending", "unknown",
  "revoked"];
const LINKS = ["online", "offline", "unknown"];
const UI = {
  "zh-CN": {
    title: "车队交强险看板", heading: "车队交强险", toggle: "English", signOut: "退出",
    conn: { connecting: "连接中", live: "实时", reconnecting: "重连中",
      refused: "已拒绝（{status}）" },
    login: { title: "打开车队", fleet: "车队编号", token: "操作员令牌", open: "打开",
      refused: "车队编号或令牌被拒绝（{status}）" },
    tiles: "按状态统计车辆", timeline: "未来12周到期分布（未续保）",
    uninsured: "已脱保/待生效", week: "第{n}周", barTitle: "{n}辆",
    filters: { status: "状态", link: "连接", withinPre: "剩余不超过", withinPost: "天",
      any: "全部" },
    shown: "显示", refresh: "刷新", renew: "批量续保", select: "选择 {vid}",
    columns: { vehicle: "车辆", status: "状态", insurer: "保险公司", end: "保障至",
      days: "剩余天数", link: "连接 · 最近在线", age: "数据时效" },
    alertsTitle: "告警（{n}）", noAlerts: "暂无告警", nextEnd: "续保至{date}",
    status: { active: "有效", expiring: "即将到期", lapsed: "已脱保", pending: "待生效",
      renewal_pending: "已续保（待生效）", unknown: "未查到保单", revoked: "设备已移除",
      other: "其他状态" },
    kinds: { lapsed_while_driving: "脱保行驶", pending_while_driving: "保单生效前行驶",
      expiring_no_renewal: "即将到期且未续保", offline_and_expiring: "离线且即将到期",
      vin_mismatch: "车架号与保单不符", other: "其他告警" },
    link: { online: "在线", offline: "离线", unknown: "未知", other: "未知" },
    refreshOutcome: { updated: "已更新", unchanged: "无变化", unavailable: "暂无法查询",
      other: "结果未知" },
    renewalOutcome: { started: "已发起", already_started: "已在进行",
      vehicle_unknown: "车辆不存在", vehicle_revoked: "设备已移除", failed: "发起失败",
      other: "结果未知" },
    errors: { timeout: "保单数据源未及时响应", vehicle_unknown: "车辆不存在",
      fleet_unknown: "车队不存在", unauthorized: "令牌无效", forbidden: "无权访问该车队",
      bad_idempotency_key: "请求标识无效", too_many_streams: "实时连接过多，请稍后重试",
      other: "请求被拒绝（{status}）" },
    msg: { refreshed: "刷新 {vid}：{outcome}", refreshRefused: "刷新 {vid}：{reason}",
      refreshNotSent: "刷新 {vid}：未能发出，请重试", renewals: "批量续保：{list}",
      renewalItem: "{outcome} {n} 辆", sep: "，", renewalRefused: "批量续保被拒绝：{reason}",
      renewalNotSent: "批量续保请求未能发出，请再次点击重试（不会重复发起）" },
    none: "–", never: "从未", justNow: "刚刚", minAgo: "{n}分钟前", hAgo: "{n}小时前",
    dAgo: "{n}天前", ageUnderMin: "不到1分钟", ageMin: "{n}分钟", ageH: "{n}小时",
    ageD: "{n}天",
    daysLeft: "剩余{n}天", daysLeftOne: "剩余1天", endsToday: "今日到期",
    lapsedDays: "已脱保{n}天", lapsedDaysOne: "已脱保1天",
    alertEnds: "保障至{date}", alertLink: "连接：{link}",
    months: ["1月", "2月", "3月", "4月", "5月", "6月", "7月", "8月", "9月", "10月", "11月",
      "12月"],
    date: "{y}年{m}月{d}日", day: "{mon}{d}日", dayYear: "{y}年{mon}{d}日", clock: "{h}时",
    clockMin: "{h}时{mi}分", when: "{day}{clock}", starts: "自{when}起生效",
    stamp: "{day} {hh}:{mi}",
  },
  "en": {
    title: "Fleet CTPL dashboard", heading: "Fleet CTPL", toggle: "中文", signOut: "Sign out",
    conn: { connecting: "connecting", live: "live", reconnecting: "reconnecting",
      refused: "refused ({status})" },
    login: { title: "Open a fleet", fleet: "Fleet id", token: "Operator token", open: "Open",
      refused: "The fleet or token was refused ({status})." },
    tiles: "vehicles by status", timeline: "Expiries in the next 12 weeks (not renewed)",
    uninsured: "Lapsed / pending", week: "W{n}", barTitle: "{n} vehicles",
    filters: { status: "Status", link: "Link", withinPre: "Expires within",
      withinPost: "days", any: "any" },
    shown: "shown", refresh: "Refresh", renew: "Renew selected", select: "select {vid}",
    columns: { vehicle: "Vehicle", status: "Status", insurer: "Insurer", end: "Coverage end",
      days: "Days left", link: "Link · last seen", age: "Data age" },
    alertsTitle: "Alerts ({n})", noAlerts: "No alerts.", nextEnd: "renewed to {date}",
    status: { active: "Active", expiring: "Expiring", lapsed: "Lapsed",
      pending: "Not yet in force", renewal_pending: "Renewed (next term pending)",
      unknown: "No policy found", revoked: "Gateway removed", other: "Other status" },
    kinds: { lapsed_while_driving: "Driving while lapsed",
      pending_while_driving: "Driving before the policy starts",
      expiring_no_renewal: "Expiring, not renewed",
      offline_and_expiring: "Offline and expiring",
      vin_mismatch: "VIN does not match the policy", other: "Other alert" },
    link: { online: "online", offline: "offline", unknown: "unknown", other: "unknown" },
    refreshOutcome: { updated: "updated", unchanged: "unchanged",
      unavailable: "not available now", other: "unknown result" },
    renewalOutcome: { started: "started", already_started: "already in progress",
      vehicle_unknown: "vehicle not found", vehicle_revoked: "gateway removed",
      failed: "failed", other: "unknown result" },
    errors: { timeout: "the policy sources did not answer in time",
      vehicle_unknown: "vehicle not found", fleet_unknown: "no such fleet",
      unauthorized: "token not accepted", forbidden: "not allowed for this fleet",
      bad_idempotency_key: "bad request key",
      too_many_streams: "too many live streams, try again later",
      other: "refused ({status})" },
    msg: { refreshed: "Refresh {vid}: {outcome}", refreshRefused: "Refresh {vid}: {reason}",
      refreshNotSent: "Refresh {vid}: not sent, try again", renewals: "Renewals: {list}",
      renewalItem: "{n} {outcome}", sep: ", ", renewalRefused: "Renewal refused: {reason}",
      renewalNotSent: "Renewal request not sent; press again to retry (same request)." },
    none: "–", never: "never", justNow: "just now", minAgo: "{n} min ago", hAgo: "{n} h ago",
    dAgo: "{n} d ago", ageUnderMin: "< 1 min", ageMin: "{n} min", ageH: "{n} h",
    ageD: "{n} d",
    daysLeft: "{n} days left", daysLeftOne: "1 day left", endsToday: "ends today",
    lapsedDays: "lapsed {n} days", lapsedDaysOne: "lapsed 1 day",
    alertEnds: "ends {date}", alertLink: "link {link}",
    months: ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
      "Dec"],
    date: "{y}-{mm}-{dd}", day: "{d} {mon}", dayYear: "{d} {mon} {y}", clock: "{hh}:{mi}",
    clockMin: "{hh}:{mi}", when: "{day} {clock}", starts: "from {when}",
    stamp: "{day} {hh}:{mi}",
  },
};
const CHINA_OFFSET_MS = 8 * 3600 * 1000;
const $ = (id) => document.getElementById(id);
const has = (table, key) => Object.prototype.hasOwnProperty.call(table, key);
const state = { fleet: null, token: null, vehicles: new Map(), counts: {}, alerts: [],
  selected: new Set(), renewKey: null, ctl: null, lang: "zh-CN",
  conn: { name: "connecting", status: "" }, message: null, loginMessage: null };

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function t() { return UI[state.lang]; }

function fmt(template, vars) {
  return String(template).replace(/\{(\w+)\}/g, (_, k) => {
    const v = vars ? vars[k] : undefined;
    if (v === undefined || v === null || (typeof v === "number" && !Number.isFinite(v))) {
      return t().none;
    }
    return String(v);
  });
}

function pick(table, key) {
  return typeof key === "string" && key !== "other" && has(table, key) ? table[key] : table.other;
}

function lookup(path) {
  let v = t();
  for (const k of path.split(".")) v = v && typeof v === "object" && has(v, k) ? v[k] : "";
  return typeof v === "string" ? v : "";
}

const pad = (n) => String(n).padStart(2, "0");

function chinaParts(ms) {
  const d = new Date(ms + CHINA_OFFSET_MS);
  return { y: d.getUTCFullYear(), m: d.getUTCMonth() + 1, d: d.getUTCDate(),
    h: d.getUTCHours(), mi: d.getUTCMinutes() };
}

function dateVars(y, m, d) { return { y, m, d, mm: pad(m), dd: pad(d), mon: t().months[m - 1] }; }

function dateText(iso) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(typeof iso === "string" ? iso : "");
  return m ? fmt(t().date, dateVars(Number(m[1]), Number(m[2]), Number(m[3]))) : t().none;
}

function dayText(p) {
  const template = p.y === chinaParts(Date.now()).y ? t().day : t().dayYear;
  return fmt(template, dateVars(p.y, p.m, p.d));
}

function instant(iso) { return typeof iso === "string" ? Date.parse(iso) : NaN; }

function startsText(iso) {
  const ms = instant(iso);
  if (Number.isNaN(ms)) return "";
  const p = chinaParts(ms), u = t();
  const clock = fmt(p.mi ? u.clockMin : u.clock, { h: p.h, hh: pad(p.h), mi: pad(p.mi) });
  return fmt(u.starts, { when: fmt(u.when, { day: dayText(p), clock }) });
}

function stampText(iso) {
  const ms = instant(iso);
  if (Number.isNaN(ms)) return t().none;
  const p = chinaParts(ms);
  return fmt(t().stamp, { day: dayText(p), hh: pad(p.h), mi: pad(p.mi) });
}

function ago(iso) {
  const u = t();
  if (!iso) return u.never;
  const ms = instant(iso);
  if (Number.isNaN(ms)) return u.none;
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return u.justNow;
  if (s < 5400) return fmt(u.minAgo, { n: Math.round(s / 60) });
  if (s < 172800) return fmt(u.hAgo, { n: Math.round(s / 3600) });
  return fmt(u.dAgo, { n: Math.round(s / 86400) });
}

function age(v) {
  const u = t();
  if (typeof v.data_age_s !== "number") return u.none;
  const s = v.data_age_s + (performance.now() - v._at) / 1000;
  if (s < 60) return u.ageUnderMin;
  if (s < 5400) return fmt(u.ageMin, { n: Math.round(s / 60) });
  if (s < 172800) return fmt(u.ageH, { n: Math.round(s / 3600) });
  return fmt(u.ageD, { n: Math.round(s / 86400) });
}

function daysText(n) {
  const u = t();
  if (n === 0) return u.endsToday;
  if (n > 0) return n === 1 ? u.daysLeftOne : fmt(u.daysLeft, { n });
  return n === -1 ? u.lapsedDaysOne : fmt(u.lapsedDays, { n: -n });
}

function daysCell(n) {
  if (typeof n !== "number") return t().none;
  return n >= 0 ? String(n) : daysText(n);
}

function build() {
  const tiles = $("tiles"), options = $("f-status"), links = $("f-link");
  for (const s of STATUSES) {
    const tile = el("div", { class: "tile", id: "tile-" + s, "data-testid": "tile-" + s });
    tile.style.borderLeftColor = "var(--" + s + ")";
    tile.append(el("div", { class: "n", id: "n-" + s }, "0"),
      el("div", { class: "label", "data-t": "status." + s }));
    tiles.append(tile);
    options.append(el("option", { value: s, "data-t": "status." + s }));
  }
  for (const s of LINKS) links.append(el("option", { value: s, "data-t": "link." + s }));
}

function renderChrome() {
  const u = t();
  document.documentElement.lang = state.lang;
  document.title = u.title;
  for (const e of document.querySelectorAll("[data-t]")) e.textContent = lookup(e.dataset.t);
  for (const e of document.querySelectorAll("[data-t-aria]")) {
    e.setAttribute("aria-label", lookup(e.dataset.tAria));
  }
  const c = $("conn");
  c.dataset.state = state.conn.name;
  c.textContent = fmt(pick(u.conn, state.conn.name), { status: state.conn.status });
  $("message").textContent = state.message ? state.message() : "";
  $("login-msg").textContent = state.loginMessage ? state.loginMessage() : "";
}

function renderTiles() {
  for (const s of STATUSES) $("n-" + s).textContent = String(Number(state.counts[s]) || 0);
}

function renderTimeline() {
  const u = t();
  const buckets = new Array(13).fill(0);
  for (const v of state.vehicles.values()) {
    if (v.status === "lapsed" || v.status === "pending") buckets[0] += 1;
    else if (v.status !== "revoked" && typeof v.days_left === "number" && !v.next_coverage_end &&
             v.days_left >= 0 && v.days_left < 84) buckets[1 + Math.floor(v.days_left / 7)] += 1;
  }
  const top = Math.max(1, ...buckets);
  const bars = $("bars");
  bars.replaceChildren();
  buckets.forEach((n, i) => {
    const bar = el("div", { class: i === 0 ? "bar lapsed" : "bar",
      "data-testid": "bar-" + (i === 0 ? "lapsed" : "w" + i), title: fmt(u.barTitle, { n }) });
    bar.append(el("span", {}, n));
    const fill = el("div", { class: "fill" });
    fill.style.height = Math.round((n / top) * 70) + "px";
    bar.append(fill, el("span", { class: "wk" }, i === 0 ? u.uninsured : fmt(u.week, { n: i })));
    bars.append(bar);
  });
}

function shown(v) {
  const status = $("f-status").value, link = $("f-link").value, within = $("f-within").value;
  if (status && v.status !== status) return false;
  if (link && v.link !== link) return false;
  if (within !== "") {
    if (typeof v.days_left !== "number" || v.next_coverage_end ||
        ["lapsed", "pending", "revoked"].includes(v.status) ||
        v.days_left > Number(within)) return false;
  }
  return true;
}

function endCell(v) {
  const td = el("td", {}, dateText(v.coverage_end));
  if (v.next_coverage_end) {
    const next = fmt(t().nextEnd, { date: dateText(v.next_coverage_end) });
    td.append(el("div", { class: "sub" }, next));
  }
  return td;
}

function renderTable() {
  const u = t();
  const body = $("rows");
  body.replaceChildren();
  const vids = [...state.vehicles.keys()].sort();
  let count = 0;
  for (const vid of vids) {
    const v = state.vehicles.get(vid);
    if (!shown(v)) continue;
    count += 1;
    const tr = el("tr", { "data-vid": vid, "data-status": v.status });
    const box = el("input", { type: "checkbox", "aria-label": fmt(u.select, { vid }) });
    box.checked = state.selected.has(vid);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(vid); else state.selected.delete(vid);
      state.renewKey = null;
      $("renew").disabled = state.selected.size === 0;
    });
    const cell = el("td");
    cell.append(box);
    const known = STATUSES.includes(v.status);
    const badge = el("span", { class: "badge", "data-testid": "badge-" + vid },
      pick(u.status, v.status));
    badge.style.background = "var(--" + (known ? v.status : "unknown") + ")";
    const st = el("td");
    st.append(badge);
    const starts = v.status === "pending" ? startsText(v.starts_at) : "";
    if (starts) st.append(el("div", { class: "starts", "data-testid": "starts-" + vid }, starts));
    const btn = el("button", { type: "button", "data-testid": "refresh-" + vid }, u.refresh);
    btn.addEventListener("click", () => refresh(vid, btn));
    const act = el("td");
    act.append(btn);
    tr.append(cell, el("td", { class: "vid" }, vid), st, el("td", {}, v.insurer_code || u.none),
      endCell(v), el("td", {}, v.status === "pending" ? u.none : daysCell(v.days_left)),
      el("td", {}, pick(u.link, v.link) + " · " + ago(v.last_seen)),
      el("td", { class: "dim" }, age(v)), act);
    body.append(tr);
  }
  $("shown").textContent = count + " / " + state.vehicles.size;
  $("renew").disabled = state.selected.size === 0;
}

function renderAlerts() {
  const u = t();
  const list = $("alert-list");
  list.replaceChildren();
  for (const a of state.alerts) {
    const li = el("li", { "data-kind": a.kind, "data-alert": a.alert_id });
    const d = a.detail || {};
    const what = el("div", { class: "what" });
    [startsText(d.starts_at) || null,
      typeof d.days_left === "number" ? daysText(d.days_left) : null,
      d.coverage_end ? fmt(u.alertEnds, { date: dateText(d.coverage_end) }) : null,
      d.link ? fmt(u.alertLink, { link: pick(u.link, d.link) }) : null]
      .filter(Boolean).forEach((part, i) => what.append(i ? " · " : "", el("span", {}, part)));
    li.append(el("div", {}, pick(u.kinds, a.kind)), el("div", { class: "vid" }, a.vid),
      what, el("div", { class: "when" }, stampText(a.raised_at)));
    list.append(li);
  }
  $("no-alerts").hidden = state.alerts.length > 0;
  $("alerts-title").textContent = fmt(u.alertsTitle, { n: state.alerts.length });
}

function renderAll() { renderTiles(); renderTimeline(); renderTable(); renderAlerts(); }

function setLang(lang) {
  state.lang = has(UI, lang) ? lang : "zh-CN";
  sessionStorage.setItem("lang", state.lang);
  renderChrome();
  renderAll();
}

function onEvent(name, data) {
  if (name === "snapshot") {
    state.vehicles = new Map();
    for (const v of data.vehicles) { v._at = performance.now(); state.vehicles.set(v.vid, v); }
    state.counts = data.counts;
    state.alerts = data.alerts;
    renderAll();
  } else if (name === "vehicle") {
    if (data.removed) state.vehicles.delete(data.vid);
    else { data._at = performance.now(); state.vehicles.set(data.vid, data); }
    renderTimeline(); renderTable();
  } else if (name === "counts") {
    state.counts = data; renderTiles();
  } else if (name === "alert") {
    state.alerts = [data, ...state.alerts.filter((a) => a.alert_id !== data.alert_id)];
    renderAlerts();
  }
}

function setConn(name, status) { state.conn = { name, status: status || "" }; renderChrome(); }

async function listen() {
  let delay = 1000;
  for (;;) {
    const ctl = new AbortController();
    state.ctl = ctl;
    let watchdog = setTimeout(() => ctl.abort(), 40000);
    try {
      const res = await api("/events", { headers: { Accept: "text/event-stream" },
        signal: ctl.signal });
      if (res.status === 401 || res.status === 403 || res.status === 404) {
        const status = res.status;
        setConn("refused", status);
        showLogin(() => fmt(t().login.refused, { status }));
        return;
      }
      if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
      setConn("live");
      delay = 1000;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        clearTimeout(watchdog);
        watchdog = setTimeout(() => ctl.abort(), 40000);
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) onEvent(name, JSON.parse(data));
        }
      }
    } catch (err) {
      if (state.ctl !== ctl) return;
    } finally {
      clearTimeout(watchdog);
    }
    if (state.ctl !== ctl) return;
    setConn("reconnecting");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(15000, delay * 2);
  }
}

function say(message) { state.message = message; renderChrome(); }

function reason(body, status) {
  const u = t();
  const code = body && body.error ? body.error.code : undefined;
  const known = pick(u.errors, code);
  return fmt(known, { status });
}

function api(path, init) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token },
    (init && init.headers) || {});
  return fetch("/v1/fleets/" + encodeURIComponent(state.fleet) + path,
    Object.assign({ cache: "no-store" }, init || {}, { headers }));
}

async function refresh(vid, btn) {
  btn.disabled = true;
  try {
    const res = await api("/vehicles/" + encodeURIComponent(vid) + "/refresh",
      { method: "POST" });
    const body = await res.json().catch(() => ({}));
    if (res.ok) {
      say(() => fmt(t().msg.refreshed, { vid, outcome: pick(t().refreshOutcome, body.outcome) }));
    } else {
      say(() => fmt(t().msg.refreshRefused, { vid, reason: reason(body, res.status) }));
    }
  } catch (err) {
    say(() => fmt(t().msg.refreshNotSent, { vid }));
  } finally {
    btn.disabled = false;
  }
}

function newKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function tallyText(outcomes) {
  const u = t();
  const tally = new Map();
  for (const o of outcomes) {
    const label = pick(u.renewalOutcome, o);
    tally.set(label, (tally.get(label) || 0) + 1);
  }
  const items = [...tally].map(([outcome, n]) => fmt(u.msg.renewalItem, { outcome, n }));
  return fmt(u.msg.renewals, { list: items.join(u.msg.sep) });
}

async function renewSelected() {
  const vids = [...state.selected].sort();
  if (!vids.length) return;
  state.renewKey = state.renewKey || newKey();  // the same key on a retry: nothing twice
  $("renew").disabled = true;
  try {
    const res = await api("/renewals", { method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": state.renewKey },
      body: JSON.stringify({ vids }) });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      say(() => fmt(t().msg.renewalRefused, { reason: reason(body, res.status) }));
      return;
    }
    const outcomes = (Array.isArray(body.results) ? body.results : []).map((r) => r.outcome);
    say(() => tallyText(outcomes));
    state.selected.clear();
    state.renewKey = null;
    renderTable();
  } catch (err) {
    say(() => t().msg.renewalNotSent);
  } finally {
    $("renew").disabled = state.selected.size === 0;
  }
}

function credentials() {
  const frag = new URLSearchParams(location.hash.slice(1));
  if (frag.get("fleet") && frag.get("token")) {
    sessionStorage.setItem("fleet", frag.get("fleet"));
    sessionStorage.setItem("token", frag.get("token"));
  }
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  state.fleet = sessionStorage.getItem("fleet");
  state.token = sessionStorage.getItem("token");
  return Boolean(state.fleet && state.token);
}

function showLogin(message) {
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  state.loginMessage = message;
  renderChrome();
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("fleet-id").textContent = state.fleet;
  state.loginMessage = null;
  setConn("connecting");
  listen();
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("fleet", $("in-fleet").value.trim());
  sessionStorage.setItem("token", $("in-token").value.trim());
  $("in-token").value = "";
  if (credentials()) start();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("fleet");
  sessionStorage.removeItem("token");
  if (state.ctl) { const c = state.ctl; state.ctl = null; c.abort(); }
  $("fleet-id").textContent = "";
  state.message = null;
  showLogin(null);
});
$("lang-toggle").addEventListener("click", () => {
  setLang(state.lang === "zh-CN" ? "en" : "zh-CN");
});
for (const id of ["f-status", "f-link", "f-within"]) $(id).addEventListener("input", renderTable);
$("renew").addEventListener("click", renewSelected);
setInterval(renderTable, 30000);
build();
setLang(sessionStorage.getItem("lang") || "zh-CN");
if (credentials()) start(); else showLogin(null);
