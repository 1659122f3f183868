// Token vending console. Plain JavaScript, no framework, no build step.
//
// Every view calls the service's own /v1 endpoints with the session cookie (HttpOnly: this script never
// sees it) and, on state-changing calls, the session's CSRF token, which lives in this page's memory only
// (never in localStorage or sessionStorage). Text from the service is inserted with textContent only.
"use strict";

const state = { session: null, me: null, csrf: null, timer: null, view: null, seq: 0 };
const $ = (sel) => document.querySelector(sel);

// -- DOM helpers ------------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function badge(value) {
  return h("span", { class: `badge state-${value}` }, value);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function age(iso) {
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function span(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  return hh ? `${hh}h ${String(mm).padStart(2, "0")}m ${String(ss).padStart(2, "0")}s`
            : `${mm}m ${String(ss).padStart(2, "0")}s`;
}

function countdown(expireIso, live) {
  const el = h("span", { class: "countdown", "data-expire": expireIso || "", "data-live": live ? "1" : "0" });
  tick(el);
  return el;
}

function tick(el) {
  const iso = el.getAttribute("data-expire");
  if (!iso || el.getAttribute("data-live") !== "1") { el.textContent = "—"; el.className = "countdown gone"; return; }
  const left = (new Date(iso).getTime() - Date.now()) / 1000;
  if (left <= 0) { el.textContent = "expired"; el.className = "countdown gone"; return; }
  el.textContent = `${span(left)} left`;
  el.className = left < 60 ? "countdown low" : "countdown";
}

function say(text, kind) {
  const el = $("#status");
  el.textContent = text || "";
  el.className = `status ${kind || ""}`;
}

// -- the service ------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, error) {
    super(`${status} ${error.reason || "error"}: ${error.message || ""}`);
    this.status = status;
    this.reason = error.reason;
  }
}

async function call(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
  }
  const resp = await fetch(path, { method, headers, credentials: "same-origin", cache: "no-store",
                                   body: body === undefined ? undefined : JSON.stringify(body) });
  let data = {};
  try { data = await resp.json(); } catch (e) { data = {}; }
  if (!resp.ok) {
    const err = new ApiError(resp.status, (data && data.error) || {});
    if (resp.status === 401 && path !== "/console/session") {
      state.session = null;
      showSignIn(await call("GET", "/console/session"));
    }
    throw err;
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// -- sign-in ----------------------------------------------------------------------------------------------
function signedIn(session) {
  state.session = session;
  state.csrf = session.csrf_token;
  $("#who").textContent = session.identity;
  $("#nav").hidden = false;
  $("#sign-out").hidden = false;
}

function showSignIn(info) {
  state.session = null;
  state.csrf = null;
  state.me = null;
  $("#who").textContent = "";
  $("#nav").hidden = true;
  $("#sign-out").hidden = true;
  $("#banners").replaceChildren();
  const options = (info && info.sign_in) || {};
  const main = $("#main");
  const box = h("section", { class: "card signin" }, h("h1", {}, "Sign in"));
  if (options.development) {
    const list = h("datalist", { id: "subjects" }, (options.development.subjects || []).map((s) => h("option", { value: s })));
    const input = h("input", { id: "subject", name: "subject", list: "subjects", required: true, autocomplete: "off",
                               placeholder: "alice@example.com" });
    const form = h("form", { class: "inline", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        signedIn(await call("POST", "/console/session", { dev_subject: input.value.trim() }));
        say("");
        route();
      } catch (e) { say(e.message, "error"); }
    } }, h("label", { for: "subject" }, "Subject (development issuer)", input), list,
         h("button", { type: "submit" }, "Sign in"));
    box.append(h("p", { class: "muted" },
      "Embedded default: the development issuer stands in for your identity provider. Pick who you are."), form);
  }
  if (options.google) {
    const target = h("div", { class: "gis", id: "gis-button" });
    box.append(h("p", { class: "muted" }, "Sign in with your Google account."),
               h("button", { type: "button", onclick: () => googlePrompt(options.google) }, "Sign in"), target);
    loadGoogle(options.google, target);
  }
  if (!options.development && !options.google) {
    box.append(h("p", {}, "No sign-in is configured for the console (a Google issuer in the policy)."));
  }
  main.replaceChildren(box);
}

