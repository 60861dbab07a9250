// fuzz_model_load.c — the model loader (model/moa_model.h moa_model_load):
// config.json and model.safetensors of a directory, both fuzzed.
//
// Input: config.json's text, a NUL byte, then model.safetensors as it is
// on disk (8-byte little-endian header length, JSON header, tensor data).
// Both are written to a scratch directory and loaded from there. The seeds
// (tests/fuzz/make_model_seeds.py) are complete tiny models in each dtype
// and layout, and the fixture models' configs and headers.
//
// A model that loads is used: a session translates two short sentences
// with beam search and traces, and every output token must be in range
// and every score finite.
// A refused one must say why.
#include "fuzz_util.h"
#include "moa_model.h"

static char dir[4096], cfg_path[4200], st_path[4200];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_scratch_dir("model", dir, sizeof dir);
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir);
    moa_set_num_threads(1);
    return 0;
}

static void use_model(moa_model *m) {
    const moa_config *c = moa_model_config(m);
    FUZZ_CHECK(c->vocab_size >= 4 && c->max_positions >= 3 && c->top_k <= c->num_experts);
    char err[512];
    moa_session *s = moa_session_create(m, 4, err, sizeof err);
    if (!s) return;  // out of memory for a large (but legal) config
    int a[3] = {3, c->vocab_size - 1, 4 % c->vocab_size}, b[1] = {c->vocab_size / 2};
    const int *src[2] = {a, b};
    int len[2] = {3, 1};
    moa_search_opts o;
    moa_search_opts_default(&o);
    o.beam_size = 2;
    o.num_hypotheses = 2;
    o.trace = 1;
    o.token_logprobs = 1;
    if (len[0] > c->max_positions - 1) len[0] = c->max_positions - 1;
    moa_result r[2];
    int rc = moa_translate(s, src, len, 2, &o, r, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == MOA_ENOMEM);
    for (int i = 0; rc == 0 && i < 2; i++) {
        // none when the model's numbers overflow (moa_model.h, n_hyps)
        FUZZ_CHECK(r[i].n_hyps >= 0 && r[i].n_hyps <= 2);
        for (int h = 0; h < r[i].n_hyps; h++) {
            const moa_hypothesis *hy = &r[i].hyps[h];
            FUZZ_CHECK(isfinite(hy->score) && isfinite(hy->log_prob));
            FUZZ_CHECK(hy->n_tokens >= 1 && hy->n_tokens <= c->max_positions);
            for (int t = 0; t < hy->n_tokens; t++)
                FUZZ_CHECK(hy->tokens[t] >= 0 && hy->tokens[t] < c->vocab_size);
            FUZZ_CHECK(hy->trace && hy->trace->tgt_len == hy->n_tokens);
        }
        moa_result_clear(&r[i]);
    }
    moa_session_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *end = data + size, *next;
    const uint8_t *cfg_end = fuzz_part(data, end, &next);
    fuzz_write_file(cfg_path, data, (size_t)(cfg_end - data));
    fuzz_write_file(st_path, next, (size_t)(end - next));
    char err[512] = "";
    moa_model *m = moa_model_load(dir, err, sizeof err);
    if (!m) {
        FUZZ_CHECK(err[0] != 0);
        return 0;
    }
    use_model(m);
    moa_model_free(m);
    return 0;
}
