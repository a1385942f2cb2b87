/* tokenizer.h — byte-level BPE from a Hugging Face tokenizer.json (DeepSeek-V3 kind).
 *
 * Supported: model.type "BPE" (no dropout, no byte_fallback, no unk, no
 * continuing_subword_prefix / end_of_word_suffix), normalizer null or an empty
 * Sequence, pre_tokenizer a Sequence of Split (Regex, behavior "Isolated", no
 * invert) and/or a ByteLevel (use_regex false; or true = the GPT-2 regex), decoder
 * ByteLevel. Anything else is refused at load with a message naming the field.
 *
 * Encoding follows the `tokenizers` library: added tokens (special or not) are
 * split out first (leftmost, longest), each remaining piece goes through the
 * Split regexes (PCRE2, UTF + UCP), the ByteLevel byte->unicode mapping, and BPE
 * merges applied lowest rank first. No BOS/EOS is added (the post-processor is
 * ByteLevel only). Decoding maps ids back to bytes (added tokens verbatim).
 */
#ifndef DSV3_TOKENIZER_H
#define DSV3_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tok_tokenizer tok_tokenizer;
typedef struct tok_ctx tok_ctx; /* per-thread encoding scratch (regex match data, BPE cache) */

typedef struct {
    int32_t *ids;
    size_t n, cap;
} tok_ids;

int tok_load(tok_tokenizer **t, const char *path, char *err, int errlen);
void tok_free(tok_tokenizer *t);

int tok_vocab_size(const tok_tokenizer *t);                  /* max id + 1 (vocab and added tokens) */
int32_t tok_id(const tok_tokenizer *t, const char *token);   /* id of a vocab/added token string, -1 if none */

tok_ctx *tok_ctx_new(const tok_tokenizer *t);
void tok_ctx_free(tok_ctx *c);

/* Appends the ids of text[0..len) to out. Returns 0, or -1 (out of memory). Invalid
 * UTF-8 sequences are replaced by U+FFFD first (as a Python/Rust string would hold
 * them); NUL bytes are ordinary bytes. Thread-safe with one ctx per thread. */
int tok_encode(tok_ctx *c, const char *text, size_t len, tok_ids *out);

/* Bytes of ids[0..n) as a malloc'd NUL-terminated buffer (*len without the NUL);
 * NULL if an id is out of range. Special tokens are kept (skip_special_tokens=False);
 * the bytes may be invalid UTF-8 when ids cut a character (callers wanting text
 * replace such sequences by U+FFFD, as `tokenizers` does). */
char *tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, size_t *len);

int tok_ids_push(tok_ids *v, int32_t id);
void tok_ids_free(tok_ids *v);

#endif
