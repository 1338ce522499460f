
/*
 * hiredis's asynchronous API on the worker's event loop: the Redis behind
 * API keys, fleet limits and metering (dsv4_redis).  One connection per
 * worker, pipelined; commands time out as a whole (hiredis 0.14 has no
 * timeouts of its own): when the oldest unanswered command is older than
 * the timeout the connection is dropped, every pending command is answered
 * with NULL, and a timer reconnects with back-off.
 *
 * The event loop owns everything here: no thread ever touches the context
 * (TOOLCHAIN.md §2, the notes on wiring hiredis to nginx).
 */


#include "ngx_http_dsv4_module.h"

#include <hiredis/hiredis.h>
#include <hiredis/async.h>


#define NGX_HTTP_DSV4_REDIS_BACKOFF_MIN   100       /* ms */
#define NGX_HTTP_DSV4_REDIS_BACKOFF_MAX   5000
#define NGX_HTTP_DSV4_ADDR_CAUSE          160       /* "redis ADDR kind" */


/* One command in flight; hiredis answers them in the order they were sent. */

typedef struct {
    ngx_queue_t                      queue;     /* in rd->pending */
    ngx_msec_t                       sent;
    ngx_http_dsv4_redis_handler_pt   handler;   /* NULL: a SCRIPT LOAD */
    void                            *data;      /* or the script index */
    ngx_http_dsv4_redis_t           *rd;
} ngx_http_dsv4_redis_cmd_t;


static void ngx_http_dsv4_redis_warn(ngx_http_dsv4_redis_t *rd,
    const char *kind, const char *why, size_t len);
static void ngx_http_dsv4_redis_connect(ngx_http_dsv4_redis_t *rd);
static void ngx_http_dsv4_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_dsv4_redis_timeout_handler(ngx_event_t *ev);
static void ngx_http_dsv4_redis_lost(ngx_http_dsv4_redis_t *rd,
    const char *why);
static void ngx_http_dsv4_redis_reply(redisAsyncContext *ac, void *reply,
    void *privdata);
static ngx_int_t ngx_http_dsv4_redis_queue(ngx_http_dsv4_redis_t *rd,
    int argc, const char **argv, const size_t *argvlen,
    ngx_http_dsv4_redis_handler_pt handler, void *data);


/* "IP:PORT" (an IP literal: hiredis resolves names with a blocking call)
 * or "unix:/path"; strings are copied NUL-terminated from cf->pool. */

ngx_int_t
ngx_http_dsv4_redis_parse(ngx_conf_t *cf, ngx_str_t *addr,
    ngx_http_dsv4_redis_t *rd)
{
    u_char     *colon, *host;
    ngx_int_t   port;
    in_addr_t   inaddr;

    rd->addr = *addr;

    if (addr->len > 5 && ngx_strncmp(addr->data, "unix:", 5) == 0) {
        rd->unix_path = ngx_pnalloc(cf->pool, addr->len - 5 + 1);
        if (rd->unix_path == NULL) {
            return NGX_ERROR;
        }

        ngx_cpystrn(rd->unix_path, addr->data + 5, addr->len - 5 + 1);
        return NGX_OK;
    }

    colon = ngx_strlchr(addr->data, addr->data + addr->len, ':');

    if (colon == NULL || colon == addr->data) {
        return NGX_DECLINED;
    }

    port = ngx_atoi(colon + 1, addr->data + addr->len - colon - 1);
    if (port < 1 || port > 65535) {
        return NGX_DECLINED;
    }

    inaddr = ngx_inet_addr(addr->data, colon - addr->data);
    if (inaddr == INADDR_NONE) {
        return NGX_DECLINED;
    }

    host = ngx_pnalloc(cf->pool, colon - addr->data + 1);
    if (host == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn(host, addr->data, colon - addr->data + 1);

    rd->host = host;
    rd->port = port;

    return NGX_OK;
}


/* Called in init_process: the first connection attempt (not awaited). */

void
ngx_http_dsv4_redis_start(ngx_http_dsv4_redis_t *rd, ngx_log_t *log)
{
    rd->log = log;
    rd->backoff = NGX_HTTP_DSV4_REDIS_BACKOFF_MIN;

    ngx_queue_init(&rd->pending);

    rd->reconnect.handler = ngx_http_dsv4_redis_reconnect_handler;
    rd->reconnect.data = rd;
    rd->reconnect.log = log;
    rd->reconnect.cancelable = 1;

    rd->timer.handler = ngx_http_dsv4_redis_timeout_handler;
    rd->timer.data = rd;
    rd->timer.log = log;
    rd->timer.cancelable = 1;

    ngx_http_dsv4_redis_connect(rd);
}


/* exit_process: pending commands are dropped unanswered, then it's gone */

void
ngx_http_dsv4_redis_stop(ngx_http_dsv4_redis_t *rd)
{
    rd->stopping = 1;

    if (rd->reconnect.timer_set) {
        ngx_del_timer(&rd->reconnect);
    }

    ngx_http_dsv4_redis_lost(rd, NULL);
}


/*
 * A failure's [warn]: one per kind and server per interval per worker, so
 * that a Redis outage under load does not flood the log.
 */

static void
ngx_http_dsv4_redis_warn(ngx_http_dsv4_redis_t *rd, const char *kind,
    const char *why, size_t len)
{
    u_char  cause[NGX_HTTP_DSV4_ADDR_CAUSE];

    (void) ngx_snprintf(cause, sizeof(cause) - 1, "redis %V %s%Z", &rd->addr,
                        kind);

    ngx_http_dsv4_log_fault(NGX_LOG_WARN, rd->log, (char *) cause,
                            "dsv4: redis %V: %s: %*s", &rd->addr, kind, len,
                            why);
}


/* ---------------------------------------------------------------------- */
/* hiredis's event hooks on an nginx connection                            */


static void
ngx_http_dsv4_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    redisAsyncHandleRead(c->data);
}


