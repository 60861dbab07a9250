// moa_cli.c — moa-translate: translate (or score) text from the command line.
//
//     moa-translate --model weights/moa-en-de < in.en > out.de
//     moa-translate --model DIR --json --trace --input in.en
//     moa-translate --model DIR --score pairs.tsv
//
// Reads one sentence a line, decodes --batch sentences at a time through a
// moa_session and writes the results in input order after each batch, so
// output streams. Only the public APIs are used: model/moa_model.h,
// tokenizer/moa_tokenizer.h and common/moa_utf8.h. Options and limits: docs/moa-spec.md §6.
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "moa_model.h"
#include "moa_tokenizer.h"
#include "moa_utf8.h"

#define CLI_NAME "moa-translate"
#define CLI_VERSION "0.1.0"

// Limits of spec §6 that do not depend on the model (the model-dependent ones
// are checked once it is loaded). moa_search_opts_check stays the authority;
// these only let the messages name the flag.
#define CLI_MAX_BEAM 16
#define CLI_MAX_THREADS 256
// A worker reads this many batches' worth of lines at once and keeps its
// session full while translating them: a sentence that finishes makes room
// for the next at once (continuous batching), so long sentences do not hold
// a whole batch back. Output still follows input order.
#define CLI_CHUNK 32
#define CLI_MAX_BATCH 4096
#define CLI_SEED_MAX (UINT64_C(1) << 63)

enum { EXIT_USAGE = 2 };

// --- arguments ---------------------------------------------------------------

typedef struct cli_args {
    const char *model_dir;
    const char *input;          // NULL or "-": stdin
    const char *output;         // NULL or "-": stdout
    const char *score;          // forced decoding of a TSV file, or NULL
    moa_search_opts opts;
    int beam_given, temp_given, seed_given;
    int threads;                // workers, each its own session and thread
    int blas_threads;           // OpenBLAS threads inside each worker
    int batch;
    int trace, json, verbose;
    moa_load_opts load;         // --precision
} cli_args;

// Long-only options get values above the char range.
enum {
    OPT_MODEL = 256, OPT_INPUT, OPT_OUTPUT, OPT_BEAM, OPT_NBEST, OPT_LENPEN,
    OPT_MAXLEN, OPT_MINLEN, OPT_NOUNK, OPT_TOPK, OPT_TOPP, OPT_TEMP, OPT_SEED,
    OPT_THREADS, OPT_BLAS_THREADS, OPT_BATCH, OPT_SCORE, OPT_TRACE, OPT_JSON, OPT_VERBOSE,
    OPT_VERSION, OPT_HELP, OPT_PRECISION, OPT_SHORTLIST,
};

