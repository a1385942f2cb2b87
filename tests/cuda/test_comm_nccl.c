/* test_comm_nccl.c — comm.h over NCCL (cuda/comm_nccl.c, device buffers)
 * against comm.h over MPI (src/comm.c as comm_mpi_*, host copies of the same
 * data), under mpirun (tests/it_cuda_comm.sh: np 4 in emulation; any np on
 * GPUs, one GPU a rank).
 *
 * Communicators as plan.c makes them (world dup, node, expert = EP groups of
 * 2 consecutive ranks, data) plus MPI_COMM_WORLD itself, COMM_SELF and one
 * made outside comm.h (NCCL twin made at first use). Moves of data
 * (all-gather, all-to-all) must be bitwise equal; sums of p terms in any
 * order are each within gamma_{p-1} sum_r |x_r| of the exact sum (gamma_k =
 * k u / (1 - k u), u = 2^-24), so two orders agree within twice that, per
 * element. The all-to-all
 * includes empty sends and a rank with nothing to send or receive (NULL
 * buffers). Then the NCCL calls of the shim comm_nccl.c does not make. Every
 * check prints "ok|FAIL  comm_X  case  err=..." on rank 0. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "comm_mpi.h"
#include "cu_ops.h"

#define CK(x)                                                                                                    \
    do {                                                                                                         \
        cudaError_t e_ = (x);                                                                                    \
        if (e_ != cudaSuccess) {                                                                                 \
            fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));                \
            exit(2);                                                                                             \
        }                                                                                                        \
    } while (0)

static int passed, failed, wrank, wsize;

/* agreed over the world: a check passes if it passed on every rank; err is the largest */
static void report(int ok, const char *op, const char *what, double err) {
    int bad = comm_max_int(!ok, COMM_WORLD);
    double e = comm_max_double(err, COMM_WORLD);
    if (wrank == 0) printf("%-4s  %-20s %-40s err=%.3g\n", bad ? "FAIL" : "ok", op, what, e);
    bad ? failed++ : passed++;
}

/* Counter-based values in [-1, 1): the same for a (key, i) everywhere. */
static float val(uint64_t key, size_t i) {
    uint64_t z = key * 0x9e3779b97f4a7c15ull + i + 1;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 4503599627370496.0 - 1.0);
}
static float *host_vals(size_t n, uint64_t key) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = val(key, i);
    return h;
}
/* device copy of h, written on the backend stream without a host wait (the
 * collective must order after it) */
static float *to_dev(const float *h, size_t n) {
    float *d;
    CK(cudaMalloc((void **)&d, (n ? n : 1) * sizeof *d));
    if (n) CK(cudaMemcpyAsync(d, h, n * sizeof *d, cudaMemcpyHostToDevice, cu_stream()));
    return d;
}
static float *from_dev(const float *d, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    if (n) CK(cudaMemcpyAsync(h, d, n * sizeof *h, cudaMemcpyDeviceToHost, cu_stream()));
    CK(cudaStreamSynchronize(cu_stream()));
    return h;
}

/* max over elements of |got - ref| / bound, bound = 2 gamma_{p-1} sum|x| (sum|x| itself
 * summed in fp32 by MPI: within a factor 1 + gamma_{p-1} of the exact; + tiny for p = 1) */
static double sum_err(const float *got, const float *ref, const float *absum, size_t n, int p) {
    const double u = ldexp(1.0, -24), g = (p - 1) * u / (1 - (p - 1) * u);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double b = 2 * g * (1 + g) * absum[i] + 1e-30, e = fabs((double)got[i] - ref[i]) / b;
        if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}

static void t_sum(comm_t c, const char *cname, size_t n, uint64_t key) {
    int p = comm_size(c);
    float *h = host_vals(n, key + (uint64_t)wrank), *ref = malloc((n ? n : 1) * sizeof *ref),
          *ab = malloc((n ? n : 1) * sizeof *ab);
    memcpy(ref, h, n * sizeof *h);
    for (size_t i = 0; i < n; i++) ab[i] = fabsf(h[i]);
    int e1 = comm_mpi_sum_floats(ref, n, c) | comm_mpi_sum_floats(ab, n, c);
    float *d = to_dev(h, n);
    int e2 = comm_sum_floats(d, n, c);
    float *got = from_dev(d, n);
    double err = sum_err(got, ref, ab, n, p);
    char what[96];
    snprintf(what, sizeof what, "%s p=%d n=%zu", cname, p, n);
    report(!e1 && !e2 && err <= 1.0, "comm_sum_floats", what, err);
    CK(cudaFree(d));
    free(h), free(ref), free(ab), free(got);
}

