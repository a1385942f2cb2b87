/* ckpt_frozen.h — the frozen store (train.base_dtype bf16/fp8, params.h
 * P_STORED) in checkpoints, kept in its storage precision. Used by ckpt.c
 * (save/load inside its open file) and dsv3-import --keep-fp8 (the dataset
 * names and types); nothing else.
 *
 * Datasets, at the tensor's usual path (ckpt.h) in its global shape:
 *   bf16  the custom 16-bit HDF5 float type ckpt.c uses for bf16 (sign 15,
 *         exponent 7..14 bias 127, mantissa 0..6): the bits as they are
 *   fp8   uint8 (H5T_STD_U8LE) holding the e4m3 bytes, attribute
 *         dtype = "float8_e4m3fn", and beside it <...>/weight_scale_inv, f32
 *         [ceil(out/128), ceil(in/128)] (stacked experts [E, ., .]): HF's names
 *         and layout. uint8, not an 8-bit float type: HDF5 1.10 has none
 *         (H5T_FLOAT_F8E4M3 arrived in 1.14.4) and numpy/h5py cannot represent
 *         one, so a custom type would read as garbage or fail; bytes read
 *         everywhere and round-trip bitwise.
 * Chunked (one expert, or ~4 MiB of rows, per chunk) with Fletcher32, like
 * every other dataset; every read verifies it.
 *
 * Writers: the frozen store is resident (never sharded): world rank 0 writes
 * the dense tensors, and the ranks with data index 0 write their experts.
 * Readers: every rank reads what it holds. A float (f32 or bf16) dataset
 * loads into a narrower storage through 128-row staging (DeepSeek's FP8
 * recipe, or bf16 rounding: ops_weight_store_rows); an fp8 dataset loads into
 * fp8 bitwise, into bf16 through its dequantisation. */
#ifndef DSV3_CKPT_FROZEN_H
#define DSV3_CKPT_FROZEN_H

#include <hdf5.h>
#include <stdint.h>

#include "plan.h"

/* 1 when `name` (an HF name) is the scale of a P_STORED tensor of pt (".weight_scale_inv" of it). */
int ckpt_frozen_is_scale(const param_table *pt, const char *hf_name);
/* Checks tensor i's dataset(s): present, global shape, a usable type (f32,
 * bf16, or uint8 with its scale dataset of the right shape). 0, or -1 with err. */
int ckpt_frozen_check(hid_t file, const param_table *pt, int i, const char *fname, char *err, int errlen);
/* Collective over the file's communicator: creates tensor i's dataset(s) in
 * its storage dtype and writes them from store (zero_state.frozen). */
int ckpt_frozen_write(hid_t file, hid_t lcpl, hid_t dxpl_collective, const plan *p, int i, const uint8_t *store,
                      const char *fname, char *err, int errlen);
/* Independent: reads what this rank holds of tensor i into store. */
int ckpt_frozen_read(hid_t file, hid_t dxpl, const plan *p, int i, uint8_t *store, const char *fname, char *err,
                     int errlen);
/* 1 when the dataset at path holds fp8 bytes (uint8 with dtype = "float8_e4m3fn"). */
int ckpt_frozen_is_fp8(hid_t file, const char *path);
/* One process (dsv3-import --keep-fp8): creates tensor hf_name's uint8 dataset
 * (global shape, 2-D or stacked 3-D) and its weight_scale_inv. 0 or -1 with err. */
int ckpt_frozen_declare_fp8(hid_t file, const char *hf_name, int ndim, const int64_t *shape, char *err, int errlen);
/* Rows [row0, row0+nrows) (row0 a multiple of 128) of matrix e (3-D; e < 0 for
 * 2-D) as e4m3 bytes q [nrows, in], and the scale rows they cover, sc
 * [ceil(nrows/128), ceil(in/128)], with transfer list dxpl (collective on a
 * parallel file: every rank calls, nrows 0 writing nothing). 0 or -1 with err. */
int ckpt_frozen_write_fp8(hid_t file, hid_t dxpl, const char *hf_name, int64_t e, int64_t row0, int64_t nrows,
                          const uint8_t *q, const float *sc, char *err, int errlen);
/* The bf16 HDF5 type (caller closes it). */
hid_t ckpt_frozen_bf16_type(void);

#endif
