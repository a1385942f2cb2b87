/* train.c — the step loop over the plan's communicators.
 *
 * The global batch of step s is the samples (s, 0..G-1) of the loader,
 * whatever the rank count (design §1.2): rank r takes G/W consecutive
 * indices and runs them as grad_accum micro-batches. Loss scales use global
 * target counts known before the backward, so the summed gradient is that of
 * the global mean loss on any layout.
 *
 * ZeRO (design §3): dense segments reduce over world, expert segments over
 * the data communicator. Stage 0 all-reduces gradients and every rank updates
 * everything; stage 1 all-reduces, updates its shard and all-gathers the
 * parameters; stage 2 reduce-scatters gradients into its shard instead.
 * Shards are row-aligned (plan.h), so each is one contiguous range.
 */
#include "train.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ckpt.h"
#include "comm.h"
#include "data.h"
#include "error.h"
#include "log.h"
#include "model/model.h"
#include "model/moe.h" /* moe_load_imbalance */
#include "ops.h"
#include "ops_attn.h" /* ops_argmax_rows */
#include "optim.h"
#include "peft.h"
#include "zero.h"
#include "fsutil.h"

/* Set by SIGUSR1/SIGTERM (the batch system's warning): finish the step, save, exit 0. */
static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static double now(void) { return comm_wtime(); }

typedef struct {
    const deck *d;
    plan *p;
    model *m;
    data_loader *train, *valid;
    float *mo, *vo;      /* AdamW moments: full local (stage 0) or shard-packed */
    size_t optim_n;
    int64_t step;        /* optimizer steps done */
    int64_t tokens;
    int32_t *tok, *tgt;  /* [accum, mb, T] this rank's samples of the step */
    double t_reduce;
    int64_t bias_checks; /* steps at which the router biases were verified identical on all ranks */
    int64_t optim_t;     /* AdamW updates applied (steps minus skipped steps) */
    int64_t skipped;     /* steps skipped for a non-finite loss or gradient norm, in all */
    int consecutive;     /* ... in a row, up to this step */
    float *bias_shadow;  /* [n_moe, E] device, sharded masters: the biases as the global counts say they must be */
} trainer;

/* This rank's samples of step s: global indices [r*G/W, (r+1)*G/W). */
/* After the first step: what this rank really holds, counted by the ops
 * allocator per category at its high-water mark, against the plan's estimate
 * for this rank (the numbers --dry-run prints), and the process's peak RSS.
 * Rank 0 prints its own categories and a row per rank; returns this rank's
 * allocated bytes. Collective. */
