#!/usr/bin/python3
"""Browser tests of moa-server's pages: headless Chromium against a real server.

    /usr/bin/python3 tests/browser/run_browser.py --server build/release/moa-server
    /usr/bin/python3 tests/browser/run_browser.py -k heads          # only names containing "heads"
    /usr/bin/python3 tests/browser/run_browser.py --model weights/moa-en-de --shots docs

Starts moa-server on a free port with tests/fixtures/models/tiny-trained
(tests/e2e/run_e2e.py's Server), and Debian's chromium, driven through the
DevTools protocol over a pipe (--remote-debugging-pipe: no websocket, no
packages). Every wait is for a state the page exposes (data-state and
data-seq attributes), watched with a MutationObserver inside the page, never
a sleep. What the page shows is compared with what the server answers the
test itself for the same request. Screenshots go to --shots (default
build/browser/). Prints one line per test and `N passed, M failed`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import run_e2e as e2e  # noqa: E402  (Server, request, translate, check)

check = e2e.check
ARGS: argparse.Namespace
# Only a guard against a hung browser; no test depends on it.
PROTOCOL_GUARD_S = 120.0


# --- Chromium over the DevTools protocol -------------------------------------------------

class CDPError(RuntimeError):
    pass


class Browser:
    """A headless Chromium; messages are NUL-terminated JSON on fds 3 (in) and 4 (out)."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="moa-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:
            # dup first: dup2 onto the same number would keep close-on-exec
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--force-color-profile=srgb",
             "--lang=en-US", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, preexec_fn=fds,
            close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next_id = 0
        self.events: List[Dict[str, Any]] = []

    def _read_message(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0:
                raise CDPError("the browser stopped answering")
            r, _, _ = select.select([self._from_child], [], [], left)
            if r:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise CDPError("the browser exited:\n" + self.read_log()[-2000:])
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: Optional[Dict[str, Any]] = None,
             session: Optional[str] = None) -> Dict[str, Any]:
        self._next_id += 1
        mid = self._next_id
        m: Dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            m["sessionId"] = session
        os.write(self._to_child, json.dumps(m).encode() + b"\0")
        deadline = time.time() + PROTOCOL_GUARD_S
        while True:
            msg = self._read_message(deadline)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def read_log(self) -> str:
        with open(os.path.join(self.profile, "chromium.log"), errors="replace") as f:
            return f.read()

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# Resolves once the expression is truthy, re-checked on every DOM change.
WAIT_JS = """new Promise((resolve) => {
  const obs = new MutationObserver(() => test());
  function test() {
    let v = null;
    try { v = (%s); } catch (e) { v = null; }
    if (v) { obs.disconnect(); resolve(v); return true; }
    return false;
  }
  if (!test()) obs.observe(document, {subtree: true, childList: true, attributes: true,
                                      characterData: true});
})"""

# Sums layout shifts (not those right after user input) from the page's start.
CLS_JS = """window.__cls = 0;
window.__clsObs = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if (!e.hadRecentInput) window.__cls += e.value;
});
window.__clsObs.observe({type: "layout-shift", buffered: true});"""

KEYS = {"Enter": 13, "Tab": 9, "ArrowRight": 39, "ArrowLeft": 37, "ArrowDown": 40,
        "ArrowUp": 38, "Escape": 27, "End": 35, "Home": 36}