function loadGoogle(google, target) {
  const start = () => {
    window.google.accounts.id.initialize({
      client_id: google.client_id,
      callback: async (answer) => {
        try {
          signedIn(await call("POST", "/console/session", { id_token: answer.credential }));
          route();
        } catch (e) { say(e.message, "error"); }
      },
    });
    window.google.accounts.id.renderButton(target, { type: "standard", text: "signin_with" });
  };
  if (window.google && window.google.accounts) { start(); return; }
  const script = document.createElement("script");
  script.src = "https://accounts.google.com/gsi/client";
  script.async = true;
  script.addEventListener("load", start);
  document.head.append(script);
}

function googlePrompt() {
  if (window.google && window.google.accounts) window.google.accounts.id.prompt();
  else say("Google sign-in is still loading.", "error");
}

async function signOut() {
  try {
    showSignIn(await call("DELETE", "/console/session"));
    say("Signed out.", "ok");
  } catch (e) { say(e.message, "error"); }
}

// -- the break-glass banner (every view) ---------------------------------------------------------------
function banners(me) {
  const box = $("#banners");
  box.replaceChildren(...(me.break_glass_active || []).map((bg) => h("p", { class: "banner", role: "alert" },
    `Break-glass access ACTIVE: ${bg.requester} holds ${bg.entitlement} (${bg.service_account}) until `,
    when(bg.window_end), ` — ${bg.justification || "no justification"}`)));
}

// -- views ------------------------------------------------------------------------------------------------
const VIEWS = { requests: viewRequests, approvals: viewApprovals, credentials: viewCredentials };

// Views render asynchronously; only the latest navigation may replace the page (``seq``), and each
// completed render is counted on <main data-renders> (the browser tests wait on it).
function show(seq, ...nodes) {
  if (seq !== state.seq) return false;
  $("#main").replaceChildren(...nodes);
  return true;
}

async function route() {
  if (!state.session) return;
  const seq = ++state.seq;
  const hash = location.hash.replace(/^#\/?/, "") || "requests";
  const [name, id] = hash.split("/");
  const view = VIEWS[name] ? name : "requests";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  state.view = view;
  try {
    const me = await call("GET", "/v1/whoami");
    if (seq !== state.seq) return;
    state.me = me;
    banners(me);
    await VIEWS[view](id, seq);
    if (seq === state.seq) {
      const main = $("#main");
      main.dataset.renders = String(Number(main.dataset.renders || 0) + 1);
    }
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) say(e.message, "error");
  }
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
           h("tbody", {}, rows));
}

function lastComment(req, events) {
  const entries = (req.timeline || []).filter((t) => events.includes(t.event) && t.comment);
  const last = entries[entries.length - 1];
  return last ? h("span", { class: "comment" }, `${last.event === "deny" ? "Denied" : "Revoked"} by ${last.actor}: “${last.comment}”`) : null;
}

async function act(id, action, comment) {
  try {
    const body = comment ? { comment } : undefined;
    const req = await call("POST", `/v1/requests/${encodeURIComponent(id)}:${action}`, body);
    say(`Request ${id.slice(0, 8)} is ${req.state}.`, "ok");
  } catch (e) { say(e.message, "error"); }
  await route();
}

