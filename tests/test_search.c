// test_search.c — decoding rules that do not need a network: options,
// masking, beam candidate ranking, the PRNG, sampling.
#include <cjson/cJSON.h>

#include "moa_impl.h"
#include "moa_test.h"

static moa_config small_cfg(void) {
    moa_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 8;
    c.max_positions = 64;
    c.bos_id = 0; c.pad_id = 1; c.eos_id = 2; c.unk_id = 3;
    return c;
}

static void test_opts_defaults_valid(void) {
    moa_config c = small_cfg();
    moa_search_opts o;
    moa_search_opts_default(&o);
    ASSERT_EQ_INT(o.beam_size, 4);
    ASSERT_EQ_INT(o.num_hypotheses, 1);
    ASSERT_NEAR(o.length_penalty, 1.0, 0);
    ASSERT_EQ_INT(o.min_length, 1);
    ASSERT_EQ_INT(moa_search_opts_check(&o, &c, NULL, 0), 0);
    ASSERT_EQ_INT(moa_search_opts_sampling(&o), 0);
}

static void expect_bad(moa_search_opts o, const char *phrase) {
    moa_config c = small_cfg();
    char err[256] = "";
    ASSERT_EQ_INT(moa_search_opts_check(&o, &c, err, sizeof err), MOA_EINVAL);
    ASSERT_STR_CONTAINS(err, phrase);
}

static void test_opts_rejections(void) {
    moa_search_opts o, d;
    moa_search_opts_default(&d);
    o = d; o.beam_size = 0; expect_bad(o, "beam_size");
    o = d; o.beam_size = 17; expect_bad(o, "beam_size");
    o = d; o.num_hypotheses = 5; expect_bad(o, "num_hypotheses");
    o = d; o.length_penalty = -1; expect_bad(o, "length_penalty");
    o = d; o.length_penalty = NAN; expect_bad(o, "length_penalty");
    o = d; o.max_length = 63; expect_bad(o, "max_length");  // > max_positions - 2
    o = d; o.max_length = 5; o.min_length = 6; expect_bad(o, "min_length");
    o = d; o.sampling_topk = 9; expect_bad(o, "sampling_topk");
    o = d; o.sampling_topp = 0; expect_bad(o, "sampling_topp");
    o = d; o.sampling_topp = 1.5f; expect_bad(o, "sampling_topp");
    o = d; o.sampling_temperature = 0; expect_bad(o, "sampling_temperature");
    o = d; o.sampling_temperature = 101; expect_bad(o, "sampling_temperature");
    o = d; o.sampling_topk = 5; expect_bad(o, "sampling needs beam_size 1");
    o = d; o.seed = (1ull << 63) + 1; expect_bad(o, "seed");
}

static void test_sampling_switch(void) {
    moa_search_opts o;
    moa_search_opts_default(&o);
    o.sampling_topk = 1; o.sampling_temperature = 0.5f;
    ASSERT_EQ_INT(moa_search_opts_sampling(&o), 0);  // top-k 1 is greedy
    o.sampling_topk = 0;
    ASSERT_EQ_INT(moa_search_opts_sampling(&o), 1);  // temperature alone samples
    o.sampling_temperature = 1; o.sampling_topp = 0.9f;
    ASSERT_EQ_INT(moa_search_opts_sampling(&o), 1);
}

// Options as a user gives them, completed by moa_search_opts_normalise.
static moa_search_opts given_opts(int beam, int topk, float topp, float temp, int seed,
                                  unsigned *given) {
    moa_search_opts o;
    moa_search_opts_default(&o);
    *given = 0;
    if (beam) { o.beam_size = beam; *given |= MOA_OPT_GIVEN_BEAM; }
    if (seed >= 0) { o.seed = (uint64_t)seed; *given |= MOA_OPT_GIVEN_SEED; }
    o.sampling_topk = topk;
    o.sampling_topp = topp;
    o.sampling_temperature = temp;
    return o;
}

