/* rope.c — YaRN inverse frequencies, mscale, cos/sin tables (dsv3-spec §4). */
#include "rope.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../ops.h"

static int rope_is_yarn(const deck_model *m) { return strcmp(m->rope_scaling_type, "yarn") == 0; }

double rope_yarn_get_mscale(double s, double ms) { return s <= 1.0 ? 1.0 : 0.1 * ms * log(s) + 1.0; }

/* dimension index whose wavelength makes `rot` turns over the original context */
static double yarn_corr_dim(double rot, int dim, double base, int orig) {
    return dim * log(orig / (rot * 2.0 * M_PI)) / (2.0 * log(base));
}

void rope_inv_freq(double *f, const deck_model *m) {
    int dim = m->qk_rope_head_dim, half = dim / 2;
    double base = m->rope_theta;
    for (int i = 0; i < half; i++) f[i] = pow(base, -2.0 * i / dim);
    if (!rope_is_yarn(m)) return;
    double factor = m->rope_factor;
    int orig = m->rope_original_max_position_embeddings;
    double low = floor(yarn_corr_dim(m->rope_beta_fast, dim, base, orig));
    double high = ceil(yarn_corr_dim(m->rope_beta_slow, dim, base, orig));
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001; /* avoid a zero-width ramp */
    for (int i = 0; i < half; i++) {
        double ramp = (i - low) / (high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        double smooth = 1.0 - ramp; /* 1: keep f_i (extrapolate), 0: f_i/factor (interpolate) */
        f[i] = f[i] / factor * (1.0 - smooth) + f[i] * smooth;
    }
}

double rope_attention_factor(const deck_model *m) {
    if (!rope_is_yarn(m)) return 1.0;
    double s = m->rope_factor;
    if (m->rope_mscale != 0.0 && m->rope_mscale_all_dim != 0.0)
        return rope_yarn_get_mscale(s, m->rope_mscale) / rope_yarn_get_mscale(s, m->rope_mscale_all_dim);
    return rope_yarn_get_mscale(s, 1.0);
}

float rope_softmax_scale(const deck_model *m) {
    double scale = 1.0 / sqrt((double)(m->qk_nope_head_dim + m->qk_rope_head_dim));
    if (rope_is_yarn(m) && m->rope_mscale_all_dim != 0.0) {
        double ms = rope_yarn_get_mscale(m->rope_factor, m->rope_mscale_all_dim);
        scale *= ms * ms;
    }
    return (float)scale;
}

/* Device tables (rope_table_alloc) and their host staging copy (staging_alloc):
 * the tables are computed on the host in double, then copied over. */
typedef struct {
    double *f;               /* [half] */
    float *cos_t, *sin_t;    /* [T, half] */
    float *inv_freq;         /* [half] */
} rope_staging;

static int rope_table_alloc(rope_table *rt, int T, int half) {
    rt->cos_t = ops_alloc((size_t)T * half * sizeof *rt->cos_t);
    rt->sin_t = ops_alloc((size_t)T * half * sizeof *rt->sin_t);
    rt->inv_freq = ops_alloc((size_t)half * sizeof *rt->inv_freq);
    return rt->cos_t && rt->sin_t && rt->inv_freq ? 0 : -1;
}

static void staging_free(rope_staging *h) {
    ops_host_free(h->f);
    ops_host_free(h->cos_t);
    ops_host_free(h->sin_t);
    ops_host_free(h->inv_freq);
    memset(h, 0, sizeof *h);
}

static int staging_alloc(rope_staging *h, int T, int half) {
    h->f = ops_host_alloc((size_t)half * sizeof *h->f);
    h->cos_t = ops_host_alloc((size_t)T * half * sizeof *h->cos_t);
    h->sin_t = ops_host_alloc((size_t)T * half * sizeof *h->sin_t);
    h->inv_freq = ops_host_alloc((size_t)half * sizeof *h->inv_freq);
    if (h->f && h->cos_t && h->sin_t && h->inv_freq) return 0;
    staging_free(h);
    return -1;
}

int rope_table_build(rope_table *rt, const deck_model *m, int T) {
    memset(rt, 0, sizeof *rt);
    int dim = m->qk_rope_head_dim;
    if (dim <= 0 || dim % 2 || T <= 0) {
        fprintf(stderr, "rope_table_build: qk_rope_head_dim %d must be even and > 0 (T %d)\n", dim, T);
        return -1;
    }
    if (!rope_is_yarn(m) && strcmp(m->rope_scaling_type, "none") != 0) {
        fprintf(stderr, "rope_table_build: unknown model.rope_scaling_type \"%s\" (yarn|none)\n",
                m->rope_scaling_type);
        return -1;
    }
    int half = dim / 2;
    rope_staging h = {0};
    if (staging_alloc(&h, T, half) || rope_table_alloc(rt, T, half)) {
        staging_free(&h);
        rope_table_free(rt);
        fprintf(stderr, "rope_table_build: out of memory for T=%d\n", T);
        return -1;
    }
    double *f = h.f;
    rope_inv_freq(f, m);
    double af = rope_attention_factor(m);
    for (int i = 0; i < half; i++) h.inv_freq[i] = (float)f[i];
    for (int p = 0; p < T; p++)
        for (int i = 0; i < half; i++) {
            double a = p * f[i];
            h.cos_t[(size_t)p * half + i] = (float)(cos(a) * af);
            h.sin_t[(size_t)p * half + i] = (float)(sin(a) * af);
        }
    ops_to_device(rt->cos_t, h.cos_t, (size_t)T * half * sizeof *h.cos_t);
    ops_to_device(rt->sin_t, h.sin_t, (size_t)T * half * sizeof *h.sin_t);
    ops_to_device(rt->inv_freq, h.inv_freq, (size_t)half * sizeof *h.inv_freq);
    staging_free(&h);
    rt->T = T;
    rt->half = half;
    rt->attention_factor = af;
    return 0;
}

void rope_table_free(rope_table *rt) {
    ops_free(rt->cos_t);
    ops_free(rt->sin_t);
    ops_free(rt->inv_freq);
    memset(rt, 0, sizeof *rt);
}
