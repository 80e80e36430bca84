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
 * - Weights may be packed 16-bit (KW_BF16/KW_F16: widened as read) and may
 *   carry an INT8 copy (kern_quantize): a GEMM over all of a layer's inputs
 *   then runs in INT8 (the scalar set has its reference; the avx2 and
 *   avx512 sets run the INT8 kernel kern_i8_get chooses: VNNI's vpdpbusd
 *   where the CPU has it, else the AVX2 vpmaddubsw kernel; AMX's tiles
 *   where the CPU has them and DCN_INT8_KERNEL=amx names them).
 * - Or a BF16 dot-product copy (kern_bf16_pack): a GEMM over all of a
 *   layer's inputs then rounds its input rows to BF16 and sums pairs of
 *   BF16 products in float32, as vdpbf16ps does (the kernel kern_bf16_get
 *   chooses; the scalar set has its reference).
 */
#ifndef DCN_KERNELS_H
#define DCN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define KERN_NR_MAX 32

/* How packed weights are stored. 16-bit panels halve the bytes a layer
 * streams (the few-rows case is bound by them); the kernels widen them to
 * float32 as they read (few rows) or once per K block and panel into a
 * per-thread buffer (the blocked path), and always sum in float32. */
enum { KW_F32, KW_BF16, KW_F16 };

/* A linear layer y = W x + b with W (out, in) packed for the kernel set. */
typedef struct klinear {
    size_t in, out;
    size_t out_pad;     /* out rounded up to nr */
    size_t nr;          /* panel width the weights were packed for */
    int wt;             /* KW_*: which of wp / wh holds the panels */
    float *wp;          /* KW_F32: (out_pad / nr, in, nr) packed, 64-byte aligned */
    uint16_t *wh;       /* KW_BF16 / KW_F16: the same layout in 16 bits */
    float *bias;        /* (out_pad), zero past out; never NULL */
    /* INT8 copy (kern_quantize), or wq NULL: panels of 16 outputs, each
     * (kq / 4) groups of 16 outputs x 4 inputs; weights in [-KQ_WMAX,
     * KQ_WMAX] times wsc[n]; wzc[n] = 128 x the sum of output n's int8
     * weights (the zero point of the activations, see kern_quant_row). */
    int8_t *wq;
    float *wsc;         /* (round_up(out, 16)) */
    int32_t *wzc;       /* (round_up(out, 16)) */
    size_t kq;          /* in rounded up to 4 */
    /* INT8 smoothing (kern_quantize), or NULL: input k is quantized as
     * x[k] * qsm[k], qsm[k] = 1 / s[k], and column k of the weights was
     * multiplied by s[k] before quantizing, so the product is unchanged in
     * exact arithmetic while each side's range is evened out. */
    float *qsm;         /* (in) */
    /* BF16 dot-product copy (kern_bf16_pack), or wbf NULL: panels of 16
     * outputs, each (kbf / 2) groups of 16 outputs x 2 inputs, 64 bytes,
     * vdpbf16ps's layout (output j's pair of inputs is 32-bit lane j);
     * bf16 with denormals flushed to zero, zeros past in and out. */
    uint16_t *wbf;      /* (round_up(out, 16) / 16, kbf / 2, 16, 2) */
    size_t kbf;         /* in rounded up to 2 */
} klinear;

/* INT8 without VNNI: activations as uint8 (zero point 128) times weights
 * as int8 through vpmaddubsw, whose pairs of products must fit int16:
 * 2 x 255 x 63 < 32767, so weights take 7 bits. The VNNI kernels read the
 * same 7-bit copy, so every kernel gives the same results. */
#define KQ_WMAX 63
#define KQ_NR 16
/* Bytes allocated past an INT8 copy's last panel: the AMX kernel's last
 * B tile of a panel may read up to 15 lines of 64 bytes past it (they
 * meet zero activations; kern_amx.c). */
#define KQ_SLACK 1024
#define KQ_MAX_IN 65536 /* wider layers stay float */
#define KQ_TINY 1e-30f  /* rows with max|x| below this quantize to zeros */