static double memory_report(trainer *t, double rss0) {
    const plan *p = t->p;
    ops_mem_stats st;
    ops_mem_get(&st);
    double rss, hwm;
    log_proc_rss(&rss, &hwm);
    const plan_memory *pm = &p->mem;
    double alloc = st.peak[OPS_MEM_PARAMS] + st.peak[OPS_MEM_GRADS] + st.peak[OPS_MEM_OPTIM] + st.peak[OPS_MEM_ACTS];
    /* per rank: planned, allocated, untracked (ops allocations outside the plan's categories), peak RSS, RSS
     * growth, then each category planned/allocated */
    enum { NV = 13 };
    static const char *cname[4] = {"params", "grads", "optim", "acts"};
    double mine[NV] = {pm->total, alloc, st.peak[OPS_MEM_OTHER], hwm, hwm >= 0 && rss0 >= 0 ? hwm - rss0 : -1.0,
                       pm->params, st.peak[OPS_MEM_PARAMS], pm->grads, st.peak[OPS_MEM_GRADS],
                       pm->optim, st.peak[OPS_MEM_OPTIM], pm->acts, st.peak[OPS_MEM_ACTS]};
    int n = comm_size(p->world), rank = comm_rank(p->world);
    double *all = rank == 0 ? malloc(sizeof mine * (size_t)n) : NULL;
    comm_gather_bytes(mine, all, sizeof mine, 0, p->world);
    if (rank == 0) {
        const double MiB = 1048576.0;
        printf("dsv3: memory per rank (MiB) allocated: params %.2f grads %.2f optim %.2f acts %.2f = %.2f | "
               "planned (--dry-run): params %.2f grads %.2f optim %.2f acts %.2f = %.2f | ratio %.3f\n",
               st.peak[OPS_MEM_PARAMS] / MiB, st.peak[OPS_MEM_GRADS] / MiB, st.peak[OPS_MEM_OPTIM] / MiB,
               st.peak[OPS_MEM_ACTS] / MiB, alloc / MiB, pm->params / MiB, pm->grads / MiB, pm->optim / MiB,
               pm->acts / MiB, pm->total / MiB, pm->total > 0 ? alloc / pm->total : 0.0);
        double lo = INFINITY, hi = 0.0;
        int exact = 0;
        for (int r = 0; all && r < n; r++) {
            double *v = all + NV * r, q = v[0] > 0 ? v[1] / v[0] : 0.0;
            lo = fmin(lo, q), hi = fmax(hi, q);
            char diff[256] = "";
            size_t k = 0;
            for (int c = 0; c < 4; c++)
                if (v[5 + 2 * c] != v[6 + 2 * c] && k < sizeof diff)
                    k += (size_t)snprintf(diff + k, sizeof diff - k, "  %s %+.0f B%s", cname[c], v[6 + 2 * c] - v[5 + 2 * c],
                                          /* the only acts allocation outside the planned buffer (moe.c) */
                                          c == 3 && v[6 + 2 * c] > v[5 + 2 * c]
                                              ? " (dropless MoE rows grown past the planned capacity: routing imbalance)"
                                              : "");
            exact += !diff[0];
            if (n <= 32 || r == 0 || r == n - 1 || diff[0])
                printf("dsv3: memory rank %3d: planned %10.2f MiB  allocated %10.2f MiB  ratio %.4f  untracked %8.2f MiB"
                       "  peak RSS %9.1f MiB (+%.1f MiB during setup and the step)%s%s\n",
                       r, v[0] / MiB, v[1] / MiB, q, v[2] / MiB, v[3] / MiB, v[4] / MiB,
                       diff[0] ? "  allocated - planned:" : "", diff);
        }
        if (all)
            printf("dsv3: memory: allocated/planned over %d ranks: min %.4f max %.4f; every category equal to the plan "
                   "on %d of %d ranks\n", n, lo, hi, exact, n);
        const param_table *pt = &p->params; /* train.base_dtype: the frozen store, part of params above */
        if (pt->stored_bytes) {
            double f32 = 0;
            int nt = 0;
            for (int i = 0; i < pt->n; i++)
                if (pt->t[i].flags & P_STORED)
                    f32 += 4.0 * (double)pt->t[i].numel / pt->t[i].shape[0] * (pt->t[i].ndim == 3 ? pt->t[i].n_mat : pt->t[i].shape[0]), nt++;
            printf("dsv3: memory rank 0: frozen store (train.base_dtype = %s): %zu bytes for %d frozen linear weights, "
                   "%.0f bytes at fp32 (%.4f of it)\n", t->d->lora.base_dtype, pt->stored_bytes, nt, f32,
                   f32 > 0 ? (double)pt->stored_bytes / f32 : 0.0);
        }
        fflush(stdout);
    }
    free(all);
    return alloc;
}

static void load_samples(trainer *t, data_loader *L, int64_t step, int n_local) {
    int T = t->d->train.seq_len;
    int64_t first = (int64_t)t->p->world_rank * n_local;
    for (int i = 0; i < n_local; i++)
        data_sample(L, step, first + i, t->tok + (size_t)i * T, t->tgt + (size_t)i * T);
}

/* Global target counts: main head and each MTP depth. */
static void global_counts(trainer *t, int n_local, int64_t *cnt /*[1+D]*/) {
    int T = t->d->train.seq_len, D = t->d->model.num_nextn_predict_layers;
    for (int k = 0; k <= D; k++) cnt[k] = model_count_targets(t->tgt, n_local, T, k);
    comm_sum_i64(cnt, 1 + D, t->p->world);
}

static model_scales make_scales(const deck *d, const int64_t *cnt, int64_t global_seqs) {
    model_scales sc;
    memset(&sc, 0, sizeof sc);
    int D = d->model.num_nextn_predict_layers;
    sc.lm = cnt[0] ? 1.0f / (float)cnt[0] : 0.0f;
    for (int k = 1; k <= D; k++)
        sc.mtp[k - 1] = cnt[k] ? (float)(d->model.mtp_loss_weight / D / (double)cnt[k]) : 0.0f;
    sc.bal = 1.0f / (float)global_seqs;
    return sc;
}

