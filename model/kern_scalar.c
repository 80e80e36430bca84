/* kern_scalar.c — the portable reference kernels: plain loops (dot products
 * summed in double), always built, the oracle every optimised set is tested
 * against. Same packed layout as
 * the SIMD sets (kernels.h), panel width 16.
 */
#include "model/kernels.h"

#include <math.h>
#include <string.h>

/* Applies the epilogue to one accumulator (row r of the call, column n). */
static float epilogue(const kepi *e, size_t r, size_t n, float acc) {
    switch (e->kind) {
    case KEPI_RELU: {
        float v = acc + e->bias[n];
        return v > 0.0f ? v : 0.0f;
    }
    case KEPI_CROSS: {
        float bs = e->bscale ? e->bscale[r] : 1.0f;
        return e->x0[r * e->ldx0 + n] * (acc + e->bias[n] * bs) + e->xl[r * e->ldxl + n];
    }
    default:
        return acc + e->bias[n];
    }
}

/* The INT8 reference (a layer with an INT8 copy, read over all its inputs):
 * the same quantized row, integer sums, the same dequantization. */
static void gemm_i8_scalar(size_t m, const float *x, size_t ldx, const klinear *L, float *y, size_t ldy,
                           const kepi *e) {
    static _Thread_local uint8_t qr[KQ_MAX_IN];
    size_t kq = L->kq;
    for (size_t r = 0; r < m; r++) {
        float sx = kern_quant_row(x + r * ldx, L->qsm, L->in, kq, qr);
        for (size_t n = 0; n < L->out; n++) {
            int32_t acc = 0;
            for (size_t k = 0; k < kq; k++)
                acc += (int32_t)qr[k] * L->wq[((n / KQ_NR) * (kq / 4) + k / 4) * (KQ_NR * 4) + (n % KQ_NR) * 4 + k % 4];
            y[r * ldy + n] = epilogue(e, r, n, (float)(acc - L->wzc[n]) * (sx * L->wsc[n]));
        }
    }
}

/* The BF16 dot-product reference (a layer with a BF16 copy, read over all
 * its inputs): kernels.h's rule, written out. */
static float ftz(float f) {
    return fabsf(f) < 1.17549435e-38f ? copysignf(0.0f, f) : f;
}

static void gemm_bf16_scalar(size_t m, const float *x, size_t ldx, const klinear *L, float *y, size_t ldy,
                             const kepi *e) {
    static _Thread_local uint16_t xr[KB_MAX_IN];
    size_t kb = L->kbf;
    for (size_t r = 0; r < m; r++) {
        kern_bf16_row(x + r * ldx, L->in, kb, xr);
        for (size_t n = 0; n < L->out; n++) {
            const uint16_t *w = L->wbf + (n / 16) * kb * 16 + (n % 16) * 2;
            float acc = 0.0f;
            for (size_t k = 0; k < kb; k += 2, w += 32) {
                acc = ftz(acc + kern_bf16_to_f32(xr[k + 1]) * kern_bf16_to_f32(w[1]));
                acc = ftz(acc + kern_bf16_to_f32(xr[k]) * kern_bf16_to_f32(w[0]));
            }
            y[r * ldy + n] = epilogue(e, r, n, acc);
        }
    }
}

static void gemm_scalar(size_t m, const float *x, size_t ldx, const klinear *L, const krange *rg, size_t n_rg,
                        float *y, size_t ldy, const kepi *e) {
    if (kern_all_inputs(L, rg, n_rg) && (L->wq || L->wbf)) {
        (L->wq ? gemm_i8_scalar : gemm_bf16_scalar)(m, x, ldx, L, y, ldy, e);
        return;
    }
    for (size_t r = 0; r < m; r++)
        for (size_t n = 0; n < L->out; n++) {
            double acc = 0.0; /* the oracle sums in double */
            for (size_t g = 0; g < n_rg; g++)
                for (size_t k = rg[g].k0; k < rg[g].k1; k++) acc += (double)x[r * ldx + k] * kern_weight(L, n, k);
            y[r * ldy + n] = epilogue(e, r, n, (float)acc);
        }
}

static void add_f32(float *dst, const float *row, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += row[i];
}
static void add_f16(float *dst, const uint16_t *row, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += kern_f16_to_f32(row[i]);
}
static void add_bf16(float *dst, const uint16_t *row, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += kern_bf16_to_f32(row[i]);
}
static void add_i8(float *dst, const int8_t *row, float scale, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += (float)row[i] * scale;
}

static void act(float *x, size_t n, int kind) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        switch (kind) {
        case 1: v = v > 0.0f ? v : 0.0f; break;
        case 2: v = tanhf(v); break;
        case 3: v = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; break;
        case 4: v = 1.0f / (1.0f + expf(-v)); break;
        default: break;
        }
        x[i] = v;
    }
}

const kern_set kern_scalar = {
    .name = "scalar",
    .nr = 16,
    .mr = 1,  /* every row alone, in double */
    .mc = 0,
    .gemm = gemm_scalar,
    .add_f32 = add_f32,
    .add_f16 = add_f16,
    .add_bf16 = add_bf16,
    .add_i8 = add_i8,
    .act = act,
};
