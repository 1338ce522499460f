/*
 * Optional OpenBLAS for the prefill GEMMs, loaded with dlopen so the build
 * and the nginx module never depend on it: with Debian's libopenblas0 (or
 * libopenblas-dev) installed, DSV4_CPU_BLAS=1 / dsv4_cpu_opts.blas routes
 * matmuls of >= 16 tokens through cblas_sgemm on weights dequantised to
 * float32 per row chunk; the bench also uses it as the sgemm baseline.
 *
 * OpenBLAS runs single-threaded inside our own pool threads (each calls it
 * on disjoint rows), except for the bench baseline, which sets its count.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#include "cpu.h"

/* cblas enum values (cblas.h) */
#define DSV4_CBLAS_ROW_MAJOR 101
#define DSV4_CBLAS_NO_TRANS  111
#define DSV4_CBLAS_TRANS     112

typedef void (*dsv4_sgemm_fn)(int order, int ta, int tb, int m, int n, int k, float alpha,
                              const float *a, int lda, const float *b, int ldb, float beta,
                              float *c, int ldc);

static pthread_once_t dsv4_blas_once = PTHREAD_ONCE_INIT;
static dsv4_sgemm_fn  dsv4_blas_sgemm;
static void         (*dsv4_blas_threads)(int);
static char        *(*dsv4_blas_get_config)(void);
static char           dsv4_blas_why[256];

static void
dsv4_blas_open(void)
{
    static const char *names[] = { "libopenblas.so.0", "libopenblas.so" };
    void              *h = NULL;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && h == NULL; i++) {
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    }
    if (h == NULL) {
        snprintf(dsv4_blas_why, sizeof(dsv4_blas_why),
                 "OpenBLAS not found (install libopenblas0): %s", dlerror());
        return;
    }
    *(void **) &dsv4_blas_threads = dlsym(h, "openblas_set_num_threads");
    *(void **) &dsv4_blas_get_config = dlsym(h, "openblas_get_config");
    *(void **) &dsv4_blas_sgemm = dlsym(h, "cblas_sgemm");
    if (dsv4_blas_sgemm == NULL || dsv4_blas_threads == NULL) {
        snprintf(dsv4_blas_why, sizeof(dsv4_blas_why), "%s lacks cblas_sgemm",
                 "libopenblas");
        dsv4_blas_sgemm = NULL;
        return;
    }
    dsv4_blas_threads(1);
}

int
dsv4_blas_load(char *err, size_t errlen)
{
    pthread_once(&dsv4_blas_once, dsv4_blas_open);
    if (dsv4_blas_sgemm == NULL) {
        if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "%s", dsv4_blas_why);
        }
        return -1;
    }
    return 0;
}

void
dsv4_blas_sgemm_nt(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                   float *c, int ldc)
{
    dsv4_blas_sgemm(DSV4_CBLAS_ROW_MAJOR, DSV4_CBLAS_NO_TRANS, DSV4_CBLAS_TRANS, m, n, k, 1.0f,
                    a, lda, b, ldb, 0.0f, c, ldc);
}

void
dsv4_blas_set_threads(int n)
{
    if (dsv4_blas_threads != NULL) {
        dsv4_blas_threads(n);
    }
}

const char *
dsv4_blas_config(void)
{
    return dsv4_blas_get_config != NULL ? dsv4_blas_get_config() : NULL;
}
