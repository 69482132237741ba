"""The fleet dashboard: one self-contained HTML document served at ``GET /fleet``.

No external assets. The fleet id and operator token come in the URL fragment
(``#fleet=<id>&token=<token>``, never sent to the server), are kept in sessionStorage and
wiped from the address bar; without them a small form asks. The page reads the live
stream ``GET /v1/fleets/{id}/events`` with fetch() (EventSource cannot send a bearer
token), reconnecting with backoff, and calls the refresh and bulk-renewal routes.
``headers()`` carries a CSP that allows exactly its one inline style and script by SHA-256.
"""

import base64
import hashlib
from typing import Final

STYLE: Final = """
:root { --bg: #f4f6f9; --panel: #ffffff; --line: #d8dee6; --fg: #17202b; --dim: #5b6776;
  --active: #1f9d55; --expiring: #d98b00; --lapsed: #d64545; --renewal_pending: #2f6fd6;
  --unknown: #7a8594; --revoked: #444c57; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 14px/1.4 "Noto Sans CJK SC",
  "PingFang SC", "Microsoft YaHei", "DejaVu Sans", "Liberation Sans", sans-serif; }
header { display: flex; align-items: center; gap: 12px; padding: 10px 20px;
  background: #17202b; color: #fff; }
header h1 { font-size: 18px; margin: 0; flex: 1; }
header .fleet { color: #b9c4d2; font-family: monospace; }
.conn { border-radius: 999px; padding: 2px 10px; font-size: 12px; background: #5b6776; }
.conn[data-state="live"] { background: var(--active); }
.conn[data-state="reconnecting"] { background: var(--expiring); }
.conn[data-state="refused"] { background: var(--lapsed); }
button { font: inherit; border: 1px solid var(--line); background: #fff; border-radius: 6px;
  padding: 4px 10px; cursor: pointer; }
button.primary { background: #2f6fd6; border-color: #2f6fd6; color: #fff; }
button:disabled { opacity: 0.5; cursor: default; }
header button { background: transparent; color: #fff; border-color: #5b6776; }
main { padding: 16px 20px; display: grid; gap: 16px;
  grid-template-columns: minmax(0, 1fr) 290px; grid-template-areas:
  "tiles tiles" "timeline alerts" "table alerts"; }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 12px 14px; min-width: 0; }
.panel h2 { font-size: 14px; margin: 0 0 8px; color: var(--dim); font-weight: 600; }
#tiles { grid-area: tiles; display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; }
.tile { background: var(--panel); border: 1px solid var(--line); border-left: 5px solid;
  border-radius: 8px; padding: 8px 12px; }
.tile .n { font-size: 26px; font-weight: 700; }
#tile-active { border-left-color: var(--active); }
#tile-expiring { border-left-color: var(--expiring); }
#tile-lapsed { border-left-color: var(--lapsed); }
#tile-renewal_pending { border-left-color: var(--renewal_pending); }
#tile-unknown { border-left-color: var(--unknown); }
#tile-revoked { border-left-color: var(--revoked); }
.tile .label { color: var(--dim); font-size: 12px; }
#timeline { grid-area: timeline; }
.bars { display: flex; align-items: flex-end; gap: 6px; height: 90px; }
.bar { flex: 1; display: flex; flex-direction: column; justify-content: flex-end;
  align-items: center; height: 100%; font-size: 11px; color: var(--dim); }
.bar .fill { width: 100%; background: var(--expiring); border-radius: 3px 3px 0 0;
  min-height: 1px; }
.bar.lapsed .fill { background: var(--lapsed); }
.bar .wk { margin-top: 3px; }
#alerts { grid-area: alerts; max-height: 640px; overflow: auto; }
#alerts ol { list-style: none; margin: 0; padding: 0; display: grid; gap: 8px; }
#alerts li { border-left: 4px solid var(--lapsed); padding: 4px 8px; background: #fbf5f5; }
#alerts li[data-kind="expiring_no_renewal"], #alerts li[data-kind="offline_and_expiring"] {
  border-color: var(--expiring); background: #fdf8ef; }
#alerts .when, #alerts .what { color: var(--dim); font-size: 12px; }
#vehicles { grid-area: table; overflow: auto; }
.tools { display: flex; gap: 10px; align-items: center; margin-bottom: 8px; flex-wrap: wrap; }
.tools label { color: var(--dim); font-size: 12px; }
select, input { font: inherit; padding: 3px 6px; border: 1px solid var(--line);
  border-radius: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 6px; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
td button { font-size: 12px; padding: 2px 8px; }
th { color: var(--dim); font-weight: 600; font-size: 12px; }
td.vid { font-family: monospace; }
.badge { border-radius: 999px; padding: 1px 8px; color: #fff; font-size: 12px; }
.dim { color: var(--dim); }
#message { min-height: 1.4em; color: var(--dim); }
#login { max-width: 420px; margin: 60px auto; display: grid; gap: 10px; }
"""

