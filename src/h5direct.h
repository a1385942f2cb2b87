/* h5direct.h — HDF5 chunk bytes without HDF5's filter pipeline.
 *
 * Fletcher32 exactly as HDF5 computes it (H5_checksum_fletcher32: big-endian
 * 16-bit words, sums mod 65535, an odd last byte taken as the high byte of a
 * word, stored as 4 little-endian bytes after the chunk's data), fast and in
 * parts: every rank sums the rows it holds, the parts add up across ranks.
 *
 * A "skeleton" file driver (POSIX, like HDF5's sec2) that can drop raw-data
 * writes: one process builds a file's metadata and allocates every chunk with
 * H5Dwrite_chunk while the data itself is not written; the driver records
 * each chunk's file address, and the ranks then write the chunk bytes
 * (data + checksum) themselves with pwrite. Each byte reaches the file once,
 * no copy through HDF5, no fill pass (parallel HDF5 1.10 writes every
 * filtered chunk with fill values first), no collective I/O. */
#ifndef DSV3_H5DIRECT_H
#define DSV3_H5DIRECT_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

/* Partial Fletcher32 sums of a byte run: s1 = sum of words, s2 = sum of
 * words weighted by how many words up to the end of the run (both mod 65535);
 * nz: any nonzero word (HDF5's sums are 0 only for all-zero data). */
typedef struct {
    uint64_t s1, s2, nz;
} fl32_part;

/* Sums of n bytes (n even, or odd at the end of a chunk). */
fl32_part fl32_sum(const void *p, size_t n);
/* x's contribution when `after` 16-bit words follow it in the chunk; parts of
 * one chunk then add up (fl32_add) in any order. */
fl32_part fl32_shift(fl32_part x, uint64_t after);
void fl32_add(fl32_part *acc, fl32_part x);
/* The checksum HDF5 stores for a chunk whose parts add up to x. */
uint32_t fl32_final(fl32_part x);
/* = H5_checksum_fletcher32(p, n). */
uint32_t fl32(const void *p, size_t n);

/* File access property list of the skeleton driver (H5Pclose it). */
hid_t h5skel_fapl(void);
/* While on, raw-data writes of files opened with it are not written; the
 * address of the last one is kept. Metadata is always written. One thread. */
void h5skel_drop(int on);
haddr_t h5skel_last_addr(void);

#endif
