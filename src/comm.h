/* comm.h — the MPI calls of the trainer, in one place (design §3).
 *
 * Reductions are deterministic: the same inputs on the same layout give the
 * same bits on every run (fixed collectives, no arrival-order sums). A later
 * GPU build gives the same functions a NCCL flavour.
 *
 * ZeRO buffers: `full` is a whole segment in the layout its plan_shard
 * describes: the flat parameter layout (compact = 0, member k owns
 * [off[k], off[k]+cnt[k])) or the compact trainable-only layout (compact = 1,
 * [toff[k], toff[k]+tcnt[k])). `mine` is this rank's shard of it.
 */
#ifndef DSV3_COMM_H
#define DSV3_COMM_H

#include <mpi.h>
#include <stddef.h>

#include "plan.h"

/* Prints "dsv3: error: <message>" (plus the rank when there are several) on
 * stderr and ends the whole job: MPI_Abort(MPI_COMM_WORLD, 1), or exit(1)
 * when MPI is not running. */
void comm_fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Sum of x over c, the same value on every member. */
double comm_allreduce_sum_double(double x, MPI_Comm c);
/* In place, n values. */
void comm_allreduce_sum_doubles(double *x, int n, MPI_Comm c);

/* Sums `full` over c and leaves this member's shard of the sum in `mine`
 * (MPI_Reduce_scatter with the row-aligned counts). `full` is not changed. */
int comm_reduce_scatter(const plan_shard *s, int compact, MPI_Comm c, const float *full, float *mine);
/* Rebuilds `full` on every member from the members' shards (MPI_Allgatherv). */
int comm_allgather(const plan_shard *s, int compact, MPI_Comm c, const float *mine, float *full);

/* The same for segment `seg` of a plan: over world (dense) or data (expert). */
int comm_zero_reduce_scatter(const plan *p, int seg, int compact, const float *full, float *mine);
int comm_zero_allgather(const plan *p, int seg, int compact, const float *mine, float *full);

/* Largest element count passed to one MPI call (default INT_MAX); larger
 * segments go through a chunked path (per-member MPI_Reduce / MPI_Bcast).
 * Tests lower it to exercise that path. Returns the previous value. */
size_t comm_set_chunk_limit(size_t floats);

#endif
