// heads.js — the /heads dashboard: expert load per layer as bars, load
// balance (cv, entropy), the pieces each expert sees most, refreshed every
// few seconds from GET /heads (JSON), reset through POST /heads/reset.
//
// State for tests: #dash[data-state] is loading | done | error, and
// data-updates counts the answers drawn; every bar carries data-module,
// data-layer, data-expert, data-tokens and data-share.
import { api, apiKey, el, fmt, fmtCount, pieceNode, showModel } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const ui = {
  dash: $("dash"), modules: $("modules"), auto: $("auto"), refresh: $("refresh"),
  reset: $("reset"), status: $("status"), error: $("error"), keyRow: $("key-row"),
  key: $("api-key"), period: $("period"),
};
const PERIOD_S = 5;
const TOP = 5;
const MODULES = [
  { id: "encoder", title: "Encoder self-attention", what: "source pieces" },
  { id: "decoder_self", title: "Decoder self-attention", what: "produced target pieces" },
  { id: "decoder_cross", title: "Decoder cross-attention", what: "produced target pieces" },
];

let timer = 0, inFlight = false, again = false, updates = 0;

function duration(s) {
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${sec} s`;
  return `${sec} s`;
}

function renderSummary(h) {
  const since = new Date(h.since);
  const ok = !Number.isNaN(since.getTime());
  const today = ok && since.toDateString() === new Date().toDateString();
  $("s-window").replaceChildren(ok
    ? el("time", { dateTime: h.since, text: `since ${today ? since.toLocaleTimeString() : since.toLocaleString()}` })
    : h.since || "–",
  ok ? el("span", { class: "muted", text: ` (${duration((Date.now() - since.getTime()) / 1000)})` }) : "");
  $("s-sentences").textContent = fmtCount(h.sentences);
  $("s-src").textContent = fmtCount(h.source_tokens);
  $("s-tgt").textContent = fmtCount(h.target_tokens);
  $("s-experts").textContent = `${h.num_experts}, each token picks ${h.top_k}`;
}

function layerCard(mod, layer, E) {
  const maxShare = Math.max(1 / E, ...layer.experts.map((e) => e.share));
  const even = (1 / E / maxShare) * 100;
  const rows = layer.experts.map((ex) => {
    const bar = el("div", {
      class: "bar",
      "data-module": mod.id,
      "data-layer": String(layer.layer),
      "data-expert": String(ex.expert),
      "data-tokens": String(ex.tokens),
      "data-share": String(ex.share),
    });
    bar.style.width = `${(ex.share / maxShare) * 100}%`;
    const evenLine = el("div", { class: "even" });
    evenLine.style.left = `${even}%`;
    const pieces = el("div", { class: "top-pieces" },
      ...ex.top_pieces.map((p) => el("span", { class: "chip", title: `${p.count} times` },
        pieceNode(p.piece), el("span", { class: "n", text: String(p.count) }))));
    if (!ex.top_pieces.length) pieces.append(el("span", { class: "muted", text: "—" }));
    return el("li", {
      class: "ex-row",
      "aria-label": `expert ${ex.expert}: ${(ex.share * 100).toFixed(1)}% of the tokens, ${ex.tokens} routed, mean gate ${fmt(ex.mean_gate, 2)}`,
    },
    el("span", { class: "ex-id", text: `e${ex.expert}` }),
    el("div", { class: "track", "aria-hidden": "true" }, bar, evenLine),
    el("span", { class: "share", text: `${(ex.share * 100).toFixed(1)}%` }),
    el("span", { class: "gate muted", text: `gate ${fmt(ex.mean_gate, 2)}` }),
    pieces);
  });
  const balance = el("div", { class: "balance" },
    el("span", { class: "chip-stat", title: "coefficient of variation of the expert loads: 0 is perfectly balanced" },
      "cv ", el("strong", { text: fmt(layer.cv, 2) })),
    el("span", { class: "chip-stat", title: "entropy of the shares / log E: 1 is perfectly balanced" },
      "entropy ", el("strong", { text: fmt(layer.entropy, 2) })),
    el("span", { class: "muted", text: `${fmtCount(layer.tokens)} routed` }));
  return el("article", { class: "layer-card" },
    el("header", {}, el("h3", { text: `Layer ${layer.layer}` }), balance),
    el("ol", { class: "ex-list" }, ...rows));
}

function render(h) {
  renderSummary(h);
  const E = h.num_experts;
  const sections = MODULES.map((mod) => {
    const m = h.modules && h.modules[mod.id];
    const layers = m && Array.isArray(m.layers) ? m.layers : [];
    return el("section", { class: "module", "aria-labelledby": `m-${mod.id}` },
      el("h2", { id: `m-${mod.id}` }, mod.title,
        el("span", { class: "muted sub", text: ` · top ${mod.what}` })),
      el("div", { class: "layers" }, ...layers.map((l) => layerCard(mod, l, E))));
  });
  if (!h.sentences)
    sections.unshift(el("p", { class: "empty-note" },
      "Nothing translated in this window yet: ", el("a", { href: "/", text: "translate something" }),
      " and watch the bars fill."));
  ui.modules.replaceChildren(...sections);
}

async function update() {
  if (inFlight) {
    again = true;  // e.g. a reset while a refresh is on its way: ask once more after it
    return;
  }
  inFlight = true;
  clearTimeout(timer);
  const r = await api(`/heads?top=${TOP}`, { headers: { Accept: "application/json" } });
  inFlight = false;
  if (r.ok && r.json) {
    ui.error.hidden = true;
    render(r.json);
    ui.dash.dataset.sentences = String(r.json.sentences);
    ui.status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    ui.dash.dataset.state = "done";
  } else {
    showError(r.status, r.error);
    ui.dash.dataset.state = "error";
  }
  ui.dash.dataset.updates = String(++updates);
  if (again) {
    again = false;
    return update();
  }
  plan();
}

function plan() {
  clearTimeout(timer);
  if (ui.auto.checked && !document.hidden) timer = setTimeout(update, PERIOD_S * 1000);
}

function showError(status, message) {
  ui.error.replaceChildren(el("strong", { text: status ? `Error ${status}: ` : "Error: " }),
    message || "the server gave no reason");
  ui.error.hidden = false;
}

async function reset() {
  const headers = {};
  const key = ui.key.value;
  if (key) headers.Authorization = `Bearer ${key}`;
  ui.reset.disabled = true;
  const r = await api("/heads/reset", { method: "POST", headers });
  ui.reset.disabled = false;
  if (!r.ok) {
    if (r.status === 403 && ui.keyRow.hidden) {
      ui.keyRow.hidden = false;
      ui.key.focus();
    }
    showError(r.status, r.error);
    return;
  }
  ui.error.hidden = true;
  await update();
  ui.status.textContent = "Statistics reset";
}

function main() {
  ui.period.textContent = String(PERIOD_S);
  const key = apiKey.get();
  if (key) {
    ui.key.value = key;
    ui.keyRow.hidden = false;
  }
  ui.key.addEventListener("change", () => apiKey.set(ui.key.value));
  ui.refresh.addEventListener("click", update);
  ui.reset.addEventListener("click", reset);
  ui.auto.addEventListener("change", plan);
  document.addEventListener("visibilitychange", () => (document.hidden ? clearTimeout(timer) : update()));
  showModel($("model"));
  update();
}

main();
