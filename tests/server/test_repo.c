/* test_repo.c — the model repository scanner on real trees: each test that
 * needs one builds it under a fresh mkdtemp directory in /tmp (removed by
 * the fini, even after a failed assertion). Checks what is listed and in
 * which order, what is ignored, the error entries, symbolic links, the
 * failures of the whole scan (missing DIR, a file, an unreadable model
 * directory, no file descriptors left), name and version parsing, repo_find
 * and repo_same_file across rewrites and renames. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "server/repo.h"

static char root[64]; /* this test's tree; each test runs in its own process */

static void mk_root(void)
{
    snprintf(root, sizeof root, "/tmp/dcn_repo_test.XXXXXX");
    cr_assert_not_null(mkdtemp(root), "mkdtemp: %s", strerror(errno));
}

static int unlock_one(const char *p, const struct stat *st, int type, struct FTW *f)
{
    if (type == FTW_D || type == FTW_DNR) chmod(p, 0700); /* before nftw reads it */
    return 0;
}

static int remove_one(const char *p, const struct stat *st, int type, struct FTW *f)
{
    remove(p);
    return 0;
}

/* Removes the tree without following links (some point out of it or
 * nowhere); modes taken away by a test are given back first. */
static void rm_root(void)
{
    if (!root[0]) return;
    if (getuid() == 0 && geteuid() != 0) seteuid(0); /* a test failed while it had dropped root */
    nftw(root, unlock_one, 16, FTW_PHYS);
    nftw(root, remove_one, 16, FTW_PHYS | FTW_DEPTH);
    struct stat st;
    cr_assert_neq(lstat(root, &st), 0, "%s left behind", root);
}

/* root/rel, in one of 8 rotating buffers. */
static const char *at(const char *rel)
{
    static char buf[8][2 * PATH_MAX];
    static int i;
    char *b = buf[i++ % 8];
    snprintf(b, 2 * PATH_MAX, "%s/%s", root, rel);
    return b;
}