/* shard layout: cnt[k] = base + k-dependent extra (consecutive from 0) */
static size_t layout(int p, const int *extra, size_t base, size_t *off, size_t *cnt) {
    size_t t = 0;
    for (int k = 0; k < p; k++) off[k] = t, cnt[k] = base + (size_t)extra[k % 4], t += cnt[k];
    return t;
}

static void t_reduce_scatter(comm_t c, const char *cname, const int *extra, size_t base, uint64_t key) {
    int p = comm_size(c), me = comm_rank(c);
    size_t off[64], cnt[64], n = layout(p, extra, base, off, cnt), m = cnt[me];
    float *h = host_vals(n, key + (uint64_t)wrank), *ab = malloc((n ? n : 1) * sizeof *ab),
          *ref = malloc((m ? m : 1) * sizeof *ref), *abm = malloc((m ? m : 1) * sizeof *abm);
    for (size_t i = 0; i < n; i++) ab[i] = fabsf(h[i]);
    int e1 = comm_mpi_reduce_scatter(off, cnt, c, h, ref) | comm_mpi_reduce_scatter(off, cnt, c, ab, abm);
    float *d = to_dev(h, n), *dm;
    CK(cudaMalloc((void **)&dm, (m ? m : 1) * sizeof *dm));
    int e2 = comm_reduce_scatter(off, cnt, c, d, dm);
    float *got = from_dev(dm, m);
    double err = sum_err(got, ref, abm, m, p);
    char what[96];
    snprintf(what, sizeof what, "%s p=%d %s n=%zu", cname, p, extra[1] != extra[0] ? "uneven" : "even", n);
    report(!e1 && !e2 && err <= 1.0, "comm_reduce_scatter", what, err);
    CK(cudaFree(d));
    CK(cudaFree(dm));
    free(h), free(ab), free(ref), free(abm), free(got);
}

static void t_allgather(comm_t c, const char *cname, const int *extra, size_t base, int inplace, uint64_t key) {
    int p = comm_size(c), me = comm_rank(c);
    size_t off[64], cnt[64], n = layout(p, extra, base, off, cnt), m = cnt[me];
    float *mine = host_vals(m, key + (uint64_t)wrank), *ref = malloc((n ? n : 1) * sizeof *ref);
    int e1 = comm_mpi_allgather(off, cnt, c, mine, ref);
    float *poison = host_vals(n, 999), *dfull = to_dev(poison, n), *dmine = NULL;
    if (inplace && m) CK(cudaMemcpyAsync(dfull + off[me], mine, m * sizeof *mine, cudaMemcpyHostToDevice, cu_stream()));
    else dmine = to_dev(mine, m);
    int e2 = comm_allgather(off, cnt, c, inplace ? dfull + off[me] : dmine, dfull);
    float *got = from_dev(dfull, n);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += memcmp(&got[i], &ref[i], sizeof *got) != 0;
    char what[96];
    snprintf(what, sizeof what, "%s p=%d %s%s n=%zu", cname, p, extra[1] != extra[0] ? "uneven" : "even",
             inplace ? " in place" : "", n);
    report(!e1 && !e2 && diff == 0, "comm_allgather", what, (double)diff);
    CK(cudaFree(dfull));
    if (dmine) CK(cudaFree(dmine));
    free(mine), free(ref), free(poison), free(got);
}

