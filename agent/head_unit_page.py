"""The head unit's reference page: one self-contained HTML document, inline CSS and JS.

No external assets (no fonts, images or scripts fetched): it works offline and packages
as plain Python. It reads ``GET /api/state`` and ``GET /api/events`` (falling back to
polling when the stream fails), keeps the last snapshot on screen with a "last updated"
note while the gateway is unreachable, and posts taps to ``POST /api/answer``. Every text
it shows of the policy comes from the snapshot (``agent.texts``); only its own chrome
(indicators, the banner) is worded here. ``content_security_policy()`` allows exactly
its one inline style and one inline script, by SHA-256.
"""

import base64
import hashlib
from typing import Final

STYLE: Final = """
:root { color-scheme: dark; --bg: #05070a; --panel: #121821; --line: #3a4656;
  --fg: #ffffff; --dim: #c9d3df; --ok: #4cd964; --warn: #ffc233; --bad: #ff5c5c;
  --grey: #aab6c4; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
html, body { margin: 0; height: 100%; background: var(--bg); color: var(--fg); }
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC",
    "Microsoft YaHei", "WenQuanYi Micro Hei", "DejaVu Sans", "Liberation Sans", sans-serif;
  font-size: clamp(18px, min(2.8vw, 4.6vh), 30px); line-height: 1.3;
  display: grid; grid-template-rows: auto auto 1fr; overflow: hidden;
  -webkit-user-select: none; user-select: none; }
header { display: flex; align-items: center; gap: 0.6em; padding: 0.45em 0.6em;
  background: var(--panel); border-bottom: 2px solid var(--line); }
.status { flex: 1; display: flex; align-items: center; gap: 0.55em; min-width: 0; }
.icon { flex: none; width: 1.9em; height: 1.9em; border-radius: 50%; display: grid;
  place-items: center; font-weight: 700; font-size: 1.1em; color: #000;
  background: var(--grey); }
.status[data-status="covered"] .icon { background: var(--ok); }
.status[data-status="expiring"] .icon { background: var(--warn); }
.status[data-status="pending"] .icon { background: var(--bad); }
.status[data-status="pending"] .headline { color: var(--bad); }
.status[data-status="lapsed"] .icon, .status[data-status="mismatch"] .icon {
  background: var(--bad); }
.headline { font-size: 1.25em; font-weight: 700; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.status[data-status="lapsed"] .headline, .status[data-status="mismatch"] .headline {
  color: var(--bad); }
.status[data-status="expiring"] .headline { color: var(--warn); }
.detail { color: var(--dim); font-size: 0.8em; }
.side { display: flex; align-items: center; gap: 0.4em; flex: none; }
.pill { border: 2px solid var(--line); border-radius: 999px; padding: 0.15em 0.6em;
  font-size: 0.75em; font-weight: 600; white-space: nowrap; }
.pill[data-online="true"] { border-color: var(--ok); color: var(--ok); }
.pill[data-online="false"] { border-color: var(--warn); color: var(--warn); }
.pill[data-moving="true"] { border-color: var(--warn); color: var(--warn); }
button { font: inherit; color: var(--fg); background: #263142; border: 2px solid #8ea0b5;
  border-radius: 14px; min-height: 72px; padding: 0.2em 0.7em; cursor: pointer;
  touch-action: manipulation; font-weight: 700; }
button:active { transform: translateY(2px); }
button:disabled { opacity: 0.5; }
button.primary { background: var(--warn); border-color: var(--warn); color: #000; }
.toggle { min-width: 4.6em; font-size: 0.85em; }
.stale { background: #3d2e00; color: var(--warn); border-bottom: 2px solid var(--warn);
  padding: 0.3em 0.8em; font-size: 0.8em; font-weight: 600; }
main { display: grid; gap: 0.6em; padding: 0.6em; min-height: 0; }
main.prompting, main.renewing { grid-template-columns: 1fr; }
main.prompting .card, main.renewing .card { display: none; }
@media (min-width: 1100px) {
  main.prompting, main.renewing { grid-template-columns: 3fr 2fr; }
  main.prompting .card, main.renewing .card { display: block; }
}
.card, .prompt { background: var(--panel); border: 2px solid var(--line); border-radius: 18px;
  padding: 0.6em 0.9em; min-height: 0; overflow: hidden; }
.card h2, .prompt h2 { margin: 0 0 0.35em; font-size: 1.15em; }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.25em 1em; margin: 0; }
.card dt { color: var(--dim); }
.card dd { margin: 0; font-weight: 700; overflow-wrap: break-word; min-width: 0; }
main.prompting .card, main.renewing .card { font-size: 0.66em; }
.empty { color: var(--dim); align-self: center; justify-self: center; text-align: center; }
.prompt { border: 3px solid var(--warn); display: flex; flex-direction: column; gap: 0.4em; }
.prompt p { margin: 0; }
.prompt .body { font-size: 0.95em; }
.answers { margin-top: auto; display: grid; grid-template-columns: repeat(3, 1fr);
  gap: 0.45em; }
.answers .primary { grid-column: span 2; }
.error { color: var(--bad); font-weight: 700; font-size: 0.85em; }
.renewal { background: var(--panel); border: 3px solid var(--ok); border-radius: 18px;
  padding: 0.6em 0.9em; display: flex; flex-direction: column; gap: 0.4em; }
.renewal h2 { margin: 0; font-size: 1.15em; }
.renewal p { margin: 0; }
.rate { color: var(--dim); font-size: 0.8em; }
.quotes { display: grid; gap: 0.45em; }
.quotes button { text-align: left; display: flex; flex-direction: column; gap: 0.1em;
  padding: 0.3em 0.7em; }
.q-head { font-size: 1em; }
.q-when { font-size: 0.75em; font-weight: 600; color: var(--ok); }
.q-price { font-size: 0.8em; font-weight: 600; color: var(--dim); }
.qr { display: flex; gap: 0.8em; align-items: center; }
.qr img { width: 11em; height: 11em; background: #fff; border-radius: 8px; }
"""

