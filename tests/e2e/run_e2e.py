#!/usr/bin/python3
"""End-to-end tests of moa-server: real server processes on free ports.

    /usr/bin/python3 tests/e2e/run_e2e.py --server build/release/moa-server
    /usr/bin/python3 tests/e2e/run_e2e.py --server build/asan/moa-server --sanitizer
    /usr/bin/python3 tests/e2e/run_e2e.py --server ... -k heads      # only names containing "heads"

Each test starts (or shares) a moa-server on tests/fixtures/models/tiny-trained
with the settings it needs, talks HTTP to it with the standard library only,
and checks answers, logs and exit codes. Prints one line per test and ends with
`N passed, M failed`; exits 1 on any failure. See tests/e2e/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import concurrent.futures as cf
import http.client
import json
import os
import re
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections import Counter
from html.parser import HTMLParser
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(REPO, "tests", "fixtures", "models", "tiny-trained")
SAMPLE = os.path.join(REPO, "tests", "fixtures", "sample.en-de.tsv")
SCORE_TOL = 1e-3

ARGS: argparse.Namespace
TMP = tempfile.mkdtemp(prefix="moa-e2e-")
# The most any wait for a state of the server (ready, queued, logged, gone)
# may take: it ends a test whose server never gets there, and is never what
# a test measures. Generous on purpose: a loaded machine or a sanitizer
# build only makes the wait longer, never the test fail.
WAIT_LIMIT = 300.0


def sentences(n: int, offset: int = 0) -> List[str]:
    with open(SAMPLE, encoding="utf-8") as f:
        src = [line.split("\t")[0].strip() for line in f if line.strip()]
    src = [s for s in src if s]
    return [src[(offset + i) % len(src)] for i in range(n)]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """A moa-server process; stderr goes to a file that tests may read."""

    def __init__(self, name: str, *flags: str, env: Optional[Dict[str, str]] = None,
                 config: Optional[str] = None,
                 preexec: Optional[Callable[[], None]] = None,
                 model: str = "") -> None:
        self.name = name
        self.port = free_port()
        self.log_path = os.path.join(TMP, f"{name}.log")
        # timeout: effectively unbounded unless a test sets its own (a later
        # flag wins): no answer may depend on how fast this machine is
        # model: the tiny test model unless given (a further --model flag adds one)
        cmd = [ARGS.server, "--model", model or MODEL, "--port", str(self.port), "--listen",
               "127.0.0.1",
               "--compute-threads", "1", "--timeout", "3600", "--precision", ARGS.precision]
        if config:
            cmd += ["--config", config]
        else:
            cmd += ["--config", os.devnull]
        cmd += list(flags)
        e = dict(os.environ)
        e.update(env or {})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=e,
                                     preexec_fn=preexec)
        deadline = time.time() + WAIT_LIMIT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name}: server exited with {self.proc.returncode}:\n"
                                   + self.read_log())
            try:
                if request(self, "GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{name}: not ready in time:\n{self.read_log()}")

    def read_log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT_LIMIT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"{self.name}: did not exit after signal {sig}")
        self.log.close()
        return self.proc.returncode


def request(srv: Server, method: str, path: str, body: Any = None,
            headers: Optional[Dict[str, str]] = None, timeout: float = WAIT_LIMIT
            ) -> Tuple[int, Dict[str, str], bytes]:
    h = dict(headers or {})
    data: Optional[bytes] = None
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = json.dumps(body).encode("utf-8")
            h.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def translate(srv: Server, body: Any, headers: Optional[Dict[str, str]] = None,
              expect: int = 200) -> Dict[str, Any]:
    st, hd, data = request(srv, "POST", "/translate", body, headers)
    j = json.loads(data)
    if st != expect:
        raise AssertionError(f"expected {expect}, got {st}: {data[:300]!r}")
    assert "x-request-id" in hd, "no X-Request-Id"
    return j


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


# --- registry ---------------------------------------------------------------------------

TESTS: List[Tuple[str, Callable[[], None]]] = []
SERVERS: Dict[str, Server] = {}


def test(fn: Callable[[], None]) -> Callable[[], None]:
    TESTS.append((fn.__name__, fn))
    return fn


def main_server() -> Server:
    """Cache off, room for ≥ 64 concurrent sentences: the reference server."""
    if "main" not in SERVERS:
        SERVERS["main"] = Server("main", "--cache-size", "0", "--max-inflight", "128",
                                 "--max-batch-rows", "1024")
    return SERVERS["main"]


def limits_server() -> Server:
    if "limits" not in SERVERS:
        keys = os.path.join(TMP, "keys.txt")
        with open(keys, "w") as f:
            f.write("# test keys\nsecret-one\n")
        SERVERS["limits"] = Server(
            "limits", "--api-keys-file", keys, "--max-texts", "3", "--max-chars", "200",
            "--max-body", "4096", "--split-tokens", "12", "--cache-size", "100",
            "--log-format", "json", env={"MOA_MAX_TEXTS": "4"})
    return SERVERS["limits"]


KEY = {"Authorization": "Bearer secret-one"}


# --- the small endpoints ------------------------------------------------------------------

@test
def test_health_ready_languages():
    s = main_server()
    st, hd, b = request(s, "GET", "/health")
    check(st == 200 and json.loads(b)["status"] == "ok", f"/health {st} {b!r}")
    st, hd, b = request(s, "GET", "/ready")
    check(st == 200 and json.loads(b)["ready"] is True, f"/ready {st}")
    st, hd, b = request(s, "GET", "/languages")
    langs = json.loads(b)
    check(st == 200 and langs[0]["code"] == "en" and langs[0]["targets"] == ["de"], f"{langs}")
    check(any(l["code"] == "de" for l in langs), "target language listed")
    check(hd.get("x-request-id"), "request id on GET")


@test
def test_request_id_echo_and_generated():
    s = main_server()
    st, hd, _ = request(s, "GET", "/health", headers={"X-Request-Id": "abc-123"})
    check(hd["x-request-id"] == "abc-123", "client's id echoed")
    st, hd1, _ = request(s, "GET", "/health")
    st, hd2, _ = request(s, "GET", "/health")
    check(hd1["x-request-id"] != hd2["x-request-id"], "generated ids differ")
    st, hd, _ = request(s, "GET", "/health", headers={"X-Request-Id": "bad id with spaces"})
    check(hd["x-request-id"] != "bad id with spaces", "invalid client id replaced")


@test
def test_404_405_options():
    s = main_server()
    st, hd, b = request(s, "GET", "/nope")
    check(st == 404 and "error" in json.loads(b), f"404: {st}")
    st, hd, b = request(s, "GET", "/translate")
    check(st == 405 and "POST" in hd.get("allow", "") and "error" in json.loads(b), f"405: {st}")
    st, hd, b = request(s, "DELETE", "/heads")
    check(st == 405 and "error" in json.loads(b), f"405 on /heads: {st}")
    st, hd, b = request(s, "GET", "/heads/reset")
    check(st == 405, f"GET /heads/reset: {st}")
    st, hd, b = request(s, "OPTIONS", "/translate")
    check(st == 204 and "access-control-allow-origin" in hd, f"OPTIONS: {st}")


# --- /translate ------------------------------------------------------------------------------

def cli_translate(lines: List[str], beam: int, *extra: str) -> List[str]:
    cli = os.path.join(os.path.dirname(ARGS.server), "moa-translate")
    if not os.path.exists(cli):
        cli = os.path.join(REPO, "build", "release", "moa-translate")
    r = subprocess.run([cli, "--model", MODEL, "--beam", str(beam), "--precision", ARGS.precision]
                       + list(extra), input="\n".join(lines) + "\n",
                       capture_output=True, text=True, check=True)
    return r.stdout.split("\n")[:len(lines)]


@test
def test_translate_matches_cli():
    # the engine path: the CLI translates lines as they are, so the server's
    # sentence splitting and placeholder protection are off here
    s = main_server()
    src = sentences(12)
    for beam in (1, 4):
        want = cli_translate(src, beam)
        got = translate(s, {"text": src, "beam_size": beam, "split_sentences": False,
                            "protect_placeholders": False})
        check(got["translatedText"] == want, f"beam {beam}: server {got['translatedText']} "
              f"!= CLI {want}")
        check([t["text"] for t in got["translations"]] == want, "translations[].text")


@test
def test_translate_shapes_and_fields():
    s = main_server()
    j = translate(s, {"text": "Delete unused", "return_scores": True})
    check(isinstance(j["translatedText"], str), "string in, string out")
    check(j["model"] == "moa-en-de-tiny", f"model {j['model']}")
    check(set(j["timing"]) == {"queue_ms", "compute_ms", "total_ms"}, f"timing {j['timing']}")
    check(isinstance(j["translations"][0]["score"], float) and j["translations"][0]["score"] < 0,
          "score")
    check("detectedLanguage" not in j, "no detectedLanguage without auto")
    j = translate(s, {"q": ["Delete unused", "Search R Help"], "source": "auto", "target": "de"})
    check(isinstance(j["translatedText"], list) and len(j["translatedText"]) == 2, "array out")
    check(j["detectedLanguage"][0]["language"] == "en", f"{j.get('detectedLanguage')}")
    j = translate(s, {"text": "Delete unused", "source": "EN", "target": "de-DE",
                      "unknown_field": [1, 2]})
    check(j["translatedText"], "language tags and unknown fields accepted")


@test
def test_lines_whitespace_kept():
    s = main_server()
    text = "  Delete unused\n\nSearch R Help  \n\t\nOpen file"
    j = translate(s, {"text": text, "beam_size": 1})
    out = j["translatedText"]
    lines_in, lines_out = text.split("\n"), out.split("\n")
    check(len(lines_in) == len(lines_out), f"{len(lines_in)} lines in, {len(lines_out)} out")
    check(lines_out[1] == "" and lines_out[3] == "\t", f"blank lines kept: {lines_out}")
    check(lines_out[0].startswith("  ") and lines_out[2].endswith("  "), "whitespace kept")
    alone = [translate(s, {"text": t.strip(), "beam_size": 1})["translatedText"]
             for t in ("Delete unused", "Search R Help", "Open file")]
    check([lines_out[0].strip(), lines_out[2].strip(), lines_out[4]] == alone,
          "each line translated as its own unit")


@test
def test_long_line_split_and_joined():
    s = limits_server()  # split_tokens 12
    parts = ["Delete unused files from the current folder.", "Search the R Help pages now!",
             "Set the faintest magnitude for drawing asteroids?"]
    line = "  " + "  ".join(parts) + " "
    j = translate(s, {"text": line, "beam_size": 1}, headers=KEY)
    out = j["translatedText"]
    check("\n" not in out and out.startswith("  ") and out.endswith(" "), f"one line: {out!r}")
    alone = [translate(s, {"text": p, "beam_size": 1}, headers=KEY)["translatedText"] for p in parts]
    check(out == "  " + "  ".join(alone) + " ", f"{out!r} != pieces {alone}")


@test
def test_html_format():
    s = main_server()
    html = '<p class="x">Delete unused</p> &amp; <b>Search R Help</b><br/><script>var a = "Open file";</script>&#169;'
    j = translate(s, {"text": html, "format": "html", "beam_size": 1})
    out = j["translatedText"]
    tags = re.findall(r"<[^>]*>|&[#a-z0-9]+;", html)
    check(re.findall(r"<[^>]*>|&[#a-z0-9]+;", out) == tags, f"markup intact: {out}")
    check('<script>var a = "Open file";</script>' in out, "script body untouched")
    d = translate(s, {"text": "Delete unused", "beam_size": 1})["translatedText"]
    check(f'<p class="x">{d}</p>' in out, f"text between tags translated: {out}")


# --- sentences, placeholders, HTML (server/moa_split.h, moa_protect.h) ------------------------

ISSUE_TEXT = ["The file could not be opened.", "Check the permissions and try again.",
              "Do you want to continue?"]


@test
def test_sentences_each_a_unit_joined_with_source_whitespace():
    s = main_server()
    text = "  " + ISSUE_TEXT[0] + " " + ISSUE_TEXT[1] + "\t  " + ISSUE_TEXT[2]
    j = translate(s, {"text": text, "beam_size": 1, "trace": True})
    units = j["translations"][0]["trace"]
    check(len(units) == 3, f"3 sentences in, {len(units)} units")
    alone = [translate(s, {"text": t, "beam_size": 1})["translatedText"] for t in ISSUE_TEXT]
    want = "  " + alone[0] + " " + alone[1] + "\t  " + alone[2]
    check(j["translatedText"] == want, f"{j['translatedText']!r} != {want!r}")
    # a paragraph spreads over the compute workers like any batch: the same
    # answer as the three sentences sent as three texts
    k = translate(s, {"text": ISSUE_TEXT, "beam_size": 1})
    check(k["translatedText"] == alone, "sentence units = the sentences alone")


@test
def test_split_sentences_field_and_option():
    s = main_server()
    text = " ".join(ISSUE_TEXT)
    j = translate(s, {"text": text, "beam_size": 1, "trace": True, "split_sentences": False})
    check(len(j["translations"][0]["trace"]) == 1, "split_sentences false: one unit")
    check(j["translatedText"] == cli_translate([text], 1)[0], "the line as the engine sees it")
    check(translate(s, {"text": text, "split_sentences": "no"}, expect=400)["error"]
          .startswith("split_sentences"), "type checked")
    if "nosplit" not in SERVERS:
        SERVERS["nosplit"] = Server("nosplit", "--split-sentences", "false",
                                    env={"MOA_PROTECT_PLACEHOLDERS": "false"})
    n = SERVERS["nosplit"]
    j = translate(n, {"text": text, "beam_size": 1, "trace": True})
    check(len(j["translations"][0]["trace"]) == 1, "--split-sentences false: one unit")
    j = translate(n, {"text": text, "beam_size": 1, "trace": True, "split_sentences": True})
    check(len(j["translations"][0]["trace"]) == 3, "the field overrides the option")
    # MOA_PROTECT_PLACEHOLDERS=false: the model sees %qE itself
    j = translate(n, {"text": "Copy %qE", "beam_size": 1, "trace": True})
    src = "".join(j["translations"][0]["trace"][0]["source_pieces"])
    check("qE" in src, f"unprotected: {src}")
    j = translate(n, {"text": "Copy %qE", "beam_size": 1, "trace": True,
                      "protect_placeholders": True})
    src = "".join(j["translations"][0]["trace"][0]["source_pieces"])
    check("qE" not in src, f"the field overrides the variable: {src}")


def placeholders(text: str) -> Counter:
    sys.path.insert(0, os.path.join(REPO, "train"))
    from evaluate import extract_placeholders  # train/evaluate.py's definition
    return Counter(extract_placeholders(text))


PH_TEXTS = [
    "Delete %s files from %d folders",
    "%1$s of %2$s copied",
    "Width: %-10.2f mm, name %(name)s",
    "Found %1 results in %2",
    "Hello {0}, you have {count} new {1}",
    "Value {0,number} and ${HOME} and {{user}}",
    "Click <b>Save</b> to keep <i>your</i> changes &amp; exit",
    "<a href=\"x.html\">Open</a> the file %s now",
    "Error: %s: %s (%d)",
    "100%% done with %s",
    "Copy sent emails into <application>KMail</application>'s <resource>%1</resource> folder",
    "Fingerprint and babbleprint for the %s key are: %s %s",
]


@test
def test_placeholders_kept():
    s = main_server()
    for beam in (1, 4):
        j = translate(s, {"text": PH_TEXTS, "beam_size": beam})
        for src, t in zip(PH_TEXTS, j["translations"]):
            got = placeholders(t["text"])
            check(got == placeholders(src), f"beam {beam}: {src!r} -> {t['text']!r}")
            w = t.get("warnings", [])
            check(isinstance(w, list) and all(isinstance(x, str) and x for x in w), f"warnings {w}")
    # the sentinels are what the model sees
    j = translate(s, {"text": "Copy <b>%02d</b> of %qE", "beam_size": 1, "trace": True})
    src = "".join(j["translations"][0]["trace"][0]["source_pieces"])
    check("%qE" not in src and "<b>" not in src, f"protected: {src}")
    # accelerators: one marker, on a letter, whatever the model did
    for text, mark in (("&Save the file", "&"), ("Open _recent file", "_"), ("Sa&ve as", "&")):
        out = translate(s, {"text": text, "beam_size": 1})["translatedText"]
        check(out.count(mark) == 1, f"{text!r} -> {out!r}: one {mark}")
        i = out.index(mark)
        check(i + 1 < len(out) and out[i + 1].isalpha(), f"{text!r} -> {out!r}: on a letter")
    # off: the text goes to the model as it is
    j = translate(s, {"text": "Copy %qE", "beam_size": 1, "trace": True,
                      "protect_placeholders": False})
    check("%qE" in "".join(j["translations"][0]["trace"][0]["source_pieces"]).replace("▁", ""),
          "protect_placeholders false")


@test
def test_protection_settings_in_cache_key():
    s = limits_server()  # cache on
    def hits() -> float:
        return parse_prometheus(request(s, "GET", "/metrics")[2].decode())["moa_cache_hits_total"][""]
    body = {"text": "Keep %s safe", "beam_size": 1, "protect_placeholders": False}
    translate(s, body, headers=KEY)
    h0 = hits()
    translate(s, dict(body, protect_placeholders=True), headers=KEY)
    check(hits() == h0, "protection on: not the unprotected entry")
    translate(s, dict(body, protect_placeholders=True), headers=KEY)
    check(hits() == h0 + 1, "same settings: a hit")
    translate(s, dict(body, split_sentences=False), headers=KEY)
    check(hits() == h0 + 1, "splitting off: another key")


class Markup(HTMLParser):
    """Tags, entities and raw bodies of an HTML text, checking nesting."""

    VOID = {"br", "img", "hr", "input", "meta", "link", "wbr", "source", "area", "col", "base"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: List[str] = []
        self.errors: List[str] = []
        self.tags: List[Tuple[str, str]] = []
        self.attrs: List[Tuple[str, Tuple[Tuple[str, Optional[str]], ...]]] = []
        self.refs: List[str] = []
        self.comments: List[str] = []
        self.raw: List[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(("start", tag))
        self.attrs.append((tag, tuple(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(("empty", tag))
        self.attrs.append((tag, tuple(attrs)))

    def handle_endtag(self, tag):
        self.tags.append(("end", tag))
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_entityref(self, name):
        self.refs.append(f"&{name};")

    def handle_charref(self, name):
        self.refs.append(f"&#{name};")

    def handle_comment(self, data):
        self.comments.append(data)

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("script", "style", "pre", "code"):
            self.raw.append(data)


def parse_html(text: str) -> Markup:
    m = Markup()
    m.feed(text)
    m.close()
    return m


@test
def test_html_well_formed_blocks():
    s = main_server()
    doc = ("<h1 title=\"Main page\">Open file</h1>\n"
           "<p>The file could not be opened. Click <b>Save</b> to keep <em>your</em> changes "
           "&amp; exit.<br>Check the <a href=\"perm.html\" title=\"File permissions\">permissions</a>"
           " and try again.</p>\n"
           "<ul><li>Delete unused <img src=\"i.png\" alt=\"Delete icon\"> files</li>"
           "<li>Search <kbd>Ctrl</kbd>+<kbd>F</kbd> &#8217;help&#8217;</li></ul>\n"
           "<!-- Open file: keep this -->\n"
           "<pre>Open file\n  Save file</pre><p>Run <code>make  test</code> now</p>\n"
           "<script>var a = \"Open file\";</script><style>p { color: red }</style>")
    want = parse_html(doc)
    check(not want.errors and not want.stack, f"the test document itself: {want.errors}")
    for beam in (1, 4):
        out = translate(s, {"text": doc, "format": "html", "beam_size": beam})["translatedText"]
        got = parse_html(out)
        check(not got.errors and not got.stack, f"beam {beam}: not well-formed: {got.errors} "
              f"{got.stack}: {out}")
        check(Counter(got.tags) == Counter(want.tags), f"tags: {out}")
        check(Counter(got.refs) == Counter(want.refs), f"entities: {out}")
        check(got.comments == want.comments, "comments untouched")
        check(got.raw == want.raw, f"script/style/pre/code untouched: {got.raw}")
        # attributes: only title and alt change
        wa = {(t, k, v) for t, at in want.attrs for k, v in at if k not in ("title", "alt")}
        ga = {(t, k, v) for t, at in got.attrs for k, v in at if k not in ("title", "alt")}
        check(wa == ga, f"other attributes untouched: {wa ^ ga}")
    # a title is translated like the same words on their own
    out = translate(s, {"text": doc, "format": "html", "beam_size": 1})["translatedText"]
    got = parse_html(out)
    title = dict(got.attrs[0][1])["title"]
    alone = translate(s, {"text": "Main page", "beam_size": 1})["translatedText"]
    check(title == alone, f"title {title!r} != {alone!r}")
    # a block's sentences are units with their inline tags inside: the
    # paragraph's first sentence is one unit, not cut at <b>
    j = translate(s, {"text": "<p>Click <b>Save</b> to keep <i>your</i> changes.</p>",
                      "format": "html", "beam_size": 1, "trace": True})
    check(len(j["translations"][0]["trace"]) == 1, "one sentence, one unit")
    pieces = "".join(j["translations"][0]["trace"][0]["source_pieces"][:-1]).replace("▁", " ")
    check("<" not in pieces and "Save" in pieces, f"the model sees the plain sentence: {pieces}")


@test
def test_libretranslate_form():
    s = main_server()
    body = urllib.parse.urlencode({"q": "Delete unused", "source": "en", "target": "de",
                                   "format": "text", "api_key": "", "alternatives": "2"})
    st, hd, b = request(s, "POST", "/translate", body,
                        {"Content-Type": "application/x-www-form-urlencoded"})
    j = json.loads(b)
    check(st == 200, f"{st} {b!r}")
    check(isinstance(j["translatedText"], str), "translatedText string")
    check(isinstance(j["alternatives"], list) and len(j["alternatives"]) == 2, f"{j}")
    check(j["translations"][0]["alternatives"] == j["alternatives"], "same alternatives")
    body = urllib.parse.urlencode({"q": "Delete unused", "source": "auto", "target": "de"})
    st, hd, b = request(s, "POST", "/translate", body,
                        {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    j = json.loads(b)
    check(st == 200 and j["detectedLanguage"]["language"] == "en", f"auto: {j}")


@test
def test_libretranslate_json_alternatives_array():
    s = main_server()
    j = translate(s, {"q": ["Delete unused", "Search R Help"], "source": "en", "target": "de",
                      "alternatives": 1})
    check(len(j["alternatives"]) == 2 and all(len(a) == 1 for a in j["alternatives"]), f"{j}")


@test
def test_sampling_seeded_reproducible():
    s = main_server()
    body = {"text": ["Delete unused", "Search R Help"], "sampling_topk": 20, "seed": 42}
    a, b = translate(s, body), translate(s, body)
    check(a["translatedText"] == b["translatedText"] and a["seed"] == 42, "same seed, same text")
    j = translate(s, {"text": "Delete unused", "sampling_topp": 0.9})
    check(isinstance(j["seed"], (int, float)), "random seed reported")


@test
def test_topk1_beam16_booked_as_16_rows():
    """sampling_topk 1 is greedy, not sampling (spec §6): with beam_size 16 the
    engine runs a 16-row beam search, and the scheduler must book the 16 rows
    it reserves. After each step a worker logs an error when its session holds
    more rows than it booked; the request's first step always comes before
    its answer, so the line would be in the log by now."""
    s = main_server()
    text = "Delete unused files\nSearch R Help\nOpen the file manager"
    a = translate(s, {"text": text, "sampling_topk": 1, "beam_size": 16})
    b = translate(s, {"text": text, "beam_size": 16})
    check(a["translatedText"] == b["translatedText"], f"{a} vs {b}")
    check("seed" not in a, "top-k 1 does not sample: no seed")
    g = translate(s, {"text": text, "sampling_topk": 1})
    check(g["translatedText"] == translate(s, {"text": text, "beam_size": 1})["translatedText"],
          "top-k 1 alone is greedy")
    bad = [l for l in s.read_log().splitlines() if "booked" in l]
    check(not bad, f"scheduler and engine disagree on rows: {bad[:3]}")


@test
def test_traces():
    s = main_server()
    j = translate(s, {"text": "Delete unused files\nSearch R Help", "trace": True, "beam_size": 2})
    tr = j["translations"][0]["trace"]
    check(len(tr) == 2, f"one trace per line, got {len(tr)}")
    for seg in tr:
        n_src, n_tgt = len(seg["source_pieces"]), len(seg["target_pieces"])
        check(seg["source_pieces"][-1] == "</s>" and seg["target_pieces"][-1] == "</s>", "eos")
        check(len(seg["encoder"]) == 2 and all(len(l) == n_src for l in seg["encoder"]), "enc")
        for mod in ("decoder_self", "decoder_cross"):
            check(len(seg[mod]) == 2 and all(len(l) == n_tgt for l in seg[mod]), mod)
        e = seg["encoder"][0][0]
        check(len(e["experts"]) == 2 and len(e["gates"]) == 2 and "margin" in e, f"{e}")
        check(all(0 <= x < 4 for l in seg["decoder_cross"] for p in l for x in p["experts"]),
              "expert ids")


# --- /heads and /metrics ----------------------------------------------------------------------

@test
def test_heads_counts_add_up():
    s = main_server()
    st, _, b = request(s, "POST", "/heads/reset")
    check(st == 200, f"reset {st}")
    h = json.loads(request(s, "GET", "/heads")[2])
    check(h["source_tokens"] == 0 and h["sentences"] == 0, "reset zeroes")
    n_src = n_tgt = n_units = 0
    for beam in (1, 4):
        j = translate(s, {"text": sentences(6, 3 * beam), "trace": True, "beam_size": beam})
        for t in j["translations"]:
            n_units += len(t["trace"])
            for seg in t["trace"]:
                n_src += len(seg["source_pieces"])
                n_tgt += len(seg["target_pieces"])
    # A request that asks for no trace is counted all the same: the same
    # texts without a trace, then with one (options no other test uses, so
    # the first is computed, not cached; a traced one never is) count twice.
    opts = {"beam_size": 3, "length_penalty": 0.9}
    plain = translate(s, dict(opts, text=sentences(2, 40)))
    check(all("trace" not in t for t in plain["translations"]), "no trace unasked")
    j = translate(s, dict(opts, text=sentences(2, 40), trace=True))
    for t in j["translations"]:
        n_units += 2 * len(t["trace"])
        for seg in t["trace"]:
            n_src += 2 * len(seg["source_pieces"])
            n_tgt += 2 * len(seg["target_pieces"])
    h = json.loads(request(s, "GET", "/heads")[2])
    check(h["sentences"] == n_units, f"sentences counted: {h['sentences']} of {n_units}")
    k = h["top_k"]
    check(h["source_tokens"] == n_src and h["target_tokens"] == n_tgt,
          f"heads {h['source_tokens']}/{h['target_tokens']} vs responses {n_src}/{n_tgt}")
    for mod, toks in (("encoder", n_src), ("decoder_self", n_tgt), ("decoder_cross", n_tgt)):
        for layer in h["modules"][mod]["layers"]:
            total = sum(e["tokens"] for e in layer["experts"])
            check(total == toks * k and layer["tokens"] == toks * k,
                  f"{mod} layer {layer['layer']}: {total} != {toks} x {k}")
            check(abs(sum(e["share"] for e in layer["experts"]) - 1) < 1e-9, "shares sum to 1")
            check(0 <= layer["entropy"] <= 1 and layer["cv"] >= 0, "cv/entropy")
            for e in layer["experts"]:
                check(0 < e["mean_gate"] <= 1 or e["tokens"] == 0, "mean gate")
                check(sum(p["count"] for p in e["top_pieces"]) <= e["tokens"], "pieces")
    st, hd, b = request(s, "GET", "/heads?format=text")
    check(st == 200 and hd["content-type"].startswith("text/plain") and b"encoder layer 0" in b,
          "text format")
    st, hd, b = request(s, "GET", "/heads", headers={"Accept": "text/plain"})
    check(hd["content-type"].startswith("text/plain"), "Accept: text/plain")
    st, hd, b = request(s, "GET", "/heads?format=xml")
    check(st == 400, "bad format")
    # top=0 lists no pieces (it used to write before the list: heap corruption)
    for fmt in ("json", "text", "html"):
        st, hd, b = request(s, "GET", f"/heads?top=0&format={fmt}")
        check(st == 200, f"top=0 format={fmt}: {st}")
    h0 = json.loads(request(s, "GET", "/heads?top=0")[2])
    check(all(e["top_pieces"] == [] for m in h0["modules"].values() for l in m["layers"]
              for e in l["experts"]), "top=0: no pieces")
    check(h0["target_tokens"] == n_tgt, "top=0: same counts")
    st, _, b = request(s, "GET", "/heads?top=1")
    check(st == 200 and all(len(e["top_pieces"]) <= 1 for m in json.loads(b)["modules"].values()
                            for l in m["layers"] for e in l["experts"]), "top=1")


PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
                       r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?\})? '
                       r'(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')


def parse_prometheus(text: str) -> Dict[str, Dict[str, float]]:
    """Checks the exposition format; returns {name: {labels: value}}."""
    types: Dict[str, str] = {}
    out: Dict[str, Dict[str, float]] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            check(typ in ("counter", "gauge", "histogram", "summary", "untyped"), line)
            check(name not in types, f"TYPE twice: {name}")
            types[name] = typ
            continue
        if line.startswith("#"):
            check(line.startswith("# HELP "), f"comment: {line}")
            continue
        m = PROM_LINE.match(line)
        check(m is not None, f"not a sample line: {line!r}")
        name, labels, value = m.group(1), m.group(3) or "", float(m.group(4))
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        check(name in types or base in types, f"sample before its TYPE: {name}")
        out.setdefault(name, {})[labels] = value
    for name, typ in types.items():
        if typ == "histogram":
            buckets = out.get(name + "_bucket", {})
            vals = [v for _, v in sorted(((float(re.search(r'le="([^"]+)"', l).group(1)
                                                  .replace("+Inf", "inf")), v)
                                          for l, v in buckets.items()))]
            check(vals == sorted(vals), f"{name}: buckets not cumulative")
            check(vals[-1] == out[name + "_count"][""], f"{name}: +Inf != count")
    return out


@test
def test_metrics_prometheus():
    s = main_server()
    translate(s, {"text": "Delete unused"})
    st, hd, b = request(s, "GET", "/metrics")
    check(st == 200 and hd["content-type"].startswith("text/plain"), f"{st}")
    m = parse_prometheus(b.decode())
    for name in ("moa_http_requests_total", "moa_request_duration_seconds_bucket",
                 "moa_queue_duration_seconds_count", "moa_compute_duration_seconds_sum",
                 "moa_sentences_translated_total", "moa_target_tokens_total",
                 "moa_queue_sentences", "moa_batch_rows_bucket", "moa_live_sentences",
                 "moa_expert_tokens_total", "moa_cache_hits_total", "moa_cache_misses_total"):
        check(name in m, f"missing {name}")
    check(m["moa_http_requests_total"]['endpoint="/translate",status="200"'] >= 1, "counted")
    heap = m.get("moa_heap_bytes", {})
    check(set(heap) == {'state="in_use"', 'state="free"'} and min(heap.values()) >= 0,
          f"moa_heap_bytes {heap}")
    if not ARGS.sanitizer:  # (ASan's allocator is not glibc's: mallinfo2 sees little)
        # the packed weights alone are on the heap
        check(heap['state="in_use"'] > 1e6, f"heap in use {heap}")
    # the sessions' share: arenas from the start, blocks kept for reuse after
    # a translation (published by the worker before the answer goes out)
    sess = m.get("moa_session_bytes", {})
    check(set(sess) == {'part="arena"', 'part="blocks_in_use"', 'part="blocks_free"'},
          f"moa_session_bytes {sess}")
    check(sess['part="arena"'] > 0 and sess['part="blocks_free"'] > 0, f"session bytes {sess}")
    # once idle after work the scheduler hands freed memory back (malloc_trim):
    # a text no cache has seen goes through it (digits would be a protected
    # placeholder, the same for the cache: a word of random letters), and
    # the counter moves after
    trims = m["moa_heap_trims_total"][""]
    word = "".join(random.choice("bcdfghklmnprstvz") for _ in range(12))
    translate(s, {"text": f"Remove the file {word}"})
    check(wait_for(lambda: metrics(s)["moa_heap_trims_total"][""] > trims),
          f"moa_heap_trims_total still {trims} after a translation")
    # a request of 1000 units hands its memory back as it ends (the same line
    # 1000 times: the cache answers all but the first)
    before = metrics(s)["moa_heap_request_trims_total"][""]
    j = translate(s, {"text": "\n".join(["Open the file"] * 1000)})
    check(len(j["translatedText"].split("\n")) == 1000, "1000 lines back")
    check(wait_for(lambda: metrics(s)["moa_heap_request_trims_total"][""] > before),
          f"moa_heap_request_trims_total still {before} after 1000 units")
    check(metrics(s)["moa_heap_request_trims_total"][""] == before + 1, "one trim, once")


BROWSER_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                  "image/webp,*/*;q=0.8")


@test
def test_pages_static_etag():
    s = main_server()
    st, hd, page = request(s, "GET", "/")
    check(st == 200 and hd["content-type"] == "text/html; charset=utf-8" and
          page.lower().startswith(b"<!doctype html>") and b'id="translation"' in page, f"GET / {st}")
    etag = hd.get("etag", "")
    check(re.fullmatch(r'"[0-9a-f]{16}"', etag) is not None, f"ETag {etag!r}")
    check(hd.get("cache-control") == "no-cache" and hd.get("x-content-type-options") == "nosniff",
          "revalidated every time, no sniffing")
    csp = hd.get("content-security-policy", "")
    check("script-src 'self'" in csp and "connect-src 'self'" in csp and "'unsafe-inline'" not in csp,
          f"CSP {csp!r}")
    check("x-request-id" in hd, "request id on pages too")
    for inm in (etag, f'"0000000000000000", W/{etag}', "*"):
        st, h2, b2 = request(s, "GET", "/", headers={"If-None-Match": inm})
        check(st == 304 and b2 == b"" and h2.get("etag") == etag, f"If-None-Match {inm}: {st}")
    st, _, b2 = request(s, "GET", "/", headers={"If-None-Match": '"0000000000000000"'})
    check(st == 200 and b2 == page, "a stale ETag gets the page")
    st, h2, b2 = request(s, "HEAD", "/")
    check(st == 200 and b2 == b"" and int(h2["content-length"]) == len(page), "HEAD /")
    st, h2, b2 = request(s, "POST", "/", body="x")
    check(st == 405 and "GET" in h2.get("allow", "") and "error" in json.loads(b2), f"POST / {st}")
    # every file the pages load (links, scripts, module imports) is served, with its type
    _, _, dash = request(s, "GET", "/heads", headers={"Accept": BROWSER_ACCEPT})
    refs = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', page.decode() + dash.decode()))
    seen = set()
    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
    while refs:
        ref = refs.pop()
        seen.add(ref)
        st, h2, b2 = request(s, "GET", ref)
        ext = os.path.splitext(ref)[1]
        check(st == 200 and h2["content-type"].startswith(types[ext]) and h2.get("etag"),
              f"{ref}: {st} {h2.get('content-type')}")
        if ext == ".js":
            refs |= set(re.findall(r'from "(/static/[^"]+)"', b2.decode())) - seen
    check({"/static/moa.css", "/static/translate.js", "/static/heads.js",
           "/static/common.js"} <= seen, f"files found: {sorted(seen)}")
    for path in ("/static/nope.js", "/static/", "/static/index.html", "/static/../Makefile",
                 "/index.html", "/static/moa.css/x"):
        st, h2, b2 = request(s, "GET", path)
        check(st == 404 and h2["content-type"] == "application/json" and "error" in json.loads(b2),
              f"{path}: {st}")
    m = parse_prometheus(request(s, "GET", "/metrics")[2].decode())["moa_http_requests_total"]
    check(m.get('endpoint="/",status="200"', 0) >= 2 and m.get('endpoint="/",status="304"', 0) >= 3
          and m.get('endpoint="/static/",status="404"', 0) >= 1, "pages counted per endpoint")


@test
def test_heads_content_negotiation():
    s = main_server()
    translate(s, {"text": "Delete unused files"})
    st, hd, plain = request(s, "GET", "/heads")
    check(st == 200 and hd["content-type"] == "application/json" and
          hd.get("vary") == "Accept", f"no Accept: JSON ({hd.get('content-type')})")
    json.loads(plain)
    # JSON for every client that does not ask for HTML first, byte for byte
    for acc in ("application/json", "*/*", "text/html, application/json",
                "application/json;q=0.5, text/html", "text/html;q=0", "text/html;q=0.0, */*",
                "text/htmlx"):
        st, hd, b = request(s, "GET", "/heads", headers={"Accept": acc})
        check(st == 200 and hd["content-type"] == "application/json" and b == plain,
              f"Accept {acc!r}: {hd['content-type']}")
    for acc in (BROWSER_ACCEPT, "text/html", "TEXT/HTML; q=0.9", "text/plain, text/html"):
        st, hd, b = request(s, "GET", "/heads", headers={"Accept": acc})
        check(st == 200 and hd["content-type"] == "text/html; charset=utf-8" and
              b'id="dash"' in b and hd.get("vary") == "Accept" and hd.get("etag"),
              f"Accept {acc!r}: {hd['content-type']}")
        etag = hd["etag"]
    st, hd, b = request(s, "GET", "/heads", headers={"Accept": BROWSER_ACCEPT, "If-None-Match": etag})
    check(st == 304 and b == b"", f"dashboard revalidated: {st}")
    st, hd, b = request(s, "GET", "/heads?format=json", headers={"Accept": BROWSER_ACCEPT})
    check(hd["content-type"] == "application/json" and json.loads(b)["num_experts"] == 4,
          "format=json wins over Accept")
    st, hd, b = request(s, "GET", "/heads?format=html")
    check(hd["content-type"].startswith("text/html"), "format=html")
    st, hd, b = request(s, "GET", "/heads?format=text", headers={"Accept": BROWSER_ACCEPT})
    check(hd["content-type"].startswith("text/plain") and hd.get("vary") == "Accept", "format=text")
    st, hd, b = request(s, "GET", "/heads?format=xml")
    check(st == 400 and "html" in json.loads(b)["error"], "bad format names the choices")
    # the page's requests are the public ones: trace carries the expert count
    j = translate(s, {"text": "Search R Help", "trace": True})
    check(j["translations"][0]["trace"][0]["num_experts"] == 4, "num_experts in traces")


@test
def test_cache_hits():
    s = limits_server()
    def hits() -> float:
        return parse_prometheus(request(s, "GET", "/metrics")[2].decode())["moa_cache_hits_total"][""]
    body = {"text": "Open the file manager", "beam_size": 2}
    h0 = hits()
    a = translate(s, body, headers=KEY)
    b = translate(s, body, headers=KEY)
    check(a["translatedText"] == b["translatedText"], "cached answer identical")
    check(hits() == h0 + 1, "one hit")
    translate(s, dict(body, beam_size=3), headers=KEY)
    check(hits() == h0 + 1, "other options: no hit")


# --- errors ------------------------------------------------------------------------------------

def wait_for(cond: Callable[[], bool], limit: float = WAIT_LIMIT) -> bool:
    """Waits until cond() holds — a state the server reaches, however long
    this machine takes to get there; False only after `limit` seconds."""
    deadline = time.time() + limit
    while not cond():
        if time.time() >= deadline:
            return False
        time.sleep(0.005)
    return True


def metrics(srv: Server) -> Dict[str, Dict[str, float]]:
    return parse_prometheus(request(srv, "GET", "/metrics")[2].decode())


def jobs(srv: Server) -> Dict[str, float]:
    """moa_scheduler_jobs_total by reason: how the scheduler gave jobs back."""
    return {re.search(r'reason="([^"]+)"', k).group(1): v
            for k, v in metrics(srv)["moa_scheduler_jobs_total"].items()}


def translate_status(srv: Server, status: int) -> float:
    return metrics(srv)["moa_http_requests_total"].get(
        f'endpoint="/translate",status="{status}"', 0)


def queued(srv: Server, n: int) -> bool:
    """Waits until at least n sentences wait for admission (a request is in
    the scheduler's hands, not just sent)."""
    return wait_for(lambda: metrics(srv)["moa_queue_sentences"][""] >= n)


def in_flight(srv: Server, n: int) -> bool:
    """Waits until at least n /translate requests are in flight (their
    headers read: their clock runs)."""
    return wait_for(lambda: metrics(srv)["moa_requests_in_flight"][""] >= n)


def batch_empty(srv: Server) -> bool:
    """Waits until no sentence is live or queued (a released sentence in a
    session that is stepping leaves when that step ends)."""
    def empty() -> bool:
        m = metrics(srv)
        return m["moa_live_sentences"][""] == 0 and m["moa_queue_sentences"][""] == 0
    return wait_for(empty)


def log_lines(srv: Server, needle: str, n: int = 1) -> List[str]:
    """The server's log lines containing needle, once there are n of them
    (a line is written after its answer went out: read until it is there)."""
    found: List[str] = []
    def there() -> bool:
        found[:] = [l for l in srv.read_log().splitlines() if needle in l]
        return len(found) >= n
    check(wait_for(there), f"no {n} log line(s) with {needle!r} in the log")
    return found


# --- raw HTTP, for clients that misbehave -----------------------------------------------

def raw_head(srv: Server, body: bytes, request_id: str, version: str = "1.1") -> socket.socket:
    """A connection that has sent the headers of POST /translate for body,
    and not the body."""
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /translate HTTP/%s\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"X-Request-Id: %s\r\nContent-Length: %d\r\n\r\n"
                 % (version.encode(), request_id.encode(), len(body)))
    return sock