/* The 2-byte all-gather (bf16 weights, zero.c): odd counts, against the MPI body bit for bit. */
static void t_allgather_u16(comm_t c, const char *cname, const int *extra, size_t base, uint64_t key) {
    int p = comm_size(c), me = comm_rank(c);
    size_t off[64], cnt[64], n = layout(p, extra, base, off, cnt), m = cnt[me];
    float *h = host_vals(m / 2 + 1, key + (uint64_t)wrank), *hp = host_vals(n / 2 + 1, 998);
    uint16_t *mine = malloc((m + 2) * sizeof *mine), *ref = malloc((n + 1) * sizeof *ref), *got = malloc((n + 1) * 2);
    memcpy(mine, h, m * sizeof *mine);
    int e1 = comm_mpi_allgather_u16(off, cnt, c, mine, ref);
    uint16_t *dmine, *dfull;
    CK(cudaMalloc((void **)&dmine, (m + 1) * sizeof *dmine));
    CK(cudaMalloc((void **)&dfull, (n + 1) * sizeof *dfull));
    CK(cudaMemcpy(dmine, mine, m * sizeof *mine, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dfull, hp, n * sizeof *dfull, cudaMemcpyHostToDevice)); /* poison */
    int e2 = comm_allgather_u16(off, cnt, c, dmine, dfull);
    CK(cudaStreamSynchronize(cu_stream()));
    CK(cudaMemcpy(got, dfull, n * sizeof *got, cudaMemcpyDeviceToHost));
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += got[i] != ref[i];
    char what[96];
    snprintf(what, sizeof what, "%s p=%d %s n=%zu", cname, p, extra[1] != extra[0] ? "uneven" : "even", n);
    report(!e1 && !e2 && diff == 0, "comm_allgather_u16", what, (double)diff);
    CK(cudaFree(dmine));
    CK(cudaFree(dfull));
    free(h), free(hp), free(mine), free(ref), free(got);
}

static void t_alltoall_int(comm_t c, const char *cname, int n) {
    int p = comm_size(c);
    size_t tot = (size_t)p * n;
    int *s = malloc(tot * sizeof *s), *ref = malloc(tot * sizeof *ref), *got = malloc(tot * sizeof *got);
    for (size_t i = 0; i < tot; i++) s[i] = 1000 * wrank + (int)i;
    int e1 = comm_mpi_alltoall_int(s, ref, n, c);
    int *ds, *dr;
    CK(cudaMalloc((void **)&ds, tot * sizeof *ds));
    CK(cudaMalloc((void **)&dr, tot * sizeof *dr));
    CK(cudaMemcpyAsync(ds, s, tot * sizeof *s, cudaMemcpyHostToDevice, cu_stream()));
    int e2 = comm_alltoall_int(ds, dr, n, c);
    CK(cudaMemcpyAsync(got, dr, tot * sizeof *got, cudaMemcpyDeviceToHost, cu_stream()));
    CK(cudaStreamSynchronize(cu_stream()));
    char what[96];
    snprintf(what, sizeof what, "%s p=%d n=%d", cname, p, n);
    report(!e1 && !e2 && !memcmp(got, ref, tot * sizeof *got), "comm_alltoall_int", what, 0);
    CK(cudaFree(ds));
    CK(cudaFree(dr));
    free(s), free(ref), free(got);
}

/* MoE dispatch: member r sends (r + 2k) % 3 rows to member k (some zero),
 * member 0 of c sends nothing (a NULL buffer) and member 1 receives nothing. */
static void t_alltoallv(comm_t c, const char *cname, int row, uint64_t key) {
    int p = comm_size(c), me = comm_rank(c);
    int sc[64], so[64], rc[64], ro[64], ns = 0, nr = 0;
    for (int k = 0; k < p; k++) sc[k] = me == 0 || k == 1 ? 0 : (me + 2 * k) % 3;
    int e1 = comm_mpi_alltoall_int(sc, rc, 1, c);
    for (int k = 0; k < p; k++) so[k] = ns, ns += sc[k], ro[k] = nr, nr += rc[k];
    size_t sn = (size_t)ns * row, rn = (size_t)nr * row;
    float *s = host_vals(sn, key + (uint64_t)wrank), *ref = malloc((rn ? rn : 1) * sizeof *ref);
    e1 |= comm_mpi_alltoallv_rows(s, sc, so, ref, rc, ro, (size_t)row * sizeof(float), c);
    float *ds = ns ? to_dev(s, sn) : NULL, *dr = NULL;
    if (nr) CK(cudaMalloc((void **)&dr, rn * sizeof *dr));
    int e2 = comm_alltoallv_rows(ds, sc, so, dr, rc, ro, (size_t)row * sizeof(float), c);
    float *got = nr ? from_dev(dr, rn) : calloc(1, sizeof *got);
    if (!nr) CK(cudaStreamSynchronize(cu_stream()));
    int all = comm_sum_int(ns, c);
    char what[96];
    snprintf(what, sizeof what, "%s p=%d row=%d rows=%d", cname, p, row, all);
    report(!e1 && !e2 && !memcmp(got, ref, rn * sizeof *got), "comm_alltoallv_rows", what, 0);
    if (ds) CK(cudaFree(ds));
    if (dr) CK(cudaFree(dr));
    free(s), free(ref), free(got);
}