async function viewRequests(id, seq) {
  const me = state.me;
  const [mine, ents] = await Promise.all([call("GET", `/v1/requests${query({ role: "requester", page_size: 100 })}`),
                                          call("GET", "/v1/entitlements")]);
  const requestable = ents.entitlements.filter((e) => e.requires_approval);
  const parts = [h("h1", {}, "Requests")];
  if (requestable.length) {
    const select = h("select", { id: "entitlement", name: "entitlement" },
      requestable.map((e) => h("option", { value: e.name },
        `${e.name} — ${e.service_account}${e.approval.break_glass ? " (break-glass)" : ` (${e.approval.quorum} approver${e.approval.quorum > 1 ? "s" : ""})`}`)));
    const hint = h("p", { class: "hint" });
    const showHint = () => {
      const e = requestable.find((x) => x.name === select.value);
      const a = e.approval;
      hint.textContent = `Window at most ${span(a.max_window_s)}, ${a.max_uses} use(s); scopes ${e.scopes.join(", ") || "—"}` +
        (a.justification_pattern ? `; justification must match ${a.justification_pattern}` : "");
    };
    select.addEventListener("change", showHint);
    const justification = h("input", { id: "justification", name: "justification", class: "wide", required: true,
                                       placeholder: "TICKET-42: what and why" });
    const duration = h("input", { id: "duration", name: "duration", placeholder: "30m", size: 6 });
    const form = h("form", { class: "inline", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const req = await call("POST", "/v1/requests", { entitlement: select.value, justification: justification.value,
                                                         duration: duration.value || undefined });
        say(`Request ${req.id} filed: ${req.state}.`, "ok");
        await route();
      } catch (e) { say(e.message, "error"); }
    } }, h("label", { for: "entitlement" }, "Entitlement", select),
         h("label", { for: "justification" }, "Justification", justification),
         h("label", { for: "duration" }, "Duration", duration),
         h("button", { type: "submit" }, "Request access"));
    parts.push(h("section", { class: "card" }, h("h2", {}, "Ask for access"), form, hint));
    showHint();
  } else {
    parts.push(h("p", { class: "muted" }, "No entitlement that needs approval names you."));
  }
  const rows = mine.requests.map((r) => h("tr", { "data-request": r.id },
    h("td", {}, h("code", {}, r.id.slice(0, 8)), r.break_glass ? h("span", { class: "note" }, "break-glass") : null),
    h("td", {}, r.entitlement, h("span", { class: "note" }, r.service_account)),
    h("td", {}, badge(r.state), lastComment(r, ["deny", "revoke"])),
    h("td", {}, `${r.approvals.length} / ${r.quorum}`),
    h("td", {}, when(r.created_at)),
    h("td", {}, r.state === "ACTIVE" ? countdown(r.window_end, true) : when(r.window_end)),
    h("td", {}, r.state === "ACTIVE" ? h("code", {}, `vending token --service-account ${r.service_account} --access-request ${r.id}`) : "—"),
    h("td", { class: "actions" }, ["APPROVAL_AWAITED", "ACTIVE"].includes(r.state)
      ? h("button", { type: "button", class: "secondary", onclick: () => act(r.id, "withdraw") }, "Withdraw") : null)));
  parts.push(h("h2", {}, `My requests (${me.identity})`),
             table(["Request", "Entitlement", "State", "Approvals", "Filed", "Window", "Vend with", ""], rows,
                   "You have filed no request."));
  show(seq, ...parts);
}

async function viewApprovals(id, seq) {
  const me = state.me;
  const auditorView = me.auditor && location.hash.endsWith("/all");
  const parts = [h("h1", {}, "Approvals")];
  if (me.auditor) {
    parts.push(h("div", { class: "tabs" },
      h("a", { href: "#/approvals", "aria-current": auditorView ? null : "true" }, "Awaiting my decision"),
      h("a", { href: "#/approvals/all", "aria-current": auditorView ? "true" : null }, "All requests (auditor)")));
  }
  if (!auditorView && !me.approver_of.length && !me.kill_switch_approver) {
    parts.push(h("p", { class: "muted" }, "You approve no entitlement."));
    show(seq, ...parts);
    return;
  }
  const page = await call("GET", `/v1/requests${query({ role: auditorView ? "auditor" : "approver", page_size: 100 })}`);
  const rows = page.requests.map((r) => {
    const own = r.requester === me.identity;
    const comment = h("input", { "aria-label": `Comment on ${r.id.slice(0, 8)}`, placeholder: "comment", name: "comment" });
    const decided = r.approvals.some((a) => a.approver === me.identity);
    const actions = [];
    if (r.state === "APPROVAL_AWAITED" && !own && !auditorView) {
      actions.push(comment,
        h("button", { type: "button", disabled: decided, onclick: () => act(r.id, "approve", comment.value) }, "Approve"),
        h("button", { type: "button", class: "danger", onclick: () => act(r.id, "deny", comment.value) }, "Deny"));
    } else if (own) {
      actions.push(h("span", { class: "note" }, "your own request: others decide"));
    }
    if (["APPROVAL_AWAITED", "ACTIVE"].includes(r.state) && (!own || me.auditor)) {
      if (!actions.includes(comment)) actions.push(comment);
      actions.push(h("button", { type: "button", class: "quiet", onclick: () => act(r.id, "revoke", comment.value) }, "Revoke"));
    }
    return h("tr", { "data-request": r.id },
      h("td", {}, r.requester, own ? h("span", { class: "note" }, "(you)") : null),
      h("td", {}, r.entitlement, h("span", { class: "note" }, r.service_account)),
      h("td", {}, r.justification || "—"),
      h("td", { title: when(r.created_at) }, age(r.created_at)),
      h("td", {}, badge(r.state), decided ? h("span", { class: "note" }, "you approved") : null, lastComment(r, ["deny", "revoke"])),
      h("td", {}, `${r.approvals.length} / ${r.quorum}`),
      h("td", { class: "actions" }, h("div", { class: "decide" }, actions)));
  });
  parts.push(table(["Requester", "Entitlement", "Justification", "Age", "State", "Approvals", "Decide"], rows,
                   auditorView ? "No access request yet." : "Nothing awaits your decision."));
  show(seq, ...parts);
}

