
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
 *   ngx_http_dsv4_keys.c       API keys: dsv4_keys, who is calling
 *   ngx_http_dsv4_limit.c      per-tenant limits: admission, reconciliation
 *                              and metering (arithmetic: limits/)
 *   ngx_http_dsv4_usage.c      /v1/usage, the $dsv4_* variables, per-tenant
 *                              metrics
 *   ngx_http_dsv4_redis.c      hiredis's async API on the event loop
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
#include "limits/limit.h"

#include <hiredis/hiredis.h>
#include <hiredis/async.h>


#define NGX_HTTP_DSV4_API_NONE              0
#define NGX_HTTP_DSV4_API_CHAT              1
#define NGX_HTTP_DSV4_API_COMPLETIONS       2
#define NGX_HTTP_DSV4_API_MESSAGES          3
#define NGX_HTTP_DSV4_API_MODELS            4
#define NGX_HTTP_DSV4_API_TOKENIZE          5
#define NGX_HTTP_DSV4_API_DETOKENIZE        6
#define NGX_HTTP_DSV4_API_HEALTH            7
#define NGX_HTTP_DSV4_API_METRICS           8
#define NGX_HTTP_DSV4_API_USAGE             9
#define NGX_HTTP_DSV4_API_USAGE_ADMIN       10
#define NGX_HTTP_DSV4_API_N                 11

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
/* the default: "key" where the request carries a dsv4_keys key, else "global" */
#define NGX_HTTP_DSV4_CACHE_SCOPE_AUTO      2


#define NGX_HTTP_DSV4_KEYS_OFF              0
#define NGX_HTTP_DSV4_KEYS_FILE             1
#define NGX_HTTP_DSV4_KEYS_REDIS            2

#define NGX_HTTP_DSV4_SCRIPT_ADMIT          0
#define NGX_HTTP_DSV4_SCRIPT_FINISH         1
#define NGX_HTTP_DSV4_SCRIPT_USAGE          2
#define NGX_HTTP_DSV4_SCRIPTS               3


typedef struct ngx_http_dsv4_ctx_s     ngx_http_dsv4_ctx_t;
typedef struct ngx_http_dsv4_choice_s  ngx_http_dsv4_choice_t;
typedef struct ngx_http_dsv4_lim_s     ngx_http_dsv4_lim_t;


/* reply: owned by hiredis, valid during the call; NULL: no answer */
typedef void (*ngx_http_dsv4_redis_handler_pt)(redisReply *reply,
    void *data);


/* dsv4_redis: the Redis behind keys, fleet limits and metering */
typedef struct {
    ngx_str_t                   addr;           /* as configured */
    u_char                     *host;           /* IP literal, or NULL */
    ngx_int_t                   port;
    u_char                     *unix_path;      /* or NULL */
    ngx_msec_t                  timeout;
    ngx_str_t                   prefix;         /* NUL-terminated */
    const char                 *scripts[NGX_HTTP_DSV4_SCRIPTS];
    ngx_uint_t                  nscripts;

    /* per worker, event loop only */
    redisAsyncContext          *ac;             /* NULL: not connected */
    ngx_uint_t                  connected;
    ngx_uint_t                  stopping;
    ngx_uint_t                  in_callback;    /* a reply handler runs */
    ngx_queue_t                 pending;        /* commands in flight */
    ngx_event_t                 timer;          /* oldest command's timeout */
    ngx_event_t                 reconnect;
    ngx_msec_t                  backoff;
    ngx_log_t                  *log;
    char                        sha[NGX_HTTP_DSV4_SCRIPTS][41];
} ngx_http_dsv4_redis_t;


/* dsv4_keys FILE, parsed once per file at configuration time */
typedef struct {
    ngx_uint_t                  source;         /* NGX_HTTP_DSV4_KEYS_* */
    ngx_str_t                   file;
    dsv4_key                   *keys;           /* sorted by digest */
    ngx_uint_t                  nkeys;
} ngx_http_dsv4_keys_t;


/* One tenant's node in a limit zone (shared memory). */
typedef struct {
    ngx_str_node_t              sn;             /* crc32 key; str: tenant */
    u_char                      tenant[DSV4_LIMIT_TENANT_MAX];
    dsv4_limit_state            state;          /* shm mode's limits */
    dsv4_meter                  meter;          /* this host's usage */
    uint64_t                    rejected[DSV4_LIMIT_REASONS];
} ngx_http_dsv4_tenant_t;


