/*
 * Memory tier: values by identity in a chained hash table, with an LRU list
 * and a byte budget.  One mutex guards everything; each operation holds it
 * for O(1) work plus the evictions its own insert causes (a bounded number:
 * an insert evicts at most the bytes it adds).  Values are shared blobs: a
 * reader keeps its reference after the lock is dropped, so eviction never
 * frees bytes someone is still decoding.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct dsv4_mem_node dsv4_mem_node;

struct dsv4_mem_node {
    dsv4_cache_id    id;
    dsv4_cache_blob *blob;       /* one reference held by the table */
    dsv4_mem_node   *hnext;      /* hash chain */
    dsv4_mem_node   *prev, *next;/* LRU list: head = most recent */
};

struct dsv4_cache_mem {
    pthread_mutex_t  mu;
    dsv4_mem_node  **buckets;    /* [nbuckets], a power of two */
    size_t           nbuckets;
    size_t           count;
    size_t           bytes;      /* sum of blob lengths */
    size_t           budget;
    dsv4_mem_node   *head, *tail;
};

static size_t
dsv4_mem_hash(const dsv4_cache_mem *m, const dsv4_cache_id *id)
{
    uint64_t h;

    memcpy(&h, id->key, sizeof(h));     /* the key is already a SHA-256 */
    return (size_t) (h ^ (uint64_t) id->kind) & (m->nbuckets - 1);
}

dsv4_cache_mem *
dsv4_cache_mem_new(size_t budget)
{
    dsv4_cache_mem *m = calloc(1, sizeof(*m));

    if (m == NULL) {
        return NULL;
    }
    m->nbuckets = 1024;
    m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
    if (m->buckets == NULL) {
        free(m);
        return NULL;
    }
    m->budget = budget;
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

void
dsv4_cache_mem_free(dsv4_cache_mem *m)
{
    if (m == NULL) {
        return;
    }
    for (dsv4_mem_node *n = m->head, *next; n != NULL; n = next) {
        next = n->next;
        dsv4_cache_blob_unref(n->blob);
        free(n);
    }
    free(m->buckets);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* The node of id and the link pointing at it (for unlinking).  mu held. */
static dsv4_mem_node **
dsv4_mem_find(dsv4_cache_mem *m, const dsv4_cache_id *id)
{
    dsv4_mem_node **pp = &m->buckets[dsv4_mem_hash(m, id)];

    for (; *pp != NULL; pp = &(*pp)->hnext) {
        if ((*pp)->id.kind == id->kind && memcmp((*pp)->id.key, id->key, 32) == 0) {
            break;
        }
    }
    return pp;
}

static void
dsv4_mem_lru_unlink(dsv4_cache_mem *m, dsv4_mem_node *n)
{
    if (n->prev) {
        n->prev->next = n->next;
    } else {
        m->head = n->next;
    }
    if (n->next) {
        n->next->prev = n->prev;
    } else {
        m->tail = n->prev;
    }
    n->prev = n->next = NULL;
}

static void
dsv4_mem_lru_push(dsv4_cache_mem *m, dsv4_mem_node *n)
{
    n->prev = NULL;
    n->next = m->head;
    if (m->head) {
        m->head->prev = n;
    } else {
        m->tail = n;
    }
    m->head = n;
}

/* Removes the node *pp points at.  mu held. */
static void
dsv4_mem_remove(dsv4_cache_mem *m, dsv4_mem_node **pp)
{
    dsv4_mem_node *n = *pp;

    *pp = n->hnext;
    dsv4_mem_lru_unlink(m, n);
    m->bytes -= n->blob->len;
    m->count--;
    dsv4_cache_blob_unref(n->blob);
    free(n);
}

/* Doubles the bucket array when the table is fuller than one node per
 * bucket (amortised O(1); a failed allocation keeps the old table). */
static void
dsv4_mem_grow(dsv4_cache_mem *m)
{
    size_t          nb = m->nbuckets * 2;
    dsv4_mem_node **b;

    if (m->count <= m->nbuckets || (b = calloc(nb, sizeof(*b))) == NULL) {
        return;
    }
    for (size_t i = 0; i < m->nbuckets; i++) {
        for (dsv4_mem_node *n = m->buckets[i], *next; n != NULL; n = next) {
            uint64_t h;
            next = n->hnext;
            memcpy(&h, n->id.key, sizeof(h));
            size_t k = (size_t) (h ^ (uint64_t) n->id.kind) & (nb - 1);
            n->hnext = b[k];
            b[k] = n;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = nb;
}

dsv4_cache_blob *
dsv4_cache_mem_get(dsv4_cache_mem *m, const dsv4_cache_id *id)
{
    dsv4_cache_blob *b = NULL;

    pthread_mutex_lock(&m->mu);
    dsv4_mem_node *n = *dsv4_mem_find(m, id);
    if (n != NULL) {
        dsv4_mem_lru_unlink(m, n);
        dsv4_mem_lru_push(m, n);
        b = n->blob;
        dsv4_cache_blob_ref(b);
    }
    pthread_mutex_unlock(&m->mu);
    return b;
}

int
dsv4_cache_mem_has(dsv4_cache_mem *m, const dsv4_cache_id *id)
{
    pthread_mutex_lock(&m->mu);
    int has = *dsv4_mem_find(m, id) != NULL;
    pthread_mutex_unlock(&m->mu);
    return has;
}

int
dsv4_cache_mem_put(dsv4_cache_mem *m, const dsv4_cache_id *id, dsv4_cache_blob *b)
{
    dsv4_mem_node *n;

    if (b->len > m->budget / 4) {
        return -1;
    }
    n = calloc(1, sizeof(*n));
    if (n == NULL) {
        return -1;
    }
    n->id = *id;
    n->blob = b;
    dsv4_cache_blob_ref(b);
    pthread_mutex_lock(&m->mu);
    dsv4_mem_node **pp = dsv4_mem_find(m, id);
    if (*pp != NULL) {
        dsv4_mem_remove(m, pp);
    }
    while (m->bytes + b->len > m->budget && m->tail != NULL) {
        dsv4_mem_remove(m, dsv4_mem_find(m, &m->tail->id));
    }
    pp = &m->buckets[dsv4_mem_hash(m, id)];
    n->hnext = *pp;
    *pp = n;
    dsv4_mem_lru_push(m, n);
    m->bytes += b->len;
    m->count++;
    dsv4_mem_grow(m);
    pthread_mutex_unlock(&m->mu);
    return 0;
}

void
dsv4_cache_mem_del(dsv4_cache_mem *m, const dsv4_cache_id *id)
{
    pthread_mutex_lock(&m->mu);
    dsv4_mem_node **pp = dsv4_mem_find(m, id);
    if (*pp != NULL) {
        dsv4_mem_remove(m, pp);
    }
    pthread_mutex_unlock(&m->mu);
}

void
dsv4_cache_mem_usage(dsv4_cache_mem *m, uint64_t *bytes, uint64_t *values)
{
    pthread_mutex_lock(&m->mu);
    *bytes = m->bytes;
    *values = m->count;
    pthread_mutex_unlock(&m->mu);
}