class Page:
    """One tab, with its own viewport; collects its console errors and exceptions."""

    def __init__(self, browser: Browser, width: int, height: int) -> None:
        self.b = browser
        tid = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.target = tid
        self.s = browser.send("Target.attachToTarget", {"targetId": tid, "flatten": True})["sessionId"]
        for dom in ("Page", "Runtime", "Log"):
            self.send(f"{dom}.enable")
        self.send("Emulation.setFocusEmulationEnabled", {"enabled": True})
        self.send("Emulation.setEmulatedMedia", {"features": [
            {"name": "prefers-reduced-motion", "value": "reduce"},
            {"name": "prefers-color-scheme", "value": "light"}]})
        self.send("Page.addScriptToEvaluateOnNewDocument", {"source": CLS_JS})
        self.resize(width, height)

    def send(self, method: str, params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return self.b.send(method, params, self.s)

    def resize(self, width: int, height: int) -> None:
        self.width = width
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500})

    def goto(self, url: str) -> None:
        self.b.events.clear()
        r = self.send("Page.navigate", {"url": url})
        if r.get("errorText"):
            raise CDPError(f"navigate {url}: {r['errorText']}")
        self.wait("document.readyState === 'complete'")

    def eval(self, expr: str, await_promise: bool = False) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": await_promise})
        if "exceptionDetails" in r:
            raise CDPError(f"page error in {expr[:80]!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, cond: str) -> Any:
        return self.eval(WAIT_JS % cond, await_promise=True)

    def key(self, key: str, ctrl: bool = False) -> None:
        code = KEYS[key]
        base = {"key": key, "code": key, "windowsVirtualKeyCode": code,
                "nativeVirtualKeyCode": code, "modifiers": 2 if ctrl else 0}
        self.send("Input.dispatchKeyEvent", dict(base, type="rawKeyDown"))
        self.send("Input.dispatchKeyEvent", dict(base, type="keyUp"))

    def type_text(self, text: str) -> None:
        self.send("Input.insertText", {"text": text})

    def screenshot(self, name: str, full: bool = True) -> str:
        """The whole page, or (full=False) what the viewport shows."""
        os.makedirs(ARGS.shots, exist_ok=True)
        path = os.path.join(ARGS.shots, name)
        params: Dict[str, Any] = {"format": "png"}
        if full:
            params.update(captureBeyondViewport=True, clip=self._page_clip())
        data = self.send("Page.captureScreenshot", params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def _page_clip(self) -> Dict[str, float]:
        h = self.eval("document.documentElement.scrollHeight")
        return {"x": 0, "y": 0, "width": self.width, "height": h, "scale": 1}

    def problems(self) -> List[str]:
        """Exceptions, console errors and security messages since the last goto()."""
        out = []
        for ev in self.b.events:
            if ev.get("sessionId") != self.s:
                continue
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:400])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + json.dumps(p.get("args", []))[:400])
            elif m == "Log.entryAdded":
                e = p.get("entry", {})
                # a refused request (403/400) is logged by the network source: expected
                if e.get("level") == "error" and e.get("source") != "network":
                    out.append(f"log ({e.get('source')}): {e.get('text', '')[:400]}")
        return out

    def close(self) -> None:
        self.b.send("Target.closeTarget", {"targetId": self.target})


# --- helpers ----------------------------------------------------------------------------

BROWSER: Optional[Browser] = None
SERVERS: Dict[str, e2e.Server] = {}


def browser() -> Browser:
    global BROWSER
    if BROWSER is None:
        BROWSER = Browser(ARGS.chromium)
    return BROWSER


def server() -> e2e.Server:
    if "main" not in SERVERS:
        SERVERS["main"] = e2e.Server("browser", "--cache-size", "0")
        e2e.SERVERS["browser"] = SERVERS["main"]
    return SERVERS["main"]


def keyed_server() -> e2e.Server:
    if "keys" not in SERVERS:
        keys = os.path.join(e2e.TMP, "browser-keys.txt")
        with open(keys, "w") as f:
            f.write("page-key-1\n")
        SERVERS["keys"] = e2e.Server("browser-keys", "--api-keys-file", keys)
        e2e.SERVERS["browser-keys"] = SERVERS["keys"]
    return SERVERS["keys"]


def url(srv: e2e.Server, path: str, **query: str) -> str:
    q = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return f"http://127.0.0.1:{srv.port}{path}" + (f"?{q}" if q else "")


def page_request(text: str) -> Dict[str, Any]:
    """The body the page sends with its default settings."""
    return {"text": text, "source": "en", "target": "de", "beam_size": 4, "alternatives": 0,
            "trace": True}


def piece_text(p: str) -> str:
    return p.replace("\u2581", "\u2423")


def wait_translation(pg: Page, after_seq: int) -> str:
    """Waits for the page's next finished answer; returns its state."""
    return pg.wait(f"(() => {{ const t = document.getElementById('translation');"
                   f" return Number(t.dataset.seq) > {after_seq} && t.dataset.state; }})()")


