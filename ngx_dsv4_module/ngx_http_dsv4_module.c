
/*
 * ngx_http_dsv4_module: directives, configuration and process hooks.
 */


#include "ngx_http_dsv4_module.h"

#include <math.h>


static void *ngx_http_dsv4_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_dsv4_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_dsv4_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_dsv4_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_dsv4_model(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dsv4_api(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dsv4_backend(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dsv4_set_num(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dsv4_set_size(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dsv4_set_msec(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dsv4_set_sec(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dsv4_cache_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_dsv4_cache_disk(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
#if (NGX_THREADS)
static char *ngx_http_dsv4_thread_pool(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
#endif
static ngx_int_t ngx_http_dsv4_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_dsv4_init_process(ngx_cycle_t *cycle);
static void ngx_http_dsv4_exit_process(ngx_cycle_t *cycle);


static ngx_conf_num_bounds_t  ngx_http_dsv4_positive = {
    NULL, 1, 1000000000
};

static ngx_conf_num_bounds_t  ngx_http_dsv4_engines_bounds = {
    NULL, 1, 64
};

static ngx_conf_num_bounds_t  ngx_http_dsv4_queue_bounds = {
    NULL, 0, 1000000
};

static ngx_conf_num_bounds_t  ngx_http_dsv4_n_bounds = {
    NULL, 1, 128
};

static ngx_conf_num_bounds_t  ngx_http_dsv4_prompt_bounds = {
    NULL, 0, 1000000000
};


static ngx_conf_num_bounds_t  ngx_http_dsv4_block_bounds = {
    NULL, 4, 1048576
};

static ngx_conf_num_bounds_t  ngx_http_dsv4_status_bounds = {
    ngx_conf_check_num_bounds, 400, 599
};


static ngx_conf_enum_t  ngx_http_dsv4_log_levels[] = {
    { ngx_string("info"), NGX_LOG_INFO },
    { ngx_string("notice"), NGX_LOG_NOTICE },
    { ngx_string("warn"), NGX_LOG_WARN },
    { ngx_string("error"), NGX_LOG_ERR },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_dsv4_limit_fails[] = {
    { ngx_string("open"), 0 },
    { ngx_string("closed"), 1 },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_dsv4_cache_scopes[] = {
    { ngx_string("global"), NGX_HTTP_DSV4_CACHE_SCOPE_GLOBAL },
    { ngx_string("key"), NGX_HTTP_DSV4_CACHE_SCOPE_KEY },
    { ngx_string("auto"), NGX_HTTP_DSV4_CACHE_SCOPE_AUTO },
    { ngx_null_string, 0 }
};


/* dsv4_cache_write: bit 0 is "off", the tiers are DSV4_CACHE_WRITE_* << 1 */

static ngx_conf_bitmask_t  ngx_http_dsv4_cache_writes[] = {
    { ngx_string("off"), 1 },
    { ngx_string("memory"), DSV4_CACHE_WRITE_MEM << 1 },
    { ngx_string("disk"), DSV4_CACHE_WRITE_DISK << 1 },
    { ngx_string("redis"), DSV4_CACHE_WRITE_REDIS << 1 },
    { ngx_string("all"), DSV4_CACHE_WRITE_ALL << 1 },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_dsv4_apis[] = {
    { ngx_string("chat_completions"), NGX_HTTP_DSV4_API_CHAT },
    { ngx_string("completions"), NGX_HTTP_DSV4_API_COMPLETIONS },
    { ngx_string("messages"), NGX_HTTP_DSV4_API_MESSAGES },
    { ngx_string("models"), NGX_HTTP_DSV4_API_MODELS },
    { ngx_string("tokenize"), NGX_HTTP_DSV4_API_TOKENIZE },
    { ngx_string("detokenize"), NGX_HTTP_DSV4_API_DETOKENIZE },
    { ngx_string("health"), NGX_HTTP_DSV4_API_HEALTH },
    { ngx_string("metrics"), NGX_HTTP_DSV4_API_METRICS },
    { ngx_string("usage"), NGX_HTTP_DSV4_API_USAGE },
    { ngx_string("usage_admin"), NGX_HTTP_DSV4_API_USAGE_ADMIN },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_dsv4_commands[] = {

    { ngx_string("dsv4_model"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_dsv4_model,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dsv4_backend"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_dsv4_backend,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dsv4_engine_threads"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_num,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, engines),
      &ngx_http_dsv4_engines_bounds },

    { ngx_string("dsv4_max_seqs"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_num,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, max_seqs),
      &ngx_http_dsv4_positive },

    { ngx_string("dsv4_max_batch_tokens"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_num,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, max_batch_tokens),
      &ngx_http_dsv4_positive },

    { ngx_string("dsv4_prefill_chunk"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_num,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, prefill_chunk),
      &ngx_http_dsv4_positive },

    { ngx_string("dsv4_max_queue"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_num,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, max_queue),
      &ngx_http_dsv4_queue_bounds },

    { ngx_string("dsv4_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, cache),
      NULL },

    { ngx_string("dsv4_cache_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_cache_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dsv4_cache_redis_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_msec,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, cache_redis_timeout),
      NULL },

    { ngx_string("dsv4_cache_key_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, cache_key_prefix),
      NULL },

    { ngx_string("dsv4_cache_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_sec,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, cache_ttl),
      NULL },

    { ngx_string("dsv4_cache_max_value"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_size,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, cache_max_value),
      NULL },

    { ngx_string("dsv4_cache_memory"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_size,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, cache_memory),
      NULL },

    { ngx_string("dsv4_cache_disk"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_dsv4_cache_disk,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dsv4_cache_block"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_num,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, cache_block),
      &ngx_http_dsv4_block_bounds },

    { ngx_string("dsv4_cache_write"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_conf_set_bitmask_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, cache_write),
      &ngx_http_dsv4_cache_writes },

    { ngx_string("dsv4_cache_scope"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dsv4_main_conf_t, cache_scope),
      &ngx_http_dsv4_cache_scopes },

    { ngx_string("dsv4_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_dsv4_redis_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dsv4_keys"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_keys_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dsv4_admin_key"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_admin_key_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dsv4_limit_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_dsv4_limit_zone_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dsv4_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_dsv4_limit_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dsv4_limit_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, limit_dry_run),
      NULL },

    { ngx_string("dsv4_limit_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, limit_status),
      &ngx_http_dsv4_status_bounds },

    { ngx_string("dsv4_limit_log_level"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, limit_log_level),
      &ngx_http_dsv4_log_levels },

    { ngx_string("dsv4_limit_fail"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, limit_fail_closed),
      &ngx_http_dsv4_limit_fails },

    { ngx_string("dsv4_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, api),
      &ngx_http_dsv4_apis },

    { ngx_string("dsv4_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_size,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, max_body_size),
      NULL },

    { ngx_string("dsv4_max_prompt_tokens"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_num,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, max_prompt_tokens),
      &ngx_http_dsv4_prompt_bounds },

    { ngx_string("dsv4_max_tokens"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_num,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, max_tokens),
      &ngx_http_dsv4_positive },

    { ngx_string("dsv4_max_n"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_num,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, max_n),
      &ngx_http_dsv4_n_bounds },

    { ngx_string("dsv4_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_msec,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, timeout),
      NULL },

    { ngx_string("dsv4_retry_after"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_set_sec,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dsv4_loc_conf_t, retry_after),
      NULL },

#if (NGX_THREADS)
    { ngx_string("dsv4_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dsv4_thread_pool,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },
#endif

      ngx_null_command
};


static ngx_http_module_t  ngx_http_dsv4_module_ctx = {
    ngx_http_dsv4_preconfiguration,        /* preconfiguration */
    ngx_http_dsv4_errors_init,             /* postconfiguration */

    ngx_http_dsv4_create_main_conf,        /* create main configuration */
    ngx_http_dsv4_init_main_conf,          /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_dsv4_create_loc_conf,         /* create location configuration */
    ngx_http_dsv4_merge_loc_conf           /* merge location configuration */
};


ngx_module_t  ngx_http_dsv4_module = {
    NGX_MODULE_V1,
    &ngx_http_dsv4_module_ctx,             /* module context */
    ngx_http_dsv4_commands,                /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_dsv4_init_process,            /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_dsv4_exit_process,            /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_http_dsv4_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_dsv4_main_conf_t  *dmcf;

    dmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dsv4_main_conf_t));
    if (dmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&dmcf->models, cf->pool, 2,
                       sizeof(ngx_http_dsv4_model_t))
        != NGX_OK
        || ngx_array_init(&dmcf->key_files, cf->pool, 1,
                          sizeof(ngx_http_dsv4_keys_t *))
           != NGX_OK
        || ngx_array_init(&dmcf->limit_zones, cf->pool, 1,
                          sizeof(ngx_http_dsv4_limit_zone_t *))
           != NGX_OK)
    {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     dmcf->shm_zone = NULL;
     *     dmcf->loader_started = 0;
     *     dmcf->redis = NULL;
     */

    dmcf->backend = NGX_CONF_UNSET_UINT;
    dmcf->backend_threads = NGX_CONF_UNSET;
    dmcf->backend_blas = NGX_CONF_UNSET;
    dmcf->engines = NGX_CONF_UNSET;
    dmcf->max_seqs = NGX_CONF_UNSET;
    dmcf->max_batch_tokens = NGX_CONF_UNSET;
    dmcf->prefill_chunk = NGX_CONF_UNSET;
    dmcf->max_queue = NGX_CONF_UNSET;

    /*
     * set by ngx_pcalloc():
     *
     *     dmcf->cache_redis = { 0, NULL };
     *     dmcf->cache_disk = { 0, NULL };
     *     dmcf->cache_key_prefix = { 0, NULL };
     *     dmcf->cache_write = 0;               (the bitmask slot's unset)
     */

    dmcf->cache = NGX_CONF_UNSET;
    dmcf->cache_redis_timeout = NGX_CONF_UNSET_MSEC;
    dmcf->cache_ttl = NGX_CONF_UNSET;
    dmcf->cache_max_value = NGX_CONF_UNSET_SIZE;
    dmcf->cache_memory = NGX_CONF_UNSET_SIZE;
    dmcf->cache_disk_max = NGX_CONF_UNSET_SIZE;
    dmcf->cache_block = NGX_CONF_UNSET;
    dmcf->cache_scope = NGX_CONF_UNSET_UINT;

    return dmcf;
}


static char *
ngx_http_dsv4_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_dsv4_main_conf_t *dmcf = conf;

    ngx_uint_t                    i;
    ngx_http_dsv4_limit_zone_t  **zp;

    ngx_conf_init_uint_value(dmcf->backend, NGX_HTTP_DSV4_BACKEND_CPU);
    ngx_conf_init_value(dmcf->backend_threads, 0);
    ngx_conf_init_value(dmcf->backend_blas, 0);
    ngx_conf_init_value(dmcf->engines, 1);
    ngx_conf_init_value(dmcf->max_seqs, 16);
    ngx_conf_init_value(dmcf->max_batch_tokens, 512);
    ngx_conf_init_value(dmcf->prefill_chunk, 256);
    ngx_conf_init_value(dmcf->max_queue, 64);

    if (dmcf->max_batch_tokens < dmcf->max_seqs) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dsv4_max_batch_tokens\" %i is less than "
                           "\"dsv4_max_seqs\" %i: every running sequence "
                           "needs a row per step",
                           dmcf->max_batch_tokens, dmcf->max_seqs);
        return NGX_CONF_ERROR;
    }

    if (dmcf->prefill_chunk > dmcf->max_batch_tokens) {
        dmcf->prefill_chunk = dmcf->max_batch_tokens;
    }

    ngx_conf_init_value(dmcf->cache, 0);
    ngx_conf_init_msec_value(dmcf->cache_redis_timeout, 100);
    ngx_conf_init_value(dmcf->cache_ttl, 0);
    ngx_conf_init_size_value(dmcf->cache_max_value, 32 * 1024 * 1024);
    ngx_conf_init_size_value(dmcf->cache_memory, 64 * 1024 * 1024);
    ngx_conf_init_size_value(dmcf->cache_disk_max, 1024 * 1024 * 1024);
    ngx_conf_init_value(dmcf->cache_block, 0);
    ngx_conf_init_uint_value(dmcf->cache_scope,
                             NGX_HTTP_DSV4_CACHE_SCOPE_AUTO);

    if (dmcf->cache_key_prefix.data == NULL) {
        ngx_str_set(&dmcf->cache_key_prefix, "dsv4:");
    }

    if (dmcf->cache_block % 4 != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dsv4_cache_block\" %i is not a multiple of 4 "
                           "(nor, then, of the model's compress ratios)",
                           dmcf->cache_block);
        return NGX_CONF_ERROR;
    }

    /* the default write policy: every configured tier */

    if (dmcf->cache_write == 0) {
        dmcf->cache_write = DSV4_CACHE_WRITE_ALL;

    } else if (dmcf->cache_write & 1) {
        if (dmcf->cache_write != 1) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"dsv4_cache_write off\" cannot be combined "
                               "with a tier");
            return NGX_CONF_ERROR;
        }

        dmcf->cache_write = 0;

    } else {
        dmcf->cache_write >>= 1;
    }

    zp = dmcf->limit_zones.elts;

    for (i = 0; i < dmcf->limit_zones.nelts; i++) {
        if (zp[i]->redis && dmcf->redis == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"dsv4_limit_zone\" \"%V\" keeps its limits "
                               "in redis, but no \"dsv4_redis\" is set",
                               &zp[i]->name);
            return NGX_CONF_ERROR;
        }
    }

    if (dmcf->models.nelts
        && ngx_http_dsv4_metrics_init_conf(cf, dmcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_dsv4_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_dsv4_loc_conf_t  *dlcf;

    dlcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dsv4_loc_conf_t));
    if (dlcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     dlcf->thread_pool = NULL;
     *     dlcf->thread_pool_name = { 0, NULL };
     */

    dlcf->api = NGX_CONF_UNSET_UINT;
    dlcf->max_body_size = NGX_CONF_UNSET_SIZE;
    dlcf->max_prompt_tokens = NGX_CONF_UNSET;
    dlcf->max_tokens = NGX_CONF_UNSET;
    dlcf->max_n = NGX_CONF_UNSET;
    dlcf->timeout = NGX_CONF_UNSET_MSEC;
    dlcf->retry_after = NGX_CONF_UNSET;
    dlcf->keys = NGX_CONF_UNSET_PTR;
    dlcf->admin_key = NGX_CONF_UNSET_PTR;
    dlcf->limit_zone = NGX_CONF_UNSET_PTR;
    dlcf->limit_dry_run = NGX_CONF_UNSET;
    dlcf->limit_status = NGX_CONF_UNSET_UINT;
    dlcf->limit_log_level = NGX_CONF_UNSET_UINT;
    dlcf->limit_fail_closed = NGX_CONF_UNSET_UINT;

    return dlcf;
}


static char *
ngx_http_dsv4_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_dsv4_loc_conf_t *prev = parent;
    ngx_http_dsv4_loc_conf_t *conf = child;

    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_dsv4_main_conf_t  *dmcf;

    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              1024 * 1024);
    ngx_conf_merge_value(conf->max_prompt_tokens, prev->max_prompt_tokens, 0);
    ngx_conf_merge_value(conf->max_tokens, prev->max_tokens, 16384);
    ngx_conf_merge_value(conf->max_n, prev->max_n, 16);
    ngx_conf_merge_msec_value(conf->timeout, prev->timeout, 300000);
    ngx_conf_merge_value(conf->retry_after, prev->retry_after, 1);

    ngx_conf_merge_ptr_value(conf->keys, prev->keys, NULL);
    ngx_conf_merge_ptr_value(conf->admin_key, prev->admin_key, NULL);

    if (conf->limit_zone == NGX_CONF_UNSET_PTR) {
        conf->limit_zone = prev->limit_zone == NGX_CONF_UNSET_PTR
                           ? NULL : prev->limit_zone;
        conf->limits = prev->limits;
    }

    ngx_conf_merge_value(conf->limit_dry_run, prev->limit_dry_run, 0);
    ngx_conf_merge_uint_value(conf->limit_status, prev->limit_status,
                              NGX_HTTP_TOO_MANY_REQUESTS);
    ngx_conf_merge_uint_value(conf->limit_log_level, prev->limit_log_level,
                              NGX_LOG_ERR);
    ngx_conf_merge_uint_value(conf->limit_fail_closed,
                              prev->limit_fail_closed, 0);

    dmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dsv4_module);

    if (conf->keys && conf->keys->source == NGX_HTTP_DSV4_KEYS_REDIS
        && dmcf->redis == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dsv4_keys redis\" needs \"dsv4_redis\"");
        return NGX_CONF_ERROR;
    }

#if (NGX_THREADS)
    if (conf->thread_pool_name.data == NULL) {
        conf->thread_pool_name = prev->thread_pool_name;
        conf->thread_pool = prev->thread_pool;
    }
#endif

    /* a handler belongs to its location: not inherited */

    if (conf->api == NGX_CONF_UNSET_UINT) {
        conf->api = NGX_HTTP_DSV4_API_NONE;
        return NGX_CONF_OK;
    }

    /* nginx's errors before a location is chosen answer in JSON here */
    prev->json_errors = 1;

    if ((conf->api == NGX_HTTP_DSV4_API_USAGE
         || conf->api == NGX_HTTP_DSV4_API_USAGE_ADMIN)
        && conf->limit_zone == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dsv4_api usage\" and \"usage_admin\" read "
                           "the zone of \"dsv4_limit\", which is not set "
                           "here");
        return NGX_CONF_ERROR;
    }

    if (conf->api == NGX_HTTP_DSV4_API_USAGE_ADMIN
        && conf->admin_key == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dsv4_api usage_admin\" needs "
                           "\"dsv4_admin_key\"");
        return NGX_CONF_ERROR;
    }

    /*
     * The body limit is ours (so that the 413 has the API's error shape):
     * nginx's own client_max_body_size must not cut in first, and a body
     * up to the limit is kept in memory, never in a temporary file.  The
     * core module's location configuration is already merged here.
     */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->client_max_body_size != 0
        && clcf->client_max_body_size < (off_t) conf->max_body_size)
    {
        clcf->client_max_body_size = conf->max_body_size;
    }

    if (clcf->client_body_buffer_size < conf->max_body_size) {
        clcf->client_body_buffer_size = conf->max_body_size;
    }

    return NGX_CONF_OK;
}


/* Model names end up in JSON and in Prometheus labels: keep them plain. */

static ngx_int_t
ngx_http_dsv4_name_valid(ngx_str_t *name)
{
    size_t  i;

    if (name->len == 0 || name->len > 256) {
        return 0;
    }

    for (i = 0; i < name->len; i++) {
        if (name->data[i] <= 0x20 || name->data[i] == '"'
            || name->data[i] == '\\' || name->data[i] == 0x7f)
        {
            return 0;
        }
    }

    return 1;
}


static ngx_int_t
ngx_http_dsv4_name_taken(ngx_http_dsv4_main_conf_t *dmcf, ngx_str_t *name)
{
    ngx_uint_t              i, j;
    ngx_http_dsv4_alias_t  *alias;
    ngx_http_dsv4_model_t  *m;

    m = dmcf->models.elts;

    for (i = 0; i < dmcf->models.nelts; i++) {
        if (m[i].name.len == name->len
            && ngx_strncmp(m[i].name.data, name->data, name->len) == 0)
        {
            return 1;
        }

        alias = m[i].aliases.elts;

        for (j = 0; j < m[i].aliases.nelts; j++) {
            if (alias[j].name.len == name->len
                && ngx_strncmp(alias[j].name.data, name->data, name->len)
                   == 0)
            {
                return 1;
            }
        }
    }

    return 0;
}


/* The numeric dsv4_model parameters: NAME=value in [lo, hi]. */

typedef struct {
    ngx_str_t                   name;       /* with its '=' */
    ngx_uint_t                  integer;    /* ngx_int_t, else float */
    double                      lo;
    double                      hi;
    size_t                      offset;     /* in ngx_http_dsv4_model_t */
} ngx_http_dsv4_model_number_t;


static ngx_http_dsv4_model_number_t  ngx_http_dsv4_model_numbers[] = {
    { ngx_string("max_ctx="), 1, 2, NGX_MAX_INT32_VALUE,
      offsetof(ngx_http_dsv4_model_t, max_ctx) },
    { ngx_string("max_tokens="), 1, 1, NGX_MAX_INT32_VALUE,
      offsetof(ngx_http_dsv4_model_t, max_tokens) },
    { ngx_string("top_k="), 1, 0, NGX_MAX_INT32_VALUE,
      offsetof(ngx_http_dsv4_model_t, top_k) },
    { ngx_string("temperature="), 0, 0, DSV4_SAMPLE_MAX_TEMPERATURE,
      offsetof(ngx_http_dsv4_model_t, temperature) },
    { ngx_string("top_p="), 0, 1e-6, 1,
      offsetof(ngx_http_dsv4_model_t, top_p) },
    { ngx_string("min_p="), 0, 0, 1,
      offsetof(ngx_http_dsv4_model_t, min_p) }
};


/* NGX_DECLINED: v is none of them; NGX_ERROR: logged */

static ngx_int_t
ngx_http_dsv4_model_number(ngx_conf_t *cf, ngx_http_dsv4_model_t *m,
    ngx_str_t *v)
{
    char                          *end;
    double                         d;
    ngx_int_t                      k;
    ngx_uint_t                     i;
    ngx_http_dsv4_model_number_t  *n;

    for (i = 0; i < sizeof(ngx_http_dsv4_model_numbers)
                    / sizeof(ngx_http_dsv4_model_numbers[0]); i++)
    {
        n = &ngx_http_dsv4_model_numbers[i];

        if (v->len < n->name.len
            || ngx_strncmp(v->data, n->name.data, n->name.len) != 0)
        {
            continue;
        }

        if (n->integer) {
            k = ngx_atoi(v->data + n->name.len, v->len - n->name.len);
            d = k == NGX_ERROR ? -1.0 : (double) k;
            end = "";

        } else {
            /* configuration tokens are NUL-terminated */
            d = strtod((char *) v->data + n->name.len, &end);
        }

        if (v->len == n->name.len || *end != '\0' || !(d >= n->lo && d <= n->hi)) {
            if (n->integer) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid value \"%V\", expected an "
                                   "integer in [%i, %i]", v,
                                   (ngx_int_t) n->lo, (ngx_int_t) n->hi);
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid value \"%V\", expected a "
                                   "number in [%.2f, %.2f]", v, n->lo, n->hi);
            }

            return NGX_ERROR;
        }

        if (n->integer) {
            *(ngx_int_t *) ((u_char *) m + n->offset) = (ngx_int_t) d;

        } else {
            *(float *) ((u_char *) m + n->offset) = (float) d;
        }

        return NGX_OK;
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_dsv4_parse_int(ngx_str_t *v, size_t skip)
{
    return ngx_atoi(v->data + skip, v->len - skip);
}


/*
 * dsv4_model NAME PATH [alias=NAME[:thinking|:chat]] [tokenizer=DIR|off]
 *            [max_ctx=N] [max_tokens=N] [thinking=on|off]
 *            [temperature=F] [top_p=F] [top_k=N] [min_p=F];
 */

static char *
ngx_http_dsv4_model(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_main_conf_t *dmcf = conf;

    u_char                 *colon;
    ngx_int_t               rc;
    ngx_str_t              *value, s;
    ngx_uint_t              i;
    ngx_file_info_t         fi;
    ngx_http_dsv4_alias_t  *alias;
    ngx_http_dsv4_model_t  *m;

    value = cf->args->elts;

    if (!ngx_http_dsv4_name_valid(&value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid model name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_dsv4_name_taken(dmcf, &value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate model name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    m = ngx_array_push(&dmcf->models);
    if (m == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(m, sizeof(ngx_http_dsv4_model_t));

    if (ngx_array_init(&m->aliases, cf->pool, 2,
                       sizeof(ngx_http_dsv4_alias_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    m->name = value[1];
    m->path = value[2];
    m->index = dmcf->models.nelts - 1;
    m->thinking = 0;
    m->temperature = NAN;
    m->top_p = NAN;
    m->min_p = NAN;
    m->top_k = -2;
    m->cache_enable = -1;

    if (ngx_conf_full_name(cf->cycle, &m->path, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_file_info(m->path.data, &fi) == NGX_FILE_ERROR
        || !ngx_is_dir(&fi))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "model directory \"%V\" is not a directory",
                           &m->path);
        return NGX_CONF_ERROR;
    }

    m->tokenizer = m->path;

    for (i = 3; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "alias=", 6) == 0) {

            alias = ngx_array_push(&m->aliases);
            if (alias == NULL) {
                return NGX_CONF_ERROR;
            }

            alias->name.data = value[i].data + 6;
            alias->name.len = value[i].len - 6;
            alias->thinking = -1;

            colon = ngx_strlchr(alias->name.data,
                                alias->name.data + alias->name.len, ':');

            if (colon != NULL) {
                s.data = colon + 1;
                s.len = alias->name.data + alias->name.len - s.data;
                alias->name.len = colon - alias->name.data;

                if (s.len == 8 && ngx_strncmp(s.data, "thinking", 8) == 0) {
                    alias->thinking = 1;

                } else if (s.len == 4 && ngx_strncmp(s.data, "chat", 4) == 0)
                {
                    alias->thinking = 0;

                } else {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "invalid alias mode \"%V\" in \"%V\", "
                                       "expected \"thinking\" or \"chat\"",
                                       &s, &value[i]);
                    return NGX_CONF_ERROR;
                }
            }

            if (!ngx_http_dsv4_name_valid(&alias->name)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid parameter \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            m->aliases.nelts--;

            if (ngx_http_dsv4_name_taken(dmcf, &alias->name)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "duplicate model name \"%V\"",
                                   &alias->name);
                return NGX_CONF_ERROR;
            }

            m->aliases.nelts++;

            continue;
        }

        if (ngx_strncmp(value[i].data, "tokenizer=", 10) == 0) {

            s.data = value[i].data + 10;
            s.len = value[i].len - 10;

            if (s.len == 3 && ngx_strncmp(s.data, "off", 3) == 0) {
                ngx_str_null(&m->tokenizer);
                continue;
            }

            if (s.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid parameter \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            m->tokenizer = s;

            if (ngx_conf_full_name(cf->cycle, &m->tokenizer, 0) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        rc = ngx_http_dsv4_model_number(cf, m, &value[i]);

        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }

        if (rc == NGX_OK) {
            continue;
        }

        if (ngx_strcmp(value[i].data, "cache=on") == 0) {
            m->cache_enable = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "cache=off") == 0) {
            m->cache_enable = 0;
            continue;
        }

        if (ngx_strcmp(value[i].data, "thinking=on") == 0) {
            m->thinking = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "thinking=off") == 0) {
            m->thinking = 0;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_dsv4_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char                      *rv;
    ngx_http_core_loc_conf_t  *clcf;

    rv = ngx_conf_set_enum_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_dsv4_handler;

    return NGX_CONF_OK;
}


/*
 * dsv4_cache_redis IP[:PORT] | [IPV6]:PORT | unix:/path | off;
 *
 * Names are refused: hiredis would resolve them with a blocking
 * getaddrinfo() on every reconnect.
 */

static char *
ngx_http_dsv4_cache_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_main_conf_t *dmcf = conf;

    u_char     *p, *last, *colon;
    ngx_str_t  *value, host;
    ngx_int_t   port;
#if (NGX_HAVE_INET6)
    u_char      a6[16];
#endif

    if (dmcf->cache_redis.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;
    dmcf->cache_redis = value[1];

    if (ngx_strcmp(value[1].data, "off") == 0) {
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value[1].data, "unix:", 5) == 0) {
        dmcf->cache_redis_unix.data = value[1].data + 5;
        dmcf->cache_redis_unix.len = value[1].len - 5;

        if (dmcf->cache_redis_unix.len == 0) {
            goto invalid;
        }

        if (ngx_conf_full_name(cf->cycle, &dmcf->cache_redis_unix, 0)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    p = value[1].data;
    last = p + value[1].len;
    port = 6379;

    if (*p == '[') {
        colon = ngx_strlchr(p, last, ']');
        if (colon == NULL) {
            goto invalid;
        }

        host.data = p + 1;
        host.len = colon - host.data;
        p = colon + 1;

        if (p < last) {
            if (*p != ':') {
                goto invalid;
            }

            port = ngx_atoi(p + 1, last - p - 1);
        }

#if (NGX_HAVE_INET6)
        if (ngx_inet6_addr(host.data, host.len, a6) != NGX_OK) {
            goto invalid;
        }
#else
        goto invalid;
#endif

    } else {
        colon = ngx_strlchr(p, last, ':');

        host.data = p;
        host.len = (colon ? colon : last) - p;

        if (colon) {
            port = ngx_atoi(colon + 1, last - colon - 1);
        }

        if (ngx_inet_addr(host.data, host.len) == INADDR_NONE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid Redis address \"%V\": expected an "
                               "IP literal (names would resolve blocking), "
                               "[IPv6]:port or unix:/path", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (port < 1 || port > 65535) {
        goto invalid;
    }

    dmcf->cache_redis_host.data = ngx_pnalloc(cf->pool, host.len + 1);
    if (dmcf->cache_redis_host.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(dmcf->cache_redis_host.data, host.data, host.len);
    dmcf->cache_redis_host.data[host.len] = '\0';
    dmcf->cache_redis_host.len = host.len;
    dmcf->cache_redis_port = port;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid Redis address \"%V\", expected IP[:PORT], "
                       "[IPv6]:PORT or unix:/path", &value[1]);
    return NGX_CONF_ERROR;
}


/* dsv4_cache_disk PATH [max=SIZE] | off; */

static char *
ngx_http_dsv4_cache_disk(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_main_conf_t *dmcf = conf;

    off_t       size;
    ngx_str_t  *value, s;

    if (dmcf->cache_disk.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts > 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\" after \"off\"",
                               &value[2]);
            return NGX_CONF_ERROR;
        }

        ngx_str_set(&dmcf->cache_disk, "");
        return NGX_CONF_OK;
    }

    dmcf->cache_disk = value[1];

    if (ngx_conf_full_name(cf->cycle, &dmcf->cache_disk, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts > 2) {
        if (ngx_strncmp(value[2].data, "max=", 4) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\", expected "
                               "max=SIZE", &value[2]);
            return NGX_CONF_ERROR;
        }

        s.data = value[2].data + 4;
        s.len = value[2].len - 4;

        size = ngx_parse_offset(&s);

        if (size <= 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid max size \"%V\", expected a size "
                               "such as 512m or 10g", &value[2]);
            return NGX_CONF_ERROR;
        }

        dmcf->cache_disk_max = (size_t) size;
    }

    return NGX_CONF_OK;
}


#if (NGX_THREADS)

static char *
ngx_http_dsv4_thread_pool(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_loc_conf_t *dlcf = conf;

    ngx_str_t  *value;

    if (dlcf->thread_pool_name.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    dlcf->thread_pool_name = value[1];

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        dlcf->thread_pool = NULL;
        return NGX_CONF_OK;
    }

    dlcf->thread_pool = ngx_thread_pool_add(cf, &value[1]);
    if (dlcf->thread_pool == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}

#endif


/*
 * dsv4_backend cpu [threads=N] [isa=auto|avx512|avx2|generic] [blas=on|off];
 * dsv4_backend scalar;
 */

static char *
ngx_http_dsv4_backend(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dsv4_main_conf_t *dmcf = conf;

    ngx_str_t   *value, s;
    ngx_uint_t   i;

    if (dmcf->backend != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "scalar") == 0) {
        if (cf->args->nelts > 2) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\": the scalar "
                               "backend takes none", &value[2]);
            return NGX_CONF_ERROR;
        }

        dmcf->backend = NGX_HTTP_DSV4_BACKEND_SCALAR;
        return NGX_CONF_OK;
    }

    if (ngx_strcmp(value[1].data, "cpu") != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid backend \"%V\", expected \"cpu\" or "
                           "\"scalar\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    dmcf->backend = NGX_HTTP_DSV4_BACKEND_CPU;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "threads=", 8) == 0) {
            dmcf->backend_threads = ngx_http_dsv4_parse_int(&value[i], 8);

            if (dmcf->backend_threads < 0
                || dmcf->backend_threads > 1024)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid threads \"%V\", expected 0 "
                                   "(one per CPU) to 1024", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "isa=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            if (ngx_strcmp(s.data, "auto") != 0
                && ngx_strcmp(s.data, "avx512") != 0
                && ngx_strcmp(s.data, "avx2") != 0
                && ngx_strcmp(s.data, "generic") != 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid isa \"%V\", expected auto, "
                                   "avx512, avx2 or generic", &value[i]);
                return NGX_CONF_ERROR;
            }

            dmcf->backend_isa = s;
            continue;
        }

        if (ngx_strcmp(value[i].data, "blas=on") == 0) {
            dmcf->backend_blas = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "blas=off") == 0) {
            dmcf->backend_blas = 0;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * The stock slot setters, with a message that names the offending value
 * (the stock ones say only "invalid number"); the numbers' bounds come from
 * cmd->post as an ngx_conf_num_bounds_t.
 */

static char *
ngx_http_dsv4_set_value(ngx_conf_t *cf, ngx_command_t *cmd, void *conf,
    char *(*set)(ngx_conf_t *cf, ngx_command_t *cmd, void *conf),
    const char *expected)
{
    char                   *rv;
    ngx_int_t               n;
    ngx_str_t              *value;
    ngx_command_t           c;
    ngx_conf_num_bounds_t  *b;

    value = cf->args->elts;

    c = *cmd;
    c.post = NULL;

    rv = set(cf, &c, conf);

    if (rv != NGX_CONF_OK && rv != NGX_CONF_ERROR
        && ngx_strcmp(rv, "is duplicate") == 0)
    {
        return rv;
    }

    b = cmd->post;

    if (rv == NGX_CONF_OK && b != NULL) {
        n = *(ngx_int_t *) ((char *) conf + cmd->offset);

        if (n >= b->low && n <= b->high) {
            return NGX_CONF_OK;
        }
    }

    if (rv == NGX_CONF_OK && b == NULL) {
        return NGX_CONF_OK;
    }

    if (b != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\", expected %s from %i to %i",
                           &value[1], expected, b->low, b->high);

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\", expected %s",
                           &value[1], expected);
    }

    return NGX_CONF_ERROR;
}


static char *
ngx_http_dsv4_set_num(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return ngx_http_dsv4_set_value(cf, cmd, conf, ngx_conf_set_num_slot,
                                   "an integer");
}


static char *
ngx_http_dsv4_set_size(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return ngx_http_dsv4_set_value(cf, cmd, conf, ngx_conf_set_size_slot,
                                   "a size such as 512k or 1m");
}


static char *
ngx_http_dsv4_set_msec(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return ngx_http_dsv4_set_value(cf, cmd, conf, ngx_conf_set_msec_slot,
                                   "a time such as 500ms or 30s");
}


static char *
ngx_http_dsv4_set_sec(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    return ngx_http_dsv4_set_value(cf, cmd, conf, ngx_conf_set_sec_slot,
                                   "a time in seconds such as 1 or 5s");
}


static ngx_int_t
ngx_http_dsv4_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_dsv4_add_variables(cf);
}


static ngx_int_t
ngx_http_dsv4_init_process(ngx_cycle_t *cycle)
{
    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    ngx_http_dsv4_limit_init_process(cycle);

    return ngx_http_dsv4_engine_init(cycle);
}


static void
ngx_http_dsv4_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_dsv4_main_conf_t  *dmcf;

    ngx_http_dsv4_limit_exit_process(cycle);
    ngx_http_dsv4_engine_exit(cycle);

    dmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_dsv4_module);

    if (dmcf != NULL) {
        free(dmcf->models_body.data);      /* jansson's malloc */
        ngx_str_null(&dmcf->models_body);
    }
}
