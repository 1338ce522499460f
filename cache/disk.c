/*
 * Disk tier: one file per value, DIR/<first two hex digits>/<64 hex>.<h|t>,
 * holding exactly the value bytes (serial.c), so a file is verified like any
 * other value.  Writes go to a temporary file in the same directory and are
 * renamed into place: a reader sees the old file, the new one or none, never
 * half of one.  No fsync: after a power loss a file may hold garbage, which
 * its checksum turns into a miss.
 *
 * The directory may be shared by several processes (nginx workers).  Each
 * keeps an estimate of the bytes used (a scan plus its own writes); when the
 * estimate passes the budget, or every few minutes, the writer thread
 * rescans: it sums the files, deletes temporaries older than ten minutes
 * (left by a crash) and removes the least recently used values (by mtime,
 * which a hit refreshes at most once a minute) down to 90% of the budget.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define DSV4_DISK_RESCAN_MS  (5 * 60 * 1000)
#define DSV4_DISK_STALE_TMP  (10 * 60)
#define DSV4_DISK_TOUCH_S    60

struct dsv4_cache_disk {
    char                *dir;
    size_t               budget;
    size_t               max_value;
    dsv4_cache_ctr      *ctr;
    atomic_uint_fast64_t used;        /* estimate, bytes */
    atomic_uint          tmp_seq;     /* temporary names within this process */
    int64_t              last_scan_ms;/* writer thread only */
};

static int
dsv4_mkdir_p(const char *path)
{
    char   buf[PATH_MAX];
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof(buf)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
                return -1;
            }
            buf[i] = c;
        }
    }
    return 0;
}

dsv4_cache_disk *
dsv4_cache_disk_new(const char *dir, size_t budget, size_t max_value, dsv4_cache_ctr *ctr,
                    char *err, size_t errlen)
{
    dsv4_cache_disk *d;
    struct stat      st;

    if (strlen(dir) > PATH_MAX - 80) {
        snprintf(err, errlen, "cache directory name too long");
        return NULL;
    }
    if (dsv4_mkdir_p(dir) != 0 || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)
        || access(dir, R_OK | W_OK | X_OK) != 0) {
        snprintf(err, errlen, "cache directory \"%s\" is not a writable directory: %s", dir,
                 strerror(errno));
        return NULL;
    }
    d = calloc(1, sizeof(*d));
    if (d == NULL || (d->dir = strdup(dir)) == NULL) {
        free(d);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->budget = budget;
    d->max_value = max_value;
    d->ctr = ctr;
    atomic_init(&d->used, 0);
    atomic_init(&d->tmp_seq, 0);
    return d;
}

void
dsv4_cache_disk_free(dsv4_cache_disk *d)
{
    if (d != NULL) {
        free(d->dir);
        free(d);
    }
}

/* a + "/" + b into out[PATH_MAX]; the directory name was checked to leave
 * room for every name joined here, so this never truncates in practice. */
static char *
dsv4_disk_join(char *out, const char *a, const char *b)
{
    if (snprintf(out, PATH_MAX, "%s/%s", a, b) >= PATH_MAX) {
        out[0] = '\0';
    }
    return out;
}

/* DIR/hh and DIR/hh/<hex>.<kind> into sub[PATH_MAX] / file[PATH_MAX]. */
static void
dsv4_disk_paths(const dsv4_cache_disk *d, const dsv4_cache_id *id, char *sub, char *file)
{
    char hex[64 + 3], two[3];

    dsv4_cache_hex(id->key, 32, hex);
    memcpy(two, hex, 2);
    two[2] = '\0';
    hex[64] = '.';
    hex[65] = (char) id->kind;
    hex[66] = '\0';
    dsv4_disk_join(sub, d->dir, two);
    dsv4_disk_join(file, sub, hex);
}

int
dsv4_cache_disk_has(dsv4_cache_disk *d, const dsv4_cache_id *id)
{
    char sub[PATH_MAX], file[PATH_MAX];

    dsv4_disk_paths(d, id, sub, file);
    return access(file, R_OK) == 0;
}

dsv4_cache_blob *
dsv4_cache_disk_get(dsv4_cache_disk *d, const dsv4_cache_id *id)
{
    char             sub[PATH_MAX], file[PATH_MAX];
    struct stat      st;
    dsv4_cache_blob *b = NULL;
    size_t           got = 0;
    int              fd;

    dsv4_disk_paths(d, id, sub, file);
    fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT) {
            dsv4_cache_fail(d->ctr, DSV4_CACHE_ERR_DISK, "cache: open \"%s\": %s", file,
                            strerror(errno));
        }
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        dsv4_cache_fail(d->ctr, DSV4_CACHE_ERR_DISK, "cache: stat \"%s\" failed", file);
        goto fail;
    }
    if ((uint64_t) st.st_size > d->max_value) {
        dsv4_cache_fail(d->ctr, DSV4_CACHE_ERR_TOO_BIG, "cache: \"%s\" is %lld bytes, over"
                        " the value limit", file, (long long) st.st_size);
        goto fail;
    }
    b = dsv4_cache_blob_new((size_t) st.st_size);
    if (b == NULL) {
        dsv4_cache_fail(d->ctr, DSV4_CACHE_ERR_NOMEM, "cache: out of memory reading \"%s\"",
                        file);
        goto fail;
    }
    while (got < b->len) {
        ssize_t n = read(fd, b->data + got, b->len - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            dsv4_cache_fail(d->ctr, DSV4_CACHE_ERR_DISK, "cache: read \"%s\": %s", file,
                            n < 0 ? strerror(errno) : "short file");
            goto fail;
        }
        got += (size_t) n;
    }
    close(fd);
    if (time(NULL) - st.st_mtime > DSV4_DISK_TOUCH_S) {
        utimensat(AT_FDCWD, file, NULL, 0);     /* LRU: refresh the mtime */
    }
    return b;
