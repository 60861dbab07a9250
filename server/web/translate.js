// translate.js — the page at /: translation as you type, and the routing
// trace of the result as heat maps (tokens × experts per module and layer).
//
// Everything goes through the public POST /translate (same limits, same
// keys as any client). State for tests and assistive technology lives in
// attributes: #translation[data-state] is empty | busy | done | error and
// data-seq counts finished answers; #heatmap[data-state] is empty | done |
// off, with data-cells the number of cells drawn.
import {
  api, apiKey, el, fmt, inkOn, pieceNode, pieceText, piecesToText, showModel, viridis,
  viridisGradient,
} from "/static/common.js";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("form"), source: $("source"), target: $("target"), text: $("source-text"),
  count: $("count"), clear: $("clear"), pane: $("out-pane"), out: $("translation"),
  error: $("error"), alts: $("alts"), altList: $("alt-list"), status: $("status"),
  copy: $("copy"), beam: $("beam"), alternatives: $("alternatives"), trace: $("trace"),
  keyRow: $("key-row"), key: $("api-key"), unitRow: $("unit-row"), unit: $("unit"),
  tie: $("tie"), heatmap: $("heatmap"), tip: $("tip"), scaleMax: $("scale-max"),
};

const DEBOUNCE_MS = 450;
const MODULES = [
  { id: "encoder", title: "Encoder self-attention", rows: "source_pieces", rowName: "source piece" },
  { id: "decoder_self", title: "Decoder self-attention", rows: "target_pieces", rowName: "target piece" },
  { id: "decoder_cross", title: "Decoder cross-attention", rows: "target_pieces", rowName: "target piece" },
];

const state = {
  seq: 0,          // requests started
  done: 0,         // answers shown
  ctl: null,       // AbortController of the request in flight
  timer: 0,
  trace: null,     // the last answer's trace (per line)
  unit: 0,
  lastBody: "",    // the last request sent: unchanged input sends nothing
};

// --- languages ------------------------------------------------------------------------------

function option(code, name) {
  return el("option", { value: code, text: name && name !== code ? name : code, title: code });
}

function fillTargets(langs, wanted) {
  const src = langs.find((l) => l.code === ui.source.value);
  const codes = src ? src.targets : [];
  ui.target.replaceChildren(...codes.map((c) => {
    const l = langs.find((x) => x.code === c);
    return option(c, l ? l.name : "");
  }));
  selectOrAdd(ui.target, wanted);
  ui.out.lang = ui.target.value || "";
}

// Selects value; one the server does not list is added (marked), so that a
// deep link with it gets the server's own error message.
function selectOrAdd(sel, value) {
  if (!value) return;
  if (![...sel.options].some((o) => o.value === value)) sel.append(option(value, `${value} (not offered)`));
  sel.value = value;
}

async function loadLanguages(params) {
  for (;;) {
    const r = await api("/languages");
    if (r.ok && Array.isArray(r.json)) {
      const langs = r.json;
      const sources = langs.filter((l) => Array.isArray(l.targets) && l.targets.length);
      ui.source.replaceChildren(...sources.map((l) => option(l.code, l.name)));
      selectOrAdd(ui.source, params.get("source"));
      fillTargets(langs, params.get("target"));
      ui.source.addEventListener("change", () => {
        fillTargets(langs, null);
        translateNow();
      });
      ui.error.hidden = true;
      ui.out.hidden = false;
      return;
    }
    // 503 while the model loads: say so, and ask again shortly
    showError(r.status, r.error);
    await new Promise((res) => setTimeout(res, 1000));
  }
}

// --- translating ----------------------------------------------------------------------------

function requestBody() {
  const body = {
    text: ui.text.value,
    source: ui.source.value,
    target: ui.target.value,
    beam_size: Number(ui.beam.value),
    alternatives: Number(ui.alternatives.value),
    trace: ui.trace.checked,
  };
  // non-numbers go as typed: the server's message then says what is wrong
  if (!Number.isInteger(body.beam_size)) body.beam_size = ui.beam.value;
  if (!Number.isInteger(body.alternatives)) body.alternatives = ui.alternatives.value;
  const key = ui.key.value;
  if (key) body.api_key = key;
  return body;
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(translateNow, DEBOUNCE_MS);
}

