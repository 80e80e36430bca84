/* idmap.c — raw feature values to embedding rows: the mappings of FORMAT.md
 * (index, hex_mod, hash_mod, vocab) and the hash they share.
 *
 * DESIGN
 * - Pure functions of the model and the value: no state, no allocation, safe
 *   on any thread. A value that maps to no row gets the feature's
 *   unknown_row (or missing_row for an empty hex string), never an error:
 *   request data is not trusted to be in the vocabulary.
 * - Vocabularies are sorted key arrays in the mapping, searched in place.
 */
#include "model/dcn_impl.h"

#include <stdio.h>

uint64_t dcn_hash64(uint64_t seed, const void *p, size_t len) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static int64_t map_hashed(const dcn_model *m, size_t f, uint64_t h) {
    const dcn_sparse_spec *s = &m->sparse[f];
    if (s->mapping == DCN_MAP_HASH_MOD) return (int64_t)(h % s->vocab_size);
    const table *t = &m->tab[f];
    size_t lo = 0, hi = (size_t)s->vocab_terms;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->keys[mid] < h) lo = mid + 1;
        else hi = mid;
    }
    if (lo < s->vocab_terms && t->keys[lo] == h) return t->rows[lo];
    if (s->oov_buckets) return (int64_t)(s->vocab_size - s->oov_buckets + h % s->oov_buckets);
    return s->unknown_row;
}

int64_t dcn_map_int(const dcn_model *m, size_t f, int64_t id) {
    if (f >= m->info.n_sparse) return -1;
    const dcn_sparse_spec *s = &m->sparse[f];
    switch (s->mapping) {
    case DCN_MAP_INDEX: return id >= 0 && (uint64_t)id < s->vocab_size ? id : s->unknown_row;
    case DCN_MAP_HEX_MOD: return id >= 0 ? (int64_t)((uint64_t)id % s->vocab_size) : s->unknown_row;
    default: {
        char buf[24];
        int n = snprintf(buf, sizeof buf, "%lld", (long long)id);
        return map_hashed(m, f, dcn_hash64(s->hash_seed, buf, (size_t)n));
    }
    }
}

int64_t dcn_map_str(const dcn_model *m, size_t f, const char *str, size_t len) {
    if (f >= m->info.n_sparse) return -1;
    const dcn_sparse_spec *s = &m->sparse[f];
    switch (s->mapping) {
    case DCN_MAP_INDEX: {
        size_t i = 0;
        int neg = len > 0 && str[0] == '-';
        i = (size_t)neg;
        if (len - i < 1 || len - i > 19) return s->unknown_row;
        uint64_t v = 0;
        for (; i < len; i++) {
            if (str[i] < '0' || str[i] > '9') return s->unknown_row;
            v = v * 10 + (uint64_t)(str[i] - '0');
        }
        if (neg && v) return s->unknown_row; /* negative indices are never rows; -0 is 0 */
        return v < s->vocab_size ? (int64_t)v : s->unknown_row;
    }
    case DCN_MAP_HEX_MOD: {
        if (len == 0) return s->missing_row;
        if (len > 16) return s->unknown_row;
        uint64_t v = 0;
        for (size_t i = 0; i < len; i++) {
            char c = str[i];
            int dgt = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (dgt < 0) return s->unknown_row;
            v = v << 4 | (uint64_t)dgt;
        }
        return (int64_t)(v % s->vocab_size);
    }
    default: return map_hashed(m, f, dcn_hash64(s->hash_seed, str, len));
    }
}