SCRIPT: Final = """
"use strict";
const UI = {
  "zh-CN": { online: "在线", offline: "离线", moving: "行驶中", parked: "未行驶",
    off: "已熄火", connecting: "正在连接网关…", unreachable: "无法连接网关",
    updated: "最后更新", toggle: "English", noCard: "暂无已核验的电子保单",
    failed: "未能发送，请重试", title: "交强险", qr: "支付二维码" },
  "en": { online: "Online", offline: "Offline", moving: "Moving", parked: "Stopped",
    off: "Ignition off", connecting: "Connecting to the gateway…",
    unreachable: "Gateway unreachable", updated: "Last updated", toggle: "中文",
    noCard: "No verified e-policy yet", failed: "Not sent, please try again",
    title: "CTPL", qr: "Payment QR code" },
};
const ICONS = { covered: "✓", expiring: "!", lapsed: "✕", pending: "!", mismatch: "✕",
  unknown: "?", unverified: "?" };
const ORDER = ["accept", "snooze_trip", "snooze_day", "dismiss", "already_renewed"];
const POLL_MS = 3000;
const QUIET_MS = 30000;
const $ = (id) => document.getElementById(id);

let snap = null;
let chosen = null;
let lastAt = null;
let reachable = false;
let answered = null;
let pending = false;
let failed = false;
let source = null;
let pollTimer = null;
let applied = 0;

function lang() {
  if (chosen) return chosen;
  return snap && UI[snap.lang] ? snap.lang : "zh-CN";
}

function text(el, value) {
  if (el.textContent !== value) el.textContent = value;
}

function clock(d) {
  return [d.getHours(), d.getMinutes(), d.getSeconds()]
    .map((n) => String(n).padStart(2, "0")).join(":");
}

function render() {
  const l = lang();
  const ui = UI[l];
  document.documentElement.lang = l;
  if (document.title !== ui.title) document.title = ui.title;
  text($("lang-toggle"), ui.toggle);
  const stale = $("stale");
  if (!reachable) {
    stale.hidden = false;
    text(stale, snap ? ui.unreachable + " · " + ui.updated + " " + clock(lastAt)
      : ui.connecting);
  } else {
    stale.hidden = true;
  }
  if (!snap) return;
  const status = $("status");
  status.dataset.status = snap.status;
  const st = (snap.texts && snap.texts[l]) || { headline: "", detail: "" };
  text($("status-icon"), ICONS[snap.status] || "?");
  text($("status-headline"), st.headline);
  text($("status-detail"), st.detail || "");
  const online = $("online");
  online.dataset.online = String(Boolean(snap.online));
  text(online, snap.online ? ui.online : ui.offline);
  const v = snap.vehicle || {};
  const moving = $("moving");
  moving.dataset.moving = String(Boolean(v.moving));
  moving.dataset.ignition = v.ignition_on ? "on" : "off";
  text(moving, v.moving ? ui.moving : v.ignition_on ? ui.parked : ui.off);
  renderPrompt(l, ui, Boolean(v.moving));
  renderRenewal(l, ui, Boolean(v.moving));
  renderCard(l, ui);
}

function renderRenewal(l, ui, moving) {
  const r = snap.renewal;
  const box = $("renewal");
  // A prompt on screen comes first: the renewal shows again once it is answered.
  const show = Boolean(r) && !moving && $("prompt").hidden;
  box.hidden = !show;
  $("main").classList.toggle("renewing", show);
  if (!show) return;
  box.dataset.stage = r.stage;
  const t = r.texts[l];
  text($("renewal-headline"), t.headline);
  text($("renewal-detail"), t.detail || "");
  const list = document.createDocumentFragment();
  const quoting = r.stage === "quotes" && r.quotes.length > 0;
  const rate = $("renewal-rate");
  rate.hidden = !quoting;
  if (quoting) text(rate, r.quotes[0].texts[l].rate || "");
  if (quoting) {
    for (const q of r.quotes) {
      const qt = q.texts[l];
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.testid = "quote-" + q.quote_id;
      const head = document.createElement("span");
      head.className = "q-head";
      head.textContent = [qt.insurer, qt.service].filter(Boolean).join(" · ");
      const when = document.createElement("span");
      when.className = "q-when";
      when.textContent = qt.starts;
      const price = document.createElement("span");
      price.className = "q-price";
      price.textContent = qt.price;
      b.append(head, when, price);
      b.disabled = pending;
      b.addEventListener("click", () => choose(q.quote_id));
      list.append(b);
    }
  }
  $("quotes").replaceChildren(list);
  const qr = $("payment-qr");
  if (qr.alt !== ui.qr) qr.alt = ui.qr;
  const paying = r.stage === "awaiting_payment" && Boolean(r.payment_qr);
  $("payment").hidden = !paying;
  if (paying && qr.getAttribute("src") !== r.payment_qr) qr.setAttribute("src", r.payment_qr);
}

async function choose(quoteId) {
  if (pending) return;
  pending = true;
  render();
  try {
    const r = await fetch("/api/quote", {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ quote_id: quoteId }),
    });
    failed = !r.ok;
  } catch (e) {
    failed = true;
  } finally {
    pending = false;
    render();
  }
}

function renderPrompt(l, ui, moving) {
  const p = snap.prompt;
  const show = Boolean(p) && p.id !== answered && !moving;
  $("prompt").hidden = !show;
  $("main").classList.toggle("prompting", show);
  if (!show) return;
  const t = p.texts[l];
  $("prompt").dataset.promptId = String(p.id);
  $("prompt").dataset.stage = p.stage;
  text($("prompt-title"), t.title);
  text($("prompt-body"), t.body);
  for (const name of ORDER) {
    const b = $("answer-" + name);
    b.hidden = !p.answers.includes(name);
    b.disabled = pending;
    text(b, t[name] || name);
  }
  $("prompt-error").hidden = !failed;
  text($("prompt-error"), ui.failed);
}

function renderCard(l, ui) {
  const c = snap.card;
  $("card").hidden = !c;
  $("no-card").hidden = Boolean(c);
  text($("no-card"), ui.noCard);
  if (!c) return;
  const t = c.texts[l];
  text($("card-title"), t.title);
  const rows = document.createDocumentFragment();
  for (const [label, value] of Object.entries(t)) {
    if (label === "title") continue;
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = value;
    rows.append(dt, dd);
  }
  $("card-rows").replaceChildren(rows);
}

function apply(s) {
  if (!s || typeof s !== "object") return;
  applied += 1;
  snap = s;
  lastAt = new Date();
  reachable = true;
  if (!s.prompt || s.prompt.id !== answered) failed = false;
  render();
}

async function poll() {
  const asked = applied;
  try {
    const r = await fetch("/api/state", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    if (applied === asked) apply(s);  // else a newer snapshot came meanwhile: keep it
  } catch (e) {
    reachable = false;
    render();
    if (source && source.readyState === EventSource.OPEN) connect();
  }
}

function startPolling() {
  if (pollTimer !== null) return;
  poll();
  pollTimer = setInterval(poll, POLL_MS);
}

function stopPolling() {
  if (pollTimer === null) return;
  clearInterval(pollTimer);
  pollTimer = null;
}

function connect() {
  if (source) source.close();
  const es = new EventSource("/api/events");
  source = es;
  es.addEventListener("state", (e) => {
    stopPolling();
    try { apply(JSON.parse(e.data)); } catch (err) { /* a torn event: wait for the next */ }
  });
  es.onopen = () => stopPolling();
  es.onerror = () => {
    if (source !== es) return;
    startPolling();
    if (es.readyState === EventSource.CLOSED) {
      source = null;
      setTimeout(connect, POLL_MS * 2);
    }
  };
}

async function answer(name) {
  if (!snap || !snap.prompt || pending) return;
  const id = snap.prompt.id;
  pending = true;
  failed = false;
  render();
  try {
    const r = await fetch("/api/answer", {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt_id: id, answer: name }),
    });
    if (r.ok || r.status === 409) answered = id;
    else failed = true;
  } catch (e) {
    failed = true;
  } finally {
    pending = false;
    render();
  }
}

for (const name of ORDER) $("answer-" + name).addEventListener("click", () => answer(name));
$("lang-toggle").addEventListener("click", () => {
  chosen = lang() === "zh-CN" ? "en" : "zh-CN";
  render();
});
setInterval(() => {
  if (!lastAt || Date.now() - lastAt.getTime() >= QUIET_MS) poll();
}, QUIET_MS / 2);
render();
poll();
connect();
"""

