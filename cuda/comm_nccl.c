/* comm_nccl.c — comm.h for the CUDA builds: device data over NCCL, host data
 * and bootstrap over MPI (src/comm.c's bodies, as comm_mpi_*: comm_mpi.h).
 *
 * Communicators. An MPI communicator of more than one rank gets an NCCL twin
 * in the same collective call that makes it: the first split or dup of a
 * communicator without a twin (MPI_COMM_WORLD) makes the parent's twin with
 * ncclCommInitRank, its unique id broadcast over the parent; every comm_dup,
 * comm_split and comm_split_node child is then ncclCommSplit of the parent's
 * twin (the node, expert and data communicators of plan.c exist before the
 * first step). A communicator made outside comm.h gets its twin at its first
 * device collective (InitRank over its members, who are all in that call).
 * No twins are made unless every rank of the parent sees a GPU (a --dry-run
 * on a login node makes none and never needs them).
 *
 * Transport, per call, from where the buffers live (cudaPointerGetAttributes):
 * host memory goes through MPI exactly as in the CPU build; device memory
 * through NCCL on the backend stream (cu_stream): ordered after the kernels
 * that wrote it and before those that read it, without a host wait. With
 * DSV3_COMM_DEVICE=mpi device memory goes through MPI instead, which needs a
 * CUDA-aware MPI (MPIX_Query_cuda_support(); Debian's OpenMPI is not: then
 * the first communicator split refuses, on every rank, with one message).
 *
 * ZeRO's shards are uneven (row-aligned): equal shards use ncclReduceScatter
 * and ncclAllGather, uneven ones one grouped ncclReduce / ncclBroadcast per
 * member (no padded staging copy, which the memory plan does not count). */
#include "comm_mpi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <nccl.h>
#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h> /* MPIX_Query_cuda_support */
#endif

#include "cu_ops.h"
#include "error.h"

/* ---- the NCCL twins of MPI communicators ---- */

typedef struct {
    comm_t mpi;
    ncclComm_t nccl;
} twin;
static twin *twins;
static int ntwins, cap_twins;

static ncclComm_t twin_of(comm_t c) {
    for (int i = 0; i < ntwins; i++)
        if (twins[i].mpi == c) return twins[i].nccl;
    return NULL;
}
static void twin_add(comm_t c, ncclComm_t n) {
    if (ntwins == cap_twins) {
        cap_twins = cap_twins ? 2 * cap_twins : 8;
        twins = realloc(twins, (size_t)cap_twins * sizeof *twins);
        DSV3_CHECK(twins, "comm_nccl: out of memory for the communicator table");
    }
    twins[ntwins++] = (twin){c, n};
}
static ncclComm_t twin_drop(comm_t c) {
    for (int i = 0; i < ntwins; i++)
        if (twins[i].mpi == c) {
            ncclComm_t n = twins[i].nccl;
            twins[i] = twins[--ntwins];
            return n;
        }
    return NULL;
}