async function translateNow(force = false) {
  clearTimeout(state.timer);
  updateCount();
  if (!ui.text.value.trim()) {
    if (state.ctl) state.ctl.abort();
    state.lastBody = "";
    showEmpty();
    return;
  }
  const body = requestBody();
  const bodyText = JSON.stringify(body);
  if (!force && bodyText === state.lastBody) return;
  state.lastBody = bodyText;
  if (state.ctl) state.ctl.abort();
  const ctl = new AbortController();
  state.ctl = ctl;
  const seq = ++state.seq;
  setBusy(true);
  updateLink();
  let r;
  try {
    r = await api("/translate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: bodyText,
      signal: ctl.signal,
    });
  } catch (e) {
    return;  // aborted: a newer request took over
  }
  if (seq !== state.seq) return;
  state.ctl = null;
  setBusy(false);
  if (!r.ok) {
    state.lastBody = "";  // let the same input be retried
    if (r.status === 403) showKeyField();
    showError(r.status, r.error);
    ui.out.dataset.state = "error";
    state.done++;
    ui.out.dataset.seq = String(state.done);
    return;
  }
  showResult(r.json);
}

function setBusy(busy) {
  ui.pane.setAttribute("aria-busy", busy ? "true" : "false");
  ui.pane.classList.toggle("busy", busy);
  if (busy) {
    ui.out.dataset.state = "busy";
    ui.status.textContent = "Translating…";
  }
}

function showEmpty() {
  setBusy(false);
  ui.out.textContent = "";
  ui.out.dataset.state = "empty";
  ui.out.hidden = false;
  ui.error.hidden = true;
  ui.alts.hidden = true;
  ui.copy.disabled = true;
  ui.status.textContent = "";
  state.trace = null;
  renderHeatmap();
  updateLink();
}

function showError(status, message) {
  ui.error.replaceChildren(
    el("strong", { text: status ? `Error ${status}: ` : "Error: " }),
    message || "the server gave no reason");
  ui.error.hidden = false;
  ui.out.hidden = true;
  ui.alts.hidden = true;
  ui.copy.disabled = true;
  ui.status.textContent = "";
}

function showResult(j) {
  const text = typeof j.translatedText === "string" ? j.translatedText : "";
  ui.error.hidden = true;
  ui.out.hidden = false;
  ui.out.textContent = text;
  const alts = Array.isArray(j.alternatives) ? j.alternatives : [];
  ui.altList.replaceChildren(...alts.map((a) => el("li", { text: a })));
  ui.alts.hidden = alts.length === 0;
  ui.copy.disabled = !text;
  const ms = j.timing && Number.isFinite(j.timing.total_ms) ? `${Math.round(j.timing.total_ms)} ms` : "";
  ui.status.textContent = ms ? `Done in ${ms}` : "Done";
  const t = j.translations && j.translations[0];
  state.trace = t && Array.isArray(t.trace) ? t.trace : null;
  if (state.unit >= (state.trace ? state.trace.length : 0)) state.unit = 0;
  renderHeatmap();
  ui.out.dataset.state = "done";
  state.done++;
  ui.out.dataset.seq = String(state.done);
}

function showKeyField() {
  if (!ui.keyRow.hidden) return;
  ui.keyRow.hidden = false;
  ui.key.focus();
}

function updateCount() {
  const n = [...ui.text.value].length;
  ui.count.textContent = `${n.toLocaleString("en-US")} character${n === 1 ? "" : "s"}`;
}

// The address bar always holds a link to what is shown (short texts only).
function updateLink() {
  const p = new URLSearchParams();
  const q = ui.text.value;
  if (q && q.length <= 1500) {
    p.set("q", q);
    if (ui.source.value) p.set("source", ui.source.value);
    if (ui.target.value) p.set("target", ui.target.value);
    if (ui.beam.value !== "4") p.set("beam", ui.beam.value);
    if (ui.alternatives.value !== "0") p.set("alternatives", ui.alternatives.value);
  }
  const s = p.toString();
  history.replaceState(null, "", s ? `/?${s}` : "/");
}

