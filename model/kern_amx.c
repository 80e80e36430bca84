/* kern_amx.c — the INT8 GEMM on AMX tiles (tdpbusd: a 16 x 16 block of
 * int32 sums, each over 64 uint8 x int8 products, in one instruction),
 * for Intel Xeons with AMX-TILE and AMX-INT8 (Sapphire Rapids and later).
 * Run by the avx512 set where kernels.c finds AMX and Linux grants the
 * process its tile state, and only when DCN_INT8_KERNEL=amx names it
 * (kern_dot.by_name): it has been checked against the scalar reference
 * through an emulation of the tile instructions (tests/lib/amx_emu.h,
 * test binaries: kern_i8_amx_emu), never yet timed on such a CPU.
 * bench/README.md ("AMX") says what a session with the lent Xeon runs to
 * measure it and make it the default where it pays.
 *
 * DESIGN
 * - The same INT8 copy every kernel reads (kernels.h, kern_quantize): a
 *   panel of 16 outputs is (kq / 4) lines of 64 bytes, 16 outputs x 4
 *   inputs. That is a B tile's layout: 16 consecutive lines are one tile
 *   of 64 inputs x 16 outputs, loaded with a stride of 64; no repacking.
 * - Rows are quantized as the VNNI kernels quantize them (kern_vnni.inc's
 *   quant_row, the same bytes) into the thread's kern_i8_rows, each row
 *   padded with zero bytes to kp = kq rounded up to 64: an A tile is 16
 *   rows x 64 bytes at a stride of lda, kp or kp + 64, whichever is an
 *   odd number of 64-byte lines (rows a power of two apart would share
 *   L1 sets: 4,096 inputs put all 16 in one). A zero byte adds nothing,
 *   so the last step's B tile may read lines past the panel (the next
 *   panel's, or kern_quantize's KQ_SLACK past the last): their products
 *   are zeros.
 *   Rows past the last of a block are zero rows; their sums are dropped.
 * - Tiles: C 0-3 (2 x 2 blocks of 16 rows x 16 outputs: 32 rows x 32
 *   outputs), A 4-5, B 6-7; every tile 16 x 64 bytes, so one
 *   configuration serves the whole call. Per step of 64 inputs: 2 + 2
 *   loads, 4 tdpbusd. For a pair of panels, every pair of 16-row tiles of
 *   the row block runs while the pair's weights (2 x kq x 16 bytes, 110
 *   KiB for dlrmv2's 3,456 inputs) stay in L2; the block's rows (up to 64
 *   x lda bytes) stay there too.
 * - Sums leave the tiles through a 4 KiB int32 buffer; then, per row and
 *   16 outputs, acc - wzc (the activations' zero point, kern_vnni.inc),
 *   dequantized and the epilogue as the VNNI kernel writes it: the result
 *   equals the scalar INT8 reference bit for bit.
 * - Fewer rows than DCN_AMX_MIN_ROWS (default 16, one tile), or rows wider
 *   than 16 fit in kern_i8_rows (lda > 16 KiB), go to the 512-bit VNNI
 *   kernel, included here for that.
 * - The tile configuration is loaded at the start of each call and the
 *   tile state released at its end, so a thread between calls carries no
 *   AMX state (a context switch saves 8 KiB less).
 */
#include <pthread.h>
#include <stdlib.h>

#define I8_INNER 1
#include "model/kern_vnni512.c"

#define AROWS 64 /* rows quantized per block: 4 tiles of 16 */
#define TS 16    /* rows of a tile; outputs of a panel */

static _Thread_local float ascale[AROWS];

static size_t min_rows = TS;
static pthread_once_t min_rows_once = PTHREAD_ONCE_INIT;

static void read_min_rows(void) {
    const char *env = getenv("DCN_AMX_MIN_ROWS"); /* tests and tuning */
    if (env && atoi(env) > 0) min_rows = (size_t)atoi(env);
}

/* The 64-byte tile configuration (palette 1): colsb and rows of tiles
 * 0..15; tiles 0..7 all 16 rows x 64 bytes. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* C tiles of rows a0 (and a1: tm) against panels b0 (and b1: tn) over
 * steps of 64 inputs, stored into c (32 x 32 int32). tm and tn are
 * constants at each call site. */