fail:
    close(fd);
    dsv4_cache_blob_unref(b);
    return NULL;
}

int
dsv4_cache_disk_put(dsv4_cache_disk *d, const dsv4_cache_id *id, const dsv4_cache_blob *b)
{
    char   sub[PATH_MAX], file[PATH_MAX], tmp[PATH_MAX];
    size_t done = 0;
    int    fd;

    dsv4_disk_paths(d, id, sub, file);
    char name[64];
    snprintf(name, sizeof(name), ".tmp.%ld.%u", (long) getpid(), atomic_fetch_add(&d->tmp_seq, 1));
    dsv4_disk_join(tmp, sub, name);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) {
        if (mkdir(sub, 0700) != 0 && errno != EEXIST) {
            goto fail;
        }
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    }
    if (fd < 0) {
        goto fail;
    }
    while (done < b->len) {
        ssize_t n = write(fd, b->data + done, b->len - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            close(fd);
            unlink(tmp);
            goto fail;
        }
        done += (size_t) n;
    }
    if (close(fd) != 0 || rename(tmp, file) != 0) {
        unlink(tmp);
        goto fail;
    }
    atomic_fetch_add(&d->used, b->len);
    return 0;
fail:
    dsv4_cache_fail(d->ctr, DSV4_CACHE_ERR_DISK, "cache: writing \"%s\": %s", file,
                    strerror(errno));
    return -1;
}

void
dsv4_cache_disk_del(dsv4_cache_disk *d, const dsv4_cache_id *id)
{
    char        sub[PATH_MAX], file[PATH_MAX];
    struct stat st;

    dsv4_disk_paths(d, id, sub, file);
    if (stat(file, &st) == 0 && unlink(file) == 0) {
        uint64_t used = atomic_load(&d->used);
        atomic_store(&d->used, used > (uint64_t) st.st_size ? used - (uint64_t) st.st_size : 0);
    }
}

typedef struct {
    time_t   mtime;
    uint64_t size;
    char     name[80];      /* "hh/<64 hex>.k" */
} dsv4_disk_file;

static int
dsv4_disk_older(const void *a, const void *b)
{
    const dsv4_disk_file *x = a, *y = b;

    return x->mtime < y->mtime ? -1 : x->mtime > y->mtime;
}

static int
dsv4_is_hex2(const char *s)
{
    return strlen(s) == 2 && strspn(s, "0123456789abcdef") == 2;
}

void
dsv4_cache_disk_maintain(dsv4_cache_disk *d, int force)
{
    int64_t         now = dsv4_cache_now_ms();
    DIR            *top;
    struct dirent  *e;
    dsv4_disk_file *files = NULL;
    size_t          n = 0, cap = 0;
    uint64_t        total = 0;

    if (!force && d->last_scan_ms != 0 && atomic_load(&d->used) <= d->budget
        && now - d->last_scan_ms < DSV4_DISK_RESCAN_MS) {
        return;
    }
    d->last_scan_ms = now;
    top = opendir(d->dir);
    if (top == NULL) {
        dsv4_cache_fail(d->ctr, DSV4_CACHE_ERR_DISK, "cache: opendir \"%s\": %s", d->dir,
                        strerror(errno));
        return;
    }
    while ((e = readdir(top)) != NULL) {
        char           sub[PATH_MAX];
        DIR           *dd;
        struct dirent *f;

        if (!dsv4_is_hex2(e->d_name)) {
            continue;
        }
        dsv4_disk_join(sub, d->dir, e->d_name);
        if ((dd = opendir(sub)) == NULL) {
            continue;
        }
        while ((f = readdir(dd)) != NULL) {
            char        path[PATH_MAX];
            struct stat st;

            if (f->d_name[0] == '.' && strncmp(f->d_name, ".tmp.", 5) != 0) {
                continue;
            }
            dsv4_disk_join(path, sub, f->d_name);
            if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
                continue;
            }
            if (strncmp(f->d_name, ".tmp.", 5) == 0) {
                if (time(NULL) - st.st_mtime > DSV4_DISK_STALE_TMP) {
                    unlink(path);
                }
                continue;
            }
            if (strlen(f->d_name) != 66) {
                continue;       /* not ours */
            }
            if (n == cap) {
                size_t          ncap = cap ? 2 * cap : 1024;
                dsv4_disk_file *nf = realloc(files, ncap * sizeof(*nf));
                if (nf == NULL) {
                    break;      /* evict from what we have */
                }
                files = nf;
                cap = ncap;
            }
            files[n].mtime = st.st_mtime;
            files[n].size = (uint64_t) st.st_size;
            snprintf(files[n].name, sizeof(files[n].name), "%s/%s", e->d_name, f->d_name);
            total += (uint64_t) st.st_size;
            n++;
        }
        closedir(dd);
    }
    closedir(top);
    if (total > d->budget) {
        uint64_t target = d->budget / 10 * 9;
        qsort(files, n, sizeof(*files), dsv4_disk_older);
        for (size_t i = 0; i < n && total > target; i++) {
            char path[PATH_MAX];
            dsv4_disk_join(path, d->dir, files[i].name);
            if (unlink(path) == 0 || errno == ENOENT) {
                total -= files[i].size;
            }
        }
    }
    atomic_store(&d->used, total);
    free(files);
}

uint64_t
dsv4_cache_disk_usage(dsv4_cache_disk *d)
{
    return atomic_load(&d->used);
}