static void
ngx_http_dsv4_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t  *c = ev->data;

    redisAsyncHandleWrite(c->data);
}


/*
 * Level-triggered (NGX_LEVEL_EVENT): hiredis reads at most 16 KiB per call,
 * so an edge-triggered registration would stall on a larger reply.
 */

static void
ngx_http_dsv4_redis_add(ngx_event_t *ev, ngx_int_t event)
{
    if (!ev->active) {
        (void) ngx_add_event(ev, event, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_dsv4_redis_del(ngx_event_t *ev, ngx_int_t event)
{
    if (ev->active) {
        (void) ngx_del_event(ev, event, 0);
    }
}


static void
ngx_http_dsv4_redis_add_read(void *data)
{
    ngx_connection_t  *c = data;

    ngx_http_dsv4_redis_add(c->read, NGX_READ_EVENT);
}


static void
ngx_http_dsv4_redis_del_read(void *data)
{
    ngx_connection_t  *c = data;

    ngx_http_dsv4_redis_del(c->read, NGX_READ_EVENT);
}


static void
ngx_http_dsv4_redis_add_write(void *data)
{
    ngx_connection_t  *c = data;

    ngx_http_dsv4_redis_add(c->write, NGX_WRITE_EVENT);
}


static void
ngx_http_dsv4_redis_del_write(void *data)
{
    ngx_connection_t  *c = data;

    ngx_http_dsv4_redis_del(c->write, NGX_WRITE_EVENT);
}


/*
 * hiredis calls this right before redisFree() closes the socket: give the
 * connection back without closing the fd ourselves (that would be a double
 * close, possibly of a reused descriptor).
 */

static void
ngx_http_dsv4_redis_cleanup(void *data)
{
    ngx_connection_t  *c = data;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }

    c->read->closed = 1;
    c->write->closed = 1;
    c->fd = (ngx_socket_t) -1;

    ngx_free_connection(c);
}


/* ---------------------------------------------------------------------- */
/* connecting                                                              */


static void
ngx_http_dsv4_redis_on_connect(const redisAsyncContext *ac, int status)
{
    ngx_http_dsv4_redis_t  *rd = ac->data;

    if (status != REDIS_OK) {

        /* hiredis frees the context after this: forget it */

        ngx_http_dsv4_redis_warn(rd, "cannot connect", ac->errstr,
                                 ngx_strlen(ac->errstr));

        rd->ac = NULL;
        ngx_http_dsv4_redis_lost(rd, NULL);
        return;
    }

    rd->connected = 1;
    rd->backoff = NGX_HTTP_DSV4_REDIS_BACKOFF_MIN;

    ngx_log_error(NGX_LOG_INFO, rd->log, 0, "dsv4: redis %V: connected",
                  &rd->addr);
}


static void
ngx_http_dsv4_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_http_dsv4_redis_t  *rd = ac->data;

    if (rd->ac != ac) {
        return;     /* we dropped it ourselves */
    }

    rd->ac = NULL;

    ngx_http_dsv4_redis_lost(rd, status == REDIS_OK ? NULL : ac->errstr);
}


static void
ngx_http_dsv4_redis_connect(ngx_http_dsv4_redis_t *rd)
{
    ngx_uint_t             i;
    ngx_connection_t      *c;
    redisAsyncContext     *ac;
    const char            *argv[3];
    size_t                 argvlen[3];

    if (rd->unix_path) {
        ac = redisAsyncConnectUnix((char *) rd->unix_path);

    } else {
        ac = redisAsyncConnect((char *) rd->host, (int) rd->port);
    }

    if (ac == NULL || ac->err) {
        ngx_http_dsv4_redis_warn(rd, "cannot connect",
                                 ac ? ac->errstr : "out of memory",
                                 ngx_strlen(ac ? ac->errstr : "out of memory"));

        if (ac) {
            redisAsyncFree(ac);
        }

        ngx_http_dsv4_redis_lost(rd, NULL);
        return;
    }

    c = ngx_get_connection(ac->c.fd, rd->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_dsv4_redis_lost(rd, NULL);
        return;
    }

    c->data = ac;
    c->read->handler = ngx_http_dsv4_redis_read_handler;
    c->write->handler = ngx_http_dsv4_redis_write_handler;
    c->read->log = rd->log;
    c->write->log = rd->log;

    ac->data = rd;
    ac->ev.data = c;
    ac->ev.addRead = ngx_http_dsv4_redis_add_read;
    ac->ev.delRead = ngx_http_dsv4_redis_del_read;
    ac->ev.addWrite = ngx_http_dsv4_redis_add_write;
    ac->ev.delWrite = ngx_http_dsv4_redis_del_write;
    ac->ev.cleanup = ngx_http_dsv4_redis_cleanup;

    (void) redisAsyncSetConnectCallback(ac, ngx_http_dsv4_redis_on_connect);
    (void) redisAsyncSetDisconnectCallback(ac,
                                           ngx_http_dsv4_redis_on_disconnect);

    rd->ac = ac;

    /*
     * The scripts, loaded on every new connection (a restarted Redis has
     * none); until their SHA-1s arrive, callers send EVAL.  Queuing them
     * also asks for the write event that completes the connect.
     */

    for (i = 0; i < rd->nscripts; i++) {
        rd->sha[i][0] = '\0';

        argv[0] = "SCRIPT";
        argv[1] = "LOAD";
        argv[2] = rd->scripts[i];
        argvlen[0] = 6;
        argvlen[1] = 4;
        argvlen[2] = ngx_strlen(rd->scripts[i]);

        if (ngx_http_dsv4_redis_queue(rd, 3, argv, argvlen, NULL,
                                      (void *) (uintptr_t) i)
            != NGX_OK)
        {
            return;
        }
    }
}


static void
ngx_http_dsv4_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_dsv4_redis_t  *rd = ev->data;

    if (rd->ac == NULL && !rd->stopping) {
        ngx_http_dsv4_redis_connect(rd);
    }
}


