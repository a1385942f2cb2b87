/* generate.c — prefill, decode steps and sampling (see generate.h). */
#include "generate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

/* SplitMix64 finaliser, chained over the key parts (as ops_cpu.c's fills). */
static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static double u01(uint64_t seed, uint64_t index, uint64_t step, uint64_t tok) {
    uint64_t r = mix64(mix64(mix64(mix64(seed) ^ index) ^ step) ^ tok);
    return ((double)(r >> 11) + 0.5) * (1.0 / 9007199254740992.0); /* (0,1) */
}

static int by_logit_desc(const void *a, const void *b, void *ctx) {
    const float *l = ctx;
    int i = *(const int *)a, j = *(const int *)b;
    if (l[i] != l[j]) return l[i] > l[j] ? -1 : 1;
    return (i > j) - (i < j); /* ties: lower id first (deterministic) */
}

int32_t gen_sample(const float *logits, int V, const gen_opts *o, uint64_t index, int step, float *work, int *idx) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    if (o->temperature <= 0) return best;
    double inv = 1.0 / o->temperature, mx = logits[best];
    int K = V;
    for (int v = 0; v < V; v++) idx[v] = v;
    if ((o->top_k > 0 && o->top_k < V) || o->top_p < 1.0) { /* candidates by logit, largest first */
        qsort_r(idx, (size_t)V, sizeof *idx, by_logit_desc, (void *)logits);
        if (o->top_k > 0 && o->top_k < V) K = o->top_k;
    }
    double sum = 0;
    for (int k = 0; k < K; k++) sum += work[k] = (float)exp((logits[idx[k]] - mx) * inv);
    if (o->top_p < 1.0) { /* the smallest prefix whose mass reaches top_p (at least one token) */
        double cum = 0;
        int keep = K;
        for (int k = 0; k < K; k++) {
            cum += work[k];
            if (cum >= o->top_p * sum) {
                keep = k + 1;
                break;
            }
        }
        K = keep;
    }
    /* p_k / E_k with E_k ~ Exp(1): the argmax is a draw from p renormalised over the K candidates */
    int pick = idx[0];
    double top = -1;
    for (int k = 0; k < K; k++) {
        double r = work[k] / -log(u01(o->seed, index, (uint64_t)step, (uint64_t)idx[k]));
        if (r > top) top = r, pick = idx[k];
    }
    return pick;
}

static float logprob(const float *l, int V, int32_t t) {
    double mx = l[0], s = 0;
    for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    for (int v = 0; v < V; v++) s += exp((double)l[v] - mx);
    return (float)((double)l[t] - mx - log(s));
}

static int32_t argmax(const float *l, int V) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (l[v] > l[best]) best = v;
    return best;
}

/* Appends token t (drawn from logits l) to s; 1 when s is finished. Position
 * checks as gen_run: the next token would be fed at len + n - 1. */
static int emit(gen_seq *s, const gen_opts *o, int len, int ctxlen, const float *l, int V, int32_t t, gen_step_fn fn,
                void *ctx, int64_t index) {
    if (fn) fn(ctx, index, s->n, l, V, t);
    s->ids[s->n] = t;
    s->logprobs[s->n] = logprob(l, V, t);
    s->n++;
    if (t == o->eos) s->stop = "eos";
    else if (s->n >= o->max_new) s->stop = "length";
    else if (len + s->n - 1 >= ctxlen) s->stop = "context";
    else return 0;
    return 1;
}

