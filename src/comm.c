/* comm.c — the MPI implementation of comm.h. */
#include "comm.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static size_t chunk_limit = INT_MAX;

size_t comm_set_chunk_limit(size_t floats) {
    size_t old = chunk_limit;
    chunk_limit = floats > 0 && floats <= INT_MAX ? floats : INT_MAX;
    return old;
}

/* ---- process and communicators ---- */

int comm_running(void) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}
int comm_rank(comm_t c) {
    int r = 0;
    MPI_Comm_rank(c, &r);
    return r;
}
int comm_size(comm_t c) {
    int n = 1;
    MPI_Comm_size(c, &n);
    return n;
}
double comm_wtime(void) { return MPI_Wtime(); }
void comm_abort(int code) {
    if (comm_running()) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}
void comm_finalize(void) {
    if (comm_running()) MPI_Finalize();
}
void comm_barrier(comm_t c) { MPI_Barrier(c); }
void comm_dup(comm_t c, comm_t *out) { MPI_Comm_dup(c, out); }
void comm_split(comm_t c, int color, int key, comm_t *out) { MPI_Comm_split(c, color, key, out); }
void comm_split_node(comm_t c, int key, comm_t *out) {
    MPI_Comm_split_type(c, MPI_COMM_TYPE_SHARED, key, MPI_INFO_NULL, out);
}
void comm_free(comm_t *c) {
    if (*c != MPI_COMM_NULL && comm_running()) MPI_Comm_free(c);
    *c = MPI_COMM_NULL;
}

/* ---- memory shared by the ranks of a node ---- */

void *comm_node_shared_alloc(comm_t node, size_t shared, size_t priv, size_t mine_off, size_t mine_len) {
    size_t total = shared + priv;
    int rank = comm_rank(node), bad = 0;
    uint8_t *base = mmap(NULL, total ? total : 1, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) base = NULL, bad = 1;
    char name[64] = {0};
    int fd = -1;
    if (shared) { /* node rank 0 creates a POSIX shared-memory object; the others open it by name */
        if (rank == 0) {
            snprintf(name, sizeof name, "/dsv3-frozen-%ld-%ld", (long)getpid(), (long)time(NULL));
            fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
            if (fd < 0 || ftruncate(fd, (off_t)shared)) bad = 1;
        }
        comm_bcast(name, sizeof name, 0, node);
        if (comm_max_int(bad, node)) bad = 1;
        if (!bad && rank != 0 && (fd = shm_open(name, O_RDWR, 0600)) < 0) bad = 1;
        if (!bad && mmap(base, shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) bad = 1;
        if (fd >= 0) close(fd);
        comm_barrier(node); /* all have it mapped (or failed): the name can go */
        if (rank == 0 && name[0]) shm_unlink(name);
    }
    if (!bad && priv &&
        mmap(base + shared, priv, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
        bad = 1;
    if (comm_max_int(bad, node)) {
        if (base) munmap(base, total ? total : 1);
        return NULL;
    }
    /* commit what this rank allocates (its share of the shared part, and its private part), as ops_alloc does */
    for (size_t i = 0; i < mine_len; i += 4096) ((volatile uint8_t *)base)[mine_off + i] = 0;
    for (size_t i = 0; i < priv; i += 4096) ((volatile uint8_t *)base)[shared + i] = 0;
    comm_barrier(node);
    return base;
}

int comm_node_shared_available(void) { return 1; }

void comm_node_shared_free(void *p, size_t bytes) {
    if (p) munmap(p, bytes ? bytes : 1);
}

/* ---- small reductions ---- */

double comm_sum_double(double x, comm_t c) {
    double y = 0;
    MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, c);
    return y;
}
double comm_max_double(double x, comm_t c) {
    double y = 0;
    MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_MAX, c);
    return y;
}
void comm_sum_doubles(double *x, int n, comm_t c) {
    if (n > 0) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, c);
}
void comm_sum_i64(int64_t *x, int n, comm_t c) {
    if (n > 0) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_INT64_T, MPI_SUM, c);
}
int comm_sum_int(int x, comm_t c) {
    int y = 0;
    MPI_Allreduce(&x, &y, 1, MPI_INT, MPI_SUM, c);
    return y;
}
int comm_max_int(int x, comm_t c) {
    int y = 0;
    MPI_Allreduce(&x, &y, 1, MPI_INT, MPI_MAX, c);
    return y;
}
int comm_exscan_sum_int(int x, comm_t c) {
    int y = 0;
    MPI_Exscan(&x, &y, 1, MPI_INT, MPI_SUM, c);
    return comm_rank(c) == 0 ? 0 : y; /* Exscan leaves rank 0's result undefined */
}
void comm_minmax_u64(uint64_t x, comm_t c, uint64_t *lo, uint64_t *hi) {
    MPI_Allreduce(&x, lo, 1, MPI_UINT64_T, MPI_MIN, c);
    MPI_Allreduce(&x, hi, 1, MPI_UINT64_T, MPI_MAX, c);
}
int comm_lowest(comm_t c, int failed) {
    int who = failed ? comm_rank(c) : INT_MAX, first = INT_MAX;
    MPI_Allreduce(&who, &first, 1, MPI_INT, MPI_MIN, c);
    return first == INT_MAX ? -1 : first;
}
void comm_bcast(void *buf, size_t bytes, int root, comm_t c) {
    ops_sync(); /* buf may be device memory */
    for (size_t o = 0; o < bytes; o += INT_MAX) /* byte counts are int */
        MPI_Bcast((char *)buf + o, (int)(bytes - o < INT_MAX ? bytes - o : INT_MAX), MPI_BYTE, root, c);
}
void comm_gather_bytes(const void *send, void *recv, size_t bytes, int root, comm_t c) {
    MPI_Gather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, root, c);
}

