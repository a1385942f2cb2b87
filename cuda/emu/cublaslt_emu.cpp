/* cublaslt_emu.cpp — cuBLASLt on the CPU for the emulation build: the real
 * cublasLt.h declarations; D = alpha·op(A)·op(B) + beta·C in column-major
 * order through OpenBLAS sgemm, inputs fp32 / bf16 / FP8 (e4m3, e5m2) widened
 * with NVIDIA's host conversions, and FP8 with the restrictions sm_90's
 * cuBLASLt enforces, so a call the real library refuses fails here too:
 *   - A and B FP8: TRANSA = T, TRANSB = N only ("TN"); e5m2 x e5m2 refused;
 *     lda, ldb multiples of 16; A, B 16-byte aligned; compute 32F, scale 32F;
 *   - scale modes: SCALAR_32F (A/B/C/D scale pointers; A/B ones only with FP8
 *     inputs: INVALID_VALUE otherwise, as documented), VEC128_32F (one f32 per
 *     128 values of the contracted dimension) and BLK128x128_32F (one per
 *     128x128 block), the block modes for FP8 inputs only and not both 2-D;
 *   - D FP8 (e4m3, satfinite) takes D = scale_D · result, with C in bf16.
 * Block-scale layouts (cuBLAS guide, "128-element 1D and 128x128 2D block
 * scaling for FP8 data types", as PyTorch's _scaled_mm checks read it): for a
 * stored matrix of R rows (the contracted, innermost dimension in TN) by C
 * columns, VEC128_32F is s[c + C·(r/128)] (outer index fastest, unpadded) and
 * BLK128x128_32F is s[r/128 + L4·(c/128)], L4 = ceil(R/128) rounded up to a
 * multiple of 4 (for A = W[out, in] row-major: HF's weight_scale_inv
 * [ceil(out/128), ceil(in/128)] as stored only when ceil(in/128) % 4 == 0 or
 * out <= 128).
 * Workspace: the block-scaled algorithm asks for LT_EMU_BLOCK_WS bytes of it
 * (a modelling choice: on a GPU such algorithms may need one, and a caller
 * that offers none should fail here as it may there): the heuristic refuses
 * when the preference's maximum is smaller, the matmul when the workspace
 * given is smaller or not device memory.
 * One algorithm; epilogue DEFAULT only; order COL only; an attribute the shim
 * does not model makes the matmul NOT_SUPPORTED (extend the shim first).
 * Work runs in the given stream, deferred like a kernel. */
#include "cudaemu.h"

#include <cblas.h>
#include <cublasLt.h>

#include <algorithm>
#include <vector>

struct cublasLtContext {
    int magic = 0x4c74;
};

