/* dsv3-sgemm — measures this machine's single-precision GEMM rate through
 * OpenBLAS (the same library dsv3 uses), the denominator of `make bench`'s
 * achieved-FLOP fraction. Usage: dsv3-sgemm [N=1024] [seconds=2] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../src/tool.h"

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1024;
    double secs = argc > 2 ? atof(argv[2]) : 2.0;
    if (n <= 0 || secs <= 0) {
        fprintf(stderr, "usage: dsv3-sgemm [N>0] [seconds>0]\n");
        return 2;
    }
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    for (long i = 0; i < (long)n * n; i++) a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.2f, c[i] = 0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm-up */
    int reps = 0;
    double t0 = tool_now(), t;
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        reps++;
    } while ((t = tool_now() - t0) < secs);
    double gflops = 2.0 * n * (double)n * n * reps / t / 1e9;
    printf("sgemm %dx%dx%d: %.2f GFLOP/s (%d reps, %.2f s, %d OpenBLAS threads)\n", n, n, n, gflops, reps, t,
           openblas_get_num_threads());
    free(a), free(b), free(c);
    return 0;
}
