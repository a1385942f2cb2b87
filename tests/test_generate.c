/* test_generate.c — the sampler (gen_sample, src/generate.c) against the
 * distribution it must draw from: DeepSeek's generate.py softmax(logits/T),
 * cut to the top_k largest, then to the smallest prefix whose mass reaches
 * top_p, renormalised. 40000 draws (steps 0..39999 of one prompt index: the
 * counter-based generator's keys) per setting; every empirical frequency
 * within 5 standard deviations of its probability, the cut tokens never drawn.
 * Also: temperature 0 = argmax (lowest id on ties), a draw depends only on
 * (seed, index, step), and another seed gives other draws. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../src/generate.h"

enum { V = 7, DRAWS = 40000 };
static const float LOGITS[V] = {1.0f, 3.0f, -2.0f, 2.5f, 0.0f, 2.9f, -1.0f};

/* Expected probabilities for (temperature, top_k, top_p), by hand from the definition. */
static void expected(double *p, double temp, int top_k, double top_p) {
    int order[V];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 0; i < V; i++) /* sort by logit, descending */
        for (int j = i + 1; j < V; j++)
            if (LOGITS[order[j]] > LOGITS[order[i]]) { int t = order[i]; order[i] = order[j]; order[j] = t; }
    int K = top_k > 0 && top_k < V ? top_k : V;
    double w[V], s = 0;
    for (int k = 0; k < K; k++) s += w[k] = exp((LOGITS[order[k]] - LOGITS[order[0]]) / temp);
    if (top_p < 1.0) {
        double c = 0;
        for (int k = 0; k < K; k++) {
            c += w[k];
            if (c >= top_p * s) { K = k + 1; break; }
        }
    }
    s = 0;
    for (int k = 0; k < K; k++) s += w[k];
    for (int i = 0; i < V; i++) p[i] = 0;
    for (int k = 0; k < K; k++) p[order[k]] = w[k] / s;
}

static void check(double temp, int top_k, double top_p) {
    gen_opts o = {.temperature = temp, .top_p = top_p, .top_k = top_k, .seed = 99, .max_new = 1, .eos = -1};
    float work[V];
    int idx[V];
    long n[V] = {0};
    for (int s = 0; s < DRAWS; s++) {
        int32_t t = gen_sample(LOGITS, V, &o, 3, s, work, idx);
        assert_true(t >= 0 && t < V);
        n[t]++;
    }
    double p[V];
    expected(p, temp, top_k, top_p);
    double worst = 0;
    for (int i = 0; i < V; i++) {
        double f = (double)n[i] / DRAWS, sd = sqrt(p[i] * (1 - p[i]) / DRAWS);
        if (p[i] == 0) {
            if (n[i]) fail_msg("T=%g top_k=%d top_p=%g: token %d is cut but drawn %ld times", temp, top_k, top_p, i, n[i]);
            continue;
        }
        double z = fabs(f - p[i]) / sd;
        worst = z > worst ? z : worst;
        if (z > 5) fail_msg("T=%g top_k=%d top_p=%g: token %d drawn %.4f, probability %.4f (%.1f sd)", temp, top_k,
                            top_p, i, f, p[i], z);
    }
    printf("T=%g top_k=%d top_p=%g: %d draws, worst deviation %.2f sd\n", temp, top_k, top_p, DRAWS, worst);
}

static void test_distribution(void **state) {
    (void)state;
    check(1.0, 0, 1.0);
    check(0.5, 0, 1.0);
    check(2.0, 0, 1.0);
    check(1.0, 3, 1.0);
    check(1.0, 0, 0.8);
    check(0.7, 4, 0.9);
}

static void test_greedy_and_keys(void **state) {
    (void)state;
    float work[V];
    int idx[V];
    gen_opts g = {.temperature = 0, .top_p = 1, .top_k = 0, .seed = 1, .max_new = 1, .eos = -1};
    assert_int_equal(gen_sample(LOGITS, V, &g, 0, 0, work, idx), 1);
    const float tie[4] = {0.5f, 2.0f, 2.0f, 1.0f};
    assert_int_equal(gen_sample(tie, 4, &g, 0, 0, work, idx), 1); /* lowest id on ties */
    gen_opts o = {.temperature = 1.0, .top_p = 1, .top_k = 0, .seed = 5, .max_new = 1, .eos = -1};
    int32_t a[64], b[64];
    int differ = 0;
    for (int s = 0; s < 64; s++) {
        a[s] = gen_sample(LOGITS, V, &o, 7, s, work, idx);
        assert_int_equal(gen_sample(LOGITS, V, &o, 7, s, work, idx), a[s]); /* a pure function of its keys */
    }
    o.seed = 6;
    for (int s = 0; s < 64; s++) differ += (b[s] = gen_sample(LOGITS, V, &o, 7, s, work, idx)) != a[s];
    assert_true(differ > 10);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_greedy_and_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
