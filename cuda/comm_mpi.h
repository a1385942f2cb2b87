/* comm_mpi.h — in the CUDA builds src/comm.c is compiled a second time with
 * the entry points below renamed comm_X -> comm_mpi_X (COMM_MPI_RENAME in
 * cuda/cuda.mk): cuda/comm_nccl.c defines comm_X itself (NCCL for device
 * data, NCCL communicators beside the MPI ones) and calls these MPI bodies for
 * host data and for the MPI half of each communicator. Everything else of
 * comm.h (the small host collectives) is comm.c's, unchanged. */
#ifndef DSV3_COMM_MPI_H
#define DSV3_COMM_MPI_H

#include "comm.h"

void comm_mpi_abort(int code) __attribute__((noreturn));
void comm_mpi_finalize(void);
void comm_mpi_dup(comm_t c, comm_t *out);
void comm_mpi_split(comm_t c, int color, int key, comm_t *out);
void comm_mpi_split_node(comm_t c, int key, comm_t *out);
void comm_mpi_free(comm_t *c);
int comm_mpi_sum_floats(float *x, size_t n, comm_t c);
int comm_mpi_reduce_scatter(const size_t *off, const size_t *cnt, comm_t c, const float *full, float *mine);
int comm_mpi_allgather(const size_t *off, const size_t *cnt, comm_t c, const float *mine, float *full);
int comm_mpi_allgather_u16(const size_t *off, const size_t *cnt, comm_t c, const uint16_t *mine, uint16_t *full);
int comm_mpi_alltoall_int(const int *send, int *recv, int n, comm_t c);
int comm_mpi_alltoallv_rows(const void *send, const int *scnt, const int *soff, void *recv, const int *rcnt,
                            const int *roff, size_t row_bytes, comm_t c);
int comm_mpi_alltoallv_rows_start(const void *send, const int *scnt, const int *soff, void *recv, const int *rcnt,
                                  const int *roff, size_t row_bytes, comm_t c, comm_req *r);
int comm_mpi_wait(comm_req *r);
void comm_mpi_test(comm_req *r);

#endif