/* Loss terms from the summed micro-batch sums (allreduced). */
static void losses(const deck *d, const model_sums *s, const int64_t *cnt, int64_t global_seqs, double *lm,
                   double *mtp, double *bal) {
    int D = d->model.num_nextn_predict_layers;
    *lm = cnt[0] ? s->lm_sum / (double)cnt[0] : 0.0;
    *mtp = 0.0;
    for (int k = 1; k <= D; k++)
        if (cnt[k]) *mtp += d->model.mtp_loss_weight / D * s->mtp_sum[k - 1] / (double)cnt[k];
    *bal = s->bal_sum / (double)global_seqs;
}

static void allreduce_sums(comm_t c, model_sums *s) {
    double v[2 + MODEL_MAX_MTP];
    v[0] = s->lm_sum;
    v[1] = s->bal_sum;
    memcpy(v + 2, s->mtp_sum, sizeof s->mtp_sum);
    comm_sum_doubles(v, 2 + MODEL_MAX_MTP, c);
    s->lm_sum = v[0];
    s->bal_sum = v[1];
    memcpy(s->mtp_sum, v + 2, sizeof s->mtp_sum);
}

/* Gradients reduced per the ZeRO stage (zero.c); returns the global sum of squares. */
static double reduce_grads(trainer *t) {
    double t0 = now();
    double ss = zero_reduce_grads(model_zero(t->m));
    t->t_reduce += now() - t0;
    return ss;
}

/* AdamW on what this rank owns, then the all-gathers of stages 1/2 (zero.c). */
static void update(trainer *t, double lr, float scale) {
    double t0 = now();
    zero_update(model_zero(t->m), t->d, t->mo, t->vo, t->optim_t + 1, lr, scale);
    t->optim_t++;
    if (t->p->zero_stage > 0) t->t_reduce += now() - t0;
}

/* Aux-loss-free balancing: global per-expert counts, the same update on every rank.
 * imb[i] gets layer i's max load / mean load; returns the worst. */
static double bias_update(trainer *t, double *imb, int apply) {
    model *m = t->m;
    int n = model_n_moe(m), E = t->d->model.n_routed_experts;
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        int64_t *c = model_expert_counts(m, i);
        comm_sum_i64(c, E, t->p->world);
        double mx = 0, sum = 0;
        for (int e = 0; e < E; e++) mx = c[e] > mx ? (double)c[e] : mx, sum += (double)c[e];
        imb[i] = moe_load_imbalance(c, E);
        if (sum > 0) worst = fmax(worst, mx / (sum / E));
        if (apply && t->d->model.bias_update_rate > 0) {
            model_bias_update(m, i, c, (float)t->d->model.bias_update_rate);
            if (t->bias_shadow) moe_bias_update(t->bias_shadow + (size_t)i * E, c, E, (float)t->d->model.bias_update_rate);
        }
    }
    model_reset_counts(m);
    /* Every rank holds the full biases below ZeRO-3: they must stay bitwise
     * identical (same global counts, same update). A cheap check every step,
     * since diverged routing would silently break data parallelism. */
    float got[4096], want[4096]; /* one layer's biases on the host */
    DSV3_CHECK(E <= 4096, "more than 4096 routed experts");
    if (model_params_layout(m) == ZERO_FULL_LOCAL && t->p->world_size > 1) {
        uint64_t h = 1469598103934665603ULL, lo, hi;
        for (int i = 0; i < n; i++) {
            ops_to_host(got, model_router_bias(m, i), (size_t)E * sizeof *got);
            const unsigned char *b = (const unsigned char *)got;
            for (size_t k = 0; k < (size_t)E * sizeof(float); k++) h = (h ^ b[k]) * 1099511628211ULL;
        }
        comm_minmax_u64(h, t->p->world, &lo, &hi);
        if (lo != hi) error_one("router biases differ across ranks after step %lld", (long long)t->step + 1);
        t->bias_checks++;
    }
    /* Sharded masters (ZeRO-3, or bf16 working weights): each bias is spread over the ranks' shards;
     * assembled, it must equal the replicated shadow that every rank updates from the same counts. */
    if (t->bias_shadow) {
        for (int i = 0; i < n; i++) {
            model_router_bias_gather(m, i, got);
            ops_to_host(want, t->bias_shadow + (size_t)i * E, (size_t)E * sizeof *want);
            if (t->p->world_rank == 0 && memcmp(got, want, (size_t)E * sizeof *got))
                error_one("router bias of MoE layer %d differs from the update its global counts give after step %lld "
                          "(sharded masters)", model_moe_layer_index(m, i), (long long)t->step + 1);
        }
        t->bias_checks++;
    }
    return worst;
}

