/* lora.c — the LoRA target rule (lora.h). */
#include "lora.h"

#include <math.h>
#include <string.h>

const char *const lora_target_names[] = {
    "self_attn.q_a_proj", "self_attn.q_b_proj", "self_attn.q_proj",
    "self_attn.kv_a_proj_with_mqa", "self_attn.kv_b_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    "mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj", "mlp.shared_experts.down_proj",
    "mlp.experts.gate_proj", "mlp.experts.up_proj", "mlp.experts.down_proj", /* per routed expert */
    NULL};

int lora_module_index(const char *module) {
    for (int i = 0; lora_target_names[i]; i++)
        if (!strcmp(lora_target_names[i], module)) return i;
    return -1;
}

int lora_rank_of(const deck_lora *lora, const char *module, int is_mtp) {
    if (!lora || !lora->enabled || is_mtp) return 0;
    for (int i = 0; i < lora->n_targets; i++)
        if (strcmp(lora->targets[i], module) == 0) return lora->r;
    return 0;
}

float lora_scaling(const deck_lora *lora) {
    return (float)(lora->use_rslora ? lora->alpha / sqrt((double)lora->r) : lora->alpha / lora->r);
}
