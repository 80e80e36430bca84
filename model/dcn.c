/* dcn.c — the model handle: error strings, the reference count, the
 * checksum, warm-up and the read-only accessors of dcn.h.
 *
 * The rest of the engine is split by what it does: the loader and its
 * validation in load.c, id mapping in idmap.c, the scratch and the forward
 * pass in forward.c; the model's layout they share is in dcn_impl.h.
 *
 * DESIGN
 * - A dcn_model is immutable after dcn_open and shared through an atomic
 *   reference count: dcn_retain and dcn_release may run on any thread; the
 *   last release frees the model and unmaps the file (dcn__model_free).
 * - The CRC-32 tables are built once, under pthread_once, on the first
 *   dcn_verify.
 */
#include "model/dcn_impl.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

const char *dcn_strerror(int err) {
    switch (err) {
    case DCN_OK: return "success";
#define XX(name, code, msg) case DCN_##name: return msg;
        DCN_ERRNO_MAP(XX)
#undef XX
    default: return "unknown error";
    }
}

int dcn__cmp_ref(const void *a, const void *b) {
    const feat_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

dcn_model *dcn_retain(dcn_model *m) {
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void dcn_release(dcn_model *m) {
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) dcn__model_free(m);
}

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

/* CRC-32 (IEEE, zlib's) of p[0..n), continuing from crc; slicing by 8. */
static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    pthread_once(&crc_once, crc_init);
    uint32_t (*ct)[256] = crc_table;
    crc = ~crc;
    while (n >= 8) {
        uint32_t a = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        crc = ct[7][a & 0xff] ^ ct[6][(a >> 8) & 0xff] ^ ct[5][(a >> 16) & 0xff] ^ ct[4][a >> 24] ^
              ct[3][p[4]] ^ ct[2][p[5]] ^ ct[1][p[6]] ^ ct[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--) crc = ct[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

int dcn_verify(const dcn_model *m, char *err, size_t errlen) {
    if (!m->info.has_crc32) return 0;
    uint32_t c = crc32_update(0, m->map + m->gg.data_off, m->map_size - m->gg.data_off);
    if (c != m->info.crc32)
        return fail(err, errlen, DCN_ECHECKSUM, "data section CRC-32 is %08x, the file says %08x", c, m->info.crc32);
    return 0;
}

void dcn_warmup(const dcn_model *m) {
    madvise(m->map, m->map_size, MADV_WILLNEED);
    volatile uint8_t sink = 0;
    long page = sysconf(_SC_PAGESIZE);
    for (size_t off = 0; off < m->map_size; off += (size_t)page) sink ^= m->map[off];
    (void)sink;
}

const dcn_info *dcn_model_info(const dcn_model *m) { return &m->info; }
const dcn_dense_spec *dcn_dense(const dcn_model *m, size_t i) { return i < m->info.n_dense ? &m->dense[i] : NULL; }
const dcn_sparse_spec *dcn_sparse(const dcn_model *m, size_t i) {
    return i < m->info.n_sparse ? &m->sparse[i] : NULL;
}

int dcn_find_feature(const dcn_model *m, const char *name, size_t len, size_t *index) {
    feat_ref key = {name, len, 0, 0};
    const feat_ref *r = bsearch(&key, m->by_name, m->info.n_dense + m->info.n_sparse, sizeof key, dcn__cmp_ref);
    if (!r) return -1;
    *index = r->idx;
    return r->kind;
}

const char *dcn_kernels_name(void) { return kern_get()->name; }

const char *dcn_huge_pages(void) {
    static const char *const names[] = {"unknown", "always", "madvise", "never"};
    return names[kern_thp_host()];
}