/* ---- bulk data: device buffers (ops_alloc). MPI runs on the host, so each
 * call first waits for the backend's queued work on them (ops_sync; a no-op
 * on the CPU). A NCCL build (comm_nccl.c) queues on the stream instead. */

int comm_sum_floats(float *x, size_t n, comm_t c) {
    ops_sync();
    const size_t chunk = (size_t)1 << 30; /* MPI counts are int: chunks below 2^31 */
    for (size_t o = 0; o < n; o += chunk)
        if (MPI_Allreduce(MPI_IN_PLACE, x + o, (int)(n - o < chunk ? n - o : chunk), MPI_FLOAT, MPI_SUM, c) !=
            MPI_SUCCESS)
            return -1;
    return 0;
}

/* Whether every count (and the total) fits one MPI call. */
static int small_layout(const size_t *cnt, int n) {
    size_t total = 0;
    for (int k = 0; k < n; k++) {
        total += cnt[k];
        if (cnt[k] > chunk_limit) return 0;
    }
    return total <= chunk_limit;
}

int comm_reduce_scatter(const size_t *off, const size_t *cnt, comm_t c, const float *full, float *mine) {
    int n = comm_size(c), me = comm_rank(c);
    ops_sync();
    if (small_layout(cnt, n)) {
        /* The members' ranges are consecutive from offset off[0] = 0. */
        int *rc = malloc((size_t)n * sizeof *rc);
        if (!rc) return -1;
        for (int k = 0; k < n; k++) rc[k] = (int)cnt[k];
        int e = MPI_Reduce_scatter(full, mine, rc, MPI_FLOAT, MPI_SUM, c);
        free(rc);
        return e == MPI_SUCCESS ? 0 : -1;
    }
    /* Large segments: one rooted reduce per member and chunk, same order everywhere. */
    for (int k = 0; k < n; k++)
        for (size_t done = 0; done < cnt[k]; done += chunk_limit) {
            size_t len = cnt[k] - done < chunk_limit ? cnt[k] - done : chunk_limit;
            if (MPI_Reduce(full + off[k] + done, k == me ? mine + done : NULL, (int)len, MPI_FLOAT, MPI_SUM, k, c) !=
                MPI_SUCCESS)
                return -1;
        }
    return 0;
}

