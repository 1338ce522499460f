
/*
 * ngx_http_dsv4_module: DeepSeek-V4 inference inside the nginx workers.
 *
 * The module is a thin adapter over engine/ (which knows no nginx):
 *
 *   ngx_http_dsv4_module.c     directives, configuration, process hooks
 *   ngx_http_dsv4_engine.c     per-worker model loading, the scheduler's
 *                              eventfd in the event loop, token dispatch
 *   ngx_http_dsv4_request.c    request plumbing: body, JSON, errors, output,
 *                              cleanup (cancel on client disconnect)
 *   ngx_http_dsv4_prepare.c    request body -> validated parameters and
 *                              prompt tokens (no nginx memory: may run in a
 *                              thread pool)
 *   ngx_http_dsv4_openai.c     /v1/chat/completions, /v1/completions
 *   ngx_http_dsv4_anthropic.c  /v1/messages
 *   ngx_http_dsv4_util.c       /v1/models, /health, /tokenize, /detokenize
 *   ngx_http_dsv4_metrics.c    shared-memory counters, /metrics
 *   ngx_http_dsv4_json.c       JSON string escaping for the hot path
 */

#ifndef _NGX_HTTP_DSV4_MODULE_H_INCLUDED_
#define _NGX_HTTP_DSV4_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>

#include "dsv4.h"
#include "sched.h"
#include "sample.h"
#include "tokenizer.h"
#include "chat.h"
#include "parse.h"
#include "strbuf.h"
#include "constrain.h"
#include "cache/cache.h"


#define NGX_HTTP_DSV4_API_NONE              0
#define NGX_HTTP_DSV4_API_CHAT              1
#define NGX_HTTP_DSV4_API_COMPLETIONS       2
#define NGX_HTTP_DSV4_API_MESSAGES          3
#define NGX_HTTP_DSV4_API_MODELS            4
#define NGX_HTTP_DSV4_API_TOKENIZE          5
#define NGX_HTTP_DSV4_API_DETOKENIZE        6
#define NGX_HTTP_DSV4_API_HEALTH            7
#define NGX_HTTP_DSV4_API_METRICS           8

#define NGX_HTTP_DSV4_BACKEND_CPU           0
#define NGX_HTTP_DSV4_BACKEND_SCALAR        1

#define NGX_HTTP_DSV4_LOADING               0
#define NGX_HTTP_DSV4_READY                 1
#define NGX_HTTP_DSV4_FAILED                2

#define NGX_HTTP_DSV4_MAX_STOP              16      /* user stop strings */
#define NGX_HTTP_DSV4_MAX_LOGPROBS          20
#define NGX_HTTP_DSV4_MAX_WORKERS           128     /* gauge slots in shm */
#define NGX_HTTP_DSV4_TAKE                  64      /* tokens per take */

#define NGX_HTTP_DSV4_FINISH_STOP           0
#define NGX_HTTP_DSV4_FINISH_LENGTH         1
#define NGX_HTTP_DSV4_FINISH_TOOL_CALLS     2
#define NGX_HTTP_DSV4_FINISH_ABORT          3
#define NGX_HTTP_DSV4_FINISH_ERROR          4
#define NGX_HTTP_DSV4_FINISH_N              5

#define NGX_HTTP_DSV4_CACHE_SCOPE_GLOBAL    0
#define NGX_HTTP_DSV4_CACHE_SCOPE_KEY       1


typedef struct ngx_http_dsv4_ctx_s     ngx_http_dsv4_ctx_t;
typedef struct ngx_http_dsv4_choice_s  ngx_http_dsv4_choice_t;


typedef struct {
    ngx_str_t                   name;
    ngx_int_t                   thinking;       /* -1: the model's default */
} ngx_http_dsv4_alias_t;


typedef struct {
    ngx_str_t                   name;
    ngx_str_t                   path;           /* checkpoint directory */
    ngx_str_t                   tokenizer;      /* directory; "" = none */
    ngx_array_t                 aliases;        /* ngx_http_dsv4_alias_t */
    ngx_int_t                   max_ctx;        /* 0: min(model, 8192) */
    ngx_int_t                   max_tokens;     /* default completion; 0 */
    ngx_flag_t                  thinking;       /* default reasoning mode */

    /* default sampling; NaN / -2 when not set */
    float                       temperature;
    float                       top_p;
    float                       min_p;
    ngx_int_t                   top_k;

    ngx_uint_t                  index;          /* metrics slot */
    ngx_int_t                   cache_enable;   /* cache=on|off; -1 unset */

    /* per worker, set by the loader thread (state is the handshake) */
    ngx_atomic_t                state;
    char                        error[256];
    dsv4_model                 *model;
    dsv4_tokenizer             *tok;
    dsv4_vocab_index           *vocab_index;    /* constrained decoding */
    dsv4_sched                 *sched;
    dsv4_cache                 *cache;          /* prefix cache, or NULL */
    ngx_msec_t                  cache_stats_time;   /* last copied to shm */
    ngx_int_t                   ctx_len;        /* effective max_ctx */
    ngx_int_t                   vocab;
    int32_t                     stop_ids[8];    /* EOS, <|User|>, ... */
    ngx_uint_t                  n_stop_ids;
    double                      load_seconds;

    /* per worker, event loop only */
    ngx_connection_t           *notify;         /* the eventfd */
    ngx_uint_t                  settled;        /* load outcome seen */
} ngx_http_dsv4_model_t;


