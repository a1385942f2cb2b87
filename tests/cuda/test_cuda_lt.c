/* test_cuda_lt.c — cuBLASLt as the backend will call it, against the CPU
 * twins: row-major y[T,out] = x[T,in]·W[out,in]ᵀ as the column-major "TN"
 * matmul D[out,T] = Aᵀ·B with A = W (stored in x out, ld in) and B = x
 * (stored in x T, ld in). fp32, bf16 inputs, strided batches, and W8A8:
 * FP8 e4m3 weights with 128x128 block scales (ops_weight_store_rows) times
 * FP8 activations with one scale per 128 values of a row; plus the layouts
 * the sm_90 library refuses. Under emulation this runs cuda/emu/cublaslt_emu.cpp;
 * on a GPU the real library (make CUDA=1). */
#include <cublasLt.h>

#include "twin.h"

static cublasLtHandle_t lt;
/* a workspace as the backend gives one (cuda/ops.cu LT_WS_BYTES): block-scaled algorithms may need it */
#define WS_BYTES ((size_t)32 << 20)
static void *ws_dev;

typedef struct {
    cublasLtMatmulDesc_t d;
    cublasLtMatrixLayout_t a, b, c;
} problem;

/* D[m=out, n=T] = op(A)·op(B), k = in; A stored ar x ac (ld lda), B stored br x bc (ld ldb) */
static problem tn(cudaDataType at, cudaDataType bt, cudaDataType dt, int out, int T, int in, int lda, int ldb,
                  cublasOperation_t ta, cublasOperation_t tb) {
    problem p;
    CK(cublasLtMatmulDescCreate(&p.d, CUBLAS_COMPUTE_32F, CUDA_R_32F) ? cudaErrorUnknown : cudaSuccess);
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    cublasLtMatrixLayoutCreate(&p.a, at, ta == CUBLAS_OP_T ? in : out, ta == CUBLAS_OP_T ? out : in, lda);
    cublasLtMatrixLayoutCreate(&p.b, bt, tb == CUBLAS_OP_N ? in : T, tb == CUBLAS_OP_N ? T : in, ldb);
    cublasLtMatrixLayoutCreate(&p.c, dt, out, T, out);
    return p;
}
static void done(problem *p) {
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c);
    cublasLtMatmulDescDestroy(p->d);
}
/* heuristic, then the matmul (beta 0, C = D) */
static cublasStatus_t run(problem *p, const void *A, const void *B, void *D) {
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    uint64_t ws = WS_BYTES;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulHeuristicResult_t r;
    int got = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, p->d, p->a, p->b, p->c, p->c, pref, 1, &r, &got);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st) return st;
    if (got < 1) return CUBLAS_STATUS_NOT_SUPPORTED;
    const float one = 1.0f, zero = 0.0f;
    return cublasLtMatmul(lt, p->d, &one, A, p->a, B, p->b, &zero, D, p->c, D, p->c, &r.algo, ws_dev, WS_BYTES, twin_s);
}

static uint16_t *to_bf16(const float *x, size_t n) {
    uint16_t *b = malloc(n * 2 + 2);
    ops_f32_to_bf16_n(x, b, n);
    return b;
}

