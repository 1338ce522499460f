/*
 * Read-only view of a sharded safetensors checkpoint:
 * model.safetensors.index.json + model-*.safetensors, or a single
 * model.safetensors.  Shards are mmapped whole (PROT_READ, MAP_SHARED), so
 * several worker processes share the page cache and nothing is copied; only
 * the JSON headers are read at open.
 */
#ifndef DSV4_SAFETENSORS_H
#define DSV4_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DSV4_DT_F32 = 0,
    DSV4_DT_BF16,
    DSV4_DT_F8_E4M3,
    DSV4_DT_F8_E8M0,
    DSV4_DT_I8,
    DSV4_DT_I64,
    DSV4_DT_UNSUPPORTED
} dsv4_dtype;

#define DSV4_ST_MAX_DIMS 4

typedef struct {
    char          *name;
    dsv4_dtype     dtype;
    char           dtype_name[16];         /* as written in the header */
    int            ndim;
    int64_t        shape[DSV4_ST_MAX_DIMS];
    const uint8_t *data;                   /* into the shard's mapping */
    size_t         nbytes;
    int            shard;                  /* index into dsv4_st.shards */
} dsv4_st_tensor;

typedef struct {
    char   *path;
    void   *map;
    size_t  size;
} dsv4_st_shard;

typedef struct {
    dsv4_st_shard  *shards;
    int             n_shards;
    dsv4_st_tensor *tensors;      /* sorted by name */
    size_t          n_tensors;
    size_t          mapped_bytes; /* sum of shard sizes */
} dsv4_st;

/* Opens every shard of the checkpoint in dir and validates the headers
 * (dtypes, shapes vs byte ranges, ranges inside the file, no overlaps, every
 * index entry present in its shard).  On failure st is left empty and err
 * names the file and tensor.  Returns 0 or -1. */
int dsv4_st_open(dsv4_st *st, const char *dir, char *err, size_t errlen);

/* Unmaps and frees everything; st may be partially opened or zeroed. */
void dsv4_st_close(dsv4_st *st);

/* Returns the tensor or NULL. */
const dsv4_st_tensor *dsv4_st_find(const dsv4_st *st, const char *name);

const char *dsv4_dtype_name(dsv4_dtype dt);
size_t dsv4_dtype_size(dsv4_dtype dt);

#endif
