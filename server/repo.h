/* repo.h — reading a model repository: the directory that
 * --model-repository names, laid out as TF Serving's is,
 * DIR/<name>/<version>/<file>.dcn. This module only lists what is there
 * (names, versions, the file and its stat identity); loading and serving
 * belong to the caller.
 *
 *     repo_scan s;
 *     char err[256];
 *     if (repo_scan_dir(dir, &s, err, sizeof err) < 0) { log err; keep serving; }
 *     for (size_t i = 0; i < s.n; i++)
 *         if (!s.v[i].error[0]) ... s.v[i].path is a candidate to load ...
 *     repo_scan_free(&s);
 *
 * DESIGN
 * - Threads: pure functions of the file system and their arguments, no
 *   globals, no shared state: any thread may call any of them, at once.
 *   A scan is a snapshot: the tree may change while it is read, and an entry
 *   that vanishes meanwhile is simply not listed.
 * - Ownership: the caller owns the repo_scan that repo_scan_dir fills,
 *   every path in it included, and frees it all with repo_scan_free. On
 *   failure nothing is left to free.
 * - What is listed: a model is a subdirectory of DIR whose name passes
 *   repo_valid_name; a version is a subdirectory of a model whose name
 *   passes repo_parse_version; its file is the one regular file in it named
 *   *.dcn (not hidden). Symbolic links are followed at every level
 *   (Kubernetes ConfigMap-style volumes are made of them). Anything else is
 *   ignored silently; a model with no version gives no entry. A version
 *   that cannot be loaded as it is (no file, several, unreadable) is listed
 *   with `error` set, so a version directory being filled is seen as not
 *   loadable and is never served.
 * - Failure: the scan fails as a whole (-1) when DIR cannot be read, when
 *   a model directory cannot be read, or when memory or file descriptors
 *   run out (ENOMEM, EMFILE, ENFILE) at any level: a scan that silently
 *   left a model out would make the caller unload it.
 * - Publishing rule for operators: write the file elsewhere in the same
 *   file system, then rename the version directory or the file into place
 *   (rename is atomic; a copy is not). A scan may see a half-copied file:
 *   the loader must refuse it, and the caller compares the entry it loaded
 *   with the same entry of each later scan (repo_same_file): a changed stat
 *   identity means the file changed while or after it was read, so try
 *   again (load it anew).
 */
#ifndef SRV_REPO_H
#define SRV_REPO_H

#include <stddef.h>
#include <stdint.h>

#define REPO_NAME_MAX 64           /* bytes in a model name */
#define REPO_VERSION_MAX (UINT64_C(1) << 53) /* exact in a JSON number */

typedef struct repo_entry {
    char name[REPO_NAME_MAX + 1];  /* the model's directory name */
    uint64_t version;              /* the version directory, 1..REPO_VERSION_MAX */
    char *path;                    /* malloc'ed: DIR/name/version/file.dcn, or NULL when error[0] */
    int64_t size;                  /* st_size of the file in bytes (0 when no file) */
    int64_t mtime_ns;              /* st_mtim of the file in ns (0 when no file) */
    int64_t ctime_ns;              /* st_ctim in ns: a rename into place changes it */
    uint64_t ino, dev;             /* the file's identity */
    char error[160];               /* "" or why this version cannot be loaded */
} repo_entry;

typedef struct repo_scan {
    repo_entry *v;                 /* (n) sorted by name (strcmp), then version ascending */
    size_t n;
} repo_scan;

/* 1 if s is a valid model name: 1..64 bytes of [A-Za-z0-9._-], first byte
 * alphanumeric (so never "." nor ".." nor hidden); else 0. */
int repo_valid_name(const char *s);

/* Parses a version directory name: decimal digits only, no sign, no leading
 * zero, 1 <= v <= 2^53 (JSON-safe). Returns 0 and stores *v, or -1 (*v
 * untouched). */
int repo_parse_version(const char *s, uint64_t *v);

/* Lists DIR (see DESIGN). Returns 0 and fills *out (free with
 * repo_scan_free), or -1 with a message in err (DIR missing, not a
 * directory, unreadable, a model directory unreadable, out of memory or
 * file descriptors) and *out empty. err may be NULL when errlen is 0. */
int repo_scan_dir(const char *dir, repo_scan *out, char *err, size_t errlen);

/* Frees every path and the array; leaves *s empty (freeing twice is safe). */
void repo_scan_free(repo_scan *s);

/* The entry for (name, version) in s, or NULL (binary search). */
const repo_entry *repo_find(const repo_scan *s, const char *name, uint64_t version);

/* 1 if a and b name the same file with the same contents as far as stat can
 * tell (path, dev, ino, size, mtime_ns, ctime_ns equal); 0 otherwise, and
 * whenever either is NULL or has no file (error entries). */
int repo_same_file(const repo_entry *a, const repo_entry *b);

#endif