def expected_cells(trace_unit: Dict[str, Any], E: int) -> List[List[Any]]:
    cells = []
    for mod in ("encoder", "decoder_self", "decoder_cross"):
        for l, layer in enumerate(trace_unit[mod]):
            for p, pos in enumerate(layer):
                for e in range(E):
                    g = pos["gates"][pos["experts"].index(e)] if e in pos["experts"] else 0
                    cells.append([mod, l, p, e, g])
    return cells


PAGE_CELLS_JS = """[...document.querySelectorAll('#heatmap td[data-cell]')].map((td) =>
  [td.dataset.module, Number(td.dataset.layer), Number(td.dataset.pos),
   Number(td.dataset.expert), Number(td.dataset.gate)])"""


def check_heatmap(pg: Page, unit: Dict[str, Any], E: int) -> int:
    order = {"encoder": 0, "decoder_self": 1, "decoder_cross": 2}

    def key(c: List[Any]) -> Tuple[int, int, int, int]:
        return order.get(c[0], 9), c[1], c[2], c[3]
    want = sorted(expected_cells(unit, E), key=key)
    got = sorted(pg.eval(PAGE_CELLS_JS), key=key)  # the page draws rows of tokens
    n = int(pg.eval("document.getElementById('heatmap').dataset.cells"))
    check(len(got) == len(want) == n,
          f"heat map cells: page {len(got)} (data-cells {n}), trace {len(want)}")
    for g, w in zip(got, want):
        check(g[:4] == w[:4] and abs(g[4] - w[4]) < 1e-9, f"cell {g} != trace {w}")
    # row labels: the pieces, word-start mark shown as a visible space sign
    labels = pg.eval("[...document.querySelectorAll('#heatmap table')].map((t) =>"
                     " [...t.querySelectorAll('th.piece')].map((th) =>"
                     " th.firstChild ? [...th.childNodes].filter((n) =>"
                     " !(n.classList && n.classList.contains('tie-mark')))"
                     ".map((n) => n.textContent).join('') : ''))")
    check(len(labels) == 3, f"3 module tables, got {len(labels)}")
    for rows, key in zip(labels, ("source_pieces", "target_pieces", "target_pieces")):
        check(rows == [piece_text(p) for p in unit[key]], f"row labels {rows} vs {unit[key]}")
    # near ties: the last pick of every position whose margin is under the page's limit
    limit = float(pg.eval("document.getElementById('tie').value"))
    want_ties = sum(1 for mod in ("encoder", "decoder_self", "decoder_cross")
                    for layer in unit[mod] for pos in layer
                    if pos["margin"] is not None and pos["margin"] < limit)
    got_ties = pg.eval("document.querySelectorAll('#heatmap td.tie').length")
    check(got_ties == want_ties, f"near-tie marks: page {got_ties}, trace {want_ties}")
    return n


def heatmap_top(pg: Page) -> float:
    return pg.eval("document.getElementById('heatmap').getBoundingClientRect().top + scrollY")


# --- tests ------------------------------------------------------------------------------

TESTS: List[Tuple[str, Callable[[], None]]] = []


def test(fn: Callable[[], None]) -> Callable[[], None]:
    TESTS.append((fn.__name__, fn))
    return fn


@test
def test_deep_link_translation_and_heatmap():
    s = server()
    text = e2e.sentences(1, 2)[0]
    want = e2e.translate(s, page_request(text))
    E = json.loads(e2e.request(s, "GET", "/heads")[2])["num_experts"]
    pg = Page(browser(), 1280, 900)
    try:
        pg.goto(url(s, "/"))
        pg.wait("document.documentElement.dataset.ready === '1'")
        top_empty = heatmap_top(pg)
        pg.goto(url(s, "/", q=text, source="en", target="de"))
        state = wait_translation(pg, 0)
        shown = pg.eval("document.getElementById('translation').textContent")
        err = pg.eval("document.getElementById('error').textContent")
        check(state == "done", f"state {state}: {err}")
        check(shown == want["translatedText"], f"page shows {shown!r}, server {want['translatedText']!r}")
        unit = want["translations"][0]["trace"][0]
        n = check_heatmap(pg, unit, E)
        check(n == E * (len(unit["source_pieces"]) * len(unit["encoder"]) +
                        2 * len(unit["target_pieces"]) * len(unit["decoder_self"])), "cell count")
        check(heatmap_top(pg) == top_empty, f"the heat map moved while translating: {top_empty} -> {heatmap_top(pg)}")
        cls = pg.eval("window.__clsObs.takeRecords().forEach((e) => { if (!e.hadRecentInput)"
                      " window.__cls += e.value; }), window.__cls")
        check(cls < 0.05, f"layout shift {cls:.3f} while loading and translating")
        check(pg.eval("document.documentElement.scrollWidth") <= 1280, "no horizontal scroll")
        pg.screenshot("translate-1280.png")
        check(not pg.problems(), f"page problems: {pg.problems()}")
    finally:
        pg.close()