def raw_post(srv: Server, body: Any, request_id: str, version: str = "1.1") -> socket.socket:
    """A connection that has sent a complete POST /translate."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sock = raw_head(srv, data, request_id, version)
    sock.sendall(data)
    return sock


def raw_answer(sock: socket.socket) -> Tuple[int, bytes]:
    """Reads the answer on a raw connection (http.client parses it)."""
    sock.settimeout(WAIT_LIMIT)
    r = http.client.HTTPResponse(sock)
    try:
        r.begin()
        return r.status, r.read()
    finally:
        r.close()
        sock.close()


def reset(sock: socket.socket) -> None:
    """Closes with a TCP reset (SO_LINGER 0): the client is gone at once, as
    when a process dies with unread data or a proxy aborts."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def expect_error(srv: Server, status: int, body: Any, headers: Optional[Dict[str, str]] = None,
                 contains: str = "") -> Dict[str, str]:
    st, hd, b = request(srv, "POST", "/translate", body, headers)
    check(st == status, f"expected {status}, got {st}: {b[:200]!r}")
    j = json.loads(b)
    check(list(j) == ["error"] and isinstance(j["error"], str), f"error body: {j}")
    check(contains in j["error"], f"{j['error']!r} lacks {contains!r}")
    check("x-request-id" in hd, "X-Request-Id on errors")
    return hd


