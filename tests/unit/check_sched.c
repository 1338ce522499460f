/*
 * check_sched MODEL_DIR: the continuous-batching scheduler against solo runs.
 *
 * - 6 greedy requests with different prompt lengths submitted at once to an
 *   engine with room for 4 sequences, chunked prefill of 5 and 12-row steps:
 *   each completion must equal the same prompt run alone with dsv4_forward.
 * - finish reasons: max_tokens -> LENGTH; a stop id -> STOP (stop token kept).
 * - logprobs: the sampled token's logprob <= 0 and equal to the best top
 *   logprob under greedy; top logprobs sorted.
 * - cancellation frees the sequence (running count drops to 0) and finishes
 *   the request as CANCELLED; a request cancelled while waiting never runs.
 * - backpressure: a full queue refuses with an error.
 * - the eventfd is readable whenever a request has news.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched.h"
#include "tests/test.h"
#include "tests/unit/sched_helpers.h"

#define NREQ 6

static int32_t prompts[NREQ][64];
static const int plen[NREQ] = { 3, 17, 40, 9, 25, 1 };

static dsv4_request *
make_req(const int32_t *p, int n, int max_tokens, const int32_t *stop, int nstop, int logprobs)
{
    dsv4_request_params rp;
    char                err[256];

    memset(&rp, 0, sizeof(rp));
    rp.prompt = p;
    rp.n_prompt = n;
    rp.max_tokens = max_tokens;
    rp.stop_ids = stop;
    rp.n_stop = nstop;
    rp.logprobs = logprobs;
    dsv4_sample_params_default(&rp.sample);
    rp.sample.temperature = 0.0f;
    dsv4_request *r = dsv4_request_new(&rp, err, sizeof(err));
    TEST_CHECK(r != NULL, "request_new: %s", err);
    return r;
}

int
main(int argc, char **argv)
{
    char        err[256];
    dsv4_model *m;

    if (argc < 2 || dsv4_model_load(&m, argv[1], 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "usage: check_sched MODEL_DIR (%s)\n", argc < 2 ? "" : err);
        return 2;
    }
    int      V = dsv4_model_config(m)->vocab_size;
    uint64_t x = 0x2545F4914F6CDD1Dull;
    for (int i = 0; i < NREQ; i++) {
        for (int j = 0; j < plen[i]; j++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            prompts[i][j] = (int32_t) (x % (uint64_t) V);
        }
    }
    dsv4_sched_conf conf = { .n_engines = 1, .max_seqs = 4, .max_batch_tokens = 12,
                             .prefill_chunk = 5, .max_queue = 8, .max_ctx = 128,
                             .backend = dsv4_backend_cpu_scalar() };
    dsv4_sched *s = dsv4_sched_new(m, &conf, err, sizeof(err));
    TEST_CHECK(s != NULL, "sched_new: %s", err);
    if (s == NULL) {
        return TEST_REPORT();
    }

    /* batched greedy == solo greedy */
    dsv4_request *rs[NREQ];
    int32_t       got[NREQ][32], want[32];
    int           ntok[NREQ] = { 0 };
    dsv4_finish   fin[NREQ] = { 0 };
    for (int i = 0; i < NREQ; i++) {
        rs[i] = make_req(prompts[i], plen[i], 8, NULL, 0, i == 0 ? 5 : 0);
        TEST_CHECK(dsv4_sched_submit(s, rs[i], err, sizeof(err)) == 0, "submit %d: %s", i, err);
    }
    TEST_CHECK(drain_requests(s, rs, NREQ, &got[0][0], 32, ntok, fin, 20000) == 0, "timed out");
    for (int i = 0; i < NREQ; i++) {
        solo_greedy(m, prompts[i], plen[i], 8, want);
        TEST_CHECK(fin[i] == DSV4_FINISH_LENGTH && ntok[i] == 8,
                   "request %d: finish %d after %d tokens, expected LENGTH after 8", i, fin[i],
                   ntok[i]);
        TEST_CHECK(memcmp(got[i], want, sizeof(want[0]) * 8) == 0,
                   "request %d: batched completion differs from the solo run", i);
    }
    /* logprobs of request 0: greedy token is the top-1 */
    int32_t ids[5];
    float   lps[5];
    int     nl = dsv4_request_top_logprobs(rs[0], 3, ids, lps);
    TEST_CHECK(nl == 5 && ids[0] == got[0][3] && lps[0] <= 0.0f && lps[0] >= lps[1]
               && lps[3] >= lps[4], "top logprobs: n=%d id %d vs token %d", nl, ids[0],
               got[0][3]);
    double q, ft;
    dsv4_request_times(rs[0], &q, &ft);
    TEST_CHECK(ft > 0 && ft >= q, "times: queued %g first token %g", q, ft);
    for (int i = 0; i < NREQ; i++) {
        dsv4_request_release(rs[i]);
    }

    /* stop id: the 3rd greedy token of prompt 1 stops the completion there */
    solo_greedy(m, prompts[1], plen[1], 8, want);
    dsv4_request *r = make_req(prompts[1], plen[1], 8, &want[2], 1, 0);
    int           n1 = 0;
    dsv4_finish   f1 = 0;
    dsv4_sched_submit(s, r, err, sizeof(err));
    TEST_CHECK(drain_requests(s, &r, 1, &got[0][0], 32, &n1, &f1, 20000) == 0, "stop: timed out");
    int first = 0;
    while (want[first] != want[2]) {
        first++;
    }
    TEST_CHECK(f1 == DSV4_FINISH_STOP && n1 == first + 1, "stop: finish %d after %d tokens", f1,
               n1);
    dsv4_request_release(r);

    /* cancellation: a long request cancelled mid-way frees its sequence */
    int waiting, running;
    /* 3-token prompt, 120 tokens to go: far longer than the cancel takes,
     * even under valgrind */
    r = make_req(prompts[0], plen[0], 120, NULL, 0, 0);
    dsv4_sched_submit(s, r, err, sizeof(err));
    for (int t = 0; t < 2000; t++) {
        dsv4_sched_load(s, &waiting, &running);
        if (running == 1) {
            break;
        }
        usleep(1000);
    }
    dsv4_request_cancel(r);
    n1 = 0;
    f1 = 0;
    /* room for all 120: a preempted test thread may cancel late, but never
     * after the last token */
    int32_t all[120];
    TEST_CHECK(drain_requests(s, &r, 1, all, 120, &n1, &f1, 20000) == 0, "cancel: timed out");
    dsv4_sched_load(s, &waiting, &running);
    TEST_CHECK(f1 == DSV4_FINISH_CANCELLED && n1 < 120 && running == 0,
               "cancel: finish %d, %d tokens, %d running", f1, n1, running);
    dsv4_request_release(r);

    /* backpressure: max_queue 8 waiting (4 run); the 13th submit is refused */
    dsv4_request *many[13];
    int           refused = 0, full = 0, last = 0;
    for (int i = 0; i < 13; i++) {
        many[i] = make_req(prompts[2], plen[2], 60, NULL, 0, 0);
        int rc = dsv4_sched_submit(s, many[i], err, sizeof(err));
        refused += rc != 0;
        full += rc == DSV4_SCHED_EFULL;
        last = rc == 0 ? i : last;
    }
    TEST_CHECK(refused >= 1 && full == refused && strstr(err, "queue full") != NULL,
               "refused %d, %d as EFULL (%s)", refused, full, err);
    /* a queued request cancelled leaves the queue at once, before any slot frees */
    dsv4_sched_load(s, &waiting, &running);
    int waiting_before = waiting;
    dsv4_request_cancel(many[last]);   /* FIFO: the last accepted still waits */
    dsv4_sched_load(s, &waiting, &running);
    /* (engine admissions may lower it further meanwhile) */
    TEST_CHECK(waiting_before >= 1 && waiting <= waiting_before - 1,
               "cancelled queued request still waiting (%d -> %d)", waiting_before, waiting);
    dsv4_finish qf;
    dsv4_token  qt[1];
    TEST_CHECK(dsv4_request_take(many[last], qt, 1, &qf) == 0
               && qf == DSV4_FINISH_CANCELLED, "queued cancel: finish %d", qf);
    for (int i = 0; i < 13; i++) {
        dsv4_request_cancel(many[i]);
    }
    for (int t = 0; t < 5000; t++) {
        dsv4_sched_load(s, &waiting, &running);
        if (waiting == 0 && running == 0) {
            break;
        }
        usleep(1000);
    }
    TEST_CHECK(waiting == 0 && running == 0, "after cancelling all: %d waiting %d running",
               waiting, running);
    while ((r = dsv4_sched_next_ready(s)) != NULL) {
        dsv4_request_release(r);
    }
    for (int i = 0; i < 13; i++) {
        dsv4_request_release(many[i]);
    }
    dsv4_sched_stats st;
    dsv4_sched_get_stats(s, &st);
    TEST_CHECK(st.steps > 0 && st.rows >= st.seqs && st.seqs >= st.steps && st.prefill_rows > 0,
               "stats: steps %llu rows %llu seqs %llu", (unsigned long long) st.steps,
               (unsigned long long) st.rows, (unsigned long long) st.seqs);
    /* a prompt longer than the context is refused with a reason */
    int32_t long_prompt[200] = { 0 };
    r = make_req(long_prompt, 200, 4, NULL, 0, 0);
    TEST_CHECK(dsv4_sched_submit(s, r, err, sizeof(err)) == DSV4_SCHED_EINVAL
               && strstr(err, "context") != NULL,
               "long prompt accepted (%s)", err);
    dsv4_request_release(r);
    dsv4_sched_free(s);
    dsv4_model_free(m);
    return TEST_REPORT();
}