static void fp32_bf16(int T, int in, int out) {
    char what[80];
    snprintf(what, sizeof what, "T=%d in=%d out=%d", T, in, out);
    size_t nx = (size_t)T * in, nw = (size_t)out * in, ny = (size_t)T * out;
    float *x = twin_host(nx, 71, -1, 1), *w = twin_host(nw, 72, -1, 1), *y = malloc(ny * 4);
    ops_matmul(y, x, w, T, in, out, 0.0f);
    float *dx = twin_dev(x, nx * 4), *dw = twin_dev(w, nw * 4), *dy, *got;
    CK(cudaMalloc((void **)&dy, ny * 4));
    problem p = tn(CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, out, T, in, in, in, CUBLAS_OP_T, CUBLAS_OP_N);
    cublasStatus_t st = run(&p, dw, dx, dy);
    got = twin_back(dy, ny * 4);
    if (st) printf("status %d\n", (int)st);
    twin_close("cublasLtMatmul", st ? "fp32 (status != 0)" : what, got, y, ny, 1e-5, 1e-30, 0);
    free(got);
    done(&p);

    /* bf16 inputs (the values rounded first, so the fp32 twin sees the same operands), fp32 out */
    uint16_t *xb = to_bf16(x, nx), *wb = to_bf16(w, nw);
    for (size_t i = 0; i < nx; i++) x[i] = ops_bf16_to_f32(xb[i]);
    for (size_t i = 0; i < nw; i++) w[i] = ops_bf16_to_f32(wb[i]);
    ops_matmul(y, x, w, T, in, out, 0.0f);
    void *dxb = twin_dev(xb, nx * 2), *dwb = twin_dev(wb, nw * 2);
    p = tn(CUDA_R_16BF, CUDA_R_16BF, CUDA_R_32F, out, T, in, in, in, CUBLAS_OP_T, CUBLAS_OP_N);
    st = run(&p, dwb, dxb, dy);
    got = twin_back(dy, ny * 4);
    twin_close("cublasLtMatmul", st ? "bf16 (status != 0)" : "bf16 x bf16 -> fp32", got, y, ny, 1e-5, 1e-30, 0);
    free(got);
    done(&p);

    /* strided batch of 3: the same W, three slices of x (B stride T/3 rows), D stride */
    int Tb = T / 3;
    if (Tb > 0) {
        p = tn(CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, out, Tb, in, in, in, CUBLAS_OP_T, CUBLAS_OP_N);
        int32_t nb = 3;
        int64_t sa = 0, sb = (int64_t)Tb * in, sc = (int64_t)Tb * out;
        cublasLtMatrixLayoutSetAttribute(p.a, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &nb, sizeof nb);
        cublasLtMatrixLayoutSetAttribute(p.a, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sa, sizeof sa);
        cublasLtMatrixLayoutSetAttribute(p.b, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &nb, sizeof nb);
        cublasLtMatrixLayoutSetAttribute(p.b, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof sb);
        cublasLtMatrixLayoutSetAttribute(p.c, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &nb, sizeof nb);
        cublasLtMatrixLayoutSetAttribute(p.c, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sc, sizeof sc);
        CK(cudaMemcpy(dx, x, nx * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dw, w, nw * 4, cudaMemcpyHostToDevice));
        st = run(&p, dw, dx, dy);
        got = twin_back(dy, (size_t)3 * Tb * out * 4);
        twin_close("cublasLtMatmul", st ? "batch (status != 0)" : "strided batch of 3", got, y, (size_t)3 * Tb * out,
                   1e-5, 1e-30, 0);
        free(got);
        done(&p);
    }
    CK(cudaFree(dx)); CK(cudaFree(dw)); CK(cudaFree(dy)); CK(cudaFree(dxb)); CK(cudaFree(dwb));
    free(x), free(w), free(y), free(xb), free(wb);
}

/* W8A8 as DeepSeek-V3: W e4m3 + 128x128 block scales (the frozen store's format), x e4m3 with
 * one scale per (row, 128 columns) (amax/448); the reference is ops_matmul on the dequantised values.
 * The device copies of the scales are in the layouts of the cuBLAS guide ("128-element 1D and
 * 128x128 2D block scaling for FP8 data types"): x's [ceil(in/128), T] token fastest; W's K
 * blocks fastest, each row of them padded to a multiple of 4 (the stored grid when kb % 4 == 0) */
