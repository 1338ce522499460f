/*
 * safetensors: u64 little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data section; offsets are relative to its start.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "util.h"

static const struct {
    const char *name;
    dsv4_dtype  dtype;
    size_t      size;
} dsv4_dtypes[] = {
    { "F32", DSV4_DT_F32, 4 },
    { "BF16", DSV4_DT_BF16, 2 },
    { "F8_E4M3", DSV4_DT_F8_E4M3, 1 },
    { "F8_E8M0", DSV4_DT_F8_E8M0, 1 },
    { "I8", DSV4_DT_I8, 1 },
    { "I64", DSV4_DT_I64, 8 },
};

#define DSV4_N_DTYPES (sizeof(dsv4_dtypes) / sizeof(dsv4_dtypes[0]))

const char *
dsv4_dtype_name(dsv4_dtype dt)
{
    return dt < DSV4_N_DTYPES ? dsv4_dtypes[dt].name : "unsupported";
}

size_t
dsv4_dtype_size(dsv4_dtype dt)
{
    return dt < DSV4_N_DTYPES ? dsv4_dtypes[dt].size : 0;
}

static int
dsv4_st_cmp_name(const void *a, const void *b)
{
    return strcmp(((const dsv4_st_tensor *) a)->name, ((const dsv4_st_tensor *) b)->name);
}

typedef struct {
    size_t begin, end;
    size_t tensor;
} dsv4_st_range;

static int
dsv4_st_cmp_range(const void *a, const void *b)
{
    const dsv4_st_range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Parses one tensor entry of a shard header into t. */
static int
dsv4_st_parse_tensor(dsv4_st_tensor *t, const char *name, json_t *v, const char *path,
                     size_t data_size, char *err, size_t errlen)
{
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    size_t  nelem = 1, i;

    if (!json_is_string(dt) || !json_is_array(shape) || !json_is_array(offs)
        || json_array_size(offs) != 2) {
        return dsv4_error(err, errlen, "%s: tensor %s: malformed header entry", path, name);
    }
    snprintf(t->dtype_name, sizeof(t->dtype_name), "%s", json_string_value(dt));
    t->dtype = DSV4_DT_UNSUPPORTED;
    for (i = 0; i < DSV4_N_DTYPES; i++) {
        if (strcmp(dsv4_dtypes[i].name, t->dtype_name) == 0) {
            t->dtype = dsv4_dtypes[i].dtype;
        }
    }
    if (json_array_size(shape) > DSV4_ST_MAX_DIMS) {
        return dsv4_error(err, errlen, "%s: tensor %s: %zu dimensions (max %d)", path, name,
                          json_array_size(shape), DSV4_ST_MAX_DIMS);
    }
    t->ndim = (int) json_array_size(shape);
    for (i = 0; i < json_array_size(shape); i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0
            || json_integer_value(d) > (1LL << 40)) {
            return dsv4_error(err, errlen, "%s: tensor %s: invalid shape", path, name);
        }
        t->shape[i] = json_integer_value(d);
        nelem *= (size_t) t->shape[i];
    }
    json_t *b = json_array_get(offs, 0), *e = json_array_get(offs, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0
        || json_integer_value(e) < json_integer_value(b)
        || (size_t) json_integer_value(e) > data_size) {
        return dsv4_error(err, errlen,
                          "%s: tensor %s: data_offsets out of range (data section is %zu bytes;"
                          " file truncated?)", path, name, data_size);
    }
    t->nbytes = (size_t) (json_integer_value(e) - json_integer_value(b));
    if (t->dtype != DSV4_DT_UNSUPPORTED && t->nbytes != nelem * dsv4_dtype_size(t->dtype)) {
        return dsv4_error(err, errlen,
                          "%s: tensor %s: data_offsets span %zu bytes, expected %zu"
                          " (%zu elements of %s)", path, name, t->nbytes,
                          nelem * dsv4_dtype_size(t->dtype), nelem, t->dtype_name);
    }
    t->data = (const uint8_t *) (size_t) json_integer_value(b);   /* rebased by the caller */
    return 0;
}