@test
def test_typing_ctrl_enter_and_keyboard_grid():
    s = server()
    lines = e2e.sentences(2, 5)
    text = "\n".join(lines)
    want = e2e.translate(s, page_request(text))
    E = json.loads(e2e.request(s, "GET", "/heads")[2])["num_experts"]
    pg = Page(browser(), 1280, 900)
    try:
        pg.goto(url(s, "/"))
        pg.wait("document.documentElement.dataset.ready === '1'")
        pg.eval("document.getElementById('source-text').focus()")
        pg.type_text(text)
        pg.key("Enter", ctrl=True)
        state = wait_translation(pg, 0)
        check(state == "done", f"state {state}")
        shown = pg.eval("document.getElementById('translation').textContent")
        check(shown == want["translatedText"], f"page {shown!r} != server {want['translatedText']!r}")
        check(pg.eval("new URLSearchParams(location.search).get('q')") == text,
              "the address bar links to the translation")
        # two lines: a line picker, and the second line's heat map on demand
        check(pg.eval("!document.getElementById('unit-row').hidden"), "line picker shown")
        check_heatmap(pg, want["translations"][0]["trace"][0], E)
        pg.eval("const u = document.getElementById('unit'); u.value = '1';"
                " u.dispatchEvent(new Event('change'))")
        check_heatmap(pg, want["translations"][0]["trace"][1], E)
        # keyboard only: Tab reaches the grid, arrows move, the details show
        pg.eval("document.getElementById('source-text').focus()")
        for _ in range(40):
            pg.key("Tab")
            if pg.eval("!!document.activeElement.closest('#heatmap td[data-cell]')"):
                break
        cell = pg.eval("Object.assign({}, document.activeElement.dataset)")
        check(cell and cell.get("module") == "encoder" and cell.get("pos") == "0" and
              cell.get("expert") == "0", f"Tab reached the first cell: {cell}")
        pg.key("ArrowRight")
        pg.key("ArrowDown")
        cell = pg.eval("Object.assign({}, document.activeElement.dataset)")
        check(cell.get("expert") == "1" and cell.get("pos") == "1", f"arrows moved: {cell}")
        tip = pg.eval("const t = document.getElementById('tip'); t.hidden ? '' : t.textContent")
        piece = want["translations"][0]["trace"][1]["source_pieces"][1]
        check(piece_text(piece) in tip and "expert 1" in tip, f"details of the focused cell: {tip!r}")
        pg.screenshot("translate-keyboard-1280.png", full=False)
        check(not pg.problems(), f"page problems: {pg.problems()}")
    finally:
        pg.close()