SCRIPT: Final = """
"use strict";
const STATUSES = ["active", "expiring", "lapsed", "renewal_pending", "unknown", "revoked"];
const LABELS = { active: "Active 有效", expiring: "Expiring 即将到期", lapsed: "Lapsed 已脱保",
  renewal_pending: "Renewing 续保中", unknown: "Unknown 未知", revoked: "Revoked 已注销" };
const KINDS = { lapsed_while_driving: "Driving while lapsed 脱保行驶",
  expiring_no_renewal: "Expiring, no renewal 即将到期未续保",
  offline_and_expiring: "Offline and expiring 离线且即将到期",
  vin_mismatch: "VIN mismatch 车架号不符" };
const COLORS = { active: "#1f9d55", expiring: "#d98b00", lapsed: "#d64545",
  renewal_pending: "#2f6fd6", unknown: "#7a8594", revoked: "#444c57" };
const $ = (id) => document.getElementById(id);
const state = { fleet: null, token: null, vehicles: new Map(), counts: {}, alerts: [],
  selected: new Set(), renewKey: null, ctl: null };

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
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

function api(path, init) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token },
    (init && init.headers) || {});
  return fetch("/v1/fleets/" + encodeURIComponent(state.fleet) + path,
    Object.assign({ cache: "no-store" }, init || {}, { headers }));
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function age(v) {
  if (v.data_age_s === null || v.data_age_s === undefined) return "–";
  const s = v.data_age_s + (performance.now() - v._at) / 1000;
  return s < 5400 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h";
}

function renderTiles() {
  for (const s of STATUSES) $("n-" + s).textContent = String(state.counts[s] || 0);
}

function renderTimeline() {
  const buckets = new Array(13).fill(0);
  for (const v of state.vehicles.values()) {
    if (v.status === "lapsed") buckets[0] += 1;
    else if (v.status !== "revoked" && v.days_left !== null && !v.next_coverage_end &&
             v.days_left >= 0 && v.days_left < 84) buckets[1 + Math.floor(v.days_left / 7)] += 1;
  }
  const top = Math.max(1, ...buckets);
  const bars = $("bars");
  bars.replaceChildren();
  buckets.forEach((n, i) => {
    const bar = el("div", { class: i === 0 ? "bar lapsed" : "bar",
      "data-testid": "bar-" + (i === 0 ? "lapsed" : "w" + i), title: n + " vehicles" });
    bar.append(el("span", {}, n));
    const fill = el("div", { class: "fill" });
    fill.style.height = Math.round((n / top) * 70) + "px";
    bar.append(fill, el("span", { class: "wk" }, i === 0 ? "lapsed" : "w" + i));
    bars.append(bar);
  });
}

function shown(v) {
  const status = $("f-status").value, link = $("f-link").value, within = $("f-within").value;
  if (status && v.status !== status) return false;
  if (link && v.link !== link) return false;
  if (within !== "") {
    if (v.days_left === null || v.next_coverage_end || v.status === "lapsed" ||
        v.status === "revoked" || v.days_left > Number(within)) return false;
  }
  return true;
}

function renderTable() {
  const body = $("rows");
  body.replaceChildren();
  const vids = [...state.vehicles.keys()].sort();
  let count = 0;
  for (const vid of vids) {
    const v = state.vehicles.get(vid);
    if (!shown(v)) continue;
    count += 1;
    const tr = el("tr", { "data-vid": vid, "data-status": v.status });
    const box = el("input", { type: "checkbox", "aria-label": "select " + vid });
    box.checked = state.selected.has(vid);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(vid); else state.selected.delete(vid);
      state.renewKey = null;
      $("renew").disabled = state.selected.size === 0;
    });
    const cell = el("td");
    cell.append(box);
    const badge = el("span", { class: "badge" }, LABELS[v.status] || v.status);
    badge.style.background = COLORS[v.status] || "#7a8594";
    const st = el("td");
    st.append(badge);
    const btn = el("button", { "data-testid": "refresh-" + vid }, "Refresh 刷新");
    btn.addEventListener("click", () => refresh(vid, btn));
    const act = el("td");
    act.append(btn);
    tr.append(cell, el("td", { class: "vid" }, vid), st, el("td", {}, v.insurer_code || "–"),
      el("td", {}, v.next_coverage_end ? v.coverage_end + " → " + v.next_coverage_end
        : (v.coverage_end || "–")),
      el("td", {}, v.days_left === null ? "–" : v.days_left),
      el("td", {}, v.link + " · " + ago(v.last_seen)), el("td", { class: "dim" }, age(v)), act);
    body.append(tr);
  }
  $("shown").textContent = count + " / " + state.vehicles.size;
  $("renew").disabled = state.selected.size === 0;
}

function renderAlerts() {
  const list = $("alert-list");
  list.replaceChildren();
  for (const a of state.alerts) {
    const li = el("li", { "data-kind": a.kind, "data-alert": a.alert_id });
    const d = a.detail || {};
    const what = [d.days_left === undefined ? null : d.days_left + " days left",
      d.coverage_end ? "ends " + d.coverage_end : null, d.link ? "link " + d.link : null]
      .filter(Boolean).join(" · ");
    li.append(el("div", {}, KINDS[a.kind] || a.kind), el("div", { class: "vid" }, a.vid),
      el("div", { class: "what" }, what),
      el("div", { class: "when" }, new Date(a.raised_at).toLocaleString()));
    list.append(li);
  }
  $("no-alerts").hidden = state.alerts.length > 0;
}

function renderAll() { renderTiles(); renderTimeline(); renderTable(); renderAlerts(); }

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

function setConn(s, text) { const c = $("conn"); c.dataset.state = s; c.textContent = text; }

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
        setConn("refused", "refused " + res.status);
        showLogin("The fleet or token was refused (" + res.status + ").");
        return;
      }
      if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
      setConn("live", "live 实时");
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
        while ((i = buf.indexOf("\\n\\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let name = "message", data = "";
          for (const line of block.split("\\n")) {
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
    setConn("reconnecting", "reconnecting 重连中");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(15000, delay * 2);
  }
}

function say(text) { $("message").textContent = text; }

async function refresh(vid, btn) {
  btn.disabled = true;
  try {
    const res = await api("/vehicles/" + encodeURIComponent(vid) + "/refresh",
      { method: "POST" });
    const body = await res.json();
    say(res.ok ? vid + ": " + body.outcome : vid + ": " + body.error.message);
  } catch (err) {
    say(vid + ": not sent, try again");
  } finally {
    btn.disabled = false;
  }
}

function newKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
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
    const body = await res.json();
    if (!res.ok) { say("Renewal refused: " + body.error.message); return; }
    const tally = {};
    for (const r of body.results) tally[r.outcome] = (tally[r.outcome] || 0) + 1;
    say("Renewals: " + Object.entries(tally).map(([k, n]) => n + " " + k).join(", "));
    state.selected.clear();
    state.renewKey = null;
    renderTable();
  } catch (err) {
    say("Renewal request not sent; press again to retry (same request).");
  } finally {
    $("renew").disabled = state.selected.size === 0;
  }
}

function showLogin(text) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-msg").textContent = text || "";
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("fleet-id").textContent = state.fleet;
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
  sessionStorage.clear();
  if (state.ctl) { const c = state.ctl; state.ctl = null; c.abort(); }
  showLogin("");
});
for (const id of ["f-status", "f-link", "f-within"]) $(id).addEventListener("input", renderTable);
$("renew").addEventListener("click", renewSelected);
setInterval(renderTable, 30000);
if (credentials()) start(); else showLogin("");
"""