@test
def test_errors_400():
    s = main_server()
    ct = {"Content-Type": "application/json"}
    expect_error(s, 400, b'{"text": "a"', ct, "malformed JSON")
    expect_error(s, 400, b'[1, 2]', ct, "object")
    expect_error(s, 400, {"text": 5}, contains="string")
    expect_error(s, 400, {"text": ["a", 3]}, contains="text[1]")
    expect_error(s, 400, {"beam_size": 2}, contains="missing text")
    expect_error(s, 400, b'{"text": "caf\xff"}', ct, "UTF-8")
    expect_error(s, 400, {"text": ""}, contains="empty")
    expect_error(s, 400, {"text": []}, contains="empty")
    expect_error(s, 400, {"text": "a", "beam_size": 0}, contains="beam_size")
    expect_error(s, 400, {"text": "a", "beam_size": "4"}, contains="beam_size")
    expect_error(s, 400, {"text": "a", "sampling_topp": 1.5}, contains="sampling_topp")
    expect_error(s, 400, {"text": "a", "max_length": 5000}, contains="max_length")
    expect_error(s, 400, {"text": "a", "trace": "yes"}, contains="trace")
    expect_error(s, 400, {"text": "a", "source": "fr"}, contains="unsupported source")
    expect_error(s, 400, {"text": "a", "target": "fr"}, contains="unsupported target")
    expect_error(s, 400, {"text": "a", "format": "pdf"}, contains="format")
    expect_error(s, 400, {"text": "a", "alternatives": 3, "beam_size": 2}, contains="alternatives")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    expect_error(s, 400, "q=%zz", form, "escape")