@test
def test_two_pairs_from_languages():
    # two models (en->de and a copy declared de->en): the page offers both sources, each
    # with its own targets, and a deep link to de->en is translated by that model
    if "pairs" not in SERVERS:
        de_en = e2e.model_copy(e2e.DE_EN_NAME, "de", "en")
        SERVERS["pairs"] = e2e.Server("browser-pairs", "--model", de_en, "--cache-size", "0")
    s = SERVERS["pairs"]
    text = e2e.sentences(1, 4)[0]
    want = e2e.translate(s, dict(page_request(text), source="de", target="en"))
    check(want["model"] == e2e.DE_EN_NAME, f"routed to {want['model']}")
    pg = Page(browser(), 1280, 900)
    try:
        pg.goto(url(s, "/", q=text, source="de", target="en"))
        state = wait_translation(pg, 0)
        err = pg.eval("document.getElementById('error').textContent")
        check(state == "done", f"state {state}: {err}")
        shown = pg.eval("document.getElementById('translation').textContent")
        check(shown == want["translatedText"], f"page shows {shown!r}, server {want['translatedText']!r}")
        opts = "(id) => [...document.getElementById(id).options].map((o) => o.value)"
        check(pg.eval(f"({opts})('source')") == ["en", "de"], "both sources offered")
        check(pg.eval(f"({opts})('target')") == ["en"], "de's targets")
        pg.eval("const s = document.getElementById('source'); s.value = 'en';"
                " s.dispatchEvent(new Event('change'))")
        check(pg.eval(f"({opts})('target')") == ["de"], "en's targets after the change")
        check(not pg.problems(), f"page problems: {pg.problems()}")
    finally:
        pg.close()


@test
def test_server_errors_shown():
    s = server()
    text = e2e.sentences(1, 7)[0]
    body = dict(page_request(text), target="xx")
    msg = e2e.translate(s, body, expect=400)["error"]
    pg = Page(browser(), 1280, 900)
    try:
        pg.goto(url(s, "/"))
        pg.wait("document.documentElement.dataset.ready === '1'")
        top = heatmap_top(pg)
        pg.goto(url(s, "/", q=text, source="en", target="xx"))
        state = wait_translation(pg, 0)
        err = pg.eval("document.getElementById('error').textContent")
        check(state == "error" and msg in err and "400" in err, f"{state}: {err!r} vs {msg!r}")
        check(heatmap_top(pg) == top, "an error does not move the page")
        check(not pg.problems(), f"page problems: {pg.problems()}")
    finally:
        pg.close()


@test
def test_api_key_field():
    s = keyed_server()
    text = e2e.sentences(1, 9)[0]
    want = e2e.translate(s, dict(page_request(text), api_key="page-key-1"))
    pg = Page(browser(), 1280, 900)
    try:
        pg.goto(url(s, "/", q=text))
        state = wait_translation(pg, 0)
        check(state == "error", f"no key: {state}")
        check(pg.eval("!document.getElementById('key-row').hidden"), "the key field appears on 403")
        check(pg.eval("document.activeElement.id") == "api-key", "and takes the focus")
        pg.type_text("page-key-1")
        pg.eval("document.getElementById('api-key').dispatchEvent(new Event('change'))")
        state = wait_translation(pg, 1)
        shown = pg.eval("document.getElementById('translation').textContent")
        check(state == "done" and shown == want["translatedText"], f"with the key: {state} {shown!r}")
        check("page-key-1" not in pg.eval("location.href"), "the key stays out of the address")
        check(not pg.problems(), f"page problems: {pg.problems()}")
    finally:
        pg.close()


@test
def test_narrow_360():
    s = server()
    text = e2e.sentences(1, 2)[0]
    want = e2e.translate(s, page_request(text))
    pg = Page(browser(), 360, 740)
    try:
        pg.goto(url(s, "/"))
        pg.wait("document.documentElement.dataset.ready === '1'")
        top = heatmap_top(pg)
        pg.goto(url(s, "/", q=text, source="en", target="de"))
        check(wait_translation(pg, 0) == "done", "translated")
        check(pg.eval("document.getElementById('translation').textContent") == want["translatedText"],
              "same translation at 360 px")
        width = pg.eval("document.documentElement.scrollWidth")
        check(width <= 360, f"the page is {width} px wide at 360 (the heat maps scroll inside)")
        check(heatmap_top(pg) == top, "no jump at 360 px")
        pg.screenshot("translate-360.png")
        check(not pg.problems(), f"page problems: {pg.problems()}")
    finally:
        pg.close()


