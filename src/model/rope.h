/* rope.h — RoPE frequencies with YaRN (dsv3-spec §4) and the MLA softmax
 * scale (§3.7), from the deck's model fields.
 *
 * rope_scaling_type "yarn": f'_i = (f_i/factor)·ramp_i + f_i·(1 − ramp_i), with
 * f_i = theta^(-2i/dr), ramp from the beta_fast/beta_slow correction range;
 * "none": f'_i = f_i. We use the deck's rope_factor (as [DS] does); [HF]
 * recomputes factor = max_position_embeddings / original_max_position_embeddings,
 * which is the same value (40) for the released configs.
 */
#ifndef DSV3_ROPE_H
#define DSV3_ROPE_H

#include "config.h"

typedef struct {
    int T;           /* rows (positions 0..T-1) */
    int half;        /* dr/2 pairs */
    /* device memory (ops_alloc), computed on the host and copied over */
    float *cos_t;    /* [T, half] cos(p·f'_i)·attention_factor */
    float *sin_t;    /* [T, half] sin(p·f'_i)·attention_factor */
    float *inv_freq; /* [half] f'_i (stored float, computed in double) */
    double attention_factor; /* YaRN cos/sin magnitude, 1.0 for DeepSeek-V3 */
} rope_table;

/* 1 if s <= 1, else 0.1·ms·ln(s) + 1 ([HF] yarn_get_mscale). */
double rope_yarn_get_mscale(double s, double ms);
/* f'_i in double, i = 0..qk_rope_head_dim/2 − 1. */
void rope_inv_freq(double *f, const deck_model *m);
/* [HF] _compute_yarn_parameters attention_factor: mscale(f, mscale)/mscale(f, mscale_all_dim) when both are
 * set (non-zero), else mscale(f, 1); 1.0 for "none". */
double rope_attention_factor(const deck_model *m);
/* qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)² under YaRN when mscale_all_dim != 0. */
float rope_softmax_scale(const deck_model *m);
/* cos/sin tables for positions 0..T-1 (angles and trig in double). Returns 0, -1 on bad config
 * (message on stderr) or allocation failure. */
int rope_table_build(rope_table *rt, const deck_model *m, int T);
void rope_table_free(rope_table *rt);

#endif
