/* safetensors.h — one reader and one writer of the safetensors format
 * (dsv3-spec.md §8), used by dsv3-import, dsv3-export and the PEFT adapter
 * writer.
 *
 * Reader: hostile-input safe. st_open validates every rule of the reference
 * reader before anything is trusted (header length against the file, UTF-8
 * JSON, known dtypes, shapes and offsets with overflow checks, offsets
 * contiguous with no gap or overlap, no trailing bytes) and reports
 * "<file>: <tensor>: <rule>" in one line. Allocation sizes never come from
 * an unvalidated header. Tensor data is read with pread (streaming: a tensor,
 * or a byte range of it, at a time).
 *
 * Writer: the reference writer's rules (tensors ordered by descending dtype
 * rank then name, data contiguous, compact JSON with __metadata__ first and
 * tensors in offset order, header padded with spaces to a multiple of 8), so
 * our files are byte-identical to those of the `safetensors` library. Data is
 * written with pwrite at each tensor's offset, in any order and by any number
 * of calls (several ranks may write disjoint ranges of one file); st_writer_close
 * asserts that every tensor received exactly its byte size.
 *
 * Error messages are one line: "path: rule" or "path: tensor 'name': rule"
 * (the name with control bytes as \xNN, cut at 80 bytes); a rule names the
 * reference's error in parentheses, e.g. "(InvalidOffset)".
 *
 * Where the reference reader accepts and we follow it: fields of a tensor
 * entry other than dtype/shape/data_offsets are ignored; "__metadata__": null
 * is no metadata; JSON whitespace (not only spaces) may follow the object.
 * Where we are stricter: the header must start with '{' (the reference skips
 * leading whitespace); duplicate keys anywhere are invalid (the reference
 * keeps the last duplicate tensor or metadata key); at most ST_MAX_DIMS
 * dimensions and ST_MAX_NAME-1 bytes of name; integers above INT64_MAX and
 * "\u0000" in strings are invalid (jansson), the reference takes any u64.
 *
 * API refinements (vs the first draft of this header): st_file.t is in
 * offset (file) order, not header order; st_file.by_name (a name index for
 * st_find); st_writer_attach (another rank's writer of the same file);
 * st_writer_count / st_writer_tensor (the layout after begin); errors of
 * st_writer_meta / st_writer_add are remembered and reported by
 * st_writer_begin; st_writer_close removes a file that failed its check.
 */
#ifndef DSV3_SAFETENSORS_H
#define DSV3_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64,
    ST_F8_E4M3, ST_F8_E5M2, ST_F8_E8M0, ST_F8_E4M3FNUZ, ST_F8_E5M2FNUZ, ST_C64, ST_F6_E2M3, ST_F6_E3M2, ST_F4,
    ST_NDTYPES
} st_dtype;

#define ST_MAX_DIMS 8
#define ST_MAX_NAME 512

/* "F32" etc.; bits per element (4, 6, 8, 16, 32, 64). */
const char *st_dtype_name(st_dtype t);
int st_dtype_bits(st_dtype t);
/* -1 when s is not a known dtype string. */
int st_dtype_parse(const char *s);

typedef struct {
    char name[ST_MAX_NAME];
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets in the data buffer, end exclusive */
} st_tensor;

typedef struct {
    char path[4096];
    int fd;               /* -1 for an in-memory file */
    const unsigned char *mem; /* in-memory file (st_open_mem), or the file mapped (st_map) */
    int mapped;           /* mem is st_map's mapping: st_close unmaps it */
    uint64_t file_size, header_len, data_start;
    int n;                /* tensors */
    st_tensor *t;         /* [n], in offset (file) order */
    int *by_name;         /* [n] indices of t sorted by name (st_find) */
    int n_meta;           /* __metadata__ entries */
    char **meta_key, **meta_val;
} st_file;

/* Opens and validates a file: 0, or -1 with "path: [tensor: ]rule" in err. */
int st_open(st_file *f, const char *path, char *err, int errlen);
/* The same on bytes in memory (fuzzing, tests); `name` stands for the path. */
int st_open_mem(st_file *f, const void *buf, size_t len, const char *name, char *err, int errlen);
void st_close(st_file *f);
/* Maps an open file read-only (mmap): st_read then copies from the mapping and
 * st_data points into it; the importer reads tensors in place, without the
 * page-cache copy of pread. 0, or -1 with the reason in err. A file that
 * shrinks while mapped ends the process (SIGBUS), where st_read reports it. */
int st_map(st_file *f, char *err, int errlen);
/* Tensor i's bytes in place (a mapped or in-memory file), else NULL. */
const unsigned char *st_data(const st_file *f, int i);
/* Index of a tensor by name, or -1. */
int st_find(const st_file *f, const char *name);
/* __metadata__ value of a key, or NULL. */
const char *st_meta(const st_file *f, const char *key);
/* Bytes of tensor i; element count. */
static inline uint64_t st_bytes(const st_tensor *t) { return t->end - t->begin; }
uint64_t st_numel(const st_tensor *t);
/* Reads bytes [off, off+len) of tensor i into dst (pread; bounds checked). 0 or -1. */
int st_read(const st_file *f, int i, uint64_t off, uint64_t len, void *dst, char *err, int errlen);

typedef struct st_writer st_writer;
/* Starts a file: declare every tensor with st_writer_add, then st_writer_begin
 * writes the header (and sizes the file); then st_writer_put data. */
int st_writer_open(st_writer **w, const char *path, char *err, int errlen);
/* __metadata__ entries (string -> string), e.g. ("format", "pt"), written in
 * the order given (byte-identical to the reference with at most one entry: it
 * writes a Rust HashMap, in no fixed order). */
int st_writer_meta(st_writer *w, const char *key, const char *value);
/* Declares a tensor: name (valid UTF-8, < ST_MAX_NAME bytes, not
 * "__metadata__", not declared before), ndim 0..ST_MAX_DIMS, shape >= 0 with
 * prod(shape)*bits a whole number of bytes. meta and add return 0, or -1 and
 * remember the first error, which st_writer_begin then reports. */
int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape);
/* Lays out the file and writes the header: creates the file (O_TRUNC, 0644),
 * writes 8 + N header bytes, extends it to its final size. 0 or -1 with err set. */
int st_writer_begin(st_writer *w, char *err, int errlen);
/* Instead of begin, on the other writers of one file (other ranks, after the
 * creating rank's begin): the same declarations give the same layout; opens
 * the existing file for writing without truncating or writing the header. */
int st_writer_attach(st_writer *w, char *err, int errlen);
/* Index of a declared tensor by name (after begin the order is the file's). */
int st_writer_find(const st_writer *w, const char *name);
/* Declared tensors; tensor i (after begin: file order, begin/end set). */
int st_writer_count(const st_writer *w);
const st_tensor *st_writer_tensor(const st_writer *w, int i);
/* Bytes [off, off+len) of tensor `name` (pwrite). 0 or -1. */
int st_writer_put(st_writer *w, const char *name, uint64_t off, const void *data, uint64_t len, char *err,
                  int errlen);
/* Total file size after begin (header + data). */
uint64_t st_writer_size(const st_writer *w);
/* Checks every tensor got exactly its byte size (counted by this process; with
 * several writers, pass check = 0 on all but one and check with st_open), fsyncs,
 * closes. 0 or -1 with err naming the tensor. Frees w either way; when the
 * check fails, the file (known incomplete) is removed by the writer that created it. */
int st_writer_close(st_writer *w, int check, char *err, int errlen);
/* Frees w without finishing (error paths); removes the file when unlink_file. */
void st_writer_abort(st_writer *w, int unlink_file);

#endif
