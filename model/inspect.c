/* inspect.c — dcn-inspect: prints a model file's metadata, feature specs,
 * architecture and tensor directory, and validates it by opening it exactly
 * as the server does.
 *
 *   dcn-inspect [--verify] [--quiet] FILE
 *
 * Exit status: 0 valid, 1 invalid (the reason on stderr), 2 usage.
 */
#include "model/dcn.h"
#include "model/gguf.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const kind_names[] = {"vector", "full", "lowrank", "mix"};
static const char *const act_names[] = {"identity", "relu", "tanh", "hard_tanh", "sigmoid"};
static const char *const gate_names[] = {"softmax", "sigmoid", "constant"};
static const char *const combine_names[] = {"stacked", "parallel", "cross_only"};
static const char *const map_names[] = {"index", "hex_mod", "hash_mod", "vocab"};

/* Prints the raw directory: every key (arrays summarised) and tensor. */
static int print_directory(const char *path) {
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || st.st_size <= 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return -1;
    gg_file f;
    char err[256];
    if (gg_parse(&f, map, (size_t)st.st_size, err, sizeof err) < 0) {
        munmap(map, (size_t)st.st_size);
        return -1;
    }
    printf("GGUF v%u, %zu metadata keys, %zu tensors, data at offset %zu\n\nmetadata:\n", f.version, f.n_kv,
           f.n_tensors, f.data_off);
    for (size_t i = 0; i < f.n_kv; i++) {
        const gg_kv *kv = &f.kvs[i];
        printf("  %-32.*s %-8s ", (int)kv->key.n, kv->key.p, gg_type_name(kv->type));
        if (kv->type == GG_STRING) {
            printf("\"%.*s\"%s\n", (int)(kv->v.s.n > 60 ? 60 : kv->v.s.n), kv->v.s.p, kv->v.s.n > 60 ? "..." : "");
        } else if (kv->type == GG_ARRAY) {
            printf("[%llu x %s]", (unsigned long long)kv->v.arr.n, gg_type_name(kv->v.arr.type));
            const uint8_t *p = kv->v.arr.p;
            for (uint64_t j = 0; j < kv->v.arr.n && j < 4; j++) {
                if (kv->v.arr.type == GG_STRING) {
                    gg_str s = gg_arr_next_str(&p);
                    printf(" \"%.*s\"", (int)(s.n > 24 ? 24 : s.n), s.p);
                } else {
                    gg_num n;
                    gg_read_num(kv->v.arr.type, p + j * gg_scalar_size(kv->v.arr.type), &n);
                    printf(" %g", n.f);
                }
            }
            printf("%s\n", kv->v.arr.n > 4 ? " ..." : "");
        } else {
            gg_num n;
            gg_read_num(kv->type, kv->raw, &n);
            if (n.is_int) printf("%s%llu\n", n.neg ? "-" : "", (unsigned long long)n.mag);
            else printf("%g\n", n.f);
        }
    }
    printf("\ntensors:\n");
    for (size_t i = 0; i < f.n_tensors; i++) {
        const gg_tensor *t = &f.tensors[i];
        char shape[96] = "";
        for (int d = (int)t->n_dims - 1; d >= 0; d--)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%llu", d == (int)t->n_dims - 1 ? "" : ", ",
                     (unsigned long long)t->ne[d]);
        printf("  %-24.*s %-5s [%s]  offset %llu, %llu bytes\n", (int)t->name.n, t->name.p, gg_dtype_name(t->dtype),
               shape, (unsigned long long)t->offset, (unsigned long long)t->nbytes);
    }
    gg_free(&f);
    munmap(map, (size_t)st.st_size);
    return 0;
}