/* The nonblocking all-to-all (comm_alltoallv_rows_start / comm_wait): two in
 * flight at once, started right after their send buffers are written on the
 * backend stream, a backend copy between start and wait (it must not disturb
 * the exchange), waited out of order, recv read on the backend stream after
 * the wait; each equal bitwise to MPI's blocking all-to-all of the same rows.
 * The counts of the second are the first's reversed (other empty blocks). */
static void t_alltoallv_start(comm_t c, const char *cname, int row, uint64_t key) {
    int p = comm_size(c), me = comm_rank(c);
    int sc[2][64], so[2][64], rc[2][64], ro[2][64], ns[2] = {0, 0}, nr[2] = {0, 0}, e1 = 0, e2 = 0;
    float *s[2], *ref[2], *ds[2], *dr[2], *got[2];
    for (int h = 0; h < 2; h++) {
        for (int k = 0; k < p; k++) {
            int kk = h ? p - 1 - k : k;
            sc[h][k] = me == 0 || kk == 1 ? 0 : (me + 2 * kk) % 3;
        }
        e1 |= comm_mpi_alltoall_int(sc[h], rc[h], 1, c);
        for (int k = 0; k < p; k++) so[h][k] = ns[h], ns[h] += sc[h][k], ro[h][k] = nr[h], nr[h] += rc[h][k];
        s[h] = host_vals((size_t)ns[h] * row, key + 100 * (uint64_t)h + (uint64_t)wrank);
        ref[h] = malloc(((size_t)nr[h] * row + 1) * sizeof *ref[h]);
        e1 |= comm_mpi_alltoallv_rows(s[h], sc[h], so[h], ref[h], rc[h], ro[h], (size_t)row * sizeof(float), c);
        ds[h] = to_dev(s[h], (size_t)ns[h] * row);
        CK(cudaMalloc((void **)&dr[h], ((size_t)nr[h] * row + 1) * sizeof *dr[h]));
    }
    comm_req q[2];
    for (int h = 0; h < 2; h++)
        e2 |= comm_alltoallv_rows_start(ns[h] ? ds[h] : NULL, sc[h], so[h], nr[h] ? dr[h] : NULL, rc[h], ro[h],
                                        (size_t)row * sizeof(float), c, &q[h]);
    float *other = to_dev(s[0], (size_t)ns[0] * row); /* backend work while both are in flight */
    e2 |= comm_wait(&q[1]);
    e2 |= comm_wait(&q[0]);
    e2 |= comm_wait(&q[0]); /* a completed request: no-op */
    for (int h = 0; h < 2; h++) got[h] = from_dev(dr[h], (size_t)nr[h] * row);
    int same = 1;
    for (int h = 0; h < 2; h++) same &= !memcmp(got[h], ref[h], (size_t)nr[h] * row * sizeof(float));
    char what[96];
    snprintf(what, sizeof what, "%s p=%d row=%d two in flight", cname, p, row);
    report(!e1 && !e2 && same, "comm_alltoallv_rows_start", what, 0);
    CK(cudaFree(other));
    for (int h = 0; h < 2; h++) {
        CK(cudaFree(ds[h]));
        CK(cudaFree(dr[h]));
        free(s[h]), free(ref[h]), free(got[h]);
    }
}

/* NCCL calls comm_nccl.c does not make, on a communicator of our own (InitRank over the
 * world): the shim's ncclAlltoAll, ncclGather, ncclScatter, rooted ncclReduce, and an fp8
 * (e4m3 bytes) all-gather, against what each must give (every byte known) */