// The defaults the CLI and the server share (spec §6).
static void test_opts_normalise(void) {
    moa_config c = small_cfg();
    unsigned g;
    // nothing asked: beam search, seed untouched
    moa_search_opts o = given_opts(0, 0, 1, 1, -1, &g);
    moa_search_opts_normalise(&o, g, &c);
    ASSERT_EQ_INT(o.beam_size, 4);
    ASSERT_EQ_INT(o.sampling_topk, 0);
    ASSERT_TRUE(o.seed == 0);
    ASSERT_EQ_INT(moa_search_opts_sampling(&o), 0);
    // top-p alone: the whole vocabulary, beam 1, a random seed below 2^63
    o = given_opts(0, 0, 0.9f, 1, -1, &g);
    moa_search_opts_normalise(&o, g, &c);
    ASSERT_EQ_INT(o.sampling_topk, c.vocab_size);
    ASSERT_EQ_INT(o.beam_size, 1);
    ASSERT_EQ_INT(moa_search_opts_sampling(&o), 1);
    ASSERT_TRUE(o.seed < (1ull << 63));
    ASSERT_EQ_INT(moa_search_opts_check(&o, &c, NULL, 0), 0);
    uint64_t s1 = o.seed;
    o = given_opts(0, 0, 0.9f, 1, -1, &g);
    moa_search_opts_normalise(&o, g, &c);
    ASSERT_TRUE(o.seed != s1);  // 2^-63 to fail by chance
    // top-p 1 is the default value: it changes nothing
    o = given_opts(0, 0, 1, 1, -1, &g);
    moa_search_opts_normalise(&o, g, &c);
    ASSERT_EQ_INT(o.beam_size, 4);
    ASSERT_EQ_INT(o.sampling_topk, 0);
    // temperature alone samples (the engine's rule), so beam 1 and a seed
    o = given_opts(0, 0, 1, 0.5f, -1, &g);
    moa_search_opts_normalise(&o, g, &c);
    ASSERT_EQ_INT(o.beam_size, 1);
    ASSERT_EQ_INT(moa_search_opts_sampling(&o), 1);
    ASSERT_EQ_INT(moa_search_opts_check(&o, &c, NULL, 0), 0);
    // a given seed stays
    o = given_opts(0, 5, 1, 1, 42, &g);
    moa_search_opts_normalise(&o, g, &c);
    ASSERT_TRUE(o.seed == 42);
    ASSERT_EQ_INT(o.beam_size, 1);
    // top-k 1 alone is greedy: beam 1, not sampling, no seed drawn
    o = given_opts(0, 1, 1, 0.7f, -1, &g);
    moa_search_opts_normalise(&o, g, &c);
    ASSERT_EQ_INT(o.beam_size, 1);
    ASSERT_EQ_INT(moa_search_opts_sampling(&o), 0);
    ASSERT_TRUE(o.seed == 0);
    // top-k 1 with a beam given: beam search of that beam, valid
    o = given_opts(16, 1, 1, 1, -1, &g);
    moa_search_opts_normalise(&o, g, &c);
    ASSERT_EQ_INT(o.beam_size, 16);
    ASSERT_EQ_INT(moa_search_opts_sampling(&o), 0);
    ASSERT_EQ_INT(moa_search_opts_check(&o, &c, NULL, 0), 0);
    // sampling with a beam given above 1 stays an error for the check
    o = given_opts(4, 5, 1, 1, -1, &g);
    moa_search_opts_normalise(&o, g, &c);
    ASSERT_EQ_INT(o.beam_size, 4);
    expect_bad(o, "sampling needs beam_size 1");
}

// Rows a sentence takes: one when sampling, else the beam. Top-k 1 with
// beam 16 is a 16-row beam search (the scheduler once booked it as 1 row).
static void test_opts_rows(void) {
    moa_search_opts o;
    moa_search_opts_default(&o);
    ASSERT_EQ_INT(moa_search_opts_rows(&o), 4);
    o.sampling_topk = 1;
    o.beam_size = 16;
    ASSERT_EQ_INT(moa_search_opts_rows(&o), 16);
    o.beam_size = 1;
    ASSERT_EQ_INT(moa_search_opts_rows(&o), 1);
    o.sampling_topk = 20;
    ASSERT_EQ_INT(moa_search_opts_rows(&o), 1);
    o.sampling_topk = 0;
    o.sampling_temperature = 2;
    ASSERT_EQ_INT(moa_search_opts_rows(&o), 1);
    o.sampling_temperature = 1;
    o.beam_size = 7;
    ASSERT_EQ_INT(moa_search_opts_rows(&o), 7);
}

// A trace as JSON: the layout of spec §7, infinite margins as null.
static void test_trace_json(void) {
    int ee[] = {1, 0, 2, 1}, de[] = {3, 2}, ce[] = {0, 3};
    float eg[] = {0.5f, 0.25f, 0.75f, 0.125f}, dg[] = {0.5f, 0.5f}, cg[] = {1, 0};
    float em[] = {1.5f, INFINITY}, dm[] = {0.25f}, cm[] = {2};
    moa_trace t = {1, 1, 2, 2, 1, ee, eg, em, de, dg, dm, ce, cg, cm};
    cJSON *o = cJSON_CreateObject();
    ASSERT_EQ_INT(moa_trace_json(&t, o), 0);
    char *s = cJSON_PrintUnformatted(o);
    ASSERT_STR_EQ(s, "{\"encoder\":[[{\"experts\":[1,0],\"gates\":[0.5,0.25],\"margin\":1.5},"
                     "{\"experts\":[2,1],\"gates\":[0.75,0.125],\"margin\":null}]],"
                     "\"decoder_self\":[[{\"experts\":[3,2],\"gates\":[0.5,0.5],\"margin\":0.25}]],"
                     "\"decoder_cross\":[[{\"experts\":[0,3],\"gates\":[1,0],\"margin\":2}]]}");
    free(s);
    cJSON_Delete(o);
}