#define NCCL_OR_DIE(x)                                                                                           \
    do {                                                                                                         \
        ncclResult_t r_ = (x);                                                                                   \
        if (r_ != ncclSuccess) error_one("NCCL error %s (%d) in %s", ncclGetErrorString(r_), (int)r_, #x);       \
    } while (0)
/* bulk calls report failure as comm.c's do: -1, the caller names the operation */
#define NCCL_OR_FAIL(x)                                                                                          \
    do {                                                                                                         \
        ncclResult_t r_ = (x);                                                                                   \
        if (r_ != ncclSuccess) {                                                                                 \
            fprintf(stderr, "dsv3: comm_nccl: %s: %s\n", #x, ncclGetErrorString(r_));                            \
            return -1;                                                                                           \
        }                                                                                                        \
    } while (0)
#define CUDA_OR_FAIL(x)                                                                                          \
    do {                                                                                                         \
        cudaError_t e_ = (x);                                                                                    \
        if (e_ != cudaSuccess) {                                                                                 \
            fprintf(stderr, "dsv3: comm_nccl: %s: %s\n", #x, cudaGetErrorString(e_));                            \
            return -1;                                                                                           \
        }                                                                                                        \
    } while (0)

/* DSV3_COMM_DEVICE: "nccl" (default) or "mpi" (CUDA-aware MPI on device pointers). */
static int device_over_mpi(void) {
    const char *v = getenv("DSV3_COMM_DEVICE");
    return v && !strcmp(v, "mpi");
}
static int mpi_cuda_aware(void) {
#if defined(MPIX_CUDA_AWARE_SUPPORT)
    return MPIX_Query_cuda_support();
#else
    return 0;
#endif
}

/* Checked where a communicator is made (collective over c, before any work):
 * the device transport can run here. Returns 1 when NCCL twins are wanted. */
static int want_twins(comm_t c) {
    char err[256] = "";
    const char *v = getenv("DSV3_COMM_DEVICE");
    if (v && strcmp(v, "nccl") && strcmp(v, "mpi"))
        snprintf(err, sizeof err, "DSV3_COMM_DEVICE=%s: use nccl (default) or mpi", v);
    else if (device_over_mpi() && !mpi_cuda_aware())
        snprintf(err, sizeof err,
                 "DSV3_COMM_DEVICE=mpi needs a CUDA-aware MPI, and this one is not (MPIX_Query_cuda_support() = 0); "
                 "unset it to use NCCL");
    if (error_all(c, err[0] != 0, err, sizeof err)) {
        comm_mpi_finalize();
        exit(1);
    }
    if (device_over_mpi()) return 0;
    int n = 0;
    int no_gpu = cudaGetDeviceCount(&n) != cudaSuccess || n < 1;
    if (no_gpu) cudaGetLastError(); /* clear the sticky "no driver" */
    return comm_max_int(no_gpu, c) == 0;
}

/* c's twin, made now if it has none: collective over c. NULL for one rank. */
static ncclComm_t twin_make(comm_t c) {
    ncclComm_t n = twin_of(c);
    if (n || comm_size(c) == 1) return n;
    cu_device(); /* the node-local GPU, chosen before NCCL binds to the current device */
    ncclUniqueId id;
    if (comm_rank(c) == 0) NCCL_OR_DIE(ncclGetUniqueId(&id));
    comm_bcast(&id, sizeof id, 0, c);
    NCCL_OR_DIE(ncclCommInitRank(&n, comm_size(c), id, comm_rank(c)));
    twin_add(c, n);
    return n;
}

/* After the MPI half made *child from parent (color < 0: none): its twin,
 * ncclCommSplit of the parent's. NCCL and MPI order members alike (key, then
 * parent rank); checked, since every collective relies on it. */
static void twin_split(comm_t parent, int color, int key, const comm_t *child) {
    if (comm_size(parent) == 1 || !want_twins(parent)) return;
    ncclComm_t p = twin_make(parent), n = NULL;
    NCCL_OR_DIE(ncclCommSplit(p, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &n, NULL));
    if (!n) return;
    int nr = -1, ns = -1;
    NCCL_OR_DIE(ncclCommUserRank(n, &nr));
    NCCL_OR_DIE(ncclCommCount(n, &ns));
    DSV3_CHECK(*child != COMM_NULL && nr == comm_rank(*child) && ns == comm_size(*child),
               "comm_nccl: ncclCommSplit gave rank %d of %d where MPI_Comm_split gave %d of %d", nr, ns,
               *child != COMM_NULL ? comm_rank(*child) : -1, *child != COMM_NULL ? comm_size(*child) : 0);
    if (ns > 1) twin_add(*child, n);
    else NCCL_OR_DIE(ncclCommDestroy(n));
}

static void comm_stream_sync(void); /* the nonblocking all-to-alls' stream (below) drained */

/* ---- comm.h: communicators ---- */

void comm_dup(comm_t c, comm_t *out) {
    comm_mpi_dup(c, out);
    twin_split(c, 0, comm_rank(c), out);
}
void comm_split(comm_t c, int color, int key, comm_t *out) {
    comm_mpi_split(c, color, key, out);
    twin_split(c, color, key, out);
}
void comm_split_node(comm_t c, int key, comm_t *out) {
    comm_mpi_split_node(c, key, out);
    /* the node's colour: its lowest rank in c (the same on every member) */
    twin_split(c, -comm_max_int(-comm_rank(c), *out), key, out);
}
void comm_free(comm_t *c) {
    ncclComm_t n = twin_drop(*c);
    if (n) {
        comm_stream_sync();
        CU_CHECK(cudaStreamSynchronize(cu_stream()));
        NCCL_OR_DIE(ncclCommDestroy(n));
    }
    comm_mpi_free(c);
}
void comm_abort(int code) {
    for (int i = 0; i < ntwins; i++) ncclCommAbort(twins[i].nccl); /* unblock device work; MPI_Abort follows */
    ntwins = 0;
    comm_mpi_abort(code);
}
void comm_finalize(void) {
    if (ntwins) comm_stream_sync(), CU_CHECK(cudaStreamSynchronize(cu_stream()));
    while (ntwins > 0) NCCL_OR_DIE(ncclCommDestroy(twins[--ntwins].nccl)); /* newest first, as made */
    free(twins);
    twins = NULL;
    cap_twins = 0;
    comm_mpi_finalize();
}

/* The frozen store is device memory, which POSIX shared memory cannot hold:
 * each rank keeps its own (deck.c then plans no node-shared part). */
int comm_node_shared_available(void) { return 0; }

/* ---- where the data lives ---- */

static int on_device(const void *p) {
    if (!p) return 0;
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError(); /* no driver: host memory */
        return 0;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}
enum { VIA_MPI, VIA_NCCL };
/* The transport for buffers a and b of an and bn elements; -1 for a host
 * buffer paired with a device one. An empty buffer (NULL, or a pointer one
 * past a shard's end) holds nothing to move and counts as device memory, the
 * CUDA build's contract for float data (ops.h), so that a rank with nothing
 * to send takes the same transport as its peers. Device data through MPI
 * (DSV3_COMM_DEVICE=mpi) waits for the stream first. */
static int route(const void *a, size_t an, const void *b, size_t bn) {
    if (!an) a = NULL;
    if (!bn) b = NULL;
    int ha = a && !on_device(a), hb = b && !on_device(b);
    if (a && b && ha != hb) {
        fprintf(stderr, "dsv3: comm_nccl: one buffer in host and one in device memory (%p, %p)\n", a, b);
        return -1;
    }
    if (ha || hb) return VIA_MPI;
    if (!device_over_mpi()) return VIA_NCCL;
    return cudaStreamSynchronize(cu_stream()) == cudaSuccess ? VIA_MPI : -1;
}

/* ---- comm.h: bulk data ---- */

int comm_sum_floats(float *x, size_t n, comm_t c) {
    int r = route(x, n, NULL, 0);
    if (r != VIA_NCCL) return r == VIA_MPI ? comm_mpi_sum_floats(x, n, c) : -1;
    if (n == 0 || comm_size(c) == 1) return 0;
    NCCL_OR_FAIL(ncclAllReduce(x, x, n, ncclFloat32, ncclSum, twin_make(c), cu_stream()));
    return 0;
}

static int even(const size_t *cnt, int n) {
    for (int k = 1; k < n; k++)
        if (cnt[k] != cnt[0]) return 0;
    return 1;
}

static size_t total(const size_t *cnt, int n) {
    size_t t = 0;
    for (int k = 0; k < n; k++) t += cnt[k];
    return t;
}

int comm_reduce_scatter(const size_t *off, const size_t *cnt, comm_t c, const float *full, float *mine) {
    int r = route(full, total(cnt, comm_size(c)), mine, cnt[comm_rank(c)]);
    if (r != VIA_NCCL) return r == VIA_MPI ? comm_mpi_reduce_scatter(off, cnt, c, full, mine) : -1;
    int n = comm_size(c), me = comm_rank(c);
    cudaStream_t s = cu_stream();
    if (n == 1) {
        if (cnt[0] && mine != full + off[0])
            CUDA_OR_FAIL(cudaMemcpyAsync(mine, full + off[0], cnt[0] * sizeof *mine, cudaMemcpyDeviceToDevice, s));
        return 0;
    }
    ncclComm_t nc = twin_make(c);
    if (even(cnt, n)) {
        if (cnt[0]) NCCL_OR_FAIL(ncclReduceScatter(full, mine, cnt[0], ncclFloat32, ncclSum, nc, s));
        return 0;
    }
    NCCL_OR_FAIL(ncclGroupStart());
    for (int k = 0; k < n; k++)
        if (cnt[k])
            NCCL_OR_FAIL(ncclReduce(full + off[k], k == me ? mine : NULL, cnt[k], ncclFloat32, ncclSum, k, nc, s));
    NCCL_OR_FAIL(ncclGroupEnd());
    return 0;
}

/* All-gather of elements of `es` bytes (NCCL type t; nothing is computed on them). */
static int allgather_es(const size_t *off, const size_t *cnt, comm_t c, const char *mine, char *full, size_t es,
                        ncclDataType_t t) {
    int n = comm_size(c), me = comm_rank(c);
    cudaStream_t s = cu_stream();
    if (n == 1) {
        if (cnt[0] && mine != full + off[0] * es)
            CUDA_OR_FAIL(cudaMemcpyAsync(full + off[0] * es, mine, cnt[0] * es, cudaMemcpyDeviceToDevice, s));
        return 0;
    }
    ncclComm_t nc = twin_make(c);
    if (even(cnt, n)) {
        if (cnt[0]) NCCL_OR_FAIL(ncclAllGather(mine, full, cnt[0], t, nc, s));
        return 0;
    }
    NCCL_OR_FAIL(ncclGroupStart());
    for (int k = 0; k < n; k++)
        if (cnt[k])
            NCCL_OR_FAIL(ncclBroadcast(k == me ? mine : full + off[k] * es, full + off[k] * es, cnt[k], t, k, nc, s));
    NCCL_OR_FAIL(ncclGroupEnd());
    return 0;
}

int comm_allgather(const size_t *off, const size_t *cnt, comm_t c, const float *mine, float *full) {
    int r = route(mine, cnt[comm_rank(c)], full, total(cnt, comm_size(c)));
    if (r != VIA_NCCL) return r == VIA_MPI ? comm_mpi_allgather(off, cnt, c, mine, full) : -1;
    return allgather_es(off, cnt, c, (const char *)mine, (char *)full, sizeof *full, ncclFloat32);
}

int comm_allgather_u16(const size_t *off, const size_t *cnt, comm_t c, const uint16_t *mine, uint16_t *full) {
    int r = route(mine, cnt[comm_rank(c)], full, total(cnt, comm_size(c)));
    if (r != VIA_NCCL) return r == VIA_MPI ? comm_mpi_allgather_u16(off, cnt, c, mine, full) : -1;
    return allgather_es(off, cnt, c, (const char *)mine, (char *)full, sizeof *full, ncclBfloat16);
}

/* Grouped send/recv of each peer's block (bytes at byte offsets); the own
 * block is a device copy. Empty blocks are skipped on both sides (the counts
 * agree: they came from the all-to-all of counts). */
static int exchange(const char *send, const size_t *sbytes, const size_t *soff, char *recv, const size_t *rbytes,
                    const size_t *roff, comm_t c, cudaStream_t s) {
    int n = comm_size(c), me = comm_rank(c);
    if (sbytes[me] != rbytes[me]) {
        fprintf(stderr, "dsv3: comm_nccl: all-to-all sends %zu bytes to itself but expects %zu\n", sbytes[me],
                rbytes[me]);
        return -1;
    }
    if (sbytes[me])
        CUDA_OR_FAIL(cudaMemcpyAsync(recv + roff[me], send + soff[me], sbytes[me], cudaMemcpyDeviceToDevice, s));
    if (n == 1) return 0;
    ncclComm_t nc = twin_make(c);
    NCCL_OR_FAIL(ncclGroupStart());
    for (int k = 0; k < n; k++) {
        if (k == me) continue;
        if (sbytes[k]) NCCL_OR_FAIL(ncclSend(send + soff[k], sbytes[k], ncclUint8, k, nc, s));
        if (rbytes[k]) NCCL_OR_FAIL(ncclRecv(recv + roff[k], rbytes[k], ncclUint8, k, nc, s));
    }
    NCCL_OR_FAIL(ncclGroupEnd());
    return 0;
}

int comm_alltoall_int(const int *send, int *recv, int n, comm_t c) {
    int r = route(send, (size_t)n * comm_size(c), recv, (size_t)n * comm_size(c));
    if (r != VIA_NCCL) return r == VIA_MPI ? comm_mpi_alltoall_int(send, recv, n, c) : -1;
    if (n <= 0) return 0;
    int p = comm_size(c);
    size_t *b = malloc(2 * (size_t)p * sizeof *b);
    if (!b) return -1;
    for (int k = 0; k < p; k++) b[k] = (size_t)n * sizeof(int), b[p + k] = (size_t)k * n * sizeof(int);
    int e = exchange((const char *)send, b, b + p, (char *)recv, b, b + p, c, cu_stream());
    free(b);
    return e;
}

/* The rows' byte counts and offsets, then the exchange on stream s. */
static int exchange_rows(const void *send, const int *scnt, const int *soff, void *recv, const int *rcnt,
                         const int *roff, size_t rb, comm_t c, cudaStream_t s) {
    int p = comm_size(c);
    size_t *b = malloc(4 * (size_t)p * sizeof *b);
    if (!b) return -1;
    for (int k = 0; k < p; k++) {
        b[k] = (size_t)scnt[k] * rb;
        b[p + k] = (size_t)soff[k] * rb;
        b[2 * p + k] = (size_t)rcnt[k] * rb;
        b[3 * p + k] = (size_t)roff[k] * rb;
    }
    int e = exchange((const char *)send, b, b + p, (char *)recv, b + 2 * p, b + 3 * p, c, s);
    free(b);
    return e;
}

/* The transport of an all-to-all-v of rows. */
static int route_rows(const void *send, const int *scnt, void *recv, const int *rcnt, size_t row_bytes, comm_t c) {
    int p = comm_size(c);
    size_t ns = 0, nr = 0;
    for (int k = 0; k < p; k++) ns += (size_t)scnt[k], nr += (size_t)rcnt[k];
    return route(send, ns * row_bytes, recv, nr * row_bytes);
}

int comm_alltoallv_rows(const void *send, const int *scnt, const int *soff, void *recv, const int *rcnt,
                        const int *roff, size_t row_bytes, comm_t c) {
    int r = route_rows(send, scnt, recv, rcnt, row_bytes, c);
    if (r != VIA_NCCL)
        return r == VIA_MPI ? comm_mpi_alltoallv_rows(send, scnt, soff, recv, rcnt, roff, row_bytes, c) : -1;
    return exchange_rows(send, scnt, soff, recv, rcnt, roff, row_bytes, c, cu_stream());
}

/* ---- nonblocking all-to-all-v: the comm stream ----
 * An exchange started here runs on comm_s, a second (non-blocking) stream:
 * comm_s first waits for `ready`, recorded on the backend stream at the start
 * (the producers of send), then runs the grouped ncclSend/ncclRecv and
 * records a completion event from the pool; comm_wait makes the backend
 * stream wait for that event (the consumers of recv). All NCCL work of the
 * overlapped schedule is so ordered by stream dependencies with the blocking
 * calls on cu_stream, in the same issue order on every rank. */
enum { NDONE = 16 }; /* exchanges in flight at once */
static cudaStream_t comm_s;
static cudaEvent_t ready, done_ev[NDONE];
static int done_busy[NDONE];

static int comm_stream_init(void) {
    if (comm_s) return 0;
    CUDA_OR_FAIL(cudaStreamCreateWithFlags(&comm_s, cudaStreamNonBlocking));
    CUDA_OR_FAIL(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    for (int i = 0; i < NDONE; i++) CUDA_OR_FAIL(cudaEventCreateWithFlags(&done_ev[i], cudaEventDisableTiming));
    return 0;
}
static void comm_stream_sync(void) {
    if (comm_s) CU_CHECK(cudaStreamSynchronize(comm_s));
}

int comm_alltoallv_rows_start(const void *send, const int *scnt, const int *soff, void *recv, const int *rcnt,
                              const int *roff, size_t row_bytes, comm_t c, comm_req *req) {
    int r = route_rows(send, scnt, recv, rcnt, row_bytes, c);
    if (r != VIA_NCCL)
        return r == VIA_MPI ? comm_mpi_alltoallv_rows_start(send, scnt, soff, recv, rcnt, roff, row_bytes, c, req)
                            : -1;
    *req = (comm_req){MPI_REQUEST_NULL, MPI_DATATYPE_NULL, NULL, 0};
    if (comm_stream_init()) return -1;
    int slot = 0;
    while (slot < NDONE && done_busy[slot]) slot++;
    if (slot == NDONE) {
        fprintf(stderr, "dsv3: comm_nccl: more than %d nonblocking all-to-alls in flight\n", NDONE);
        return -1;
    }
    CUDA_OR_FAIL(cudaEventRecord(ready, cu_stream()));
    CUDA_OR_FAIL(cudaStreamWaitEvent(comm_s, ready, 0));
    if (exchange_rows(send, scnt, soff, recv, rcnt, roff, row_bytes, c, comm_s)) return -1;
    CUDA_OR_FAIL(cudaEventRecord(done_ev[slot], comm_s));
    done_busy[slot] = 1;
    req->done = &done_busy[slot];
    req->active = 1;
    return 0;
}

int comm_wait(comm_req *req) {
    if (!req->active) return 0;
    if (!req->done) return comm_mpi_wait(req);
    int slot = (int)((int *)req->done - done_busy);
    req->active = 0;
    req->done = NULL;
    done_busy[slot] = 0;
    CUDA_OR_FAIL(cudaStreamWaitEvent(cu_stream(), done_ev[slot], 0));
    return 0;
}

void comm_test(comm_req *req) {
    if (req->active && !req->done) comm_mpi_test(req);
}