/* A run of input coordinates [k0, k1). */
typedef struct krange {
    uint32_t k0, k1;
} krange;

/* Whether ranges rg cover all of L's inputs in one run: the GEMMs that a
 * layer's INT8 or BF16 copy serves (they read whole rows). */
static inline int kern_all_inputs(const klinear *L, const krange *rg, size_t n_rg) {
    return n_rg == 1 && rg[0].k0 == 0 && rg[0].k1 == L->in;
}

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
    int emulated;       /* compiled against SIMDe for tests (KERN_EMULATED) */
    size_t nr;          /* panel width */
    /* Row blocking of gemm, for whoever splits a GEMM between threads
     * (team.c): from mr rows on it runs the blocked path, whose result for
     * a row does not depend on the other rows (below, the few-rows path,
     * whose sums run in another order); it streams the weights once per
     * mc rows (0: once per row, the scalar oracle). */
    size_t mr, mc;
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

/* The AVX2 INT8 GEMM over all of L's inputs (L->wq set): vpmaddubsw, the
 * INT8 kernel "maddubs". */
void kern_avx2_gemm_i8(size_t m, const float *x, size_t ldx, const klinear *L, float *y, size_t ldy, const kepi *e);

/* An INT8 GEMM over all of L's inputs (L->wq set): y(m, out) = epilogue of
 * the dequantized integer sums of kern_quant_row's rows and L->wq. Each
 * gives the scalar INT8 reference's integer sums exactly. */
typedef void (*kern_gemm_i8_fn)(size_t m, const float *x, size_t ldx, const klinear *L, float *y, size_t ldy,
                                const kepi *e);
/* A kernel of a layer's reduced-precision copy (INT8 here, BF16 below),
 * over all of its inputs. */
typedef struct kern_dot {
    const char *name;   /* "maddubs", "avxvnni", "avx512vnni", "amx"; "fma", "avx512bf16" */
    int emulated;       /* compiled against SIMDe (and amx_emu.h) for tests (KERN_EMULATED) */
    int wide;           /* 512-bit: only the avx512 set runs it */
    int by_name;        /* served only where DCN_INT8_KERNEL / DCN_BF16_KERNEL names it (not yet measured) */
    kern_gemm_i8_fn gemm;
} kern_dot;
typedef kern_dot kern_i8;
extern const kern_i8 kern_i8_maddubs;    /* AVX2 (kern_avx2.c) */
extern const kern_i8 kern_i8_avxvnni;    /* AVX-VNNI, 256-bit (kern_avxvnni.c) */
extern const kern_i8 kern_i8_avx512vnni; /* AVX512-VNNI, 512-bit (kern_vnni512.c) */
extern const kern_i8 kern_i8_amx;        /* AMX tiles, by name only (kern_amx.c) */
/* The same compiled against SIMDe: test binaries only (weak: NULL elsewhere). */
extern const kern_i8 kern_i8_avxvnni_emu __attribute__((weak));
extern const kern_i8 kern_i8_avx512vnni_emu __attribute__((weak));
/* AMX's tile instructions emulated in C (tests/lib/amx_emu.h). */
extern const kern_i8 kern_i8_amx_emu __attribute__((weak));
/* The INT8 kernels this CPU can run, narrowest first (none without AVX2);
 * returns how many. In test binaries an emulated kernel stands in for each
 * the CPU lacks, as kern_available does for sets. */
size_t kern_i8_available(const kern_i8 **out, size_t max);
/* Whether this CPU (and OS) runs vpdpbusd: 512-bit AVX512-VNNI (wide 1) or
 * 256-bit AVX-VNNI (wide 0). */
int kern_cpu_vnni(int wide);
/* Whether this CPU has AMX-TILE and AMX-INT8 (with AVX512-VNNI), the OS
 * enables the tile state, and Linux granted this process its use (asked
 * once, at the first call). */
