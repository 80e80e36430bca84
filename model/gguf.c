/* gguf.c — the GGUF v3 container parser (see gguf.h, FORMAT.md §1).
 *
 * Every read goes through a cursor that checks the remaining length first;
 * every count is bounded by what the remaining bytes could hold before
 * anything is allocated; every product and sum is checked for overflow.
 */
#include "model/gguf.h"
#include "model/dcn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cur {
    const uint8_t *p, *end;
} cur;

int dcn__fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}
#define fail dcn__fail

static int take(cur *c, size_t n, const uint8_t **out) {
    if ((size_t)(c->end - c->p) < n) return -1;
    *out = c->p;
    c->p += n;
    return 0;
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static int get_u32(cur *c, uint32_t *v) {
    const uint8_t *p;
    if (take(c, 4, &p)) return -1;
    *v = rd32(p);
    return 0;
}
static int get_u64(cur *c, uint64_t *v) {
    const uint8_t *p;
    if (take(c, 8, &p)) return -1;
    *v = rd64(p);
    return 0;
}
static int get_str(cur *c, gg_str *s, uint64_t max) {
    uint64_t n;
    const uint8_t *p;
    if (get_u64(c, &n) || n > max || take(c, (size_t)n, &p)) return -1;
    s->p = (const char *)p;
    s->n = (size_t)n;
    return 0;
}

size_t gg_scalar_size(uint32_t type) {
    switch (type) {
    case GG_UINT8: case GG_INT8: case GG_BOOL: return 1;
    case GG_UINT16: case GG_INT16: return 2;
    case GG_UINT32: case GG_INT32: case GG_FLOAT32: return 4;
    case GG_UINT64: case GG_INT64: case GG_FLOAT64: return 8;
    default: return 0;
    }
}

const char *gg_type_name(uint32_t type) {
    static const char *names[] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                  "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
    return type < GG_TYPE_COUNT ? names[type] : "unknown";
}

size_t gg_dtype_size(uint32_t dtype) {
    switch (dtype) {
    case DCN_F32: case DCN_I32: return 4;
    case DCN_F16: case DCN_BF16: return 2;
    case DCN_I8: return 1;
    case DCN_I64: return 8;
    default: return 0;
    }
}

const char *gg_dtype_name(uint32_t dtype) {
    switch (dtype) {
    case DCN_F32: return "F32";
    case DCN_F16: return "F16";
    case DCN_BF16: return "BF16";
    case DCN_I8: return "I8";
    case DCN_I32: return "I32";
    case DCN_I64: return "I64";
    default: return "unknown";
    }
}

int gg_read_num(uint32_t type, const uint8_t *p, gg_num *o) {
    memset(o, 0, sizeof *o);
    o->is_int = 1;
    int64_t s = 0;
    switch (type) {
    case GG_UINT8: case GG_BOOL: o->mag = p[0]; break;
    case GG_UINT16: o->mag = (uint64_t)p[0] | (uint64_t)p[1] << 8; break;
    case GG_UINT32: o->mag = rd32(p); break;
    case GG_UINT64: o->mag = rd64(p); break;
    case GG_INT8: s = (int8_t)p[0]; goto sgn;
    case GG_INT16: s = (int16_t)(uint16_t)(p[0] | p[1] << 8); goto sgn;
    case GG_INT32: s = (int32_t)rd32(p); goto sgn;
    case GG_INT64: s = (int64_t)rd64(p); goto sgn;
    case GG_FLOAT32: {
        uint32_t b = rd32(p);
        float f;
        memcpy(&f, &b, 4);
        o->is_int = 0;
        o->f = f;
        return 0;
    }
    case GG_FLOAT64: {
        uint64_t b = rd64(p);
        memcpy(&o->f, &b, 8);
        o->is_int = 0;
        return 0;
    }
    default: return -1;
    }
    o->f = (double)o->mag;
    return 0;
sgn:
    o->neg = s < 0;
    o->mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
    o->f = (double)s;
    return 0;
}

gg_str gg_arr_next_str(const uint8_t **p) {
    gg_str s;
    s.n = (size_t)rd64(*p);
    s.p = (const char *)*p + 8;
    *p += 8 + s.n;
    return s;
}

static int cmp_kv(const void *a, const void *b) {
    const gg_kv *x = a, *y = b;
    size_t n = x->key.n < y->key.n ? x->key.n : y->key.n;
    int c = memcmp(x->key.p, y->key.p, n);
    return c ? c : (x->key.n > y->key.n) - (x->key.n < y->key.n);
}
static int cmp_tensor(const void *a, const void *b) {
    const gg_tensor *x = a, *y = b;
    size_t n = x->name.n < y->name.n ? x->name.n : y->name.n;
    int c = memcmp(x->name.p, y->name.p, n);
    return c ? c : (x->name.n > y->name.n) - (x->name.n < y->name.n);
}
static int cmp_offset(const void *a, const void *b) {
    const gg_tensor *x = *(const gg_tensor *const *)a, *y = *(const gg_tensor *const *)b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

/* Reads one metadata value of `type` (arrays included) into kv. */
static int read_value(cur *c, gg_kv *kv, char *err, size_t errlen) {
    uint32_t t = kv->type;
    const uint8_t *p;
    if (t == GG_STRING) {
        if (get_str(c, &kv->v.s, GG_MAX_STRING))
            return fail(err, errlen, DCN_EFORMAT, "metadata '%.*s': string truncated or over 1 MiB",
                        (int)kv->key.n, kv->key.p);
        return 0;
    }
    if (t == GG_ARRAY) {
        uint32_t et;
        uint64_t n;
        if (get_u32(c, &et) || get_u64(c, &n))
            return fail(err, errlen, DCN_EFORMAT, "metadata '%.*s': array header truncated",
                        (int)kv->key.n, kv->key.p);
        if (et == GG_ARRAY || et >= GG_TYPE_COUNT)
            return fail(err, errlen, DCN_EFORMAT, "metadata '%.*s': bad array element type %u",
                        (int)kv->key.n, kv->key.p, et);
        if (n > GG_MAX_ARRAY)
            return fail(err, errlen, DCN_EFORMAT, "metadata '%.*s': array of %llu elements (limit %u)",
                        (int)kv->key.n, kv->key.p, (unsigned long long)n, GG_MAX_ARRAY);
        kv->v.arr.type = et;
        kv->v.arr.n = n;
        kv->v.arr.p = c->p;
        if (et == GG_STRING) {
            for (uint64_t i = 0; i < n; i++) {
                gg_str s;
                if (get_str(c, &s, GG_MAX_STRING))
                    return fail(err, errlen, DCN_EFORMAT, "metadata '%.*s': string %llu truncated",
                                (int)kv->key.n, kv->key.p, (unsigned long long)i);
            }
        } else {
            size_t es = gg_scalar_size(et);
            if (n > (uint64_t)(c->end - c->p) / es || take(c, (size_t)(n * es), &p))
                return fail(err, errlen, DCN_EFORMAT, "metadata '%.*s': array truncated",
                            (int)kv->key.n, kv->key.p);
        }
        return 0;
    }
    size_t sz = gg_scalar_size(t);
    if (!sz)
        return fail(err, errlen, DCN_EFORMAT, "metadata '%.*s': unknown value type %u",
                    (int)kv->key.n, kv->key.p, t);
    if (take(c, sz, &p))
        return fail(err, errlen, DCN_EFORMAT, "metadata '%.*s': value truncated", (int)kv->key.n, kv->key.p);
    kv->raw = p;
    return 0;
}

int gg_parse(gg_file *f, const uint8_t *base, size_t size, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    cur c = {base, base + size};
    uint32_t magic, version;
    uint64_t n_tensors, n_kv;
    int rc = DCN_EFORMAT;
    gg_tensor **by_off = NULL;

    if (get_u32(&c, &magic) || get_u32(&c, &version) || get_u64(&c, &n_tensors) || get_u64(&c, &n_kv))
        return fail(err, errlen, DCN_EFORMAT, "file of %zu bytes is too short for a GGUF header", size);
    if (magic != GG_MAGIC)
        return fail(err, errlen, DCN_EFORMAT, "bad magic 0x%08x: not a GGUF file", magic);
    if (version != 3)
        return fail(err, errlen, DCN_EVERSION, "GGUF version %u, only version 3 is read", version);
    /* A kv needs at least 8+1+4+1 bytes, a tensor info 8+1+4+8+4+8. */
    if (n_kv > GG_MAX_KV || n_kv > (size_t)(c.end - c.p) / 14)
        return fail(err, errlen, DCN_EFORMAT, "metadata count %llu is impossible for a %zu-byte file",
                    (unsigned long long)n_kv, size);
    if (n_tensors > GG_MAX_TENSORS || n_tensors > (size_t)(c.end - c.p) / 33)
        return fail(err, errlen, DCN_EFORMAT, "tensor count %llu is impossible for a %zu-byte file",
                    (unsigned long long)n_tensors, size);
    f->base = base;
    f->size = size;
    f->version = version;
    f->kvs = calloc(n_kv ? n_kv : 1, sizeof *f->kvs);
    f->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *f->tensors);
    if (!f->kvs || !f->tensors) {
        rc = fail(err, errlen, DCN_ENOMEM, "out of memory for the file directory");
        goto fail;
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        gg_kv *kv = &f->kvs[i];
        if (get_str(&c, &kv->key, GG_MAX_KEY)) {
            rc = fail(err, errlen, DCN_EFORMAT, "metadata key %llu truncated or over %d bytes",
                      (unsigned long long)i, GG_MAX_KEY);
            goto fail;
        }
        if (get_u32(&c, &kv->type)) {
            rc = fail(err, errlen, DCN_EFORMAT, "metadata '%.*s': type truncated", (int)kv->key.n, kv->key.p);
            goto fail;
        }
        if ((rc = read_value(&c, kv, err, errlen)) < 0) goto fail;
        f->n_kv++;
    }
    qsort(f->kvs, f->n_kv, sizeof *f->kvs, cmp_kv);
    for (size_t i = 1; i < f->n_kv; i++)
        if (!cmp_kv(&f->kvs[i - 1], &f->kvs[i])) {
            rc = fail(err, errlen, DCN_EFORMAT, "duplicate metadata key '%.*s'", (int)f->kvs[i].key.n,
                      f->kvs[i].key.p);
            goto fail;
        }

    for (uint64_t i = 0; i < n_tensors; i++) {
        gg_tensor *t = &f->tensors[i];
        if (get_str(&c, &t->name, GG_MAX_NAME)) {
            rc = fail(err, errlen, DCN_EFORMAT, "tensor %llu: name truncated or over %d bytes",
                      (unsigned long long)i, GG_MAX_NAME);
            goto fail;
        }
        if (get_u32(&c, &t->n_dims) || t->n_dims < 1 || t->n_dims > 4) {
            rc = fail(err, errlen, DCN_EFORMAT, "tensor '%.*s': bad number of dimensions",
                      (int)t->name.n, t->name.p);
            goto fail;
        }
        uint64_t count = 1;
        for (uint32_t d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            if (get_u64(&c, &t->ne[d])) {
                rc = fail(err, errlen, DCN_EFORMAT, "tensor '%.*s': shape truncated", (int)t->name.n, t->name.p);
                goto fail;
            }
            if (t->ne[d] == 0 || t->ne[d] > ((uint64_t)1 << 48) || count > UINT64_MAX / t->ne[d]) {
                rc = fail(err, errlen, DCN_EFORMAT, "tensor '%.*s': dimension %u of %llu is out of range",
                          (int)t->name.n, t->name.p, d, (unsigned long long)t->ne[d]);
                goto fail;
            }
            count *= t->ne[d];
        }
        if (get_u32(&c, &t->dtype) || get_u64(&c, &t->offset)) {
            rc = fail(err, errlen, DCN_EFORMAT, "tensor '%.*s': info truncated", (int)t->name.n, t->name.p);
            goto fail;
        }
        size_t es = gg_dtype_size(t->dtype);
        if (!es) {
            rc = fail(err, errlen, DCN_EFORMAT, "tensor '%.*s': unsupported dtype %u", (int)t->name.n,
                      t->name.p, t->dtype);
            goto fail;
        }
        if (count > UINT64_MAX / es) {
            rc = fail(err, errlen, DCN_EFORMAT, "tensor '%.*s': size overflows", (int)t->name.n, t->name.p);
            goto fail;
        }
        t->nbytes = count * es;
        if (t->offset % GG_ALIGN) {
            rc = fail(err, errlen, DCN_EFORMAT, "tensor '%.*s': offset %llu is not %d-byte aligned",
                      (int)t->name.n, t->name.p, (unsigned long long)t->offset, GG_ALIGN);
            goto fail;
        }
        f->n_tensors++;
    }
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor);
    for (size_t i = 1; i < f->n_tensors; i++)
        if (!cmp_tensor(&f->tensors[i - 1], &f->tensors[i])) {
            rc = fail(err, errlen, DCN_EFORMAT, "duplicate tensor '%.*s'", (int)f->tensors[i].name.n,
                      f->tensors[i].name.p);
            goto fail;
        }

    size_t hdr = (size_t)(c.p - base);
    size_t data_off = (hdr + GG_ALIGN - 1) / GG_ALIGN * GG_ALIGN;
    if (data_off > size) {
        if (f->n_tensors) {
            rc = fail(err, errlen, DCN_EFORMAT, "file ends before the data section");
            goto fail;
        }
        data_off = size;
    }
    f->data_off = data_off;
    uint64_t data_size = size - data_off;
    for (size_t i = 0; i < f->n_tensors; i++) {
        gg_tensor *t = &f->tensors[i];
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            rc = fail(err, errlen, DCN_EFORMAT,
                      "tensor '%.*s': bytes [%llu, +%llu) lie outside the %llu-byte data section",
                      (int)t->name.n, t->name.p, (unsigned long long)t->offset,
                      (unsigned long long)t->nbytes, (unsigned long long)data_size);
            goto fail;
        }
        t->data = base + data_off + t->offset;
    }
    by_off = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *by_off);
    if (!by_off) {
        rc = fail(err, errlen, DCN_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < f->n_tensors; i++) by_off[i] = &f->tensors[i];
    qsort(by_off, f->n_tensors, sizeof *by_off, cmp_offset);
    for (size_t i = 1; i < f->n_tensors; i++)
        if (by_off[i - 1]->offset + by_off[i - 1]->nbytes > by_off[i]->offset) {
            rc = fail(err, errlen, DCN_EFORMAT, "tensors '%.*s' and '%.*s' overlap",
                      (int)by_off[i - 1]->name.n, by_off[i - 1]->name.p, (int)by_off[i]->name.n,
                      by_off[i]->name.p);
            goto fail;
        }
    free(by_off);
    return 0;
fail:
    free(by_off);
    gg_free(f);
    return rc;
}

void gg_free(gg_file *f) {
    free(f->kvs);
    free(f->tensors);
    memset(f, 0, sizeof *f);
}

const gg_kv *gg_find_kv(const gg_file *f, const char *key) {
    gg_kv k = {.key = {key, strlen(key)}};
    return bsearch(&k, f->kvs, f->n_kv, sizeof *f->kvs, cmp_kv);
}

long gg_find_tensor(const gg_file *f, const char *name) {
    gg_tensor k = {.name = {name, strlen(name)}};
    const gg_tensor *t = bsearch(&k, f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor);
    return t ? (long)(t - f->tensors) : -1;
}