static void w8a8(int T, int in, int out) {
    char what[80];
    snprintf(what, sizeof what, "W8A8 T=%d in=%d out=%d", T, in, out);
    size_t nx = (size_t)T * in, nw = (size_t)out * in, ny = (size_t)T * out;
    int kb = (in + 127) / 128, ob = (out + 127) / 128;
    float *x = twin_host(nx, 81, -3, 3), *w = twin_host(nw, 82, -0.05f, 0.05f), *y = malloc(ny * 4);
    ops_weight hw = {OPS_FP8_E4M3, malloc(nw), malloc((size_t)ob * kb * 4), out, in};
    ops_weight_store_rows(&hw, 0, out, w); /* CPU reference quantiser */
    for (size_t i = 0; i < nw; i++)
        w[i] = ops_e4m3_to_f32(((uint8_t *)hw.data)[i]) * hw.scale[(i / in / 128) * kb + (i % in) / 128];
    uint8_t *xq = malloc(nx);
    float *xs = malloc((size_t)T * kb * 4), *xs_dev_layout = malloc((size_t)T * kb * 4);
    for (int t = 0; t < T; t++)
        for (int b = 0; b < kb; b++) {
            float amax = 0;
            for (int c = b * 128; c < in && c < b * 128 + 128; c++) amax = fmaxf(amax, fabsf(x[(size_t)t * in + c]));
            float s = amax > 0 ? amax / 448.0f : 1.0f;
            xs[t * kb + b] = s;
            xs_dev_layout[t + (size_t)T * b] = s; /* VEC128_32F: outer (token) index fastest */
            for (int c = b * 128; c < in && c < b * 128 + 128; c++) {
                size_t i = (size_t)t * in + c;
                xq[i] = ops_f32_to_e4m3(x[i] / s);
                x[i] = ops_e4m3_to_f32(xq[i]) * s;
            }
        }
    ops_matmul(y, x, w, T, in, out, 0.0f);
    const int kb4 = (kb + 3) / 4 * 4;
    float *ws_pad = calloc((size_t)ob * kb4, 4);
    for (int r = 0; r < ob; r++)
        for (int b = 0; b < kb; b++) ws_pad[(size_t)r * kb4 + b] = hw.scale[(size_t)r * kb + b];
    void *dwq = twin_dev(hw.data, nw), *dws = twin_dev(ws_pad, (size_t)ob * kb4 * 4), *dxq = twin_dev(xq, nx),
         *dxs = twin_dev(xs_dev_layout, (size_t)T * kb * 4);
    float *dy, *got;
    CK(cudaMalloc((void **)&dy, ny * 4));
    problem p = tn(CUDA_R_8F_E4M3, CUDA_R_8F_E4M3, CUDA_R_32F, out, T, in, in, in, CUBLAS_OP_T, CUBLAS_OP_N);
    int32_t ma = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, mb = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof ma);
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof mb);
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &dws, sizeof dws);
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &dxs, sizeof dxs);
    cublasStatus_t st = run(&p, dwq, dxq, dy);
    got = twin_back(dy, ny * 4);
    twin_close("cublasLtMatmul", st ? "W8A8 (status != 0)" : what, got, y, ny, 1e-5, 1e-30, 0);
    free(got);

    /* what the sm_90 library refuses must be refused here: NN, both 128x128, ld not a multiple of 16 */
    cublasOperation_t nn = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_TRANSA, &nn, sizeof nn);
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, out, in, out);
    st = run(&p, dwq, dxq, dy);
    twin_report(st == CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul", "FP8 with TRANSA = N: NOT_SUPPORTED", st == CUBLAS_STATUS_NOT_SUPPORTED ? 0.0 : (double)st);
    done(&p);
    p = tn(CUDA_R_8F_E4M3, CUDA_R_8F_E4M3, CUDA_R_32F, out, T, in, in, in, CUBLAS_OP_T, CUBLAS_OP_N);
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof ma);
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &ma, sizeof ma);
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &dws, sizeof dws);
    cublasLtMatmulDescSetAttribute(p.d, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &dxs, sizeof dxs);
    st = run(&p, dwq, dxq, dy);
    twin_report(st == CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul", "FP8 128x128 x 128x128 scales: NOT_SUPPORTED", st == CUBLAS_STATUS_NOT_SUPPORTED ? 0.0 : (double)st);
    done(&p);
    if (in > 8) {
        p = tn(CUDA_R_8F_E4M3, CUDA_R_8F_E4M3, CUDA_R_32F, out, T, in - 8, in, in, CUBLAS_OP_T, CUBLAS_OP_N);
        cublasLtMatrixLayoutDestroy(p.a);
        cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, in - 8, out, in - 8); /* ld = in - 8 */
        st = run(&p, dwq, dxq, dy);
        twin_report(st == CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul", "FP8 lda % 16 != 0: NOT_SUPPORTED", st == CUBLAS_STATUS_NOT_SUPPORTED ? 0.0 : (double)st);
        done(&p);
    }
    p = tn(CUDA_R_8F_E5M2, CUDA_R_8F_E5M2, CUDA_R_32F, out, T, in, in, in, CUBLAS_OP_T, CUBLAS_OP_N);
    st = run(&p, dwq, dxq, dy);
    twin_report(st == CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul", "e5m2 x e5m2: NOT_SUPPORTED", st == CUBLAS_STATUS_NOT_SUPPORTED ? 0.0 : (double)st);
    done(&p);
    CK(cudaFree(dwq)); CK(cudaFree(dws)); CK(cudaFree(dxq)); CK(cudaFree(dxs)); CK(cudaFree(dy));
    free(x), free(w), free(y), free(hw.data), free((void *)hw.scale), free(xq), free(xs), free(xs_dev_layout), free(ws_pad);
}

int main(void) {
    twin_init();
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
        printf("cublasLtCreate failed\n");
        return 2;
    }
    CK(cudaMalloc(&ws_dev, WS_BYTES));
    fp32_bf16(1, 7, 5);
    fp32_bf16(37, 96, 80);
    fp32_bf16(6, 7168, 40);
    w8a8(5, 256, 130);  /* an edge block of W's rows */
    w8a8(16, 7168, 64); /* DeepSeek-V3's hidden width */
    w8a8(3, 384, 260);  /* 3 K blocks: each row of W's scales padded by one */
    w8a8(2, 512, 200);  /* 4 K blocks: the stored grid is the padded layout */
    CK(cudaFree(ws_dev));
    cublasLtDestroy(lt);
    return twin_end();
}