static void test_mask_rules(void) {
    moa_config c = small_cfg();
    moa_search_opts o;
    moa_search_opts_default(&o);
    o.min_length = 2;
    float lp[8];
    for (int i = 0; i < 8; i++) lp[i] = -1.0f - i;
    moa_mask_row(lp, c.vocab_size, &c, &o, 0, 10);  // before min_length: no eos
    ASSERT_TRUE(isinf(lp[0]) && isinf(lp[1]) && isinf(lp[2]));
    ASSERT_NEAR(lp[3], -4, 0);  // unk allowed by default
    ASSERT_NEAR(lp[4], -5, 0);
    for (int i = 0; i < 8; i++) lp[i] = -1.0f - i;
    o.no_unk = 1;
    moa_mask_row(lp, c.vocab_size, &c, &o, 2, 10);
    ASSERT_NEAR(lp[2], -3, 0);  // eos allowed at min_length
    ASSERT_TRUE(isinf(lp[3]));
    for (int i = 0; i < 8; i++) lp[i] = -1.0f - i;
    moa_mask_row(lp, c.vocab_size, &c, &o, 10, 10);  // at max_length only eos, real value
    for (int i = 0; i < 8; i++)
        if (i == 2) ASSERT_NEAR(lp[i], -3, 0);
        else ASSERT_TRUE(isinf(lp[i]) && lp[i] < 0);
}

// Ranking: score, then lower hypothesis rank, then lower token id.
static void test_beam_candidates_ties(void) {
    float lp[2 * 4] = {-1, -2, -1, -INFINITY,   // hyp 0
                       -1.5f, -0.5f, -2, -3};   // hyp 1
    double hs[2] = {-1.0, -1.5};
    moa_cand out[5];
    int n = moa_beam_candidates(lp, 2, 4, NULL, hs, 5, out);
    ASSERT_EQ_INT(n, 5);
    // hyp0: -2 (t0), -3 (t1), -2 (t2); hyp1: -3 (t0), -2 (t1), -3.5, -4.5
    ASSERT_EQ_INT(out[0].hyp, 0); ASSERT_EQ_INT(out[0].token, 0);
    ASSERT_EQ_INT(out[1].hyp, 0); ASSERT_EQ_INT(out[1].token, 2);
    ASSERT_EQ_INT(out[2].hyp, 1); ASSERT_EQ_INT(out[2].token, 1);
    ASSERT_EQ_INT(out[3].hyp, 0); ASSERT_EQ_INT(out[3].token, 1);
    ASSERT_EQ_INT(out[4].hyp, 1); ASSERT_EQ_INT(out[4].token, 0);
    ASSERT_NEAR(out[0].score, -2.0, 0);
    ASSERT_NEAR(out[0].lp, -1.0, 0);
}

static void test_beam_candidates_skip_masked(void) {
    float lp[4] = {-INFINITY, -INFINITY, -0.1f, -INFINITY};
    double hs[1] = {0};
    moa_cand out[8];
    ASSERT_EQ_INT(moa_beam_candidates(lp, 1, 4, NULL, hs, 8, out), 1);
    ASSERT_EQ_INT(out[0].token, 2);
}

// Against a brute-force sort of every candidate on random data.
static int cmp_cand(const void *a, const void *b) {
    const moa_cand *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->hyp != y->hyp) return x->hyp - y->hyp;
    return x->token - y->token;
}
static void test_beam_candidates_brute_force(void) {
    enum { H = 5, V = 300, W = 10 };
    static float lp[H * V];
    static moa_cand all[H * V];
    double hs[H];
    moa_rng r;
    moa_rng_seed(&r, 7);
    for (int i = 0; i < H * V; i++) lp[i] = (float)(-10 * moa_rng_uniform(&r));
    for (int h = 0; h < H; h++) hs[h] = -moa_rng_uniform(&r);
    for (int h = 0; h < H; h++)
        for (int t = 0; t < V; t++)
            all[h * V + t] = (moa_cand){hs[h] + lp[h * V + t], h, t, lp[h * V + t]};
    qsort(all, H * V, sizeof *all, cmp_cand);
    moa_cand out[W];
    ASSERT_EQ_INT(moa_beam_candidates(lp, H, V, NULL, hs, W, out), W);
    for (int i = 0; i < W; i++) {
        ASSERT_EQ_INT(out[i].hyp, all[i].hyp);
        ASSERT_EQ_INT(out[i].token, all[i].token);
    }
}

