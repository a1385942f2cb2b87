/* log.h — what a run tells its user, all from rank 0: the progress line (with
 * ETA), <output_dir>/metrics.csv and, when logging.tensorboard is set,
 * TensorBoard event files (tb.h).
 *
 * TensorBoard tags: every metrics.csv column under its header name ("loss",
 * "lm_loss", ..., "t_reduce"; "val_loss" and "val_acc" only at evaluated steps), plus
 * "moe_imbalance/layer_<L>" (max load / mean load of MoE layer L, HF layer
 * number; MTP layers follow the main ones), "memory/allocated_MiB" (per rank:
 * model + optimizer + activations) and "eta_s". */
#ifndef DSV3_LOG_H
#define DSV3_LOG_H

#include <stdint.h>
#include <stdio.h>

#include "tb.h"

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
    int64_t skipped;               /* steps skipped so far for a non-finite loss or gradient norm */
    double val_acc;                /* validation next-token accuracy (argmax = target), NAN when not evaluated */
} log_row;

typedef struct {
    FILE *csv;
    int rank;
    char dir[4096];      /* run.output_dir */
    int64_t resume_step; /* step the run started from */
    int tb_on;
    tb_writer tb;
} log_ctx;

/* Rank 0 opens <dir>/metrics.csv (append when resuming at step > 0, keeping the
 * rows up to that step). Returns 0 or -1 with err set. */
int log_open(log_ctx *l, int rank, const char *dir, int64_t resume_step, char *err, int errlen);
/* Rank 0 opens TensorBoard event files in `tbdir` (logging.tensorboard): a
 * relative path is taken under run.output_dir (the `dir` of log_open), an
 * absolute one as is; "" = off. Each run writes a new events file that begins
 * with a SessionLog START at its first step, so TensorBoard drops the stale
 * steps of earlier files (a resumed or restarted run). Call right after log_open. Returns 0 or -1 with err set. */
int log_open_tb(log_ctx *l, const char *tbdir, char *err, int errlen);
/* Appends the csv row (and the TensorBoard scalars); prints the progress line when `show`. */
void log_step(log_ctx *l, const log_row *r, int64_t total_steps, int show);
void log_close(log_ctx *l);
/* This process's resident set now and its high-water mark (VmRSS, VmHWM of
 * /proc/self/status), bytes; -1 when the system does not say. */
int log_proc_rss(double *rss, double *hwm);

#endif
