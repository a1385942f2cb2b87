/* log.c — progress line and metrics.csv. */
#include "log.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *HEADER =
    "step,loss,lm_loss,mtp_loss,aux_loss,lr,grad_norm,tokens,tok_per_s,val_loss,max_imbalance,t_step,t_a2a,"
    "t_reduce\n";

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
        fprintf(l->csv, "%.4f,%.4f,%.4f,%.4f\n", r->max_imbalance, r->t_step, r->t_a2a, r->t_reduce);
        fflush(l->csv);
    }
}

void log_close(log_ctx *l) {
    if (l->csv) fclose(l->csv);
    l->csv = NULL;
}
