/* ops_host.c — the backend-independent part of ops.h: the dequantisation tile
 * rule and the GEMM scratch rule (pure functions of the shape, which the plan
 * uses too), the process's GEMM precision (train.gemm_dtype) and the reference
 * activation quantisation of its W8A8 mode, exact host conversions
 * between fp32 and the storage types (bf16, e4m3), the expert view of a
 * stacked weight (host pointer arithmetic), and the wire's row size. Both backends link it; the
 * CUDA kernels convert with NVIDIA's own functions, which the twin tests check
 * bit for bit against these. */
#include <math.h>
#include <string.h>

#include "error.h"

#include "ops.h"

uint16_t ops_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* O3 vectorizes it (-O2 does not: 1.6 s of an 8 s import of 1.7 G values). */
__attribute__((optimize("O3"), target_clones("avx2", "default")))
void ops_f32_to_bf16_n(const float *x, uint16_t *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1)) >> 16;
        y[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40 : r); /* NaN stays NaN */
    }
}

float ops_bf16_to_f32(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float ops_e4m3_to_f32(uint8_t v) {
    int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
    if (e == 15 && m == 7) return NAN;
    float a = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10); /* m/8·2^-6, (1+m/8)·2^(e-7) */
    return s ? -a : a;
}

uint8_t ops_f32_to_e4m3(float f) {
    if (isnan(f)) return 0x7F;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= 448.0f) return sign | 0x7E; /* saturate (464 and up would round past the largest finite) */
    if (a < 0x1p-6f) {                   /* subnormals: steps of 2^-9; q = 8 is the smallest normal's code */
        int q = (int)rintf(a * 512.0f);  /* exact scaling; rintf rounds to nearest even */
        return sign | (uint8_t)q;
    }
    int e;
    float fr = frexpf(a, &e);            /* a = fr·2^e, fr in [0.5, 1) */
    int E = e - 1;                       /* a = m·2^E, m in [1, 2) */
    int q = (int)rintf((ldexpf(fr, 1) - 1.0f) * 8.0f); /* 3 mantissa bits, exact products */
    if (q == 8) q = 0, E++;
    int be = E + 7;
    if (be > 15 || (be == 15 && q == 7)) return sign | 0x7E;
    return sign | (uint8_t)(be << 3 | q);
}

/* Bytes of one packed wire row (ops_moe.h): the moe layer, the plan and both
 * backends' pack/unpack share it. */
size_t ops_wire_row_bytes(int C, int wire) {
    if (wire == OPS_WIRE_BF16) return 2 * (size_t)C;
    if (wire == OPS_WIRE_FP8) return (size_t)C + 4 * (size_t)((C + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK);
    return 4 * (size_t)C;
}

ops_weight ops_weight_expert(const ops_weight *w, int g) {
    size_t per = (size_t)w->out * (size_t)w->in, esz = w->dtype == OPS_F32 ? 4 : w->dtype == OPS_BF16 ? 2 : 1;
    size_t nsc = (size_t)((w->out + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK) * (size_t)((w->in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK);
    ops_weight v = *w;
    v.data = (unsigned char *)w->data + (size_t)g * per * esz;
    v.scale = w->scale ? w->scale + (size_t)g * nsc : NULL;
    return v;
}
/* Rows of W dequantised at a time: the whole weight when it fits in 2^24
 * floats (64 MiB) — then the product is one sgemm with exactly ops_matmul's
 * arguments, so a bf16 weight holding fp32-representable values gives the
 * F32 result bitwise — else tiles of a multiple of 128 rows (FP8 blocks). */
static int tile_rows(int out, int in_) {
    size_t budget = (size_t)1 << 24, in = in_ > 0 ? (size_t)in_ : 1;
    if ((size_t)out * in <= budget) return out;
    size_t rows = budget / in / OPS_FP8_BLOCK * OPS_FP8_BLOCK;
    return rows < OPS_FP8_BLOCK ? OPS_FP8_BLOCK : (int)rows;
}

size_t ops_matmul_w_tile_floats(ops_dtype dtype, int out, int in) {
    if (dtype == OPS_F32 || out <= 0 || in <= 0) return 0;
    int tr = tile_rows(out, in);
    return (size_t)(tr < out ? tr : out) * (size_t)in;
}

static int gemm_mode = OPS_GEMM_F32;
void ops_gemm_set(int gemm) {
    DSV3_CHECK(gemm >= OPS_GEMM_F32 && gemm <= OPS_GEMM_FP8, "ops_gemm_set: %d is not a GEMM precision", gemm);
    gemm_mode = gemm;
}
int ops_gemm_get(void) { return gemm_mode; }
int ops_gemm_of(const ops_weight *w) {
    if (w->dtype == OPS_F32) return OPS_GEMM_F32;
    return gemm_mode == OPS_GEMM_FP8 && w->dtype != OPS_FP8_E4M3 ? OPS_GEMM_BF16 : gemm_mode;
}

int ops_gemm_act_rows(int out, int in) {
    size_t m = (size_t)(in > out ? in : out), rows = m > 0 ? ((size_t)1 << 22) / m : 4096;
    return rows < 1 ? 1 : rows > 4096 ? 4096 : (int)rows;
}

size_t ops_matmul_w_scratch_floats(ops_dtype dtype, int gemm, int out, int in) {
    size_t tile = ops_matmul_w_tile_floats(dtype, out, in);
    if (dtype == OPS_F32 || gemm == OPS_GEMM_F32 || tile == 0) return tile;
    size_t a = (size_t)ops_gemm_act_rows(out, in), m = (size_t)(in > out ? in : out);
    return ops_arena_round(tile) + ops_arena_round(a * m) /* values */ + ops_arena_round((a * m + 3) / 4) /* codes */ +
           ops_arena_round(a * ((m + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK)); /* scales */
}

void ops_act_quant_fp8(uint8_t *q, float *scale, const float *x, int T, int in) {
    const int nb = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
#pragma omp parallel for if ((size_t)T * in > 65536)
    for (int t = 0; t < T; t++)
        for (int b = 0; b < nb; b++) {
            const int c0 = b * OPS_FP8_BLOCK, c1 = c0 + OPS_FP8_BLOCK < in ? c0 + OPS_FP8_BLOCK : in;
            const float *r = x + (size_t)t * in;
            float amax = 0.0f;
            for (int c = c0; c < c1; c++) amax = fmaxf(amax, fabsf(r[c]));
            const float sc = amax > 0.0f ? amax / 448.0f : 1.0f;
            scale[(size_t)b * T + t] = sc;
            for (int c = c0; c < c1; c++) q[(size_t)t * in + c] = ops_f32_to_e4m3(r[c] / sc);
        }
}

/* ---- memory accounting: the counters of ops.h's memory section, one set for
 * either backend (each keeps its own record of a pointer's size and category
 * and charges it here). Atomic: OpenMP regions may allocate. ---- */
static int mem_cat = OPS_MEM_OTHER;
static size_t mem_live[2][OPS_MEM_NCAT], mem_peak[2][OPS_MEM_NCAT]; /* [host][cat] */
static size_t mem_live_kind[2], mem_peak_kind[2], mem_live_all, mem_peak_all;

static void peak_max(size_t *peak, size_t v) {
    size_t old = __atomic_load_n(peak, __ATOMIC_RELAXED);
    while (v > old && !__atomic_compare_exchange_n(peak, &old, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

int ops_mem_current_category(void) { return __atomic_load_n(&mem_cat, __ATOMIC_RELAXED); }

void ops_mem_charge(int host, int cat, size_t bytes, int sign) {
    DSV3_CHECK(cat >= 0 && cat < OPS_MEM_NCAT && (host == 0 || host == 1), "ops_mem_charge: category %d, kind %d",
               cat, host);
    if (sign > 0) {
        peak_max(&mem_peak[host][cat], __atomic_add_fetch(&mem_live[host][cat], bytes, __ATOMIC_RELAXED));
        peak_max(&mem_peak_kind[host], __atomic_add_fetch(&mem_live_kind[host], bytes, __ATOMIC_RELAXED));
        peak_max(&mem_peak_all, __atomic_add_fetch(&mem_live_all, bytes, __ATOMIC_RELAXED));
    } else {
        __atomic_sub_fetch(&mem_live[host][cat], bytes, __ATOMIC_RELAXED);
        __atomic_sub_fetch(&mem_live_kind[host], bytes, __ATOMIC_RELAXED);
        __atomic_sub_fetch(&mem_live_all, bytes, __ATOMIC_RELAXED);
    }
}

/* host memory allocated elsewhere (the node-shared frozen store) */
void ops_mem_count(int cat, size_t bytes, int sign) { ops_mem_charge(1, cat, bytes, sign); }

int ops_mem_category(int cat) {
    DSV3_CHECK(cat >= 0 && cat < OPS_MEM_NCAT, "ops_mem_category: %d is not a category", cat);
    return __atomic_exchange_n(&mem_cat, cat, __ATOMIC_RELAXED);
}

void ops_mem_get(ops_mem_stats *s) {
    memset(s, 0, sizeof *s);
    for (int c = 0; c < OPS_MEM_NCAT; c++) {
        s->live[c] = (double)(mem_live[0][c] + mem_live[1][c]);
        /* a category's device and host peaks may come at different times: their sum bounds it */
        s->peak[c] = (double)(mem_peak[0][c] + mem_peak[1][c]);
    }
    s->live_total = (double)mem_live_all;
    s->peak_total = (double)mem_peak_all;
    s->device_peak = (double)mem_peak_kind[0];
    s->host_peak = (double)mem_peak_kind[1];
}

void ops_mem_reset_peaks(void) {
    for (int k = 0; k < 2; k++) {
        for (int c = 0; c < OPS_MEM_NCAT; c++) mem_peak[k][c] = mem_live[k][c];
        mem_peak_kind[k] = mem_live_kind[k];
    }
    mem_peak_all = mem_live_all;
}