/* mkdir -p root/rel. */
static void mkdirs(const char *rel)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s", at(rel));
    for (char *s = p + strlen(root) + 1;; s++) {
        if (*s != '/' && *s) continue;
        char c = *s;
        *s = 0;
        cr_assert(mkdir(p, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", p, strerror(errno));
        *s = c;
        if (!c) break;
    }
}

/* Writes n bytes to root/rel (truncating), making its parent directories. */
static void put(const char *rel, size_t n)
{
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", rel);
    char *slash = strrchr(parent, '/');
    if (slash) {
        *slash = 0;
        mkdirs(parent);
    }
    int fd = open(at(rel), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0, "open %s: %s", rel, strerror(errno));
    char buf[4096];
    memset(buf, 'x', sizeof buf);
    for (size_t left = n; left;) {
        size_t k = left < sizeof buf ? left : sizeof buf;
        cr_assert_eq(write(fd, buf, k), (ssize_t)k);
        left -= k;
    }
    close(fd);
}

static void link_to(const char *target, const char *rel)
{
    cr_assert_eq(symlink(target, at(rel)), 0, "symlink %s: %s", rel, strerror(errno));
}

static int64_t ns_of(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

/* Scans root (must succeed). */
static repo_scan scan_ok(void)
{
    repo_scan s;
    char err[256] = "unset";
    int rc = repo_scan_dir(root, &s, err, sizeof err);
    cr_assert_eq(rc, 0, "scan failed: %s", err);
    cr_assert_str_empty(err);
    return s;
}

/* Entry i is (name, version) with a file at root/rel of `size` bytes whose
 * stat identity it carries. */
static void expect_file(const repo_scan *s, size_t i, const char *name, uint64_t version, const char *rel, int64_t size)
{
    cr_assert_lt(i, s->n);
    const repo_entry *e = &s->v[i];
    cr_assert_str_eq(e->name, name, "entry %zu", i);
    cr_assert_eq(e->version, version, "entry %zu: %s/%llu", i, e->name, (unsigned long long)e->version);
    cr_assert_str_empty(e->error, "entry %zu: %s", i, e->error);
    cr_assert_not_null(e->path);
    cr_assert_str_eq(e->path, at(rel));
    cr_assert_eq(e->size, size, "entry %zu", i);
    struct stat st;
    cr_assert_eq(stat(at(rel), &st), 0);
    cr_assert_eq(e->ino, (uint64_t)st.st_ino);
    cr_assert_eq(e->dev, (uint64_t)st.st_dev);
    cr_assert_eq(e->mtime_ns, ns_of(st.st_mtim));
    cr_assert_eq(e->ctime_ns, ns_of(st.st_ctim));
    cr_assert_gt(e->mtime_ns, 0);
}

/* Entry i is (name, version) with no file and this error. */
static void expect_error(const repo_scan *s, size_t i, const char *name, uint64_t version, const char *error)
{
    cr_assert_lt(i, s->n);
    const repo_entry *e = &s->v[i];
    cr_assert_str_eq(e->name, name, "entry %zu", i);
    cr_assert_eq(e->version, version, "entry %zu", i);
    cr_assert_str_eq(e->error, error, "entry %zu", i);
    cr_assert_null(e->path);
    cr_assert_eq(e->size, 0);
    cr_assert_eq(e->mtime_ns, 0);
    cr_assert_eq(e->ctime_ns, 0);
    cr_assert_eq(e->ino, 0);
}

/* ---------------------------------------------------------------- layouts */

/* Two models, several versions, numeric (not lexical) version order, names
 * by strcmp (upper case first). */
Test(repo, valid_layout, .init = mk_root, .fini = rm_root)
{
    put("alpha/1/model.dcn", 100);
    put("alpha/2/a.dcn", 2000);
    put("alpha/10/ranker.dcn", 5);
    put("Beta/3/m.dcn", 0);
    put("alpha-2/9007199254740992/x.dcn", 1);
    repo_scan s = scan_ok();
    cr_assert_eq(s.n, 5);
    expect_file(&s, 0, "Beta", 3, "Beta/3/m.dcn", 0);
    expect_file(&s, 1, "alpha", 1, "alpha/1/model.dcn", 100);
    expect_file(&s, 2, "alpha", 2, "alpha/2/a.dcn", 2000);
    expect_file(&s, 3, "alpha", 10, "alpha/10/ranker.dcn", 5);
    expect_file(&s, 4, "alpha-2", UINT64_C(9007199254740992), "alpha-2/9007199254740992/x.dcn", 1);
    cr_assert_neq(s.v[1].ino, s.v[2].ino);
    repo_scan_free(&s);
    cr_assert_null(s.v);
    cr_assert_eq(s.n, 0);
    repo_scan_free(&s); /* twice is harmless */

    /* DIR with a trailing slash: one slash in the paths */
    char dir[128], err[128];
    snprintf(dir, sizeof dir, "%s/", root);
    cr_assert_eq(repo_scan_dir(dir, &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.n, 5);
    cr_assert_str_eq(s.v[0].path, at("Beta/3/m.dcn"));
    repo_scan_free(&s);
}

Test(repo, empty_repository, .init = mk_root, .fini = rm_root)
{
    repo_scan s = scan_ok();
    cr_assert_eq(s.n, 0);
    cr_assert_null(repo_find(&s, "a", 1));
    repo_scan_free(&s);
}

/* Everything that is not DIR/<valid name>/<version>/<file>.dcn is left out
 * silently, at every level. */
Test(repo, ignores_what_is_not_a_model, .init = mk_root, .fini = rm_root)
{
    char n64[REPO_NAME_MAX + 1], n65[REPO_NAME_MAX + 2], rel[256];
    memset(n64, 'n', REPO_NAME_MAX);
    n64[REPO_NAME_MAX] = 0;
    memset(n65, 'n', REPO_NAME_MAX + 1);
    n65[REPO_NAME_MAX + 1] = 0;
    /* level 1: hidden, invalid names, plain files, too long */
    put(".hidden/1/m.dcn", 1);
    put("..data/1/m.dcn", 1);
    put("-a/1/m.dcn", 1);
    put("_a/1/m.dcn", 1);
    put("a b/1/m.dcn", 1);
    put("caf\xc3\xa9/1/m.dcn", 1);
    snprintf(rel, sizeof rel, "%s/1/m.dcn", n65);
    put(rel, 1);
    snprintf(rel, sizeof rel, "%s/1/m.dcn", n64);
    put(rel, 64);
    put("plainfile", 3);
    put("plain.dcn", 3);
    /* level 2: versions that are not canonical positive integers, files */
    put("m/tmp/m.dcn", 1);
    put("m/.3.partial/m.dcn", 1);
    put("m/03/m.dcn", 1);
    put("m/0/m.dcn", 1);
    put("m/+1/m.dcn", 1);
    put("m/1a/m.dcn", 1);
    put("m/9007199254740993/m.dcn", 1);
    put("m/99999999999999999999999/m.dcn", 1);
    put("m/7", 7);                        /* a file named like a version */
    put("m/m.dcn", 7);                    /* a model file at the wrong level */
    /* level 3: one real file among others that do not count */
    put("m/4/model.dcn", 44);
    put("m/4/.hidden.dcn", 1);
    put("m/4/.dcn", 1);
    put("m/4/notes.txt", 1);
    put("m/4/x.dcn.tmp", 1);
    put("m/4/X.DCN", 1);
    put("m/4/dcn", 1);
    mkdirs("m/4/sub.dcn");                /* a directory, not a regular file */
    put("m/4/deeper/1/y.dcn", 1);
    /* models without any version give no entry */
    mkdirs("empty");
    mkdirs("onlyjunk/tmp");
    mkdirs("onlyjunk/01");
    repo_scan s = scan_ok();
    cr_assert_eq(s.n, 2, "got %zu entries, first %s", s.n, s.n ? s.v[0].name : "-");
    expect_file(&s, 0, "m", 4, "m/4/model.dcn", 44);
    snprintf(rel, sizeof rel, "%s/1/m.dcn", n64);
    expect_file(&s, 1, n64, 1, rel, 64);
    repo_scan_free(&s);
}

/* A version directory without its file, or with several, is listed as not
 * loadable (a directory being filled is never served). */
Test(repo, error_entries, .init = mk_root, .fini = rm_root)
{
    mkdirs("m/1");
    put("m/1/notes.txt", 1);
    put("m/2/a.dcn", 1);
    put("m/2/b.dcn", 2);
    put("m/3/a.dcn", 1);
    put("m/3/b.dcn", 1);
    put("m/3/c.dcn", 1);
    put("m/4/ok.dcn", 4);
    repo_scan s = scan_ok();
    cr_assert_eq(s.n, 4);
    expect_error(&s, 0, "m", 1, "no model file (*.dcn) in the version directory");
    expect_error(&s, 1, "m", 2, "2 model files (*.dcn) in the version directory: exactly one is served");
    expect_error(&s, 2, "m", 3, "3 model files (*.dcn) in the version directory: exactly one is served");
    expect_file(&s, 3, "m", 4, "m/4/ok.dcn", 4);
    repo_scan_free(&s);
}

/* Links are followed at every level (ConfigMap-style volumes); dangling
 * ones and loops are ignored. */
Test(repo, follows_symlinks, .init = mk_root, .fini = rm_root)
{
    put(".store/real-model/5/m.dcn", 5);
    put(".store/blob.bin", 123);
    put(".store/v7/x.dcn", 7);
    link_to(".store/real-model", "linked");
    link_to(".store/nothing", "dangling-model");
    mkdirs("m/6");
    link_to("../../.store/blob.bin", "m/6/m.dcn");
    link_to("../.store/v7", "m/7");
    mkdirs("m/8");
    link_to("nowhere.dcn", "m/8/dang.dcn");
    put("m/9/real.dcn", 9);
    link_to("loop.dcn", "m/9/loop.dcn");
    link_to("../.store", "m/10");          /* a version linked to a directory without *.dcn */
    repo_scan s = scan_ok();
    cr_assert_eq(s.n, 6);
    expect_file(&s, 0, "linked", 5, "linked/5/m.dcn", 5);
    expect_file(&s, 1, "m", 6, "m/6/m.dcn", 123);
    struct stat blob;
    cr_assert_eq(stat(at(".store/blob.bin"), &blob), 0);
    cr_assert_eq(s.v[1].ino, (uint64_t)blob.st_ino, "the target's identity, not the link's");
    expect_file(&s, 2, "m", 7, "m/7/x.dcn", 7);
    expect_error(&s, 3, "m", 8, "no model file (*.dcn) in the version directory");
    expect_file(&s, 4, "m", 9, "m/9/real.dcn", 9);
    expect_error(&s, 5, "m", 10, "no model file (*.dcn) in the version directory");
    repo_scan_free(&s);
}

/* No fixed limit: hundreds of versions, long paths. */
Test(repo, many_versions_and_long_paths, .init = mk_root, .fini = rm_root)
{
    char rel[PATH_MAX];
    for (int v = 300; v >= 1; v--) {
        snprintf(rel, sizeof rel, "many/%d/m.dcn", v);
        put(rel, (size_t)v);
        if (v <= 40) {
            snprintf(rel, sizeof rel, "a%d/%d/m.dcn", v % 4, v);
            put(rel, 1);
        }
    }
    char longdir[1100], file[251];
    size_t o = 0;
    for (int i = 0; i < 5; i++) {
        memset(longdir + o, 'd', 200);
        o += 200;
        longdir[o++] = '/';
    }
    memcpy(longdir + o, "z", 2);           /* the model */
    memset(file, 'f', 246);
    memcpy(file + 246, ".dcn", 5);
    snprintf(rel, sizeof rel, "%s/1/%s", longdir, file);
    put(rel, 11);

    repo_scan s = scan_ok();
    cr_assert_eq(s.n, 340);
    for (size_t i = 1; i < s.n; i++) {
        int c = strcmp(s.v[i - 1].name, s.v[i].name);
        cr_assert(c < 0 || (c == 0 && s.v[i - 1].version < s.v[i].version), "order at %zu", i);
    }
    const repo_entry *e = repo_find(&s, "many", 257);
    cr_assert_not_null(e);
    cr_assert_eq(e->size, 257);
    repo_scan_free(&s);

    /* the repository at the end of a 1000-byte path, a 250-byte file name */
    char dir[PATH_MAX], err[256];
    snprintf(dir, sizeof dir, "%s/%.*s", root, (int)(o - 1), longdir);
    cr_assert_eq(repo_scan_dir(dir, &s, err, sizeof err), 0, "%s", err);
    cr_assert_eq(s.n, 1);
    cr_assert_str_eq(s.v[0].path, at(rel));
    cr_assert_gt(strlen(s.v[0].path), 1250);
    cr_assert_eq(s.v[0].size, 11);
    repo_scan_free(&s);
}

/* ---------------------------------------------------------------- failures */

Test(repo, missing_dir_or_a_file_fails, .init = mk_root, .fini = rm_root)
{
    repo_scan s = {(repo_entry *)&s, 42}; /* garbage the call must clear */
    char err[256] = "";
    cr_assert_eq(repo_scan_dir(at("nope"), &s, err, sizeof err), -1);
    cr_assert_null(s.v);
    cr_assert_eq(s.n, 0);
    cr_assert_not_null(strstr(err, at("nope")), "%s", err);
    cr_assert_not_null(strstr(err, strerror(ENOENT)), "%s", err);

    put("file", 1);
    s = (repo_scan){(repo_entry *)&s, 42};
    err[0] = 0;
    cr_assert_eq(repo_scan_dir(at("file"), &s, err, sizeof err), -1);
    cr_assert_null(s.v);
    cr_assert_eq(s.n, 0);
    cr_assert_not_null(strstr(err, strerror(ENOTDIR)), "%s", err);

    /* no err buffer at all */
    cr_assert_eq(repo_scan_dir(at("nope"), &s, NULL, 0), -1);
    /* a tiny one: truncated, terminated */
    char tiny[8];
    memset(tiny, '#', sizeof tiny);
    cr_assert_eq(repo_scan_dir(at("nope"), &s, tiny, sizeof tiny), -1);
    cr_assert_eq(strlen(tiny), sizeof tiny - 1);
}

/* Runs the remainder of the test as an unprivileged user when root (root
 * reads any directory); returns 1 if it switched. */
static int drop_root(void)
{
    if (geteuid() != 0) return 0;
    cr_assert_eq(chmod(root, 0755), 0);
    if (seteuid(65534) != 0) cr_skip_test("cannot drop root (seteuid: %s)", strerror(errno));
    return 1;
}

/* An unreadable version directory is an error entry; an unreadable model
 * directory fails the whole scan (leaving it out would unload it). */
Test(repo, unreadable_directories, .init = mk_root, .fini = rm_root)
{
    put("m/1/m.dcn", 1);
    put("m/2/m.dcn", 2);
    put("m/3/m.dcn", 3);
    put("n/1/m.dcn", 1);
    cr_assert_eq(chmod(at("m/1"), 0), 0);
    cr_assert_eq(chmod(at("m/2"), 0444), 0);  /* listable, its files not stat-able */
    int dropped = drop_root();
    repo_scan s;
    char err[256] = "";
    int rc = repo_scan_dir(root, &s, err, sizeof err);
    int rc_model = -2;
    char err_model[256] = "";
    repo_scan s2 = {0};
    if (rc == 0) {
        if (dropped) cr_assert_eq(seteuid(0), 0);
        cr_assert_eq(chmod(at("n"), 0), 0);
        if (dropped) cr_assert_eq(seteuid(65534), 0);
        rc_model = repo_scan_dir(root, &s2, err_model, sizeof err_model);
    }
    if (dropped) cr_assert_eq(seteuid(0), 0);
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(s.n, 4);
    char want[160];
    snprintf(want, sizeof want, "cannot read the version directory: %s", strerror(EACCES));
    expect_error(&s, 0, "m", 1, want);
    snprintf(want, sizeof want, "cannot stat m.dcn: %s", strerror(EACCES));
    expect_error(&s, 1, "m", 2, want);
    expect_file(&s, 2, "m", 3, "m/3/m.dcn", 3);
    expect_file(&s, 3, "n", 1, "n/1/m.dcn", 1);
    repo_scan_free(&s);

    cr_assert_eq(rc_model, -1);
    cr_assert_null(s2.v);
    cr_assert_not_null(strstr(err_model, "n: "), "%s", err_model);
    cr_assert_not_null(strstr(err_model, strerror(EACCES)), "%s", err_model);
}

/* Out of file descriptors at the model or the version level: the scan
 * fails rather than leave models out; with enough it succeeds. */
Test(repo, out_of_descriptors_fails_the_scan, .init = mk_root, .fini = rm_root)
{
    put("a/1/m.dcn", 1);
    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    lim = old;
    if (lim.rlim_cur > 256) lim.rlim_cur = 256;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &lim), 0);
    int rc[3], saved_errno[3];
    char err[3][256];
    size_t n[3];
    for (int free_fds = 1; free_fds <= 3; free_fds++) {
        int fds[256], nfd = 0;
        while (nfd < 256 && (fds[nfd] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0) nfd++;
        saved_errno[free_fds - 1] = errno;
        for (int k = 0; k < free_fds && nfd; k++) close(fds[--nfd]);
        repo_scan s;
        rc[free_fds - 1] = repo_scan_dir(root, &s, err[free_fds - 1], sizeof err[0]);
        n[free_fds - 1] = s.n;
        repo_scan_free(&s);
        while (nfd) close(fds[--nfd]);
    }
    setrlimit(RLIMIT_NOFILE, &old);
    for (int i = 0; i < 3; i++) cr_assert_eq(saved_errno[i], EMFILE, "could not fill the descriptor table");
    /* 1 free: DIR opens, the model does not */
    cr_assert_eq(rc[0], -1);
    cr_assert_not_null(strstr(err[0], strerror(EMFILE)), "%s", err[0]);
    cr_assert_eq(n[0], 0);
    /* 2 free: the version does not */
    cr_assert_eq(rc[1], -1);
    cr_assert_not_null(strstr(err[1], strerror(EMFILE)), "%s", err[1]);
    cr_assert_not_null(strstr(err[1], "a/1"), "%s", err[1]);
    /* 3: enough */
    cr_assert_eq(rc[2], 0, "%s", err[2]);
    cr_assert_eq(n[2], 1);
}

/* ---------------------------------------------------------------- parsing */

Test(repo, parse_version)
{
    uint64_t v = 77;
    const char *bad[] = {"", "0", "00", "01", "007", "+1", "-1", " 1", "1 ", "1a", "a1", "1.0", "0x10", "1e3",
                         "9007199254740993", "9007199254740999", "10000000000000000",
                         "18446744073709551615", "18446744073709551616", "99999999999999999999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(repo_parse_version(bad[i], &v), -1, "\"%s\"", bad[i]);
        cr_assert_eq(v, 77, "\"%s\" stored", bad[i]);
    }
    char longs[1001];
    memset(longs, '1', 1000);
    longs[1000] = 0;
    cr_assert_eq(repo_parse_version(longs, &v), -1);
    struct {
        const char *s;
        uint64_t v;
    } good[] = {{"1", 1}, {"9", 9}, {"10", 10}, {"1000000", 1000000}, {"4294967296", UINT64_C(4294967296)},
                {"9007199254740991", UINT64_C(9007199254740991)}, {"9007199254740992", UINT64_C(9007199254740992)}};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        cr_assert_eq(repo_parse_version(good[i].s, &v), 0, "\"%s\"", good[i].s);
        cr_assert_eq(v, good[i].v, "\"%s\"", good[i].s);
    }
    cr_assert_eq(REPO_VERSION_MAX, UINT64_C(9007199254740992));
}

