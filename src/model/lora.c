/* lora.c — the LoRA target rule (lora.h). */
#include "lora.h"

#include <string.h>

int lora_rank_of(const deck_lora *lora, const char *module, int is_mtp) {
    if (!lora || !lora->enabled || is_mtp) return 0;
    for (int i = 0; i < lora->n_targets; i++)
        if (strcmp(lora->targets[i], module) == 0) return lora->r;
    return 0;
}

float lora_scaling(const deck_lora *lora) { return (float)(lora->alpha / lora->r); }