static const struct option long_opts[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"input", required_argument, NULL, OPT_INPUT},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"beam", required_argument, NULL, OPT_BEAM},
    {"nbest", required_argument, NULL, OPT_NBEST},
    {"length-penalty", required_argument, NULL, OPT_LENPEN},
    {"max-length", required_argument, NULL, OPT_MAXLEN},
    {"min-length", required_argument, NULL, OPT_MINLEN},
    {"no-unk", no_argument, NULL, OPT_NOUNK},
    {"sample-topk", required_argument, NULL, OPT_TOPK},
    {"sample-topp", required_argument, NULL, OPT_TOPP},
    {"temperature", required_argument, NULL, OPT_TEMP},
    {"seed", required_argument, NULL, OPT_SEED},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"blas-threads", required_argument, NULL, OPT_BLAS_THREADS},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"precision", required_argument, NULL, OPT_PRECISION},
    {"shortlist", no_argument, NULL, OPT_SHORTLIST},
    {"score", required_argument, NULL, OPT_SCORE},
    {"trace", no_argument, NULL, OPT_TRACE},
    {"json", no_argument, NULL, OPT_JSON},
    {"verbose", no_argument, NULL, OPT_VERBOSE},
    {"version", no_argument, NULL, OPT_VERSION},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static void print_help(FILE *f) {
    fputs(
        "Usage: " CLI_NAME " --model DIR [options]\n"
        "\n"
        "Translates UTF-8 text, one sentence a line, with a Mixture-of-Attention-heads\n"
        "model (docs/moa-spec.md), or scores given translations (--score).\n"
        "\n"
        "Input and output:\n"
        "  --model DIR          model directory: config.json, model.safetensors,\n"
        "                       vocab.txt, and sentencepiece.model or (subword-nmt\n"
        "                       models) bpecodes (required)\n"
        "  --input FILE         sentences to translate, one a line, any length; a\n"
        "                       trailing \\r is dropped, an empty line is translated\n"
        "                       too (default: standard input; \"-\" also means it)\n"
        "  --output FILE        where results go (default: standard output)\n"
        "  --json               one JSON object a line instead of text:\n"
        "                       {\"index\": I, \"source_ids\": [...], \"hypotheses\":\n"
        "                       [{\"ids\", \"text\", \"score\", \"log_prob\",\n"
        "                       \"token_logprobs\"}]}, best first; ids end with eos\n"
        "  --trace              add each hypothesis' routing trace (picked experts,\n"
        "                       gates and router margin per layer and position) to\n"
        "                       the JSON output; implies --json\n"
        "  --score FILE         forced decoding instead of translation: FILE holds\n"
        "                       source<TAB>target lines (\"-\": standard input);\n"
        "                       writes one JSON line a pair: {\"index\", \"source_ids\",\n"
        "                       \"target_ids\", \"token_logprobs\", \"log_prob\"} (ids\n"
        "                       end with eos), plus \"trace\" with --trace. Cannot be\n"
        "                       combined with --input\n"
        "\n"
        "Text output: one line per input line, the best translation. With --nbest N,\n"
        "N lines per input line, best first: INDEX<TAB>SCORE<TAB>TEXT, where INDEX\n"
        "counts input lines from 0 and SCORE = log_prob / length^length_penalty\n"
        "(length counts eos).\n"
        "\n"
        "Search (spec section 4):\n"
        "  --beam N             beam size, 1..16 (default 4; 1 = greedy; 1 when a\n"
        "                       sampling flag below is given)\n"
        "  --nbest N            hypotheses per sentence, 1..beam (default 1)\n"
        "  --length-penalty F   rank hypotheses by log_prob / length^F, 0..10\n"
        "                       (default 1.0)\n"
        "  --max-length N       most target tokens, eos not counted,\n"
        "                       1..max_positions-2 of the model (default 0: per\n"
        "                       sentence min(max_positions-2, 2*source_length+10),\n"
        "                       source_length counting eos)\n"
        "  --min-length N       fewest target tokens before eos may be produced,\n"
        "                       0..max-length (default 1)\n"
        "  --no-unk             never produce <unk>\n"
        "\n"
        "Sampling (needs --beam 1, which is the default once a flag below is given;\n"
        "it samples when top-k is above 1, top-p below 1 or the temperature not 1):\n"
        "  --sample-topk N      draw from the N most probable tokens, 0..vocab_size\n"
        "                       (default 0: no limit; 1 = greedy, with --beam N a\n"
        "                       beam search)\n"
        "  --sample-topp F      then from the smallest set of most probable tokens\n"
        "                       whose probability reaches F, (0,1] (default 1.0);\n"
        "                       below 1 without --sample-topk it samples from the\n"
        "                       whole vocabulary (top-k = vocab_size)\n"
        "  --temperature F      divide the logits by F before drawing, (0,100]\n"
        "                       (default 1.0; alone, it samples from the whole\n"
        "                       vocabulary)\n"
        "  --seed N             0..2^63 (default: random, shown by --verbose). The\n"
        "                       sentence on input line i (from 0) is drawn with seed\n"
        "                       N+i, so a run is reproducible whatever --batch is\n"
        "\n"
        "Resources:\n"
        "  --threads N          worker threads, 1..256 (default 1): each worker has\n"
        "                       its own session and translates whole batches with\n"
        "                       single-threaded BLAS, N batches at a time (data\n"
        "                       parallel: the fastest use of N cores). Output order\n"
        "                       and results do not depend on N\n"
        "  --blas-threads M     OpenBLAS threads inside each product, 1..256\n"
        "                       (default 1; with --threads > 1 it must be 1)\n"
        "  --batch N            sentences decoded together, 1..4096 (default 32);\n"
        "                       the session holds batch*beam rows; output is written\n"
        "                       after each batch\n"
        "  --precision P        f32 (default), bf16 or int8: the arithmetic of the\n"
        "                       products with fixed weights (feed-forward, K/V, the\n"
        "                       experts' Q and O, output projection); the weights are\n"
        "                       converted once at load (docs/moa-spec.md section 9).\n"
        "                       Routers, layer norms, softmax and attention stay\n"
        "                       float32. bf16 and int8 need a CPU with AVX2 and use\n"
        "                       one thread per product\n"
        "  --shortlist          run each sentence's output projection and softmax over\n"
        "                       its candidate pieces only (the vocabulary shortlist in\n"
        "                       DIR/shortlist.tsv: what its source pieces translate\n"
        "                       to, the frequent pieces, the specials; docs/moa-spec.md\n"
        "                       section 9). Scores and log-probs are then normalised\n"
        "                       over that set. An error when the file is missing\n"
        "\n"
        "Other:\n"
        "  --verbose            on stderr: model, BLAS core and threads, and at the\n"
        "                       end sentences, tokens, seconds, sentences/s and\n"
        "                       target tokens/s\n"
        "  --version            print the version and exit\n"
        "  --help               print this help and exit\n"
        "\n"
        "A line that cannot be translated (invalid UTF-8, longer than the model\n"
        "allows) gets an empty line in text mode (N lines \"INDEX<TAB><TAB>\" with\n"
        "--nbest N) or {\"index\": I, \"error\": \"...\"} in JSON, and a message on\n"
        "stderr naming the line; the other lines are still translated.\n"
        "\n"
        "Exit status: 0 success; 1 some line failed, or a model, file or engine\n"
        "error; 2 a bad flag or option value.\n",
        f);
}

// Prints "moa-translate: <message>" and a pointer to --help; returns -1.
__attribute__((format(printf, 1, 2)))
static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs(CLI_NAME ": ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry '" CLI_NAME " --help'.\n", stderr);
    return -1;
}

static int parse_int(const char *flag, const char *s, long lo, long hi,
                     const char *range, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return usage_error("--%s '%s': expected an integer in %s", flag, s,
                           range);
    *out = (int)v;
    return 0;
}

// lo_open: the lower bound itself is not valid.
static int parse_float(const char *flag, const char *s, double lo, int lo_open,
                       double hi, const char *range, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v > hi ||
        (lo_open ? v <= lo : v < lo))
        return usage_error("--%s '%s': expected a number in %s", flag, s,
                           range);
    *out = (float)v;
    return 0;
}

