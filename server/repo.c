/* repo.c — listing a model repository directory (see repo.h for the rules
 * and the design).
 *
 * Each level is read through a directory stream opened relative to its
 * parent (openat + fdopendir) and its entries are stat'ed relative to it
 * (fstatat, following links), so a path is built only for the file of a
 * listed version, at any length. Only entries whose names could matter are
 * stat'ed. An entry that disappears between readdir and stat or open (or a
 * dangling link) is skipped: ENOENT, ENOTDIR, ELOOP.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/repo.h"

#define NS_PER_S INT64_C(1000000000)

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int is_alnum(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

int repo_valid_name(const char *s)
{
    if (!s || !is_alnum((unsigned char)s[0])) return 0;
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (n >= REPO_NAME_MAX || !(is_alnum(c) || c == '.' || c == '_' || c == '-')) return 0;
    }
    return 1;
}

int repo_parse_version(const char *s, uint64_t *v)
{
    if (!s || s[0] < '1' || s[0] > '9') return -1; /* empty, sign, leading zero, "0" */
    uint64_t x = 0;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        x = x * 10 + (uint64_t)(s[i] - '0');
        if (x > REPO_VERSION_MAX) return -1; /* before it could overflow: 2^53 * 10 < 2^64 */
    }
    *v = x;
    return 0;
}

/* The entry gone between readdir and stat/open, or a dangling link. */
static int is_gone(int e) { return e == ENOENT || e == ENOTDIR || e == ELOOP; }
/* Says nothing about the directory: the scan as a whole is unreliable. */
static int is_resource(int e) { return e == ENOMEM || e == EMFILE || e == ENFILE; }

/* Nanoseconds since the epoch, saturated (a hostile file system may hold
 * any time). */
static int64_t ts_ns(struct timespec t)
{
    if (t.tv_sec >= INT64_MAX / NS_PER_S) return INT64_MAX;
    if (t.tv_sec <= INT64_MIN / NS_PER_S) return INT64_MIN;
    return (int64_t)t.tv_sec * NS_PER_S + t.tv_nsec;
}

/* Opens name, relative to the stream parent, as a directory stream (links
 * followed). Returns it, or NULL with errno set. */