namespace {
using cudaemu::fail;

struct Desc {
    cublasComputeType_t compute;
    cudaDataType_t scale_type;
    int32_t pmode = CUBLASLT_POINTER_MODE_HOST;
    int32_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
    uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const void *sp[4] = {nullptr, nullptr, nullptr, nullptr}; /* A, B, C, D scale pointers */
    int32_t smode[2] = {CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F};
    int unmodelled = 0; /* an attribute set that this shim does not model */
};
struct Layout {
    cudaDataType type;
    uint64_t rows, cols;
    int64_t ld;
    int32_t order = CUBLASLT_ORDER_COL, batch = 1;
    int64_t stride = 0;
};
struct Pref {
    uint64_t max_ws = 0;
};
constexpr size_t LT_EMU_BLOCK_WS = (size_t)1 << 20; /* the block-scaled algorithm's workspace (header) */
bool block_scaled(const Desc *d) {
    return d->smode[0] == CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F || d->smode[0] == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F ||
           d->smode[1] == CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F || d->smode[1] == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
}
Desc *D_(cublasLtMatmulDesc_t d) { return reinterpret_cast<Desc *>(d); }
Layout *L_(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout *>(l); }

template <class T> cublasStatus_t put(T &dst, const void *buf, size_t n) {
    if (!buf || n != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(&dst, buf, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

bool fp8(cudaDataType t) { return t == CUDA_R_8F_E4M3 || t == CUDA_R_8F_E5M2; }
size_t esize(cudaDataType t) { return t == CUDA_R_32F ? 4 : t == CUDA_R_16BF ? 2 : 1; }
bool known(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16BF || fp8(t); }
float get(const void *p, cudaDataType t, size_t i) {
    switch (t) {
    case CUDA_R_32F: return ((const float *)p)[i];
    case CUDA_R_16BF: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case CUDA_R_8F_E4M3: return static_cast<float>(((const __nv_fp8_e4m3 *)p)[i]);
    default: return static_cast<float>(((const __nv_fp8_e5m2 *)p)[i]);
    }
}

/* The checks of cublasLtMatmul and of the heuristic (which answers NOT_SUPPORTED the same way). */
cublasStatus_t validate(cublasLtHandle_t h, const Desc *d, const Layout *a, const Layout *b, const Layout *c,
                        const Layout *o) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!d || !a || !b || !c || !o) return CUBLAS_STATUS_INVALID_VALUE;
    if (d->unmodelled || d->epilogue != CUBLASLT_EPILOGUE_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
    if ((d->compute != CUBLAS_COMPUTE_32F && d->compute != CUBLAS_COMPUTE_32F_PEDANTIC) || d->scale_type != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    for (const Layout *l : {a, b, c, o})
        if (l->order != CUBLASLT_ORDER_COL || !known(l->type)) return CUBLAS_STATUS_NOT_SUPPORTED;
    bool f8 = fp8(a->type) || fp8(b->type);
    if (f8) {
        if (!fp8(a->type) || !fp8(b->type) || (a->type == CUDA_R_8F_E5M2 && b->type == CUDA_R_8F_E5M2))
            return CUBLAS_STATUS_NOT_SUPPORTED;
        if (d->ta != CUBLAS_OP_T || d->tb != CUBLAS_OP_N) return CUBLAS_STATUS_NOT_SUPPORTED; /* TN only */
        if (a->ld % 16 || b->ld % 16) return CUBLAS_STATUS_NOT_SUPPORTED;
        bool d8 = fp8(o->type);
        if (d8 ? (o->type != CUDA_R_8F_E4M3 || c->type != CUDA_R_16BF) : c->type != o->type)
            return CUBLAS_STATUS_NOT_SUPPORTED;
        int s0 = d->smode[0], s1 = d->smode[1];
        for (int s : {s0, s1})
            if (s != CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F && s != CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F &&
                s != CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F)
                return CUBLAS_STATUS_NOT_SUPPORTED;
        if (s0 == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F && s1 == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F)
            return CUBLAS_STATUS_NOT_SUPPORTED;
        if ((s0 != CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F && !d->sp[0]) ||
            (s1 != CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F && !d->sp[1]))
            return CUBLAS_STATUS_INVALID_VALUE; /* a block mode needs its scales */
    } else {
        if (a->type != b->type || (c->type != o->type) || (a->type == CUDA_R_32F && o->type != CUDA_R_32F) ||
            fp8(o->type))
            return CUBLAS_STATUS_NOT_SUPPORTED;
        if (d->sp[0] || d->sp[1] || d->smode[0] || d->smode[1]) return CUBLAS_STATUS_INVALID_VALUE;
    }
    /* shapes: op(A) m x k, op(B) k x n, C and D m x n */
    uint64_t m = o->rows, n = o->cols, k = d->ta == CUBLAS_OP_N ? a->cols : a->rows;
    uint64_t am = d->ta == CUBLAS_OP_N ? a->rows : a->cols, bk = d->tb == CUBLAS_OP_N ? b->rows : b->cols,
             bn = d->tb == CUBLAS_OP_N ? b->cols : b->rows;
    if ((d->ta != CUBLAS_OP_N && d->ta != CUBLAS_OP_T) || (d->tb != CUBLAS_OP_N && d->tb != CUBLAS_OP_T) || am != m ||
        bk != k || bn != n || c->rows != m || c->cols != n)
        return CUBLAS_STATUS_INVALID_VALUE;
    for (const Layout *l : {a, b, c, o})
        if (l->ld < (int64_t)std::max<uint64_t>(1, l->rows) || l->batch < 1 || l->batch != o->batch)
            return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

/* stored rows x cols (col-major, ld) -> dense fp32, block scales applied */
std::vector<float> load(const void *p, const Layout &l, int mode, const float *s) {
    const size_t R = l.rows, C = l.cols, rb = (R + 127) / 128;
    std::vector<float> v(R * C);
    for (size_t c = 0; c < C; c++)
        for (size_t r = 0; r < R; r++) {
            float f = get(p, l.type, c * (size_t)l.ld + r);
            if (mode == CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F) f *= s[c + C * (r / 128)];
            else if (mode == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F) f *= s[r / 128 + (rb + 3) / 4 * 4 * (c / 128)];
            v[c * R + r] = f;
        }
    return v;
}

struct Job {
    Desc d;
    Layout a, b, c, o;
    const void *A, *B, *C;
    void *Dp;
};

void run(const Job &j, float alpha, float beta) {
    const Desc &d = j.d;
    /* scalar scales: D = scale_D · (alpha·scale_A·scale_B·op(A)op(B) + beta·scale_C·C) */
    auto scalar = [](const void *p) { return p ? *(const float *)p : 1.0f; };
    const float *sa = d.smode[0] ? (const float *)d.sp[0] : nullptr, *sb = d.smode[1] ? (const float *)d.sp[1] : nullptr;
    float al = alpha * (d.smode[0] ? 1.0f : scalar(d.sp[0])) * (d.smode[1] ? 1.0f : scalar(d.sp[1]));
    float bc = beta * scalar(d.sp[2]), sd = fp8(j.o.type) ? scalar(d.sp[3]) : 1.0f;
    const int m = (int)j.o.rows, n = (int)j.o.cols, k = (int)(d.ta == CUBLAS_OP_N ? j.a.cols : j.a.rows);
    for (int bi = 0; bi < j.o.batch; bi++) {
        const char *A = (const char *)j.A + bi * j.a.stride * esize(j.a.type);
        const char *B = (const char *)j.B + bi * j.b.stride * esize(j.b.type);
        const char *Cp = (const char *)j.C + bi * j.c.stride * esize(j.c.type);
        char *Dp = (char *)j.Dp + bi * j.o.stride * esize(j.o.type);
        std::vector<float> a = load(A, j.a, d.smode[0], sa), b = load(B, j.b, d.smode[1], sb), r((size_t)m * n, 0.f);
        if (beta != 0.f) /* beta = 0: C is not read (it may hold NaN) */
            for (int c = 0; c < n; c++)
                for (int i = 0; i < m; i++) r[(size_t)c * m + i] = get(Cp, j.c.type, (size_t)c * j.c.ld + i);
        if (m && n)
            cblas_sgemm(CblasColMajor, d.ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                        d.tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, al, a.data(),
                        std::max<int>(1, (int)j.a.rows), b.data(), std::max<int>(1, (int)j.b.rows), bc, r.data(),
                        std::max(m, 1));
        for (int c = 0; c < n; c++)
            for (int i = 0; i < m; i++) {
                size_t q = (size_t)c * j.o.ld + i;
                float f = r[(size_t)c * m + i];
                if (j.o.type == CUDA_R_32F) ((float *)Dp)[q] = f;
                else if (j.o.type == CUDA_R_16BF) ((__nv_bfloat16 *)Dp)[q] = __float2bfloat16_rn(f);
                else ((__nv_fp8_storage_t *)Dp)[q] = __nv_cvt_float_to_fp8(sd * f, __NV_SATFINITE, __NV_E4M3);
            }
    }
}
} // namespace

extern "C" {
cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    *h = new cublasLtContext();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t ct, cudaDataType_t st) {
    if (!d) return CUBLAS_STATUS_INVALID_VALUE;
    Desc *x = new Desc();
    x->compute = ct, x->scale_type = st;
    *d = reinterpret_cast<cublasLtMatmulDesc_t>(x);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete D_(d);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t dd, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t n) {
    Desc *d = D_(dd);
    if (!d) return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return put(d->compute, buf, n);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return put(d->scale_type, buf, n);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return put(d->pmode, buf, n);
    case CUBLASLT_MATMUL_DESC_TRANSA: return put(d->ta, buf, n);
    case CUBLASLT_MATMUL_DESC_TRANSB: return put(d->tb, buf, n);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return put(d->epilogue, buf, n);
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER: return put(d->sp[0], buf, n);
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER: return put(d->sp[1], buf, n);
    case CUBLASLT_MATMUL_DESC_C_SCALE_POINTER: return put(d->sp[2], buf, n);
    case CUBLASLT_MATMUL_DESC_D_SCALE_POINTER: return put(d->sp[3], buf, n);
    case CUBLASLT_MATMUL_DESC_A_SCALE_MODE: return put(d->smode[0], buf, n);
    case CUBLASLT_MATMUL_DESC_B_SCALE_MODE: return put(d->smode[1], buf, n);
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM: { /* a speed hint: accumulation stays fp32 here */
        int8_t v = 0;
        return put(v, buf, n);
    }
    default:
        if (!buf || !n) return CUBLAS_STATUS_INVALID_VALUE;
        d->unmodelled = 1;
        return CUBLAS_STATUS_SUCCESS;
    }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType t, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    if (!l) return CUBLAS_STATUS_INVALID_VALUE;
    Layout *x = new Layout();
    x->type = t, x->rows = rows, x->cols = cols, x->ld = ld;
    *l = reinterpret_cast<cublasLtMatrixLayout_t>(x);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete L_(l);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t ll, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t n) {
    Layout *l = L_(ll);
    if (!l) return CUBLAS_STATUS_INVALID_VALUE;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: {
        uint32_t v = 0;
        cublasStatus_t st = put(v, buf, n);
        if (st == CUBLAS_STATUS_SUCCESS) l->type = (cudaDataType)v;
        return st;
    }
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return put(l->order, buf, n);
    case CUBLASLT_MATRIX_LAYOUT_ROWS: return put(l->rows, buf, n);
    case CUBLASLT_MATRIX_LAYOUT_COLS: return put(l->cols, buf, n);
    case CUBLASLT_MATRIX_LAYOUT_LD: return put(l->ld, buf, n);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return put(l->batch, buf, n);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return put(l->stride, buf, n);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    if (!p) return CUBLAS_STATUS_INVALID_VALUE;
    *p = reinterpret_cast<cublasLtMatmulPreference_t>(new Pref());
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete reinterpret_cast<Pref *>(p);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t n) {
    Pref *x = reinterpret_cast<Pref *>(p);
    if (!x) return CUBLAS_STATUS_INVALID_VALUE;
    if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) return put(x->max_ws, buf, n);
    return buf && n ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE; /* search hints: no effect here */
}

/* One algorithm when the problem is one the library runs (the block-scaled one needs LT_EMU_BLOCK_WS of
 * workspace: none offered, none found); NOT_SUPPORTED otherwise. */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t o, cublasLtMatmulPreference_t p, int want,
                                              cublasLtMatmulHeuristicResult_t res[], int *got) {
    if (!p || !res || !got || want < 1) return CUBLAS_STATUS_INVALID_VALUE;
    *got = 0;
    if (cublasStatus_t st = validate(h, D_(d), L_(a), L_(b), L_(c), L_(o))) return st;
    const size_t need = block_scaled(D_(d)) ? LT_EMU_BLOCK_WS : 0;
    if (reinterpret_cast<Pref *>(p)->max_ws < need) return CUBLAS_STATUS_SUCCESS; /* no algorithm: *got 0 */
    memset(&res[0], 0, sizeof res[0]);
    res[0].algo.data[0] = 0x4c74; /* the shim's one algorithm */
    res[0].algo.data[1] = need;
    res[0].workspaceSize = need;
    res[0].state = CUBLAS_STATUS_SUCCESS;
    res[0].wavesCount = 1.0f;
    *got = 1;
    return CUBLAS_STATUS_SUCCESS;
}

/* the shim's one algorithm runs every problem validate() accepts, with its workspace */
cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                       cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t o,
                                       const cublasLtMatmulAlgo_t *algo, cublasLtMatmulHeuristicResult_t *res) {
    if (!algo || !res) return CUBLAS_STATUS_INVALID_VALUE;
    if (cublasStatus_t st = validate(h, D_(d), L_(a), L_(b), L_(c), L_(o))) return st;
    if (algo->data[0] != 0x4c74) return CUBLAS_STATUS_INVALID_VALUE; /* not an algorithm of this library */
    memset(res, 0, sizeof *res);
    res->algo = *algo;
    res->workspaceSize = block_scaled(D_(d)) ? LT_EMU_BLOCK_WS : 0;
    res->state = CUBLAS_STATUS_SUCCESS;
    res->wavesCount = 1.0f;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t dd, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t o,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t wsb, cudaStream_t s) {
    const Desc *d = D_(dd);
    if (cublasStatus_t st = validate(h, d, L_(a), L_(b), L_(c), L_(o))) return st;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    const size_t need = algo ? (size_t)algo->data[1] : block_scaled(d) ? LT_EMU_BLOCK_WS : 0;
    if (wsb < need) return CUBLAS_STATUS_INVALID_VALUE; /* the algorithm's workspace was not given */
    if (wsb && !cudaemu::is_device_ptr(ws)) fail("cublasLtMatmul: the workspace must be device memory (%p)", ws);
    for (const void *p : {A, B, C, (const void *)D})
        if (!cudaemu::is_device_ptr(p)) fail("cublasLtMatmul: A/B/C/D must be device memory (A=%p B=%p C=%p D=%p)", A, B, C, D);
    for (const void *p : d->sp)
        if (p && !cudaemu::is_device_ptr(p)) fail("cublasLtMatmul: scale pointers must be device memory (%p)", p);
    if ((fp8(L_(a)->type) && ((uintptr_t)A % 16 || (uintptr_t)B % 16))) return CUBLAS_STATUS_NOT_SUPPORTED;
    Job j{*d, *L_(a), *L_(b), *L_(c), *L_(o), A, B, C, D};
    bool dev = d->pmode == CUBLASLT_POINTER_MODE_DEVICE;
    if (dev != cudaemu::is_device_ptr(alpha) || dev != cudaemu::is_device_ptr(beta))
        fail("cublasLtMatmul: alpha/beta are %s pointers but the pointer mode is %s", dev ? "host" : "device",
             dev ? "DEVICE" : "HOST");
    if (dev) {
        cudaemu::enqueue_host_fn(s, [j, alpha, beta] { run(j, *(const float *)alpha, *(const float *)beta); });
    } else {
        float al = *(const float *)alpha, be = *(const float *)beta; /* read at the call, as the library does */
        cudaemu::enqueue_host_fn(s, [j, al, be] { run(j, al, be); });
    }
    return CUBLAS_STATUS_SUCCESS;
}
} /* extern "C" */