/* Maps one shard and appends its tensors to st->tensors (capacity grows). */
static int
dsv4_st_open_shard(dsv4_st *st, int si, size_t *cap, char *err, size_t errlen)
{
    dsv4_st_shard *sh = &st->shards[si];
    struct stat    sb;
    uint64_t       hlen;
    json_t        *root = NULL;
    json_error_t   jerr;
    dsv4_st_range *ranges = NULL;
    size_t         nr = 0, data_size;
    const char    *name;
    json_t        *v;
    int            fd, rc = -1;

    fd = open(sh->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return dsv4_error(err, errlen, "%s: cannot open: %s", sh->path, strerror(errno));
    }
    if (fstat(fd, &sb) != 0 || sb.st_size < 8) {
        close(fd);
        return dsv4_error(err, errlen, "%s: file too short for a safetensors header", sh->path);
    }
    sh->size = (size_t) sb.st_size;
    sh->map = mmap(NULL, sh->size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (sh->map == MAP_FAILED) {
        sh->map = NULL;
        return dsv4_error(err, errlen, "%s: mmap failed: %s", sh->path, strerror(errno));
    }
    st->mapped_bytes += sh->size;
    memcpy(&hlen, sh->map, 8);          /* little-endian host assumed (x86-64, aarch64) */
    if (hlen > sh->size - 8 || hlen > (1u << 30)) {
        return dsv4_error(err, errlen,
                          "%s: header length %llu exceeds the file size %zu (file truncated?)",
                          sh->path, (unsigned long long) hlen, sh->size);
    }
    data_size = sh->size - 8 - (size_t) hlen;
    root = json_loadb((const char *) sh->map + 8, (size_t) hlen, 0, &jerr);
    if (!json_is_object(root)) {
        dsv4_error(err, errlen, "%s: header is not a JSON object (%s)", sh->path,
                   root ? "wrong type" : jerr.text);
        goto done;
    }
    ranges = calloc(json_object_size(root) + 1, sizeof(*ranges));
    if (ranges == NULL) {
        dsv4_error(err, errlen, "out of memory");
        goto done;
    }
    json_object_foreach(root, name, v) {
        if (strcmp(name, "__metadata__") == 0) {
            continue;
        }
        if (st->n_tensors == *cap) {
            size_t          ncap = *cap ? *cap * 2 : 1024;
            dsv4_st_tensor *nt = realloc(st->tensors, ncap * sizeof(*nt));
            if (nt == NULL) {
                dsv4_error(err, errlen, "out of memory");
                goto done;
            }
            st->tensors = nt;
            *cap = ncap;
        }
        dsv4_st_tensor *t = &st->tensors[st->n_tensors];
        memset(t, 0, sizeof(*t));
        t->name = strdup(name);
        st->n_tensors++;
        if (t->name == NULL) {
            dsv4_error(err, errlen, "out of memory");
            goto done;
        }
        if (dsv4_st_parse_tensor(t, name, v, sh->path, data_size, err, errlen) != 0) {
            goto done;
        }
        ranges[nr].begin = (size_t) t->data;
        ranges[nr].end = (size_t) t->data + t->nbytes;
        ranges[nr].tensor = st->n_tensors - 1;
        nr++;
        t->data = (const uint8_t *) sh->map + 8 + hlen + (size_t) t->data;
        t->shard = si;
    }
    qsort(ranges, nr, sizeof(*ranges), dsv4_st_cmp_range);
    for (size_t i = 1; i < nr; i++) {
        if (ranges[i].begin < ranges[i - 1].end) {
            dsv4_error(err, errlen, "%s: tensors %s and %s overlap in the data section",
                       sh->path, st->tensors[ranges[i - 1].tensor].name,
                       st->tensors[ranges[i].tensor].name);
            goto done;
        }
    }
    rc = 0;
done:
    free(ranges);
    json_decref(root);
    return rc;
}

static int
dsv4_st_add_shard(dsv4_st *st, const char *dir, const char *file, char *err, size_t errlen)
{
    size_t         n = strlen(dir) + strlen(file) + 2;
    dsv4_st_shard *ns;

    if (strchr(file, '/') != NULL || strcmp(file, "..") == 0) {
        return dsv4_error(err, errlen, "index names an invalid shard file \"%s\"", file);
    }
    for (int i = 0; i < st->n_shards; i++) {
        const char *base = strrchr(st->shards[i].path, '/') + 1;
        if (strcmp(base, file) == 0) {
            return i;
        }
    }
    ns = realloc(st->shards, (size_t) (st->n_shards + 1) * sizeof(*ns));
    if (ns == NULL) {
        return dsv4_error(err, errlen, "out of memory");
    }
    st->shards = ns;
    memset(&ns[st->n_shards], 0, sizeof(ns[0]));
    ns[st->n_shards].path = malloc(n);
    if (ns[st->n_shards].path == NULL) {
        return dsv4_error(err, errlen, "out of memory");
    }
    snprintf(ns[st->n_shards].path, n, "%s/%s", dir, file);
    return st->n_shards++;
}

int
dsv4_st_open(dsv4_st *st, const char *dir, char *err, size_t errlen)
{
    char         path[4096];
    json_error_t jerr;
    json_t      *index = NULL, *map;
    size_t       cap = 0;
    const char  *name;
    json_t      *v;

    memset(st, 0, sizeof(*st));
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    if (access(path, F_OK) == 0) {
        index = json_load_file(path, 0, &jerr);
        map = json_object_get(index, "weight_map");
        if (!json_is_object(map)) {
            dsv4_error(err, errlen, "%s: %s", path,
                       index ? "missing \"weight_map\" object" : jerr.text);
            goto fail;
        }
        json_object_foreach(map, name, v) {
            if (!json_is_string(v)) {
                dsv4_error(err, errlen, "%s: weight_map entry %s is not a file name", path, name);
                goto fail;
            }
            if (dsv4_st_add_shard(st, dir, json_string_value(v), err, errlen) < 0) {
                goto fail;
            }
        }
    } else if (dsv4_st_add_shard(st, dir, "model.safetensors", err, errlen) < 0) {
        goto fail;
    }
    for (int i = 0; i < st->n_shards; i++) {
        if (dsv4_st_open_shard(st, i, &cap, err, errlen) != 0) {
            goto fail;
        }
    }
    qsort(st->tensors, st->n_tensors, sizeof(*st->tensors), dsv4_st_cmp_name);
    for (size_t i = 1; i < st->n_tensors; i++) {
        if (strcmp(st->tensors[i].name, st->tensors[i - 1].name) == 0) {
            dsv4_error(err, errlen, "tensor %s appears in two shards (%s, %s)",
                       st->tensors[i].name, st->shards[st->tensors[i - 1].shard].path,
                       st->shards[st->tensors[i].shard].path);
            goto fail;
        }
    }
    if (index != NULL) {
        json_object_foreach(json_object_get(index, "weight_map"), name, v) {
            const dsv4_st_tensor *t = dsv4_st_find(st, name);
            const char           *base;
            if (t == NULL) {
                dsv4_error(err, errlen, "tensor %s: listed in the index under %s but absent"
                           " from that shard", name, json_string_value(v));
                goto fail;
            }
            base = strrchr(st->shards[t->shard].path, '/') + 1;
            if (strcmp(base, json_string_value(v)) != 0) {
                dsv4_error(err, errlen, "tensor %s: index says %s, found in %s", name,
                           json_string_value(v), base);
                goto fail;
            }
        }
    }
    json_decref(index);
    return 0;
fail:
    json_decref(index);
    dsv4_st_close(st);
    return -1;
}

void
dsv4_st_close(dsv4_st *st)
{
    for (size_t i = 0; i < st->n_tensors; i++) {
        free(st->tensors[i].name);
    }
    for (int i = 0; i < st->n_shards; i++) {
        if (st->shards[i].map != NULL) {
            munmap(st->shards[i].map, st->shards[i].size);
        }
        free(st->shards[i].path);
    }
    free(st->tensors);
    free(st->shards);
    memset(st, 0, sizeof(*st));
}

const dsv4_st_tensor *
dsv4_st_find(const dsv4_st *st, const char *name)
{
    dsv4_st_tensor key;

    if (st->n_tensors == 0) {
        return NULL;
    }
    key.name = (char *) name;
    return bsearch(&key, st->tensors, st->n_tensors, sizeof(key), dsv4_st_cmp_name);
}