/* Self-speculative greedy decoding of prompt b with MTP drafts (generate.h). */
static int run_mtp(model *m, model_kv *kv, const deck_model *cfg, comm_t c, const int32_t *prompt, int len, int b,
                   int64_t index, int Tcap, const gen_opts *o, gen_seq *out, gen_step_fn fn, void *ctx, gen_stats *st,
                   float *lg, int32_t *next, char *err, int errlen) {
    const int V = cfg->vocab_size, ctxlen = cfg->max_position_embeddings;
    double t0 = comm_wtime();
    int zero = 0;
    out->n = 0;
    out->stop = "length";
    if (model_reshape(m, 1, len, err, errlen)) return -1;
    model_decode(m, kv, b, prompt, 1, len, &zero, 1);
    ops_to_host(lg, model_logits(m) + (size_t)(len - 1) * V, (size_t)V * sizeof *lg);
    int32_t d[3] = {argmax(lg, V), 0, 0}; /* rank 0's choices for everyone: the token, the bonus, the draft */
    comm_bcast(d, sizeof d, 0, c);
    int32_t cur = d[0], draft;
    int done = emit(out, o, len, ctxlen, lg, V, cur, fn, ctx, index);
    /* the MTP module over the prompt: row i sees the hidden state at i and token i+1 */
    for (int i = 0; i + 1 < len; i++) next[i] = prompt[i + 1];
    next[len - 1] = cur;
    if (!done) {
        model_decode_mtp(m, kv, b, next, 1, len, &zero);
        ops_argmax_rows(&d[2], model_logits(m) + (size_t)(len - 1) * V, 1, V); /* a draft needs no logits */
        comm_bcast(d, sizeof d, 0, c);
    }
    draft = d[2];
    if (st) st->prefill_s += comm_wtime() - t0, st->prefill_tokens += len;
    t0 = comm_wtime();
    int p = len; /* position of cur */
    while (!done) {
        if (p + 2 > Tcap) { /* no room for a draft: one plain step */
            if (model_reshape(m, 1, 1, err, errlen)) return -1;
            model_decode(m, kv, b, &cur, 1, 1, &p, 1);
            ops_to_host(lg, model_logits(m), (size_t)V * sizeof *lg);
            d[0] = argmax(lg, V);
            comm_bcast(d, sizeof d, 0, c);
            cur = d[0];
            done = emit(out, o, len, ctxlen, lg, V, cur, fn, ctx, index);
            p++;
            if (st) st->decode_steps++, st->decode_tokens++;
            continue;
        }
        if (model_reshape(m, 1, 2, err, errlen)) return -1;
        int32_t two[2] = {cur, draft};
        model_decode(m, kv, b, two, 1, 2, &p, 1);
        ops_to_host(lg, model_logits(m), (size_t)2 * V * sizeof *lg);
        d[0] = argmax(lg, V);
        d[1] = argmax(lg + V, V);
        comm_bcast(d, sizeof d, 0, c);
        int ok = d[0] == draft, emitted = 1;
        if (st) st->decode_steps++, st->drafts++, st->accepted += ok;
        done = emit(out, o, len, ctxlen, lg, V, d[0], fn, ctx, index);
        if (ok && !done) done = emit(out, o, len, ctxlen, lg + V, V, d[1], fn, ctx, index), emitted = 2;
        if (st) st->decode_tokens += emitted;
        if (done) break;
        /* the next draft: MTP rows at p (token after p is d[0]) and p+1 (accepted: token d[1]; else a
         * placeholder whose cache rows the next step overwrites before anything reads them) */
        int32_t nx[2] = {d[0], ok ? d[1] : d[0]};
        model_decode_mtp(m, kv, b, nx, 1, 2, &p);
        ops_argmax_rows(&d[2], model_logits(m) + (size_t)(ok ? 1 : 0) * V, 1, V);
        comm_bcast(d, sizeof d, 0, c);
        draft = d[2];
        cur = ok ? d[1] : d[0];
        p += ok ? 2 : 1;
    }
    if (st) st->decode_s += comm_wtime() - t0;
    return 0;
}

