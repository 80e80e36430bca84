/* kernels.h — internal: the compute kernels behind one table of function
 * pointers, chosen once at start-up from the CPU (kernels.c).
 *
 * DESIGN
 * - Dense layers use weights packed once at load (kern_pack): the output
 *   dimension is cut into panels of `nr` outputs; panel p holds, for every
 *   input k, the nr weights W[p*nr + j][k] contiguously (k-major), zero-padded
 *   past `out`. A GEMM row-tile then reads one contiguous stream per panel,
 *   and skipping a range of inputs (request-context sharing) is skipping a
 *   range of k.
 * - The GEMM takes its inputs as ranges of k (the coordinates it must read)
 *   and fuses its epilogue: bias, bias+ReLU, or the cross layer's
 *   x0 ⊙ (acc + b) + x_l.
 * - Each instruction set lives in its own file with its own flags; the scalar
 *   set is always built and is the oracle in tests. Kernels allocate nothing.
 */
#ifndef DCN_KERNELS_H
#define DCN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define KERN_NR_MAX 32

/* A linear layer y = W x + b with W (out, in) packed for the kernel set. */
typedef struct klinear {
    size_t in, out;
    size_t out_pad;     /* out rounded up to nr */
    size_t nr;          /* panel width the weights were packed for */
    float *wp;          /* (out_pad / nr, in, nr) packed, 64-byte aligned */
    float *bias;        /* (out_pad), zero past out; never NULL */
} klinear;

/* A run of input coordinates [k0, k1). */
typedef struct krange {
    uint32_t k0, k1;
} krange;

enum { KEPI_BIAS, KEPI_RELU, KEPI_CROSS };

/* What the GEMM does with each accumulator acc(r, n) before storing y(r, n):
 *   KEPI_BIAS:  acc + bias[n]
 *   KEPI_RELU:  max(acc + bias[n], 0)
 *   KEPI_CROSS: x0(r, n) * (acc + bias[n] * bscale(r)) + xl(r, n)
 * bias has out_pad entries; bscale is per row or NULL for 1. */
typedef struct kepi {
    int kind;
    const float *bias;
    const float *x0;
    size_t ldx0;
    const float *xl;
    size_t ldxl;
    const float *bscale;
} kepi;

typedef struct kern_set {
    const char *name;
    size_t nr;          /* panel width */
    /* y(m, out) = epilogue(x(m, in)[ranges] · Wᵀ[ranges]); x rows are ldx
     * apart, y rows ldy apart. */
    void (*gemm)(size_t m, const float *x, size_t ldx, const klinear *L, const krange *rg, size_t n_rg,
                 float *y, size_t ldy, const kepi *e);
    /* dst[0..n) += row converted to f32 (times scale for I8). */
    void (*add_f32)(float *dst, const float *row, size_t n);
    void (*add_f16)(float *dst, const uint16_t *row, size_t n);
    void (*add_bf16)(float *dst, const uint16_t *row, size_t n);
    void (*add_i8)(float *dst, const int8_t *row, float scale, size_t n);
    /* x[0..n) = g(x) in place, g a dcn_act (identity, relu, tanh,
     * hard_tanh, sigmoid). */
    void (*act)(float *x, size_t n, int kind);
} kern_set;

extern const kern_set kern_scalar;
extern const kern_set kern_avx2;
extern const kern_set kern_avx512;

/* The set chosen for this process (first call decides; thread-safe). */
const kern_set *kern_get(void);
/* All sets this CPU can run, scalar first; returns how many. */
size_t kern_available(const kern_set **out, size_t max);

/* Packs W (out, in), given as float32 row-major, into L for panel width nr.
 * Returns 0 or -1 (out of memory). bias may be NULL (zeros). */
int kern_pack(klinear *L, const float *w, const float *bias, size_t out, size_t in, size_t nr);
void kern_linear_free(klinear *L);

float kern_f16_to_f32(uint16_t h);
float kern_bf16_to_f32(uint16_t h);

#endif
