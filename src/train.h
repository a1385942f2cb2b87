/* train.h — the step loop: data → forward/backward → gradient reduction
 * (data parallel + ZeRO) → clipping → AdamW → router-bias update → logs and
 * checkpoints. */
#ifndef DSV3_TRAIN_H
#define DSV3_TRAIN_H

#include "deck.h"
#include "plan.h"

/* Runs the deck's job on every rank of p->world. Returns 0 on success, non-zero
 * after a message (every rank returns the same status). */
int train_run(const deck *d, plan *p);

#endif