int gen_run(model *m, const deck_model *cfg, comm_t c, const int32_t *const *prompts, const int *lens, int B,
            int64_t first, const gen_opts *o, gen_seq *out, gen_step_fn fn, void *ctx, gen_stats *st, char *err,
            int errlen) {
    const int V = cfg->vocab_size, ctxlen = cfg->max_position_embeddings;
    int maxlen = 0;
    for (int b = 0; b < B; b++) {
        if (lens[b] < 1) {
            snprintf(err, errlen, "prompt %lld is empty", (long long)(first + b));
            return -1;
        }
        if (lens[b] >= ctxlen) {
            snprintf(err, errlen, "prompt %lld has %d tokens: it leaves no room in the model's context of %d "
                     "(model.max_position_embeddings)", (long long)(first + b), lens[b], ctxlen);
            return -1;
        }
        maxlen = lens[b] > maxlen ? lens[b] : maxlen;
    }
    /* positions: a prompt's tokens, then every generated token but the last is fed back (MTP drafts: one more, and
     * room for a 2-token step) */
    int want = maxlen + o->max_new + (o->mtp_draft ? 1 : -1);
    int Tcap = want < ctxlen ? want : ctxlen;
    if (Tcap < maxlen) Tcap = maxlen;
    int rows = maxlen > B ? maxlen : B;
    if (o->mtp_draft && o->temperature > 0) {
        snprintf(err, errlen, "MTP drafts (self-speculative decoding) are for greedy decoding (temperature 0)");
        return -1;
    }
    model_kv *kv = NULL;
    float *lg = malloc((size_t)(B > 2 ? B : 2) * V * sizeof *lg), *work = malloc((size_t)V * sizeof *work);
    int *idx = malloc((size_t)V * sizeof *idx), *pos = calloc((size_t)B, sizeof *pos), *live = calloc((size_t)B, sizeof *live);
    int *feed = calloc((size_t)B, sizeof *feed); /* positions of a decode step */
    int32_t *next = calloc((size_t)(B > maxlen ? B : maxlen), sizeof *next);
    int rc = -1;
    if (!lg || !work || !idx || !pos || !live || !next || !feed) {
        snprintf(err, errlen, "out of memory for the sampler (vocabulary %d)", V);
        goto out;
    }
    if (model_kv_create(&kv, m, B, Tcap, rows, o->mtp_draft, err, errlen)) goto out;
    if (o->mtp_draft) {
        for (int b = 0; b < B; b++)
            if (run_mtp(m, kv, cfg, c, prompts[b], lens[b], b, first + b, Tcap, o, &out[b], fn, ctx, st, lg, next, err,
                        errlen))
                goto out;
        rc = 0;
        goto out;
    }
    /* prefill: each prompt in one pass into its cache slot; its last row's logits */
    double t0 = comm_wtime();
    for (int b = 0; b < B; b++) {
        int zero = 0;
        if (model_reshape(m, 1, lens[b], err, errlen)) goto out;
        model_decode(m, kv, b, prompts[b], 1, lens[b], &zero, 0);
        ops_to_host(lg + (size_t)b * V, model_logits(m), (size_t)V * sizeof *lg);
        pos[b] = lens[b];
        live[b] = 1;
        out[b].n = 0;
        out[b].stop = "length";
    }
    if (st) st->prefill_s += comm_wtime() - t0;
    t0 = comm_wtime();
    for (int step = 0;; step++) {
        int any = 0;
        for (int b = 0; b < B; b++) {
            if (!live[b]) continue;
            next[b] = gen_sample(lg + (size_t)b * V, V, o, (uint64_t)(first + b), step, work, idx);
        }
        comm_bcast(next, (size_t)B * sizeof *next, 0, c); /* rank 0's draw for everyone */
        for (int b = 0; b < B; b++) {
            if (!live[b]) continue;
            live[b] = !emit(&out[b], o, lens[b], ctxlen, lg + (size_t)b * V, V, next[b], fn, ctx, first + b);
            any |= live[b];
        }
        if (!any) break;
        /* one step for the batch; finished sequences rewrite their last row (ignored) */
        for (int b = 0; b < B; b++) {
            feed[b] = live[b] ? pos[b] : pos[b] - 1;
            if (!live[b]) next[b] = 0;
        }
        if (model_reshape(m, B, 1, err, errlen)) goto out;
        model_decode(m, kv, 0, next, B, 1, feed, 1);
        ops_to_host(lg, model_logits(m), (size_t)B * V * sizeof *lg);
        for (int b = 0; b < B; b++) pos[b] += live[b];
        if (st) {
            st->decode_steps++;
            for (int b = 0; b < B; b++) st->decode_tokens += live[b];
        }
    }
    if (st) {
        st->decode_s += comm_wtime() - t0;
        for (int b = 0; b < B; b++) st->prefill_tokens += lens[b];
    }
    rc = 0;
out:
    model_kv_free(kv);
    free(lg), free(work), free(idx), free(pos), free(live), free(next), free(feed);
    return rc;
}
