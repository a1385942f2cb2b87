/* data.h — training/validation samples from token datasets (issue 6).
 *
 * Formats (deck data.format), every source of data.train[] / validation.valid[]
 * in the same format, weights normalised to a mixture:
 *   "text"     raw bytes of a file, each byte a token 0..255 (needs vocab_size >= 256).
 *   "u32"      a flat file of little-endian uint32 token ids.
 *   "megatron" Megatron-LM indexed dataset, path = prefix of PREFIX.bin / PREFIX.idx
 *              (MMIDIDX v1, dtype uint16 or int32), documents (EOS already appended by
 *              dsv3-prep pretrain) concatenated and cut into seq_len windows.
 *   "sft"      dsv3-prep sft output: PREFIX.bin/.idx (token ids, one sequence per
 *              conversation) + PREFIX.mask.bin/.idx (uint8 loss mask, 1 = assistant token
 *              to be learned). data.pack: several conversations per window, else one
 *              conversation per sample padded to seq_len.
 *
 * Sample order. data_sample() is a pure function of (run.seed, which, step,
 * global_index): a keyed SplitMix64 hash picks the source by weight and then the
 * window (text/u32: any start offset; megatron: one of the seq_len-aligned windows of
 * the concatenated stream; sft: the first conversation). Draws are with replacement.
 * No state changes between calls, so the order does not depend on the rank count
 * or on which rank asks for which index, and resume is exact given the step.
 *
 * Position (resume). Since samples depend only on (seed, step, index), the loader
 * position is just the next step to be sampled: data_sample() advances it to
 * step+1, data_set_position() restores it from a checkpoint. It is kept for the
 * checkpoint's "data position" attribute and logs; it does not affect samples.
 */
#ifndef DSV3_DATA_H
#define DSV3_DATA_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "deck.h"

#define DATA_IGNORE (-100) /* target value for positions that do not count in the loss */

typedef struct data_loader data_loader;

/* Opens and validates every source of data.train[] (which = 0) or
 * validation.valid[] (which = 1) before any training: missing or truncated
 * .bin/.idx, bad Megatron header/version/dtype, token ids >= model.vocab_size, empty
 * datasets, negative or zero-sum weights, an unsupported data.format or
 * data.tokenizer. On error returns non-zero with a one-line message naming the file
 * in err and *L = NULL. */
int data_open(data_loader **L, const deck *d, int which /*0 train, 1 validation*/, int seq_len,
              char *err, int errlen);

/* Fills one sample of seq_len tokens. targets[t] is the token to predict after
 * tokens[t] (already shifted), DATA_IGNORE for padding, non-assistant SFT tokens and
 * window ends without a next token. Padding tokens are model.eos_token_id.
 * global_index is the sample's index inside the global batch of `step`
 * (0..global_batch-1; any non-negative value is accepted). */
void data_sample(data_loader *L, int64_t step, int64_t global_index,
                 int32_t *tokens /*[seq_len]*/, int32_t *targets /*[seq_len]*/);

int64_t data_position(const data_loader *L);          /* next step to be sampled */
void data_set_position(data_loader *L, int64_t position);

/* Total tokens over all sources and a one-line description (for logs). */
int64_t data_total_tokens(const data_loader *L);
const char *data_describe(const data_loader *L);

void data_close(data_loader *L);

/* Megatron indexed dataset (MMIDIDX v1), shared with dsv3-prep. */
typedef struct {
    void *idx_map; size_t idx_size;    /* mapped .idx */
    void *bin_map; size_t bin_size;    /* mapped .bin */
    int dtype;                         /* Megatron DType code: 1 uint8, 4 int32, 8 uint16 */
    int itemsize;
    int64_t n_seq, n_doc;              /* n_doc = documents (index entries - 1) */
    /* arrays inside the .idx map; the 34-byte header leaves them unaligned, so read
     * them only through the accessors below */
    const void *sizes;                 /* int32 [n_seq] tokens per sequence */
    const void *pointers;              /* int64 [n_seq] byte offsets into .bin */
    const void *doc_idx;               /* int64 [n_doc+1] */
    int64_t n_tokens;                  /* sum of sizes */
} data_mmidx;

static inline int64_t data_mmidx_size(const data_mmidx *m, int64_t i) { /* tokens of sequence i */
    int32_t v;
    memcpy(&v, (const char *)m->sizes + 4 * i, 4);
    return v;
}
static inline int64_t data_mmidx_start(const data_mmidx *m, int64_t i) { /* first token of sequence i */
    int64_t v;
    memcpy(&v, (const char *)m->pointers + 8 * i, 8);
    return v / m->itemsize;
}

/* Maps PREFIX.idx + PREFIX.bin and checks the structure: header, version, dtype,
 * exact .idx size, contiguous pointers, .bin size = total tokens * itemsize,
 * monotone document indices. Returns 0 or non-zero with a message naming the file. */
int data_mmidx_open(data_mmidx *m, const char *prefix, char *err, int errlen);
void data_mmidx_close(data_mmidx *m);
/* Token i of the concatenated stream. */
static inline int64_t data_mmidx_token(const data_mmidx *m, int64_t i) {
    const unsigned char *b = (const unsigned char *)m->bin_map;
    switch (m->dtype) {
    case 1: return b[i];
    case 8: return ((const uint16_t *)(const void *)b)[i];
    default: return ((const int32_t *)(const void *)b)[i];
    }
}

/* Writer for PREFIX.bin/.idx: documents appended one at a time (one sequence each),
 * written to *.tmp files renamed into place by close. */
typedef struct data_mmidx_writer data_mmidx_writer;
int data_mmidx_writer_open(data_mmidx_writer **w, const char *prefix, int dtype, char *err, int errlen);
int data_mmidx_writer_add(data_mmidx_writer *w, const void *items, int64_t n); /* n items of dtype */
int data_mmidx_writer_close(data_mmidx_writer *w, char *err, int errlen);     /* writes .idx */
/* Gives up: removes the temporary files, leaves any existing PREFIX.bin/.idx untouched. */
void data_mmidx_writer_abort(data_mmidx_writer *w);

/* The counter-based hash used for the sample order (exposed for tests/tools). */
uint64_t data_hash(uint64_t seed, uint64_t purpose, uint64_t a, uint64_t b);

#endif