static int parse_seed(const char *s, uint64_t *out) {
    char *end = NULL;
    errno = 0;
    // strtoull would accept "-1" and wrap it: digits only.
    unsigned long long v = 0;
    int ok = s[0] >= '0' && s[0] <= '9';
    if (ok) {
        v = strtoull(s, &end, 10);
        ok = !errno && !*end && v <= CLI_SEED_MAX;
    }
    if (!ok) return usage_error("--seed '%s': expected an integer in 0..2^63", s);
    *out = (uint64_t)v;
    return 0;
}

// Returns 0 to go on, 1 when --help/--version was handled, -1 on a usage error.
static int parse_args(int argc, char **argv, cli_args *a) {
    memset(a, 0, sizeof *a);
    moa_search_opts_default(&a->opts);
    a->threads = 1;
    a->blas_threads = 1;
    a->batch = 32;
    moa_load_opts_default(&a->load);
    moa_search_opts *o = &a->opts;
    int c;
    while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
        int r = 0;
        switch (c) {
        case OPT_MODEL: a->model_dir = optarg; break;
        case OPT_INPUT: a->input = optarg; break;
        case OPT_OUTPUT: a->output = optarg; break;
        case OPT_SCORE: a->score = optarg; break;
        case OPT_BEAM:
            r = parse_int("beam", optarg, 1, CLI_MAX_BEAM, "1..16", &o->beam_size);
            a->beam_given = 1;
            break;
        case OPT_NBEST:
            r = parse_int("nbest", optarg, 1, CLI_MAX_BEAM, "1..beam (at most 16)",
                          &o->num_hypotheses);
            break;
        case OPT_LENPEN:
            r = parse_float("length-penalty", optarg, 0, 0, 10, "0..10",
                            &o->length_penalty);
            break;
        case OPT_MAXLEN:
            r = parse_int("max-length", optarg, 0, INT32_MAX,
                          "1..max_positions-2 (0 = default)", &o->max_length);
            break;
        case OPT_MINLEN:
            r = parse_int("min-length", optarg, 0, INT32_MAX, "0..max-length",
                          &o->min_length);
            break;
        case OPT_NOUNK: o->no_unk = 1; break;
        case OPT_TOPK:
            r = parse_int("sample-topk", optarg, 0, INT32_MAX, "0..vocab_size",
                          &o->sampling_topk);
            break;
        case OPT_TOPP:
            r = parse_float("sample-topp", optarg, 0, 1, 1, "(0,1]",
                            &o->sampling_topp);
            break;
        case OPT_TEMP:
            r = parse_float("temperature", optarg, 0, 1, 100, "(0,100]",
                            &o->sampling_temperature);
            a->temp_given = 1;
            break;
        case OPT_SEED:
            r = parse_seed(optarg, &o->seed);
            a->seed_given = 1;
            break;
        case OPT_THREADS:
            r = parse_int("threads", optarg, 1, CLI_MAX_THREADS, "1..256",
                          &a->threads);
            break;
        case OPT_BLAS_THREADS:
            r = parse_int("blas-threads", optarg, 1, CLI_MAX_THREADS, "1..256",
                          &a->blas_threads);
            break;
        case OPT_BATCH:
            r = parse_int("batch", optarg, 1, CLI_MAX_BATCH, "1..4096",
                          &a->batch);
            break;
        case OPT_PRECISION:
            if (moa_precision_parse(optarg, &a->load.precision) != 0)
                r = usage_error("--precision '%s': expected f32, bf16 or int8", optarg);
            break;
        case OPT_SHORTLIST: a->load.shortlist = 1; break;
        case OPT_TRACE: a->trace = 1; a->json = 1; break;
        case OPT_JSON: a->json = 1; break;
        case OPT_VERBOSE: a->verbose = 1; break;
        case OPT_VERSION: printf(CLI_NAME " " CLI_VERSION "\n"); return 1;
        case OPT_HELP: print_help(stdout); return 1;
        default:  // getopt_long already named the flag
            fprintf(stderr, "Try '" CLI_NAME " --help'.\n");
            return -1;
        }
        if (r) return -1;
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!a->model_dir) return usage_error("--model DIR is required");
    if (a->score && a->input)
        return usage_error("--score and --input cannot be combined");
    if (a->threads > 1 && a->blas_threads > 1)
        return usage_error("--blas-threads must be 1 when --threads is above 1 "
                           "(each worker then owns one core)");
    return 0;
}

// Applies what depends on other flags or on the model, then checks the result
// (spec §6). 0, or -1 with a message naming the flag.
static int finish_opts(cli_args *a, const moa_config *cfg) {
    moa_search_opts *o = &a->opts;
    // The engine's defaults, as the server applies them (top-p without top-k,
    // beam 1 when sampling, a random seed).
    moa_search_opts_normalise(o, (a->beam_given ? MOA_OPT_GIVEN_BEAM : 0) |
                                     (a->seed_given ? MOA_OPT_GIVEN_SEED : 0), cfg);
    int sampling = moa_search_opts_sampling(o);
    if (!sampling && (a->temp_given || a->seed_given))
        fprintf(stderr, CLI_NAME ": warning: --temperature and --seed only "
                "matter when sampling (--sample-topk above 1, --sample-topp below 1, "
                "--temperature other than 1)\n");
    if (a->json) o->token_logprobs = 1;
    o->trace = a->trace;

    if (sampling && o->beam_size != 1)
        return usage_error("--beam %d: sampling (--sample-topk, --sample-topp) "
                           "needs --beam 1", o->beam_size);
    if (o->num_hypotheses > o->beam_size)
        return usage_error("--nbest %d: expected an integer in 1..%d (the beam "
                           "size)", o->num_hypotheses, o->beam_size);
    if (o->sampling_topk > cfg->vocab_size)
        return usage_error("--sample-topk %d: expected an integer in 0..%d "
                           "(vocab_size)", o->sampling_topk, cfg->vocab_size);
    if (o->max_length > cfg->max_positions - 2)
        return usage_error("--max-length %d: expected an integer in 1..%d "
                           "(max_positions-2)", o->max_length,
                           cfg->max_positions - 2);
    if (o->max_length > 0 && o->min_length > o->max_length)
        return usage_error("--min-length %d: expected an integer in 0..%d "
                           "(--max-length)", o->min_length, o->max_length);
    char err[512];
    if (moa_search_opts_check(o, cfg, err, sizeof err) != 0)
        return usage_error("invalid options: %s", err);
    return 0;
}