typedef struct {
    ngx_rbtree_t                rbtree;
    ngx_rbtree_node_t           sentinel;
    ngx_atomic_t                redis_failures;
    ngx_atomic_t                zone_full;      /* tenants refused a node */
} ngx_http_dsv4_limit_sh_t;


/* $dsv4_limit_status */
#define NGX_HTTP_DSV4_LIMIT_NONE            0
#define NGX_HTTP_DSV4_LIMIT_PASSED          1
#define NGX_HTTP_DSV4_LIMIT_REJECTED        2
#define NGX_HTTP_DSV4_LIMIT_REJECTED_DRY    3
#define NGX_HTTP_DSV4_LIMIT_FAILED_OPEN     4




#define NGX_HTTP_DSV4_COUNT_TOTAL           0
#define NGX_HTTP_DSV4_COUNT_PROMPT          1
#define NGX_HTTP_DSV4_COUNT_COMPLETION      2


/* dsv4_limit_zone */
typedef struct {
    ngx_str_t                   name;
    ngx_shm_zone_t             *shm_zone;
    ngx_uint_t                  redis;          /* limits live in Redis */
    ngx_uint_t                  count;          /* NGX_HTTP_DSV4_COUNT_* */
    ngx_int_t                   estimate;       /* -1: max_tokens */
    ngx_msec_t                  lease;
    ngx_http_dsv4_limit_sh_t   *sh;
    ngx_slab_pool_t            *shpool;
} ngx_http_dsv4_limit_zone_t;


/*
 * A request's tenant and limit state.  Heap memory, not the request pool:
 * a Redis command in flight may outlive the request, and its answer must
 * still end the lease it was given (ngx_http_dsv4_limit.c).
 */
struct ngx_http_dsv4_lim_s {
    ngx_http_request_t         *request;        /* NULL once it is gone */
    ngx_http_dsv4_ctx_t        *ctx;
    ngx_http_dsv4_limit_zone_t *zone;           /* NULL: no dsv4_limit */
    ngx_http_dsv4_redis_t      *redis;          /* the zone's, or keys' */
    dsv4_key                    key;            /* tenant, limits, models */
    dsv4_limits                 limits;         /* effective */
    int64_t                     cost;           /* tokens reserved */
    dsv4_limit_verdict          verdict;
    dsv4_limit_reservation      res;
    char                        lease[48];      /* concurrency lease id */
    ngx_uint_t                  status;         /* NGX_HTTP_DSV4_LIMIT_* */
    dsv4_limit_cmd              cmd;            /* the Redis command sent */
    ngx_uint_t                  script;         /* cmd's NGX_HTTP_DSV4_SCRIPT_* */
    void                      (*done)(ngx_http_dsv4_lim_t *lim,
                                      redisReply *reply);
    unsigned                    has_key:1;      /* key.tenant is set */
    unsigned                    pending:1;      /* Redis holds a pointer */
    unsigned                    decided:1;      /* admission is done */
    unsigned                    admitted:1;     /* a reservation to end */
    unsigned                    finished:1;     /* reconciled and metered */
    unsigned                    retried:1;      /* EVAL after NOSCRIPT */
    unsigned                    admin:1;        /* usage of every tenant */
};


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

    /* keys, limits, metering (docs/limits.md) */
    ngx_http_dsv4_redis_t      *redis;          /* dsv4_redis, or NULL */
    ngx_array_t                 key_files;      /* ngx_http_dsv4_keys_t * */
    ngx_array_t                 limit_zones;    /* ngx_http_dsv4_limit_zone_t * */

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
    ngx_flag_t                  json_errors;    /* a dsv4 location is below */
    size_t                      max_body_size;
    ngx_int_t                   max_prompt_tokens;
    ngx_int_t                   max_tokens;
    ngx_int_t                   max_n;
    ngx_msec_t                  timeout;
    time_t                      retry_after;

    ngx_http_dsv4_keys_t       *keys;           /* NULL: off */
    u_char                     *admin_key;      /* 32-byte digest, or NULL */
    ngx_shm_zone_t             *limit_zone;     /* its data: the zone; NULL: off */
    dsv4_limits                 limits;         /* defaults for keys */
    ngx_flag_t                  limit_dry_run;
    ngx_uint_t                  limit_status;
    ngx_uint_t                  limit_log_level;
    ngx_uint_t                  limit_fail_closed;
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

    ngx_http_dsv4_lim_t        *lim;            /* tenant, limits; or NULL */

    u_char                      id[40];
    size_t                      id_len;
    time_t                      created;
    double                      t_start;        /* seconds, monotonic */

    ngx_event_t                 timer;          /* engine idle timeout */

    dsv4_strbuf                 out;            /* SSE being composed */
    ngx_str_t                   chunk_head;     /* openai: chunk prefix */
    ngx_chain_t                *free;
    ngx_chain_t                *busy;

    /* nginx's read handler while the body arrives (errors.c watches it) */
    ngx_http_event_handler_pt   body_read_handler;

    unsigned                    body_read:1;    /* the body handler ran */
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
double ngx_http_dsv4_now(void);

