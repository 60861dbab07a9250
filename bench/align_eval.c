// align_eval.c — which cross-attention puts a dropped placeholder back in its
// place? Not a test: it prints numbers (bench/RESULTS.md has a run).
//
//     make && mkdir -p build/bench && gcc -O2 -D_GNU_SOURCE -Imodel -Itokenizer -Iserver
//       $(pkg-config --cflags openblas) bench/align_eval.c build/release/server/moa_protect.o
//       build/release/server/moa_text.o build/release/libmoa.a -lopenblas -lcjson
//       -lsentencepiece -lstdc++ -lm -lpthread -o build/bench/align_eval   (one line)
//     build/bench/align_eval [MODEL_DIR [TSV]]   # weights/moa-en-de, ../shared/corpus/test.en-de.tsv
//
// Self-supervised: each source string with placeholders is protected and
// translated (beam 4, attention on) as the server does. Where the model kept
// every item (nothing to repair), each sentinel of its output is deleted in
// turn (token and attention row) and moa_protect_restore puts it back with
// the attention of the chosen decoder layers; a hit is an output equal to
// the undamaged one (exactly, and ignoring spaces). The attention rows are
// those computed with the sentinel present: the deletion is simulated, the
// model's behaviour without it is not.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moa_buf.h"
#include "moa_model.h"
#include "moa_protect.h"
#include "moa_tokenizer.h"

#define N_WAYS 6

static void squeeze(const char *s, char *out, size_t cap) {
    size_t n = 0;
    for (; *s && n + 1 < cap; s++)
        if (*s != ' ') out[n++] = *s;
    out[n] = 0;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "weights/moa-en-de";
    const char *tsv = argc > 2 ? argv[2] : "../shared/corpus/test.en-de.tsv";
    char err[512];
    moa_model *m = moa_model_load(dir, err, sizeof err);
    moa_tokenizer *tok = m ? moa_tokenizer_load(dir, err, sizeof err) : NULL;
    FILE *f = fopen(tsv, "r");
    if (!m || !tok || !f) {
        fprintf(stderr, "%s\n", f ? err : tsv);
        return 1;
    }
    moa_protect_vocab *pv = moa_protect_vocab_create(tok);
    moa_session *s = moa_session_create(m, 64, err, sizeof err);
    int Ld = moa_model_config(m)->decoder_layers;
    // ways: layer sets (bit l = decoder layer l), and -1 = no attention
    int ways[N_WAYS] = {(1 << Ld) - 1, 1, 2, 4, ((1 << Ld) - 1) & ~1, -1};
    const char *names[N_WAYS] = {"all layers", "layer 0", "layer 1", "layer 2",
                                 "layers above the first", "no attention (position)"};
    int tot = 0, hit[N_WAYS] = {0}, hit_ns[N_WAYS] = {0};
    char line[16384];
    while (fgets(line, sizeof line, f)) {
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = 0;
        size_t n = strlen(line), off = 0, len = n;
        moa_phs ph = {0};
        moa_prot p;
        if (moa_protect_scan(line, 0, n, 0, 0, &ph) || ph.n == 0) goto next_ph;
        moa_protect_trim(line, &off, &len, &ph);
        if (len == 0 || moa_protect_unit(pv, line, off, len, &ph, 0, 0, &p)) goto next_ph;
        int *ids = NULL, ni = 0;
        if (moa_tokenizer_encode(tok, p.masked, p.masked_len, 0, &ids, &ni, NULL, 0) || ni == 0)
            goto next_prot;
        moa_protect_locate(&p, tok, ids, ni);
        moa_search_opts o;
        moa_search_opts_default(&o);
        o.attention = 1;
        moa_result r;
        const int *src = ids;
        if (moa_translate(s, &src, &ni, 1, &o, &r, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        const moa_hypothesis *h = &r.hyps[0];
        int T = h->n_tokens, C = h->attention_cols;
        moa_buf ref = {0}, w = {0};
        moa_buf_puts(&ref, "");
        moa_buf_puts(&w, "");
        moa_protect_restore(&p, pv, tok, h->tokens, T, NULL, C, NULL, NULL, &ref, &w);
        for (int t = 0; w.n == 0 && t < T; t++) {
            const char *pc = moa_tokenizer_piece(tok, h->tokens[t]);
            int is_sentinel = 0;
            for (int i = 0; i < p.n_items; i++)
                is_sentinel |= p.items[i].sentinel && !strcmp(pc, p.items[i].sentinel);
            if (!is_sentinel) continue;
            int t0 = t;  // with the lone ▁ before it
            if (t0 > 0 && !strcmp(moa_tokenizer_piece(tok, h->tokens[t0 - 1]), "\xE2\x96\x81")) t0--;
            int T2 = T - (t - t0 + 1);
            int *tk = malloc((size_t)T * sizeof *tk);
            float *A = malloc((size_t)T * C * sizeof *A);
            for (int q = 0, k = 0; q < T; q++)
                if (q < t0 || q > t) tk[k++] = h->tokens[q];
            tot++;
            for (int v = 0; v < N_WAYS; v++) {
                int nl = 0;
                for (int l = 0; l < Ld; l++) nl += ways[v] > 0 && (ways[v] >> l & 1);
                for (int q = 0, k = 0; q < T && ways[v] > 0; q++) {
                    if (q >= t0 && q <= t) continue;
                    for (int c = 0; c < C; c++) {
                        float a = 0;
                        for (int l = 0; l < Ld; l++)
                            if (ways[v] >> l & 1) a += h->attention[((size_t)l * T + q) * C + c];
                        A[(size_t)k * C + c] = a / (float)nl;
                    }
                    k++;
                }
                moa_buf out = {0};
                moa_buf_puts(&out, "");
                moa_protect_restore(&p, pv, tok, tk, T2, ways[v] > 0 ? A : NULL, C, NULL, NULL,
                                    &out, NULL);
                char x[16384], y[16384];
                squeeze(out.s, x, sizeof x);
                squeeze(ref.s, y, sizeof y);
                hit[v] += !strcmp(out.s, ref.s);
                hit_ns[v] += !strcmp(x, y);
                free(out.s);
            }
            free(tk);
            free(A);
        }
        free(ref.s);
        free(w.s);
        moa_result_clear(&r);
    next_prot:
        free(ids);
        moa_prot_free(&p);
    next_ph:
        moa_phs_free(&ph);
    }
    fclose(f);
    printf("%s on %s: %d sentinels deleted from outputs that kept all their items\n", dir, tsv,
           tot);
    printf("%-26s %18s %18s\n", "alignment", "back in place", "ignoring spaces");
    for (int v = 0; v < N_WAYS; v++)
        printf("%-26s %10d %6.1f%% %10d %6.1f%%\n", names[v], hit[v], 100.0 * hit[v] / (tot ? tot : 1),
               hit_ns[v], 100.0 * hit_ns[v] / (tot ? tot : 1));
    moa_session_free(s);
    moa_protect_vocab_free(pv);
    moa_tokenizer_free(tok);
    moa_model_free(m);
    return 0;
}