async function copyTranslation() {
  const text = ui.out.textContent;
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // no clipboard API (plain http on another host): select and copy
    const range = document.createRange();
    range.selectNodeContents(ui.out);
    const sel = getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    ok = document.execCommand("copy");
  }
  ui.status.textContent = ok ? "Copied" : "Select the text and copy it (Ctrl+C)";
}

// --- heat maps ------------------------------------------------------------------------------

function tieLimit() {
  const v = Number(ui.tie.value);
  return Number.isFinite(v) && v >= 0 ? v : 0;
}

function numExperts(unit) {
  if (Number.isInteger(unit.num_experts)) return unit.num_experts;
  let m = 0;
  for (const mod of MODULES)
    for (const layer of unit[mod.id] || [])
      for (const pos of layer) for (const e of pos.experts) m = Math.max(m, e + 1);
  return m;
}

function renderHeatmap() {
  hideTip();
  const hm = ui.heatmap;
  const trace = state.trace;
  if (!trace || !trace.length || !trace[0].encoder) {
    ui.unitRow.hidden = true;
    hm.replaceChildren(el("p", {
      class: "placeholder muted",
      text: !ui.trace.checked ? "Head usage is off (tick “Head usage” to see it)."
        : trace && trace.length && !trace[0].encoder ? "This answer carries no routing trace."
          : "Translate something to see its routing.",
    }));
    hm.dataset.state = ui.trace.checked ? "empty" : "off";
    hm.dataset.cells = "0";
    return;
  }
  // one line of the text at a time
  ui.unitRow.hidden = trace.length < 2;
  ui.unit.replaceChildren(...trace.map((u, i) => {
    const s = piecesToText(u.source_pieces);
    return el("option", { value: String(i), text: `${i + 1}: ${s.length > 60 ? s.slice(0, 57) + "…" : s}` });
  }));
  ui.unit.value = String(state.unit);
  const unit = trace[state.unit];
  const E = numExperts(unit);
  const k = unit.encoder[0] && unit.encoder[0][0] ? unit.encoder[0][0].experts.length : 0;
  // Colours span 0 .. the largest gate of this line (gates are router
  // probabilities over all E experts, often far below 1)
  let gmax = 0;
  for (const mod of MODULES)
    for (const layer of unit[mod.id] || []) for (const pos of layer) for (const g of pos.gates) gmax = Math.max(gmax, g);
  gmax = gmax > 0 ? Math.ceil(gmax * 20) / 20 : 1;
  ui.scaleMax.textContent = fmt(gmax, 2);
  const limit = tieLimit();
  let cells = 0;
  const blocks = MODULES.map((mod) => {
    const layers = unit[mod.id] || [];
    const rows = unit[mod.rows] || [];
    const table = el("table", { class: "grid", role: "grid", "aria-label": `${mod.title}: ${rows.length} ${mod.rowName}s × ${layers.length} layers × ${E} experts` });
    const h1 = el("tr", {}, el("th", { class: "corner", scope: "col", rowSpan: 2, text: mod.rowName }));
    const h2 = el("tr");
    layers.forEach((_, l) => {
      h1.append(el("th", { class: l ? "layer-h lstart" : "layer-h", scope: "colgroup", colSpan: E, text: `layer ${l}` }));
      for (let e = 0; e < E; e++)
        h2.append(el("th", { class: l && !e ? "ex-h lstart" : "ex-h", scope: "col", text: String(e), title: `expert ${e}` }));
    });
    const tbody = el("tbody");
    rows.forEach((piece, p) => {
      const tr = el("tr");
      const near = layers.some((layer) => isTie(layer[p], limit));
      const th = el("th", { class: "piece", scope: "row" }, pieceNode(piece));
      if (near) th.append(el("span", { class: "tie-mark", text: "≈", title: "near tie in some layer" }));
      tr.append(th);
      layers.forEach((layer, l) => {
        const pos = layer[p];
        for (let e = 0; e < E; e++) {
          const rank = pos ? pos.experts.indexOf(e) : -1;
          const gate = rank >= 0 ? pos.gates[rank] : 0;
          const td = el("td", {
            class: l && !e ? "lstart" : "",
            role: "gridcell",
            tabIndex: -1,
            "data-cell": "",
            "data-module": mod.id,
            "data-layer": String(l),
            "data-pos": String(p),
            "data-expert": String(e),
            "data-gate": rank >= 0 ? String(gate) : "0",
            "data-rank": String(rank + 1),
          });
          if (rank >= 0) {
            td.classList.add("on");
            td.style.backgroundColor = viridis(gate / gmax);
            td.style.color = inkOn(gate / gmax);
            if (rank === pos.experts.length - 1 && isTie(pos, limit)) td.classList.add("tie");
          }
          td.setAttribute("aria-label", describe(mod, unit, l, p, e).join(", "));
          tr.append(td);
          cells++;
        }
      });
      tbody.append(tr);
    });
    table.append(el("thead", {}, h1, h2), tbody);
    const first = tbody.querySelector("td");
    if (first) first.tabIndex = 0;
    table.addEventListener("keydown", gridKeys);
    return el("figure", { class: "hm-block" },
      el("figcaption", {},
        el("strong", { text: mod.title }),
        el("span", { class: "muted sub", text: `${rows.length} ${mod.rowName}s · ${layers.length} layers × ${E} experts · top ${k}` })),
      el("div", { class: "hm-scroll" }, table));
  });
  hm.replaceChildren(...blocks);
  hm.dataset.state = "done";
  hm.dataset.cells = String(cells);
}