/* Mean validation loss over validation.batches global batches (forward only), over
 * the counted targets: with data.format "sft" the assistant tokens only (the loss
 * mask), so it is the held-out response loss. *acc gets the next-token accuracy over
 * the same targets: the share whose argmax logit is the target (teacher-forced). */
static double validate(trainer *t, double *acc) {
    const deck *d = t->d;
    int T = d->train.seq_len, mb = d->train.micro_batch, n_local = mb * t->p->grad_accum, V = d->model.vocab_size;
    model_sums s;
    memset(&s, 0, sizeof s);
    int64_t cnt[2] = {0, 0}; /* counted targets, argmax hits */
    model_scales sc;
    memset(&sc, 0, sizeof sc);
    /* each row's argmax comes to the host (ops_argmax_rows), not the [mb·T, V] logits */
    int32_t *best = malloc((size_t)mb * T * sizeof *best);
    if (!best) error_one("out of memory for the validation argmax (%d rows)", mb * T);
    for (int b = 0; b < d->validation.batches; b++) {
        load_samples(t, t->valid, b, n_local);
        for (int a = 0; a < t->p->grad_accum; a++) {
            const int32_t *tgt = t->tgt + (size_t)a * mb * T;
            model_batch bt = {.tokens = t->tok + (size_t)a * mb * T, .targets = tgt, .B = mb, .T = T}; /* no dropout */
            model_step(t->m, &bt, sc, 0, &s);
            ops_argmax_rows(best, model_logits(t->m), mb * T, V); /* [mb*T, V] of this forward, device */
            for (int i = 0; i < mb * T; i++) cnt[1] += tgt[i] >= 0 && best[i] == tgt[i];
        }
        cnt[0] += model_count_targets(t->tgt, n_local, T, 0);
    }
    free(best);
    model_reset_counts(t->m);
    s.lm_sum = comm_sum_double(s.lm_sum, t->p->world);
    comm_sum_i64(cnt, 2, t->p->world);
    *acc = cnt[0] ? (double)cnt[1] / (double)cnt[0] : NAN;
    return cnt[0] ? s.lm_sum / (double)cnt[0] : NAN;
}

/* Unigram entropy (nats) of the training stream, estimated on rank 0 from the
 * first global batches' targets (up to ~256k tokens): the loss a model that
 * ignores context would reach, printed so the demo's curve can be judged. */
static double unigram_entropy(trainer *t, int64_t *ntok) {
    const deck *d = t->d;
    int T = d->train.seq_len, V = d->model.vocab_size;
    if (V > (1 << 22)) return NAN;
    int64_t *h = calloc((size_t)V, sizeof *h), n = 0;
    int32_t *tok = malloc((size_t)T * sizeof *tok), *tgt = malloc((size_t)T * sizeof *tgt);
    for (int64_t s = 0; n < 262144 && s < d->run.steps; s++)
        for (int64_t i = 0; i < d->train.global_batch && n < 262144; i++) {
            data_sample(t->train, s, i, tok, tgt);
            for (int k = 0; k < T; k++)
                if (tgt[k] >= 0 && tgt[k] < V) h[tgt[k]]++, n++;
        }
    double e = 0.0;
    for (int v = 0; v < V; v++)
        if (h[v]) e -= (double)h[v] / (double)n * log((double)h[v] / (double)n);
    free(h), free(tok), free(tgt);
    data_set_position(t->train, t->step);
    *ntok = n;
    return e;
}