typedef struct {
    ngx_array_t                 models;         /* ngx_http_dsv4_model_t */

    ngx_int_t                   engines;
    ngx_int_t                   max_seqs;
    ngx_int_t                   max_batch_tokens;
    ngx_int_t                   prefill_chunk;
    ngx_int_t                   max_queue;

    ngx_uint_t                  backend;        /* NGX_HTTP_DSV4_BACKEND_* */
    ngx_int_t                   backend_threads;
    ngx_str_t                   backend_isa;    /* "" = auto */
    ngx_flag_t                  backend_blas;

    ngx_shm_zone_t             *shm_zone;

    /* prefix cache (docs/cache.md) */
    ngx_flag_t                  cache;
    ngx_str_t                   cache_redis;    /* as configured */
    ngx_str_t                   cache_redis_host;   /* NUL-terminated */
    ngx_int_t                   cache_redis_port;
    ngx_str_t                   cache_redis_unix;   /* NUL-terminated */
    ngx_str_t                   cache_key_prefix;
    ngx_msec_t                  cache_redis_timeout;
    time_t                      cache_ttl;
    size_t                      cache_max_value;
    size_t                      cache_memory;
    ngx_str_t                   cache_disk;     /* directory; "" = off */
    size_t                      cache_disk_max;
    ngx_int_t                   cache_block;
    ngx_uint_t                  cache_write;    /* DSV4_CACHE_WRITE_* */
    ngx_uint_t                  cache_scope;    /* NGX_HTTP_DSV4_CACHE_SCOPE_* */

    /* per worker */
    const dsv4_backend         *be;
    ngx_event_t                 load_event;
    ngx_uint_t                  loader_started;
    ngx_uint_t                  pending;        /* models still loading */
    ngx_atomic_t                loader_done;
    void                       *loader;         /* pthread_t * */
    ngx_str_t                   models_body;    /* GET /v1/models, heap, per worker */
    time_t                      models_time;    /* the second it was rendered for */
} ngx_http_dsv4_main_conf_t;


typedef struct {
    ngx_uint_t                  api;
    size_t                      max_body_size;
    ngx_int_t                   max_prompt_tokens;
    ngx_int_t                   max_tokens;
    ngx_int_t                   max_n;
    ngx_msec_t                  timeout;
    time_t                      retry_after;
#if (NGX_THREADS)
    ngx_thread_pool_t          *thread_pool;
    ngx_str_t                   thread_pool_name;
#endif
} ngx_http_dsv4_loc_conf_t;


/*
 * A validated request: what the body asked for, with the prompt(s) already
 * tokenized.  Built by ngx_http_dsv4_prepare() from malloc'd memory only,
 * so that it can run in a thread pool; freed by ngx_http_dsv4_prep_free().
 */
typedef struct {
    /* in */
    ngx_uint_t                  api;
    const u_char               *body;
    size_t                      len;
    ngx_http_dsv4_main_conf_t  *dmcf;
    ngx_int_t                   max_prompt_tokens;
    ngx_int_t                   max_tokens_limit;
    ngx_int_t                   max_n;

    /* out: an error */
    ngx_uint_t                  status;         /* 0: no error */
    char                        err[512];
    const char                 *param;
    const char                 *code;

    /* out: the request */
    json_t                     *root;
    ngx_http_dsv4_model_t      *model;
    char                       *model_name;     /* as requested (malloc) */
    ngx_uint_t                  stream;
    ngx_uint_t                  include_usage;
    ngx_uint_t                  n;              /* choices per prompt */
    ngx_uint_t                  nprompts;
    int32_t                   **prompts;        /* [nprompts][nids[i]] */
    int                        *nids;
    char                      **prompt_texts;   /* completions echo */
    ngx_int_t                   max_tokens;     /* per choice, resolved */
    dsv4_sample_params          sample;
    int32_t                    *bias_ids;
    float                      *bias_values;
    ngx_uint_t                  seed_given;
    ngx_int_t                   logprobs;       /* -1: off; else top n */
    ngx_uint_t                  echo;
    ngx_uint_t                  thinking;       /* prompt ends in <think> */
    ngx_uint_t                  thinking_mode;
    ngx_uint_t                  tools;          /* parse DSML */
    ngx_uint_t                  tool_choice_none;
    dsv4_grammar               *grammar;        /* constrained output */
    char                       *stop[NGX_HTTP_DSV4_MAX_STOP];
    ngx_uint_t                  nstop;
    ngx_uint_t                  add_special;    /* /tokenize */
    ngx_uint_t                  return_strs;    /* /tokenize */
} ngx_http_dsv4_prep_t;


