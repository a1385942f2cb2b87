/* peft.h — LoRA adapters as a PEFT adapter directory (dsv3-spec.md §9):
 * adapter_config.json (PEFT's fields, sorted keys) and adapter_model.safetensors
 * with keys base_model.model.<module>.lora_{A,B}.weight, layers 0..L-1 (HF has
 * no MTP layer), F32 by default as PEFT saves. Read from a dsv3 checkpoint's
 * /lora datasets (full or adapters-only). Every tensor's byte size is checked
 * on write, so an empty adapter file cannot be produced. Used by dsv3-export
 * --adapters and by the trainer after every save of a LoRA run. */
#ifndef DSV3_PEFT_H
#define DSV3_PEFT_H

#include <stddef.h>
#include <stdint.h>

#include "deck.h"

/* The PEFT name of checkpoint tensor `name`: "base_model.model." + name, and for
 * a stacked routed-expert adapter (expert >= 0) expert e's own module:
 * model.layers.3.mlp.experts.gate_proj.lora_A.weight -> ...mlp.experts.<e>.gate_proj.lora_A.weight. */
void peft_name(char *out, size_t len, const char *name, int64_t expert);
/* Writes dir/ (created; the files via .tmp and rename) from checkpoint ckpt
 * whose deck is d. Returns the number of adapter tensors written (> 0), or -1
 * with err set. *bytes (may be NULL) gets the tensor bytes. One process. */
int peft_write(const char *ckpt, const deck *d, const char *dir, int bf16, double *bytes, char *err, int errlen);

#endif