@test
def test_errors_limits_400_413_415():
    s = limits_server()  # max_texts 3 (file/flag) overridden to 4 by MOA_MAX_TEXTS, max_chars 200
    translate(s, {"text": ["a", "b", "c", "d"]}, headers=KEY)
    expect_error(s, 400, {"text": ["a"] * 5}, KEY, "max_texts is 4")
    expect_error(s, 400, {"text": "x" * 201}, KEY, "max_chars is 200")
    translate(s, {"text": "é" * 200}, headers=KEY)  # characters, not bytes
    hd = expect_error(s, 413, {"text": "y" * 5000}, KEY, "max_body")
    expect_error(s, 415, b"text=hi", dict(KEY, **{"Content-Type": "text/plain"}), "Content-Type")
    # a chunked body has no Content-Length: refused after reading
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=WAIT_LIMIT)
    def chunks():
        yield b'{"text": "'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"}'
    conn.request("POST", "/translate", body=chunks(), headers=dict(KEY, **{
        "Content-Type": "application/json", "Transfer-Encoding": "chunked"}), encode_chunked=True)
    r = conn.getresponse()
    check(r.status == 413 and "error" in json.loads(r.read()), f"chunked: {r.status}")
    conn.close()


@test
def test_errors_403_keys_and_sighup():
    s = limits_server()
    expect_error(s, 403, {"text": "a"}, contains="API key")
    expect_error(s, 403, {"text": "a", "api_key": "wrong"}, contains="invalid")
    translate(s, {"text": "a", "api_key": "secret-one"})
    translate(s, {"text": "a"}, headers=KEY)
    form = urllib.parse.urlencode({"q": "a", "api_key": "secret-one"})
    st, _, _ = request(s, "POST", "/translate", form,
                       {"Content-Type": "application/x-www-form-urlencoded"})
    check(st == 200, f"form key: {st}")
    st, _, _ = request(s, "POST", "/heads/reset")
    check(st == 403, f"/heads/reset without key: {st}")
    with open(os.path.join(TMP, "keys.txt"), "a") as f:
        f.write("secret-two\n")
    expect_error(s, 403, {"text": "a", "api_key": "secret-two"})
    s.proc.send_signal(signal.SIGHUP)
    log_lines(s, "SIGHUP: re-reading the API keys")  # then the keys are re-read
    check(wait_for(lambda: request(s, "POST", "/translate",
                                   {"text": "a", "api_key": "secret-two"})[0] == 200),
          "SIGHUP did not reload the keys")