/* One logprob entry held until the chunk that carries its text. */
typedef struct {
    int32_t                     id;
    float                       logprob;
    ngx_int_t                   k;              /* index of the token */
} ngx_http_dsv4_lp_t;


struct ngx_http_dsv4_choice_s {
    ngx_http_dsv4_ctx_t        *ctx;
    ngx_uint_t                  index;
    ngx_uint_t                  prompt;         /* which prompt */
    dsv4_request               *req;
    dsv4_parser                *parser;
    dsv4_decoder                dec;            /* no tokenizer: unused */

    ngx_uint_t                  ntokens;        /* completion tokens */
    ngx_uint_t                  ntaken;         /* tokens taken */
    ngx_uint_t                  reasoning_tokens;
    ngx_uint_t                  in_reasoning;
    ngx_uint_t                  ntool_calls;
    ngx_uint_t                  finish;         /* NGX_HTTP_DSV4_FINISH_* */
    ngx_int_t                   stop_index;     /* stop string, or -1 */
    int32_t                     stop_token;
    unsigned                    started:1;      /* role chunk sent */
    unsigned                    stopped:1;      /* parser saw a stop */
    unsigned                    cancelled:1;
    unsigned                    done:1;
    unsigned                    block_open:1;   /* anthropic */
    ngx_int_t                   block_type;     /* anthropic: open block */
    ngx_uint_t                  nblocks;        /* anthropic: blocks so far */
    size_t                      text_off;       /* content bytes so far */

    double                      t_last;         /* last token, seconds */

    /* non-streaming accumulators (malloc) */
    dsv4_strbuf                 content;
    dsv4_strbuf                 reasoning;
    json_t                     *tool_calls;     /* array, or NULL */
    json_t                     *logprobs;       /* array, or NULL */
    ngx_array_t                 pending_lp;     /* ngx_http_dsv4_lp_t */
};


struct ngx_http_dsv4_ctx_s {
    ngx_http_request_t         *request;
    ngx_http_dsv4_loc_conf_t   *dlcf;
    ngx_http_dsv4_prep_t       *prep;
    ngx_http_dsv4_model_t      *model;
    ngx_uint_t                  api;

    ngx_http_dsv4_choice_t     *choices;
    ngx_uint_t                  nchoices;
    ngx_uint_t                  ndone;

    ngx_uint_t                  prompt_tokens;
    ngx_uint_t                  completion_tokens;

    u_char                      id[40];
    size_t                      id_len;
    time_t                      created;
    double                      t_start;        /* seconds, monotonic */

    ngx_event_t                 timer;          /* engine idle timeout */

    dsv4_strbuf                 out;            /* SSE being composed */
    ngx_str_t                   chunk_head;     /* openai: chunk prefix */
    ngx_chain_t                *free;
    ngx_chain_t                *busy;

    unsigned                    stream:1;
    unsigned                    header_sent:1;
    unsigned                    finalized:1;
    unsigned                    error:1;
    unsigned                    submitted:1;
    unsigned                    in_thread:1;
};


extern ngx_module_t  ngx_http_dsv4_module;


/* ngx_http_dsv4_engine.c */
ngx_int_t ngx_http_dsv4_engine_init(ngx_cycle_t *cycle);
void ngx_http_dsv4_engine_exit(ngx_cycle_t *cycle);
ngx_uint_t ngx_http_dsv4_all_ready(ngx_http_dsv4_main_conf_t *dmcf);
ngx_http_dsv4_model_t *ngx_http_dsv4_find_model(
    ngx_http_dsv4_main_conf_t *dmcf, const char *name, size_t len,
    ngx_int_t *thinking);
double ngx_http_dsv4_now(void);

/* ngx_http_dsv4_request.c */
ngx_int_t ngx_http_dsv4_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_dsv4_send_error(ngx_http_request_t *r, ngx_uint_t api,
    ngx_uint_t status, const char *message, const char *param,
    const char *code);
