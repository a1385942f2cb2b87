/* peft.h — LoRA adapters as a PEFT adapter directory (dsv3-spec.md §9):
 * adapter_config.json (PEFT's fields, sorted keys) and adapter_model.safetensors
 * with keys base_model.model.<module>.lora_{A,B}.weight, layers 0..L-1 (HF has
 * no MTP layer), F32 by default as PEFT saves. Read from a dsv3 checkpoint's
 * /lora datasets (full or adapters-only). Every tensor's byte size is checked
 * on write, so an empty adapter file cannot be produced. Used by dsv3-export
 * --adapters and by the trainer after every save of a LoRA run. */
#ifndef DSV3_PEFT_H
#define DSV3_PEFT_H

#include "deck.h"

/* Writes dir/ (created; the files via .tmp and rename) from checkpoint ckpt
 * whose deck is d. Returns the number of adapter tensors written (> 0), or -1
 * with err set. *bytes (may be NULL) gets the tensor bytes. One process. */
int peft_write(const char *ckpt, const deck *d, const char *dir, int bf16, double *bytes, char *err, int errlen);

#endif