/* The all-gather of elements of `es` bytes (MPI type t): one MPI_Allgatherv, or
 * above the chunk limit one broadcast per member and chunk (the own block copied
 * into place first, device to device). */
static int allgather_es(const size_t *off, const size_t *cnt, comm_t c, const void *mine, void *full, size_t es,
                        MPI_Datatype t) {
    int n = comm_size(c), me = comm_rank(c);
    ops_sync();
    if (small_layout(cnt, n)) {
        int *rc = malloc((size_t)n * sizeof *rc), *dis = malloc((size_t)n * sizeof *dis);
        if (!rc || !dis) {
            free(rc);
            free(dis);
            return -1;
        }
        for (int k = 0; k < n; k++) {
            rc[k] = (int)cnt[k];
            dis[k] = (int)off[k];
        }
        int e = MPI_Allgatherv(mine, rc[me], t, full, rc, dis, t, c);
        free(rc);
        free(dis);
        return e == MPI_SUCCESS ? 0 : -1;
    }
    for (int k = 0; k < n; k++)
        for (size_t done = 0; done < cnt[k]; done += chunk_limit) {
            size_t len = cnt[k] - done < chunk_limit ? cnt[k] - done : chunk_limit;
            char *dst = (char *)full + (off[k] + done) * es;
            if (k == me) {
                ops_copy_bytes(dst, (const char *)mine + done * es, len * es);
                ops_sync();
            }
            if (MPI_Bcast(dst, (int)len, t, k, c) != MPI_SUCCESS) return -1;
        }
    return 0;
}

int comm_allgather(const size_t *off, const size_t *cnt, comm_t c, const float *mine, float *full) {
    return allgather_es(off, cnt, c, mine, full, sizeof *full, MPI_FLOAT);
}

int comm_allgather_u16(const size_t *off, const size_t *cnt, comm_t c, const uint16_t *mine, uint16_t *full) {
    return allgather_es(off, cnt, c, mine, full, sizeof *full, MPI_UINT16_T);
}

int comm_alltoall_int(const int *send, int *recv, int n, comm_t c) {
    return MPI_Alltoall(send, n, MPI_INT, recv, n, MPI_INT, c) == MPI_SUCCESS ? 0 : -1;
}

int comm_alltoallv_rows(const void *send, const int *scnt, const int *soff, void *recv, const int *rcnt,
                        const int *roff, size_t row_bytes, comm_t c) {
    if (row_bytes > INT_MAX) return -1;
    ops_sync();
    MPI_Datatype t;
    MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &t);
    MPI_Type_commit(&t);
    int rc = MPI_Alltoallv(send, scnt, soff, t, recv, rcnt, roff, t, c);
    MPI_Type_free(&t);
    return rc == MPI_SUCCESS ? 0 : -1;
}

int comm_alltoallv_rows_start(const void *send, const int *scnt, const int *soff, void *recv, const int *rcnt,
                              const int *roff, size_t row_bytes, comm_t c, comm_req *r) {
    *r = (comm_req){MPI_REQUEST_NULL, MPI_DATATYPE_NULL, NULL, 0};
    if (row_bytes > INT_MAX) return -1;
    ops_sync();
    MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &r->type);
    MPI_Type_commit(&r->type);
    if (MPI_Ialltoallv(send, scnt, soff, r->type, recv, rcnt, roff, r->type, c, &r->req) != MPI_SUCCESS) {
        MPI_Type_free(&r->type);
        return -1;
    }
    r->active = 1;
    return 0;
}

int comm_wait(comm_req *r) {
    if (!r->active) return 0;
    int e = MPI_Wait(&r->req, MPI_STATUS_IGNORE);
    MPI_Type_free(&r->type);
    r->active = 0;
    return e == MPI_SUCCESS ? 0 : -1;
}

void comm_test(comm_req *r) {
    int flag = 0;
    if (r->active && r->req != MPI_REQUEST_NULL) MPI_Test(&r->req, &flag, MPI_STATUS_IGNORE);
}