// --- JSON writing ------------------------------------------------------------

// A JSON string; bytes that are not valid UTF-8 become U+FFFD so that the
// line always parses.
static void json_string(FILE *f, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
            i++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n': fputs("\\n", f); break;
            case '\r': fputs("\\r", f); break;
            case '\t': fputs("\\t", f); break;
            case '\b': fputs("\\b", f); break;
            case '\f': fputs("\\f", f); break;
            default: fprintf(f, "\\u%04x", c);
            }
            i++;
        } else {
            int len = moa_utf8_len((const char *)s + i, n - i);
            if (len == 0) {
                fputs("\\ufffd", f);
                i++;
            } else {
                fwrite(s + i, 1, (size_t)len, f);
                i += (size_t)len;
            }
        }
    }
    fputc('"', f);
}

// Floats with 9 significant digits and doubles with 17 read back exactly.
// JSON has no infinity or NaN: they print as null.
static void json_float(FILE *f, float v) {
    if (isfinite(v)) fprintf(f, "%.9g", (double)v);
    else fputs("null", f);
}

static void json_double(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "%.17g", v);
    else fputs("null", f);
}

static void json_ints(FILE *f, const int *v, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, i ? ", %d" : "%d", v[i]);
    fputc(']', f);
}

static void json_floats(FILE *f, const float *v, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) {
        if (i) fputs(", ", f);
        json_float(f, v[i]);
    }
    fputc(']', f);
}

// Source ids as the reference prints them: with the eos the engine appends.
static void json_source_ids(FILE *f, const int *src, int n, int eos) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%d, ", src[i]);
    fprintf(f, "%d]", eos);
}

// A routing trace in the engine's JSON layout (moa_trace_json, spec §7), the
// one the server writes too. Out of memory it writes null and says so.
static void json_trace(FILE *f, const moa_trace *t) {
    cJSON *o = cJSON_CreateObject();
    char *s = o && moa_trace_json(t, o) == 0 ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) fprintf(stderr, CLI_NAME ": out of memory writing a trace\n");
    fputs(s ? s : "null", f);
    free(s);
}

static void json_error(FILE *f, long index, const char *msg) {
    fprintf(f, "{\"index\": %ld, \"error\": ", index);
    json_string(f, msg, strlen(msg));
    fputs("}\n", f);
}

// --- batches of input lines --------------------------------------------------

// One input line on its way through a batch.
typedef struct cli_item {
    long index;                 // line number from 0
    int *src, src_len;          // ids without eos (tokenizer's malloc)
    int *tgt, tgt_len;          // --score only
    int failed;                 // err holds the reason
    int done;                   // res is filled
    char err[512];
    moa_result res;
} cli_item;

// Everything main owns, handed to the batch functions.
typedef struct cli_ctx {
    const cli_args *args;
    const moa_config *cfg;
    moa_tokenizer *tok;
    moa_session *sess;
    FILE *in, *out;
    int chunk;                  // lines a worker takes at a time (CLI_CHUNK batches)
    cli_item *items;            // chunk of them
    // --score: the arrays moa_score takes, chunk entries each
    const int **src, **tgt;
    int *src_len, *tgt_len;
    moa_result *res;
    cli_item **scored;
    char *line;                 // getline buffer
    size_t line_cap;
    long next_index;
    // statistics for --verbose
    long n_sentences, n_failed;
    long src_tokens, tgt_tokens;
    long n_decoded;             // sentences this worker's session decoded
} cli_ctx;

static void item_reset(cli_item *it) {
    free(it->src);
    free(it->tgt);
    if (it->res.hyps) moa_result_clear(&it->res);
    memset(it, 0, sizeof *it);
}

static void item_fail(cli_item *it, const char *what, const char *msg) {
    it->failed = 1;
    snprintf(it->err, sizeof it->err, "%s%s", what, msg);
}

// Tokenizes `text` of one side (MOA_TOK_SOURCE, or MOA_TOK_TARGET for a
// translation to score) into ids without eos; on refusal marks the item failed.
static int encode(cli_ctx *c, cli_item *it, int side, const char *text, size_t len,
                  const char *what, int **ids, int *n) {
    char err[400];
    int rc = moa_tokenizer_encode_side(c->tok, side, text, len, 0, ids, n, err, sizeof err);
    if (rc != 0) {
        item_fail(it, what, err);
        *ids = NULL;
        *n = 0;
        return -1;
    }
    // A sequence holds at most max_positions tokens, eos included (spec §5).
    if (*n + 1 > c->cfg->max_positions) {
        char msg[160];
        snprintf(msg, sizeof msg, "%d tokens with eos, the model allows %d",
                 *n + 1, c->cfg->max_positions);
        item_fail(it, what, msg);
        return -1;
    }
    return 0;
}