/* ngx_http_dsv4_request.c */
ngx_int_t ngx_http_dsv4_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_dsv4_start(ngx_http_request_t *r);
void ngx_http_dsv4_run(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx);
ngx_int_t ngx_http_dsv4_add_header(ngx_http_request_t *r, const char *key,
    u_char *value, size_t len);
ngx_int_t ngx_http_dsv4_send_error(ngx_http_request_t *r, ngx_uint_t api,
    ngx_uint_t status, const char *message, const char *param,
    const char *code);
ngx_int_t ngx_http_dsv4_send_error_typed(ngx_http_request_t *r,
    ngx_uint_t api, ngx_uint_t status, const char *type, const char *message,
    const char *param, const char *code);
ngx_int_t ngx_http_dsv4_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *body);
ngx_int_t ngx_http_dsv4_json_text(ngx_pool_t *pool, json_t *body,
    ngx_str_t *text);
json_t *ngx_http_dsv4_error_json(ngx_uint_t api, ngx_uint_t status,
    const char *type, const char *message, const char *param,
    const char *code);
const char *ngx_http_dsv4_error_type(ngx_uint_t api, ngx_uint_t status);

/* ngx_http_dsv4_log.c: fault lines, one per cause per interval */
#define NGX_HTTP_DSV4_LOG_EVERY   10        /* seconds */
void ngx_http_dsv4_log_fault(ngx_uint_t level, ngx_log_t *log,
    const char *cause, const char *fmt, ...);

/* ngx_http_dsv4_errors.c */
ngx_int_t ngx_http_dsv4_errors_init(ngx_conf_t *cf);
void ngx_http_dsv4_watch_body_timeout(ngx_http_request_t *r,
    ngx_http_dsv4_ctx_t *ctx);
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

/* ngx_http_dsv4_prepare.c: no nginx runtime (thread pool, fuzz_request) */
ngx_http_dsv4_model_t *ngx_http_dsv4_find_model(
    ngx_http_dsv4_main_conf_t *dmcf, const char *name, size_t len,
    ngx_int_t *thinking);
void ngx_http_dsv4_prepare(ngx_http_dsv4_prep_t *prep);
void ngx_http_dsv4_prep_free(ngx_http_dsv4_prep_t *prep);
ngx_uint_t ngx_http_dsv4_prep_prompt_tokens(ngx_http_dsv4_prep_t *prep);

/* ngx_http_dsv4_openai.c: callbacks of the generating APIs */
void ngx_http_dsv4_openai_event(ngx_http_dsv4_choice_t *ch,
    const dsv4_event *ev, ngx_http_dsv4_lp_t *lp, ngx_uint_t nlp);
void ngx_http_dsv4_openai_choice_done(ngx_http_dsv4_choice_t *ch);
ngx_int_t ngx_http_dsv4_openai_done(ngx_http_dsv4_ctx_t *ctx);
ngx_int_t ngx_http_dsv4_openai_start(ngx_http_dsv4_ctx_t *ctx);
void ngx_http_dsv4_stream_error(ngx_http_dsv4_ctx_t *ctx, const char *msg);

