/*
 * Helpers shared by the scheduler checks (check_sched.c, check_cache_sched.c):
 * the solo greedy baseline and draining a scheduler's mailbox.
 */
#ifndef DSV4_TESTS_SCHED_HELPERS_H
#define DSV4_TESTS_SCHED_HELPERS_H

#include <errno.h>
#include <poll.h>
#include <stdlib.h>

#include "sched.h"

/* Greedy completion out[ngen] of prompt p[n] run alone with dsv4_forward on
 * the scalar backend (the baseline batched runs must equal). */
static void
solo_greedy(dsv4_model *m, const int32_t *p, int n, int ngen, int32_t *out)
{
    char      err[256];
    int       V = dsv4_model_config(m)->vocab_size;
    dsv4_seq *s = dsv4_seq_new(m, n + ngen, err, sizeof(err));
    dsv4_ctx *c = dsv4_ctx_new(m, dsv4_backend_cpu_scalar(), n, n + ngen, err, sizeof(err));
    float    *lg = malloc((size_t) V * sizeof(float));

    dsv4_forward(c, s, p, n, lg, err, sizeof(err));
    for (int g = 0; g < ngen; g++) {
        int best = 0;
        for (int v = 1; v < V; v++) {
            if (lg[v] > lg[best]) {
                best = v;
            }
        }
        out[g] = best;
        if (g + 1 < ngen) {
            dsv4_forward(c, s, &out[g], 1, lg, err, sizeof(err));
        }
    }
    free(lg);
    dsv4_ctx_free(c);
    dsv4_seq_free(s);
}

/* Drains s until every request in rs[n] has finished (fin[i] set) or a poll
 * times out (-1).  Request i's tokens go to toks[i * cap ...], at most cap of
 * them (ntok[i] counts those kept); fin[] and ntok[] start zeroed. */
static int
drain_requests(dsv4_sched *s, dsv4_request **rs, int n, int32_t *toks, int cap, int *ntok,
               dsv4_finish *fin, int timeout_ms)
{
    struct pollfd pfd = { dsv4_sched_fd(s), POLLIN, 0 };
    int           open = n;

    while (open > 0) {
        int pr = poll(&pfd, 1, timeout_ms);
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr <= 0) {
            return -1;
        }
        dsv4_request *r;
        while ((r = dsv4_sched_next_ready(s)) != NULL) {
            for (int i = 0; i < n; i++) {
                if (rs[i] != r || fin[i] != DSV4_FINISH_NONE) {
                    continue;
                }
                dsv4_token  t[8];
                dsv4_finish f;
                int         k;
                while ((k = dsv4_request_take(r, t, 8, &f)) > 0 || f == DSV4_FINISH_NONE) {
                    for (int j = 0; j < k && ntok[i] < cap; j++) {
                        toks[(size_t) i * cap + ntok[i]++] = t[j].id;
                    }
                    if (k == 0) {
                        break;
                    }
                }
                if (f != DSV4_FINISH_NONE) {
                    fin[i] = f;
                    open--;
                }
            }
            dsv4_request_release(r);
        }
    }
    return 0;
}

#endif