static int save(trainer *t, char *err, int errlen) {
    /* Never from non-finite state: the weights are checked first (one pass). */
    float *w = model_param_buffer(t->m);
    const plan *p = t->p;
    int sharded = model_params_layout(t->m) == ZERO_SHARD_PACKED;
    size_t n = sharded ? p->shard_floats : p->params.total_local;
    double ss = ops_sumsq(w, n);
    if (sharded) ss = comm_sum_double(ss, p->world);
    if (!isfinite(ss)) {
        snprintf(err, errlen, "step %lld: the weights hold non-finite values: no checkpoint written (the last good "
                 "one stays)", (long long)t->step);
        return -1;
    }
    ckpt_state st = {.step = t->step, .tokens_seen = t->tokens, .data_position = t->step, .optim_t = t->optim_t,
                     .frozen = model_zero(t->m)->frozen};
    int rc = ckpt_save(t->p, t->d, t->d->run.output_dir, model_param_buffer(t->m), model_params_layout(t->m), t->mo, t->vo,
                     zero_state_optim_layout(model_zero(t->m)), &st, err, errlen);
    if (rc || !t->d->lora.enabled) return rc;
    /* LoRA: a PEFT directory beside every checkpoint (checkpoints/checkpoint-<step>), written
     * by rank 0 from the file just saved; the adapters are small */
    int failed = 0;
    if (p->world_rank == 0) {
        char file[4200], dir[4200];
        snprintf(file, sizeof file, "%s/checkpoints/step_%08lld.h5", t->d->run.output_dir, (long long)t->step);
        snprintf(dir, sizeof dir, "%s/checkpoints/checkpoint-%lld", t->d->run.output_dir, (long long)t->step);
        failed = peft_write(file, t->d, dir, 0, NULL, err, errlen) < 0;
    }
    return error_agree(p->world, failed, err, errlen) ? -1 : 0;
}