Test(repo, valid_name)
{
    char n[REPO_NAME_MAX + 2];
    memset(n, 'a', sizeof n);
    n[REPO_NAME_MAX] = 0;
    cr_assert_eq(repo_valid_name(n), 1, "64 bytes");
    n[REPO_NAME_MAX] = 'a';
    n[REPO_NAME_MAX + 1] = 0;
    cr_assert_eq(repo_valid_name(n), 0, "65 bytes");
    const char *good[] = {"a", "Z", "0", "9lives", "criteo-dcn", "m.v2_final", "A-._", "a..b"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) cr_assert_eq(repo_valid_name(good[i]), 1, "\"%s\"", good[i]);
    const char *bad[] = {"", ".", "..", ".a", "-a", "_a", "a/b", "/a", "a b", "a\tb", "a\\b", "a:b", "a*",
                         "caf\xc3\xa9", "\xc3\xa9t\xc3\xa9", "a\x7f", "a\n", "\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) cr_assert_eq(repo_valid_name(bad[i]), 0, "\"%s\"", bad[i]);
}

/* ---------------------------------------------------------------- find, same */

/* Binary search over a synthetic scan: every entry found, every gap not. */
Test(repo, find_synthetic)
{
    enum { NM = 20, NV = 7 };
    repo_entry *v = calloc(NM * NV, sizeof *v);
    cr_assert_not_null(v);
    for (int m = 0; m < NM; m++)
        for (int k = 0; k < NV; k++) {
            repo_entry *e = &v[m * NV + k];
            snprintf(e->name, sizeof e->name, "m%03d", m * 2);
            e->version = k == NV - 1 ? REPO_VERSION_MAX : (uint64_t)(2 * k + 1);
        }
    repo_scan s = {v, NM * NV};
    char name[16];
    for (int m = 0; m < NM; m++) {
        snprintf(name, sizeof name, "m%03d", m * 2);
        for (int k = 0; k < NV; k++) {
            uint64_t ver = v[m * NV + k].version;
            cr_assert_eq(repo_find(&s, name, ver), &v[m * NV + k], "%s/%llu", name, (unsigned long long)ver);
            cr_assert_null(repo_find(&s, name, ver + 1));
        }
        cr_assert_null(repo_find(&s, name, 0));
        snprintf(name, sizeof name, "m%03d", m * 2 + 1);
        cr_assert_null(repo_find(&s, name, 1));
    }
    cr_assert_null(repo_find(&s, "a", 1));
    cr_assert_null(repo_find(&s, "z", 1));
    cr_assert_null(repo_find(&s, "m00", 1));
    cr_assert_null(repo_find(&s, "m0000", 1));
    repo_scan one = {v, 1}, none = {NULL, 0};
    cr_assert_eq(repo_find(&one, "m000", 1), &v[0]);
    cr_assert_null(repo_find(&one, "m000", 3));
    cr_assert_null(repo_find(&none, "m000", 1));
    free(v);
}