int kern_cpu_amx(void);
/* The VNNI and AMX kernels' quantized rows (kern_vnni.inc, kern_amx.c)
 * and the BF16 kernels' rounded ones, one buffer a thread for all (a
 * thread runs one kernel at a time): 256 KiB, 48 rows of up to 5,461
 * inputs for VNNI. */
#define KERN_I8_ROWS_BYTES ((size_t)256 << 10)
extern _Thread_local uint8_t kern_i8_rows[KERN_I8_ROWS_BYTES];
/* BF16 dot products over all of L's inputs (L->wbf set), the rule every
 * kernel follows exactly (kern_scalar.c holds the reference): each input
 * row rounded to BF16 by kern_bf16_row; per output, one float32 sum over
 * the pairs of inputs in order, first adding the odd input's product, then
 * the even one's (products of two BF16 are exact in float32), each add
 * rounded to nearest even and flushed to zero when below FLT_MIN; then
 * the epilogue as the INT8 kernels apply it. This is vdpbf16ps's
 * definition, so FMAs on widened BF16 reproduce it bit for bit. */
typedef kern_dot kern_bf16; /* "avx512bf16" (vdpbf16ps), "fma" (AVX2 FMAs) */
extern const kern_bf16 kern_bf16_fma;         /* AVX2 + FMA (kern_bf16_fma.c) */
extern const kern_bf16 kern_bf16_avx512bf16;  /* AVX512_BF16 (kern_bf16_512.c) */
extern const kern_bf16 kern_bf16_avx512bf16_emu __attribute__((weak));
/* The BF16 kernels this CPU can run, as kern_i8_available (none without
 * AVX2; in test binaries the emulated avx512bf16 stands in). */
size_t kern_bf16_available(const kern_bf16 **out, size_t max);
/* The BF16 kernel the avx2 set (wide 0) or the avx512 set (wide 1) runs:
 * avx512bf16 for the avx512 set where the CPU has AVX512_BF16, else fma;
 * DCN_BF16_KERNEL names another (an emulated one only so). */
const kern_bf16 *kern_bf16_get(int wide);
/* Whether this CPU (and OS) runs vdpbf16ps on 512-bit vectors. */
int kern_cpu_avx512bf16(void);
/* Widest layer with a BF16 copy: a row of it fits the rows buffer. */
#define KB_MAX_IN (KERN_I8_ROWS_BYTES / 2)

/* The INT8 kernel the avx2 set (wide 0) or the avx512 set (wide 1) runs,
 * chosen once per process: the widest native one that set may run, or the
 * one DCN_INT8_KERNEL names ("maddubs" keeps the pre-VNNI kernel for
 * comparison; an emulated one, or AMX, only so; a wide one never for the
 * avx2 set). A name that no kernel here answers to is said on stderr once. */
const kern_i8 *kern_i8_get(int wide);

extern const kern_set kern_scalar;
extern const kern_set kern_avx2;
extern const kern_set kern_avx512;
/* The AVX-512 set compiled against SIMDe (tests/lib/simde_x86.h): linked
 * into test binaries only (weak here: NULL address elsewhere). */
extern const kern_set kern_avx512_emu __attribute__((weak));

/* The set chosen for this process (first call decides; thread-safe). */
const kern_set *kern_get(void);
/* All sets this CPU can run, scalar first; returns how many. In test
 * binaries an emulated set stands in for each native set the CPU lacks
 * (same name, `emulated` set), so every set's code is tested anywhere. */
size_t kern_available(const kern_set **out, size_t max);

/* Packs W (out, in), given as float32 row-major, into L for panel width nr.
 * Returns 0 or -1 (out of memory). bias may be NULL (zeros). */
int kern_pack(klinear *L, const float *w, const float *bias, size_t out, size_t in, size_t nr);
/* The same, stored as wt (KW_*). Values of w must be exact in wt (they were
 * read from a tensor of that type): packing rounds nothing then. */