/*
 * The connection is gone or given up: answer every pending command with
 * NULL (redisAsyncFree does, through the reply callback), forget the
 * context, and try again later.  why: a reason to log, or NULL.
 */

static void
ngx_http_dsv4_redis_lost(ngx_http_dsv4_redis_t *rd, const char *why)
{
    redisAsyncContext  *ac;

    rd->connected = 0;

    if (why) {
        ngx_http_dsv4_redis_warn(rd, "connection lost", why, ngx_strlen(why));
    }

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }

    /* cleared first: handlers that send again get NGX_DECLINED */

    ac = rd->ac;
    rd->ac = NULL;

    if (ac) {
        redisAsyncFree(ac);
    }

    if (!rd->stopping && !rd->reconnect.timer_set && !ngx_exiting) {
        ngx_add_timer(&rd->reconnect, rd->backoff);
        rd->backoff = ngx_min(rd->backoff * 2,
                              NGX_HTTP_DSV4_REDIS_BACKOFF_MAX);
    }
}


static void
ngx_http_dsv4_redis_timeout_handler(ngx_event_t *ev)
{
    ngx_http_dsv4_redis_t  *rd = ev->data;

    ngx_http_dsv4_redis_lost(rd, "timed out");
}


/* The timer runs for the oldest command still unanswered. */

static void
ngx_http_dsv4_redis_arm(ngx_http_dsv4_redis_t *rd)
{
    ngx_msec_int_t              left;
    ngx_http_dsv4_redis_cmd_t  *cmd;

    if (ngx_queue_empty(&rd->pending)) {
        if (rd->timer.timer_set) {
            ngx_del_timer(&rd->timer);
        }

        return;
    }

    cmd = ngx_queue_data(ngx_queue_head(&rd->pending),
                         ngx_http_dsv4_redis_cmd_t, queue);

    left = (ngx_msec_int_t) (cmd->sent + rd->timeout - ngx_current_msec);

    ngx_add_timer(&rd->timer, left > 0 ? (ngx_msec_t) left : 1);
}


/* ---------------------------------------------------------------------- */
/* commands                                                                */


