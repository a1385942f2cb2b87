/* comm.h — every MPI call of the trainer goes through here (design §3), so a
 * GPU build swaps this one file pair for a NCCL flavour; only main.c keeps
 * MPI_Init/Finalize. Other files see MPI only as the comm_t handle type.
 *
 * Reductions are deterministic: the same inputs on the same layout give the
 * same bits on every run (fixed collectives, no arrival-order sums).
 *
 * Sharded buffers (ZeRO, zero.h): member k of c owns [off[k], off[k]+cnt[k])
 * of `full` (consecutive ranges from 0); `mine` is this member's range.
 * Functions returning int give 0 on success, -1 on an MPI or memory failure.
 */
#ifndef DSV3_COMM_H
#define DSV3_COMM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

typedef MPI_Comm comm_t;
#define COMM_NULL MPI_COMM_NULL
#define COMM_SELF MPI_COMM_SELF
#define COMM_WORLD MPI_COMM_WORLD
#define COMM_INFO_NULL MPI_INFO_NULL /* for HDF5's MPI-IO file driver (ckpt.c) */

/* ---- process and communicators ---- */
int comm_running(void);              /* MPI initialised and not finalised */
int comm_rank(comm_t c);
int comm_size(comm_t c);
double comm_wtime(void);
void comm_abort(int code) __attribute__((noreturn)); /* MPI_Abort(world), or exit without MPI */
void comm_finalize(void);                             /* MPI_Finalize when MPI is running */
void comm_barrier(comm_t c);
void comm_dup(comm_t c, comm_t *out);
void comm_split(comm_t c, int color, int key, comm_t *out);
void comm_split_node(comm_t c, int key, comm_t *out); /* ranks sharing memory (one node) */
void comm_free(comm_t *c);                            /* no-op on COMM_NULL or after finalize */
/* Collective over node (ranks sharing memory): one zeroed range of this
 * process's address space whose first `shared` bytes (a multiple of 4096) are
 * one copy for the whole node (a POSIX shared-memory object every rank maps)
 * and whose next `priv` bytes are this rank's own. This rank commits bytes
 * [mine_off, mine_off + mine_len) of the shared part (its share) and its
 * private part. NULL on every rank when any rank fails. */
void *comm_node_shared_alloc(comm_t node, size_t shared, size_t priv, size_t mine_off, size_t mine_len);
void comm_node_shared_free(void *p, size_t bytes); /* bytes = shared + priv */
/* 1 when the model's memory can be node-shared as above (the CPU backend:
 * device memory is host memory); 0 on a device backend (cuda/comm_nccl.c),
 * where each rank holds its frozen store privately in device memory. */
int comm_node_shared_available(void);

/* ---- small reductions and broadcasts (the same result on every member) ---- */
double comm_sum_double(double x, comm_t c);
double comm_max_double(double x, comm_t c);
void comm_sum_doubles(double *x, int n, comm_t c);   /* in place */
void comm_sum_i64(int64_t *x, int n, comm_t c);      /* in place */
int comm_sum_int(int x, comm_t c);
int comm_max_int(int x, comm_t c);
int comm_exscan_sum_int(int x, comm_t c);            /* sum over lower ranks (0 on rank 0) */
void comm_minmax_u64(uint64_t x, comm_t c, uint64_t *lo, uint64_t *hi);
/* Lowest rank of c that passed failed != 0, or -1 if none (error.h builds on it). */
int comm_lowest(comm_t c, int failed);
void comm_bcast(void *buf, size_t bytes, int root, comm_t c);
/* Root receives size(c) blocks of `bytes` in rank order (recv ignored elsewhere). */
void comm_gather_bytes(const void *send, void *recv, size_t bytes, int root, comm_t c);

/* ---- bulk data ---- */
/* In-place float sum of n floats (chunked below 2^31 elements). */
int comm_sum_floats(float *x, size_t n, comm_t c);
/* Sums `full` over c and leaves this member's range of the sum in `mine`
 * (MPI_Reduce_scatter; per-member rooted reduces above the chunk limit). */
int comm_reduce_scatter(const size_t *off, const size_t *cnt, comm_t c, const float *full, float *mine);
/* Rebuilds `full` on every member from the members' ranges (MPI_Allgatherv; broadcasts above the limit). */
int comm_allgather(const size_t *off, const size_t *cnt, comm_t c, const float *mine, float *full);
/* The same for 2-byte elements (bf16 weights): offsets and counts in elements. */
int comm_allgather_u16(const size_t *off, const size_t *cnt, comm_t c, const uint16_t *mine, uint16_t *full);
/* MoE dispatch/combine: n ints to and from every member. */
int comm_alltoall_int(const int *send, int *recv, int n, comm_t c);
/* Rows of `row_bytes` bytes (fp32, or a packed wire dtype) to and from every
 * member; counts and offsets in rows, so rows*row_bytes may exceed INT_MAX. */
int comm_alltoallv_rows(const void *send, const int *scnt, const int *soff, void *recv, const int *rcnt,
                        const int *roff, size_t row_bytes, comm_t c);

/* The same all-to-all, nonblocking: _start posts it and returns; comm_wait
 * completes it. Between the two, send and recv belong to the exchange (no
 * backend op may write send, or touch recv), and the four count/offset arrays
 * must stay unchanged (MPI reads them until completion). On the CPU it is
 * MPI_Ialltoallv: it progresses inside MPI calls (comm_test is one; OpenMPI
 * has no progress thread), so work between start and wait overlaps only the
 * part the transport moves on its own. On a device backend (comm_nccl.c) the
 * exchange runs on a second, "comm" stream after the work queued so far on
 * the backend stream, and comm_wait orders the backend stream's later work
 * after it, without a host wait. Every rank of c starts its exchanges on c
 * in the same order. 0, or -1 on a failure (at start or at wait). */
typedef struct {
    MPI_Request req;   /* MPI transport */
    MPI_Datatype type; /* the row type, freed at completion */
    void *done;        /* device transport: the comm stream's completion event */
    int active;
} comm_req;
int comm_alltoallv_rows_start(const void *send, const int *scnt, const int *soff, void *recv, const int *rcnt,
                              const int *roff, size_t row_bytes, comm_t c, comm_req *r);
int comm_wait(comm_req *r);  /* no-op on a request not active */
void comm_test(comm_req *r); /* a progress point (MPI_Test); the request stays to wait on */

/* Largest element count passed to one MPI call (default INT_MAX); larger
 * ranges go through the chunked path. Tests lower it. Returns the old value. */
size_t comm_set_chunk_limit(size_t floats);

#endif
