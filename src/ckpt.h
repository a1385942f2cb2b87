/* ckpt.h — checkpoints in parallel HDF5 (design §5).
 *
 * One file per checkpoint, <output_dir>/checkpoints/step_%08d.h5, written
 * collectively over the plan's world communicator. Tensors are stored in
 * their GLOBAL shapes (routed experts stacked [E, out, in]) at paths made
 * from the HF names (dots -> slashes, "model." dropped):
 *   /model/layers/3/self_attn/q_a_proj/weight      parameters and router biases
 *   /model/lm_head/weight
 *   /lora/layers/0/self_attn/q_a_proj/lora_A/weight  LoRA adapters (P_LORA)
 *   /optim/exp_avg/<same relative path>            AdamW m, trainable tensors only
 *   /optim/exp_avg_sq/<same relative path>         AdamW v
 * so any rank count, EP and ZeRO stage can read any file: each rank selects
 * the hyperslabs of its own layout. Root attributes: format_version, step,
 * tokens_seen, data_position, optim_t, deck (resolved text), git_rev,
 * world_size, ep, zero_stage, has_optim and the model dimensions.
 *
 * Writers: every element is written by exactly one rank, the owner of its
 * ZeRO shard (dense segments over world, expert segments over the data comm),
 * whatever the rank holds. Datasets are chunked with the Fletcher32 filter
 * (parallel filtered writes, collective); every read verifies it. One rank
 * uses HDF5's POSIX driver instead of MPI-IO (same file; no fill pass, see
 * ckpt_save); chunks of 64 KiB or more are page-aligned.
 *
 * Atomic: step_X.h5.tmp is written and closed, fsync'd, then rank 0 renames
 * it and replaces checkpoints/latest (one line: the file name) via
 * latest.tmp + rename. A crash at any moment leaves the previous checkpoint
 * and `latest` valid; a stale .tmp is overwritten by the next save.
 */
#ifndef DSV3_CKPT_H
#define DSV3_CKPT_H

#include <stdint.h>

#include "comm.h"
#include "deck.h"
#include "plan.h"
#include "zero.h"

#define CKPT_FORMAT_VERSION 1

/* Buffer layouts (parameters, AdamW moments): ZERO_FULL_LOCAL etc., zero.h. */

typedef struct {
    int64_t step;          /* optimizer steps done (the file is step_%08d of this) */
    int64_t tokens_seen;
    int64_t data_position; /* data loader cursor */
    int64_t optim_t;       /* AdamW step count */
    /* in (save and load): the frozen store (zero_state.frozen) when the deck
     * keeps its base narrow (train.base_dtype bf16/fp8, P_STORED tensors:
     * ckpt_frozen.h); read only when such tensors exist */
    uint8_t *frozen;
    /* filled by ckpt_load (ignored by ckpt_save): */
    int has_optim;         /* 0: model-only file; m and v were zeroed */
    int adapters_only;     /* 1: LoRA adapters (+ router biases) only; the base came from elsewhere */
    int world_size, ep, zero_stage; /* layout at save */
} ckpt_state;

/* Collective over p->world. Writes <d->run.output_dir>/checkpoints/step_%08d.h5
 * (st->step), honouring d->checkpoint.save ("full": model + optim, "model":
 * model only; m, v may then be NULL) and d->checkpoint.keep (0 = keep all).
 * Returns 0, or -1 on every rank with the same message in err. */
int ckpt_save(const plan *p, const deck *d, const char *output_dir, const float *params, int params_layout,
              const float *m, const float *v, int optim_layout, const ckpt_state *st, char *err, int errlen);

/* Collective over p->world. Reads `path` into the caller's layout. m and v may
 * be NULL (weights only, e.g. run.init_from); moments of untrained tensors
 * (P_FROZEN, P_NOGRAD) are set to 0. Checks every tensor name and shape against
 * the deck's model first, and every chunk's checksum while reading. Returns 0,
 * or -1 on every rank with the same message in err. */
int ckpt_load(const plan *p, const deck *d, const char *path, float *params, int params_layout, float *m,
              float *v, int optim_layout, ckpt_state *st, char *err, int errlen);

/* run.resume: "" -> 0 with path "" (fresh start); "auto" -> the file named by
 * <output_dir>/checkpoints/latest, or "" when there is none; anything else is
 * a path that must exist. Not collective (file-system reads only). Returns 0 or
 * -1 with err set. */
int ckpt_resolve(const deck *d, char *path, int len, char *err, int errlen);

/* Figures of the last ckpt_save/ckpt_load on this rank (benchmarks, tests). */
typedef struct {
    double seconds;        /* wall time of the call */
    double bytes;          /* tensor bytes in the file (global, all datasets) */
    int n_datasets;
    int n_independent;     /* data writes HDF5 did not perform collectively (should be 0) */
} ckpt_stats;
const ckpt_stats *ckpt_last_stats(void);
/* Bytes a checkpoint file of this plan takes on disk (estimate with a margin
 * for HDF5's metadata); ckpt_save refuses to start when less is free. */
double ckpt_file_bytes(const plan *p, const deck *d, int with_optim, int adapters_only);
/* 1 when the checkpoint at path holds adapters only (checkpoint.save = "adapters"),
 * 0 otherwise or when it cannot be read (ckpt_load then says why). One process. */
int ckpt_is_adapters_only(const char *path);
/* 1 once an HDF5 file could not be closed (HDF5 1.10 cannot shut down
 * cleanly after that): main.c then ends without MPI_Finalize. */
int ckpt_io_broken(void);