// Reads up to --batch lines into c->items and tokenizes them. Returns how
// many were read (0 at the end of input) or -1 on a read error.
static int read_batch(cli_ctx *c) {
    int n = 0;
    while (n < c->chunk) {
        errno = 0;
        ssize_t len = getline(&c->line, &c->line_cap, c->in);
        if (len < 0) {
            if (ferror(c->in)) {
                fprintf(stderr, CLI_NAME ": reading input: %s\n", strerror(errno));
                return -1;
            }
            break;
        }
        if (len > 0 && c->line[len - 1] == '\n') len--;
        if (len > 0 && c->line[len - 1] == '\r') len--;
        cli_item *it = &c->items[n++];
        item_reset(it);
        it->index = c->next_index++;
        if (!c->args->score) {
            encode(c, it, MOA_TOK_SOURCE, c->line, (size_t)len, "", &it->src, &it->src_len);
            continue;
        }
        char *tab = memchr(c->line, '\t', (size_t)len);
        if (!tab) {
            item_fail(it, "", "expected source<TAB>target, found no tab");
            continue;
        }
        size_t slen = (size_t)(tab - c->line), tlen = (size_t)len - slen - 1;
        if (memchr(tab + 1, '\t', tlen)) {
            item_fail(it, "", "expected source<TAB>target, found more than one tab");
            continue;
        }
        if (encode(c, it, MOA_TOK_SOURCE, c->line, slen, "source: ", &it->src,
                   &it->src_len) == 0)
            encode(c, it, MOA_TOK_TARGET, tab + 1, tlen, "target: ", &it->tgt, &it->tgt_len);
    }
    return n;
}

// An engine error that concerns one sentence rather than the whole run.
static int is_line_error(int rc) { return rc == MOA_ETOOLONG || rc == MOA_EINVAL; }

// Translates the batch through the session: every sentence is queued, then
// stepped until all are taken. Per-sentence options carry seed + line index.
// 0, or -1 on an engine failure that ends the run.
// The lines of one round, shared by all workers: each worker pulls the next
// line when its session has room, so all of them finish the round together.
typedef struct cli_round {
    cli_item **items;           // in input order
    int n;
    atomic_int next;
} cli_round;

static int translate_batch(cli_ctx *c, cli_round *rd) {
    static const int dummy_src = 0;  // a valid pointer for empty sources
    int n = rd->n, pending = 0;
    // A sentence needs at most max_positions steps; even one sentence at a
    // time, n of them cannot take longer than this, so a longer loop means
    // the engine is stuck (better an error than a hang).
    long steps = 0, max_steps = ((long)c->cfg->max_positions + 8) * (n + 1);
    moa_result r;
    memset(&r, 0, sizeof r);
    int more = 1;
    while (more || pending > 0) {
        // Keep --batch sentences in the session; refill in groups of a
        // quarter batch so newcomers are encoded together, not one by one.
        int refill = pending <= c->args->batch - (c->args->batch + 3) / 4 || !more;
        while (refill && more && pending < c->args->batch) {
            int next = atomic_fetch_add(&rd->next, 1);
            if (next >= n) {
                more = 0;
                break;
            }
            cli_item *it = rd->items[next];
            if (it->failed) continue;
            moa_search_opts o = c->args->opts;
            o.seed += (uint64_t)it->index;
            char err[400];
            int id = moa_session_add(c->sess, it->src ? it->src : &dummy_src,
                                     it->src_len, &o, it, err, sizeof err);
            if (id >= 0) {
                pending++;
                continue;
            }
            if (!is_line_error(id)) {
                fprintf(stderr, CLI_NAME ": engine: %s\n", err);
                return -1;
            }
            item_fail(it, "", err);
        }
        if (pending == 0) continue;
        if (++steps > max_steps) {
            fprintf(stderr, CLI_NAME ": engine: no result after %ld steps\n", steps);
            return -1;
        }
        int rc = moa_session_step(c->sess);
        if (rc < 0) {
            fprintf(stderr, CLI_NAME ": engine: %s\n", moa_strerror(rc));
            return -1;
        }
        while (moa_session_take(c->sess, &r) == 1) {
            cli_item *it = r.user;
            it->res = r;
            it->done = 1;
            pending--;
            c->n_decoded++;
            memset(&r, 0, sizeof r);
        }
    }
    return 0;  // main checks every item once all workers are done
}

// Forced decoding of the batch's pairs with one moa_score call. When that
// call refuses the batch, each pair is scored alone to find the culprit.
static int score_batch(cli_ctx *c, int n) {
    const int **src = c->src, **tgt = c->tgt;
    int *src_len = c->src_len, *tgt_len = c->tgt_len;
    moa_result *res = c->res;
    cli_item **ok = c->scored;
    static const int dummy = 0;
    int m = 0;
    for (int i = 0; i < n; i++) {
        cli_item *it = &c->items[i];
        if (it->failed) continue;
        ok[m] = it;
        src[m] = it->src ? it->src : &dummy;
        tgt[m] = it->tgt ? it->tgt : &dummy;
        src_len[m] = it->src_len;
        tgt_len[m] = it->tgt_len;
        m++;
    }
    if (m == 0) return 0;
    char err[400];
    memset(res, 0, sizeof res[0] * (size_t)m);
    int rc = moa_score(c->sess, src, src_len, tgt, tgt_len, m, c->args->trace,
                       res, err, sizeof err);
    if (rc == 0) {
        for (int j = 0; j < m; j++) {
            ok[j]->res = res[j];
            ok[j]->done = 1;
        }
    } else if (!is_line_error(rc)) {
        fprintf(stderr, CLI_NAME ": engine: %s\n", err);
        return -1;
    } else {
        for (int j = 0; j < m; j++) {
            // The header does not say what a failed call leaves in out[]:
            // forget it rather than risk freeing it twice.
            memset(&res[j], 0, sizeof res[j]);
            rc = moa_score(c->sess, &src[j], &src_len[j], &tgt[j], &tgt_len[j],
                           1, c->args->trace, &res[j], err, sizeof err);
            if (rc == 0) {
                ok[j]->res = res[j];
                ok[j]->done = 1;
            } else if (is_line_error(rc)) {
                item_fail(ok[j], "", err);
            } else {
                fprintf(stderr, CLI_NAME ": engine: %s\n", err);
                return -1;
            }
        }
    }
    for (int j = 0; j < m; j++)
        if (!ok[j]->failed && ok[j]->res.n_hyps < 1)
            item_fail(ok[j], "", "the engine returned no score");
    return 0;
}