_DOCUMENT: Final = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>交强险</title>
<link rel="icon" href="data:,">
<style>@STYLE@</style>
</head>
<body>
<header>
  <div id="status" class="status" data-testid="status" data-status="unverified"
       role="status" aria-live="polite">
    <div id="status-icon" class="icon" aria-hidden="true">?</div>
    <div>
      <div id="status-headline" class="headline" data-testid="status-headline"></div>
      <div id="status-detail" class="detail" data-testid="status-detail"></div>
    </div>
  </div>
  <div class="side">
    <span id="online" class="pill" data-testid="online"></span>
    <span id="moving" class="pill" data-testid="moving"></span>
    <button id="lang-toggle" class="toggle" type="button" data-testid="lang-toggle"></button>
  </div>
</header>
<div id="stale" class="stale" data-testid="stale" role="alert" hidden></div>
<main id="main">
  <section id="prompt" class="prompt" data-testid="prompt" role="alertdialog"
           aria-labelledby="prompt-title" aria-describedby="prompt-body" hidden>
    <h2 id="prompt-title" data-testid="prompt-title"></h2>
    <p id="prompt-body" class="body" data-testid="prompt-body"></p>
    <p id="prompt-error" class="error" data-testid="prompt-error" hidden></p>
    <div class="answers">
      <button id="answer-accept" class="primary" type="button"
              data-testid="answer-accept"></button>
      <button id="answer-snooze_trip" type="button" data-testid="answer-snooze_trip"></button>
      <button id="answer-snooze_day" type="button" data-testid="answer-snooze_day"></button>
      <button id="answer-dismiss" type="button" data-testid="answer-dismiss"></button>
      <button id="answer-already_renewed" type="button"
              data-testid="answer-already_renewed"></button>
    </div>
  </section>
  <section id="renewal" class="renewal" data-testid="renewal" hidden>
    <h2 id="renewal-headline" data-testid="renewal-headline"></h2>
    <p id="renewal-detail" data-testid="renewal-detail"></p>
    <p id="renewal-rate" class="rate" data-testid="renewal-rate" hidden></p>
    <div id="quotes" class="quotes" data-testid="quotes"></div>
    <div id="payment" class="qr" data-testid="payment" hidden>
      <img id="payment-qr" data-testid="payment-qr" alt="">
    </div>
  </section>
  <section id="card" class="card" data-testid="card" aria-labelledby="card-title" hidden>
    <h2 id="card-title" data-testid="card-title"></h2>
    <dl id="card-rows" data-testid="card-rows"></dl>
  </section>
  <p id="no-card" class="empty" data-testid="no-card" hidden></p>
</main>
<script>@SCRIPT@</script>
</body>
</html>
"""


def page() -> str:
    """The whole document."""
    return _DOCUMENT.replace("@STYLE@", STYLE).replace("@SCRIPT@", SCRIPT)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy() -> str:
    """The page's CSP: its own inline style and script only; fetch and SSE to itself."""
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
