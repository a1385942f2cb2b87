/* optim.h — AdamW (decoupled weight decay), global-norm clipping and LR
 * schedules, over the flat parameter layout of params.h. */
#ifndef DSV3_OPTIM_H
#define DSV3_OPTIM_H

#include "deck.h"
#include "model/params.h"

/* Learning rate at optimizer step `step` (0-based) for the deck's schedule. */
double optim_lr(const deck *d, int64_t step);

typedef struct {
    float *m, *v;        /* AdamW moments, same layout as the parameters they cover */
    size_t n;
    int64_t t;           /* steps taken */
} optim_state;

int optim_init(optim_state *s, size_t n);
void optim_free(optim_state *s);
/* One AdamW update of the floats [lo, hi) of the flat layout of `pt` (all of it
 * on one rank, a ZeRO shard otherwise). w, g, m, v point at flat index lo; t is
 * the 1-based step count.
 * grad_scale multiplies gradients first (clipping). Skips P_FROZEN/P_NOGRAD;
 * no decay for P_NODECAY. */
void optim_step(const deck *d, const param_table *pt, float *w, const float *g, float *m, float *v, size_t lo,
                size_t hi, int64_t t, double lr, float grad_scale);

/* AdamW on n floats of tensor `ts` alone (its decay flag): w, g, m, v point at
 * the same element of the tensor in their own layouts (the compact LoRA path). */
void optim_step_tensor(const deck *d, const param_spec *ts, float *w, const float *g, float *m, float *v, size_t n,
                       int64_t t, double lr, float grad_scale);

#endif