// --- output ------------------------------------------------------------------

// Detokenised text of a hypothesis (malloc'ed), or NULL with the item failed.
static char *decode(cli_ctx *c, cli_item *it, const moa_hypothesis *h) {
    char *text = NULL, err[400];
    if (moa_tokenizer_decode(c->tok, h->tokens, h->n_tokens, &text, err,
                             sizeof err) != 0) {
        item_fail(it, "output: ", err);
        return NULL;
    }
    return text;
}

static void write_translation_text(cli_ctx *c, cli_item *it) {
    FILE *f = c->out;
    int nbest = c->args->opts.num_hypotheses;
    int printed = 0;
    if (!it->failed) {
        for (int h = 0; h < it->res.n_hyps && h < nbest; h++) {
            const moa_hypothesis *hy = &it->res.hyps[h];
            char *text = decode(c, it, hy);
            if (!text) break;
            if (nbest == 1) fprintf(f, "%s\n", text);
            else fprintf(f, "%ld\t%.6f\t%s\n", it->index, hy->score, text);
            free(text);
            printed++;
        }
    }
    // Keep nbest lines per input line, whatever happened.
    for (; printed < nbest; printed++) {
        if (nbest == 1) fputc('\n', f);
        else fprintf(f, "%ld\t\t\n", it->index);
    }
}

static void write_translation_json(cli_ctx *c, cli_item *it) {
    FILE *f = c->out;
    if (it->failed) {
        json_error(f, it->index, it->err);
        return;
    }
    // Decode every text first so a refusal still yields one well-formed line.
    int n = it->res.n_hyps;
    char **texts = calloc((size_t)n, sizeof *texts);
    if (!texts) {
        item_fail(it, "", "out of memory");
        json_error(f, it->index, it->err);
        return;
    }
    for (int h = 0; h < n && !it->failed; h++)
        texts[h] = decode(c, it, &it->res.hyps[h]);
    if (it->failed) {
        json_error(f, it->index, it->err);
    } else {
        fprintf(f, "{\"index\": %ld, \"source_ids\": ", it->index);
        json_source_ids(f, it->src, it->src_len, c->cfg->eos_id);
        fputs(", \"hypotheses\": [", f);
        for (int h = 0; h < n; h++) {
            const moa_hypothesis *hy = &it->res.hyps[h];
            fputs(h ? ", {\"ids\": " : "{\"ids\": ", f);
            json_ints(f, hy->tokens, hy->n_tokens);
            fputs(", \"text\": ", f);
            json_string(f, texts[h], strlen(texts[h]));
            fputs(", \"score\": ", f);
            json_double(f, hy->score);
            fputs(", \"log_prob\": ", f);
            json_double(f, hy->log_prob);
            if (hy->token_logprobs) {
                fputs(", \"token_logprobs\": ", f);
                json_floats(f, hy->token_logprobs, hy->n_tokens);
            }
            if (c->args->trace && hy->trace) {
                fputs(", \"trace\": ", f);
                json_trace(f, hy->trace);
            }
            fputc('}', f);
        }
        fputs("]}\n", f);
    }
    for (int h = 0; h < n; h++) free(texts[h]);
    free(texts);
}

static void write_score_json(cli_ctx *c, cli_item *it) {
    FILE *f = c->out;
    if (it->failed) {
        json_error(f, it->index, it->err);
        return;
    }
    const moa_hypothesis *hy = &it->res.hyps[0];
    fprintf(f, "{\"index\": %ld, \"source_ids\": ", it->index);
    json_source_ids(f, it->src, it->src_len, c->cfg->eos_id);
    fputs(", \"target_ids\": ", f);
    json_ints(f, hy->tokens, hy->n_tokens);
    fputs(", \"token_logprobs\": ", f);
    if (hy->token_logprobs) json_floats(f, hy->token_logprobs, hy->n_tokens);
    else fputs("null", f);
    fputs(", \"log_prob\": ", f);
    json_double(f, hy->log_prob);
    if (c->args->trace && hy->trace) {
        fputs(", \"trace\": ", f);
        json_trace(f, hy->trace);
    }
    fputs("}\n", f);
}

