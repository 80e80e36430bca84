/* test_map.c — the id contract of FORMAT.md §3 on the C side: hash64 test
 * vectors, and every mapping's edge cases (index, hex_mod, hash_mod, vocab
 * with OOV buckets) on golden models, where dcnfile.py's map_id wrote the
 * expected rows. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "model/dcn.h"

Test(map, hash64_test_vectors) {
    cr_assert_eq(dcn_hash64(0, "", 0), 0xefd01f60ba992926ull);
    cr_assert_eq(dcn_hash64(0, "a", 1), 0x82a2a958a9bece5bull);
    cr_assert_eq(dcn_hash64(0, "68fd1e64", 8), 0xa9ab96d049fc30dbull);
    cr_assert_eq(dcn_hash64(7, "hello", 5), 0x5ea6b88446790ff0ull);
    cr_assert_eq(dcn_hash64(0xffffffffffffffffull, "caf\xc3\xa9", 5), 0xede193573587b609ull);
    cr_assert_eq(dcn_hash64(0, "-12", 3), 0x1a2f0074ace287b0ull);
}

static dcn_model *open_golden(const char *name) {
    char path[128], err[256];
    snprintf(path, sizeof path, "tests/golden/%s", name);
    dcn_model *m;
    cr_assert_eq(dcn_open(path, NULL, &m, err, sizeof err), 0, "%s", err);
    return m;
}

/* Index of the first sparse feature with the given mapping. */
static size_t feature_with(const dcn_model *m, dcn_mapping mp) {
    for (size_t f = 0; f < dcn_model_info(m)->n_sparse; f++)
        if (dcn_sparse(m, f)->mapping == mp) return f;
    cr_assert_fail("no feature with mapping %d", mp);
    return 0;
}

#define S(str) str, strlen(str)

Test(map, index) {
    dcn_model *m = open_golden("map_index.dcn");
    size_t f = feature_with(m, DCN_MAP_INDEX);
    const dcn_sparse_spec *s = dcn_sparse(m, f);
    int64_t last = (int64_t)s->vocab_size - 1;
    cr_assert_eq(dcn_map_int(m, f, 0), 0);
    cr_assert_eq(dcn_map_int(m, f, last), last);
    cr_assert_eq(dcn_map_int(m, f, last + 1), s->unknown_row);
    cr_assert_eq(dcn_map_int(m, f, -1), s->unknown_row);
    cr_assert_eq(dcn_map_int(m, f, INT64_MIN), s->unknown_row);
    cr_assert_eq(dcn_map_str(m, f, S("1")), 1);
    cr_assert_eq(dcn_map_str(m, f, S("0001")), 1);
    cr_assert_eq(dcn_map_str(m, f, S("-0")), 0);
    cr_assert_eq(dcn_map_str(m, f, S("+1")), s->unknown_row);
    cr_assert_eq(dcn_map_str(m, f, S(" 1")), s->unknown_row);
    cr_assert_eq(dcn_map_str(m, f, S("1.0")), s->unknown_row);
    cr_assert_eq(dcn_map_str(m, f, S("")), s->unknown_row);
    cr_assert_eq(dcn_map_str(m, f, S("-")), s->unknown_row);
    cr_assert_eq(dcn_map_str(m, f, S("99999999999999999999999")), s->unknown_row);
    dcn_release(m);
}

Test(map, hex_mod) {
    dcn_model *m = open_golden("map_hex_mod.dcn");
    size_t f = feature_with(m, DCN_MAP_HEX_MOD);
    const dcn_sparse_spec *s = dcn_sparse(m, f);
    uint64_t v = s->vocab_size;
    cr_assert_eq(dcn_map_str(m, f, S("68fd1e64")), (int64_t)(0x68fd1e64ull % v));
    cr_assert_eq(dcn_map_str(m, f, S("68FD1E64")), (int64_t)(0x68fd1e64ull % v));
    cr_assert_eq(dcn_map_str(m, f, S("ffffffffffffffff")), (int64_t)(0xffffffffffffffffull % v));
    cr_assert_eq(dcn_map_str(m, f, S("")), s->missing_row);
    cr_assert_eq(dcn_map_str(m, f, S("0x12")), s->unknown_row);
    cr_assert_eq(dcn_map_str(m, f, S("12g")), s->unknown_row);
    cr_assert_eq(dcn_map_str(m, f, S("1ffffffffffffffff")), s->unknown_row);
    cr_assert_eq(dcn_map_int(m, f, 12345), (int64_t)(12345 % v));
    cr_assert_eq(dcn_map_int(m, f, -5), s->unknown_row);
    dcn_release(m);
}

Test(map, hash_mod_and_vocab) {
    dcn_model *m = open_golden("map_hash_mod.dcn");
    size_t f = feature_with(m, DCN_MAP_HASH_MOD);
    const dcn_sparse_spec *s = dcn_sparse(m, f);
    cr_assert_eq(dcn_map_str(m, f, S("abc")), (int64_t)(dcn_hash64(s->hash_seed, "abc", 3) % s->vocab_size));
    cr_assert_eq(dcn_map_int(m, f, -12), dcn_map_str(m, f, S("-12")));
    dcn_release(m);

    m = open_golden("map_vocab.dcn");
    for (size_t g = 0; g < dcn_model_info(m)->n_sparse; g++) {
        s = dcn_sparse(m, g);
        if (s->mapping != DCN_MAP_VOCAB) continue;
        for (int i = 0; i < 200; i++) {
            char term[32];
            int n = snprintf(term, sizeof term, "never-seen-%d", i);
            int64_t r = dcn_map_str(m, g, term, (size_t)n);
            if (s->oov_buckets)
                cr_assert(r >= (int64_t)(s->vocab_size - s->oov_buckets) && r < (int64_t)s->vocab_size,
                          "unknown term went to row %lld", (long long)r);
            else if (r != s->unknown_row) /* a 64-bit hash collision with a term: impossible here */
                cr_assert_fail("unknown term mapped to %lld", (long long)r);
        }
        cr_assert_eq(dcn_map_int(m, g, 7), dcn_map_str(m, g, S("7")));
    }
    dcn_release(m);
}