_OPTIONS: Final = "".join(
    f'<option value="{s}">{s}</option>'
    for s in ("active", "expiring", "lapsed", "renewal_pending", "unknown", "revoked")
)
_TILES: Final = "".join(
    f'<div class="tile" id="tile-{s}" data-testid="tile-{s}"><div class="n" id="n-{s}">0</div>'
    f'<div class="label">{label}</div></div>'
    for s, label in (
        ("active", "Active 有效"), ("expiring", "Expiring 即将到期"), ("lapsed", "Lapsed 已脱保"),
        ("renewal_pending", "Renewing 续保中"), ("unknown", "Unknown 未知"),
        ("revoked", "Revoked 已注销"),
    )
)  # fmt: skip

_DOCUMENT: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>Fleet CTPL dashboard · 车队交强险</title>
<style>@STYLE@</style>
</head>
<body>
<header>
  <h1>Fleet CTPL · 车队交强险 <span class="fleet" id="fleet-id"></span></h1>
  <span id="conn" class="conn" data-testid="conn" data-state="connecting">connecting</span>
  <button id="logout" type="button">Sign out</button>
</header>
<form id="login" class="panel" data-testid="login" hidden>
  <h2>Open a fleet</h2>
  <label>Fleet id <input id="in-fleet" autocomplete="off" required></label>
  <label>Operator token <input id="in-token" type="password" autocomplete="off" required></label>
  <button class="primary" type="submit">Open</button>
  <p id="login-msg" class="dim"></p>