static ngx_int_t
ngx_http_dsv4_redis_queue(ngx_http_dsv4_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_dsv4_redis_handler_pt handler, void *data)
{
    ngx_http_dsv4_redis_cmd_t  *cmd;

    cmd = ngx_alloc(sizeof(ngx_http_dsv4_redis_cmd_t), rd->log);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->sent = ngx_current_msec;
    cmd->handler = handler;
    cmd->data = data;
    cmd->rd = rd;

    if (redisAsyncCommandArgv(rd->ac, ngx_http_dsv4_redis_reply, cmd, argc,
                              argv, argvlen)
        != REDIS_OK)
    {
        ngx_free(cmd);
        return NGX_ERROR;
    }

    ngx_queue_insert_tail(&rd->pending, &cmd->queue);

    if (!rd->timer.timer_set) {
        ngx_http_dsv4_redis_arm(rd);
    }

    return NGX_OK;
}


/*
 * Sends a command; handler(reply, data) runs exactly once, later, with the
 * reply (owned by hiredis: valid only during the call) or NULL when Redis
 * did not answer in time or the connection was lost; never while the
 * worker exits.  Returns NGX_DECLINED
 * when there is no connection (the handler is then never called), NGX_ERROR
 * when hiredis refused the command.
 */

ngx_int_t
ngx_http_dsv4_redis_send(ngx_http_dsv4_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_dsv4_redis_handler_pt handler, void *data)
{
    if (rd->ac == NULL) {
        return NGX_DECLINED;
    }

    return ngx_http_dsv4_redis_queue(rd, argc, argv, argvlen, handler, data);
}


/*
 * Writes the queued commands now instead of on the next write event: for a
 * command whose effect must reach Redis before the client, answered next,
 * can send another request (to this or another server).  Not from inside a
 * reply handler (hiredis is reading then; the write event follows anyway).
 * A failed write drops the connection: pending handlers run from here.
 */

void
ngx_http_dsv4_redis_flush(ngx_http_dsv4_redis_t *rd)
{
    if (rd->ac != NULL && rd->connected && !rd->in_callback) {
        redisAsyncHandleWrite(rd->ac);
    }
}


/* script i's SHA-1 once SCRIPT LOAD answered on this connection, or NULL */

const char *
ngx_http_dsv4_redis_sha(ngx_http_dsv4_redis_t *rd, ngx_uint_t i)
{
    return (rd->connected && rd->sha[i][0]) ? rd->sha[i] : NULL;
}


/*
 * A NOSCRIPT error (someone ran SCRIPT FLUSH): forget the SHA-1s so that
 * callers send EVAL, and load the scripts again.  Returns 1 if it was one.
 */

ngx_uint_t
ngx_http_dsv4_redis_noscript(ngx_http_dsv4_redis_t *rd, redisReply *reply)
{
    ngx_uint_t   i;
    const char  *argv[3];
    size_t       argvlen[3];

    if (reply == NULL || reply->type != REDIS_REPLY_ERROR
        || reply->len < 8 || ngx_strncmp(reply->str, "NOSCRIPT", 8) != 0)
    {
        return 0;
    }

    for (i = 0; i < rd->nscripts; i++) {
        rd->sha[i][0] = '\0';

        if (rd->ac == NULL) {
            continue;
        }

        argv[0] = "SCRIPT";
        argv[1] = "LOAD";
        argv[2] = rd->scripts[i];
        argvlen[0] = 6;
        argvlen[1] = 4;
        argvlen[2] = ngx_strlen(rd->scripts[i]);

        (void) ngx_http_dsv4_redis_queue(rd, 3, argv, argvlen, NULL,
                                         (void *) (uintptr_t) i);
    }

    return 1;
}


static void
ngx_http_dsv4_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    ngx_uint_t                  i;
    redisReply                 *reply = r;
    ngx_http_dsv4_redis_t      *rd;
    ngx_http_dsv4_redis_cmd_t  *cmd = privdata;

    rd = cmd->rd;

    ngx_queue_remove(&cmd->queue);

    if (rd->stopping) {

        /* the worker exits: no request may be resumed now */

    } else if (cmd->handler) {
        rd->in_callback = 1;
        cmd->handler(reply, cmd->data);
        rd->in_callback = 0;

    } else if (reply && reply->type == REDIS_REPLY_STRING
               && reply->len == 40)
    {
        i = (ngx_uint_t) (uintptr_t) cmd->data;
        ngx_memcpy(rd->sha[i], reply->str, 40);
        rd->sha[i][40] = '\0';

    } else if (reply) {
        ngx_http_dsv4_redis_warn(rd, "SCRIPT LOAD failed",
                                 reply->type == REDIS_REPLY_ERROR
                                 ? reply->str : "",
                                 reply->type == REDIS_REPLY_ERROR
                                 ? reply->len : 0);
    }

    ngx_free(cmd);

    /* the connection may be gone by now (the handler, or a free) */

    if (rd->ac == ac) {
        ngx_http_dsv4_redis_arm(rd);
    }
}
