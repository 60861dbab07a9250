// moa_heads.h — routing statistics: which attention experts the model uses.
//
//     moa_heads *h = moa_heads_create(cfg);
//     moa_heads_add(h, src_ids, src_len, &result);   // scheduler, per sentence
//     cJSON *j = moa_heads_json(h, tok, 10);          // GET /heads
//     moa_heads_reset(h);                             // POST /heads/reset
//
// Counted as spec §7 indexes traces: per module (encoder, decoder_self,
// decoder_cross), layer and expert, every routed position adds one to each
// of its k picked experts, with its gate. Encoder positions are the source
// tokens (eos included), once per sentence; decoder positions are those of
// the RETURNED hypotheses (one per output token, eos included), never of
// pruned beams. So per module and layer the expert counts sum to
// k × (source tokens) or k × (returned target tokens). For each expert the
// pieces routed to it are counted too (source pieces for the encoder, the
// produced target piece for the decoder modules): the paper's
// interpretability view. Thread-safe (one mutex).
#ifndef MOA_HEADS_H
#define MOA_HEADS_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "moa_buf.h"
#include "moa_model.h"
#include "moa_tokenizer.h"

typedef struct moa_heads moa_heads;

moa_heads *moa_heads_create(const moa_config *cfg);  // NULL: out of memory
void moa_heads_free(moa_heads *h);

// Adds one finished sentence: src (ids without eos) and the traces of its
// returned hypotheses (hyps without a trace are skipped).
void moa_heads_add(moa_heads *h, const int *src, int src_len, const moa_result *r);
void moa_heads_reset(moa_heads *h);

// The whole report as JSON (caller deletes), top pieces per expert; NULL on
// out of memory.
cJSON *moa_heads_json(moa_heads *h, const moa_tokenizer *tok, int top);
// The same as aligned text tables into b.
void moa_heads_text(moa_heads *h, const moa_tokenizer *tok, int top, moa_buf *b);
// Prometheus series moa_expert_tokens_total{model,module,layer,expert} and
// moa_expert_load_cv{model,module,layer} of one model into b; header: also the HELP and TYPE lines (the first model's
// call only, as a metric is typed once). NULL h: nothing.
void moa_heads_metrics(moa_heads *h, const char *model, int header, moa_buf *b);
void moa_heads_metrics_cv(moa_heads *h, const char *model, int header, moa_buf *b);

#endif
