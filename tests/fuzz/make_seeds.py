#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets (tests/fuzz/README.md)
into tests/fuzz/corpus/<target>/seed-*. Standard library only.

    python3 tests/fuzz/make_seeds.py          # from the repository root

The seeds are where fuzzing starts; after a run, `make fuzz-merge` keeps
the inputs (seeds or found ones) that add coverage. Formats: the comment at
the top of each tests/fuzz/fuzz_<target>.c.
"""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "models")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- /translate bodies: selector byte + body ----------------------------------------

def translate_parse():
    J, FORM, NONE, PLUS, TEXT = 0, 1, 2, 3, 6
    KEY_HDR, WRONG_KEY, KEYS_ON, HEADS = 8, 16, 32, 64
    seeds = {
        "json-text": (J, {"text": "Delete unused files"}),
        "json-q-array-options": (J, {"q": ["Open the file.", "Save it!"], "source": "en",
                                     "target": "de", "format": "text", "beam_size": 4,
                                     "num_hypotheses": 2, "alternatives": 1,
                                     "return_scores": True}),
        "json-html-trace": (J, {"text": "<p>Hello <b>world</b> &amp; more</p><script>x<y</script>",
                                "format": "html", "trace": True}),
        "json-sampling": (J, {"text": "A long line. With many sentences! And more? Yes... "
                                      "Indeed, it goes on and on without end for a while.",
                              "sampling_topk": 5, "sampling_topp": 0.9,
                              "sampling_temperature": 0.7, "seed": 42, "max_length": 20,
                              "min_length": 2, "no_unk": True, "length_penalty": 0.6}),
        "json-lines": (J, {"text": "line one\n\n  line two  \r\nline three\t"}),
        "json-auto-array": (NONE, {"text": ["a", "b"], "source": "auto"}),
        "json-key-header": (J | KEY_HDR | KEYS_ON, {"text": "key via header"}),
        "json-key-field": (J | KEYS_ON, {"text": "needs key", "api_key": "fuzz-key-1"}),
        "json-key-wrong": (J | WRONG_KEY | KEYS_ON, {"text": "wrong key"}),
        "json-heads": (J | HEADS, {"text": "heads on, traces for all", "beam_size": 1}),
        "json-bad-values": (PLUS, {"text": "x", "beam_size": 17, "seed": -1,
                                   "sampling_topp": "0.5", "trace": "yes"}),
        "json-seed-string": (J, {"text": "seeded", "seed": "9223372036854775808",
                                 "sampling_topk": 1, "beam_size": 16,
                                 "num_hypotheses": 16}),
        "json-nulls": (J, {"text": "nulls", "beam_size": None, "format": None}),
    }
    for name, (sel, body) in seeds.items():
        write("translate_parse", name, bytes([sel]) + json.dumps(body, ensure_ascii=False).encode())
    raw = {
        "form-basic": (FORM, "q=Hello+world&source=en&target=de&q=second%20text&beam_size=2&seed=7"),
        "form-html-alt": (5, "text=caf%C3%A9+%3Cb%3Ebold%3C%2Fb%3E&format=html&alternatives=2"
                             "&api_key=fuzz-key-1&return_scores=on&no_unk=1"),
        "form-bad-escape": (FORM, "q=%zz&beam_size=x"),
        "form-empty-pairs": (FORM, "&&=&q&text=a&text=b&text="),
        "plain-415": (TEXT, '{"text": "x"}'),
        "json-not-object": (J, "[1,2]"),
        "json-empty-text": (J, '{"text": ""}'),
        "json-truncated": (J, '{"text": "abc'),
        "json-invalid-utf8": (J, b'{"text": "\xff\xfe"}'),
        "json-escapes": (J, '{"text": "tab\\tnl\\nnul\\u0000 \\ud83d\\ude00"}'),
    }
    for name, (sel, body) in raw.items():
        if isinstance(body, str):
            body = body.encode()
        write("translate_parse", name, bytes([sel]) + body)


# --- text layer: two selector bytes (see fuzz_text.c) + text ---------------------------

def text():
    HTML, ACCEL, SENT, ATTN = 1, 2, 4, 8

    def sel(flags, limit_n, edit):
        return bytes([flags | (limit_n << 4), edit])
    seeds = {
        "plain-lines": (SENT, 15, 0, "  First line.  \n\nSecond line\t\r\n\tthird\n"),
        "plain-sentences": (SENT | ATTN, 2, 3, "This is a sentence. And another one! Is it? Yes… "
                                               "日本語の文。次の文！ \"Quoted.\" (Bracketed.) e.g. "
                                               "Mr. Smith, see Fig. 3. Version 3.14 at www.x.org."),
        "plain-nospace": (0, 0, 0, "abcdefghijklmnopqrstuvwxyzäöüß日本語"),
        "printf": (SENT | ATTN, 15, 2, "Delete %s files? %1$s of %2$d, %-10.2f%% done. "
                                       "%(name)s and %L1 {0} {name} {0,number} {{var}} ${HOME}."),
        "accelerator": (ACCEL | SENT, 15, 16, "&Save the file"),
        "accelerator-underscore": (ACCEL, 15, 48, "Open _File..."),
        "plain-tags": (SENT | ATTN, 6, 1, "Click <b>here</b> or <a href=\"x\">there</a> &amp; "
                                          "<file> stays text. Use <br/> now."),
        "html-basic": (HTML | SENT, 15, 0, "<p class=\"a>b\">Hello <b>world</b> &amp; &#x1F600;. "
                                           "Next sentence.</p><p>Two</p>"),
        "html-raw": (HTML, 4, 5, "<script>if (a<b) x();</script><style>p{}</style>"
                                 "<pre>keep\n me</pre><code>x</code>text<textarea>t</textarea>"),
        "html-attrs": (HTML | SENT | ATTN, 15, 2, "<img alt=\"A cat.\" src=x> <a title='Go home' "
                                                  "href=/>Home <i>now</i></a><div title=x>Text</div>"),
        "html-comment": (HTML, 1, 0, "<!-- note -->visible<!-- unclosed"),
        "html-unclosed": (HTML, 15, 33, "a < b and <em>c</em> &bogus <div title='x"),
        "html-crossed": (HTML | ATTN, 15, 32, "<b><i>crossed</b></i> and </u>stray<s> tags"),
        "html-entities": (HTML, 0, 7, "&;&#;&#x;&abcdefghijklmnopqrstuvwxyzabcdefghij;&1a;"),
    }
    for name, (flags, limit_n, edit, t) in seeds.items():
        write("text", name, sel(flags, limit_n, edit) + t.encode("utf-8"))


# --- config: file \0 args (lines) \0 env (NAME=VALUE lines, MOA_ prefixed) -----------

def conf():
    with open(os.path.join(ROOT, "conf", "moa-server.conf"), "rb") as f:
        shipped = f.read()
    seeds = {
        "shipped-flags-env": (shipped, "--port\n9090\n--log-level\ndebug",
                              "MAX_QUEUE=10\nHEADS=false"),
        "workers-print": ("port = 8081\nmax_batch_rows = 32\ncompute_workers = 2\n",
                          "--compute-threads=1\n--print-config", ""),
        "quoted-help": ("listen = \"127.0.0.1\"\n# comment\nmodel = weights/x # trailing\n",
                        "--help", ""),
        "unknown-key": ("bogus = 1\n", "", ""),
        "rows-too-few": ("", "--max-inflight\n0\n--max-batch-rows\n16\n--compute-workers\n4", ""),
        "env-only": ("", "", "TIMEOUT=0.5\nLOG_FORMAT=json\nCONFIG=/etc/passwd\nIDLE_TIMEOUT=1e9"),
        "config-flag": ("max_body = 1024\n", "--config\n/dev/zero\n--config=/dev/tty\n--version", ""),
        "threads-conflict": ("compute_workers = 3\ncompute_threads = 2\n", "", "LOG_TEXT=yes"),
        "no-value": ("split_tokens\n", "--port", ""),
        "long-line": ("model = " + "m" * 5000 + "\n", "--api-keys-file\n" + "k" * 1100, ""),
    }
    for name, (f, a, e) in seeds.items():
        if isinstance(f, str):
            f = f.encode()
        write("conf", name, f + b"\0" + a.encode() + b"\0" + e.encode())


# --- model directories: config.json \0 model.safetensors -------------------------------

DT = {"F32": 4, "F16": 2, "BF16": 2}


def pack(dtype, values):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    out = bytearray()
    for v in values:
        out += struct.pack("<f", v)[2:4]  # bfloat16: the top half
    return bytes(out)


def tiny_model(d=2, h=1, E=2, k=1, F=2, V=4, Le=1, Ld=1, share=True, prenorm=False,
               bias=False, dtype="F32", act="relu", maxpos=16, extra=(), align=8):
    cfg = {"format": "moa-translation", "format_version": 1, "d_model": d,
           "encoder_layers": Le, "decoder_layers": Ld, "ffn_dim": F, "activation": act,
           "normalize_before": prenorm, "num_experts": E, "top_k": k, "head_dim": h,
           "attention_bias": bias, "vocab_size": V, "share_embeddings": share,
           "scale_embedding": True, "max_positions": maxpos, "layernorm_eps": 1e-5,
           "bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3, "decoder_start_id": 2,
           "source_lang": "en", "target_lang": "de", "name": "fuzz-seed"}
    tensors = []

    def add(name, shape, fill=None):
        n = 1
        for s in shape:
            n *= s
        vals = [fill] * n if fill is not None else [((i * 37 + len(name)) % 17 - 8) / 16.0
                                                      for i in range(n)]
        tensors.append((name, shape, vals))

    def ln(p):
        add(p + ".weight", [d], 1.0)
        add(p + ".bias", [d], 0.0)

    def attn(p):
        add(p + ".k_proj.weight", [h, d])
        if bias:
            add(p + ".k_proj.bias", [h])
        add(p + ".v_proj.weight", [h, d])
        if bias:
            add(p + ".v_proj.bias", [h])
        add(p + ".q_proj.w_gate", [d, E])
        add(p + ".q_proj.experts.w", [E, d, h])
        add(p + ".q_proj.output_experts.w", [E, h, d])

    def ffn(p):
        add(p + ".fc1.weight", [F, d])
        add(p + ".fc1.bias", [F])
        add(p + ".fc2.weight", [d, F])
        add(p + ".fc2.bias", [d])

    add("encoder.embed_tokens.weight", [V, d])
    for i in range(Le):
        p = "encoder.layers.%d" % i
        attn(p + ".self_attn")
        ln(p + ".self_attn_layer_norm")
        ffn(p)
        ln(p + ".final_layer_norm")
    if prenorm:
        ln("encoder.layer_norm")
    if not share:
        add("decoder.embed_tokens.weight", [V, d])
    for i in range(Ld):
        p = "decoder.layers.%d" % i
        attn(p + ".self_attn")
        ln(p + ".self_attn_layer_norm")
        attn(p + ".encoder_attn")
        ln(p + ".encoder_attn_layer_norm")
        ffn(p)
        ln(p + ".final_layer_norm")
    if prenorm:
        ln("decoder.layer_norm")
    if not share:
        add("decoder.output_projection.weight", [V, d])
    for name, shape in extra:
        if name == "decoder.embed_tokens.weight":  # an equal copy (share_embeddings)
            tensors.append((name, shape, list(tensors[0][2])))
        else:
            add(name, shape)

    header, data = {"__metadata__": {"format": "pt"}}, bytearray()
    for name, shape, vals in tensors:
        b = pack(dtype, vals)
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    hj = json.dumps(header, separators=(",", ":")).encode()
    while len(hj) % 8 != align % 8:
        hj += b" "
    st = struct.pack("<Q", len(hj)) + hj + bytes(data)
    return json.dumps(cfg).encode(), st


def model_load():
    variants = {
        "f32-post-relu": {},
        "f16-pre-gelu-bias-separate": dict(dtype="F16", prenorm=True, act="gelu", bias=True,
                                           share=False),
        "bf16-pre": dict(dtype="BF16", prenorm=True),
        "k-equals-e-maxpos3": dict(E=3, k=3, maxpos=3),
        "misaligned-f32": dict(align=1),
        "two-layers-ignored": dict(Le=2, Ld=2, E=3, k=2, d=4, h=2,
                                   extra=[("encoder.layers.0.self_attn.q_proj.w_noise", [2, 3]),
                                          ("decoder.embed_tokens.weight", [4, 4])]),
    }
    for name, kw in variants.items():
        cfg, st = tiny_model(**kw)
        write("model_load", name, cfg + b"\0" + st)
    # The fixture models' configs and headers (their data cut short).
    for m in ("tiny-random", "tiny-trained"):
        with open(os.path.join(FIXTURES, m, "config.json"), "rb") as f:
            cfg = f.read()
        with open(os.path.join(FIXTURES, m, "model.safetensors"), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            f.seek(0)
            st = f.read(8 + n + 64)
        write("model_load", "fixture-" + m, cfg + b"\0" + st)


# --- tokenizer: selector byte (bit 0 add eos) + text / int32 ids -----------------------

def tokenizer():
    seeds = {
        "sentence": (1, "Delete unused files".encode()),
        "unicode": (0, "Ünïcödé 日本語 😀 ⁇".encode()),
        "spaces": (1, b"   \t "),
        "empty": (1, b""),
        "invalid-utf8": (0, b"ab\xff\xfecd"),
        "nul": (1, b"a\0b"),
        "ids-in-range": (0, struct.pack("<6i", 5, 6, 7, 2, 0, 1)),
        "ids-out-of-range": (0, struct.pack("<4i", -1, 2000, 2147483647, -2147483648)),
    }
    for name, (sel, payload) in seeds.items():
        write("tokenizer", name, bytes([sel]) + payload)


if __name__ == "__main__":
    which = sys.argv[1:] or ["translate_parse", "text", "conf", "model_load", "tokenizer"]
    for w in which:
        globals()[w]()
