/* chat.h — DeepSeek-V3's chat template rendered to token ids (the
 * tokenizer_config.json chat_template: bos, the system prompts joined by blank
 * lines, then <｜User｜>content and <｜Assistant｜>content<｜end▁of▁sentence｜>
 * turns), shared by dsv3-prep sft (training samples with a loss mask) and
 * dsv3-generate (prompts, add_generation_prompt). Tool calls are not supported.
 */
#ifndef DSV3_CHAT_H
#define DSV3_CHAT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

typedef struct {
    tok_ctx *c;                 /* NULL: byte-level (chat_open_bytes) */
    int32_t bos, eos, user, assistant;
    tok_ids ids;
    tok_ids mask; /* 0/1 per token: 1 = an assistant token the model is trained on */
} chat_state;

/* bos/eos from tokenizer_config.json beside tokenizer_path, <｜User｜>/<｜Assistant｜>
 * from the tokenizer, and an encoding context. 0, or -1 with err set (names the file and key). */
int chat_open(chat_state *s, const tok_tokenizer *t, const char *tokenizer_path, char *err, int errlen);
/* Byte-level vocabularies (dsv3-prep --tokenizer bytes): id = byte, the role
 * markers written as their UTF-8 bytes, bos/eos given (0..255). 0, or -1 with err. */
int chat_open_bytes(chat_state *s, int32_t bos, int32_t eos, char *err, int errlen);
void chat_close(chat_state *s);
/* bos/eos token string `key` of tokenizer_config.json beside tokenizer_path. 0, or -1 with err. */
int chat_special_id(const tok_tokenizer *t, const char *tokenizer_path, const char *key, int32_t *id, char *err,
                    int errlen);
/* Renders one JSON object into s->ids (and s->mask): {"messages": [{role, content}...]}
 * (roles system, user, assistant) or Alpaca {instruction, input?, output}.
 * generation_prompt 0 (training): needs an assistant turn / output; each
 * assistant turn ends with eos. 1 (add_generation_prompt): ends with
 * <｜Assistant｜> for the model to answer; Alpaca's output is not needed.
 * Returns NULL, or what is wrong with the object. */
const char *chat_render(chat_state *s, json_t *j, int generation_prompt);
/* bytes -> valid UTF-8, invalid sequences as U+FFFD (what `tokenizers` decode
 * does); malloc'd, NUL-terminated, *out_n bytes. */
char *chat_utf8_lossy(const char *s, size_t n, size_t *out_n);

#endif