@test
def test_heads_dashboard():
    s = server()
    e2e.translate(s, {"text": e2e.sentences(3, 11)})  # something to count
    pg = Page(browser(), 1280, 900)
    try:
        pg.goto(url(s, "/heads"))  # a browser's Accept: the dashboard, not JSON
        check(pg.eval("document.contentType") == "text/html", "HTML for a browser")
        pg.wait("document.getElementById('dash').dataset.state === 'done'")
        h = json.loads(e2e.request(s, "GET", "/heads")[2])
        bars = pg.eval("[...document.querySelectorAll('#modules .bar')].map((b) => [b.dataset.module,"
                       " Number(b.dataset.layer), Number(b.dataset.expert), Number(b.dataset.tokens),"
                       " b.getBoundingClientRect().width, b.parentElement.getBoundingClientRect().width])")
        want = [[m, l["layer"], e["expert"], e["tokens"]]
                for m in ("encoder", "decoder_self", "decoder_cross")
                for l in h["modules"][m]["layers"] for e in l["experts"]]
        check(len(bars) == len(want) and len(want) == h["num_experts"] * sum(
            len(h["modules"][m]["layers"]) for m in h["modules"]), f"{len(bars)} bars, {len(want)} experts")
        check([b[:4] for b in bars] == want, "bars = /heads counts")
        for m in h["modules"]:
            for l in h["modules"][m]["layers"]:
                top = max(e["tokens"] for e in l["experts"])
                for b in bars:
                    if b[0] == m and b[1] == l["layer"] and b[3] == top and top > 0:
                        check(b[4] > 0.3 * b[5], f"the busiest expert's bar is drawn: {b}")
        sentences = pg.eval("document.getElementById('s-sentences').textContent")
        check(sentences == f"{h['sentences']:,}", f"summary {sentences} vs {h['sentences']}")
        pg.screenshot("heads-1280.png")
        # refreshes by itself: a translation made elsewhere shows up without a reload
        before = h["sentences"]
        e2e.translate(s, {"text": e2e.sentences(1, 20)[0]})
        pg.wait(f"document.getElementById('dash').dataset.sentences === '{before + 1}'")
        pg.resize(360, 740)
        width = pg.eval("document.documentElement.scrollWidth")
        check(width <= 360, f"/heads is {width} px wide at 360")
        pg.screenshot("heads-360.png")
        # the reset button clears the server's counters
        pg.eval("document.getElementById('reset').click()")
        pg.wait("document.getElementById('dash').dataset.sentences === '0'")
        h = json.loads(e2e.request(s, "GET", "/heads")[2])
        check(h["sentences"] == 0, "reset through the page")
        check(not pg.problems(), f"page problems: {pg.problems()}")
    finally:
        pg.close()


# --- main -------------------------------------------------------------------------------

def main() -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=os.path.join(REPO, "build", "release", "moa-server"))
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                   help="the browser (Debian's chromium; make deps installs it)")
    p.add_argument("--model", default=e2e.MODEL, help="model directory the server loads")
    p.add_argument("--shots", default=os.path.join(REPO, "build", "browser"),
                   help="where the screenshots go")
    p.add_argument("--sanitizer", action="store_true",
                   help="an ASan/UBSan build of the server: its logs are checked for reports")
    p.add_argument("-k", default="", help="run only tests whose name contains this")
    ARGS = p.parse_args()
    if not os.path.exists(ARGS.chromium):
        print(f"no browser at {ARGS.chromium}: run make deps (installs chromium)")
        return 1
    e2e.ARGS = argparse.Namespace(server=ARGS.server, sanitizer=ARGS.sanitizer, k="", precision="f32")
    e2e.MODEL = os.path.abspath(ARGS.model)
    t_start = time.time()
    passed = failed = 0
    for name, fn in TESTS:
        if ARGS.k not in name:
            continue
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"ok   {name} ({time.time() - t0:.1f} s)", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc()
    if BROWSER is not None:
        BROWSER.close()
    for name, srv in SERVERS.items():
        rc = srv.stop()
        if rc != 0:
            failed += 1
            print(f"FAIL server {name} exited with {rc}:\n{srv.read_log()[-3000:]}")
        log = srv.read_log()
        if ARGS.sanitizer and ("ERROR: AddressSanitizer" in log or "runtime error:" in log or
                               "ERROR: LeakSanitizer" in log):
            failed += 1
            print(f"FAIL sanitizer report in {name}'s log:\n{log[-4000:]}")
    print(f"{passed} passed, {failed} failed ({time.time() - t_start:.1f} s; "
          f"screenshots in {os.path.relpath(ARGS.shots, REPO)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