Test(repo, find_on_a_scan, .init = mk_root, .fini = rm_root)
{
    put("b/1/m.dcn", 1);
    put("b/12/m.dcn", 12);
    put("a/2/m.dcn", 2);
    mkdirs("a/3");
    repo_scan s = scan_ok();
    cr_assert_eq(s.n, 4);
    const repo_entry *e = repo_find(&s, "b", 12);
    cr_assert_not_null(e);
    cr_assert_str_eq(e->path, at("b/12/m.dcn"));
    cr_assert_eq(e->size, 12);
    e = repo_find(&s, "a", 3);
    cr_assert_not_null(e);
    cr_assert_str_neq(e->error, "");
    cr_assert_eq(repo_find(&s, "a", 2), &s.v[0]);
    cr_assert_null(repo_find(&s, "a", 1));
    cr_assert_null(repo_find(&s, "b", 2));
    cr_assert_null(repo_find(&s, "c", 1));
    cr_assert_null(repo_find(&s, NULL, 1));
    repo_scan_free(&s);
}

/* Scans root and returns a copy of the entry (name, version) (path owned by
 * the copy: free it). */
static repo_entry entry_now(const char *name, uint64_t version)
{
    repo_scan s = scan_ok();
    const repo_entry *e = repo_find(&s, name, version);
    cr_assert_not_null(e, "%s/%llu missing", name, (unsigned long long)version);
    repo_entry c = *e;
    c.path = e->path ? strdup(e->path) : NULL;
    repo_scan_free(&s);
    return c;
}

