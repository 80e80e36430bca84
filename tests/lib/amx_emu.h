/* amx_emu.h — test-only: the AMX tile intrinsics the INT8 tile kernel
 * (model/kern_amx.c) uses, in portable C, so that its code runs and is
 * checked against the scalar reference on CPUs without AMX (every machine
 * of this project but the lent Xeon). The Makefile compiles kern_amx.c a
 * second time with `-DKERN_EMULATED -include tests/lib/simde_x86.h
 * -include tests/lib/amx_emu.h` into kern_i8_amx_emu, as it does the
 * AVX-512 files against SIMDe alone.
 *
 * DESIGN
 * - One thread-local register file: the 64-byte tile configuration and 8
 *   tiles of 16 rows x 64 bytes, as the hardware keeps per thread.
 * - Each intrinsic follows the instruction's documented operation (Intel
 *   SDM, "TILELOADD", "TDPBUSD"): loads read rows x colsb bytes at base +
 *   row x stride and zero the rest of the tile; TDPBUSD adds, per output
 *   dword, four products of an unsigned byte of its first source with a
 *   signed byte of its second, in 32-bit arithmetic that wraps.
 * - What would fault on the hardware (#UD: no configuration loaded, a
 *   palette other than 1, rows over 16 or colsb over 64; shapes that do not
 *   chain through a product) aborts here with a message, so a kernel that
 *   passes its tests emulated does not trap on the first real tile.
 * - The memory a load or store touches is exactly what the instruction
 *   touches, so AddressSanitizer sees the kernel's true footprint.
 */
#ifndef DCN_AMX_EMU_H
#define DCN_AMX_EMU_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int configured;
    uint16_t colsb[8];
    uint8_t rows[8];
    uint8_t t[8][16][64];
} amx_emu_state;

static _Thread_local amx_emu_state amx_emu;

#define AMX_EMU_STATIC static inline __attribute__((unused))

AMX_EMU_STATIC void amx_emu_fault(const char *what, int t) {
    fprintf(stderr, "amx_emu: %s (tile %d): the instruction would fault\n", what, t);
    abort();
}

/* The 64-byte configuration: byte 0 palette, 16..47 colsb (16-bit) of
 * tiles 0..15, 48..63 rows; palette 1 has 8 tiles. */
AMX_EMU_STATIC void amx_emu_loadconfig(const void *p) {
    const uint8_t *c = p;
    if (c[0] == 0) {
        memset(&amx_emu, 0, sizeof amx_emu);
        return;
    }
    if (c[0] != 1) amx_emu_fault("palette other than 1", -1);
    memset(&amx_emu, 0, sizeof amx_emu);
    for (int t = 0; t < 8; t++) {
        uint16_t cb;
        memcpy(&cb, c + 16 + 2 * t, 2);
        if (cb > 64 || c[48 + t] > 16 || cb % 4) amx_emu_fault("tile shape past 16 rows x 64 bytes", t);
        amx_emu.colsb[t] = cb;
        amx_emu.rows[t] = c[48 + t];
    }
    amx_emu.configured = 1;
}

AMX_EMU_STATIC void amx_emu_check(int t) {
    if (!amx_emu.configured) amx_emu_fault("no tile configuration loaded", t);
    if (t < 0 || t > 7 || !amx_emu.rows[t]) amx_emu_fault("tile not configured", t);
}

AMX_EMU_STATIC void amx_emu_loadd(int t, const void *base, long stride) {
    amx_emu_check(t);
    memset(amx_emu.t[t], 0, sizeof amx_emu.t[t]);
    for (int r = 0; r < amx_emu.rows[t]; r++)
        memcpy(amx_emu.t[t][r], (const uint8_t *)base + (long)r * stride, amx_emu.colsb[t]);
}

AMX_EMU_STATIC void amx_emu_stored(int t, void *base, long stride) {
    amx_emu_check(t);
    for (int r = 0; r < amx_emu.rows[t]; r++) memcpy((uint8_t *)base + (long)r * stride, amx_emu.t[t][r], amx_emu.colsb[t]);
}

AMX_EMU_STATIC void amx_emu_zero(int t) {
    amx_emu_check(t);
    memset(amx_emu.t[t], 0, sizeof amx_emu.t[t]);
}

/* dst (M x N dwords) += a (M x 4K unsigned bytes) . b (K x 4N signed bytes). */
AMX_EMU_STATIC void amx_emu_dpbusd(int dst, int a, int b) {
    amx_emu_check(dst), amx_emu_check(a), amx_emu_check(b);
    int m = amx_emu.rows[dst], n = amx_emu.colsb[dst] / 4, k = amx_emu.colsb[a] / 4;
    if (amx_emu.rows[a] != m || amx_emu.rows[b] != k || amx_emu.colsb[b] != amx_emu.colsb[dst])
        amx_emu_fault("tdpbusd shapes do not chain", dst);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            uint32_t acc;
            memcpy(&acc, amx_emu.t[dst][i] + 4 * j, 4);
            for (int kk = 0; kk < k; kk++)
                for (int q = 0; q < 4; q++)
                    acc += (uint32_t)((int32_t)amx_emu.t[a][i][4 * kk + q] * (int32_t)(int8_t)amx_emu.t[b][kk][4 * j + q]);
            memcpy(amx_emu.t[dst][i] + 4 * j, &acc, 4);
        }
}

/* <immintrin.h> (which SIMDe includes for the AVX2 it runs on) may define
 * the names already, for code built with -mamx-tile. */
#undef _tile_loadconfig
#undef _tile_release
#undef _tile_loadd
#undef _tile_stream_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbusd
#define _tile_loadconfig(p) amx_emu_loadconfig(p)
#define _tile_release() memset(&amx_emu, 0, sizeof amx_emu)
#define _tile_loadd(t, base, stride) amx_emu_loadd((t), (base), (long)(stride))
#define _tile_stream_loadd(t, base, stride) amx_emu_loadd((t), (base), (long)(stride))
#define _tile_stored(t, base, stride) amx_emu_stored((t), (base), (long)(stride))
#define _tile_zero(t) amx_emu_zero(t)
#define _tile_dpbusd(d, a, b) amx_emu_dpbusd((d), (a), (b))

#endif