ngx_int_t ngx_http_dsv4_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *body);
ngx_int_t ngx_http_dsv4_send_text(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, u_char *data, size_t len);
ngx_int_t ngx_http_dsv4_stream_header(ngx_http_request_t *r);
ngx_int_t ngx_http_dsv4_retry_after(ngx_http_request_t *r);
ngx_int_t ngx_http_dsv4_stream_flush(ngx_http_dsv4_ctx_t *ctx,
    ngx_uint_t last);
void ngx_http_dsv4_choice_ready(ngx_http_dsv4_choice_t *ch);
void ngx_http_dsv4_finalize(ngx_http_dsv4_ctx_t *ctx, ngx_int_t rc);
void ngx_http_dsv4_random_id(u_char *dst, const char *prefix, size_t n);
ngx_uint_t ngx_http_dsv4_cached_tokens(ngx_http_dsv4_ctx_t *ctx);

/* ngx_http_dsv4_prepare.c */
void ngx_http_dsv4_prepare(ngx_http_dsv4_prep_t *prep);
void ngx_http_dsv4_prep_free(ngx_http_dsv4_prep_t *prep);

/* ngx_http_dsv4_openai.c: callbacks of the generating APIs */
void ngx_http_dsv4_openai_event(ngx_http_dsv4_choice_t *ch,
    const dsv4_event *ev, ngx_http_dsv4_lp_t *lp, ngx_uint_t nlp);
void ngx_http_dsv4_openai_choice_done(ngx_http_dsv4_choice_t *ch);
ngx_int_t ngx_http_dsv4_openai_done(ngx_http_dsv4_ctx_t *ctx);
ngx_int_t ngx_http_dsv4_openai_start(ngx_http_dsv4_ctx_t *ctx);
void ngx_http_dsv4_stream_error(ngx_http_dsv4_ctx_t *ctx, const char *msg);

/* ngx_http_dsv4_anthropic.c */
json_t *ngx_http_dsv4_anthropic_to_openai(json_t *in, char *err,
    size_t errlen, const char **param);
void ngx_http_dsv4_anthropic_event(ngx_http_dsv4_choice_t *ch,
    const dsv4_event *ev);
void ngx_http_dsv4_anthropic_choice_done(ngx_http_dsv4_choice_t *ch);
ngx_int_t ngx_http_dsv4_anthropic_done(ngx_http_dsv4_ctx_t *ctx);
ngx_int_t ngx_http_dsv4_anthropic_start(ngx_http_dsv4_ctx_t *ctx);

/* ngx_http_dsv4_util.c */
ngx_int_t ngx_http_dsv4_models_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_dsv4_health_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_dsv4_tokenize(ngx_http_request_t *r,
    ngx_http_dsv4_prep_t *prep);
ngx_int_t ngx_http_dsv4_detokenize(ngx_http_request_t *r,
    ngx_http_dsv4_prep_t *prep);

/* ngx_http_dsv4_metrics.c */
ngx_int_t ngx_http_dsv4_metrics_init_conf(ngx_conf_t *cf,
    ngx_http_dsv4_main_conf_t *dmcf);
ngx_int_t ngx_http_dsv4_metrics_handler(ngx_http_request_t *r);
void ngx_http_dsv4_metrics_request(ngx_http_dsv4_model_t *m,
    ngx_uint_t prompt_tokens);
void ngx_http_dsv4_metrics_token(ngx_http_dsv4_model_t *m, double itl,
    ngx_uint_t n);
void ngx_http_dsv4_metrics_finish(ngx_http_dsv4_model_t *m,
    ngx_uint_t finish, double e2e, double queued, double ttft);
void ngx_http_dsv4_metrics_rejected(ngx_http_dsv4_model_t *m);
void ngx_http_dsv4_metrics_handler_time(ngx_http_dsv4_model_t *m, long long ns);
void ngx_http_dsv4_metrics_load(ngx_http_dsv4_model_t *m, ngx_uint_t loaded);
void ngx_http_dsv4_metrics_refresh(ngx_http_dsv4_model_t *m);
void ngx_http_dsv4_metrics_refresh_all(ngx_http_dsv4_main_conf_t *dmcf);
void ngx_http_dsv4_metrics_status(ngx_uint_t api, ngx_uint_t status);

/* ngx_http_dsv4_json.c */
int ngx_http_dsv4_json_str(dsv4_strbuf *b, const char *s, size_t len);
int ngx_http_dsv4_strbuf_printf(dsv4_strbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int ngx_http_dsv4_dump(dsv4_strbuf *b, const json_t *v);
json_t *ngx_http_dsv4_json_token(const dsv4_tokenizer *tok, int32_t id);


#endif /* _NGX_HTTP_DSV4_MODULE_H_INCLUDED_ */