</form>
<main id="app" hidden>
  <section id="tiles" aria-label="vehicles by status">@TILES@</section>
  <section id="timeline" class="panel">
    <h2>Expiries, next 12 weeks (unrenewed) · 到期分布</h2>
    <div id="bars" class="bars" data-testid="timeline"></div>
  </section>
  <section id="vehicles" class="panel">
    <div class="tools">
      <label>Status <select id="f-status" data-testid="filter-status">
        <option value="">any</option>@OPTIONS@</select></label>
      <label>Link <select id="f-link" data-testid="filter-link"><option value="">any</option>
        <option value="online">online</option><option value="offline">offline</option>
        <option value="unknown">unknown</option></select></label>
      <label>Expires within (days) <input id="f-within" data-testid="filter-within"
        type="number" min="0" max="366" size="4"></label>
      <span class="dim">shown <span id="shown" data-testid="shown">0</span></span>
      <button id="renew" class="primary" type="button" data-testid="renew" disabled>
        Renew selected 批量续保</button>
      <span id="message" data-testid="message" role="status"></span>
    </div>
    <table>
      <thead><tr><th></th><th>Vehicle</th><th>Status</th><th>Insurer</th><th>Coverage end</th>
        <th>Days left</th><th>Link · last seen</th><th>Data age</th><th></th></tr></thead>
      <tbody id="rows" data-testid="rows"></tbody>
    </table>
  </section>
  <section id="alerts" class="panel">
    <h2>Alerts · 告警</h2>
    <p id="no-alerts" class="dim">No alerts.</p>
    <ol id="alert-list" data-testid="alerts"></ol>
  </section>
</main>
<script>@SCRIPT@</script>
</body>
</html>
"""


def page() -> str:
    """The whole document."""
    return (
        _DOCUMENT.replace("@TILES@", _TILES)
        .replace("@OPTIONS@", _OPTIONS)
        .replace("@STYLE@", STYLE)
        .replace("@SCRIPT@", SCRIPT)
    )


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy() -> str:
    """The page's CSP: its own inline style and script only; fetch to its own origin."""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {_sha256(SCRIPT)}",
            f"style-src {_sha256(STYLE)}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def headers() -> dict[str, str]:
    """The response headers the page is served with."""
    return {
        "Content-Security-Policy": content_security_policy(),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }
