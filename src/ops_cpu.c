/* ops_cpu.c — CPU reference of the core ops in ops.h (OpenBLAS + OpenMP). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define ARENA_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define ARENA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define ARENA_POISON(p, n) ((void)(p), (void)(n))
#define ARENA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* ---- memory: on the CPU, device memory is host memory ---- */

/* Counted allocations: a 64-byte header (keeps the 16-byte alignment calloc
 * gives, and AVX-512 loads of the payload aligned where the header is) holds
 * the size, category and kind, so a free uncharges exactly what was charged
 * (the counters: src/ops_host.c, shared with the CUDA backend). */
typedef struct {
    size_t bytes;
    int cat, host;
    uint64_t magic;
} mem_hdr;
#define MEM_HDR 64
#define MEM_MAGIC 0x64737633616c6c6fULL /* "dsv3allo" */
static void *mem_get(size_t bytes, int host) {
    /* Written, not just calloc'd: the pages are committed now, as a GPU's
     * would be, so a run that does not fit fails at creation (not at the
     * first unlucky routing), and peak RSS measures what was allocated. */
    size_t n = MEM_HDR + (bytes ? bytes : 1);
    char *raw = calloc(1, n);
    if (!raw) return NULL;
    for (size_t i = 0; i < n; i += 4096) ((volatile char *)raw)[i] = 0; /* one write per page (calloc's are lazy) */
    mem_hdr *h = (mem_hdr *)raw;
    int cat = ops_mem_current_category();
    *h = (mem_hdr){bytes, cat, host, MEM_MAGIC};
    ops_mem_charge(host, cat, bytes, 1);
    return raw + MEM_HDR;
}

static void mem_put(void *p, int host) {
    if (!p) return;
    mem_hdr *h = (mem_hdr *)((char *)p - MEM_HDR);
    DSV3_CHECK(h->magic == MEM_MAGIC && h->host == host,
               "%s of a pointer that %s did not allocate (internal error)", host ? "ops_host_free" : "ops_free",
               host ? "ops_host_alloc" : "ops_alloc");
    ops_mem_charge(host, h->cat, h->bytes, -1);
    h->magic = 0;
    free(h);
}

void *ops_alloc(size_t bytes) { return mem_get(bytes, 0); }
void ops_free(void *p) { mem_put(p, 0); }
void *ops_host_alloc(size_t bytes) { return mem_get(bytes, 1); }
void ops_host_free(void *p) { mem_put(p, 1); }

void ops_memset0(void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}
void ops_sync(void) {}
void ops_to_host(void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
}
void ops_to_device(void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
}
void ops_copy_bytes(void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
}

int ops_arena_create(ops_arena *a, size_t floats) {
    memset(a, 0, sizeof *a);
    size_t cap = ops_arena_round(floats);
    if (cap == 0) return 0; /* an empty arena: only takes of 0 floats */
    a->base = aligned_alloc(OPS_ARENA_ALIGN * sizeof(float), cap * sizeof(float));
    if (!a->base) return -1;
    a->cap = cap;
    a->owned = 1;
    ARENA_POISON(a->base, cap * sizeof(float)); /* under ASan a read past a take is caught */
    return 0;
}

void ops_arena_init_at(ops_arena *a, float *mem, size_t floats) {
    DSV3_CHECK(floats % OPS_ARENA_ALIGN == 0 && (floats == 0 || mem),
               "ops_arena_init_at: %zu floats is not a multiple of %d (or no memory)", floats, OPS_ARENA_ALIGN);
    memset(a, 0, sizeof *a);
    a->base = floats ? mem : NULL;
    a->cap = floats;
    if (a->base) ARENA_POISON(a->base, floats * sizeof(float));
}

void ops_arena_destroy(ops_arena *a) {
    if (a->base) ARENA_UNPOISON(a->base, a->cap * sizeof(float));
    if (a->owned) free(a->base);
    memset(a, 0, sizeof *a);
}

float *ops_arena_take(ops_arena *a, size_t floats) {
    size_t n = ops_arena_round(floats);
    if (n == 0) return a->base ? a->base + a->used : NULL;
    if (n > a->cap - a->used)
        error_one("scratch arena too small (internal error): need %zu floats, have %zu (capacity %zu, %zu in use)",
                  a->used + n, a->cap, a->cap, a->used);
    float *p = a->base + a->used;
    a->used += n;
    if (a->used > a->peak) a->peak = a->used;
    ARENA_UNPOISON(p, floats * sizeof(float)); /* the rounding tail stays poisoned */
    return p;
}

void ops_arena_release(ops_arena *a, size_t mark) {
    DSV3_CHECK(mark <= a->used, "scratch arena: release to %zu above the %zu floats in use", mark, a->used);
    ARENA_POISON(a->base + mark, (a->used - mark) * sizeof(float));
    a->used = mark;
}

void ops_matmul(float *y, const float *x, const float *w, int T, int in, int out, float beta) {
    if (T == 0 || out == 0) return;
    if (in == 0) {
        if (beta == 0.0f) memset(y, 0, (size_t)T * out * sizeof *y);
        return;
    }
    /* y[T,out] = x[T,in] · w[out,in]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1.0f, x, in, w, in, beta, y, out);
}

void ops_matmul_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int T, int in,
                         int out) {
    if (T == 0 || in == 0 || out == 0) return;
    /* dx[T,in] += dy[T,out] · w[out,in] */
    if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
    /* dw[out,in] += dy^T[out,T] · x[T,in] */
    if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, T, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

void ops_copy_cols(float *dst, int ds, const float *src, int ss, int off, int n, int rows) {
#pragma omp parallel for if (rows > 64)
    for (int r = 0; r < rows; r++) memcpy(dst + (size_t)r * ds, src + (size_t)r * ss + off, (size_t)n * sizeof *dst);
}

void ops_add_cols(float *dst, int ds, int off, const float *src, int ss, int n, int rows) {
#pragma omp parallel for if (rows > 64)
    for (int r = 0; r < rows; r++) {
        float *d = dst + (size_t)r * ds + off;
        const float *s = src + (size_t)r * ss;
#pragma omp simd
        for (int i = 0; i < n; i++) d[i] += s[i];
    }
}

void ops_zero(float *x, size_t n) {
    if (n) memset(x, 0, n * sizeof *x);
}

void ops_copy(float *dst, const float *src, size_t n) {
    if (n) memcpy(dst, src, n * sizeof *dst);
}

void ops_round_bf16(float *x, uint16_t *y, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        y[i] = ops_f32_to_bf16(x[i]);
        x[i] = ops_bf16_to_f32(y[i]);
    }
}

void ops_to_bf16(uint16_t *y, const float *x, size_t n) { ops_f32_to_bf16_n(x, y, n); } /* host = device here */

void ops_widen_bf16(float *x, const uint16_t *y, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] = ops_bf16_to_f32(y[i]);
}

void ops_add(float *y, const float *x, size_t n) {
#pragma omp parallel for simd if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void ops_axpy(float *y, float a, const float *x, size_t n) {
#pragma omp parallel for simd if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

void ops_scale(float *x, float a, size_t n) {
#pragma omp parallel for simd if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] *= a;
}

double ops_sumsq(const float *x, size_t n) {
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) if (n > 65536)
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

void ops_adamw(float *w, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
               float eps, float wd, int t, float grad_scale) {
    /* torch.optim.AdamW: w -= lr*wd*w; m,v update; w -= lr * mhat / (sqrt(vhat) + eps) */
    /* bias corrections in double, as torch computes them on the host */
    double bc1 = 1.0 - pow((double)beta1, (double)t), bc2 = 1.0 - pow((double)beta2, (double)t);
    float step = (float)((double)lr / bc1), bc2s = (float)sqrt(bc2);
#pragma omp parallel for simd if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        w[i] -= lr * wd * w[i];
        m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
        v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        w[i] -= step * m[i] / (sqrtf(v[i]) / bc2s + eps);
    }
}

/* SplitMix64 finaliser: a keyed counter-based generator. */
static inline uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static inline double u01(uint64_t seed, uint64_t key, uint64_t i, uint64_t lane) {
    uint64_t r = mix64(mix64(mix64(seed) ^ key) ^ (2 * i + lane));
    return ((double)(r >> 11) + 0.5) * (1.0 / 9007199254740992.0); /* (0,1) */
}

void ops_fill_normal(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float std) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) { /* Box-Muller, one normal per counter */
        double u1 = u01(seed, key, first + i, 0), u2 = u01(seed, key, first + i, 1);
        x[i] = (float)(std * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
    }
}

void ops_fill_uniform(float *x, size_t n, uint64_t seed, uint64_t key, uint64_t first, float bound) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] = (float)((2.0 * u01(seed, key, first + i, 0) - 1.0) * bound);
}

void ops_dropout(float *y, const float *x, size_t n, float p, uint64_t seed, uint64_t key, uint64_t first) {
    const float keep = 1.0f / (1.0f - p);
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] = u01(seed, key, first + i, 0) >= (double)p ? x[i] * keep : 0.0f;
}

void ops_fill(float *x, size_t n, float value) {
    for (size_t i = 0; i < n; i++) x[i] = value;
}

/* ---- weight storage: exact dequantisation, then sgemm by row tiles ---- */

void ops_weight_store_rows(const ops_weight *w, int r0, int n, const float *src) {
    int in = w->in;
    if (n <= 0) return;
    DSV3_CHECK(r0 >= 0 && r0 + n <= w->out, "ops_weight_store_rows: rows %d..%d outside [0, %d)", r0, r0 + n, w->out);
    if (w->dtype == OPS_F32) {
        memcpy((float *)w->data + (size_t)r0 * in, src, (size_t)n * in * sizeof(float));
        return;
    }
    if (w->dtype == OPS_BF16) {
        uint16_t *q = (uint16_t *)w->data + (size_t)r0 * in;
#pragma omp parallel for if ((size_t)n * in > 65536)
        for (size_t i = 0; i < (size_t)n * in; i++) q[i] = ops_f32_to_bf16(src[i]);
        return;
    }
    DSV3_CHECK(w->dtype == OPS_FP8_E4M3 && w->scale, "ops_weight_store_rows: bad weight dtype %d", (int)w->dtype);
    DSV3_CHECK(r0 % OPS_FP8_BLOCK == 0 && (n % OPS_FP8_BLOCK == 0 || r0 + n == w->out),
               "ops_weight_store_rows: FP8 rows %d..%d are not whole 128-row blocks", r0, r0 + n);
    int nb = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK, nrb = (n + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
    float *scale = (float *)(uintptr_t)w->scale; /* the storage being written */
#pragma omp parallel for collapse(2) if ((size_t)n * in > 65536)
    for (int rb = 0; rb < nrb; rb++)
        for (int cb = 0; cb < nb; cb++) {
            int ra = rb * OPS_FP8_BLOCK, rz = ra + OPS_FP8_BLOCK < n ? ra + OPS_FP8_BLOCK : n;
            int ca = cb * OPS_FP8_BLOCK, cz = ca + OPS_FP8_BLOCK < in ? ca + OPS_FP8_BLOCK : in;
            float amax = 0.0f;
            for (int r = ra; r < rz; r++)
                for (int c = ca; c < cz; c++) amax = fmaxf(amax, fabsf(src[(size_t)r * in + c]));
            float sc = amax > 0.0f ? amax / 448.0f : 1.0f;
            scale[(size_t)(r0 / OPS_FP8_BLOCK + rb) * nb + cb] = sc;
            uint8_t *q = (uint8_t *)w->data + (size_t)r0 * in;
            for (int r = ra; r < rz; r++)
                for (int c = ca; c < cz; c++) q[(size_t)r * in + c] = ops_f32_to_e4m3(src[(size_t)r * in + c] / sc);
        }
}

/* rows [r0, r0+n) of w as fp32 into t [n, in]; bf16: each value then rounded
 * to bf16 (RNE, the tensor-core operand; exact for BF16 storage) */
static void dequant_rows(float *t, const ops_weight *w, int r0, int n, int bf16) {
    int in = w->in, nb = (in + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK;
    float lut[256];
    if (w->dtype == OPS_FP8_E4M3)
        for (int i = 0; i < 256; i++) lut[i] = ops_e4m3_to_f32((uint8_t)i);
#pragma omp parallel for if ((size_t)n * in > 65536)
    for (int r = 0; r < n; r++) {
        size_t row = (size_t)(r0 + r) * in;
        float *d = t + (size_t)r * in;
        if (w->dtype == OPS_BF16) {
            const uint16_t *q = (const uint16_t *)w->data + row;
            for (int c = 0; c < in; c++) d[c] = ops_bf16_to_f32(q[c]);
        } else {
            const uint8_t *q = (const uint8_t *)w->data + row;
            const float *sc = w->scale + (size_t)((r0 + r) / OPS_FP8_BLOCK) * nb;
            for (int c = 0; c < in; c++) d[c] = lut[q[c]] * sc[c / OPS_FP8_BLOCK];
            if (bf16)
                for (int c = 0; c < in; c++) d[c] = ops_bf16_to_f32(ops_f32_to_bf16(d[c]));
        }
    }
}

/* The scratch of a bf16/fp8 GEMM (ops_matmul_w_scratch_floats): the weight
 * tile, then the activation chunk's values, codes and scales. */
typedef struct {
    float *tile, *v, *s;
    uint8_t *q;
    int tr, ar; /* rows per weight tile, per activation chunk */
} gemm_scratch;
static gemm_scratch gemm_take(ops_arena *a, const ops_weight *w, int mode) {
    int out = w->out, in = w->in;
    size_t tf = ops_matmul_w_tile_floats(w->dtype, out, in), m = (size_t)(in > out ? in : out);
    gemm_scratch g = {ops_arena_take(a, tf), NULL, NULL, NULL, (int)(tf / (size_t)in), 0};
    if (mode == OPS_GEMM_F32) return g;
    g.ar = ops_gemm_act_rows(out, in);
    g.v = ops_arena_take(a, (size_t)g.ar * m);
    g.q = (uint8_t *)ops_arena_take(a, ((size_t)g.ar * m + 3) / 4);
    g.s = ops_arena_take(a, (size_t)g.ar * ((m + OPS_FP8_BLOCK - 1) / OPS_FP8_BLOCK));
    return g;
}
/* v[n, k] = x[n, k] as the GEMM's operand: bf16-rounded, or e4m3 · scale
 * (ops_act_quant_fp8, the values the W8A8 GEMM multiplies) */
static void act_operand(const gemm_scratch *g, const float *x, int n, int k, int mode) {
    size_t nk = (size_t)n * k;
    if (mode == OPS_GEMM_BF16) {
#pragma omp parallel for if (nk > 65536)
        for (size_t i = 0; i < nk; i++) g->v[i] = ops_bf16_to_f32(ops_f32_to_bf16(x[i]));
        return;
    }
    ops_act_quant_fp8(g->q, g->s, x, n, k);
#pragma omp parallel for if (nk > 65536)
    for (size_t i = 0; i < nk; i++) g->v[i] = ops_e4m3_to_f32(g->q[i]) * g->s[(i % k) / OPS_FP8_BLOCK * n + i / k];
}

void ops_matmul_w(float *y, const float *x, const ops_weight *w, int T, float beta, ops_arena *scratch) {
    int in = w->in, out = w->out;
    if (w->dtype == OPS_F32) {
        ops_matmul(y, x, (const float *)w->data, T, in, out, beta);
        return;
    }
    DSV3_CHECK(w->dtype == OPS_BF16 || (w->dtype == OPS_FP8_E4M3 && w->scale), "ops_matmul_w: bad weight dtype %d",
               (int)w->dtype);
    if (T == 0 || out == 0) return;
    if (in == 0) {
        if (beta == 0.0f)
            for (int t = 0; t < T; t++) memset(y + (size_t)t * out, 0, (size_t)out * sizeof *y);
        return;
    }
    const int mode = ops_gemm_of(w);
    size_t mark = ops_arena_mark(scratch);
    gemm_scratch g = gemm_take(scratch, w, mode);
    const int ar = mode == OPS_GEMM_F32 ? T : g.ar; /* fp32: x as given, all rows at once */
    for (int t0 = 0; t0 < T; t0 += ar) {
        int nt = T - t0 < ar ? T - t0 : ar;
        const float *xs = x + (size_t)t0 * in;
        if (mode != OPS_GEMM_F32) act_operand(&g, xs, nt, in, mode), xs = g.v;
        for (int r0 = 0; r0 < out; r0 += g.tr) {
            int n = out - r0 < g.tr ? out - r0 : g.tr;
            dequant_rows(g.tile, w, r0, n, mode == OPS_GEMM_BF16);
            /* y[t0:t0+nt, r0:r0+n] = xs · tileᵀ */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nt, n, in, 1.0f, xs, in, g.tile, in, beta,
                        y + (size_t)t0 * out + r0, out);
        }
    }
    ops_arena_release(scratch, mark);
}

/* bf16 in both gemm modes bf16 and fp8 (ops_gemm: the FP8 dgrad needs a transposed weight) */
void ops_matmul_w_backward_dx(float *dx, const float *dy, const ops_weight *w, int T, ops_arena *scratch) {
    int in = w->in, out = w->out;
    if (w->dtype == OPS_F32) {
        ops_matmul_backward(dx, NULL, dy, NULL, (const float *)w->data, T, in, out);
        return;
    }
    DSV3_CHECK(w->dtype == OPS_BF16 || (w->dtype == OPS_FP8_E4M3 && w->scale),
               "ops_matmul_w_backward_dx: bad weight dtype %d", (int)w->dtype);
    if (!dx || T == 0 || in == 0 || out == 0) return;
    const int mode = ops_gemm_of(w) == OPS_GEMM_F32 ? OPS_GEMM_F32 : OPS_GEMM_BF16;
    size_t mark = ops_arena_mark(scratch);
    gemm_scratch g = gemm_take(scratch, w, mode);
    const int ar = mode == OPS_GEMM_F32 ? T : g.ar;
    for (int t0 = 0; t0 < T; t0 += ar) {
        int nt = T - t0 < ar ? T - t0 : ar;
        const float *ds = dy + (size_t)t0 * out;
        if (mode != OPS_GEMM_F32) act_operand(&g, ds, nt, out, mode), ds = g.v;
        for (int r0 = 0; r0 < out; r0 += g.tr) {
            int n = out - r0 < g.tr ? out - r0 : g.tr;
            dequant_rows(g.tile, w, r0, n, mode == OPS_GEMM_BF16);
            /* dx[t0:t0+nt, :] += ds[:, r0:r0+n] · tile[n,in] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nt, in, n, 1.0f, ds + r0, out, g.tile, in, 1.0f,
                        dx + (size_t)t0 * in, in);
        }
    }
    ops_arena_release(scratch, mark);
}
