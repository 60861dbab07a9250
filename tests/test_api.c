// test_api.c — /translate request parsing (server/moa_api.c) on the tiny
// trained model: form bodies with repeated fields, and a refused body
// answering the right status.
#include <pthread.h>

#include "moa_api.h"
#include "moa_log.h"
#include "moa_test.h"

#define TINY "tests/fixtures/models/tiny-trained"

static void server_load(moa_server *srv) {
    char err[512];
    memset(srv, 0, sizeof *srv);
    srv->conf.max_texts = 8;
    srv->conf.max_chars = 1000;
    srv->conf.split_tokens = 200;
    if (!(srv->models[0].model = moa_model_load(TINY, err, sizeof err))) MOA_TEST_FAIL("%s", err);
    if (!(srv->models[0].tok = moa_tokenizer_load(TINY, err, sizeof err))) MOA_TEST_FAIL("%s", err);
    srv->models[0].cfg = moa_model_config(srv->models[0].model);
    if (!(srv->models[0].pv = moa_protect_vocab_create(srv->models[0].tok)))
        MOA_TEST_FAIL("out of memory");
    snprintf(srv->models[0].name, sizeof srv->models[0].name, "%s", srv->models[0].cfg->name);
    srv->n_models = 1;
    pthread_rwlock_init(&srv->keys_lock, NULL);
}

static void server_free(moa_server *srv) {
    moa_protect_vocab_free(srv->models[0].pv);
    moa_tokenizer_free(srv->models[0].tok);
    moa_model_free(srv->models[0].model);
    pthread_rwlock_destroy(&srv->keys_lock);
}

static int parse_form(moa_server *srv, const char *body, moa_tr **tr, char *err, size_t n) {
    return moa_api_translate_parse(srv, "application/x-www-form-urlencoded", NULL, body,
                                   strlen(body), tr, err, n);
}

// A repeated field: the last value counts (the earlier code replaced the
// item without its name, and the field was lost: beam_size fell back to 4).
static void test_form_repeated_field_last_wins(void) {
    moa_server srv;
    server_load(&srv);
    moa_tr *tr = NULL;
    char err[512];
    ASSERT_EQ_INT(parse_form(&srv, "q=Open+the+file&beam_size=2&beam_size=99", &tr, err,
                             sizeof err), 400);
    ASSERT_STR_CONTAINS(err, "beam_size");
    ASSERT_EQ_INT(parse_form(&srv, "q=Open+the+file&beam_size=99&beam_size=2&beam_size=3", &tr,
                             err, sizeof err), 0);
    const moa_job *j = moa_tr_job(tr);
    ASSERT_EQ_INT(j->n_units, 1);
    ASSERT_EQ_INT(j->units[0].opts.beam_size, 3);
    moa_tr_free(tr);
    server_free(&srv);
}

// Repeated q (or text) make an array of texts, in order.
static void test_form_repeated_q_is_array(void) {
    moa_server srv;
    server_load(&srv);
    moa_tr *tr = NULL;
    char err[512];
    ASSERT_EQ_INT(parse_form(&srv, "q=Open+the+file&q=Save&source=en&q=Close+it", &tr, err,
                             sizeof err), 0);
    ASSERT_STR_EQ(moa_tr_first_text(tr), "Open the file");
    ASSERT_EQ_INT(moa_tr_job(tr)->n_units, 3);
    moa_tr_free(tr);
    server_free(&srv);
}

const moa_test_case moa_tests_api[] = {
    {"form_repeated_field_last_wins", test_form_repeated_field_last_wins},
    {"form_repeated_q_is_array", test_form_repeated_q_is_array},
    {NULL, NULL},
};
