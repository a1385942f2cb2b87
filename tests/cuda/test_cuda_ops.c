/* test_cuda_ops.c — twins of cuda/ops.cu (ops.h's core: elementwise, copies,
 * reductions) against src/ops_cpu.c. */
#include "cu_ops.h"
#include "twin.h"

/* n floats through an in-place op: y0 -> CPU op and CUDA op -> compare */
#define SIZES {1, 7, 255, 256, 1000, 7168, 70001}

static void elementwise(size_t n) {
    char what[64];
    snprintf(what, sizeof what, "n=%zu", n);
    float *x = twin_host(n, 1, -2, 2), *y0 = twin_host(n, 2, -2, 2), *y = malloc(n * 4 + 4);
    float *dx = twin_dev(x, n * 4), *dy = twin_dev(y0, n * 4), *got;

    memcpy(y, y0, n * 4);
    ops_add(y, x, n);
    CK(cu_add(dy, dx, n, twin_s));
    got = twin_back(dy, n * 4);
    twin_close("ops_add", what, got, y, n, 0, 0, 1); /* one rounding: bitwise */
    free(got);

    ops_axpy(y, -0.375f, x, n);
    CK(cu_axpy(dy, -0.375f, dx, n, twin_s));
    got = twin_back(dy, n * 4);
    twin_close("ops_axpy", what, got, y, n, 1e-6, 0, 0); /* nvcc may contract to an FMA: rel to max|y| */
    free(got);

    ops_scale(y, 1.7f, n);
    CK(cu_scale(dy, 1.7f, n, twin_s));
    got = twin_back(dy, n * 4);
    twin_close("ops_scale", what, got, y, n, 0, 0, 1);
    free(got);

    double *dd, s_gpu;
    CK(cudaMalloc((void **)&dd, sizeof(double)));
    double s_cpu = ops_sumsq(y, n);
    CK(cu_sumsq(dy, n, dd, twin_s));
    double *h = twin_back(dd, sizeof(double));
    s_gpu = *h;
    free(h);
    float a = (float)s_gpu, b = (float)s_cpu; /* double sums in different orders: rel 1e-12 */
    twin_close("ops_sumsq", what, &a, &b, 1, 1e-7, 0, 1);
    twin_fold(&s_gpu, sizeof s_gpu);
    CK(cudaFree(dd));

    ops_copy(y, x, n);
    CK(cu_copy(dy, dx, n, twin_s));
    got = twin_back(dy, n * 4);
    twin_same("ops_copy", what, got, y, n * 4);
    free(got);

    ops_fill(y, n, -3.25f);
    CK(cu_fill(dy, n, -3.25f, twin_s));
    got = twin_back(dy, n * 4);
    twin_same("ops_fill", what, got, y, n * 4);
    free(got);

    ops_zero(y, n);
    CK(cu_zero(dy, n, twin_s));
    got = twin_back(dy, n * 4);
    twin_same("ops_zero", what, got, y, n * 4);
    free(got);

    CK(cudaFree(dx));
    CK(cudaFree(dy));
    free(x), free(y0), free(y);
}

static void cols(int rows, int ss, int off, int n, int ds) {
    char what[80];
    snprintf(what, sizeof what, "rows=%d src %d[%d:+%d] dst %d", rows, ss, off, n, ds);
    size_t ns = (size_t)rows * ss, nd = (size_t)rows * ds;
    float *src = twin_host(ns, 3, -1, 1), *d0 = twin_host(nd, 4, -1, 1), *d = malloc(nd * 4);
    float *dsrc = twin_dev(src, ns * 4), *ddst = twin_dev(d0, nd * 4), *got;
    memcpy(d, d0, nd * 4);
    ops_copy_cols(d, ds, src, ss, off, n, rows);
    CK(cu_copy_cols(ddst, ds, dsrc, ss, off, n, rows, twin_s));
    got = twin_back(ddst, nd * 4);
    twin_same("ops_copy_cols", what, got, d, nd * 4);
    free(got);
    /* add back into the wider layout: dst is now the narrow one */
    float *w0 = twin_host(ns, 5, -1, 1), *w = malloc(ns * 4), *dw = twin_dev(w0, ns * 4);
    memcpy(w, w0, ns * 4);
    ops_add_cols(w, ss, off, d, ds, n, rows);
    CK(cu_add_cols(dw, ss, off, ddst, ds, n, rows, twin_s));
    got = twin_back(dw, ns * 4);
    twin_close("ops_add_cols", what, got, w, ns, 0, 0, 1);
    free(got);
    CK(cudaFree(dsrc));
    CK(cudaFree(ddst));
    CK(cudaFree(dw));
    free(src), free(d0), free(d), free(w0), free(w);
}