static void test_rng_known_values(void) {
    moa_rng r;
    moa_rng_seed(&r, 0);
    // splitmix64's first output for seed 0 is a published constant
    ASSERT_TRUE(r.s[0] == 0xe220a8397b1dcdafull);
    moa_rng a, b;
    moa_rng_seed(&a, 42);
    moa_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) ASSERT_TRUE(moa_rng_next(&a) == moa_rng_next(&b));
    moa_rng_seed(&b, 43);
    ASSERT_TRUE(moa_rng_next(&a) != moa_rng_next(&b));
    for (int i = 0; i < 1000; i++) {
        double u = moa_rng_uniform(&a);
        ASSERT_TRUE(u >= 0 && u < 1);
    }
}

static void sample_freq(const moa_search_opts *o, const float *lp, int v, int n, double *freq) {
    float scratch[2 * 16];
    int idx[16];
    moa_rng r;
    moa_rng_seed(&r, 1);
    for (int i = 0; i < v; i++) freq[i] = 0;
    for (int i = 0; i < n; i++) {
        int t = moa_sample_token(lp, v, o, &r, scratch, idx);
        ASSERT_TRUE(t >= 0 && t < v);
        freq[t] += 1.0 / n;
    }
}

static void test_sampling_distribution(void) {
    float lp[4] = {logf(0.5f), logf(0.3f), logf(0.2f), -INFINITY};
    moa_search_opts o;
    moa_search_opts_default(&o);
    o.beam_size = 1;
    o.sampling_temperature = 1;
    double f[4];
    sample_freq(&o, lp, 4, 40000, f);
    ASSERT_NEAR(f[0], 0.5, 0.015); ASSERT_NEAR(f[1], 0.3, 0.015);
    ASSERT_NEAR(f[2], 0.2, 0.015); ASSERT_NEAR(f[3], 0, 0);
    o.sampling_topk = 2;  // keep the two best, renormalise: 0.625 / 0.375
    sample_freq(&o, lp, 4, 40000, f);
    ASSERT_NEAR(f[0], 0.625, 0.015); ASSERT_NEAR(f[1], 0.375, 0.015);
    ASSERT_NEAR(f[2], 0, 0);
    o.sampling_topk = 0;
    o.sampling_topp = 0.75f;  // 0.5 + 0.3 reaches 0.75
    sample_freq(&o, lp, 4, 40000, f);
    ASSERT_NEAR(f[0], 0.625, 0.015); ASSERT_NEAR(f[2], 0, 0);
    o.sampling_topp = 0.4f;  // the best alone reaches it
    sample_freq(&o, lp, 4, 1000, f);
    ASSERT_NEAR(f[0], 1, 1e-9);
    o.sampling_topp = 1;
    o.sampling_temperature = 0.5f;  // p^2 renormalised: .25/.38, .09/.38, .04/.38
    sample_freq(&o, lp, 4, 40000, f);
    ASSERT_NEAR(f[0], 0.25 / 0.38, 0.015); ASSERT_NEAR(f[2], 0.04 / 0.38, 0.015);
}

// Top-p boundary ties go to the lower id: equal probabilities, top-p 0.5.
static void test_sampling_topp_tie_lower_id(void) {
    float lp[4] = {logf(0.25f), logf(0.25f), logf(0.25f), logf(0.25f)};
    moa_search_opts o;
    moa_search_opts_default(&o);
    o.beam_size = 1;
    o.sampling_topp = 0.5f;
    double f[4];
    sample_freq(&o, lp, 4, 20000, f);
    ASSERT_NEAR(f[0], 0.5, 0.02); ASSERT_NEAR(f[1], 0.5, 0.02);
    ASSERT_NEAR(f[2], 0, 0); ASSERT_NEAR(f[3], 0, 0);
}

const moa_test_case moa_tests_search[] = {
    {"opts_defaults_valid", test_opts_defaults_valid},
    {"opts_rejections", test_opts_rejections},
    {"sampling_switch", test_sampling_switch},
    {"opts_normalise", test_opts_normalise},
    {"opts_rows", test_opts_rows},
    {"trace_json", test_trace_json},
    {"mask_rules", test_mask_rules},
    {"beam_candidates_ties", test_beam_candidates_ties},
    {"beam_candidates_skip_masked", test_beam_candidates_skip_masked},
    {"beam_candidates_brute_force", test_beam_candidates_brute_force},
    {"rng_known_values", test_rng_known_values},
    {"sampling_distribution", test_sampling_distribution},
    {"sampling_topp_tie_lower_id", test_sampling_topp_tie_lower_id},
    {NULL, NULL},
};