static void print_model(const dcn_model *m) {
    const dcn_info *in = dcn_model_info(m);
    printf("\nmodel: %s version %s (format %u, %llu bytes)\n", in->name, in->version, in->format_version,
           (unsigned long long)in->file_bytes);
    if (in->description[0]) printf("  %s\n", in->description);
    printf("x0: %zu coordinates (%zu dense part, %zu sparse features)\n", in->d, in->dense_dim, in->n_sparse);
    printf("bottom MLP:");
    for (size_t j = 0; j < in->n_bottom; j++) printf(" %u", in->bottom_sizes[j]);
    printf("%s\ncross: %zu x %s", in->n_bottom ? "" : " none", in->cross_layers, kind_names[in->cross_kind]);
    if (in->cross_kind == DCN_CROSS_LOWRANK || in->cross_kind == DCN_CROSS_MIX) printf(", rank %zu", in->rank);
    if (in->cross_kind == DCN_CROSS_MIX)
        printf(", %zu experts, %s, gate %s%s", in->experts, act_names[in->activation], gate_names[in->gate],
               in->gate_shared ? " (shared)" : "");
    printf("\ndeep MLP:");
    for (size_t j = 0; j < in->n_deep; j++) printf(" %u", in->deep_sizes[j]);
    printf("%s\ncombine: %s\nflops per row: %.0f\ndense weights as the kernels read them: %zu bytes\nkernels: %s\n",
           in->n_deep ? "" : " none", combine_names[in->combine], in->flops_per_row, in->packed_bytes,
           dcn_kernels_name());
    for (size_t j = 0; j < in->n_dense; j++) {
        const dcn_dense_spec *s = dcn_dense(m, j);
        printf("  dense  %-12s default %g clip [%g, %g] %s", s->name, s->default_value, s->clip_min, s->clip_max,
               s->transform == DCN_TRANSFORM_LOG ? "log" : "none");
        if (s->transform == DCN_TRANSFORM_LOG) printf("(x + %g, floor %g)", s->log_shift, s->log_floor);
        printf(" mean %g std %g\n", s->mean, s->std);
    }
    for (size_t f = 0; f < in->n_sparse; f++) {
        const dcn_sparse_spec *s = dcn_sparse(m, f);
        printf("  sparse %-12s vocab %llu dim %u %s %s max_ids %u missing %lld unknown %lld", s->name,
               (unsigned long long)s->vocab_size, s->dim, s->pooling == DCN_POOL_MEAN ? "mean" : "sum",
               map_names[s->mapping], s->max_ids, (long long)s->missing_row, (long long)s->unknown_row);
        if (s->mapping == DCN_MAP_VOCAB)
            printf(" terms %llu oov %llu", (unsigned long long)s->vocab_terms, (unsigned long long)s->oov_buckets);
        printf("\n");
    }
}

int main(int argc, char **argv) {
    int verify = 0, quiet = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--verify")) verify = 1;
        else if (!strcmp(argv[i], "--quiet")) quiet = 1;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: dcn-inspect [--verify] [--quiet] FILE\n"
                   "Prints a dcnserve model file and validates it (exit 0 valid, 1 invalid).\n"
                   "  --verify  also check the data section's CRC-32\n"
                   "  --quiet   print nothing but errors\n");
            return 0;
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "usage: dcn-inspect [--verify] [--quiet] FILE\n");
            return 2;
        } else path = argv[i];
    }
    if (!path) {
        fprintf(stderr, "usage: dcn-inspect [--verify] [--quiet] FILE\n");
        return 2;
    }
    char err[512];
    dcn_model *m;
    dcn_open_opts o = {.verify_checksum = verify};
    int rc = dcn_open(path, &o, &m, err, sizeof err);
    if (!quiet) print_directory(path);
    if (rc < 0) {
        fprintf(stderr, "%s: invalid: %s (%s)\n", path, err, dcn_strerror(rc));
        return 1;
    }
    if (!quiet) print_model(m);
    if (!quiet) {
        const dcn_info *in = dcn_model_info(m);
        printf("\nvalid%s\n", verify ? (in->has_crc32 ? ", checksum verified" : ", no checksum stored") : "");
    }
    dcn_release(m);
    return 0;
}
