/* lora.h — which projections carry LoRA adapters (PEFT semantics,
 * dsv3-spec.md §9). The one owner of the target rule: the tensor table
 * (params.c), the layer binding (model.c) and the cost formulas (cost.c)
 * all ask here. */
#ifndef DSV3_LORA_H
#define DSV3_LORA_H

#include "config.h"

/* LoRA rank of module `module` ("self_attn.q_a_proj", "mlp.gate_proj", ...)
 * in a decoder block: lora->r when adapters are on and the module is a
 * target, else 0. MTP blocks carry no adapters (PEFT targets the main
 * layers only). */
int lora_rank_of(const deck_lora *lora, const char *module, int is_mtp);
/* PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora. */
float lora_scaling(const deck_lora *lora);
/* The modules LoRA may target, relative to a decoder layer (HF / PEFT
 * names), NULL-terminated; and a module's index in it (-1: not a target).
 * "mlp.experts.gate_proj" etc. put one adapter pair on every routed expert
 * (stacked [E, r, in] / [E, out, r], owned with the expert). */
extern const char *const lora_target_names[];
int lora_module_index(const char *module);

#endif
