// common.js — helpers shared by the translate page and the /heads dashboard.
// Plain ES module, no dependencies: the pages work offline.

// Viridis (matplotlib's, sampled at 0, 0.1, ..., 1): sequential, readable
// in grey and by the common forms of colour blindness.
const VIRIDIS = [
  [68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142], [33, 145, 140],
  [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38], [253, 231, 37],
];

// [r, g, b] of the palette at t in [0, 1].
export function viridisRGB(t) {
  t = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t));
  const f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return [0, 1, 2].map((c) => Math.round(a[c] + (b[c] - a[c]) * f));
}

export function viridis(t) {
  const [r, g, b] = viridisRGB(t);
  return `rgb(${r}, ${g}, ${b})`;
}

// Black or white, whichever reads better on the palette colour at t.
export function inkOn(t) {
  const [r, g, b] = viridisRGB(t).map((v) => {
    v /= 255;
    return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.2 ? "#000" : "#fff";
}

// A CSS gradient of the palette (the legend).
export function viridisGradient() {
  const stops = VIRIDIS.map((c, i) => `rgb(${c.join(", ")}) ${(i * 100) / (VIRIDIS.length - 1)}%`);
  return `linear-gradient(to right, ${stops.join(", ")})`;
}

// A SentencePiece piece as readable text: the word-start mark ▁ becomes a
// visible space sign.
export function pieceText(p) {
  return String(p).replaceAll("\u2581", "\u2423");
}

// The same as DOM nodes, the space signs dimmed.
export function pieceNode(p) {
  const frag = document.createDocumentFragment();
  const s = String(p);
  if (s === "</s>" || s === "<unk>" || s === "<s>" || s === "<pad>") {
    const sp = document.createElement("span");
    sp.className = "special";
    sp.textContent = s;
    frag.append(sp);
    return frag;
  }
  for (const part of s.split(/(\u2581)/)) {
    if (!part) continue;
    if (part === "\u2581") {
      const sp = document.createElement("span");
      sp.className = "sp";
      sp.textContent = "\u2423";
      frag.append(sp);
    } else {
      frag.append(part);
    }
  }
  return frag;
}

// Pieces back to plain text (for labels).
export function piecesToText(pieces) {
  return pieces.filter((p) => p !== "</s>").join("").replaceAll("\u2581", " ").trim();
}

// fetch() that always resolves: {ok, status, json, error}. error is the
// server's own message ({"error": ...}) when it sent one.
export async function api(path, opts = {}) {
  let r;
  try {
    r = await fetch(path, opts);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    return { ok: false, status: 0, json: null, error: `cannot reach the server (${e.message})` };
  }
  let json = null;
  try {
    json = await r.json();
  } catch (e) {
    if (e.name === "AbortError") throw e;
  }
  const error = r.ok ? null
    : (json && typeof json.error === "string" ? json.error : `HTTP ${r.status} ${r.statusText}`);
  return { ok: r.ok, status: r.status, json, error };
}

// The API key: kept for this browser tab only (sessionStorage), never in URLs.
const KEY_NAME = "moa-api-key";
export const apiKey = {
  get() {
    try { return sessionStorage.getItem(KEY_NAME) || ""; } catch { return ""; }
  },
  set(v) {
    try {
      if (v) sessionStorage.setItem(KEY_NAME, v);
      else sessionStorage.removeItem(KEY_NAME);
    } catch { /* storage off: the field still works for this page */ }
  },
};

// Model name in the header, from /ready.
export async function showModel(el) {
  const r = await api("/ready");
  if (r.ok && r.json && r.json.model) el.textContent = r.json.model;
}

export function fmt(n, digits = 3) {
  return Number.isFinite(n) ? n.toFixed(digits) : "–";
}

export function fmtCount(n) {
  return Number.isFinite(n) ? n.toLocaleString("en-US") : "–";
}

export function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role") e.setAttribute(k, v);
    else e[k] = v;
  }
  e.append(...children);
  return e;
}
