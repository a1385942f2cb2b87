/* hfconfig.h — a Hugging Face DeepSeek-V3 config.json as the deck's model
 * group (dsv3-spec.md §1): dsv3-import writes it into the checkpoint (and
 * prints it as a deck file for @include), dsv3-refcheck builds its deck with
 * it, dsv3-export writes config.json back from a deck. */
#ifndef DSV3_HFCONFIG_H
#define DSV3_HFCONFIG_H

#include <stddef.h>

#include "deck.h"

/* Deck text under construction: s is NUL-terminated; oom is set (and further
 * adds ignored) when memory runs out. Start from {0}; free(s) after. */
typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} hf_text;
void hf_text_add(hf_text *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* v as a libconfig float literal: always with '.' or an exponent, so a deck
 * reads it as a float. */
void hf_float_literal(char *buf, size_t n, double v);

/* The text of a config.json (`path` names it in messages) as the libconfig
 * text `model = { ... };` (malloc'd), refusing architectures and features
 * dsv3 does not implement by name. mtp >= 0 overrides num_nextn_predict_layers
 * (0: the reference has no MTP); mtp < 0 keeps the config's. NULL with err
 * ("path: ...") on error. */
char *hf_config_model_group(const char *text, const char *path, int mtp, char *err, int errlen);

/* config.json text for a deck's model (transformers' DeepseekV3Config names;
 * quantization_config only when with_quant and the model is FP8). malloc'd. */
char *hf_config_json(const deck_model *m, int with_quant);

#endif