static void t_nccl_extras(void) {
    const int n = 5, p = wsize, me = wrank, root = p - 1;
    ncclUniqueId id;
    if (me == 0) ncclGetUniqueId(&id);
    comm_bcast(&id, sizeof id, 0, COMM_WORLD);
    ncclComm_t nc;
    int ok = ncclCommInitRank(&nc, p, id, me) == ncclSuccess, bad = 0;
    cudaStream_t s = cu_stream();
    size_t tot = (size_t)p * n;
    int *h = malloc(tot * sizeof *h), *g = malloc(tot * sizeof *g), *ds, *dr;
    CK(cudaMalloc((void **)&ds, tot * sizeof *ds));
    CK(cudaMalloc((void **)&dr, tot * sizeof *dr));
    /* element i of block k from rank r: 10000 r + 100 k + i */
    for (int k = 0; k < p; k++)
        for (int i = 0; i < n; i++) h[k * n + i] = 10000 * me + 100 * k + i;
    CK(cudaMemcpyAsync(ds, h, tot * sizeof *h, cudaMemcpyHostToDevice, s));
    ok &= ncclAlltoAll(ds, dr, (size_t)n, ncclInt32, nc, s) == ncclSuccess;
    CK(cudaMemcpyAsync(g, dr, tot * sizeof *g, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    for (int k = 0; k < p; k++) /* block k came from rank k, its block `me` */
        for (int i = 0; i < n; i++) bad += g[k * n + i] != 10000 * k + 100 * me + i;
    report(ok && !bad, "ncclAlltoAll", "int32, shim", (double)bad);

    bad = 0;
    ok &= ncclGather(ds, dr, (size_t)n, ncclInt32, root, nc, s) == ncclSuccess; /* my block 0 */
    CK(cudaMemcpyAsync(g, dr, tot * sizeof *g, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    if (me == root)
        for (int k = 0; k < p; k++)
            for (int i = 0; i < n; i++) bad += g[k * n + i] != 10000 * k + i;
    report(ok && !bad, "ncclGather", "int32 to the last rank, shim", (double)bad);

    bad = 0;
    ok &= ncclScatter(ds, dr, (size_t)n, ncclInt32, root, nc, s) == ncclSuccess; /* root's block `me` */
    CK(cudaMemcpyAsync(g, dr, (size_t)n * sizeof *g, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    for (int i = 0; i < n; i++) bad += g[i] != 10000 * root + 100 * me + i;
    report(ok && !bad, "ncclScatter", "int32 from the last rank, shim", (double)bad);

    bad = 0;
    ok &= ncclReduce(ds, dr, tot, ncclInt32, ncclSum, root, nc, s) == ncclSuccess;
    CK(cudaMemcpyAsync(g, dr, tot * sizeof *g, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    if (me == root)
        for (int k = 0; k < p; k++)
            for (int i = 0; i < n; i++) bad += g[k * n + i] != 10000 * p * (p - 1) / 2 + p * (100 * k + i);
    report(ok && !bad, "ncclReduce", "int32 sum to the last rank, shim", (double)bad);

    bad = 0;
    unsigned char f8[256], *d8, *all = malloc((size_t)p * 256);
    for (int i = 0; i < 256; i++) f8[i] = (unsigned char)(i + me); /* every e4m3 pattern, NaNs included */
    CK(cudaMalloc((void **)&d8, (size_t)p * 256));
    CK(cudaMemcpyAsync(d8 + (size_t)me * 256, f8, 256, cudaMemcpyHostToDevice, s));
    ok &= ncclAllGather(d8 + (size_t)me * 256, d8, 256, ncclFloat8e4m3, nc, s) == ncclSuccess;
    CK(cudaMemcpyAsync(all, d8, (size_t)p * 256, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    for (int k = 0; k < p; k++)
        for (int i = 0; i < 256; i++) bad += all[k * 256 + i] != (unsigned char)(i + k);
    report(ok && !bad, "ncclAllGather", "fp8 e4m3 bytes in place, shim", (double)bad);

    CK(cudaFree(ds));
    CK(cudaFree(dr));
    CK(cudaFree(d8));
    ncclCommDestroy(nc);
    free(h), free(g), free(all);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    wrank = comm_rank(COMM_WORLD);
    wsize = comm_size(COMM_WORLD);
    if (wsize > 64) {
        if (wrank == 0) fprintf(stderr, "test_comm_nccl: at most 64 ranks\n");
        comm_mpi_finalize();
        return 2;
    }
    const int ep = wsize % 2 == 0 ? 2 : 1;
    /* as plan.c: world dup, node, expert (EP consecutive ranks), data */
    comm_t world, node, expert, data, outside;
    comm_dup(COMM_WORLD, &world);
    comm_split_node(world, wrank, &node);
    comm_split(world, wrank / ep, wrank, &expert);
    comm_split(world, wrank % ep, wrank, &data);
    comm_mpi_split(COMM_WORLD, wrank % 2, wrank, &outside); /* no NCCL twin until first used */
    if (wrank == 0)
        printf("ranks %d: world, node %d, expert %d, data %d, outside %d\n", wsize, comm_size(node),
               comm_size(expert), comm_size(data), comm_size(outside));

    struct {
        comm_t c;
        const char *name;
    } cs[] = {{world, "world"}, {expert, "expert"}, {data, "data"}, {node, "node"},
              {COMM_WORLD, "MPI_COMM_WORLD"}, {outside, "outside"}, {COMM_SELF, "self"}};
    const int ncs = (int)(sizeof cs / sizeof cs[0]);
    const int even[4] = {0, 0, 0, 0}, uneven[4] = {3, 0, 7, 1};
    for (int i = 0; i < ncs; i++) {
        t_sum(cs[i].c, cs[i].name, 1, 10);
        t_sum(cs[i].c, cs[i].name, 7168 + 5, 11);
    }
    t_sum(world, "world", 0, 12);
    for (int i = 0; i < 3; i++) { /* world (dense ZeRO), expert, data (expert ZeRO) */
        t_reduce_scatter(cs[i].c, cs[i].name, even, 1792, 20);
        t_reduce_scatter(cs[i].c, cs[i].name, uneven, 5, 21);
        t_allgather(cs[i].c, cs[i].name, even, 1792, 0, 30);
        t_allgather(cs[i].c, cs[i].name, uneven, 5, 0, 31);
        t_allgather(cs[i].c, cs[i].name, uneven, 0, 1, 32); /* member 1 holds 0 */
        t_allgather_u16(cs[i].c, cs[i].name, even, 1792, 34);
        t_allgather_u16(cs[i].c, cs[i].name, uneven, 5, 35);
        t_alltoall_int(cs[i].c, cs[i].name, 3);
    }
    t_reduce_scatter(COMM_SELF, "self", uneven, 5, 22);
    t_allgather(COMM_SELF, "self", uneven, 5, 0, 33);
    for (int i = 0; i < 3; i++) {
        t_alltoallv(cs[i].c, cs[i].name, 7168, 40);
        t_alltoallv(cs[i].c, cs[i].name, 5, 41);
    }
    t_alltoallv(COMM_SELF, "self", 5, 42);
    for (int i = 0; i < 3; i++) t_alltoallv_start(cs[i].c, cs[i].name, 7168, 43);
    t_alltoallv_start(COMM_SELF, "self", 5, 44);
    { /* host buffers: the MPI request (MPI_Ialltoallv) */
        int p = comm_size(world), sc[64], so[64], rc[64], ro[64];
        float hs[64], hr[64];
        for (int k = 0; k < p; k++) sc[k] = rc[k] = 1, so[k] = ro[k] = k, hs[k] = val(45, (size_t)(wrank * p + k));
        comm_req q;
        int e = comm_alltoallv_rows_start(hs, sc, so, hr, rc, ro, sizeof(float), world, &q);
        comm_test(&q);
        e |= comm_wait(&q);
        int ok = !e;
        for (int k = 0; k < p; k++) ok &= hr[k] == val(45, (size_t)(k * p + wrank));
        report(ok, "comm_alltoallv_rows_start", "host buffers: MPI_Ialltoallv", 0);
    }

    /* host buffers through comm.h take MPI; a host buffer paired with a device one is refused */
    {
        float h[37], r[37];
        for (int i = 0; i < 37; i++) h[i] = r[i] = val(50 + (uint64_t)wrank, (size_t)i);
        int e = comm_sum_floats(h, 37, world) | comm_mpi_sum_floats(r, 37, world);
        report(!e && !memcmp(h, r, sizeof h), "comm_sum_floats", "host buffer: MPI path", 0);
        size_t off[64], cnt[64];
        size_t n = layout(wsize, even, 4, off, cnt);
        float *d;
        CK(cudaMalloc((void **)&d, n * sizeof *d));
        e = comm_allgather(off, cnt, world, h, d);
        report(e == -1, "comm_allgather", "host mine, device full: refused", 0);
        CK(cudaFree(d));
    }

    t_nccl_extras();

    comm_free(&outside);
    comm_free(&data);
    comm_free(&expert);
    comm_free(&node);
    comm_free(&world);
    if (wrank == 0) printf("%d passed, %d failed\n", passed, failed);
    int rc = failed != 0;
    comm_finalize();
    return rc;
}