const ISSUANCE_STATES = ["", "issuing", "active", "failed", "expired", "unconfirmed", "signed", "withheld", "revoked"];
const LIVE = ["active", "unconfirmed", "withheld", "issuing"];

async function viewCredentials(id, seq) {
  if (id) return viewCredential(id, seq);
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const stateSel = h("select", { id: "f-state", name: "state" },
    ISSUANCE_STATES.map((s) => h("option", { value: s, selected: params.get("state") === s }, s || "any state")));
  const sa = h("input", { id: "f-sa", name: "service_account", placeholder: "service account email", value: params.get("service_account") || "" });
  const form = h("form", { class: "inline filters", onsubmit: (ev) => {
    ev.preventDefault();
    location.hash = `#/credentials?${new URLSearchParams(query({ state: stateSel.value, service_account: sa.value.trim() }).slice(1))}`;
  } }, h("label", { for: "f-state" }, "State", stateSel), h("label", { for: "f-sa" }, "Service account", sa),
       h("button", { type: "submit", class: "secondary" }, "Filter"));
  const page = await call("GET", `/v1/issuances${query({ state: params.get("state"), service_account: params.get("service_account"), page_size: 100 })}`);
  const rows = page.issuances.map((r) => h("tr", { "data-issuance": r.id },
    h("td", {}, h("a", { href: `#/credentials/${r.id}` }, r.id.slice(0, 8))),
    h("td", {}, r.kind),
    h("td", {}, r.principal),
    h("td", {}, r.service_account, r.request_id ? h("span", { class: "note" }, `request ${r.request_id.slice(0, 8)}`) : null),
    h("td", {}, badge(r.state), r.break_glass ? h("span", { class: "note" }, "break-glass") : null),
    h("td", {}, when(r.issued_at || r.created_at)),
    h("td", {}, when(r.expire_time)),
    h("td", {}, countdown(r.expire_time, LIVE.includes(r.state))),
    h("td", {}, h("code", { title: r.token_sha256 || "" }, r.token_sha256 ? `${r.token_sha256.slice(0, 12)}…` : "—"))));
  show(seq, h("h1", {}, "Credentials"),
    h("p", { class: "muted" }, state.me.auditor ? "Every issuance (you are an auditor)." : "Credentials issued to you."),
    form, table(["Issuance", "Kind", "Principal", "Service account", "State", "Issued", "Expires", "Time left", "SHA-256"],
                rows, "No issuance matches."));
}

async function viewCredential(id, seq) {
  const r = await call("GET", `/v1/issuances/${encodeURIComponent(id)}`);
  const fields = ["id", "kind", "state", "principal", "entitlement", "service_account", "delegates", "scopes", "request_id",
                  "break_glass", "reason", "created_at", "issued_at", "expire_time", "token_sha256", "key_id", "audience",
                  "revoked_by", "revoked_reason", "revoked_at", "failure"];
  const dl = h("dl", { class: "fields" });
  for (const f of fields) {
    if (r[f] === undefined || r[f] === null) continue;
    const value = Array.isArray(r[f]) ? r[f].join(", ") || "—" : f === "state" ? badge(r[f]) : String(r[f]);
    dl.append(h("dt", {}, f), h("dd", { class: f === "token_sha256" ? "mono" : "" }, value));
  }
  dl.append(h("dt", {}, "time left"), h("dd", {}, countdown(r.expire_time, LIVE.includes(r.state))));
  show(seq, h("h1", {}, `Credential ${id.slice(0, 8)}`),
    h("p", {}, h("a", { href: "#/credentials" }, "← all credentials")), h("section", { class: "card" }, dl));
}

// -- start ------------------------------------------------------------------------------------------------
async function start() {
  $("#sign-out").addEventListener("click", signOut);
  for (const a of document.querySelectorAll("#nav a")) {  // the current page's link renders it afresh
    a.addEventListener("click", (ev) => {
      if (a.getAttribute("href") === location.hash) { ev.preventDefault(); say(""); route(); }
    });
  }
  window.addEventListener("hashchange", () => { say(""); route(); });
  state.timer = setInterval(() => document.querySelectorAll(".countdown").forEach(tick), 1000);
  try {
    const info = await call("GET", "/console/session");
    if (info.signed_in) { signedIn(info); await route(); } else showSignIn(info);
  } catch (e) { say(e.message, "error"); }
}

document.addEventListener("DOMContentLoaded", start);