static inline __attribute__((always_inline)) void block(const int tm, const int tn, const uint8_t *a0,
                                                       const uint8_t *a1, size_t lda, const int8_t *b0,
                                                       const int8_t *b1, size_t steps, int32_t (*c)[32]) {
    _tile_zero(0);
    if (tn) _tile_zero(1);
    if (tm) _tile_zero(2);
    if (tm && tn) _tile_zero(3);
    for (size_t s = 0; s < steps; s++) {
        _tile_loadd(6, b0 + s * TS * 64, 64);
        if (tn) _tile_loadd(7, b1 + s * TS * 64, 64);
        _tile_loadd(4, a0 + s * 64, lda);
        _tile_dpbusd(0, 4, 6);
        if (tn) _tile_dpbusd(1, 4, 7);
        if (tm) {
            _tile_loadd(5, a1 + s * 64, lda);
            _tile_dpbusd(2, 5, 6);
            if (tn) _tile_dpbusd(3, 5, 7);
        }
    }
    _tile_stored(0, &c[0][0], 128);
    if (tn) _tile_stored(1, &c[0][TS], 128);
    if (tm) _tile_stored(2, &c[TS][0], 128);
    if (tm && tn) _tile_stored(3, &c[TS][TS], 128);
}

/* y(m, out) = epilogue of x(m, in) through L's INT8 copy, as
 * gemm_i8_vnni. */
static void gemm_i8_amx(size_t m, const float *x, size_t ldx, const klinear *L, float *y, size_t ldy, const kepi *e) {
    pthread_once(&min_rows_once, read_min_rows);
    size_t kq = L->kq, groups = kq / 4, panels = (L->out + KQ_NR - 1) / KQ_NR;
    size_t kp = (kq + 63) / 64 * 64, steps = kp / 64;
    size_t lda = kp / 64 % 2 ? kp : kp + 64; /* an odd number of lines: a tile's 16 rows in 16 cache sets */
    if (m < min_rows || lda * TS > KERN_I8_ROWS_BYTES) {
        gemm_i8_vnni(m, x, ldx, L, y, ldy, e);
        return;
    }
    size_t rows_blk = KERN_I8_ROWS_BYTES / lda < AROWS ? KERN_I8_ROWS_BYTES / lda / TS * TS : AROWS;
    uint8_t *qa = kern_i8_rows;
    int32_t c[32][32] __attribute__((aligned(64)));
    amx_config cfg __attribute__((aligned(64)));
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = TS;
    _tile_loadconfig(&cfg);
    for (size_t r0 = 0; r0 < m; r0 += rows_blk) {
        size_t rb = m - r0 < rows_blk ? m - r0 : rows_blk, rt = (rb + TS - 1) / TS * TS;
        for (size_t i = 0; i < rb; i++) {
            ascale[i] = quant_row(x + (r0 + i) * ldx, L->qsm, L->in, kq, qa + i * lda);
            memset(qa + i * lda + kq, 0, kp - kq);
        }
        memset(qa + rb * lda, 0, (rt - rb) * lda);
        for (size_t p0 = 0; p0 < panels; p0 += 2) {
            int tn = p0 + 1 < panels;
            const int8_t *b0 = L->wq + p0 * groups * 64, *b1 = b0 + groups * 64;
            for (size_t t = 0; t < rt; t += 2 * TS) {
                const uint8_t *a0 = qa + t * lda, *a1 = a0 + TS * lda;
                int tm = t + TS < rt;
                if (tm && tn) block(1, 1, a0, a1, lda, b0, b1, steps, c);
                else if (tm) block(1, 0, a0, a1, lda, b0, b1, steps, c);
                else if (tn) block(0, 1, a0, a1, lda, b0, b1, steps, c);
                else block(0, 0, a0, a1, lda, b0, b1, steps, c);
                size_t rows = rb - t < 2 * TS ? rb - t : 2 * TS;
                for (size_t i = 0; i < rows; i++) {
                    size_t r = r0 + t + i;
                    KF s = kf_bcast(ascale[t + i]);
                    for (int j = 0; j <= tn; j++) {
                        size_t n = (p0 + (size_t)j) * KQ_NR;
                        if (n >= L->out) break;
                        KV acc = kv_sub(kv_load(&c[i][j * TS]), kv_loadu(L->wzc + n));
                        epi_store(e, L, y + r * ldy, r, n,
                                  kf_mul(kv_cvt_ps(acc), kf_mul(s, kf_load(L->wsc + n))));
                    }
                }
            }
        }
    }
    _tile_release();
}

#ifdef KERN_EMULATED
#define AMX_SET kern_i8_amx_emu
#define AMX_EMULATED 1
#else
#define AMX_SET kern_i8_amx
#define AMX_EMULATED 0
#endif

const kern_i8 AMX_SET = {
    .name = "amx",
    .emulated = AMX_EMULATED,
    .wide = 1,
    .by_name = 1,
    .gemm = gemm_i8_amx,
};
