/*
 * Encoding: added-token split, regex pre-tokenization, byte-level BPE.
 *
 * The order of operations mirrors the reference tokenizer so the ids are
 * identical: (1) added tokens with normalized=false are cut out of the raw
 * text, leftmost longest; (2) inside the remaining text, the normalized=true
 * ones; (3) every remaining span goes through each Split regex in turn (a
 * step splits every piece of the previous step into matches and the gaps
 * between them, both kept); (4) each final piece is BPE-merged over its
 * bytes, lowest merge rank first, leftmost first among equal ranks.
 *
 * Speed comes from three things: the whole text is validated once, so PCRE2
 * runs with NO_UTF_CHECK on JIT code; pieces are (pointer, length) views,
 * never copied; and each thread caches the ids of the words it has already
 * merged (natural text repeats words constantly).
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"

#define CACHE_SLOTS      (1u << 16)        /* power of two */
#define CACHE_MAX_WORD   256               /* bytes; longer words are not cached */
#define CACHE_ARENA_MAX  (8u << 20)        /* bytes before the cache is cleared */
#define JIT_STACK_MAX    (8u << 20)

typedef struct {
    uint32_t hash;
    uint32_t off;       /* into arena: word bytes, then ids at the next 4-byte boundary */
    uint16_t wlen;      /* 0 = empty slot */
    uint16_t nids;
} cache_slot;

typedef struct {
    int32_t rank, pos, lid, rid, mid;
} heap_ent;

struct tok_thread {
    const dsv4_tokenizer *t;             /* NULL once the tokenizer is freed */
    struct tok_thread    *next, *prev;   /* the tokenizer's list of states */
    struct tok_thread    *mine;          /* this thread's states, one per tokenizer */

    pcre2_match_data     *md;
    pcre2_match_context  *mctx;
    pcre2_jit_stack      *jstack;

    /* BPE scratch, grown to the longest word seen */
    int32_t  *sid, *sprev, *snext;
    size_t    scap;
    heap_ent *heap;
    size_t    hcap;

    /* word -> ids cache */
    cache_slot *slots;
    uint32_t    used;
    char       *arena;
    size_t      alen, acap;
};

typedef struct {
    const dsv4_tokenizer *t;
    struct tok_thread    *th;
    int32_t              *ids;
    size_t                cap, n;
} enc_state;


/* ---- per-thread state --------------------------------------------------- */

static void
thread_state_free(struct tok_thread *th)
{
    pcre2_match_data_free(th->md);
    pcre2_match_context_free(th->mctx);
    pcre2_jit_stack_free(th->jstack);
    free(th->sid);
    free(th->sprev);
    free(th->snext);
    free(th->heap);
    free(th->slots);
    free(th->arena);
    free(th);
}


/*
 * Ownership of the states: a thread's states (one per tokenizer it has
 * used) hang from one process-wide key and are freed when the thread exits;
 * a tokenizer only lists the states made for it.  Freeing a tokenizer
 * detaches them (t = NULL): a thread may be exiting at that very moment
 * (nginx ends its thread pool's threads just before the module frees its
 * models), so detaching and unlinking share one lock, and only the owner
 * ever frees a state — the calling thread's detached ones at once.
 */
static pthread_mutex_t dsv4_tok_threads_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t  dsv4_tok_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t   dsv4_tok_key;
static int             dsv4_tok_key_ok;

static void
thread_unlink(dsv4_tokenizer *t, struct tok_thread *th)
{
    if (th->prev) th->prev->next = th->next; else t->threads = th->next;
    if (th->next) th->next->prev = th->prev;
    th->next = th->prev = NULL;
}

static const dsv4_tokenizer *
thread_owner(const struct tok_thread *th)
{
    return __atomic_load_n(&th->t, __ATOMIC_ACQUIRE);
}

