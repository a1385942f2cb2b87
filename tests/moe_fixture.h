/* moe_fixture.h — a small random MoE layer shared by test_moe.c and test_moe_ep.c.
 * All values are a pure function of the seed, so every rank builds the same layer. */
#ifndef DSV3_TEST_MOE_FIXTURE_H
#define DSV3_TEST_MOE_FIXTURE_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/deck.h"
#include "../src/model/moe.h"

static inline uint64_t fx_mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* uniform in [lo, hi) from (seed, stream, index) */
static inline float fx_unif(uint64_t seed, uint64_t stream, uint64_t i, float lo, float hi) {
    uint64_t r = fx_mix(fx_mix(seed * 0x100000001b3ULL + stream) ^ i);
    return lo + (hi - lo) * (float)((r >> 40) * (1.0 / 16777216.0));
}
static inline void fx_fill(float *p, size_t n, uint64_t seed, uint64_t stream, float lo, float hi) {
    for (size_t i = 0; i < n; i++) p[i] = fx_unif(seed, stream, i, lo, hi);
}

typedef struct {
    deck_model m;
    int E, H, I, Is, K;
    float *gate_w, *gate_g, *bias;        /* [E,H], [E,H], [E] */
    float *sg, *su, *sd, *gsg, *gsu, *gsd; /* shared [Is,H], [Is,H], [H,Is] */
    float *eg, *eu, *ed, *geg, *geu, *ged; /* all experts [E,I,H], [E,I,H], [E,H,I] */
} moe_fix;

static inline void fx_init(moe_fix *f, int E, int H, int I, int K, int ng, int kg, int n_shared, double alpha,
                           uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->m.hidden_size = H;
    f->m.moe_intermediate_size = I;
    f->m.n_routed_experts = E;
    f->m.n_shared_experts = n_shared;
    f->m.num_experts_per_tok = K;
    f->m.n_group = ng;
    f->m.topk_group = kg;
    f->m.routed_scaling_factor = 2.5;
    f->m.norm_topk_prob = true;
    f->m.aux_loss_alpha = alpha;
    f->E = E, f->H = H, f->I = I, f->K = K, f->Is = I * n_shared;
    size_t EH = (size_t)E * H, EIH = (size_t)E * I * H, IsH = (size_t)f->Is * H;
    f->gate_w = malloc(EH * 4), f->gate_g = calloc(EH, 4), f->bias = malloc((size_t)E * 4);
    f->eg = malloc(EIH * 4), f->eu = malloc(EIH * 4), f->ed = malloc(EIH * 4);
    f->geg = calloc(EIH, 4), f->geu = calloc(EIH, 4), f->ged = calloc(EIH, 4);
    f->sg = malloc(IsH * 4 + 4), f->su = malloc(IsH * 4 + 4), f->sd = malloc(IsH * 4 + 4);
    f->gsg = calloc(IsH + 1, 4), f->gsu = calloc(IsH + 1, 4), f->gsd = calloc(IsH + 1, 4);
    float a = 2.0f / sqrtf((float)H), b = 1.0f / sqrtf((float)H), c = 1.0f / sqrtf((float)I);
    fx_fill(f->gate_w, EH, seed, 1, -a, a);
    fx_fill(f->bias, (size_t)E, seed, 2, -0.3f, 0.3f);
    fx_fill(f->eg, EIH, seed, 3, -b, b);
    fx_fill(f->eu, EIH, seed, 4, -b, b);
    fx_fill(f->ed, EIH, seed, 5, -c, c);
    fx_fill(f->sg, IsH, seed, 6, -b, b);
    fx_fill(f->su, IsH, seed, 7, -b, b);
    fx_fill(f->sd, IsH, seed, 8, -c, c);
}

static inline void fx_zero_grads(moe_fix *f) {
    size_t EH = (size_t)f->E * f->H, EIH = (size_t)f->E * f->I * f->H, IsH = (size_t)f->Is * f->H;
    memset(f->gate_g, 0, EH * 4);
    memset(f->geg, 0, EIH * 4), memset(f->geu, 0, EIH * 4), memset(f->ged, 0, EIH * 4);
    memset(f->gsg, 0, IsH * 4), memset(f->gsu, 0, IsH * 4), memset(f->gsd, 0, IsH * 4);
}

static inline void fx_free(moe_fix *f) {
    free(f->gate_w), free(f->gate_g), free(f->bias);
    free(f->eg), free(f->eu), free(f->ed), free(f->geg), free(f->geu), free(f->ged);
    free(f->sg), free(f->su), free(f->sd), free(f->gsg), free(f->gsu), free(f->gsd);
}

/* The layer view of experts [e_first, e_first+e_local). */
static inline moe_layer fx_layer(const moe_fix *f, int e_first, int e_local) {
    moe_layer l;
    memset(&l, 0, sizeof l);
    size_t IH = (size_t)f->I * f->H;
    l.gate_w = f->gate_w, l.gate_g = f->gate_g, l.bias = f->bias;
    l.has_shared = f->Is > 0;
    l.sh_gate = (linear){.w = f->sg, .g = f->gsg, .in = f->H, .out = f->Is};
    l.sh_up = (linear){.w = f->su, .g = f->gsu, .in = f->H, .out = f->Is};
    l.sh_down = (linear){.w = f->sd, .g = f->gsd, .in = f->Is, .out = f->H};
    l.eg = f->eg + e_first * IH, l.eu = f->eu + e_first * IH, l.ed = f->ed + e_first * IH;
    l.geg = f->geg + e_first * IH, l.geu = f->geu + e_first * IH, l.ged = f->ged + e_first * IH;
    l.e_first = e_first, l.e_local = e_local;
    return l;
}

#endif