int train_run(const deck *d, plan *p) {
    char err[1024] = "";
    trainer t;
    memset(&t, 0, sizeof t);
    t.d = d;
    t.p = p;
    int rank = p->world_rank, T = d->train.seq_len, mb = d->train.micro_batch;
    int n_local = mb * p->grad_accum; /* this rank's samples per step */
    int64_t G = d->train.global_batch;
    int failed = 0;

    /* run.mode "eval": the validation loss of the checkpoint run.init_from (or run.resume) names, nothing trained or written */
    int eval = !strcmp(d->run.mode, "eval");
    /* 1. inputs first: data, output directory, checkpoint to resume (before any model memory) */
    failed = eval ? 0 : data_open(&t.train, d, 0, T, err, sizeof err) != 0;
    if (!failed && (d->validation.every > 0 || eval)) failed = data_open(&t.valid, d, 1, T, err, sizeof err) != 0;
    if (!failed && !eval && rank == 0 && fs_mkdir_p(d->run.output_dir)) {
        snprintf(err, sizeof err, "cannot create run.output_dir '%s': %s", d->run.output_dir, strerror(errno));
        failed = 1;
    }
    struct stat out_st; /* the output directory, to notice it vanish during the run */
    memset(&out_st, 0, sizeof out_st);
    if (!failed && !eval && rank == 0 && stat(d->run.output_dir, &out_st)) {
        snprintf(err, sizeof err, "cannot stat run.output_dir '%s': %s", d->run.output_dir, strerror(errno));
        failed = 1;
    }
    char resume[4096] = "";
    if (!failed && d->run.resume[0]) failed = ckpt_resolve(d, resume, sizeof resume, err, sizeof err) != 0;
    /* a narrow base "sharded" at ZeRO 3 runs as one node-shared copy (deck.c): over more nodes it is planned only */
    if (!failed && d->lora.node_shared && strcmp(d->parallel.frozen, "resident") && p->n_nodes > 1) {
        snprintf(err, sizeof err, "parallel.frozen = \"sharded\" at ZeRO 3 with a bf16/fp8 base over %d nodes is planned "
                 "only (--dry-run): the CPU trainer shards the frozen store inside one node; set parallel.frozen = "
                 "\"resident\" to run", p->n_nodes);
        failed = 1;
    }
    if (error_all(p->world, failed, err, sizeof err)) {
        goto out;
    }

    /* 2. model, optimizer, buffers */
    double rss0, hwm0; /* what the process holds before the model: MPI, HDF5, the deck, the data maps */
    log_proc_rss(&rss0, &hwm0);
    model_opts mo = deck_model_opts(d);
    failed = model_create(&t.m, &mo, p, err, sizeof err) != 0;
    if (error_all(p->world, failed, err, sizeof err)) {
        goto out;
    }
    const param_table *pt = &p->params;
    t.optim_n = zero_optim_floats(model_zero(t.m)); /* compact (trainable only) when LoRA freezes the base */
    int cat = ops_mem_category(OPS_MEM_OPTIM);
    t.mo = ops_alloc(t.optim_n * sizeof *t.mo);
    t.vo = ops_alloc(t.optim_n * sizeof *t.vo);
    ops_mem_category(cat);
    t.tok = calloc((size_t)n_local * T, sizeof *t.tok);
    t.tgt = calloc((size_t)n_local * T, sizeof *t.tgt);
    failed = !t.mo || !t.vo || !t.tok || !t.tgt;
    if (failed) snprintf(err, sizeof err, "out of memory for the optimizer state (%zu floats) and batch", t.optim_n);
    if (error_all(p->world, failed, err, sizeof err)) goto out;
    /* An adapters-only checkpoint (checkpoint.save = "adapters") resumes on top of
     * the base the run started from: run.init_from again (or the same seeded init). */
    int adapters_resume = resume[0] && ckpt_is_adapters_only(resume);
    /* run.init_from loads every tensor of the frozen store: its seeded init would be overwritten */
    model_skip_stored_init(t.m, d->run.init_from[0] && (!resume[0] || adapters_resume));
    model_init_weights(t.m, (uint64_t)d->run.seed);
    if ((!resume[0] || adapters_resume) && d->run.init_from[0]) { /* weights only (fine-tuning from a dsv3 checkpoint): step 0, fresh optimizer */
        ckpt_state st = {.frozen = model_zero(t.m)->frozen};
        failed = ckpt_load(p, d, d->run.init_from, model_param_buffer(t.m), model_params_layout(t.m), NULL,
                           NULL, zero_state_optim_layout(model_zero(t.m)), &st, err, sizeof err) != 0;
        if (error_all(p->world, failed, err, sizeof err)) goto out;
        if (rank == 0 && !eval) printf("dsv3: weights from %s (step %lld there), starting at step 0\n", d->run.init_from,
                                       (long long)st.step);
    }
    if (resume[0]) {
        ckpt_state st = {.frozen = model_zero(t.m)->frozen};
        failed = ckpt_load(p, d, resume, model_param_buffer(t.m), model_params_layout(t.m), t.mo, t.vo,
                           zero_state_optim_layout(model_zero(t.m)), &st, err, sizeof err) != 0;
        if (error_all(p->world, failed, err, sizeof err)) {
            goto out;
        }
        t.step = st.step;
        t.optim_t = st.optim_t;
        t.skipped = st.step - st.optim_t;
        t.tokens = st.tokens_seen;
        if (t.train) data_set_position(t.train, st.data_position);
        if (rank == 0) printf("dsv3: resumed from %s at step %lld\n", resume, (long long)t.step);
    }
    if (model_zero(t.m)->frozen_shared) comm_barrier(p->node); /* the node-shared store is filled by its writers */
    if (eval) { /* the training loop's validation over validation.batches global batches */
        double acc, v = validate(&t, &acc);
        if (rank == 0)
            printf("dsv3: eval: %s: validation loss %.7f, perplexity %.4f, next-token accuracy %.4f (%d global batches "
                   "of %lld x %d tokens; %d ranks, EP %d, ZeRO %d)\n", resume[0] ? resume : d->run.init_from, v, exp(v),
                   acc, d->validation.batches, (long long)G, T, p->world_size, p->ep, p->zero_stage);
        goto out;
    }
    log_ctx lg;
    failed = log_open(&lg, rank, d->run.output_dir, t.step, err, sizeof err) != 0;
    if (!failed) failed = log_open_tb(&lg, d->logging.tensorboard, err, sizeof err) != 0;
    if (error_all(p->world, failed, err, sizeof err)) {
        goto out;
    }
    if (rank == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s/deck.cfg", d->run.output_dir); /* archive the resolved deck */
        FILE *f = fopen(path, "w");
        if (f) {
            fputs(d->text ? d->text : "", f);
            fclose(f);
        }
        printf("dsv3: %s | %d ranks, EP %d, DP %d, ZeRO %d | %lld parameters (%lld trainable) | global batch %lld "
               "x %d tokens, %d micro-batches of %d per rank\n",
               d->run.mode, p->world_size, p->ep, p->dp, p->zero_stage, (long long)pt->n_params,
               (long long)pt->n_trainable, (long long)G, T, p->grad_accum, mb);
        plan_print_ownership(p, d, "dsv3: ", stdout);
        int64_t nt = 0;
        double ue = unigram_entropy(&t, &nt);
        printf("dsv3: data: %s; unigram entropy of the training targets %.4f nats (from %lld tokens)\n",
               data_describe(t.train), ue, (long long)nt);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    /* 3. the loop */
    int n_moe = model_n_moe(t.m);
    double *layer_imb = calloc((size_t)n_moe + 1, sizeof *layer_imb);
    int *layer_id = calloc((size_t)n_moe + 1, sizeof *layer_id);
    for (int i = 0; i < n_moe; i++) layer_id[i] = model_moe_layer_index(t.m, i);
    double mem_alloc = 0.0;
    if (model_params_layout(t.m) == ZERO_SHARD_PACKED && p->world_size > 1 && n_moe > 0) { /* the shadow starts from the assembled biases */
        int E = d->model.n_routed_experts;
        t.bias_shadow = ops_alloc((size_t)n_moe * E * sizeof *t.bias_shadow); /* updated by ops: device (untracked) */
        if (!t.bias_shadow) error_one("out of memory for the router-bias shadow");
        float full[4096];
        DSV3_CHECK(E <= 4096, "more than 4096 routed experts");
        for (int i = 0; i < n_moe; i++) {
            model_router_bias_gather(t.m, i, full);
            ops_to_device(t.bias_shadow + (size_t)i * E, full, (size_t)E * sizeof *full);
        }
    }
    /* A run starting at step 0 validates the initial weights first (the base model's
     * level in a fine-tuning run), printed only: metrics.csv rows are steps done. */
    if (t.valid && t.step == 0) {
        double acc, v = validate(&t, &acc);
        if (rank == 0) printf("dsv3: validation at step 0 (before training): loss %.4f, next-token accuracy %.2f%%\n", v,
                              100 * acc);
    }
    double t_start = now();
    int64_t first_step = t.step;
    while (t.step < d->run.steps) {
        double t0 = now();
        t.t_reduce = 0.0;
        load_samples(&t, t.train, d->data.repeat_batch ? 0 : t.step, n_local);
        int64_t cnt[1 + MODEL_MAX_MTP];
        global_counts(&t, n_local, cnt);
        model_scales sc = make_scales(d, cnt, G);
        model_sums sums;
        memset(&sums, 0, sizeof sums);
        model_zero_grad(t.m);
        for (int a = 0; a < p->grad_accum; a++) {
            model_batch bt = {.tokens = t.tok + (size_t)a * mb * T, .targets = t.tgt + (size_t)a * mb * T, .B = mb, .T = T,
                              .dropout = 1, .seed = (uint64_t)d->run.seed, .step = t.step,
                              .sample0 = (int64_t)p->world_rank * n_local + (int64_t)a * mb}; /* as load_samples */
            model_step(t.m, &bt, sc, 1, &sums);
        }
        double a2a = model_comm_seconds(t.m); /* before bias_update resets the counters */
        if (t.step == first_step && n_moe > 0) { /* the MoE wire of one step (issue 14: one row per token and rank) */
            double b = model_comm_bytes(t.m), bsum = b, bmax = comm_max_double(b, p->world);
            comm_sum_doubles(&bsum, 1, p->world);
            if (rank == 0)
                printf("dsv3: MoE all-to-all bytes sent in step %lld: %.0f over %d ranks (max %.0f per rank), "
                       "wire %s%s\n", (long long)t.step + 1, bsum, p->world_size, bmax,
                       d->parallel.dispatch_dtype[0] ? d->parallel.dispatch_dtype : d->train.dtype,
                       d->parallel.moe_overlap ? ", overlapped with the expert GEMMs (two halves)" : "");
        }
        allreduce_sums(p->world, &sums);
        double lm, mtp, bal;
        losses(d, &sums, cnt, G, &lm, &mtp, &bal);
        double gnorm = sqrt(reduce_grads(&t));
        double clip = d->optimizer.grad_clip;
        float scale = (clip > 0 && gnorm > clip) ? (float)(clip / (gnorm + 1e-6)) : 1.0f;
        double lr = optim_lr(d, t.step);
        /* Non-finite loss or gradient norm (Megatron's and DeepSpeed's check):
         * no update, no bias update; agreed, though every rank computed the
         * same reduced values. */
        int bad = comm_max_int(!isfinite(lm + mtp + bal) || !isfinite(gnorm), p->world);
        t.consecutive = bad ? t.consecutive + 1 : 0;
        t.skipped += bad;
        if (!bad) update(&t, lr, scale);
        double imb = bias_update(&t, layer_imb, !bad);
        if (bad && rank == 0)
            fprintf(stderr, "dsv3: warning: step %lld: non-finite %s (loss %g, grad norm %g): update skipped (%d in a "
                    "row, optimizer.max_skipped_steps = %d)\n", (long long)t.step + 1,
                    isfinite(lm + mtp + bal) ? "gradient norm" : "loss", lm + mtp + bal, gnorm, t.consecutive,
                    d->optimizer.max_skipped_steps);
        t.step++;
        t.tokens += G * T;
        data_set_position(t.train, t.step);
        double val = NAN, val_acc = NAN;
        if (t.valid && d->validation.every > 0 && t.step % d->validation.every == 0) val = validate(&t, &val_acc);
        double dt = now() - t0;
        if (t.step == first_step + 1) mem_alloc = memory_report(&t, rss0);
        a2a = comm_max_double(a2a, p->world);
        double elapsed = now() - t_start;
        log_row row = {t.step, lm + mtp + bal, lm, mtp, bal, lr, gnorm, t.tokens, (double)(G * T) / dt, val, imb,
                       dt, a2a, t.t_reduce,
                       elapsed / (double)(t.step - first_step) * (double)(d->run.steps - t.step),
                       n_moe, layer_id, layer_imb, mem_alloc, t.skipped, val_acc};
        int show = d->run.log_every <= 1 || t.step % d->run.log_every == 0 || t.step == d->run.steps;
        log_step(&lg, &row, d->run.steps, show); /* the csv keeps every row */
        if (t.consecutive > d->optimizer.max_skipped_steps) {
            char last[64] = "";
            if (t.step > t.consecutive && d->checkpoint.every > 0)
                snprintf(last, sizeof last, "; resume from a checkpoint before step %lld", (long long)(t.step - t.consecutive + 1));
            snprintf(err, sizeof err, "step %lld: %d steps in a row with a non-finite loss or gradient norm "
                     "(optimizer.max_skipped_steps = %d): stopping without a checkpoint%s", (long long)t.step,
                     t.consecutive, d->optimizer.max_skipped_steps, last);
            failed = 1;
            error_all(p->world, failed, err, sizeof err);
            break;
        }
        /* run.output_dir removed or replaced under the run: metrics and
         * checkpoints would go nowhere (or somewhere new); stop instead. */
        struct stat now_st;
        int gone = rank == 0 && (stat(d->run.output_dir, &now_st) || now_st.st_ino != out_st.st_ino ||
                                 now_st.st_dev != out_st.st_dev);
        if (comm_max_int(gone, p->world)) {
            snprintf(err, sizeof err, "step %lld: run.output_dir '%s' was removed or replaced during the run: "
                     "stopping (nothing more is written there)", (long long)t.step, d->run.output_dir);
            failed = 1;
            error_all(p->world, failed, err, sizeof err);
            break;
        }
        int stop = comm_max_int(stop_requested, p->world);
        int every = d->checkpoint.every;
        if (stop || (every > 0 && t.step % every == 0) || (every > 0 && t.step == d->run.steps)) {
            failed = save(&t, err, sizeof err) != 0;
            if (error_all(p->world, failed, err, sizeof err)) {
                break;
            }
            if (rank == 0) printf("dsv3: checkpoint step_%08lld.h5 written\n", (long long)t.step);
        }
        if (stop) {
            if (rank == 0) printf("dsv3: stop requested by signal: checkpoint written at step %lld, exiting\n",
                                  (long long)t.step);
            break;
        }
    }
    if (rank == 0 && t.bias_checks > 0)
        printf("dsv3: router biases bitwise identical on all %d ranks (checked at %lld steps)\n", p->world_size,
               (long long)t.bias_checks);
    log_close(&lg);
    free(layer_imb);
    free(layer_id);
out:
    model_free(t.m);
    if (t.train) data_close(t.train);
    if (t.valid) data_close(t.valid);
    ops_free(t.mo), ops_free(t.vo), free(t.tok), free(t.tgt), ops_free(t.bias_shadow);
    return failed;
}
