/* optim.c — AdamW over flat slices, learning-rate schedules. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

double optim_lr(const deck *d, int64_t step) {
    const deck_schedule *s = &d->schedule;
    double lr = d->optimizer.lr, lo = s->min_lr;
    int64_t W = s->warmup_steps, N = s->decay_steps > 0 ? s->decay_steps : d->run.steps;
    if (strcmp(s->type, "warmup_decay") == 0) {
        /* DeepSpeed WarmupDecayLR (warmup_type "log", warmup_min_lr = min_lr):
         * gamma = ln(s+1)/ln(W) during warmup, then (N - s)/(N - W), clamped at 0. */
        double gamma;
        if (step < W)
            gamma = W > 1 ? log((double)step + 1.0) / log((double)W) : 1.0;
        else
            gamma = fmax(0.0, (double)(N - step) / (double)(N - W > 1 ? N - W : 1));
        return lo + (lr - lo) * gamma;
    }
    if (step < W) return lr * (double)(step + 1) / (double)W; /* linear warmup */
    if (strcmp(s->type, "constant") == 0) return lr;
    double frac = N > W ? (double)(step - W) / (double)(N - W) : 1.0;
    if (frac > 1.0) frac = 1.0;
    if (strcmp(s->type, "linear") == 0) return lr + (lo - lr) * frac;
    /* cosine */
    return lo + 0.5 * (lr - lo) * (1.0 + cos(M_PI * frac));
}

int optim_init(optim_state *s, size_t n) {
    memset(s, 0, sizeof *s);
    s->n = n;
    /* device memory: ops_adamw reads and writes the moments there (zeroed, charged to optim) */
    int old = ops_mem_category(OPS_MEM_OPTIM);
    s->m = ops_alloc(n * sizeof *s->m);
    s->v = ops_alloc(n * sizeof *s->v);
    ops_mem_category(old);
    return (s->m && s->v) ? 0 : -1;
}

void optim_free(optim_state *s) {
    ops_free(s->m);
    ops_free(s->v);
    memset(s, 0, sizeof *s);
}

void optim_step(const deck *d, const param_table *pt, float *w, const float *g, float *m, float *v, size_t lo,
                size_t hi, int64_t t, double lr, float grad_scale) {
    const deck_optimizer *o = &d->optimizer;
    for (int i = 0; i < pt->n; i++) {
        const param_spec *ts = &pt->t[i];
        if (ts->flags & (P_FROZEN | P_NOGRAD)) continue;
        size_t a = ts->offset, b = ts->offset + (size_t)ts->numel_local;
        if (b <= lo || a >= hi) continue;
        if (a < lo) a = lo;
        if (b > hi) b = hi;
        float wd = (ts->flags & P_NODECAY) ? 0.0f : (float)o->weight_decay;
        size_t k = a - lo;
        ops_adamw(w + k, g + k, m + k, v + k, b - a, (float)lr, (float)o->beta1, (float)o->beta2, (float)o->eps, wd,
                  (int)t, grad_scale);
    }
}

void optim_step_tensor(const deck *d, const param_spec *ts, float *w, const float *g, float *m, float *v, size_t n,
                       int64_t t, double lr, float grad_scale) {
    const deck_optimizer *o = &d->optimizer;
    if ((ts->flags & (P_FROZEN | P_NOGRAD)) || n == 0) return;
    float wd = (ts->flags & P_NODECAY) ? 0.0f : (float)o->weight_decay;
    ops_adamw(w, g, m, v, n, (float)lr, (float)o->beta1, (float)o->beta2, (float)o->eps, wd, (int)t, grad_scale);
}