static DIR *open_sub(DIR *parent, const char *name)
{
    int fd = openat(dirfd(parent), name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return NULL;
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return d;
}

/* readdir, telling the end (NULL, errno 0) from an error (NULL, errno set). */
static struct dirent *next_entry(DIR *d)
{
    errno = 0;
    return readdir(d);
}

/* Appends a zeroed entry for (name, version). Returns it (valid until the
 * next append), or NULL when out of memory. */
static repo_entry *append(repo_scan *s, size_t *cap, const char *name, uint64_t version)
{
    if (s->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        if (nc > SIZE_MAX / sizeof *s->v) return NULL;
        repo_entry *nv = realloc(s->v, nc * sizeof *nv);
        if (!nv) return NULL;
        s->v = nv;
        *cap = nc;
    }
    repo_entry *e = &s->v[s->n++];
    memset(e, 0, sizeof *e);
    memcpy(e->name, name, strlen(name) + 1); /* repo_valid_name: <= REPO_NAME_MAX */
    e->version = version;
    return e;
}

/* "DIR/name/version/file" in a malloc'ed buffer (one '/' after DIR even if
 * it ends in one), or NULL when out of memory. */
static char *file_path(const char *dir, const char *name, const char *version, const char *file)
{
    size_t dl = strlen(dir);
    const char *sep = dl && dir[dl - 1] == '/' ? "" : "/";
    int n = snprintf(NULL, 0, "%s%s%s/%s/%s", dir, sep, name, version, file);
    if (n < 0) return NULL;
    char *p = malloc((size_t)n + 1);
    if (p) snprintf(p, (size_t)n + 1, "%s%s%s/%s/%s", dir, sep, name, version, file);
    return p;
}

static int has_dcn_suffix(const char *s)
{
    size_t n = strlen(s);
    return n >= 4 && !memcmp(s + n - 4, ".dcn", 4);
}

/* Fills e from the open version directory vd (DIR/name/version): the one
 * *.dcn file, or e->error. Returns 0, or -1 with err set when out of memory
 * or file descriptors. */
static int scan_version(DIR *vd, const char *dir, const char *version, repo_entry *e, char *err, size_t errlen)
{
    size_t count = 0;
    char *first = NULL;
    struct stat st, first_st = {0};
    struct dirent *de;
    int rc = -1;
    while ((de = next_entry(vd))) {
        if (de->d_name[0] == '.' || !has_dcn_suffix(de->d_name)) continue;
        if (fstatat(dirfd(vd), de->d_name, &st, 0) < 0) {
            if (is_gone(errno)) continue;
            if (is_resource(errno)) goto fail;
            snprintf(e->error, sizeof e->error, "cannot stat %s: %s", de->d_name, strerror(errno));
            goto done;
        }
        if (!S_ISREG(st.st_mode)) continue;
        if (++count == 1) {
            if (!(first = strdup(de->d_name))) goto fail;
            first_st = st;
        }
    }
    if (errno) {
        if (is_resource(errno)) goto fail;
        snprintf(e->error, sizeof e->error, "cannot read the version directory: %s", strerror(errno));
    } else if (count == 0) {
        snprintf(e->error, sizeof e->error, "no model file (*.dcn) in the version directory");
    } else if (count > 1) {
        snprintf(e->error, sizeof e->error, "%zu model files (*.dcn) in the version directory: exactly one is served", count);
    } else {
        if (!(e->path = file_path(dir, e->name, version, first))) goto fail;
        e->size = (int64_t)first_st.st_size;
        e->mtime_ns = ts_ns(first_st.st_mtim);
        e->ctime_ns = ts_ns(first_st.st_ctim);
        e->ino = (uint64_t)first_st.st_ino;
        e->dev = (uint64_t)first_st.st_dev;
    }
done:
    rc = 0;
fail:
    if (rc < 0) set_err(err, errlen, "model repository %s: %s/%s: %s", dir, e->name, version, strerror(errno ? errno : ENOMEM));
    free(first);
    return rc;
}

/* Appends an entry for each version directory of the open model directory
 * md (DIR/name). Returns 0, or -1 with err set. */
static int scan_model(DIR *md, const char *dir, const char *name, repo_scan *out, size_t *cap, char *err, size_t errlen)
{
    DIR *vd = NULL;
    struct dirent *de;
    struct stat st;
    uint64_t version;
    while ((de = next_entry(md))) {
        if (repo_parse_version(de->d_name, &version) < 0) continue;
        if (fstatat(dirfd(md), de->d_name, &st, 0) < 0) {
            if (is_gone(errno)) continue;
            goto fail_version;
        }
        if (!S_ISDIR(st.st_mode)) continue;
        vd = open_sub(md, de->d_name);
        if (!vd && is_gone(errno)) continue;
        if (!vd && is_resource(errno)) goto fail_version;
        int open_errno = errno;
        repo_entry *e = append(out, cap, name, version);
        if (!e) {
            errno = ENOMEM;
            goto fail_version;
        }
        if (!vd) {
            snprintf(e->error, sizeof e->error, "cannot read the version directory: %s", strerror(open_errno));
            continue;
        }
        if (scan_version(vd, dir, de->d_name, e, err, errlen) < 0) goto fail;
        closedir(vd);
        vd = NULL;
    }
    if (errno) {
        set_err(err, errlen, "model repository %s: %s: %s", dir, name, strerror(errno));
        goto fail;
    }
    return 0;
fail_version:
    set_err(err, errlen, "model repository %s: %s/%s: %s", dir, name, de->d_name, strerror(errno));
fail:
    if (vd) closedir(vd);
    return -1;
}

static int entry_cmp(const char *name_a, uint64_t ver_a, const char *name_b, uint64_t ver_b)
{
    int c = strcmp(name_a, name_b);
    if (c) return c;
    return ver_a < ver_b ? -1 : ver_a > ver_b;
}

static int qsort_cmp(const void *pa, const void *pb)
{
    const repo_entry *a = pa, *b = pb;
    return entry_cmp(a->name, a->version, b->name, b->version);
}

int repo_scan_dir(const char *dir, repo_scan *out, char *err, size_t errlen)
{
    size_t cap = 0;
    DIR *top = NULL, *md = NULL;
    struct dirent *de;
    struct stat st;
    *out = (repo_scan){0};
    if (err && errlen) err[0] = 0;
    if (!(top = opendir(dir))) {
        set_err(err, errlen, "model repository %s: %s", dir, strerror(errno));
        goto fail;
    }
    while ((de = next_entry(top))) {
        if (!repo_valid_name(de->d_name)) continue;
        if (fstatat(dirfd(top), de->d_name, &st, 0) < 0) {
            if (is_gone(errno)) continue;
            set_err(err, errlen, "model repository %s: %s: %s", dir, de->d_name, strerror(errno));
            goto fail;
        }
        if (!S_ISDIR(st.st_mode)) continue;
        if (!(md = open_sub(top, de->d_name))) {
            if (is_gone(errno)) continue;
            set_err(err, errlen, "model repository %s: %s: %s", dir, de->d_name, strerror(errno));
            goto fail;
        }
        if (scan_model(md, dir, de->d_name, out, &cap, err, errlen) < 0) goto fail;
        closedir(md);
        md = NULL;
    }
    if (errno) {
        set_err(err, errlen, "model repository %s: %s", dir, strerror(errno));
        goto fail;
    }
    closedir(top);
    if (out->n > 1) qsort(out->v, out->n, sizeof *out->v, qsort_cmp);
    return 0;
fail:
    if (md) closedir(md);
    if (top) closedir(top);
    repo_scan_free(out);
    return -1;
}

void repo_scan_free(repo_scan *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) free(s->v[i].path);
    free(s->v);
    *s = (repo_scan){0};
}

const repo_entry *repo_find(const repo_scan *s, const char *name, uint64_t version)
{
    if (!s || !name) return NULL;
    size_t lo = 0, hi = s->n; /* the entry, if any, is in [lo, hi) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = entry_cmp(name, version, s->v[mid].name, s->v[mid].version);
        if (c == 0) return &s->v[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

int repo_same_file(const repo_entry *a, const repo_entry *b)
{
    if (!a || !b || !a->path || !b->path) return 0;
    return !strcmp(a->path, b->path) && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns;
}