/* The key's destructor: all of an exiting thread's states. */
static void
thread_exit(void *head)
{
    struct tok_thread *th, *next;

    pthread_mutex_lock(&dsv4_tok_threads_lock);
    for (th = head; th != NULL; th = th->mine) {
        if (th->t != NULL) {
            thread_unlink((dsv4_tokenizer *) th->t, th);
        }
    }
    pthread_mutex_unlock(&dsv4_tok_threads_lock);
    for (th = head; th != NULL; th = next) {
        next = th->mine;
        thread_state_free(th);
    }
}

static void
thread_key_create(void)
{
    dsv4_tok_key_ok = pthread_key_create(&dsv4_tok_key, thread_exit) == 0;
}

/* Frees the calling thread's detached states. */
static void
thread_collect(void)
{
    struct tok_thread *head = pthread_getspecific(dsv4_tok_key), **pp = &head, *th;

    while ((th = *pp) != NULL) {
        if (thread_owner(th) == NULL) {
            *pp = th->mine;
            thread_state_free(th);
        } else {
            pp = &th->mine;
        }
    }
    pthread_setspecific(dsv4_tok_key, head);
}


void
dsv4_tok_threads_free(dsv4_tokenizer *t)
{
    pthread_mutex_lock(&dsv4_tok_threads_lock);
    while (t->threads) {
        struct tok_thread *th = t->threads;

        thread_unlink(t, th);
        __atomic_store_n(&th->t, NULL, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&dsv4_tok_threads_lock);
    if (dsv4_tok_key_ok) {
        thread_collect();
    }
}


static struct tok_thread *
thread_state(const dsv4_tokenizer *ct)
{
    dsv4_tokenizer    *t = (dsv4_tokenizer *) ct;   /* only the thread list changes */
    struct tok_thread *head, *th;

    pthread_once(&dsv4_tok_key_once, thread_key_create);
    if (!dsv4_tok_key_ok) {
        return NULL;
    }
    head = pthread_getspecific(dsv4_tok_key);
    for (th = head; th != NULL; th = th->mine) {
        if (thread_owner(th) == t) {
            return th;
        }
    }
    th = calloc(1, sizeof(*th));
    if (th == NULL) {
        return NULL;
    }
    th->t = t;
    th->md = pcre2_match_data_create(1, NULL);
    th->mctx = pcre2_match_context_create(NULL);
    th->jstack = pcre2_jit_stack_create(32 * 1024, JIT_STACK_MAX, NULL);
    th->slots = calloc(CACHE_SLOTS, sizeof(*th->slots));
    if (th->md == NULL || th->mctx == NULL || th->jstack == NULL || th->slots == NULL) {
        thread_state_free(th);
        return NULL;
    }
    pcre2_jit_stack_assign(th->mctx, NULL, th->jstack);
    th->mine = head;
    if (pthread_setspecific(dsv4_tok_key, th) != 0) {
        thread_state_free(th);
        return NULL;
    }
    pthread_mutex_lock(&dsv4_tok_threads_lock);
    th->next = t->threads;
    if (th->next) th->next->prev = th;
    t->threads = th;
    pthread_mutex_unlock(&dsv4_tok_threads_lock);
    return th;
}


/* ---- word cache ----------------------------------------------------------- */

static const cache_slot *
cache_get(const struct tok_thread *th, const char *w, size_t n, uint32_t h)
{
    for (uint32_t i = h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        const cache_slot *s = &th->slots[i];

        if (s->wlen == 0) {
            return NULL;
        }
        if (s->hash == h && s->wlen == n && memcmp(th->arena + s->off, w, n) == 0) {
            return s;
        }
    }
}


static void
cache_put(struct tok_thread *th, const char *w, size_t n, uint32_t h,
          const int32_t *ids, size_t nids)
{
    size_t need = ((n + 3) & ~(size_t) 3) + nids * sizeof(int32_t);
    uint32_t i;

    /* bounded: start over rather than evict piecemeal */
    if (th->used >= CACHE_SLOTS / 2 || th->alen + need > CACHE_ARENA_MAX) {
        memset(th->slots, 0, CACHE_SLOTS * sizeof(*th->slots));
        th->used = 0;
        th->alen = 0;
    }
    if (th->alen + need > th->acap) {
        size_t cap = th->acap ? th->acap : 64 * 1024;
        char  *p;

        while (cap < th->alen + need) cap *= 2;
        p = realloc(th->arena, cap);
        if (p == NULL) {
            return;     /* caching is optional */
        }
        th->arena = p;
        th->acap = cap;
    }
    for (i = h & (CACHE_SLOTS - 1); th->slots[i].wlen; i = (i + 1) & (CACHE_SLOTS - 1)) {}
    th->slots[i] = (cache_slot) {h, (uint32_t) th->alen, (uint16_t) n, (uint16_t) nids};
    memcpy(th->arena + th->alen, w, n);
    memcpy(th->arena + th->alen + ((n + 3) & ~(size_t) 3), ids, nids * sizeof(int32_t));
    th->alen += need;
    th->used++;
}


/* ---- BPE -------------------------------------------------------------------- */

static inline const tok_merge *
merge_find(const dsv4_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key, h;

    if (a < 0 || b < 0) {
        return NULL;
    }
    key = ((uint64_t) (uint32_t) (a + 1) << 32) | (uint32_t) b;
    h = key * 0x9E3779B97F4A7C15ull;
    for (uint64_t i = (h >> 20) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const tok_merge *m = &t->merges[i];

        if (m->key == key) return m;
        if (m->key == 0) return NULL;
    }
}


static inline int
heap_less(const heap_ent *a, const heap_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}


static void
heap_push(heap_ent *h, size_t *n, heap_ent e)
{
    size_t i = (*n)++;

    while (i > 0) {
        size_t p = (i - 1) / 2;

        if (!heap_less(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}


static heap_ent
heap_pop(heap_ent *h, size_t *n)
{
    heap_ent top = h[0], last = h[--(*n)];
    size_t   i = 0;

    for (;;) {
        size_t c = 2 * i + 1;

        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}


static void
try_pair(const dsv4_tokenizer *t, struct tok_thread *th, size_t *nh, int32_t l, int32_t r)
{
    const tok_merge *m = merge_find(t, th->sid[l], th->sid[r]);

    if (m != NULL) {
        heap_push(th->heap, nh, (heap_ent) {m->rank, l, th->sid[l], th->sid[r], m->id});
    }
}


static int
grow_scratch(struct tok_thread *th, size_t n)
{
    size_t cap = th->scap ? th->scap : 64;
    void  *a, *b, *c, *d;

    while (cap < n) cap *= 2;
    a = realloc(th->sid, cap * sizeof(int32_t));
    if (a) th->sid = a;
    b = realloc(th->sprev, cap * sizeof(int32_t));
    if (b) th->sprev = b;
    c = realloc(th->snext, cap * sizeof(int32_t));
    if (c) th->snext = c;
    /* at most one live pair per symbol plus one push per merge side */
    d = realloc(th->heap, 3 * cap * sizeof(heap_ent));
    if (d) th->heap = d;
    if (!a || !b || !c || !d) {
        return -1;
    }
    th->scap = cap;
    th->hcap = 3 * cap;
    return 0;
}


static inline void
emit(enc_state *e, int32_t id)
{
    /* a piece with no vocab entry is dropped, as the reference does */
    if (id < 0) {
        return;
    }
    if (e->n < e->cap) {
        e->ids[e->n] = id;
    }
    e->n++;
}


static int
bpe_word(enc_state *e, const char *w, size_t n)
{
    const dsv4_tokenizer *t = e->t;
    struct tok_thread    *th = e->th;
    const cache_slot     *cs;
    uint32_t              h = 0;
    size_t                nh = 0, start;
    int32_t               i;

    if (n == 1) {
        emit(e, t->byte_id[(uint8_t) w[0]]);
        return DSV4_TOK_OK;
    }
    if (n <= CACHE_MAX_WORD) {
        h = dsv4_tok_hash(w, n);
        cs = cache_get(th, w, n, h);
        if (cs != NULL) {
            const char *p = th->arena + cs->off + ((cs->wlen + 3) & ~3u);

            for (uint16_t k = 0; k < cs->nids; k++) {
                int32_t id;

                memcpy(&id, p + 4 * k, 4);
                emit(e, id);
            }
            return DSV4_TOK_OK;
        }
    }
    if (t->ignore_merges) {
        int32_t id = dsv4_tokenizer_token_id(t, w, n);

        if (id >= 0 && !(t->flags[id] & TOK_ADDED)) {
            emit(e, id);
            return DSV4_TOK_OK;
        }
    }
    if (n > th->scap && grow_scratch(th, n) != 0) {
        return DSV4_TOK_ENOMEM;
    }

    /* symbols start as single bytes, linked in order; a merge keeps the
     * left symbol (so its index is its original position) */
    for (i = 0; i < (int32_t) n; i++) {
        th->sid[i] = t->byte_id[(uint8_t) w[i]];
        th->sprev[i] = i - 1;
        th->snext[i] = i + 1 < (int32_t) n ? i + 1 : -1;
    }
    for (i = 0; i + 1 < (int32_t) n; i++) {
        try_pair(t, th, &nh, i, i + 1);
    }
    while (nh > 0) {
        heap_ent m = heap_pop(th->heap, &nh);
        int32_t  l = m.pos, r = th->snext[l];

        /* stale if l was absorbed (sid -1), or either side changed since */
        if (th->sid[l] != m.lid || r < 0 || th->sid[r] != m.rid) {
            continue;
        }
        th->sid[l] = m.mid;
        th->sid[r] = -2;
        th->snext[l] = th->snext[r];
        if (th->snext[r] >= 0) th->sprev[th->snext[r]] = l;
        if (th->sprev[l] >= 0) try_pair(t, th, &nh, th->sprev[l], l);
        if (th->snext[l] >= 0) try_pair(t, th, &nh, l, th->snext[l]);
    }

    start = e->n;
    for (i = 0; i >= 0; i = th->snext[i]) {
        emit(e, th->sid[i]);
    }
    /* cache what was written (skip when the caller's buffer overflowed) */
    if (n <= CACHE_MAX_WORD && e->n <= e->cap) {
        cache_put(th, w, n, h, e->ids + start, e->n - start);
    }
    return DSV4_TOK_OK;
}


/* ---- pre-tokenization --------------------------------------------------- */

static int
split_level(enc_state *e, int level, const char *s, size_t n)
{
    const dsv4_tokenizer *t = e->t;
    pcre2_code           *code;
    PCRE2_SIZE           *ov;
    size_t                start = 0, prev = 0;
    int                   rc;

    if (level == t->n_split) {
        return bpe_word(e, s, n);
    }
    code = t->split[level];
    ov = pcre2_get_ovector_pointer(e->th->md);

    while (start < n) {
        rc = pcre2_match(code, (PCRE2_SPTR) s, n, start, PCRE2_NO_UTF_CHECK,
                         e->th->md, e->th->mctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
            /* the interpreter keeps its backtracking state on the heap */
            rc = pcre2_match(code, (PCRE2_SPTR) s, n, start,
                             PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, e->th->md, e->th->mctx);
        }
        if (rc == PCRE2_ERROR_NOMATCH) {
            break;
        }
        if (rc < 0) {
            return DSV4_TOK_EREGEX;
        }
        size_t ms = ov[0], me = ov[1];

        if (ms > prev && (rc = split_level(e, level + 1, s + prev, ms - prev)) != 0) {
            return rc;
        }
        if (me > ms && (rc = split_level(e, level + 1, s + ms, me - ms)) != 0) {
            return rc;
        }
        prev = me;
        if (me == ms) {
            /* an empty match: step over one character, as matchAll does */
            uint32_t cp;

            if (me >= n) break;
            start = me + (size_t) dsv4_utf8_next(s + me, n - me, &cp);
        } else {
            start = me;
        }
    }
    if (prev < n) {
        return split_level(e, level + 1, s + prev, n - prev);
    }
    return DSV4_TOK_OK;
}


/* Cuts the added tokens of trie tr out of s, leftmost longest, and passes
 * the text between them to next. */
static int
split_added(enc_state *e, const tok_trie *tr, const char *s, size_t n,
            int (*next)(enc_state *, const char *, size_t))
{
    size_t i = 0, start = 0;
    int    rc;

    if (tr->n == 0) {
        return next(e, s, n);
    }
    while (i < n) {
        int32_t node = 0, best = -1;
        size_t  j = i, best_end = 0;

        if (!tr->first[(uint8_t) s[i]]) {
            i++;
            continue;
        }
        while (j < n) {
            int32_t c = tr->nodes[node].child;

            while (c >= 0 && tr->nodes[c].byte != (uint8_t) s[j]) {
                c = tr->nodes[c].sibling;
            }
            if (c < 0) break;
            node = c;
            j++;
            if (tr->nodes[node].id >= 0) {
                best = tr->nodes[node].id;
                best_end = j;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        if (i > start && (rc = next(e, s + start, i - start)) != 0) {
            return rc;
        }
        emit(e, best);
        i = start = best_end;
    }
    if (start < n) {
        return next(e, s + start, n - start);
    }
    return DSV4_TOK_OK;
}


static int
pretokenize(enc_state *e, const char *s, size_t n)
{
    return split_level(e, 0, s, n);
}


static int
split_normalized(enc_state *e, const char *s, size_t n)
{
    /* the normalizer is the identity (checked at load) */
    return split_added(e, &e->t->added_norm, s, n, pretokenize);
}


int
dsv4_tokenizer_encode(const dsv4_tokenizer *t, const char *text, size_t len,
                      int32_t *ids, size_t cap, size_t *n)
{
    enc_state e;
    int       rc;

    *n = 0;
    if (dsv4_utf8_valid_prefix(text, len) != len) {
        return DSV4_TOK_EINVAL;
    }
    e.t = t;
    e.th = thread_state(t);
    if (e.th == NULL) {
        return DSV4_TOK_ENOMEM;
    }
    e.ids = ids;
    e.cap = ids ? cap : 0;
    e.n = 0;
    rc = split_added(&e, &t->added_raw, text, len, split_normalized);
    *n = e.n;
    if (rc != DSV4_TOK_OK) {
        return rc;
    }
    return e.n > e.cap ? DSV4_TOK_ENOSPC : DSV4_TOK_OK;
}


int
dsv4_tokenizer_encode_alloc(const dsv4_tokenizer *t, const char *text, size_t len,
                            int32_t **ids, size_t *n)
{
    /* a byte-level token covers at least one byte, usually about four */
    size_t   cap = len / 3 + 16;
    int32_t *buf;
    int      rc;

    *ids = NULL;
    for (int round = 0; round < 2; round++) {
        buf = malloc(cap * sizeof(int32_t));
        if (buf == NULL) {
            return DSV4_TOK_ENOMEM;
        }
        rc = dsv4_tokenizer_encode(t, text, len, buf, cap, n);
        if (rc == DSV4_TOK_OK) {
            *ids = buf;
            return rc;
        }
        free(buf);
        if (rc != DSV4_TOK_ENOSPC) {
            return rc;
        }
        cap = *n + 1;
    }
    return DSV4_TOK_ENOMEM;
}