def big_texts(n_texts: int, lines: int) -> List[str]:
    """n_texts texts of `lines` lines each, no two texts alike."""
    return ["\n".join(sentences(lines, offset=i)) for i in range(n_texts)]


@test
def test_errors_429():
    # One sentence in flight, 5 may wait: a 6000-line request (taken: the
    # queue was empty) keeps thousands waiting, so the next request is
    # refused whatever the machine's speed; then it is reset away.
    s = Server("queue", "--max-inflight", "1", "--max-queue", "5", "--timeout", "3600",
               "--cache-size", "0", "--compute-workers", "1")
    try:
        big = raw_post(s, {"text": big_texts(20, 300), "beam_size": 4}, "queue-big")
        check(queued(s, 20), "the big request's sentences never queued")
        hd = expect_error(s, 429, {"text": "\n".join(sentences(6))}, contains="max_queue")
        check(int(hd.get("retry-after", "0")) >= 1, f"Retry-After: {hd.get('retry-after')}")
        check(jobs(s)["queue_full"] == 1, f"refusal counted: {jobs(s)}")
        reset(big)
        check(wait_for(lambda: jobs(s)["cancelled"] == 1), f"big request cancelled: {jobs(s)}")
        check(batch_empty(s), "its sentences left the batch")
        check(jobs(s)["done"] == 0, "nothing was answered")
    finally:
        check(s.stop() == 0, "exit 0")


@test
def test_errors_504_deadline():
    # The deadline counts from a request's first byte. This client sends the
    # headers, waits until the server has read them (the request is in
    # flight: its clock runs), then longer than the timeout, then the body:
    # the request is past its deadline when its body is complete, on any
    # machine. It gets 504 before it is parsed: the scheduler never sees it,
    # its sentences are never decoded (no engine step at all on this
    # server). So does a late request that needs no model at all (blank
    # lines: otherwise answered at once, as a request whose every sentence
    # is in the cache would be; the soak saw such a 200 after 96 s).
    s = Server("deadline", "--timeout", "0.2", "--cache-size", "0")
    try:
        for n, (text, rid) in enumerate(((("\n".join(sentences(30))), "late-body"),
                                         ("\n \n", "late-blank")), 1):
            body = json.dumps({"text": text, "beam_size": 4}).encode()
            sock = raw_head(s, body, rid)
            check(in_flight(s, 1), "the request never got in flight")
            time.sleep(0.3)  # > timeout: the deadline has passed, whatever follows
            sock.sendall(body)
            st, b = raw_answer(sock)
            check(st == 504 and "timed out" in json.loads(b)["error"],
                  f"{rid}: 504: {st} {b[:100]!r}")
            m = metrics(s)
            check(m["moa_late_bodies_total"][""] == n, f"{rid}: counted as late")
            check(translate_status(s, 504) == n, "504 counted")
            log_lines(s, f"{rid} POST /translate 504")
        j = jobs(s)
        check(sum(j.values()) == 0, f"the scheduler saw a late request: {j}")
        m = metrics(s)
        check(m["moa_engine_steps_total"][""] == 0, "the late request was decoded")
        check(m["moa_queue_sentences"][""] == 0 and m["moa_live_sentences"][""] == 0,
              "its sentences reached the scheduler")
    finally:
        check(s.stop() == 0, "exit 0")


@test
def test_client_disconnect_cancels():
    s = main_server()
    j0, r0 = jobs(s), translate_status(s, 499)
    # A reset while the request is held: cancelled, counted, its sentences
    # leave the batch. 6000 lines (128 in flight): reset while thousands wait.
    sock = raw_post(s, {"text": big_texts(20, 300), "beam_size": 4}, "gone-client")
    check(queued(s, 1000), "its sentences never queued")  # in the scheduler's hands
    reset(sock)
    check(wait_for(lambda: jobs(s)["cancelled"] == j0["cancelled"] + 1),
          f"the reset was not noticed: {jobs(s)}")
    log_lines(s, "gone-client POST /translate 499")
    check(batch_empty(s), "its sentences left the batch")
    check(wait_for(lambda: metrics(s)["moa_requests_in_flight"][""] == 0), "still in flight")
    # A client that closes before its request is complete: never reaches
    # the scheduler, 499.
    data = json.dumps({"text": "Delete unused files"}).encode()
    sock = raw_head(s, data, "half-sent")
    sock.sendall(data[:10])
    check(in_flight(s, 1), "the half-sent request never got in flight")
    sock.close()
    log_lines(s, "half-sent POST /translate 499")
    check(translate_status(s, 499) == r0 + 2, "two 499s counted")
    j1 = jobs(s)
    check(j1["cancelled"] == j0["cancelled"] + 1 and j1["done"] == j0["done"],
          f"the half-sent request reached the scheduler: {j0} -> {j1}")


@test
def test_half_close_gets_answer():
    # A client that shuts down its sending side after a complete request
    # (nc -N, some HTTP/1.0 clients) has not hung up: it gets its answer.
    # Its socket shows the half-close (POLLRDHUP) from then on, so the
    # hang-up watcher sees it on every look while the request is held.
    s = main_server()
    j0 = jobs(s)
    src = sentences(100, 5)
    sock = raw_post(s, {"text": "\n".join(src), "beam_size": 4}, "half-close")
    sock.shutdown(socket.SHUT_WR)
    st, b = raw_answer(sock)
    check(st == 200, f"half-closed client: {st} {b[:200]!r}")
    check(len(json.loads(b)["translatedText"].split("\n")) == 100, "every line answered")
    sock = raw_post(s, {"text": "Delete unused"}, "half-close-10", version="1.0")
    sock.shutdown(socket.SHUT_WR)
    st, b = raw_answer(sock)
    check(st == 200 and json.loads(b)["translatedText"], f"HTTP/1.0, half-closed: {st}")
    j1 = jobs(s)
    check(j1["cancelled"] == j0["cancelled"] and j1["done"] == j0["done"] + 2,
          f"half-closed requests cancelled: {j0} -> {j1}")
    log_lines(s, "half-close POST /translate 200")


@test
def test_timeouts_and_hangups_under_load():
    # Requests timing out (504) and clients hanging up (reset) while their
    # sentences sit in sessions that are stepping, under load from other
    # clients: the scheduler must drop exactly those units (also their
    # results of the step in progress), answer everyone else correctly and
    # stay healthy. Under the sanitizer build this is the use-after-free check
    # for the released units. A fixed amount of work (24 clients x 8
    # requests), not a duration; which requests time out depends on the
    # machine's speed, so nothing here counts on it: every answer is a 200
    # with the right lines or a 504, and the server's counters must agree
    # with each other and with what the clients saw. (The scheduler's
    # deadline and cancel paths are checked step by step in test_sched.c;
    # the 504 and 499 mappings, deterministically, by the tests above.)
    s = Server("churn", "--timeout", "2", "--max-inflight", "16", "--compute-workers", "2",
               "--max-queue", "1000000", "--cache-size", "0")
    try:
        statuses: Dict[int, int] = {}
        wrong: List[str] = []
        errors: List[str] = []
        hangups = [0]
        lock = threading.Lock()
        huge = {"text": big_texts(10, 500)}
        def client(c: int) -> None:
            rng = random.Random(c)
            for _ in range(8):
                kind = rng.random()
                if kind < 0.3:  # sends a request and hangs up (a reset) a moment later
                    n = rng.randint(20, 200)
                    sock = raw_post(s, {"text": "\n".join(sentences(n, offset=c)),
                                        "beam_size": 8}, f"hangup-{c}")
                    time.sleep(rng.uniform(0.001, 0.05))  # when: any moment will do
                    reset(sock)
                    with lock:
                        hangups[0] += 1
                    continue
                body = huge if kind < 0.35 else {
                    "text": "\n".join(sentences(rng.randint(1, 6), offset=rng.randint(0, 50))),
                    "beam_size": rng.choice([1, 4, 8])}
                try:
                    st, _, b = request(s, "POST", "/translate", body)
                except OSError as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    statuses[st] = statuses.get(st, 0) + 1
                    if st == 200:
                        out = json.loads(b)["translatedText"]
                        texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
                        outs = out if isinstance(out, list) else [out]
                        if [len(o.split("\n")) for o in outs] != [len(t.split("\n")) for t in texts]:
                            wrong.append(str(texts)[:100])
        threads = [threading.Thread(target=client, args=(c,)) for c in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"    statuses {dict(sorted(statuses.items()))}, {hangups[0]} hang-ups")
        check(not errors, f"{len(errors)} requests failed: {errors[:3]}")
        check(set(statuses) <= {200, 504}, f"statuses {statuses}")
        check(sum(statuses.values()) == 24 * 8 - hangups[0], "every request answered")
        check(not wrong, f"{len(wrong)} answers with the wrong number of lines: {wrong[:2]}")
        # hung-up requests may still be held until noticed
        check(batch_empty(s), "released sentences left the batch")
        check(wait_for(lambda: metrics(s)["moa_requests_in_flight"][""] == 0),
              "requests still in flight")
        j = jobs(s)
        http = {st: translate_status(s, st) for st in (200, 499, 500, 504)}
        print(f"    scheduler {j}; HTTP {http}")
        check(j["failed"] == 0 and j["stopped"] == 0 and j["queue_full"] == 0 and http[500] == 0,
              f"failures: {j} {http}")
        check(http[200] >= statuses.get(200, 0) and http[504] >= statuses.get(504, 0),
              f"the server counted fewer answers than the clients got: {http} {statuses}")
        # every job came back once, answered (or found its client gone) as it came
        # back; a body complete only after the timeout (a busy machine) is
        # answered 504 without reaching the scheduler (moa_late_bodies_total)
        late = metrics(s)["moa_late_bodies_total"][""]
        check(http[200] + http[504] <= j["done"] + j["deadline"] + late,
              f"{http} vs {j}, late bodies {late}")
        check(http[200] + http[504] + http[499] >= j["done"] + j["deadline"] + j["cancelled"],
              f"{http} vs {j}")
        check(j["cancelled"] <= hangups[0] and http[499] <= hangups[0], f"{j} {http}")
        check(request(s, "GET", "/ready")[0] == 200, "still ready")
    finally:
        check(s.stop() == 0, "exit 0")


# --- batching and fairness -------------------------------------------------------------------

def preloaded(srv: Server, bodies: List[Any]) -> List[Tuple[int, bytes]]:
    """Sends every request while the server is stopped (SIGSTOP): the kernel
    accepts the connections and holds the bytes, so the server finds them
    all at once when it continues (SIGCONT), however slow this client is.
    Returns the answers in order."""
    socks: List[socket.socket] = []
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        for i, body in enumerate(bodies):
            socks.append(raw_post(srv, body, f"preloaded-{i}"))
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    return [raw_answer(sock) for sock in socks]