function isTie(pos, limit) {
  return !!pos && typeof pos.margin === "number" && pos.margin < limit;
}

function ordinal(n) {
  return n === 1 ? "1st" : n === 2 ? "2nd" : n === 3 ? "3rd" : `${n}th`;
}

// The lines of a cell's description (tooltip and screen readers alike).
function describe(mod, unit, l, p, e) {
  const pos = unit[mod.id][l][p];
  const piece = unit[mod.rows][p];
  const lines = [`${pieceText(piece)} (${mod.rowName} ${p + 1})`,
    `${mod.title}, layer ${l}, expert ${e}`];
  const rank = pos.experts.indexOf(e);
  if (rank >= 0) lines.push(`gate ${fmt(pos.gates[rank])}, picked ${ordinal(rank + 1)} of ${pos.experts.length}`);
  else lines.push(`not picked (picked: ${pos.experts.map((x, i) => `${x} at ${fmt(pos.gates[i], 2)}`).join(", ")})`);
  if (typeof pos.margin === "number")
    lines.push(`router margin ${fmt(pos.margin)}${pos.margin < tieLimit() ? " (near tie)" : ""}`);
  else lines.push("router margin: none (every expert picked)");
  return lines;
}

function cellInfo(td) {
  const mod = MODULES.find((m) => m.id === td.dataset.module);
  const unit = state.trace && state.trace[state.unit];
  if (!mod || !unit) return null;
  return describe(mod, unit, Number(td.dataset.layer), Number(td.dataset.pos), Number(td.dataset.expert));
}

function showTip(td) {
  const lines = cellInfo(td);
  if (!lines) return;
  ui.tip.replaceChildren(el("strong", { text: lines[0] }),
    ...lines.slice(1).map((t) => el("div", { text: t })));
  ui.tip.hidden = false;
  const r = td.getBoundingClientRect();
  const w = ui.tip.offsetWidth, h = ui.tip.offsetHeight;
  let x = r.left + r.width / 2 - w / 2;
  x = Math.max(6, Math.min(x, document.documentElement.clientWidth - w - 6));
  let y = r.top - h - 8;
  if (y < 6) y = r.bottom + 8;
  ui.tip.style.left = `${Math.round(x)}px`;
  ui.tip.style.top = `${Math.round(y)}px`;
}

