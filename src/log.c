/* log.c — progress line, metrics.csv and TensorBoard scalars (tb.c). */
#include "log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *HEADER =
    "step,loss,lm_loss,mtp_loss,aux_loss,lr,grad_norm,tokens,tok_per_s,val_loss,max_imbalance,skipped,t_step,t_a2a,"
    "t_reduce,val_acc\n";

/* Keep the header and rows with step <= keep (a resumed run rewrites what follows). */
static int truncate_rows(const char *path, int64_t keep) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *o = fopen(tmp, "w");
    if (!o) {
        fclose(f);
        return -1;
    }
    char line[4096];
    int first = 1;
    while (fgets(line, sizeof line, f)) {
        if (first || atoll(line) <= keep) fputs(line, o);
        first = 0;
    }
    fclose(f);
    fclose(o);
    return rename(tmp, path);
}

int log_open(log_ctx *l, int rank, const char *dir, int64_t resume_step, char *err, int errlen) {
    memset(l, 0, sizeof *l);
    l->rank = rank;
    snprintf(l->dir, sizeof l->dir, "%s", dir);
    l->resume_step = resume_step;
    if (rank != 0) return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/metrics.csv", dir);
    FILE *old = resume_step > 0 ? fopen(path, "r") : NULL; /* a resumed run continues its own csv */
    if (old) {
        fclose(old);
        if (truncate_rows(path, resume_step) == 0 && (l->csv = fopen(path, "a"))) return 0;
    }
    l->csv = fopen(path, "w");
    if (!l->csv) {
        snprintf(err, errlen, "cannot write %s", path);
        return -1;
    }
    fputs(HEADER, l->csv);
    fflush(l->csv);
    return 0;
}

int log_open_tb(log_ctx *l, const char *tbdir, char *err, int errlen) {
    if (l->rank != 0 || !tbdir || !tbdir[0]) return 0;
    char path[4200];
    if (tbdir[0] == '/')
        snprintf(path, sizeof path, "%s", tbdir);
    else if (snprintf(path, sizeof path, "%s/%s", l->dir, tbdir) >= (int)sizeof path) {
        snprintf(err, errlen, "logging.tensorboard: path too long");
        return -1;
    }
    if (tb_open(&l->tb, path, err, errlen)) return -1;
    /* steps from resume_step+1 on are (re)written by this run: stale ones of older files are dropped */
    if (tb_start(&l->tb, l->resume_step + 1)) {
        snprintf(err, errlen, "logging.tensorboard: write error on %s", l->tb.path);
        tb_close(&l->tb);
        return -1;
    }
    l->tb_on = 1;
    return 0;
}

/* One Event per step with every scalar of the row. */
static void tb_row(log_ctx *l, const log_row *r) {
    enum { FIXED = 16, MAXL = 64 };
    const char *tags[FIXED + MAXL];
    double vals[FIXED + MAXL];
    char names[MAXL][40];
    int n = 0;
#define PUT(t, v) (tags[n] = (t), vals[n] = (v), n++)
    PUT("loss", r->loss);
    PUT("lm_loss", r->lm_loss);
    PUT("mtp_loss", r->mtp_loss);
    PUT("aux_loss", r->aux_loss);
    PUT("lr", r->lr);
    PUT("grad_norm", r->grad_norm);
    PUT("tokens", (double)r->tokens);
    PUT("tok_per_s", r->tok_per_s);
    if (!isnan(r->val_loss)) PUT("val_loss", r->val_loss);
    if (!isnan(r->val_acc)) PUT("val_acc", r->val_acc);
    PUT("max_imbalance", r->max_imbalance);
    PUT("skipped", (double)r->skipped);
    PUT("t_step", r->t_step);
    PUT("t_a2a", r->t_a2a);
    PUT("t_reduce", r->t_reduce);
    PUT("memory/allocated_MiB", r->mem_allocated / 1048576.0);
    PUT("eta_s", r->eta_s);
    for (int i = 0; i < r->n_moe && i < MAXL && r->moe_layer && r->layer_imbalance; i++) {
        snprintf(names[i], sizeof names[i], "moe_imbalance/layer_%d", r->moe_layer[i]);
        PUT(names[i], r->layer_imbalance[i]);
    }
#undef PUT
    if (tb_scalars(&l->tb, r->step, n, tags, vals)) {
        fprintf(stderr, "dsv3: warning: logging.tensorboard: write error on %s; TensorBoard logging stopped\n",
                l->tb.path);
        tb_close(&l->tb);
        l->tb_on = 0;
    }
}

static void fmt_eta(char *s, size_t n, double sec) {
    if (!isfinite(sec) || sec < 0) sec = 0;
    long t = (long)(sec + 0.5);
    snprintf(s, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

void log_step(log_ctx *l, const log_row *r, int64_t total_steps, int show) {
    if (l->rank != 0) return;
    if (show) {
    char eta[32];
    fmt_eta(eta, sizeof eta, r->eta_s);
    printf("step %6lld/%lld | loss %.4f lm %.4f mtp %.4f bal %.2e | lr %.3e | gnorm %.3f | %.0f tok/s | "
           "a2a %.0f%% reduce %.0f%% | imb %.2f",
           (long long)r->step, (long long)total_steps, r->loss, r->lm_loss, r->mtp_loss, r->aux_loss, r->lr,
           r->grad_norm, r->tok_per_s, r->t_step > 0 ? 100 * r->t_a2a / r->t_step : 0.0,
           r->t_step > 0 ? 100 * r->t_reduce / r->t_step : 0.0, r->max_imbalance);
    if (!isnan(r->val_loss)) printf(" | val %.4f", r->val_loss);
    if (!isnan(r->val_acc)) printf(" acc %.1f%%", 100 * r->val_acc);
    if (r->skipped) printf(" | skipped %lld", (long long)r->skipped);
    printf(" | ETA %s\n", eta);
    fflush(stdout);
    }
    if (l->csv) {
        fprintf(l->csv, "%lld,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%lld,%.1f,", (long long)r->step, r->loss, r->lm_loss,
                r->mtp_loss, r->aux_loss, r->lr, r->grad_norm, (long long)r->tokens, r->tok_per_s);
        if (isnan(r->val_loss))
            fprintf(l->csv, ",");
        else
            fprintf(l->csv, "%.9g,", r->val_loss);
        fprintf(l->csv, "%.4f,%lld,%.4f,%.4f,%.4f,", r->max_imbalance, (long long)r->skipped, r->t_step, r->t_a2a,
                r->t_reduce);
        if (isnan(r->val_acc))
            fprintf(l->csv, "\n");
        else
            fprintf(l->csv, "%.9g\n", r->val_acc);
        fflush(l->csv);
    }
    if (l->tb_on) tb_row(l, r);
}

void log_close(log_ctx *l) {
    if (l->csv) fclose(l->csv);
    l->csv = NULL;
    if (l->tb_on) tb_close(&l->tb);
    l->tb_on = 0;
}

int log_proc_rss(double *rss, double *hwm) {
    *rss = *hwm = -1.0;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        double kb;
        if (sscanf(line, "VmRSS: %lf kB", &kb) == 1) *rss = kb * 1024.0;
        if (sscanf(line, "VmHWM: %lf kB", &kb) == 1) *hwm = kb * 1024.0;
    }
    fclose(f);
    return *rss >= 0 && *hwm >= 0 ? 0 : -1;
}