static void sleep_ms(long ms)
{
    struct timespec t = {0, ms * 1000000L};
    nanosleep(&t, NULL);
}

Test(repo, same_file_after_rewrite_and_rename, .init = mk_root, .fini = rm_root)
{
    put("m/1/model.dcn", 10);
    repo_entry a = entry_now("m", 1), b = entry_now("m", 1);
    cr_assert_eq(repo_same_file(&a, &b), 1, "unchanged");
    cr_assert_eq(repo_same_file(&a, &a), 1);

    /* rewritten in place, larger: same inode, another size */
    sleep_ms(20);
    put("m/1/model.dcn", 20);
    repo_entry c = entry_now("m", 1);
    cr_assert_eq(c.ino, a.ino);
    cr_assert_eq(c.size, 20);
    cr_assert_eq(repo_same_file(&a, &c), 0, "size changed");

    /* replaced by rename with the same size and mtime: only the inode tells */
    put("m/1/.incoming", 20);
    struct timespec times[2] = {{0, UTIME_OMIT}, {c.mtime_ns / 1000000000, c.mtime_ns % 1000000000}};
    cr_assert_eq(utimensat(AT_FDCWD, at("m/1/.incoming"), times, 0), 0);
    cr_assert_eq(rename(at("m/1/.incoming"), at("m/1/model.dcn")), 0);
    repo_entry d = entry_now("m", 1);
    cr_assert_str_eq(d.path, c.path);
    cr_assert_eq(d.size, c.size);
    cr_assert_eq(d.mtime_ns, c.mtime_ns);
    cr_assert_neq(d.ino, c.ino);
    cr_assert_eq(repo_same_file(&c, &d), 0, "inode changed");

    /* rewritten in place with the same size and the mtime put back (cp -p,
     * touch -r): only ctime tells */
    sleep_ms(20);
    put("m/1/model.dcn", 20);
    times[1] = (struct timespec){d.mtime_ns / 1000000000, d.mtime_ns % 1000000000};
    cr_assert_eq(utimensat(AT_FDCWD, at("m/1/model.dcn"), times, 0), 0);
    repo_entry e = entry_now("m", 1);
    cr_assert_eq(e.ino, d.ino);
    cr_assert_eq(e.size, d.size);
    cr_assert_eq(e.mtime_ns, d.mtime_ns);
    cr_assert_neq(e.ctime_ns, d.ctime_ns);
    cr_assert_eq(repo_same_file(&d, &e), 0, "ctime changed");

    /* the same inode under another path (a hard link in another version) */
    mkdirs("m/2");
    cr_assert_eq(link(at("m/1/model.dcn"), at("m/2/model.dcn")), 0);
    repo_entry f1 = entry_now("m", 1), f2 = entry_now("m", 2);
    cr_assert_eq(f1.ino, f2.ino);
    cr_assert_eq(f1.ctime_ns, f2.ctime_ns);
    cr_assert_eq(repo_same_file(&f1, &f2), 0, "path differs");

    /* error entries and NULL never match */
    mkdirs("m/3");
    repo_entry g = entry_now("m", 3);
    cr_assert_null(g.path);
    cr_assert_eq(repo_same_file(&g, &g), 0);
    cr_assert_eq(repo_same_file(&f1, NULL), 0);
    cr_assert_eq(repo_same_file(NULL, NULL), 0);

    repo_entry *all[] = {&a, &b, &c, &d, &e, &f1, &f2, &g};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]->path);
}