function hideTip() {
  ui.tip.hidden = true;
}

// Arrow keys, Home/End, PageUp/PageDown within one table (one tab stop each).
function gridKeys(ev) {
  const td = ev.target.closest("td[data-cell]");
  if (!td) return;
  if (ev.key === "Escape") {
    hideTip();
    return;
  }
  const tr = td.parentElement, body = tr.parentElement;
  const cells = [...tr.querySelectorAll("td[data-cell]")];
  let row = [...body.rows].indexOf(tr), col = cells.indexOf(td);
  const nrows = body.rows.length, ncols = cells.length;
  switch (ev.key) {
    case "ArrowRight": col = Math.min(ncols - 1, col + 1); break;
    case "ArrowLeft": col = Math.max(0, col - 1); break;
    case "ArrowDown": row = Math.min(nrows - 1, row + 1); break;
    case "ArrowUp": row = Math.max(0, row - 1); break;
    case "Home": col = 0; if (ev.ctrlKey) row = 0; break;
    case "End": col = ncols - 1; if (ev.ctrlKey) row = nrows - 1; break;
    case "PageDown": row = Math.min(nrows - 1, row + 10); break;
    case "PageUp": row = Math.max(0, row - 10); break;
    default: return;
  }
  ev.preventDefault();
  const next = body.rows[row].querySelectorAll("td[data-cell]")[col];
  td.tabIndex = -1;
  next.tabIndex = 0;
  next.focus();
}

// --- wiring ---------------------------------------------------------------------------------

function wire() {
  ui.text.addEventListener("input", () => {
    updateCount();
    schedule();
  });
  ui.text.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      translateNow(true);
    }
  });
  ui.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    translateNow(true);
  });
  ui.target.addEventListener("change", () => {
    ui.out.lang = ui.target.value;
    translateNow();
  });
  for (const input of [ui.beam, ui.trace]) input.addEventListener("change", () => translateNow());
  ui.alternatives.addEventListener("change", () => {
    // n alternatives need a beam of n + 1: raise it rather than fail
    const a = Number(ui.alternatives.value), b = Number(ui.beam.value);
    if (Number.isInteger(a) && Number.isInteger(b) && a + 1 > b && a + 1 <= 16) ui.beam.value = String(a + 1);
    translateNow();
  });
  ui.key.addEventListener("change", () => {
    apiKey.set(ui.key.value);
    translateNow(true);
  });
  ui.clear.addEventListener("click", () => {
    ui.text.value = "";
    translateNow();
    ui.text.focus();
  });
  ui.copy.addEventListener("click", copyTranslation);
  ui.unit.addEventListener("change", () => {
    state.unit = Number(ui.unit.value) || 0;
    renderHeatmap();
  });
  ui.tie.addEventListener("input", () => renderHeatmap());
  ui.heatmap.addEventListener("mouseover", (ev) => {
    const td = ev.target.closest("td[data-cell]");
    if (td) showTip(td);
  });
  ui.heatmap.addEventListener("mouseleave", hideTip);
  ui.heatmap.addEventListener("focusin", (ev) => {
    const td = ev.target.closest("td[data-cell]");
    if (td) showTip(td);
  });
  ui.heatmap.addEventListener("focusout", hideTip);
  window.addEventListener("scroll", hideTip, { passive: true });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") hideTip();
  });
}

async function main() {
  const params = new URLSearchParams(location.search);
  $("legend-bar").style.backgroundImage = viridisGradient();
  const key = apiKey.get();
  if (key) {
    ui.key.value = key;
    ui.keyRow.hidden = false;
  }
  for (const [name, input] of [["beam", ui.beam], ["alternatives", ui.alternatives]])
    if (params.has(name)) input.value = params.get(name);
  if (params.has("q")) ui.text.value = params.get("q");
  updateCount();
  wire();
  showModel($("model"));
  await loadLanguages(params);
  document.documentElement.dataset.ready = "1";
  if (ui.text.value.trim()) translateNow(true);
}

main();
