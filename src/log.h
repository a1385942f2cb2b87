/* log.h — what a run tells its user: the progress line on rank 0 and
 * <output_dir>/metrics.csv (TensorBoard events come with their issue). */
#ifndef DSV3_LOG_H
#define DSV3_LOG_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
    int64_t step;        /* 1-based optimizer step just finished */
    double loss, lm_loss, mtp_loss, aux_loss, lr, grad_norm;
    int64_t tokens;      /* tokens seen so far (global) */
    double tok_per_s;    /* this step, wall clock */
    double val_loss;     /* NAN when not evaluated at this step */
    double max_imbalance;/* max over MoE layers of (max load / mean load) */
    double t_step, t_a2a, t_reduce; /* seconds: step, MoE all-to-all, gradient reduction */
    double eta_s;        /* seconds left */
    int n_moe;           /* MoE layers (incl. MTP) below */
    const int *moe_layer;          /* [n_moe] HF layer numbers */
    const double *layer_imbalance; /* [n_moe] max load / mean load of this step */
    double mem_allocated;          /* bytes allocated per rank (model + optimizer) */
} log_row;

typedef struct {
    FILE *csv;
    int rank;
} log_ctx;

/* Rank 0 opens <dir>/metrics.csv (append when resuming at step > 0, keeping the
 * rows up to that step). Returns 0 or -1 with err set. */
int log_open(log_ctx *l, int rank, const char *dir, int64_t resume_step, char *err, int errlen);
/* Appends the csv row; prints the progress line when `show`. */
void log_step(log_ctx *l, const log_row *r, int64_t total_steps, int show);
void log_close(log_ctx *l);

#endif