def shared_steps(srv: Server) -> float:
    """Engine steps so far that decoded more than one sentence."""
    m = metrics(srv)
    return m["moa_batch_sentences_count"][""] - m["moa_batch_sentences_bucket"]['le="1"']


@test
def test_batching_identity_64_concurrent():
    s = main_server()
    src = sentences(40, 7)
    # one unit per request: sentence splitting off (a sample line may hold
    # two sentences), so a step with several units holds several requests
    opts = [{"beam_size": 1}, {"beam_size": 4}, {"beam_size": 4, "num_hypotheses": 2}]
    opts = [dict(o, split_sentences=False) for o in opts]
    alone: Dict[Tuple[int, int], Dict[str, Any]] = {}
    for i, sent in enumerate(src):
        for o in range(len(opts)):
            alone[(i, o)] = translate(s, dict(opts[o], text=sent, return_scores=True))
    keys = [(i, o) for i in range(len(src)) for o in range(len(opts))]  # 120 requests
    # one sentence (unit) each: a step with several holds several requests
    shared0 = shared_steps(s)
    units0 = metrics(s)["moa_sentences_translated_total"][""]
    answers = preloaded(s, [dict(opts[o], text=src[i], return_scores=True) for i, o in keys])
    shared = shared_steps(s) - shared0
    units = metrics(s)["moa_sentences_translated_total"][""] - units0
    check(units == len(keys), f"{units:.0f} units for {len(keys)} one-sentence requests")
    bad = 0
    for k, (st, b) in zip(keys, answers):
        check(st == 200, f"{k}: {st} {b[:200]!r}")
        a, t = alone[k]["translations"][0], json.loads(b)["translations"][0]
        if a["text"] != t["text"] or a.get("alternatives") != t.get("alternatives") or \
                abs(a["score"] - t["score"]) > SCORE_TOL:
            bad += 1
            print(f"    differs {k}: {a} vs {t}")
    print(f"    {shared:.0f} engine steps decoded sentences of several requests together")
    check(bad == 0, f"{bad} of {len(keys)} results changed under batching")
    check(shared > 0, "no engine step held sentences of two of the 120 requests")


@test
def test_fairness_short_request_not_stuck():
    # A 6000-line request fills the batch (4 sentences) and keeps thousands
    # waiting; a 1-line request sent then is answered while most of those
    # still wait: it got the next free slot, not the 6001st. Proved by the
    # queue gauge after its answer, not by comparing times.
    s = Server("fair", "--max-inflight", "4", "--compute-workers", "1", "--cache-size", "0",
               "--timeout", "3600", "--max-queue", "1000000")
    try:
        big = raw_post(s, {"text": big_texts(20, 300), "beam_size": 4}, "fair-big")
        check(queued(s, 5000), "the big request's sentences never queued")
        j = translate(s, {"text": "Delete unused", "beam_size": 4})
        check(j["translatedText"], "the 1-line request answered")
        waiting = metrics(s)["moa_queue_sentences"][""]
        print(f"    1-line request answered with {waiting:.0f} of the big request's 6000 "
              f"sentences still waiting")
        check(waiting > 0, "the 1-line request waited for the whole big request")
        reset(big)
        check(wait_for(lambda: jobs(s)["cancelled"] == 1), "the big request cancelled")
        check(batch_empty(s), "its sentences left the batch")
    finally:
        check(s.stop() == 0, "exit 0")


@test
def test_compute_workers_same_results():
    src = sentences(24, 3)
    opts = [{"beam_size": 1}, {"beam_size": 4, "num_hypotheses": 2}]
    jobs = [(i, o) for i in range(len(src)) for o in range(len(opts))]
    got: Dict[int, Dict[Tuple[int, int], Dict[str, Any]]] = {}
    for w in (1, 2):
        # the variable (not the flag): it outranks a MOA_COMPUTE_WORKERS of the caller
        s = Server(f"workers{w}", "--cache-size", "0", "--max-inflight", "32",
                   env={"MOA_COMPUTE_WORKERS": str(w)})
        try:
            line = [l for l in s.read_log().splitlines() if "threads:" in l]
            check(len(line) == 1 and re.search(rf"compute workers {w}\b", line[0]) is not None,
                  f"start log names the workers: {line}")
            m = request(s, "GET", "/metrics")[2].decode()
            check(f'compute_workers="{w}"' in m, "moa_info names the workers")
            def one(key: Tuple[int, int]) -> Tuple[Tuple[int, int], Dict[str, Any]]:
                i, o = key
                return key, translate(s, dict(opts[o], text=src[i], return_scores=True))
            with cf.ThreadPoolExecutor(max_workers=16) as ex:
                got[w] = dict(ex.map(one, jobs))
        finally:
            check(s.stop() == 0, f"workers {w}: exit 0")
    bad = 0
    for k in jobs:
        a, b = got[1][k]["translations"][0], got[2][k]["translations"][0]
        if a["text"] != b["text"] or a.get("alternatives") != b.get("alternatives") or \
                abs(a["score"] - b["score"]) > SCORE_TOL:
            bad += 1
            print(f"    differs {k}: {a} vs {b}")
    check(bad == 0, f"{bad} of {len(jobs)} results differ between 1 and 2 compute workers")
    r = subprocess.run([ARGS.server, "--config", os.devnull, "--compute-workers", "2",
                        "--compute-threads", "2", "--print-config"], capture_output=True, text=True,
                       env=dict(os.environ, MOA_COMPUTE_WORKERS="2"))
    check(r.returncode == 2 and "compute_threads 2: must be 1" in r.stderr,
          f"several workers with several BLAS threads refused: {r.returncode} {r.stderr}")


@test
def test_many_workers_start_with_default_limits():
    # 32 workers and every limit left at its default: the limits follow the
    # workers (128 rows and 32 sentences each) instead of refusing to start.
    s = Server("workers32", env={"MOA_COMPUTE_WORKERS": "32"})
    try:
        log = s.read_log()
        check(re.search(r"compute workers 32\b", log) is not None, "32 workers started")
        check("max_inflight 1024 sentences, max_batch_rows 4096" in log,
              f"limits scaled: {[l for l in log.splitlines() if 'limits:' in l]}")
        m = request(s, "GET", "/metrics")[2].decode()
        check('compute_workers="32"' in m, "moa_info names 32 workers")
        src = sentences(40, 5)
        got = translate(s, {"text": src, "beam_size": 4})["translatedText"]
        want = translate(main_server(), {"text": src, "beam_size": 4})["translatedText"]
        check(got == want, "32 workers translate like the main server")
    finally:
        check(s.stop() == 0, "workers32: exit 0")
    # An explicit contradictory setting still fails, with the message.
    r = subprocess.run([ARGS.server, "--config", os.devnull, "--max-batch-rows", "256",
                        "--print-config"], capture_output=True, text=True,
                       env=dict(os.environ, MOA_COMPUTE_WORKERS="32"))
    check(r.returncode == 2 and "max_batch_rows 256: must be at least 16 per compute worker "
          "(32 workers: at least 512)" in r.stderr, f"explicit rows refused: {r.stderr}")
    # The resolved limits of an explicit worker count, as --print-config shows them.
    r = subprocess.run([ARGS.server, "--config", os.devnull, "--print-config"],
                       capture_output=True, text=True,
                       env=dict(os.environ, MOA_COMPUTE_WORKERS="24"))
    check(r.returncode == 0 and "max_batch_rows = 3072" in r.stdout and
          "max_inflight = 768" in r.stdout, f"24 workers: {r.stdout}")


