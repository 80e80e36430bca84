/* gguf.h — internal: a distrustful parser of the GGUF v3 container (the
 * subset FORMAT.md §1 specifies). It validates structure only — counts,
 * lengths, types, offsets, alignment, overlap — against the buffer size; what
 * the keys and tensors mean is the loader's business (load.c).
 *
 * DESIGN: gg_parse reads a caller-owned buffer (the file mapping) and builds
 * two arrays (kvs, tensors) that point into it; nothing is copied. The buffer
 * must outlive the gg_file. Keys and tensor names are sorted for lookup.
 */
#ifndef DCN_GGUF_H
#define DCN_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum {
    GG_UINT8 = 0, GG_INT8 = 1, GG_UINT16 = 2, GG_INT16 = 3, GG_UINT32 = 4, GG_INT32 = 5,
    GG_FLOAT32 = 6, GG_BOOL = 7, GG_STRING = 8, GG_ARRAY = 9, GG_UINT64 = 10, GG_INT64 = 11,
    GG_FLOAT64 = 12, GG_TYPE_COUNT
};

#define GG_MAGIC 0x46554747u
#define GG_ALIGN 64
#define GG_MAX_KEY 256
#define GG_MAX_NAME 64
#define GG_MAX_STRING (1u << 20)
#define GG_MAX_ARRAY (1u << 28)
#define GG_MAX_KV 65536
#define GG_MAX_TENSORS (1u << 20)

typedef struct gg_str {
    const char *p;
    size_t n;
} gg_str;

typedef struct gg_kv {
    gg_str key;
    uint32_t type;
    const uint8_t *raw; /* scalars: the value's bytes (gg_read_num) */
    /* Scalars: the raw value. Arrays: elem type, count, first element. */
    union {
        uint64_t u;
        int64_t i;
        double f;
        gg_str s;
        struct {
            uint32_t type;
            uint64_t n;
            const uint8_t *p;
        } arr;
    } v;
} gg_kv;

typedef struct gg_tensor {
    gg_str name;
    uint32_t n_dims;
    uint64_t ne[4];     /* ne[0] innermost; unused dims are 1 */
    uint32_t dtype;
    uint64_t offset;    /* from the data section start */
    uint64_t nbytes;
    const uint8_t *data;
} gg_tensor;

typedef struct gg_file {
    const uint8_t *base;
    size_t size;
    size_t data_off;    /* start of the data section */
    uint32_t version;
    gg_kv *kvs;         /* sorted by key */
    size_t n_kv;
    gg_tensor *tensors; /* sorted by name */
    size_t n_tensors;
} gg_file;

/* Writes a printf-style message into err (if any) and returns code: the one
 * error path of the loader (gguf.c, load.c and dcn.c). */
int dcn__fail(char *err, size_t errlen, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Parses the container in base[0..size). Returns 0, or DCN_EFORMAT /
 * DCN_EVERSION / DCN_ENOMEM with a message in err; on failure f holds
 * nothing to free. */
int gg_parse(gg_file *f, const uint8_t *base, size_t size, char *err, size_t errlen);
void gg_free(gg_file *f);

const gg_kv *gg_find_kv(const gg_file *f, const char *key);
/* Index of the named tensor, or -1. */
long gg_find_tensor(const gg_file *f, const char *name);

/* Element size in bytes of a tensor dtype, 0 if unknown. */
size_t gg_dtype_size(uint32_t dtype);
const char *gg_dtype_name(uint32_t dtype);
const char *gg_type_name(uint32_t type);

/* Array element access. Strings are walked: gg_arr_next_str advances *p. */
size_t gg_scalar_size(uint32_t type);
gg_str gg_arr_next_str(const uint8_t **p);
/* A number read from metadata: integers keep their sign and full range. */
typedef struct gg_num {
    int is_int;         /* integer type (BOOL counts as integer) */
    int neg;            /* integer below zero */
    uint64_t mag;       /* integer magnitude (|value|) */
    double f;           /* value as double (integers converted) */
} gg_num;
/* Decodes one scalar of numeric type `type` at p; returns 0, or -1 if the
 * type is not numeric. */
int gg_read_num(uint32_t type, const uint8_t *p, gg_num *out);

#endif