/* ---- streaming single-tensor I/O (dsv3-import, dsv3-export) ----
 * The same file format as ckpt_save, written one tensor (or a run of rows
 * along axis 0: one routed expert of a stacked [E, out, in]) at a time, so a
 * conversion holds one tensor in memory, never the model. The root attributes
 * say step 0 and no optimizer state: the file starts a run with run.init_from.
 * The file is written as <path>.tmp and renamed by a successful close.
 *
 * Writers are collective over `comm` (parallel HDF5 when it has more than one
 * rank; COMM_SELF or a one-rank comm: the POSIX driver): open, attr, declare and
 * close are called by every rank with the same arguments; every write call is
 * made by every rank, each with its own rows (nrows 0: none), and returns the
 * same status on every rank (the message of the lowest failing rank). */
typedef struct ckpt_out ckpt_out;
/* use_bf16: datasets in bf16 (a custom HDF5 float type), written from bf16 bits.
 * fp8: the file will hold ckpt_out_declare_fp8 tensors, written collectively
 * through parallel HDF5; otherwise rank 0 builds the file's metadata and every
 * rank writes its rows' chunk bytes itself (h5direct.h: no fill pass, no copy
 * through HDF5's filters, the same file). */
int ckpt_out_open(ckpt_out **o, const char *path, const deck *d, int use_bf16, int fp8, comm_t comm, char *err,
                  int errlen);
/* A string attribute on the root (provenance). 0 or -1. */
int ckpt_out_attr(ckpt_out *o, const char *name, const char *value);
/* Creates /model/<path of hf_name> (global shape, 1-3 dims); f32 keeps this
 * one in F32 in a bf16 file (the router bias, as the release has it). */
int ckpt_out_declare(ckpt_out *o, const char *hf_name, int ndim, const int64_t *shape, int f32, char *err,
                     int errlen);
/* Rows [row0, row0+nrows) of axis 0: bf16 bits (uint16) for a bf16 dataset, else floats. */
int ckpt_out_write(ckpt_out *o, const char *hf_name, int64_t row0, int64_t nrows, const void *data, char *err,
                   int errlen);
/* Rows [row0, row0+nrows) of slice e of a 3-D dataset (one routed expert's [out, in]). */
int ckpt_out_write_slab(ckpt_out *o, const char *hf_name, int64_t e, int64_t row0, int64_t nrows, const void *data,
                        char *err, int errlen);
/* The same for one rank alone, as often as it likes (e >= 0: slice e's rows;
 * e < 0: axis 0's), with no collective call: only a file opened without fp8.
 * A failure is kept (-1 here) and reported on every rank by the next
 * collective call (ckpt_out_write*, ckpt_out_close), which then fails. The
 * importer writes each small piece right after converting it (the kernel's
 * copy then reads cache) and the ranks do not wait on each other. */
int ckpt_out_put(ckpt_out *o, const char *hf_name, int64_t e, int64_t row0, int64_t nrows, const void *data);
/* dsv3-import --keep-fp8: tensor hf_name as e4m3 bytes + f32 weight_scale_inv
 * (ckpt_frozen.h), declared instead of ckpt_out_declare; rows of whole
 * 128-row blocks (row0 % 128 == 0) of slice e (3-D; e < 0 for 2-D) with the
 * scale rows they cover. */
int ckpt_out_declare_fp8(ckpt_out *o, const char *hf_name, int ndim, const int64_t *shape, char *err, int errlen);
int ckpt_out_write_fp8(ckpt_out *o, const char *hf_name, int64_t e, int64_t row0, int64_t nrows, const uint8_t *q,
                       const float *scales, char *err, int errlen);
/* failed = 0: close, fsync, rename into place; else (or on error) remove the .tmp. Frees o. */
int ckpt_out_close(ckpt_out *o, int failed, char *err, int errlen);

typedef struct {
    char name[400];     /* HF name (stacked experts: model.layers.L.mlp.experts.gate_proj.weight) */
    char path[420];     /* HDF5 dataset path */
    int ndim;
    int64_t shape[3];
    int is_bf16, is_lora;
    int is_fp8;         /* e4m3 bytes (uint8, ckpt_frozen.h): ckpt_in_read refuses it */
} ckpt_tensor_info;
typedef struct ckpt_in ckpt_in;
int ckpt_in_open(ckpt_in **r, const char *path, char *err, int errlen);
const char *ckpt_in_deck(const ckpt_in *r); /* the resolved deck the checkpoint was written with */
int ckpt_in_count(const ckpt_in *r);
const ckpt_tensor_info *ckpt_in_tensor(const ckpt_in *r, int i);
/* Rows [row0, row0+nrows) of axis 0 as floats, or (as_bf16, bf16 datasets only) bf16 bits. */
int ckpt_in_read(ckpt_in *r, int i, int64_t row0, int64_t nrows, void *dst, int as_bf16, char *err, int errlen);
/* Rows [row0, row0+nrows) of slice e of a 3-D tensor (one routed expert). */
int ckpt_in_read_slab(ckpt_in *r, int i, int64_t e, int64_t row0, int64_t nrows, void *dst, int as_bf16, char *err,
                      int errlen);
/* Rows [row0, row0+nrows) of slice e (e < 0: along axis 0) as the bytes the
 * file stores (bf16 bits or f32, little-endian), handed to sink in order in
 * pieces of at most 512 KiB: read with pread, no copy through HDF5, every
 * chunk's Fletcher32 verified (a mismatch ends it with the dataset named;
 * pieces of that chunk may already have gone to sink). 1 when the dataset is
 * not a Fletcher32-only chunked one (use ckpt_in_read), 0 done, -1 error. */
int ckpt_in_stream(ckpt_in *r, int i, int64_t e, int64_t row0, int64_t nrows,
                   int (*sink)(void *ctx, const void *data, size_t n), void *ctx, char *err, int errlen);
void ckpt_in_close(ckpt_in *r);

#endif