/* ngx_http_dsv4_anthropic_request.c */
json_t *ngx_http_dsv4_anthropic_to_openai(json_t *in, char *err,
    size_t errlen, const char **param);

/* ngx_http_dsv4_anthropic.c */
void ngx_http_dsv4_anthropic_event(ngx_http_dsv4_choice_t *ch,
    const dsv4_event *ev);
void ngx_http_dsv4_anthropic_choice_done(ngx_http_dsv4_choice_t *ch);
ngx_int_t ngx_http_dsv4_anthropic_done(ngx_http_dsv4_ctx_t *ctx);
ngx_int_t ngx_http_dsv4_anthropic_start(ngx_http_dsv4_ctx_t *ctx);

/* ngx_http_dsv4_keys.c */
char *ngx_http_dsv4_keys_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_dsv4_admin_key_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_dsv4_bearer(ngx_http_request_t *r, ngx_str_t *token);
ngx_int_t ngx_http_dsv4_auth(ngx_http_request_t *r, ngx_http_dsv4_ctx_t *ctx);
ngx_uint_t ngx_http_dsv4_admin(ngx_http_request_t *r);
ngx_uint_t ngx_http_dsv4_key_allows(ngx_http_dsv4_ctx_t *ctx,
    ngx_http_dsv4_prep_t *prep);

/* ngx_http_dsv4_limit.c */
char *ngx_http_dsv4_redis_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_dsv4_limit_zone_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_dsv4_limit_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_dsv4_lim_t *ngx_http_dsv4_lim_new(ngx_http_request_t *r,
    ngx_http_dsv4_ctx_t *ctx);
void ngx_http_dsv4_lim_put(ngx_http_dsv4_lim_t *lim);
ngx_int_t ngx_http_dsv4_lim_send(ngx_http_dsv4_lim_t *lim, ngx_uint_t script,
    void (*done)(ngx_http_dsv4_lim_t *lim, redisReply *reply));
ngx_int_t ngx_http_dsv4_limit_admit(ngx_http_request_t *r,
    ngx_http_dsv4_ctx_t *ctx);
void ngx_http_dsv4_limit_finish(ngx_http_dsv4_ctx_t *ctx);
void ngx_http_dsv4_limit_release(ngx_http_dsv4_ctx_t *ctx);
void ngx_http_dsv4_limit_failure(ngx_http_dsv4_lim_t *lim, const char *what,
    const char *why);
ngx_http_dsv4_tenant_t *ngx_http_dsv4_tenant(ngx_http_dsv4_limit_zone_t *z,
    const char *tenant, ngx_uint_t create);
int64_t ngx_http_dsv4_now_ms(void);
void ngx_http_dsv4_limit_init_process(ngx_cycle_t *cycle);
void ngx_http_dsv4_limit_exit_process(ngx_cycle_t *cycle);

/* ngx_http_dsv4_usage.c */
ngx_int_t ngx_http_dsv4_usage_handler(ngx_http_request_t *r,
    ngx_http_dsv4_ctx_t *ctx);
ngx_int_t ngx_http_dsv4_add_variables(ngx_conf_t *cf);
ngx_int_t ngx_http_dsv4_limit_metrics(dsv4_strbuf *b,
    ngx_http_dsv4_main_conf_t *dmcf);

/* ngx_http_dsv4_redis.c */
ngx_int_t ngx_http_dsv4_redis_parse(ngx_conf_t *cf, ngx_str_t *addr,
    ngx_http_dsv4_redis_t *rd);
void ngx_http_dsv4_redis_start(ngx_http_dsv4_redis_t *rd, ngx_log_t *log);
void ngx_http_dsv4_redis_stop(ngx_http_dsv4_redis_t *rd);
ngx_int_t ngx_http_dsv4_redis_send(ngx_http_dsv4_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_dsv4_redis_handler_pt handler, void *data);
void ngx_http_dsv4_redis_flush(ngx_http_dsv4_redis_t *rd);
const char *ngx_http_dsv4_redis_sha(ngx_http_dsv4_redis_t *rd, ngx_uint_t i);
ngx_uint_t ngx_http_dsv4_redis_noscript(ngx_http_dsv4_redis_t *rd,
    redisReply *reply);

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