// Writes the batch in input order, reports failed lines, counts tokens.
static int write_batch(cli_ctx *c, int n) {
    for (int i = 0; i < n; i++) {
        cli_item *it = &c->items[i];
        if (c->args->score) write_score_json(c, it);
        else if (c->args->json) write_translation_json(c, it);
        else write_translation_text(c, it);
        c->n_sentences++;
        if (it->failed) {  // may have failed while writing (decode)
            c->n_failed++;
            fprintf(stderr, CLI_NAME ": line %ld: %s\n", it->index + 1, it->err);
            continue;
        }
        c->src_tokens += it->src_len + 1;
        c->tgt_tokens += it->res.hyps[0].n_tokens;
    }
    if (fflush(c->out) != 0 || ferror(c->out)) {
        fprintf(stderr, CLI_NAME ": writing output: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

// --- main --------------------------------------------------------------------

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void print_model_info(const moa_model *m, const cli_args *a) {
    const moa_config *g = moa_model_config(m);
    fprintf(stderr,
            CLI_NAME ": model %s (%s): %s -> %s, d_model %d, layers %d+%d, "
            "ffn %d, experts %d (top %d, head %d), vocab %d, max_positions %d, "
            "%.1f MB as float32\n",
            g->name[0] ? g->name : "(unnamed)", moa_model_dir(m),
            g->source_lang, g->target_lang, g->d_model, g->encoder_layers,
            g->decoder_layers, g->ffn_dim, g->num_experts, g->top_k,
            g->head_dim, g->vocab_size, g->max_positions,
            (double)moa_model_f32_bytes(m) / 1e6);
    fprintf(stderr, CLI_NAME ": OpenBLAS %s, %d thread(s) per product; %d "
            "worker(s); batch %d\n", moa_blas_corename(), moa_get_num_threads(),
            a->threads, a->batch);
    fprintf(stderr, CLI_NAME ": precision %s: matrix products: %s; their weights %.1f MB\n",
            moa_precision_name(moa_model_precision(m)), moa_model_kernels(m),
            (double)moa_model_weight_bytes(m) / 1e6);
    int n_src = 0, n_always = 0;
    if (moa_model_shortlist(m, &n_src, &n_always))
        fprintf(stderr, CLI_NAME ": vocabulary shortlist: %d source pieces listed, %d always "
                "candidates (scores normalised over each sentence's candidates)\n", n_src,
                n_always);
    const moa_search_opts *o = &a->opts;
    if (a->score)
        fprintf(stderr, CLI_NAME ": scoring %s\n", a->score);
    else if (moa_search_opts_sampling(o))
        fprintf(stderr, CLI_NAME ": sampling top-k %d, top-p %g, temperature "
                "%g, seed %" PRIu64 "\n", o->sampling_topk,
                (double)o->sampling_topp, (double)o->sampling_temperature,
                o->seed);
    else
        fprintf(stderr, CLI_NAME ": beam %d, nbest %d, length penalty %g\n",
                o->beam_size, o->num_hypotheses, (double)o->length_penalty);
}

static FILE *open_file(const char *path, const char *mode, FILE *std) {
    if (!path || strcmp(path, "-") == 0) return std;
    FILE *f = fopen(path, mode);
    if (!f) fprintf(stderr, CLI_NAME ": %s: %s\n", path, strerror(errno));
    return f;
}

// Per-worker buffers: items, session, --score arrays. 0 or -1.
static int ctx_alloc(cli_ctx *c, const moa_model *model, char *err, size_t errlen) {
    const cli_args *a = c->args;
    int rows = a->score ? a->batch : a->batch * moa_search_opts_rows(&a->opts);
    c->sess = moa_session_create(model, rows, err, errlen);
    if (!c->sess) return -1;
    c->chunk = a->batch * CLI_CHUNK;
    size_t nb = (size_t)c->chunk;
    c->items = calloc(nb, sizeof *c->items);
    if (a->score) {
        c->src = calloc(nb, sizeof *c->src);
        c->tgt = calloc(nb, sizeof *c->tgt);
        c->src_len = calloc(nb, sizeof *c->src_len);
        c->tgt_len = calloc(nb, sizeof *c->tgt_len);
        c->res = calloc(nb, sizeof *c->res);
        c->scored = calloc(nb, sizeof *c->scored);
    }
    if (!c->items || (a->score && (!c->src || !c->tgt || !c->src_len ||
                                   !c->tgt_len || !c->res || !c->scored))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static void ctx_free(cli_ctx *c) {
    if (c->items)
        for (int i = 0; i < c->chunk; i++) item_reset(&c->items[i]);
    free(c->line);
    free(c->items);
    free(c->src);
    free(c->tgt);
    free(c->src_len);
    free(c->tgt_len);
    free(c->res);
    free(c->scored);
    moa_session_free(c->sess);
}

// A worker's share of one round: translate or score the batch it read.
typedef struct cli_job {
    cli_ctx *c;
    int n;
    cli_round *round;
    int rc;
} cli_job;

static void *run_job(void *p) {
    cli_job *j = p;
    j->rc = j->c->args->score ? score_batch(j->c, j->n) : translate_batch(j->c, j->round);
    return NULL;
}

int main(int argc, char **argv) {
    cli_args args;
    int rc = parse_args(argc, argv, &args);
    if (rc) return rc > 0 ? 0 : EXIT_USAGE;
    // Before anything touches BLAS. Concurrent single-threaded OpenBLAS calls
    // from several workers are safe (OpenBLAS >= 0.3.7 locks its buffers).
    moa_set_num_threads(args.blas_threads);

    int status = 1, W = args.threads;
    char err[512];
    cli_ctx *cs = calloc((size_t)W, sizeof *cs);
    cli_job *jobs = calloc((size_t)W, sizeof *jobs);
    pthread_t *th = calloc((size_t)W, sizeof *th);
    moa_model *model = NULL;
    moa_tokenizer *tok = NULL;
    FILE *in = NULL, *out = NULL;
    if (!cs || !jobs || !th) {
        fprintf(stderr, CLI_NAME ": out of memory\n");
        goto done;
    }

    double t0 = now_s();
    model = moa_model_load_opts(args.model_dir, &args.load, err, sizeof err);
    if (!model) {
        fprintf(stderr, CLI_NAME ": %s\n", err);
        goto done;
    }
    const moa_config *cfg = moa_model_config(model);
    if (finish_opts(&args, cfg) != 0) {
        status = EXIT_USAGE;
        goto done;
    }
    tok = moa_tokenizer_load(args.model_dir, err, sizeof err);
    if (!tok) {
        fprintf(stderr, CLI_NAME ": %s\n", err);
        goto done;
    }
    if (moa_tokenizer_vocab_size(tok) != cfg->vocab_size) {
        fprintf(stderr, CLI_NAME ": %s: vocab.txt has %d lines, config.json "
                "says vocab_size %d\n", args.model_dir,
                moa_tokenizer_vocab_size(tok), cfg->vocab_size);
        goto done;
    }
    in = open_file(args.score ? args.score : args.input, "r", stdin);
    if (!in) goto done;
    out = open_file(args.output, "w", stdout);
    if (!out) goto done;
    for (int w = 0; w < W; w++) {
        cs[w].args = &args;
        cs[w].cfg = cfg;
        cs[w].tok = tok;
        cs[w].in = in;
        cs[w].out = out;
        if (ctx_alloc(&cs[w], model, err, sizeof err) != 0) {
            fprintf(stderr, CLI_NAME ": %s\n", err);
            goto done;
        }
    }
    if (args.verbose) {
        print_model_info(model, &args);
        fprintf(stderr, CLI_NAME ": loaded in %.2f s\n", now_s() - t0);
    }

    // Rounds: read up to W batches in input order, translate them in
    // parallel, write them in input order.
    double t1 = now_s();
    cli_round round;
    memset(&round, 0, sizeof round);
    round.items = calloc((size_t)W * cs[0].chunk, sizeof *round.items);
    if (!round.items) {
        fprintf(stderr, CLI_NAME ": out of memory\n");
        goto done;
    }
    long next_index = 0;
    int failed = 0, eof = 0;
    while (!failed && !eof) {
        int nw = 0;
        for (int w = 0; w < W && !eof; w++) {
            cs[w].next_index = next_index;
            int n = read_batch(&cs[w]);
            next_index = cs[w].next_index;
            if (n < 0) { failed = 1; break; }
            if (n == 0) { eof = 1; break; }
            jobs[nw++] = (cli_job){&cs[w], n, &round, 0};
        }
        if (failed || nw == 0) break;
        // Translation shares the round's lines through round.next, so a
        // short round (the input ran out) still gets every worker.
        for (; !args.score && nw < W; nw++) jobs[nw] = (cli_job){&cs[nw], 0, &round, 0};
        round.n = 0;
        atomic_store(&round.next, 0);
        for (int w = 0; w < nw; w++)
            for (int i = 0; i < jobs[w].n; i++) round.items[round.n++] = &jobs[w].c->items[i];
        int started = 1;
        for (int w = 1; w < nw; w++, started++)
            if (pthread_create(&th[w], NULL, run_job, &jobs[w]) != 0) {
                jobs[w].rc = -1;
                fprintf(stderr, CLI_NAME ": cannot start a worker thread\n");
                break;
            }
        run_job(&jobs[0]);
        for (int w = 1; w < started; w++) pthread_join(th[w], NULL);
        for (int i = 0; !args.score && i < round.n; i++) {
            cli_item *it = round.items[i];
            if (!it->failed && (!it->done || it->res.n_hyps < 1))
                item_fail(it, "", "the engine returned no hypothesis");
        }
        for (int w = 0; w < nw && !failed; w++)
            if (jobs[w].rc != 0 || write_batch(jobs[w].c, jobs[w].n) != 0) failed = 1;
    }
    long n_sent = 0, n_fail = 0, src_tok = 0, tgt_tok = 0;
    for (int w = 0; w < W; w++) {
        n_sent += cs[w].n_sentences;
        n_fail += cs[w].n_failed;
        src_tok += cs[w].src_tokens;
        tgt_tok += cs[w].tgt_tokens;
    }
    if (!failed) status = n_fail ? 1 : 0;
    if (args.verbose) {
        double dt = now_s() - t1;
        double rate = dt > 0 ? 1.0 / dt : 0.0;
        fprintf(stderr,
                CLI_NAME ": %ld sentences (%ld failed), %ld source tokens, %ld "
                "target tokens, %.3f s, %.2f sentences/s, %.1f target tokens/s, "
                "%.2f GFLOP/s\n",
                n_sent, n_fail, src_tok, tgt_tok, dt, (double)n_sent * rate,
                (double)tgt_tok * rate, (double)moa_flop_count() * 1e-9 * rate);
        if (!args.score && W > 1)
            for (int w = 0; w < W; w++)
                fprintf(stderr, CLI_NAME ": worker %d: %ld sentences decoded\n", w,
                        cs[w].n_decoded);
    }
    if (out != stdout && fclose(out) != 0) {
        fprintf(stderr, CLI_NAME ": %s: %s\n", args.output, strerror(errno));
        status = 1;
    } else if (out == stdout && fflush(stdout) != 0) {
        fprintf(stderr, CLI_NAME ": writing output: %s\n", strerror(errno));
        status = 1;
    }
    out = NULL;
    free(round.items);
done:
    if (out && out != stdout) fclose(out);
    if (in && in != stdin) fclose(in);
    for (int w = 0; cs && w < W; w++)
        if (cs[w].args) ctx_free(&cs[w]);
    free(cs);
    free(jobs);
    free(th);
    moa_tokenizer_free(tok);
    moa_model_free(model);
    return status;
}