@test
def test_workers_follow_affinity_mask():
    # Pinned to one CPU (taskset, a cpuset): one worker, the small defaults.
    cpu = min(os.sched_getaffinity(0))
    r = subprocess.run([ARGS.server, "--config", os.devnull, "--print-config"],
                       capture_output=True, text=True,
                       env=dict(os.environ, MOA_COMPUTE_WORKERS="0"),
                       preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    check(r.returncode == 0 and "max_batch_rows = 256" in r.stdout and
          "max_inflight = 64" in r.stdout, f"one CPU: {r.stdout} {r.stderr}")
    # MOA_COMPUTE_WORKERS=0 outranks one the caller may have set
    s = Server("affinity", env={"MOA_COMPUTE_WORKERS": "0"},
               preexec=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        m = request(s, "GET", "/metrics")[2].decode()
        check('compute_workers="1"' in m, "one worker on one CPU")
        text = s.read_log()
    finally:
        check(s.stop() == 0, "affinity: exit 0")
    check(re.search(r"cpus: 1 usable \(online \d+, affinity mask 1,", text) is not None,
          f"start log names the mask: {text[:2000]}")


# --- running it -------------------------------------------------------------------------------

@test
def test_sigterm_drains():
    # Every request in flight when SIGTERM arrives is answered 200, however
    # long it takes (drain_timeout and timeout effectively unbounded here).
    # One of them is held open by its client: its headers are read (it is in
    # flight) but its body comes only after the checks of the draining
    # server, so the drain cannot end before them on any machine. The other
    # is in the scheduler's hands (it may or may not be done by the signal:
    # either way it must be answered).
    s = Server("drain", "--cache-size", "0", "--max-inflight", "1", "--drain-timeout", "3600",
               "--timeout", "3600")
    held_body = json.dumps({"text": "\n".join(sentences(20, 40))}).encode()
    held = raw_head(s, held_body, "drain-held")
    check(in_flight(s, 1), "the held request never got in flight")
    texts = big_texts(2, 40)
    res: Dict[str, Any] = {}
    def big() -> None:
        res["big"] = request(s, "POST", "/translate", {"text": texts, "split_sentences": False,
                                                       "protect_placeholders": False})
    t = threading.Thread(target=big)
    t.start()
    # in flight (its headers read), or already answered: either way before the signal
    check(wait_for(lambda: "big" in res or metrics(s)["moa_requests_in_flight"][""] >= 2),
          "the second request never got in flight")
    s.proc.send_signal(signal.SIGTERM)
    check(wait_for(lambda: metrics(s)["moa_draining"][""] == 1), "never draining")
    line = log_lines(s, "SIGTERM: draining")[0]
    n = int(re.search(r"draining (\d+) request", line).group(1))
    check(n in (1, 2), f"in flight at the signal: {line}")
    check(s.proc.poll() is None, "still running while a request is in flight")
    st, _, b = request(s, "GET", "/ready")
    check(st == 503 and "drain" in json.loads(b)["error"], f"/ready while draining: {st}")
    expect_error(s, 503, {"text": "Delete unused"}, contains="shutting down")
    st, _, _ = request(s, "GET", "/health")
    check(st == 200, "alive while draining")
    held.sendall(held_body)
    st, b = raw_answer(held)
    check(st == 200 and len(json.loads(b)["translatedText"].split("\n")) == 20,
          f"held request: {st} {b[:200]!r}")
    t.join()
    st, _, b = res["big"]
    check(st == 200, f"in-flight request: {st}")
    out = json.loads(b)["translatedText"]
    check(len(out) == len(texts) and all(len(o.split("\n")) == 40 and all(o.split("\n"))
                                           for o in out), "every line answered")
    rc = s.proc.wait(WAIT_LIMIT)
    s.log.close()
    check(rc == 0, f"exit status {rc}:\n{s.read_log()[-2000:]}")
    check("drain deadline" not in s.read_log(), "the drain deadline passed")
    print(f"    {n} request(s) in flight at SIGTERM, all answered 200")


def _thread_signal_masks(pid: int) -> Dict[int, Tuple[int, int]]:
    """tid -> (blocked, caught) signal masks from /proc."""
    out: Dict[int, Tuple[int, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                st = dict(l.split(":", 1) for l in f if ":" in l)
        except OSError:
            continue
        out[int(tid)] = (int(st["SigBlk"], 16), int(st["SigCgt"], 16))
    return out


def _tgkill(pid: int, tid: int, sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, pid, tid, sig) != 0:  # SYS_tgkill on x86-64
        raise OSError(ctypes.get_errno(), "tgkill")


@test
def test_signals_reaching_any_thread():
    # OpenBLAS starts its threads before main blocks the signals: a SIGTERM
    # or SIGHUP the kernel hands to one of them must still drain / reload,
    # never kill the process (the default action) with requests in flight.
    s = Server("sigthreads", "--cache-size", "0", "--drain-timeout", "3600",
               env={"OPENBLAS_NUM_THREADS": "2"})
    bit = lambda sig: 1 << (sig - 1)
    masks = _thread_signal_masks(s.proc.pid)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        bad = [t for t, (blk, cgt) in masks.items() if not (blk | cgt) & bit(sig)]
        check(not bad, f"threads {bad} would die of {sig.name}")
    open_threads = [t for t, (blk, _) in masks.items()
                    if t != s.proc.pid and not blk & bit(signal.SIGTERM)]
    target = open_threads[0] if open_threads else s.proc.pid
    _tgkill(s.proc.pid, target, signal.SIGHUP)
    log_lines(s, "SIGHUP: re-reading the API keys")  # handled, not the default action
    check(s.proc.poll() is None, "alive after SIGHUP to a thread")
    # a request in flight at the SIGTERM: its headers read, its body after
    body = json.dumps({"text": "\n".join(sentences(100))}).encode()
    held = raw_head(s, body, "sigthreads-held")
    check(in_flight(s, 1), "the request never got in flight")
    _tgkill(s.proc.pid, target, signal.SIGTERM)
    log_lines(s, "SIGTERM: draining 1 request(s)")
    held.sendall(body)
    st, b = raw_answer(held)
    check(st == 200, f"in-flight request: {st} {b[:200]!r}")
    rc = s.proc.wait(WAIT_LIMIT)
    s.log.close()
    log = s.read_log()
    check(rc == 0, f"exit status {rc}:\n{log[-2000:]}")


@test
def test_access_log_and_startup_log():
    s = main_server()
    translate(s, {"text": "Secret user sentence"}, headers={"X-Request-Id": "log-check-1"})
    line = log_lines(s, "log-check-1")
    check(len(line) == 1, f"one access line: {line}")
    check(re.search(r"log-check-1 POST /translate 200 texts=1 sentences=1 tokens=\d+/\d+ ms=",
                    line[0]) is not None, line[0])
    log = s.read_log()
    check("Secret user sentence" not in log, "no user text in the log")
    check("OpenBLAS" in log and "compute" in log and "http" in log, "threads and BLAS logged")
    ls = limits_server()
    translate(ls, {"text": "a"}, headers=dict(KEY, **{"X-Request-Id": "json-line"}))
    rec = [json.loads(l) for l in log_lines(ls, "json-line")]
    check(len(rec) == 1 and rec[0]["status"] == 200 and rec[0]["type"] == "access", f"{rec}")


# --- several models ----------------------------------------------------------------------

DE_EN_NAME = "moa-de-en-tiny"


def model_copy(name: str, source: str, target: str) -> str:
    """tiny-trained copied to TMP/name with config.json declaring another pair and name (the
    weights are the same: routing is told by the model name in answers, metrics and heads)."""
    d = os.path.join(TMP, name)
    if not os.path.isdir(d):
        import shutil
        shutil.copytree(MODEL, d)
        with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        cfg.update(source_lang=source, target_lang=target, name=name)
        with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f)
    return d


def multi_server() -> Server:
    """tiny-trained (en->de, the default) and its copy declared de->en: --model repeated."""
    if "multi" not in SERVERS:
        SERVERS["multi"] = Server("multi", "--model", model_copy(DE_EN_NAME, "de", "en"),
                                  "--cache-size", "100", "--compute-workers", "2")
    return SERVERS["multi"]


def heads_total(h: Dict[str, Any]) -> int:
    return h["source_tokens"] + h["target_tokens"]


@test
def test_several_models_routing():
    s = multi_server()
    h = json.loads(request(s, "GET", "/health")[2])
    check([(m["name"], m["source"], m["target"]) for m in h["models"]] ==
          [("moa-en-de-tiny", "en", "de"), (DE_EN_NAME, "de", "en")], f"/health {h}")
    langs = {l["code"]: l["targets"] for l in json.loads(request(s, "GET", "/languages")[2])}
    check(langs == {"en": ["de"], "de": ["en"]}, f"/languages {langs}")
    for i in range(2):  # both models' statistics start at zero
        name = ["moa-en-de-tiny", DE_EN_NAME][i]
        check(request(s, "POST", f"/heads/reset?model={name}")[0] == 200, "reset one model")
    text = sentences(1, 5)[0]
    want = translate(main_server(), {"text": text})["translatedText"]
    j = translate(s, {"text": text, "source": "de", "target": "en"})
    check(j["model"] == DE_EN_NAME and j["translatedText"] == want, f"de->en: {j}")
    # only the de->en model's routing statistics moved
    hd = json.loads(request(s, "GET", f"/heads?model={DE_EN_NAME}")[2])
    he = json.loads(request(s, "GET", "/heads")[2])
    check(hd["model"] == DE_EN_NAME and heads_total(hd) > 0, f"de-en heads {heads_total(hd)}")
    check(he["model"] == "moa-en-de-tiny" and heads_total(he) == 0, "en-de heads untouched")
    j = translate(s, {"text": text, "source": "en", "target": "de"})
    check(j["model"] == "moa-en-de-tiny" and j["translatedText"] == want, f"en->de: {j}")
    check(translate(s, {"text": text})["model"] == "moa-en-de-tiny", "default: the first model")
    check(translate(s, {"text": text, "target": "en"})["model"] == DE_EN_NAME, "by target")
    check(translate(s, {"text": text, "source": "DE"})["model"] == DE_EN_NAME, "by source")
    j = translate(s, {"text": text, "source": "auto", "target": "en"})
    check(j["model"] == DE_EN_NAME and j["detectedLanguage"] ==
          {"confidence": 100, "language": "de"}, f"auto for en: {j}")
    j = translate(s, {"text": [text], "source": "auto"})
    lang = j["detectedLanguage"][0]["language"]
    check(j["detectedLanguage"][0]["confidence"] == 50 and
          j["model"] == {"en": "moa-en-de-tiny", "de": DE_EN_NAME}[lang], f"auto: {j}")
    for body, want_msg in (({"source": "en", "target": "en"}, "unsupported language pair"),
                           ({"source": "fr"}, "unsupported source language 'fr'"),
                           ({"target": "fr"}, "unsupported target language 'fr'")):
        e = translate(s, dict(body, text=text), expect=400)["error"]
        check(want_msg in e and "en to de, de to en" in e, f"{body}: {e}")
    st, _, b = request(s, "GET", "/heads?model=nope")
    e = json.loads(b)["error"]
    check(st == 400 and "moa-en-de-tiny" in e and DE_EN_NAME in e, f"unknown model: {st} {e}")
    m = parse_prometheus(request(s, "GET", "/metrics")[2].decode())
    info = " ".join(m["moa_info"])
    check('model="moa-en-de-tiny"' in info and f'model="{DE_EN_NAME}"' in info, info)
    req = m["moa_model_requests_total"]
    check(req[f'model="{DE_EN_NAME}"'] == 4 and req['model="moa-en-de-tiny"'] == 3, f"{req}")
    check(any(f'model="{DE_EN_NAME}"' in k for k in m["moa_expert_tokens_total"]), "expert labels")


@test
def test_several_models_cache_and_batching():
    s = multi_server()
    src = sentences(12, 60)
    def hits() -> float:
        return parse_prometheus(request(s, "GET", "/metrics")[2].decode())["moa_cache_hits_total"][""]
    h0 = hits()
    translate(s, {"text": src[0], "target": "de"})
    j = translate(s, {"text": src[0], "target": "en"})
    check(hits() == h0 and j["model"] == DE_EN_NAME, "the cache key includes the model")
    translate(s, {"text": src[0], "target": "en"})
    check(hits() == h0 + 1, "same model, same text: a hit")
    # the two models' requests batched together give what each gives alone
    body = lambda i: {"text": src[i], "target": ["de", "en"][i % 2], "beam_size": 1 + i % 4,
                      "trace": True}  # traced: never from the cache
    alone = [translate(s, body(i)) for i in range(len(src))]
    with cf.ThreadPoolExecutor(max_workers=len(src)) as ex:
        together = list(ex.map(lambda i: translate(s, body(i)), range(len(src))))
    for i in range(len(src)):
        check(together[i]["model"] == alone[i]["model"] ==
              ["moa-en-de-tiny", DE_EN_NAME][i % 2], f"{i}: model")
        check(together[i]["translatedText"] == alone[i]["translatedText"], f"{i}: text")


@test
def test_several_models_config_env_and_refusals():
    de_en = model_copy(DE_EN_NAME, "de", "en")
    conf = os.path.join(TMP, "multi.conf")
    with open(conf, "w") as f:
        f.write(f"model = {MODEL} , {de_en}\n")
    r = subprocess.run([ARGS.server, "--config", conf, "--print-config"], capture_output=True,
                       text=True, timeout=60)
    check(r.returncode == 0 and f"{MODEL} , {de_en}" in r.stdout, r.stdout + r.stderr)
    s = Server("multi-env", env={"MOA_MODEL": f"{de_en},{MODEL}"})
    try:
        h = json.loads(request(s, "GET", "/health")[2])
        check([m["name"] for m in h["models"]] == [DE_EN_NAME, "moa-en-de-tiny"], f"{h}")
        check(translate(s, {"text": "Delete"})["model"] == DE_EN_NAME, "MOA_MODEL's first")
    finally:
        s.stop()
    for extra, msg in (([MODEL], "have the same name"),
                       ([model_copy("en-de-again", "en", "de")], "both translate en to de")):
        r = subprocess.run([ARGS.server, "--config", os.devnull, "--port", str(free_port()),
                            "--model", MODEL, "--model", extra[0]],
                           capture_output=True, text=True, timeout=120)
        check(r.returncode != 0 and msg in r.stderr, f"{extra}: {r.returncode} {r.stderr[-300:]}")


@test
def test_probe_help_config():
    s = main_server()
    r = subprocess.run([ARGS.server, "--probe", "/ready", "--port", str(s.port),
                        "--listen", "127.0.0.1"], capture_output=True, text=True)
    check(r.returncode == 0, f"probe: {r.returncode} {r.stderr}")
    r = subprocess.run([ARGS.server, "--probe", "/ready", "--port", str(free_port())],
                       capture_output=True, text=True)
    check(r.returncode == 1, "probe of a closed port fails")
    r = subprocess.run([ARGS.server, "--help"], capture_output=True, text=True)
    check(r.returncode == 0, "--help")
    conf = os.path.join(REPO, "conf", "moa-server.conf")
    keys = re.findall(r"^#?\s*([a-z_]+)\s*=", open(conf).read(), re.M)
    for k in keys:
        check(f"--{k.replace('_', '-')}" in r.stdout and f"MOA_{k.upper()}" in r.stdout,
              f"--help lacks {k}")
    check(len(set(keys)) >= 20, f"conf file documents {len(set(keys))} options")
    r = subprocess.run([ARGS.server, "--config", conf, "--print-config", "--port", "9999"],
                       capture_output=True, text=True, env=dict(os.environ, MOA_HTTP_THREADS="3"))
    check(r.returncode == 0 and "port = 9999" in r.stdout and "http_threads = 3" in r.stdout,
          f"flags and env override: {r.stdout} {r.stderr}")
    r = subprocess.run([ARGS.server, "--max-queue", "zero"], capture_output=True, text=True)
    check(r.returncode == 2 and "max_queue" in r.stderr, "bad value refused")
    r = subprocess.run([ARGS.server, "--model", "/nonexistent", "--port", str(free_port()),
                        "--config", os.devnull], capture_output=True, text=True, timeout=WAIT_LIMIT)
    check(r.returncode == 1 and "nonexistent" in r.stderr, f"missing model: {r.returncode}")


# --- a subword-nmt model (Moses + BPE, converted from the paper's fairseq layout) ------

BPE_MODEL = os.path.join(REPO, "tests", "fixtures", "models", "tiny-bpe")
REFERENCE = os.path.join(REPO, "train", "moa_reference.py")


def run_reference(args: List[str], n: int) -> List[Dict[str, Any]]:
    r = subprocess.run(["/usr/bin/python3", REFERENCE, "--model", BPE_MODEL, "--json",
                        "--threads", "1"] + args, capture_output=True, text=True, check=True,
                       timeout=600)
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    check(len(rows) == n, f"reference: {len(rows)} rows for {n} lines")
    return rows


@test
def test_bpe_model_matches_reference():
    """tests/fixtures/models/tiny-bpe (a checkpoint in the authors' layout,
    converted with --bpe-codes) through the server: the same text as the CLI,
    the same source ids as the Python tokenizer, the same tokens as the
    reference's greedy search (but after a near-tie), every token's log-prob
    within 1e-4 of the reference scoring the same ids; traces and /heads with
    the BPE pieces."""
    if "bpe" not in SERVERS:
        SERVERS["bpe"] = Server("bpe", "--cache-size", "0", model=BPE_MODEL)
    s = SERVERS["bpe"]
    src = sentences(16, 40) + ["Don't stop-loss: 5,300 items (50%)...", "Mr. Smith's \"e-mail\"."]
    # the engine path, as the CLI has it: one unit per line, no sentinels
    got = translate(s, {"text": src, "beam_size": 1, "trace": True, "return_scores": True,
                        "split_sentences": False, "protect_placeholders": False})
    cli = os.path.join(os.path.dirname(ARGS.server), "moa-translate")
    if not os.path.exists(cli):
        cli = os.path.join(REPO, "build", "release", "moa-translate")
    r = subprocess.run([cli, "--model", BPE_MODEL, "--beam", "1", "--json"],
                       input="\n".join(src) + "\n", capture_output=True, text=True, check=True)
    cli_rows = [json.loads(line) for line in r.stdout.splitlines()]
    with open(os.path.join(BPE_MODEL, "vocab.txt"), encoding="utf-8") as f:
        vocab = f.read().split("\n")[:-1]
    ids: Dict[str, int] = {}
    for i, piece in enumerate(vocab):
        ids.setdefault(piece, i)
    inp = os.path.join(TMP, "bpe-input.txt")
    with open(inp, "w", encoding="utf-8") as f:
        f.write("\n".join(src) + "\n")
    ref_rows = run_reference(["--input", inp, "--beam", "1"], len(src))
    pairs = os.path.join(TMP, "bpe-ids.tsv")
    with open(pairs, "w") as f:
        for row in cli_rows:
            f.write(" ".join(map(str, row["source_ids"][:-1])) + "\t" +
                    " ".join(map(str, row["hypotheses"][0]["ids"][:-1])) + "\n")
    scored = run_reference(["--score", pairs, "--ids"], len(src))
    same_search = 0
    for i, (t, c, rr, sc) in enumerate(zip(got["translations"], cli_rows, ref_rows, scored)):
        h = c["hypotheses"][0]
        check(t["text"] == h["text"], f"line {i}: server {t['text']!r} != CLI {h['text']!r}")
        seg = t["trace"][0]
        src_ids = [ids[p] for p in seg["source_pieces"]]
        tgt_ids = [ids[p] for p in seg["target_pieces"]]
        check(src_ids == c["source_ids"] == rr["source_ids"],
              f"line {i}: source ids server/CLI/reference differ")
        check(tgt_ids == h["ids"], f"line {i}: server and CLI tokens differ")
        if rr["near_tie"]["step"] is None:
            check(h["ids"] == rr["hypotheses"][0]["ids"] and
                  h["text"] == rr["hypotheses"][0]["text"], f"line {i}: reference search differs")
            same_search += 1
        diffs = [abs(a - b) for a, b in zip(h["token_logprobs"], sc["token_logprobs"])]
        check(len(sc["token_logprobs"]) == len(h["ids"]) and max(diffs) <= 1e-4,
              f"line {i}: token log-probs differ from the reference by {max(diffs):.2e}")
        check(abs(t["score"] - sum(sc["token_logprobs"]) / len(h["ids"])) <= 1e-4,
              f"line {i}: score {t['score']} vs reference")
    check(same_search >= len(src) - 2, f"only {same_search} searches compared in full")
    check(got["model"] == "tiny-bpe", f"model {got['model']}")
    check(any(p.endswith("@@") for t in got["translations"] for p in t["trace"][0]["source_pieces"]),
          "traces show the subword-nmt pieces (with @@)")
    h = json.loads(request(s, "GET", "/heads")[2])
    n_src = sum(len(t["trace"][0]["source_pieces"]) for t in got["translations"])
    check(h["source_tokens"] == n_src, f"/heads counts {h['source_tokens']} != {n_src}")
    pieces = {p["piece"] for l in h["modules"]["encoder"]["layers"] for e in l["experts"]
              for p in e["top_pieces"]}
    check(pieces and pieces <= set(vocab), f"/heads pieces are vocab.txt's: {sorted(pieces)[:5]}")


# --- precision and the vocabulary shortlist (docs/moa-spec.md section 9) -------------------

@test
def test_precision_and_shortlist_servers_match_cli():
    """A server with precision int8 (and bf16), with and without the
    shortlist, answers what the CLI with the same settings writes; /health
    and moa_info name the settings."""
    src = sentences(16, 40)
    for prec, short in (("int8", False), ("bf16", False), ("int8", True), ("f32", True)):
        name = f"{prec}{'-shortlist' if short else ''}"
        flags = ["--cache-size", "0", "--precision", prec] + (["--shortlist", "on"] if short else [])
        s = Server(name, *flags)
        st, _, b = request(s, "GET", "/health")
        health = json.loads(b)
        check(st == 200 and health["status"] == "ok" and health["precision"] == prec
              and health["shortlist"] is short, f"{name}: /health {b!r}")
        m = parse_prometheus(request(s, "GET", "/metrics")[2].decode())
        info = next(iter(m["moa_info"]))
        check(f'precision="{prec}"' in info and f'shortlist="{"on" if short else "off"}"' in info,
              f"{name}: moa_info {info}")
        for beam in (1, 4):
            cli = ["--precision", prec] + (["--shortlist"] if short else [])
            want = cli_translate(src, beam, *cli)
            # the engine path, as the CLI has it (no splitting, no protection)
            got = translate(s, {"text": src, "beam_size": beam, "split_sentences": False,
                                "protect_placeholders": False})["translatedText"]
            check(got == want, f"{name}, beam {beam}: server {got} != CLI {want}")
        log = s.read_log()
        check(f"precision {prec}: matrix products" in log, f"{name}: start log")
        check(("vocabulary shortlist on" if short else "vocabulary shortlist off") in log,
              f"{name}: start log names the shortlist")
        check(s.stop() == 0, f"{name}: exit status")


def overflowing_model() -> str:
    """tiny-trained with its embeddings set to +-3e38: finite (the loader takes it), but every
    number the model computes overflows to NaN (what fuzz_model_load found)."""
    import array
    d = os.path.join(TMP, "model-overflowing")
    if os.path.isdir(d):
        return d
    os.makedirs(d)
    for f in ("config.json", "sentencepiece.model", "vocab.txt"):
        os.symlink(os.path.join(MODEL, f), os.path.join(d, f))
    with open(os.path.join(MODEL, "model.safetensors"), "rb") as f:
        blob = bytearray(f.read())
    n = int.from_bytes(blob[:8], "little")
    t = json.loads(blob[8:8 + n])["encoder.embed_tokens.weight"]
    assert t["dtype"] == "F32", t
    a, b = (8 + n + o for o in t["data_offsets"])
    big = array.array("f", [3e38 if i % 2 else -3e38 for i in range((b - a) // 4)])
    blob[a:b] = big.tobytes()
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(blob)
    return d


@test
def test_overflowing_model_answers_clear_error():
    """A model whose numbers overflow gives no translation: a 500 that says so, for every
    request, nothing cached or half-answered, and the server goes on serving."""
    s = Server("overflowing", model=overflowing_model())
    try:
        for body in ({"text": "Open the file."}, {"text": ["One.", "Two."]},
                     {"text": "Open the file.", "alternatives": 2, "beam_size": 4}):
            st, _, data = request(s, "POST", "/translate", body)
            j = json.loads(data)
            check(st == 500 and "no usable scores for sentence 1" in j.get("error", ""),
                  f"{body}: {st} {data[:300]!r}")
        check(request(s, "GET", "/health")[0] == 200, "health after the failures")
        check(translate_status(s, 500) == 3, "three 500s counted")
        check(metrics(s)["moa_cache_entries"].get("", 0) == 0, "nothing cached")
    finally:
        check(s.stop() == 0, "exit status")


@test
def test_shortlist_without_file_refused():
    d = os.path.join(TMP, "model-without-shortlist")
    os.makedirs(d, exist_ok=True)
    for f in ("config.json", "model.safetensors", "sentencepiece.model", "vocab.txt"):
        dst = os.path.join(d, f)
        if not os.path.exists(dst):
            os.symlink(os.path.join(MODEL, f), dst)
    r = subprocess.run([ARGS.server, "--model", d, "--port", str(free_port()), "--listen",
                        "127.0.0.1", "--config", os.devnull],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MOA_SHORTLIST="1"))
    check(r.returncode == 1, f"exit status {r.returncode}")
    check("shortlist.tsv: cannot open" in r.stderr and "make shortlist" in r.stderr, r.stderr[-500:])
    r = subprocess.run([ARGS.server, "--precision", "int4", "--config", os.devnull],
                       capture_output=True, text=True)
    check(r.returncode == 2 and "expected f32, bf16 or int8" in r.stderr, r.stderr)


def main() -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=os.path.join(REPO, "build", "release", "moa-server"),
                   help="the moa-server binary to test")
    p.add_argument("--sanitizer", action="store_true",
                   help="an ASan/UBSan build: longer start-up waits, and its log is checked for "
                        "sanitizer reports")
    p.add_argument("-k", default="", help="run only tests whose name contains this")
    p.add_argument("--precision", default="f32", choices=("f32", "bf16", "int8"),
                   help="every server (and the CLI it is compared with) runs this precision "
                        "(default f32; the tests of other settings set their own)")
    ARGS = p.parse_args()
    passed = failed = 0
    for name, fn in TESTS:
        if ARGS.k not in name:
            continue
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"ok   {name} ({time.time() - t0:.1f} s)", flush=True)
        except Exception as e:  # one failure must not stop the suite
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc()
    for name, s in SERVERS.items():
        try:
            rc = s.stop()
            if rc != 0:
                failed += 1
                print(f"FAIL server {name} exited with {rc}:\n{s.read_log()[-3000:]}")
        except Exception as e:
            failed += 1
            print(f"FAIL server {name}: {e}")
    if ARGS.sanitizer:
        for f in sorted(os.listdir(TMP)):
            if f.endswith(".log"):
                text = open(os.path.join(TMP, f), errors="replace").read()
                if "ERROR: AddressSanitizer" in text or "runtime error:" in text or \
                        "ERROR: LeakSanitizer" in text:
                    failed += 1
                    print(f"FAIL sanitizer report in {f}:\n{text[-4000:]}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