/* the device buffer d (bytes) against the host reference: bitwise */
static void same_back(const char *op, const char *what, const void *d, const void *ref, size_t bytes) {
    void *got = twin_back(d, bytes);
    twin_same(op, what, got, ref, bytes);
    free(got);
}

/* ops_to_bf16 / ops_round_bf16 / ops_widen_bf16: random values and the cases rounding gets wrong first — ties
 * to even both ways, the carry into the exponent, overflow to inf, subnormals, ±0, ±inf, NaNs (quiet and
 * signalling, whose low bits are cut) — bitwise against the CPU, every output */
static void bf16_storage(size_t n) {
    char what[64];
    snprintf(what, sizeof what, "n=%zu", n);
    static const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x3fffffffu, 0x7f7fffffu, 0x7f7f8000u,
                                       0x00000001u, 0x80008000u, 0x00018000u, 0x00000000u, 0x80000000u, 0x7f800000u,
                                       0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffa12345u, 0xc0490fdbu};
    float *x = twin_host(n, 3, -300, 300), *y = malloc(n * 4 + 4), *w = malloc(n * 4 + 4);
    for (size_t i = 0; i < n; i++)
        if (i % 5 == 1) memcpy(&x[i], &special[(i / 5) % (sizeof special / sizeof special[0])], 4);
    uint16_t *b = malloc(n * 2 + 2), *b2 = malloc(n * 2 + 2), *db;
    float *dx = twin_dev(x, n * 4), *dw;
    CK(cudaMalloc((void **)&db, n * 2 + 2));
    CK(cudaMalloc((void **)&dw, n * 4 + 4));
    /* ops_to_bf16: the bits, x unchanged */
    ops_to_bf16(b2, x, n);
    CK(cu_to_bf16(db, dx, n, twin_s));
    same_back("ops_to_bf16", what, db, b2, n * 2);
    same_back("ops_to_bf16", "x unchanged", dx, x, n * 4);
    /* ops_round_bf16: x rounded in place, the same bits stored */
    memcpy(y, x, n * 4);
    ops_round_bf16(y, b, n);
    CK(cu_round_bf16(dx, db, n, twin_s));
    same_back("ops_round_bf16", what, dx, y, n * 4);
    same_back("ops_round_bf16", "bits", db, b, n * 2);
    twin_same("ops_round_bf16", "bits == ops_to_bf16's (CPU)", b, b2, n * 2);
    /* ops_widen_bf16: the rounded values back */
    ops_widen_bf16(w, b, n);
    twin_same("ops_widen_bf16", "== the rounded x (CPU)", w, y, n * 4);
    CK(cu_widen_bf16(dw, db, n, twin_s));
    same_back("ops_widen_bf16", what, dw, w, n * 4);
    CK(cudaFree(dx));
    CK(cudaFree(db));
    CK(cudaFree(dw));
    free(x), free(y), free(b), free(b2), free(w);
}

int main(void) {
    twin_init();
    const size_t bsizes[] = {1, 17, 1000, 70001};
    for (size_t i = 0; i < sizeof bsizes / sizeof bsizes[0]; i++) bf16_storage(bsizes[i]);
    const size_t sizes[] = SIZES;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) elementwise(sizes[i]);
    cols(1, 7, 0, 7, 7);
    cols(5, 576, 512, 64, 64);
    cols(33, 7168, 1000, 2048, 2048);
    return twin_end();
}
