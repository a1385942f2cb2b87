/* ops_cpu.c — CPU reference of the core ops in ops.h (OpenBLAS + OpenMP). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "ops.h"

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

void ops_fill(float *x, size_t n, float value) {
    for (size_t i = 0; i < n; i++) x[i] = value;
}