int kern_pack_as(klinear *L, const float *w, const float *bias, size_t out, size_t in, size_t nr, int wt);
/* Memory for the kernels' buffers (packed weights, biases, scales, the
 * engine's scratch): 64-byte aligned, rounded up to 64 bytes; from 2 MiB
 * up, 2 MiB aligned and advised into transparent huge pages, since a
 * stream over 4 KiB pages pays a TLB miss (a two-level walk under a
 * hypervisor) every 4 KiB and the hardware prefetchers stop at each page's
 * end. Freed with free(). */
void *kern_alloc(size_t n);
#define KERN_HUGE ((size_t)2 << 20)
/* Bytes of a buffer of n bytes that kern_alloc advises into huge pages:
 * its whole 2 MiB pages, when it reaches 2 MiB. */
size_t kern_huge_bytes(size_t n);
/* The host's transparent huge page setting, which decides whether that
 * advice is taken: KTHP_ALWAYS and KTHP_MADVISE take it, KTHP_NEVER
 * refuses it, KTHP_UNKNOWN when path cannot be read or names none (no
 * such file: not Linux, or a kernel without transparent huge pages).
 * kern_thp_mode reads the text at path; kern_thp_host reads the
 * kernel's own setting, or the file DCN_THP_FILE names (tests). */
enum { KTHP_UNKNOWN, KTHP_ALWAYS, KTHP_MADVISE, KTHP_NEVER };
int kern_thp_mode(const char *path);
int kern_thp_host(void);
/* Bytes of the packed weights; of the INT8 copy and of the BF16 copy (0
 * where the layer has none). */
size_t kern_packed_bytes(const klinear *L);
size_t kern_i8_bytes(const klinear *L);
size_t kern_bf16_bytes(const klinear *L);
/* Weight (n, k) of a packed layer as float32 (tests, the scalar oracle). */
float kern_weight(const klinear *L, size_t n, size_t k);
void kern_linear_free(klinear *L);

float kern_f16_to_f32(uint16_t h);
/* Adds L's INT8 copy from its weights (per-output scale: the largest
 * |weight| maps to KQ_WMAX). smooth: NULL, or L->in positive factors s[k]
 * (SmoothQuant): the weights quantized are W[n][k] * s[k] and the inputs
 * x[k] / s[k] (L->qsm). 0, or -1 when out of memory. */
int kern_quantize(klinear *L, const float *smooth);
/* Quantizes a row of n floats for the INT8 GEMM: with t[k] = x[k] * sm[k]
 * (x[k] when sm is NULL), q = round(t * 127 / max|t|) (nearest even),
 * stored as q + 128; bytes n..kq-1 get 128 (a zero). Returns the scale
 * max|t| / 127 (1 for a zero row). Every kernel set quantizes exactly so. */
float kern_quant_row(const float *x, const float *sm, size_t n, size_t kq, uint8_t *out);
/* Its inner part: inputs [k0, n) with 127 / max|t| = inv, then the padding
 * up to kq (vector kernels finish their rows with it). */
void kern_quant_span(const float *x, const float *sm, size_t k0, size_t n, size_t kq, float inv, uint8_t *out);

float kern_bf16_to_f32(uint16_t h);
/* float to BF16 as vcvtneps2bf16 rounds: nearest even, NaN kept quiet,
 * denormal inputs to a zero of their sign (the dot products' rule). */
uint16_t kern_f32_to_bf16_daz(float f);
/* A row of n floats rounded so (kern_f32_to_bf16_daz) into out, zeros up
 * to kbf: the BF16 kernels' operand. */
void kern_bf16_row(const float *x, size_t n, size_t kbf, uint16_t *out);
/* Adds L's BF16 dot-product copy from its weights (rounded to BF16 by
 * kern_f32_to_bf16_daz: exact for BF16 files). Layers wider than
 * KB_MAX_IN inputs keep none. 0, or -1 when out of memory. */
int kern_bf16_pack(klinear *L);
uint16_t kern_f32_to_bf16(float f); /* round to nearest even; NaN stays NaN */
uint16_t kern_f32_to_f16(float f);  /* round to nearest even; overflow to inf */

#endif
